//! `GET /sse`: a subscription, written as a `text/event-stream` response.
//!
//! The body is a stream polled only when the socket can take more (by `direct.rs` on plain
//! HTTP/1.1, by hyper over TLS and HTTP/2), so a client that stops reading applies real TCP
//! backpressure: its subscription simply stops pulling, falls behind its live channel, and is
//! later caught up from the log. Frames are the events'
//! pre-encoded `Bytes`, shared with every other subscriber.
//!
//! `client=ID` makes the connection a presence member of its streams for as long as the body
//! lives (the body is dropped as soon as the peer closes, so a closed tab is noticed at once);
//! `presence=1` adds the streams' join and leave frames. A subscription whose streams are all
//! sealed ends the response; one that could only ever wait on sealed streams is answered
//! `204 No Content`, which tells `EventSource` to stop reconnecting.
//!
//! Before anything is sent, the reader's credentials must cover every private stream it names
//! (`auth.rs`), and the subscription must find room under the connection caps (`limits.rs`). A
//! response whose token carries `exp` ends when the token does; the browser reconnects with
//! whatever token it holds by then.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::watch;
use uuid::Uuid;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::auth::{self, Grant};
use super::error::{respond, ApiError};
use super::limits::Slot;
use super::listener::RequestId;
use super::{peer_addr, query_pairs, raw_query, with_api, Api, HeartbeatStyle};
use crate::broker::event::{Event, EventId, StreamName};
use crate::broker::presence::{ChangeKind, ClientId, PresenceChange, PresenceGuard, PresenceWatch};
use crate::broker::{Closed, Delivery, Gap, StartAt, Subscription};

pub fn routes(api: Api) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("sse")
        .and(warp::get())
        .and(raw_query())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(warp::header::optional::<String>("accept"))
        .and(auth::reader(api.clone()))
        .and(peer_addr())
        .and(warp::ext::optional::<RequestId>())
        .and(with_api(api))
        .then(
            |query: String,
             last_event_id: Option<String>,
             accept: Option<String>,
             grant,
             peer,
             id: Option<RequestId>,
             api| async move {
                let request = Request {
                    query,
                    last_event_id,
                    accept,
                    grant,
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
    peer: Option<SocketAddr>,
    /// The request id, which the connection's log lines carry.
    id: String,
}

/// A parsed `GET /sse` request.
#[derive(Debug, PartialEq, Eq)]
struct SseRequest {
    streams: Vec<StreamName>,
    start: StartAt,
    envelope: bool,
    client: Option<ClientId>,
    presence: bool,
}

fn flag(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "true" | "" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!("{key} must be 1 or 0"))),
    }
}

fn parse_request(
    query: &str,
    last_event_id: Option<&str>,
    max_streams: usize,
) -> Result<SseRequest, ApiError> {
    let mut streams = Vec::new();
    let mut last_id = None;
    let mut envelope = false;
    let mut client = None;
    let mut presence = false;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "stream" => streams.push(StreamName::new(&value)?),
            "last_id" => {
                last_id = Some(EventId::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "last_id must be a decimal event id, got {value:?}"
                    ))
                })?)
            }
            "envelope" => envelope = flag("envelope", &value)?,
            "presence" => presence = flag("presence", &value)?,
            "client" => client = Some(ClientId::new(&value)?),
            // Other parameters (cache busters, tokens handled elsewhere) are ignored.
            _ => {}
        }
    }
    if streams.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one stream: /sse?stream=NAME (repeat for more)",
        ));
    }
    if streams.len() > max_streams {
        return Err(ApiError::bad_request(format!(
            "{} streams requested; one connection may read at most {max_streams}",
            streams.len()
        )));
    }
    // The header wins: it is what a reconnecting EventSource sends, and it is newer than the
    // last_id the page was first opened with.
    if let Some(header) = last_event_id {
        let id = EventId::parse(header).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Last-Event-ID must be a decimal event id, got {header:?}"
            ))
        })?;
        last_id = Some(id);
    }
    Ok(SseRequest {
        streams,
        start: last_id.map_or(StartAt::Live, StartAt::After),
        envelope,
        client,
        presence,
    })
}

async fn subscribe(api: Api, arrived: Request) -> Result<Response, ApiError> {
    let grant = arrived.grant?;
    let request = parse_request(
        &arrived.query,
        arrived.last_event_id.as_deref(),
        api.options.max_streams_per_subscription,
    )?;
    let access = &api.options.access;
    for stream in &request.streams {
        access.check_read(&grant, stream)?;
    }
    let client = access.presence_id(&grant, request.client)?;
    let subscription = api.broker.subscribe(request.streams, request.start);
    if subscription.is_finished().await? {
        // Only sealed streams, nothing left to send: the one answer that makes EventSource stop.
        return Ok(StatusCode::NO_CONTENT.into_response());
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

/// Logs one line when a connection opens and one when it goes, with what it received — the
/// seed talk's per-connection log, kept.
struct ConnectionLog {
    id: String,
    streams: String,
    delivered: u64,
    lag_recoveries: u64,
    opened: Instant,
}

impl ConnectionLog {
    fn open(subscription: &Subscription, id: String) -> ConnectionLog {
        let log = ConnectionLog {
            id,
            streams: subscription
                .streams()
                .iter()
                .map(StreamName::as_str)
                .collect::<Vec<_>>()
                .join(","),
            delivered: 0,
            lag_recoveries: 0,
            opened: Instant::now(),
        };
        tracing::info!(conn = %log.id, streams = %log.streams, from = %subscription.cursor(), "sse connected");
        log
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        tracing::info!(
            conn = %self.id,
            streams = %self.streams,
            events = self.delivered,
            caught_up_from_log = self.lag_recoveries,
            secs = self.opened.elapsed().as_secs(),
            "sse disconnected"
        );
    }
}

/// A future made once per response and polled for every frame: re-creating it per frame would
/// register and unregister a waiter (or a timer) for every event delivered.
type Signal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

struct SseBody {
    subscription: Subscription,
    log: ConnectionLog,
    envelope: bool,
    heartbeat: Duration,
    heartbeat_frame: Bytes,
    /// Fires at most once per heartbeat period; a frame written since only moves it on.
    heartbeat_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    last_write: tokio::time::Instant,
    opening: Option<Bytes>,
    shutdown: Signal,
    /// The same signal, for a check that costs one atomic load: it only ever changes to "stop".
    stopping: watch::Receiver<bool>,
    shutdown_retry_window: Duration,
    ended: bool,
    /// Join and leave frames, with `presence=1`.
    watch: Option<PresenceWatch>,
    /// Presence membership, with `client=`; dropped with the body.
    member: Option<PresenceGuard>,
    /// This subscription's place under the connection caps; given back with the body.
    slot: Option<Slot>,
    /// When the reader's token expires (never, without `exp`).
    expires: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The server-wide delivery count.
    delivered: prometheus_client::metrics::counter::Counter,
}

impl SseBody {
    fn new(api: &Api, subscription: Subscription, envelope: bool, id: String) -> SseBody {
        let mut shutdown = api.shutdown.clone();
        let mut stopping = api.shutdown.clone();
        // Already stopping counts as a change, so a response opened late ends at once too.
        if *stopping.borrow() {
            stopping.mark_changed();
        }
        let now = tokio::time::Instant::now();
        SseBody {
            log: ConnectionLog::open(&subscription, id),
            subscription,
            envelope,
            heartbeat: api.options.heartbeat,
            heartbeat_frame: match api.options.heartbeat_style {
                HeartbeatStyle::Comment => Bytes::from_static(b": heartbeat\n\n"),
                HeartbeatStyle::Event => Bytes::from_static(b"event: heartbeat\ndata: ping\n\n"),
            },
            heartbeat_timer: Box::pin(tokio::time::sleep_until(now + api.options.heartbeat)),
            last_write: now,
            // Sent at once, so the browser's `onopen` fires before any event exists.
            opening: Some(Bytes::from(format!("retry: {}\n\n", api.options.retry_ms))),
            shutdown: Box::pin(async move {
                // An error means the server is gone, which is a shutdown too.
                let _ = shutdown.wait_for(|stop| *stop).await;
            }),
            stopping,
            shutdown_retry_window: api.options.shutdown_retry_window,
            ended: false,
            watch: None,
            member: None,
            slot: None,
            expires: None,
            delivered: api.metrics.delivered.clone(),
        }
    }

    /// Ends the response when a token expiring at `exp` does.
    fn expire_at(&mut self, exp: SystemTime) {
        self.expires = Some(Box::pin(tokio::time::sleep_until(token_deadline(exp))));
    }

    /// The next bytes to write, or `None` to end the response.
    async fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.next_unstamped().await;
        self.last_write = tokio::time::Instant::now();
        frame
    }

    async fn next_unstamped(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            return Some(opening);
        }
        if self.ended {
            return None;
        }
        let retry_window = self.shutdown_retry_window;
        // The subscription is polled first: while events are ready, the other branches cost
        // nothing per event. So that a busy subscriber still stops in time, the two ends that
        // must not wait are checked first, cheaply (an atomic load; a clock read, only with a
        // token that expires).
        let delivery = loop {
            if self.stopping.has_changed().unwrap_or(true) {
                self.ended = true;
                return Some(come_back_later(retry_window));
            }
            if self
                .expires
                .as_ref()
                .is_some_and(|timer| tokio::time::Instant::now() >= timer.deadline())
            {
                self.ended = true;
                return Some(Bytes::from_static(b": token expired\n\n"));
            }
            tokio::select! {
                biased;
                next = self.subscription.next() => match next {
                    None => return None,
                    Some(Err(e)) => {
                        tracing::error!(conn = %self.log.id, error = %e, "subscription failed; closing");
                        return None;
                    }
                    Some(Ok(delivery)) => break delivery,
                },
                // These wake the task; the checks above (or this loop's next turn) answer.
                () = &mut self.shutdown => {
                    self.ended = true;
                    return Some(come_back_later(retry_window));
                }
                () = expiry(&mut self.expires) => {}
                change = next_change(&mut self.watch) => return Some(presence_frame(&change)),
                () = &mut self.heartbeat_timer => {
                    let due = self.last_write + self.heartbeat;
                    let now = tokio::time::Instant::now();
                    if now >= due {
                        self.heartbeat_timer.as_mut().reset(now + self.heartbeat);
                        return Some(self.heartbeat_frame.clone());
                    }
                    self.heartbeat_timer.as_mut().reset(due);
                }
            }
        };
        Some(match delivery {
            Delivery::Event(event) => self.with_ready_events(&event),
            Delivery::Gap(gap) => gap_frame(&gap),
            Delivery::Closed(closed) => close_frame(&closed),
        })
    }

    /// The event's frame, followed by every other event that is ready right now, as one
    /// chunk: one write (and one chunked-encoding frame) for a burst instead of one per event.
    fn with_ready_events(&mut self, first: &Event) -> Bytes {
        let frame = |event: &Event, envelope: bool| {
            if envelope {
                event.sse_envelope_frame()
            } else {
                event.sse_frame()
            }
        };
        let mut count = 1;
        let first = frame(first, self.envelope);
        let mut batch: Option<BytesMut> = None;
        while count < COALESCE_EVENTS
            && batch.as_ref().map_or(first.len(), BytesMut::len) < COALESCE_BYTES
        {
            let Some(next) = self.subscription.try_next_event() else {
                break;
            };
            let buf = batch.get_or_insert_with(|| {
                let mut buf = BytesMut::with_capacity(COALESCE_BYTES);
                buf.extend_from_slice(&first);
                buf
            });
            buf.extend_from_slice(&frame(&next, self.envelope));
            count += 1;
        }
        self.log.delivered += count;
        self.delivered.inc_by(count);
        self.log.lag_recoveries = self.subscription.lag_recoveries();
        // A lone event goes out as its shared, pre-encoded bytes: no copy.
        batch.map_or(first, BytesMut::freeze)
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        // Boxed, so that each step moves a pointer rather than the whole body.
        futures::stream::unfold(Box::new(self), |mut body| async move {
            body.next_frame().await.map(|frame| (Ok(frame), body))
        })
    }
}

/// The moment an SSE response must end for a token that expires at `exp` (with the same
/// leeway the token check allows).
fn token_deadline(exp: SystemTime) -> tokio::time::Instant {
    let left = exp
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left + Duration::from_secs(auth::LEEWAY_SECS)
}

/// Most events, and bytes, put into one write when several are ready at once.
const COALESCE_EVENTS: u64 = 256;
const COALESCE_BYTES: usize = 32 * 1024;

/// Resolves when the token's timer fires; never, without one.
async fn expiry(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// The next join or leave; never, without `presence=1`.
async fn next_change(watch: &mut Option<PresenceWatch>) -> PresenceChange {
    match watch {
        Some(watch) => match watch.next().await {
            Some(change) => change,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// `event: join` / `event: leave`, no id: live only, never in history.
fn presence_frame(change: &PresenceChange) -> Bytes {
    let kind = match change.kind {
        ChangeKind::Join => "join",
        ChangeKind::Leave => "leave",
    };
    let json = serde_json::to_string(change).unwrap_or_default();
    Bytes::from(format!("event: {kind}\ndata: {json}\n\n"))
}

/// `event: close`, data the stream's name (a stream name never holds a newline), no id.
fn close_frame(closed: &Closed) -> Bytes {
    Bytes::from(format!("event: close\ndata: {}\n\n", closed.stream))
}

/// On shutdown: a reconnection delay spread over the window, so a restart is not met by every
/// client in the same millisecond.
pub(super) fn come_back_later(window: Duration) -> Bytes {
    let window = window.as_millis().max(1) as u64;
    let delay = 1000 + fastrand::u64(0..window);
    Bytes::from(format!(": herald is restarting\nretry: {delay}\n\n"))
}

/// `event: gap` has no id, so it does not move the client's `Last-Event-ID`.
fn gap_frame(gap: &Gap) -> Bytes {
    let json = serde_json::to_string(gap).unwrap_or_default();
    Bytes::from(format!("event: gap\ndata: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_header_wins_over_the_query() {
        let request = parse_request("stream=a&stream=b&last_id=5", Some("9"), 32).unwrap();
        assert_eq!(request.start, StartAt::After(EventId(9)));
        assert_eq!(request.streams.len(), 2);
        let request = parse_request("stream=a&last_id=5", None, 32).unwrap();
        assert_eq!(request.start, StartAt::After(EventId(5)));
        assert_eq!(
            parse_request("stream=a", None, 32).unwrap().start,
            StartAt::Live
        );
    }

    #[test]
    fn bad_subscriptions_are_refused_with_reasons() {
        assert!(parse_request("", None, 32).is_err());
        assert!(parse_request("stream=a%2Fb", None, 32).is_err());
        assert!(parse_request("stream=a&last_id=x", None, 32).is_err());
        assert!(parse_request("stream=a", Some("-1"), 32).is_err());
        assert!(parse_request("stream=a&stream=b&stream=c", None, 2).is_err());
        assert!(parse_request("stream=a&envelope=yes", None, 32).is_err());
        assert!(
            parse_request("stream=realtime-qa%3Acommon&envelope=1", None, 32)
                .unwrap()
                .envelope
        );
    }

    /// Query strings as anything might send them: known and unknown keys, percent-encoded
    /// values of any text.
    fn any_query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("stream"),
            Just("last_id"),
            Just("envelope"),
            Just("presence"),
            Just("client"),
            Just("token"),
            Just("x"),
        ];
        let value = prop_oneof![
            "[a-z0-9:._-]{0,8}".boxed(),
            any::<String>().boxed(),
            any::<u64>().prop_map(|n| n.to_string()).boxed()
        ];
        proptest::collection::vec((key, value), 0..40).prop_map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        })
    }

    proptest::proptest! {
        /// Whatever the query and Last-Event-ID, parsing never panics; an accepted request
        /// names 1 to max valid streams, and a numeric Last-Event-ID is where it starts.
        #[test]
        fn fuzz_subscription_queries_and_last_event_ids(
            query in any_query(),
            raw in ".{0,60}",
            header in proptest::option::of(proptest::prelude::any::<u64>()),
            max in 1usize..8,
        ) {
            let _ = parse_request(&raw, Some(&raw), max);
            let header_text = header.map(|n| n.to_string());
            if let Ok(request) = parse_request(&query, header_text.as_deref(), max) {
                proptest::prop_assert!((1..=max).contains(&request.streams.len()));
                if let Some(n) = header {
                    proptest::prop_assert_eq!(request.start, StartAt::After(EventId(n)));
                }
            }
        }
    }
}
