//! The HTTP surface, as warp filters: one file per surface, composed in [`routes`].
//!
//! Handlers validate everything a client sends, call the broker, and turn any failure into the
//! JSON error of [`error`]. Nothing here touches the log directly.

pub mod admin;
mod api;
pub mod auth;
mod direct;
mod embed;
pub mod error;
mod history;
mod lifecycle;
pub mod limits;
pub mod listener;
mod presence;
mod publish;
pub mod rate;
mod request;
mod sse;
mod stats;
pub mod tls;
mod web;
pub mod wire;

use std::convert::Infallible;

use warp::reply::Response;
use warp::Filter;

pub use api::{Api, ApiState, HeartbeatStyle, HttpOptions, PeerAddr, ShutdownSignal};
pub use embed::embed;

/// All of herald's routes, with unknown paths answered as JSON errors: the filters alone. The
/// layers every request needs (the client's address, request ids, CORS) are added by herald's
/// accept loop ([`listener::serve`]); to mount herald in another warp server, use [`embed`],
/// which adds them there too.
pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    publish::routes(api.clone())
        .or(sse::routes(api.clone()))
        .unify()
        .or(history::routes(api.clone()))
        .unify()
        .or(lifecycle::routes(api.clone()))
        .unify()
        .or(presence::routes(api.clone()))
        .unify()
        .or(stats::routes(api.clone()))
        .unify()
        .or(web::routes())
        .unify()
        .or(admin::routes(api.clone()))
        .unify()
        .recover(error::recover)
        .unify()
        .map(auth::challenge)
}
