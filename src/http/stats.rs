//! `GET /stats` and `GET /stats/live`: what herald is doing right now — the busiest streams
//! with their counts, open connections, events published and delivered — as one JSON snapshot, or as an
//! SSE stream of snapshots once a second (`event: stats`), which is what the dashboard at `/`
//! runs on: it updates over SSE from herald, not by polling. Private streams the caller may not
//! read are left out, as in `GET /streams`.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::api::Api;
use super::auth::{self, Grant};
use super::error::{respond, ApiError};
use super::limits::Slot;
use super::request::{peer_addr, with_api};
use super::wire::{come_back_later, streams_json, StreamJson};

/// How often `GET /stats/live` sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);
/// Streams in a snapshot: the busiest (see [`Broker::busiest`](crate::broker::Broker::busiest)).
/// Hundreds of thousands of streams are normal; `GET /streams` pages through all of them.
const SHOWN: usize = 100;

#[derive(Serialize)]
struct Snapshot<'a> {
    /// Seconds since herald started.
    uptime: f64,
    /// Open SSE connections (subscriptions and dashboards).
    connections: usize,
    /// Events published since start-up, all streams.
    published: u64,
    /// Events written to subscribers since start-up.
    delivered: u64,
    /// The busiest streams (at most 100), by name.
    streams: Vec<StreamJson<'a>>,
    /// Whether there are streams beyond those listed (`GET /streams` pages through all).
    more_streams: bool,
    /// Per stream, events per second over the last minute (oldest first): in `GET /stats` and
    /// the first snapshot of `GET /stats/live`, so a page's sparklines start with the minute
    /// that passed; later snapshots carry only the counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    recent: Option<std::collections::BTreeMap<&'a str, Vec<u32>>>,
}

/// The dashboard's snapshot, as JSON.
async fn snapshot(
    api: &Api,
    grant: &Grant,
    with_recent: bool,
) -> Result<serde_json::Value, ApiError> {
    let (mut streams, more_streams) = api.broker.busiest(SHOWN).await?;
    streams.retain(|info| api.options.access.may_read(grant, &info.name));
    let names: Vec<_> = streams.iter().map(|s| s.name.clone()).collect();
    let recent = with_recent.then(|| {
        let rates = api.broker.recent_rates(&names);
        streams.iter().map(|s| s.name.as_str()).zip(rates).collect()
    });
    let snapshot = Snapshot {
        uptime: api.started.elapsed().as_secs_f64(),
        connections: api.limits.open(),
        published: api.broker.published(),
        delivered: api.metrics.delivered.get(),
        streams: streams_json(&streams),
        more_streams,
        recent,
    };
    // A struct of numbers and strings always serializes.
    Ok(serde_json::to_value(&snapshot).unwrap_or_default())
}

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let once = warp::path!("stats")
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(with_api(api.clone()))
        .then(|grant: Result<Grant, ApiError>, api: Api| async move {
            respond(
                async {
                    let snapshot = snapshot(&api, &grant?, true).await?;
                    Ok(warp::reply::json(&snapshot).into_response())
                }
                .await,
            )
        });
    let live = warp::path!("stats" / "live")
        .and(warp::get())
        .and(auth::reader(api.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and(peer_addr())
        .and(with_api(api))
        .map(
            |grant: Result<Grant, ApiError>,
             accept: Option<String>,
             peer: Option<std::net::SocketAddr>,
             api: Api| {
                respond(grant.map(
                    |grant| match api.subscription_slot(peer, accept.as_deref()) {
                        Ok(slot) => live_response(api, grant, slot),
                        Err(turned_away) => *turned_away,
                    },
                ))
            },
        );
    live.or(once).unify()
}

/// One snapshot frame: `event: stats`, the JSON on one `data:` line (compact JSON has no
/// newline), no id (snapshots are not history).
fn frame(snapshot: &serde_json::Value) -> Bytes {
    let json = serde_json::to_string(snapshot).unwrap_or_default();
    Bytes::from(format!("event: stats\ndata: {json}\n\n"))
}

struct Live {
    api: Api,
    grant: Grant,
    _slot: Slot,
    shutdown: watch::Receiver<bool>,
    ticks: tokio::time::Interval,
    opened: bool,
    /// A snapshot went out (the first one carries the recent rates).
    sent_one: bool,
    ended: bool,
}

fn live_response(api: Api, grant: Grant, slot: Slot) -> Response {
    let state = Live {
        shutdown: api.shutdown.clone(),
        ticks: tokio::time::interval(EVERY),
        api,
        grant,
        _slot: slot,
        opened: false,
        sent_one: false,
        ended: false,
    };
    let body = futures::stream::unfold(state, |mut live| async move {
        if !live.opened {
            live.opened = true;
            let retry = format!("retry: {}\n\n", live.api.options.retry_ms);
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(retry)), live));
        }
        if live.ended {
            return None;
        }
        let window = live.api.options.shutdown_retry_window;
        let stop = tokio::select! {
            biased;
            _ = live.shutdown.wait_for(|stop| *stop) => true,
            _ = live.ticks.tick() => false,
        };
        let next = if stop {
            live.ended = true;
            come_back_later(window)
        } else {
            let first = !std::mem::replace(&mut live.sent_one, true);
            match snapshot(&live.api, &live.grant, first).await {
                Ok(snapshot) => frame(&snapshot),
                // Skipped this once; the next tick tries again.
                Err(e) => Bytes::from(format!(": stats unavailable: {}\n\n", e.message)),
            }
        };
        Some((Ok(next), live))
    });
    super::sse::event_stream(body)
}
