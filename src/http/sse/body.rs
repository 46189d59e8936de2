//! The body of one SSE response: frames as the subscription yields them, coalesced when several
//! are ready, heartbeats when idle, presence frames, and the end (a seal, an expired token, a
//! shutdown).

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::watch;

use crate::broker::event::{Event, StreamName};
use crate::broker::presence::{PresenceChange, PresenceGuard, PresenceWatch};
use crate::broker::{Delivery, Subscription};
use crate::http::api::{Api, HeartbeatStyle};
use crate::http::auth;
use crate::http::limits::Slot;
use crate::http::wire::{
    close_frame, come_back_later, envelope_frame, event_frame, gap_frame, presence_frame,
};

/// Logs one line when a connection opens and one when it goes, with what it received.
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

pub(super) struct SseBody {
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
    pub watch: Option<PresenceWatch>,
    /// Presence membership, with `client=`; dropped with the body.
    pub member: Option<PresenceGuard>,
    /// This subscription's place under the connection caps; given back with the body.
    pub slot: Option<Slot>,
    /// When the reader's token expires (never, without `exp`).
    expires: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The server-wide delivery count.
    delivered: prometheus_client::metrics::counter::Counter,
}

impl SseBody {
    pub fn new(api: &Api, subscription: Subscription, envelope: bool, id: String) -> SseBody {
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
    pub fn expire_at(&mut self, exp: SystemTime) {
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
                change = next_change(&mut self.watch) => return Some(self.with_ready_changes(&change)),
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
        let envelope = self.envelope;
        let frame = move |event: &Event| {
            if envelope {
                envelope_frame(event)
            } else {
                event_frame(event)
            }
        };
        let subscription = &mut self.subscription;
        let (chunk, count) = coalesce(frame(first), || {
            subscription.try_next_event().map(|e| frame(&e))
        });
        self.log.delivered += count;
        self.delivered.inc_by(count);
        self.log.lag_recoveries = self.subscription.lag_recoveries();
        chunk
    }

    /// The same for joins and leaves: when a whole room arrives at once, a watcher that was busy
    /// writes every change it has been told of since in one go.
    fn with_ready_changes(&mut self, first: &PresenceChange) -> Bytes {
        let Some(watch) = self.watch.as_mut() else {
            return presence_frame(first);
        };
        coalesce(presence_frame(first), || {
            watch.try_next().map(|c| presence_frame(&c))
        })
        .0
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
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

/// Most frames, and bytes, put into one write when several are ready at once.
const COALESCE_FRAMES: u64 = 256;
const COALESCE_BYTES: usize = 32 * 1024;

/// `first`, followed by the frames `next` has ready, as one chunk (up to the limits above), and
/// how many frames that is. A lone frame goes out as its shared, pre-encoded bytes: no copy.
fn coalesce(first: Bytes, mut next: impl FnMut() -> Option<Bytes>) -> (Bytes, u64) {
    let mut count = 1;
    let mut batch: Option<BytesMut> = None;
    while count < COALESCE_FRAMES
        && batch.as_ref().map_or(first.len(), BytesMut::len) < COALESCE_BYTES
    {
        let Some(frame) = next() else {
            break;
        };
        let buf = batch.get_or_insert_with(|| {
            let mut buf = BytesMut::with_capacity(COALESCE_BYTES);
            buf.extend_from_slice(&first);
            buf
        });
        buf.extend_from_slice(&frame);
        count += 1;
    }
    (batch.map_or(first, BytesMut::freeze), count)
}

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
