//! What every handler gets: the broker, the options, the subscription caps and the shutdown
//! signal, as one cheap-to-clone [`Api`]; and the options themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use warp::reply::Response;

use super::admin;
use super::auth::Access;
use super::limits::{self, ConnectionLimits};
use crate::broker::Broker;

/// What an idle connection is sent after the heartbeat interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatStyle {
    /// `: heartbeat` — invisible to `EventSource` code.
    Comment,
    /// `event: heartbeat` / `data: ping`, for clients that want to see it.
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
    /// A connection whose peer takes no byte of what herald sends for this long is dropped
    /// (`None`: wait for the operating system).
    pub peer_timeout: Option<Duration>,
    /// Plain-HTTP `GET /sse` is written by herald's own writer (far less memory per
    /// subscriber); `false` serves it through hyper like everything else.
    pub direct_sse: bool,
    /// Publish requests per second and burst, per credential or client address (`None`: no
    /// limit).
    pub publish_rate: Option<super::rate::PublishRate>,
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
            peer_timeout: Some(Duration::from_secs(15)),
            direct_sse: true,
            publish_rate: None,
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
    pub(super) exporter: Arc<admin::Exporter>,
    pub started: Instant,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The publish rate limit's buckets, when there is one.
    pub(super) publish_limiter: Option<Arc<super::rate::PublishLimiter>>,
}

impl Api {
    /// A place for one more SSE response under the connection caps, or — when there is none —
    /// the polite answer of [`limits::turned_away`], counted in the metrics.
    pub(super) fn subscription_slot(
        &self,
        peer: Option<SocketAddr>,
        accept: Option<&str>,
    ) -> Result<limits::Slot, Box<Response>> {
        self.limits
            .acquire(peer.map(|p| p.ip()))
            .map_err(|full| self.turn_away(full, peer, accept))
    }

    /// The polite "come back later" of [`limits::turned_away`], counted in the metrics: for a
    /// subscriber beyond the caps, or one that arrives while the event store is away.
    pub(super) fn turn_away(
        &self,
        why: limits::Full,
        peer: Option<SocketAddr>,
        accept: Option<&str>,
    ) -> Box<Response> {
        self.metrics.turned_away.inc();
        // Debug only: under a flood this would be a line per attempt.
        tracing::debug!(?peer, ?why, "subscriber turned away");
        let event_stream = accept.is_some_and(|a| a.contains("text/event-stream"));
        Box::new(limits::turned_away(
            why,
            event_stream,
            self.options.shutdown_retry_window,
        ))
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
        let publish_limiter = options
            .publish_rate
            .map(|rate| Arc::new(super::rate::PublishLimiter::new(rate)));
        let api = Api(Arc::new(ApiState {
            broker,
            options: Arc::new(options),
            limits: Arc::new(limits),
            exporter,
            metrics: Arc::new(metrics),
            started: Instant::now(),
            shutdown: rx,
            publish_limiter,
        }));
        (api, ShutdownSignal(tx))
    }
}
