//! herald's routes inside another app's warp server, with every layer herald's own listener
//! gives them: the client's address (so the per-address subscription cap holds), a request id,
//! CORS for the configured origins, and the same answers to oversized or stalled bodies.
//!
//! [`routes`](super::routes) alone is only the filters; mounted in another server it would lose
//! those layers without a word. [`embed`] runs each request through exactly the service herald's
//! own accept loop uses ([`listener`](super::listener)), so an embedded herald behaves as the
//! binary does. What a server sets per connection — the request-head size limit, the idle
//! timeout, TLS — stays the embedding server's to set; herald's hand-written SSE writer for
//! plain HTTP/1.1 (`direct.rs`) is the binary's alone, so embedded SSE goes through hyper.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tower_layer::Layer;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::path::{FullPath, Tail};
use warp::reply::Response;
use warp::Filter;

use super::error::ApiError;
use super::listener::{answer, cors};
use super::Api;

/// herald's routes, layered, as one filter that answers every request it sees: mount it last,
/// or under a prefix of your own (`warp::path("herald").and(embed(api))` serves
/// `/herald/streams/…`, `/herald/sse`, …).
pub fn embed(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    // The service herald's own accept loop builds (`listener.rs`).
    let cors = cors(&api.options.cors_origins);
    let service = Arc::new(cors.layer(warp::service(super::routes(api))));
    warp::method()
        .and(warp::path::full())
        .and(warp::path::tail())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::body::stream().map(request_body))
        .then(
            move |method: Method,
                  full: FullPath,
                  tail: Tail,
                  query: Option<String>,
                  headers: HeaderMap,
                  peer: Option<SocketAddr>,
                  body: RequestBody| {
                let service = service.clone();
                async move {
                    let uri = match query {
                        Some(query) => format!("/{}?{query}", tail.as_str()),
                        None => format!("/{}", tail.as_str()),
                    };
                    let mut request =
                        match hyper::Request::builder().method(method).uri(uri).body(body) {
                            Ok(request) => request,
                            Err(e) => return refused(format!("cannot read the request: {e}")),
                        };
                    *request.headers_mut() = headers;
                    // Its own task, even to build the future: warp allows no filter to run inside
                    // another's (it panics on "nested route::set calls"), and the routes are
                    // filters.
                    let answered =
                        tokio::spawn(async move { answer(&*service, peer, request).await });
                    match answered.await {
                        Ok(Ok(mut response)) => {
                            let mount = full.as_str().len() - tail.as_str().len();
                            let prefix = full.as_str()[..mount].trim_end_matches('/');
                            under(prefix, response.headers_mut());
                            response
                        }
                        Ok(Err(never)) => match never {},
                        Err(e) => {
                            tracing::error!(error = %e, "an embedded request failed");
                            super::error::respond(Err(ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "the request failed inside herald",
                            )))
                        }
                    }
                }
            },
        )
}

type RequestBody = StreamBody<
    sync_wrapper::SyncStream<BoxStream<'static, Result<Frame<bytes::Bytes>, warp::Error>>>,
>;

/// warp's body stream as a body hyper's services take.
fn request_body<S, B>(body: S) -> RequestBody
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    let frames =
        body.map(|chunk| chunk.map(|mut data| Frame::data(data.copy_to_bytes(data.remaining()))));
    StreamBody::new(sync_wrapper::SyncStream::new(frames.boxed()))
}

/// Links herald writes (`Location`, `Link`) point into its routes from the root; under a
/// prefix they must carry it.
fn under(prefix: &str, headers: &mut HeaderMap) {
    if prefix.is_empty() {
        return;
    }
    for name in [header::LOCATION, header::LINK] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let moved = if value.starts_with('/') {
            format!("{prefix}{value}")
        } else {
            value.replace("</", &format!("<{prefix}/"))
        };
        if let Ok(moved) = HeaderValue::from_str(&moved) {
            headers.insert(name, moved);
        }
    }
}

fn refused(message: String) -> Response {
    super::error::respond(Err(ApiError::bad_request(message)))
}
