//! herald's own accept loop: each TCP connection is served with the routes of
//! [`routes`](super::routes) — an HTTP/1.1 connection's `GET /sse` (plain or TLS) by herald's own writer
//! ([`direct`](super::direct): far less memory and work per idle or busy subscriber), everything
//! else by hyper.
//!
//! warp 0.4's server exposes none of hyper's knobs, and a server on the open internet needs
//! them: a cap on request-head size (431 beyond it), an idle timeout (a connection that sends no
//! request head within `--idle-timeout` is closed, keep-alive waits included), the client's
//! address for the per-address subscription cap, CORS for pages on other origins, a request id
//! on every request, and TLS with HTTP/2 (ALPN) — which lifts HTTP/1.1's six connections per
//! origin: all of a page's `EventSource`s share one connection. Shutdown: stop accepting, tell
//! hyper's connections to finish (hyper-util's graceful watcher) and every SSE response to say
//! goodbye, then return once every connection — hyper's and the direct writer's — has ended
//! (each connection's task holds one of the graceful watcher's handles).
//!
//! Every connection also gets RFC 9112's `Host` rule (an HTTP/1.1 request without exactly one
//! `Host` is a `400`; hyper accepts both) and a write deadline ([`deadline`](super::deadline)).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use warp::http::{header, HeaderMap, HeaderValue, Method};

use super::admin::HttpMetrics;
use super::api::{Api, HttpOptions, PeerAddr};
use super::deadline::Deadline;
use super::{direct, h2, routes, MalformedHead};

/// Serves `api` on `listener` until `stop` resolves, then waits for open responses to end.
/// With `tls`, every connection is HTTPS, and HTTP/2 when the client offers it (ALPN).
pub async fn serve(
    listener: TcpListener,
    api: Api,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let options = api.options.clone();
    let metrics = api.metrics.clone();
    let stopping = api.shutdown.clone();
    // Shared, not copied per connection: the routes are a tree of filters several KiB large,
    // and each connection (and its task) would otherwise hold its own copy.
    // (`embed.rs` builds the same service for routes mounted in another server.)
    let service =
        std::sync::Arc::new(cors(&options.cors_origins).layer(warp::service(routes(api))));
    let graceful = GracefulShutdown::new();
    // Told once accepting has stopped, with hyper-util's watchers: what HTTP/2 connections
    // (which watch their own idle time, see `h2`) listen to.
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
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
        let per_request = {
            let service = service.clone();
            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                answer(&*service, Some(peer), request)
            })
        };
        // Every connection's task holds a watcher for its whole life, direct or not: shutdown
        // waits for every watcher to be dropped, so `serve` returns only once each connection
        // has ended (a direct subscriber's after its goodbye).
        let watcher = graceful.watcher();
        let options = options.clone();
        let open = OpenConnection::count(&metrics);
        let tls = tls.clone();
        let stopping = stopping.clone();
        let closing = closing_rx.clone();
        tokio::spawn(async move {
            let _open = open;
            // A client that fails its handshake, resets or times out ends only its own
            // connection.
            let ended = match tls {
                None => {
                    let mut socket = socket;
                    let Some(read) =
                        serve_direct(&mut socket, &options, stopping, &*service, peer).await
                    else {
                        return;
                    };
                    // hyper reads the bytes already read first, then the socket.
                    let (reader, writer) = socket.into_split();
                    let writer = Deadline::new(writer, options.peer_timeout);
                    let io = tokio::io::join(std::io::Cursor::new(read).chain(reader), writer);
                    let connection =
                        http1_builder(&options).serve_connection(TokioIo::new(io), per_request);
                    // Each kind of connection is boxed, so the task holds only the kind it
                    // serves: plain HTTP/1.1 is not made the size of a TLS or h2 one.
                    Box::pin(watcher.watch(connection)).await
                }
                // Boxed whole: a TLS connection's state (handshake, rustls, h2) is many KiB
                // that a plain connection's task should not reserve.
                Some(acceptor) => match Box::pin(async move {
                    let socket = Deadline::new(socket, options.peer_timeout);
                    // Boxed: its state is gone once the handshake is, and must not take room
                    // in the task for the connection's life.
                    let handshake = Box::pin(tokio::time::timeout(
                        options.idle_timeout,
                        acceptor.accept(socket),
                    ));
                    let mut stopping = stopping;
                    let stream = tokio::select! {
                        handshake = handshake => match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return None;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return None;
                            }
                        },
                        // No request yet: nothing to finish.
                        () = direct::stop_signal(&mut stopping) => return None,
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    // rustls's state (~1.2 KiB) on the heap once, not in several of the task's
                    // slots as it moves from one owner to the next.
                    let mut stream = Box::new(stream);
                    // Each kind of connection is boxed on its own, so an HTTP/1.1 subscriber's
                    // task holds no room for HTTP/2's state (the whole was ~5.9 KiB).
                    Some(if h2 {
                        Box::pin(async move {
                            // Held, not watched: this task closes the connection itself (on
                            // shutdown or when idle), and `serve` waits for it all the same.
                            let _watcher = watcher;
                            let io = TokioIo::new(stream);
                            let streams = h2::Streams::new();
                            let per_request = {
                                let streams = streams.clone();
                                service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                    let stream = streams.open();
                                    let answer = answer(&*service, Some(peer), request);
                                    async move {
                                        let response = answer.await?;
                                        Ok::<_, Infallible>(
                                            response.map(|body| h2::Tracked::new(body, stream)),
                                        )
                                    }
                                })
                            };
                            let connection = http2_builder(&options).serve_connection(io, per_request);
                            let mut connection = std::pin::pin!(connection);
                            let mut closing = closing;
                            let mut told = false;
                            loop {
                                tokio::select! {
                                    ended = connection.as_mut() => break ended,
                                    () = direct::stop_signal(&mut closing), if !told => {
                                        told = true;
                                        connection.as_mut().graceful_shutdown();
                                    }
                                    () = streams.idle_for(options.idle_timeout), if !told => {
                                        told = true;
                                        tracing::debug!(%peer, "HTTP/2 connection idle; closing it");
                                        connection.as_mut().graceful_shutdown();
                                    }
                                }
                            }
                        })
                        .await
                    } else {
                        // HTTP/1.1 over TLS: `GET /sse` is served directly too (no hyper
                        // buffers for an SSE connection's life); the rest goes to hyper.
                        let Some(read) = Box::pin(serve_direct(
                            &mut *stream,
                            &options,
                            stopping,
                            &*service,
                            peer,
                        ))
                        .await
                        else {
                            // The TLS goodbye (close_notify), as hyper's connections end.
                            let _ =
                                tokio::time::timeout(CLOSE_NOTIFY_WAIT, stream.shutdown()).await;
                            return None;
                        };
                        let (reader, writer) = tokio::io::split(stream);
                        let io = tokio::io::join(std::io::Cursor::new(read).chain(reader), writer);
                        let connection =
                            http1_builder(&options).serve_connection(TokioIo::new(io), per_request);
                        Box::pin(watcher.watch(connection)).await
                    })
                })
                .await
                {
                    Some(ended) => ended,
                    None => return,
                },
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    closing.send_replace(true);
    graceful.shutdown().await;
}

/// How long a TLS connection the direct writer has finished may take to accept its
/// close_notify.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// Serves `conn`'s `GET /sse` requests with the direct writer (when it is on) until one carries
/// something else: the bytes read so far, for hyper to start from, or `None` once the
/// connection is over.
async fn serve_direct<C, S, RB>(
    conn: &mut C,
    options: &HttpOptions,
    stopping: tokio::sync::watch::Receiver<bool>,
    service: &S,
    peer: SocketAddr,
) -> Option<bytes::Bytes>
where
    C: direct::Conn,
    S: Service<
            hyper::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = hyper::Response<RB>,
            Error = Infallible,
        > + Clone,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin + 'static,
    RB::Error: std::fmt::Display,
{
    if !options.direct_sse {
        return Some(bytes::Bytes::new());
    }
    let served = direct::serve(
        conn,
        options.idle_timeout,
        options.peer_timeout,
        options.max_header_bytes,
        stopping,
        |request| async {
            answer(service, Some(peer), request)
                .await
                .unwrap_or_else(|never| match never {})
        },
    )
    .await;
    match served {
        Ok(direct::Served::HandOver(read)) => Some(read),
        Ok(direct::Served::Closed) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            None
        }
    }
}

/// Runs one request through the routes, with what every request gets: the peer's address, a
/// request id (in the response and on every log line), and CORS headers only for allowed origins.
// Boxed: hyper keeps room for this future for the connection's whole life, and unboxed it is
// the size of every warp filter's future together (~12 KiB), which an idle SSE connection
// would carry for nothing.
pub(super) fn answer<S, B, RB>(
    service: &S,
    peer: Option<SocketAddr>,
    mut request: hyper::Request<B>,
) -> Pin<Box<dyn Future<Output = Result<hyper::Response<RB>, Infallible>> + Send>>
where
    S: Service<hyper::Request<B>, Response = hyper::Response<RB>, Error = Infallible> + Clone,
    S::Future: Send + 'static,
    RB: 'static,
{
    if let Some(peer) = peer {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    let malformed = MalformedHead::of(&request);
    if let Some(malformed) = malformed {
        request.extensions_mut().insert(malformed);
    }
    let id = RequestId::of(&request);
    let span = tracing::info_span!(
        "request",
        id = %id.0,
        method = %request.method(),
        path = %request.uri().path()
    );
    request.extensions_mut().insert(id.clone());
    let started = std::time::Instant::now();
    let answer = service.clone().call(request);
    Box::pin(
        async move {
            let mut response = answer.await?;
            only_for_allowed_origins(response.headers_mut());
            // A body refused before it was read whole leaves the rest of it on the wire:
            // say the connection ends, so the client does not send its next request into it.
            let status = response.status();
            if status == hyper::StatusCode::PAYLOAD_TOO_LARGE
                || status == hyper::StatusCode::REQUEST_TIMEOUT
                || malformed.is_some()
            {
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let Ok(value) = HeaderValue::from_str(&id.0) {
                response.headers_mut().insert("x-request-id", value);
            }
            tracing::debug!(
                status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "answered"
            );
            Ok(response)
        }
        .instrument(span),
    )
}

/// The id of one request: the client's `X-Request-ID` when it is a sane one, else a new one.
/// Every log line of the request carries it, and so does the response.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn of<B>(request: &hyper::Request<B>) -> RequestId {
        let given = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            });
        RequestId(match given {
            Some(id) => id.to_owned(),
            // 64 random bits from a per-thread generator: unique enough to follow one request
            // through the logs, and no `getrandom` syscall per request (as `Uuid::new_v4` makes).
            None => format!("{:016x}", fastrand::u64(..)),
        })
    }
}

/// `herald_connections_open`, held for as long as a connection lives.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn count(metrics: &HttpMetrics) -> OpenConnection {
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        OpenConnection(metrics.connections_open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn http2_builder(options: &HttpOptions) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Pings find a vanished peer; an h2 connection carries many SSE streams, so this
        // matters more than on HTTP/1.1.
        .keep_alive_interval(options.heartbeat)
        .keep_alive_timeout(options.heartbeat)
        .max_concurrent_streams(256)
        .max_header_list_size(options.max_header_bytes as u32);
    builder
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
