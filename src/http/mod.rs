//! The HTTP surface, as warp filters: one file per surface, composed in [`routes`].
//!
//! Handlers validate everything a client sends, call the broker, and turn any failure into the
//! JSON error of [`error`]. Nothing here touches the log directly.

pub mod admin;
mod api;
pub mod auth;
mod deadline;
mod direct;
mod embed;
pub mod error;
mod h2;
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

use warp::http::{header, Request, Version};
use warp::reply::{Reply, Response};
use warp::Filter;

pub use api::{Api, ApiState, HeartbeatStyle, HttpOptions, PeerAddr, ShutdownSignal};
pub use embed::embed;

/// All of herald's routes, with unknown paths answered as JSON errors: the filters alone. The
/// layers every request needs (the client's address, request ids, CORS) are added by herald's
/// accept loop ([`listener::serve`]); to mount herald in another warp server, use [`embed`],
/// which adds them there too.
pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    malformed()
        .or(publish::routes(api.clone()))
        .unify()
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

/// What makes a request malformed before any route looks at it: RFC 9112 §3.2 — an HTTP/1.1
/// request carries exactly one `Host`. (hyper accepts none or several; herald's accept loop
/// marks such a request, and it is answered `400` whatever its path.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct MalformedHead(&'static str);

impl MalformedHead {
    pub(crate) fn of<B>(request: &Request<B>) -> Option<MalformedHead> {
        if request.version() != Version::HTTP_11 {
            return None;
        }
        match request.headers().get_all(header::HOST).iter().count() {
            1 => None,
            0 => Some(MalformedHead(
                "an HTTP/1.1 request needs a Host header (RFC 9112, section 3.2)",
            )),
            _ => Some(MalformedHead(
                "an HTTP/1.1 request must have one Host header, not several (RFC 9112, section 3.2)",
            )),
        }
    }
}

/// Answers a request marked [`MalformedHead`]; rejects (as not found, the weakest rejection)
/// every other one, so the routes take it.
fn malformed() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::ext::optional::<MalformedHead>().and_then(|malformed: Option<MalformedHead>| async move {
        match malformed {
            Some(MalformedHead(message)) => {
                Ok(error::ApiError::bad_request(message).into_response())
            }
            None => Err(warp::reject()),
        }
    })
}
