//! For operators: `GET /healthz` (the store is writable), `GET /readyz` (and herald is not
//! shutting down), and `GET /metrics` in the Prometheus (OpenMetrics) text format.
//!
//! Counters are counted where things happen — the broker counts publishes, catch-ups, lag
//! recoveries and fsyncs; the HTTP layer counts connections, deliveries and publish latency —
//! and values that are cheaper to read than to track (subscriptions per stream, store size,
//! uptime) are read at scrape time. Subscriptions by stream are bounded: the 20 busiest streams,
//! and the rest summed under `stream="(other)"`, which no stream name can be.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::request::with_api;
use crate::broker::Broker;
use crate::broker::StreamInfo;

/// Streams named in `herald_subscriptions{stream=…}`; the rest are summed.
const TOP_STREAMS: usize = 20;
const OTHER: &str = "(other)";

/// What the HTTP layer counts.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// TCP (or TLS) connections open now.
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// Events written to SSE subscribers.
    pub delivered: Counter,
    /// Subscribers turned away by `--max-connections` or `--max-connections-per-ip`.
    pub turned_away: Counter,
    /// From a publish request's arrival to its `201` (durable and visible), in seconds.
    pub publish_seconds: Histogram,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            delivered: Counter::default(),
            turned_away: Counter::default(),
            // 100 µs to ~3.3 s.
            publish_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

/// The registry, with the gauges that are filled in at each scrape.
pub struct Exporter {
    registry: Registry,
    subscriptions: Gauge,
    by_stream: Family<StreamLabel, Gauge>,
    streams: Gauge,
    store_bytes: Gauge,
    uptime: Gauge<f64, AtomicU64>,
}

impl Exporter {
    pub fn new(broker: &Broker, http: &HttpMetrics) -> Exporter {
        let mut registry = Registry::with_prefix("herald");
        let b = broker.metrics();
        registry.register(
            "events_published",
            "Events published (durable and visible), all streams",
            b.published.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to SSE subscribers",
            http.delivered.clone(),
        );
        registry.register(
            "catch_up_reads",
            "Pages read from the log for subscribers (resumes, lag recoveries)",
            b.catch_up_reads.clone(),
        );
        registry.register(
            "catch_up_events",
            "Events subscribers got from the log rather than a live channel",
            b.catch_up_events.clone(),
        );
        registry.register(
            "lag_recoveries",
            "Times a subscriber fell behind its live channel and was caught up from the log",
            b.lag_recoveries.clone(),
        );
        registry.register(
            "fsync_seconds",
            "Time of each fsync of the log",
            b.fsync_seconds.clone(),
        );
        registry.register(
            "publish_seconds",
            "From a publish request's arrival to its 201 (durable and visible)",
            http.publish_seconds.clone(),
        );
        registry.register(
            "connections_open",
            "TCP connections open (HTTP/1.1 and HTTP/2, any request)",
            http.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            http.connections_accepted.clone(),
        );
        registry.register(
            "subscribers_turned_away",
            "SSE subscribers turned away by a connection cap",
            http.turned_away.clone(),
        );
        let subscriptions = Gauge::default();
        let by_stream = Family::<StreamLabel, Gauge>::default();
        let streams = Gauge::default();
        let store_bytes = Gauge::default();
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "subscriptions",
            "Open SSE subscriptions (and dashboards)",
            subscriptions.clone(),
        );
        registry.register(
            "stream_subscribers",
            "Subscribers per stream: the 20 busiest, the rest as stream=\"(other)\"",
            by_stream.clone(),
        );
        registry.register("streams", "Streams known", streams.clone());
        registry.register(
            "store_size_bytes",
            "Bytes the event log occupies on disk",
            store_bytes.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since herald started",
            uptime.clone(),
        );
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "herald's version", build);
        Exporter {
            registry,
            subscriptions,
            by_stream,
            streams,
            store_bytes,
            uptime,
        }
    }

    fn encode(&self, api: &Api, mut streams: Vec<StreamInfo>) -> Result<String, std::fmt::Error> {
        self.streams.set(streams.len() as i64);
        self.subscriptions.set(api.limits.open() as i64);
        self.store_bytes.set(api.broker.size_on_disk() as i64);
        self.uptime.set(api.started.elapsed().as_secs_f64());
        streams.sort_by(|a, b| b.subscribers.cmp(&a.subscribers).then(a.name.cmp(&b.name)));
        self.by_stream.clear();
        let mut other = 0;
        for (i, info) in streams.iter().enumerate() {
            if i < TOP_STREAMS {
                self.by_stream
                    .get_or_create(&StreamLabel {
                        stream: info.name.to_string(),
                    })
                    .set(info.subscribers as i64);
            } else {
                other += info.subscribers as i64;
            }
        }
        if streams.len() > TOP_STREAMS {
            self.by_stream
                .get_or_create(&StreamLabel {
                    stream: OTHER.to_owned(),
                })
                .set(other);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let health = warp::path!("healthz")
        .and(warp::get())
        .and(with_api(api.clone()))
        .map(|api: Api| {
            if api.broker.is_writable() {
                status(StatusCode::OK, "ok")
            } else {
                status(StatusCode::SERVICE_UNAVAILABLE, "store not writable")
            }
        });
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(with_api(api.clone()))
        .map(|api: Api| {
            if *api.shutdown.borrow() {
                status(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            } else if !api.broker.is_writable() {
                status(StatusCode::SERVICE_UNAVAILABLE, "store not writable")
            } else {
                status(StatusCode::OK, "ready")
            }
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api(api))
        .then(|authorization: Option<String>, api: Api| async move {
            if let Err(denied) = api.options.access.check_metrics(authorization.as_deref()) {
                let refused = super::error::respond(Err(denied.into()));
                return super::auth::challenge(refused);
            }
            let streams = match api.broker.all_streams().await {
                Ok(streams) => streams,
                Err(e) => return super::error::respond(Err(e.into())),
            };
            match api.exporter.encode(&api, streams) {
                Ok(text) => {
                    let mut response = Response::new(text.into());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
            }
        });
    health.or(ready).unify().or(metrics).unify()
}

fn status(code: StatusCode, text: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "status": text })), code).into_response()
}

#[cfg(test)]
mod tests {
    use crate::broker::{Broker, BrokerOptions};
    use crate::http::{routes, Api, HttpOptions};

    #[tokio::test]
    async fn readiness_turns_503_when_shutting_down_and_health_stays_200() {
        let broker = Broker::open(BrokerOptions::default()).unwrap();
        let (api, shutdown) = Api::new(broker, HttpOptions::default());
        let routes = routes(api);
        let get = |path: &'static str| warp::test::request().path(path).reply(&routes);
        assert_eq!(get("/readyz").await.status(), 200);
        shutdown.trigger();
        let ready = get("/readyz").await;
        assert_eq!(ready.status(), 503);
        assert!(String::from_utf8_lossy(ready.body()).contains("shutting down"));
        assert_eq!(get("/healthz").await.status(), 200);
    }
}
