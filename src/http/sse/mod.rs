//! `GET /sse`: a subscription, written as a `text/event-stream` response.
//!
//! The body is a stream polled only when the socket can take more (by `direct.rs` on plain
//! HTTP/1.1, by hyper over TLS and HTTP/2), so a client that stops reading applies real TCP
//! backpressure: its subscription simply stops pulling, falls behind its live channel, and is
//! later caught up from the log. Frames are the events' pre-encoded `Bytes`, shared with every
//! other subscriber.
//!
//! `client=ID` makes the connection a presence member of its streams for as long as the body
//! lives (the body is dropped as soon as the peer closes, so a closed tab is noticed at once);
//! `presence=1` adds the streams' join and leave frames. A subscription whose streams are all
//! sealed ends the response; one that could only ever wait on sealed streams is answered
//! `204 No Content`, which tells `EventSource` to stop reconnecting.
//!
//! Before anything is sent, the reader's credentials must cover every private stream it names
//! (`auth/`), and the subscription must find room under the connection caps (`limits.rs`). A
//! response whose token carries `exp` ends when the token does; the browser reconnects with
//! whatever token it holds by then.
//!
//! Here: the route and the handler. `request.rs` reads the query; `body.rs` writes the frames
//! (whose bytes `wire.rs` makes).

mod body;
mod request;

use std::net::SocketAddr;

use bytes::Bytes;
use futures::Stream;
use uuid::Uuid;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use self::body::SseBody;
use self::request::parse_request;
use super::auth::{self, Grant};
use super::error::{respond, ApiError};
use super::listener::RequestId;
use crate::broker::BrokerError;
use crate::http::api::Api;
use crate::http::request::{peer_addr, raw_query, with_api};

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("sse")
        .and(warp::get())
        .and(raw_query())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(warp::header::optional::<String>("accept"))
        .and(auth::reader(api.clone()))
        .and(auth::app_request())
        .and(peer_addr())
        .and(warp::ext::optional::<RequestId>())
        .and(with_api(api))
        .then(
            |query: String,
             last_event_id: Option<String>,
             accept: Option<String>,
             grant,
             ask: auth::AppRequest,
             peer,
             id: Option<RequestId>,
             api| async move {
                let request = Request {
                    query,
                    last_event_id,
                    accept,
                    grant,
                    ask,
                    peer,
                    id: id.map_or_else(|| Uuid::new_v4().simple().to_string(), |id| id.0),
                };
                respond(subscribe(api, request).await)
            },
        )
}

/// A `GET /sse` request as it arrived.
struct Request {
    query: String,
    last_event_id: Option<String>,
    accept: Option<String>,
    grant: Result<Grant, ApiError>,
    /// What the app is asked with, for private streams no token covers.
    ask: auth::AppRequest,
    peer: Option<SocketAddr>,
    /// The request id, which the connection's log lines carry.
    id: String,
}

async fn subscribe(api: Api, arrived: Request) -> Result<Response, ApiError> {
    let grant = arrived.grant?;
    let request = parse_request(
        &arrived.query,
        arrived.last_event_id.as_deref(),
        api.options.max_streams_per_subscription,
    )?;
    let access = &api.options.access;
    let vouched = match access
        .authorize_reads(&grant, &request.streams, &arrived.ask)
        .await
    {
        Ok(vouched) => vouched,
        // The app cannot decide now: an EventSource is told to come back (any non-200 would
        // stop it for good), anything else gets a 503.
        Err(auth::ReadRefused::AppAway(reason)) => {
            tracing::warn!(%reason, "a subscriber waits for the app (--auth-url)");
            let why = crate::http::limits::Full::AppAway;
            return Ok(*api.turn_away(why, arrived.peer, arrived.accept.as_deref()));
        }
        Err(auth::ReadRefused::Denied(denied)) => return Err(denied.into()),
    };
    let client = match vouched {
        // The app vouched for who this is: that is the member, as a token's `sub` would be.
        Some(id) => match request.client {
            Some(asked) if asked != id => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("client={asked} is not the client the app vouched for ({id})"),
                ))
            }
            _ => Some(id),
        },
        None => access.presence_id(&grant, request.client)?,
    };
    let subscription = api.broker.subscribe(request.streams, request.start);
    match subscription.is_finished().await {
        // Only sealed streams, nothing left to send: the one answer that makes EventSource stop.
        Ok(true) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => {}
        // Any other non-200 would make EventSource give up for good.
        Err(BrokerError::Unavailable(_)) => {
            let why = crate::http::limits::Full::StoreAway;
            return Ok(*api.turn_away(why, arrived.peer, arrived.accept.as_deref()));
        }
        Err(e) => return Err(e.into()),
    }
    let slot = match api.subscription_slot(arrived.peer, arrived.accept.as_deref()) {
        Ok(slot) => slot,
        Err(turned_away) => return Ok(*turned_away),
    };
    let presence = api.broker.presence();
    // Watch before joining, so a watcher sees its own join.
    let watch = request
        .presence
        .then(|| presence.clone().watch(subscription.streams()));
    let member = client.map(|client| presence.clone().connect(subscription.streams(), client));
    let mut body = SseBody::new(&api, subscription, request.envelope, arrived.id);
    body.watch = watch;
    body.member = member;
    body.slot = Some(slot);
    if let Some(exp) = grant.expires() {
        body.expire_at(exp);
    }
    Ok(event_stream(body.into_stream()))
}

/// A `200 text/event-stream` response of `body`, uncached, and unbuffered by proxies that honour
/// `X-Accel-Buffering` (nginx).
pub(super) fn event_stream(
    body: impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> Response {
    // warp asks for a `Sync` body; the engine's futures inside it need not be (a body is only
    // ever polled through `&mut`).
    let body = sync_wrapper::SyncStream::new(body);
    let mut response = warp::reply::stream(body).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
