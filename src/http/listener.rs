//! herald's own accept loop: each TCP connection is served by hyper with the routes of
//! [`routes`](super::routes).
//!
//! warp 0.4's server exposes none of hyper's knobs, and a server on the open internet needs
//! them: a cap on request-head size (431 beyond it), an idle timeout (a connection that sends no
//! request head within `--idle-timeout` is closed, keep-alive waits included), the client's
//! address for the per-address subscription cap, and CORS for pages on other origins. Shutdown
//! is hyper-util's graceful watcher: stop accepting, let every response end, then return.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;
use warp::http::{header, HeaderMap, HeaderValue, Method};

use super::{routes, Api, HttpOptions, PeerAddr};

/// Serves `api` on `listener` until `stop` resolves, then waits for open responses to end.
pub async fn serve(listener: TcpListener, api: Api, stop: impl Future<Output = ()>) {
    let options = api.options.clone();
    let service = cors(&options.cors_origins).layer(warp::service(routes(api)));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Events are small and must go out at once; Nagle would hold the second of two.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let service = service.clone();
        let per_request = service_fn(move |mut request| {
            request.extensions_mut().insert(PeerAddr(peer));
            let answer = service.clone().call(request);
            async move {
                let mut response = answer.await?;
                only_for_allowed_origins(response.headers_mut());
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection =
            http1_builder(&options).serve_connection(TokioIo::new(socket), per_request);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that resets or times out ends only its own connection.
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn http1_builder(options: &HttpOptions) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout)
        .max_header_size(options.max_header_bytes);
    builder
}

/// The CORS rules: listed origins may call herald with credentials (cookies, `Authorization`);
/// `*` lets any origin call it without credentials; other origins get no CORS headers, so their
/// browsers keep the answers from their pages.
pub fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([header::LOCATION, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let listed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer
        .allow_origin(AllowOrigin::list(listed))
        .allow_credentials(true)
}

/// tower-http sends its credential, method and header rules even to an origin it does not
/// allow; those headers are harmless without `Access-Control-Allow-Origin`, but an unlisted
/// origin should learn nothing, so they go.
fn only_for_allowed_origins(headers: &mut HeaderMap) {
    if headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    for name in [
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        headers.remove(name);
    }
}

/// Accepting fails mostly when the process is out of file descriptors: pause instead of
/// spinning, so open connections can finish and free some.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept connections; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
