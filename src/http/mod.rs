//! The HTTP surface, as warp filters: one file per surface, composed in [`routes`].
//!
//! Handlers validate everything a client sends, call the broker, and turn any failure into the
//! JSON error of [`error`]. Nothing here touches the log directly.

pub mod admin;
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
mod sse;
mod stats;
pub mod tls;
mod web;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use crate::broker::event::StreamName;
use crate::broker::Broker;
use auth::Access;
pub use embed::embed;
use error::ApiError;
use limits::ConnectionLimits;

/// What an idle connection is sent after the heartbeat interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatStyle {
    /// `: heartbeat` — invisible to `EventSource` code.
    Comment,
    /// `event: heartbeat` / `data: ping`, as in the seed talk, for clients that want to see it.
    Event,
}

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest `data` of one event, in bytes.
    pub max_data_bytes: usize,
    /// Largest body of a `POST /publish` batch, in bytes.
    pub max_batch_bytes: usize,
    /// Most streams one SSE connection may read.
    pub max_streams_per_subscription: usize,
    pub heartbeat: Duration,
    pub heartbeat_style: HeartbeatStyle,
    /// The reconnection delay sent when a connection opens, in milliseconds.
    pub retry_ms: u64,
    /// On shutdown, clients are told to come back after a random delay up to this long.
    pub shutdown_retry_window: Duration,
    /// Who may publish and read.
    pub access: Access,
    /// Most open SSE subscriptions, server-wide; `None`: no limit.
    pub max_connections: Option<usize>,
    /// Most open SSE subscriptions from one client address; `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Browser origins allowed to call herald from their pages (CORS); `*` for any.
    pub cors_origins: Vec<String>,
    /// A connection that sends no request for this long, or stalls mid-body this long, is
    /// closed.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_data_bytes: 1 << 20,
            max_batch_bytes: 16 << 20,
            max_streams_per_subscription: 32,
            heartbeat: Duration::from_secs(15),
            heartbeat_style: HeartbeatStyle::Comment,
            retry_ms: 3000,
            shutdown_retry_window: Duration::from_secs(10),
            access: Access::default(),
            max_connections: None,
            max_connections_per_ip: None,
            cors_origins: Vec::new(),
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// What every handler gets: the broker, the options, the subscription counts, and the
/// shutdown signal. One `Arc`: warp's filters clone it into every request's futures (dozens of
/// times per request), so a clone must be one count, not one per field.
#[derive(Clone)]
pub struct Api(Arc<ApiState>);

impl std::ops::Deref for Api {
    type Target = ApiState;

    fn deref(&self) -> &ApiState {
        &self.0
    }
}

/// The fields of an [`Api`].
pub struct ApiState {
    pub broker: Broker,
    pub options: Arc<HttpOptions>,
    pub limits: Arc<ConnectionLimits>,
    /// What the HTTP layer counts, and the `/metrics` registry.
    pub metrics: Arc<admin::HttpMetrics>,
    exporter: Arc<admin::Exporter>,
    pub started: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Api {
    /// A place for one more SSE response under the connection caps, or — when there is none —
    /// the polite answer of [`limits::turned_away`], counted in the metrics.
    fn subscription_slot(
        &self,
        peer: Option<SocketAddr>,
        accept: Option<&str>,
    ) -> Result<limits::Slot, Box<Response>> {
        self.limits.acquire(peer.map(|p| p.ip())).map_err(|full| {
            self.metrics.turned_away.inc();
            // Debug only: under a flood this would be a line per attempt.
            tracing::debug!(?peer, ?full, "subscriber turned away");
            let event_stream = accept.is_some_and(|a| a.contains("text/event-stream"));
            Box::new(limits::turned_away(
                full,
                event_stream,
                self.options.shutdown_retry_window,
            ))
        })
    }
}

/// The client's address, put on each request by the [`listener`].
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Tells every open SSE response to send its clients a jittered `retry:` and end.
pub struct ShutdownSignal(watch::Sender<bool>);

impl ShutdownSignal {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Api {
    pub fn new(broker: Broker, options: HttpOptions) -> (Api, ShutdownSignal) {
        let (tx, rx) = watch::channel(false);
        let limits = ConnectionLimits::new(options.max_connections, options.max_connections_per_ip);
        let metrics = admin::HttpMetrics::default();
        let exporter = Arc::new(admin::Exporter::new(&broker, &metrics));
        let api = Api(Arc::new(ApiState {
            broker,
            options: Arc::new(options),
            limits: Arc::new(limits),
            exporter,
            metrics: Arc::new(metrics),
            started: Instant::now(),
            shutdown: rx,
        }));
        (api, ShutdownSignal(tx))
    }
}

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

fn with_api(api: Api) -> impl Filter<Extract = (Api,), Error = Infallible> + Clone {
    warp::any().map(move || api.clone())
}

/// The client's address, when the request came through herald's own listener.
fn peer_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>().map(|peer: Option<PeerAddr>| peer.map(|p| p.0))
}

/// The query string, or "" when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Decodes query pairs (`+` and `%XX`), keeping repeated keys.
fn query_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A stream name from a path segment, percent-decoded (`a%3Ab` is `a:b`).
fn stream_from_path(segment: &str) -> Result<StreamName, ApiError> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("stream name is not valid UTF-8"))?;
    Ok(StreamName::new(&decoded)?)
}

/// The path's stream, when `grant` may read it (credentials are checked before the name).
fn readable_stream(
    api: &Api,
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
) -> Result<StreamName, ApiError> {
    permitted_stream(segment, grant, |grant, stream| {
        api.options.access.check_read(grant, stream)
    })
}

/// The path's stream, when `grant` may publish to (close, delete, configure) it.
fn writable_stream(
    api: &Api,
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
) -> Result<StreamName, ApiError> {
    permitted_stream(segment, grant, |grant, stream| {
        api.options.access.check_publish(grant, stream)
    })
}

fn permitted_stream(
    segment: &str,
    grant: Result<auth::Grant, ApiError>,
    check: impl FnOnce(&auth::Grant, &StreamName) -> Result<(), ApiError>,
) -> Result<StreamName, ApiError> {
    let grant = grant?;
    let stream = stream_from_path(segment)?;
    check(&grant, &stream)?;
    Ok(stream)
}

/// Reads a request body, refusing it with 413 as soon as it passes `limit` bytes, so an
/// oversized body is never held in memory whole. Works for chunked bodies too. A body that
/// stalls for `idle` is refused with 408, so a trickling client cannot hold a request open.
async fn read_body<S, B>(body: S, limit: usize, idle: Duration) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    loop {
        let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stalled for {} s; send it whole",
                    idle.as_secs_f64()
                ),
            )
        })?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        collected.put(chunk);
    }
    Ok(collected.freeze())
}
