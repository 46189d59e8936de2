//! One subscriber's way through its streams: catch up from the log, then go live, and fall back to
//! the log whenever it cannot keep up.
//!
//! The seam between history and live is where events get lost or doubled, so the order of steps
//! is the whole design:
//! 1. join the topic's live channel *first*, so nothing made visible from now on is missed;
//! 2. read the visible watermark: every event up to it is in the log, every later one will also
//!    arrive on the channel (the node's tailer raises the watermark before it sends);
//! 3. catch up from the log in pages, bounded by the watermark, in id order across all streams;
//! 4. go live, skipping any channel event at or below the cursor (already read from the log).
//!
//! A receiver that lags behind its channel's capacity goes back to step 3 from its cursor, so a
//! slow subscriber costs a bounded channel slot, never a queue of its own, and never slows the
//! tailer. The cursor only moves forward, so nothing is delivered twice.
//!
//! A stream's end — sealed or deleted — reaches a subscriber as [`Delivery::Closed`], in order
//! after the stream's last event (it travels the same channel). Whenever a subscription goes
//! live (at the start, and after each catch-up), it also compares the streams' state with what
//! it has told, so an end that happened while it was reading the log is told too. Once every
//! stream it reads is sealed and told, the subscription ends.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::engine::{Engine, EngineError, StreamState};
use super::event::{Event, EventId, StreamName};
use super::fanout::{Live, Membership, Topic};
use super::{BrokerError, Shared};

/// Events read from the log per step of a catch-up.
const PAGE: usize = 512;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only events made visible after subscribing.
    Live,
    /// Every retained event with a higher id, then live. `After(EventId(0))` is all history.
    After(EventId),
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Events the subscriber asked for were removed by retention before it could read them.
    Gap(Gap),
    /// The stream was sealed or deleted.
    Closed(Closed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub stream: StreamName,
    /// Deleted (its history is gone, and the name may live again), rather than sealed.
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub stream: StreamName,
    pub requested_after: EventId,
    /// The oldest event still retained, or `None` when the stream holds none now.
    pub oldest_available: Option<EventId>,
}

pub struct Subscription {
    shared: Arc<Shared>,
    streams: Topic,
    membership: Membership,
    /// Everything at or below this id has been delivered or deliberately skipped.
    cursor: EventId,
    catching_up: bool,
    pending: VecDeque<Delivery>,
    /// Where the cursor stands once `pending` is drained (the end of the page read).
    pending_bound: EventId,
    gap_told: Vec<bool>,
    /// Per stream: its seal was told.
    sealed_told: Vec<bool>,
    /// Per stream: the deletes known of (see `Shared::deletions`).
    deletions: Vec<u64>,
    /// Compare the streams' state with what was told before going live.
    check_lifecycle: bool,
    lag_recoveries: u64,
    /// A resume point above this node's watermark, not yet placed: it may have been committed
    /// (on another node, or here but not yet through the tailer) or it may be from the future.
    unplaced: Option<EventId>,
}

impl Subscription {
    pub(crate) fn new(shared: Arc<Shared>, streams: Topic, start: StartAt) -> Subscription {
        let membership = shared.fanout.join(streams.clone());
        let visible = shared.visible();
        // An id above the watermark is placed by the first `next`, which asks the engine.
        let (cursor, catching_up, unplaced) = match start {
            StartAt::Live => (visible, false, None),
            StartAt::After(id) if id > visible => (visible, false, Some(id)),
            StartAt::After(id) => (id, id < visible, None),
        };
        Subscription {
            gap_told: vec![false; streams.len()],
            sealed_told: vec![false; streams.len()],
            deletions: streams.iter().map(|s| shared.deletions(s)).collect(),
            check_lifecycle: true,
            shared,
            streams,
            membership,
            cursor,
            catching_up,
            pending: VecDeque::new(),
            pending_bound: cursor,
            lag_recoveries: 0,
            unplaced,
        }
    }

    /// Places a resume point above the watermark. One the engine has committed — another node's
    /// event, or one this node's tailer has not passed yet — is where the subscriber is: it goes
    /// live from there, and skips what its channel brings up to it. One above everything ever
    /// committed (a client of a data directory since wiped) would hide every event until the
    /// sequence caught up with it, so it is taken as "now".
    async fn place(&mut self, id: EventId) -> Result<(), BrokerError> {
        let head = Box::pin(self.shared.engine.head()).await?;
        self.unplaced = None;
        if id <= head.id {
            self.cursor = id;
            self.pending_bound = id;
        }
        Ok(())
    }

    /// The streams this subscription reads, sorted.
    pub fn streams(&self) -> &[StreamName] {
        &self.streams
    }

    /// The id of the last event delivered or skipped.
    pub fn cursor(&self) -> EventId {
        self.cursor
    }

    /// True when there is nothing to wait for: every stream is sealed and no retained event is
    /// past the cursor. (An HTTP subscribe answers `204 No Content` then.)
    pub async fn is_finished(&self) -> Result<bool, BrokerError> {
        for state in self.states().await? {
            let unread = state
                .stats
                .is_some_and(|s| s.length > 0 && s.last_id > self.cursor);
            if !state.settings.sealed || unread {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What the engine knows of each stream read, in order.
    async fn states(&self) -> Result<Vec<StreamState>, BrokerError> {
        let engine = &self.shared.engine;
        futures::future::try_join_all(self.streams.iter().map(|s| engine.stream(s))).await
    }

    /// How often this subscriber fell behind its live channel and was caught up from the log.
    pub fn lag_recoveries(&self) -> u64 {
        self.lag_recoveries
    }

    /// The next delivery. `None` when every stream it reads is sealed (and that was told), or
    /// the broker is gone. Cancel-safe: dropping the future loses nothing, the next call resumes
    /// where this one was.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        if let Some(id) = self.unplaced {
            if let Err(e) = self.place(id).await {
                return Some(Err(e));
            }
        }
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                if let Delivery::Event(event) = &delivery {
                    self.cursor = event.id;
                }
                return Some(Ok(delivery));
            }
            self.cursor = self.cursor.max(self.pending_bound);
            if self.catching_up {
                let upto = self.shared.visible();
                if self.cursor >= upto {
                    self.catching_up = false;
                    self.check_lifecycle = true;
                    continue;
                }
                // Boxed, as below: a subscription lives for a connection's whole life, and the
                // state of these reads would otherwise make every idle one larger.
                let page = Box::pin(async {
                    let states = self.states().await?;
                    let page = read_page(
                        self.shared.engine.as_ref(),
                        &self.streams,
                        self.cursor,
                        upto,
                    )
                    .await?;
                    Ok::<_, BrokerError>((states, page))
                });
                match page.await {
                    Ok((states, (events, bound))) => {
                        self.note_gaps(&states);
                        let metrics = &self.shared.metrics;
                        metrics.catch_up_reads.inc();
                        metrics.catch_up_events.inc_by(events.len() as u64);
                        self.pending
                            .extend(events.into_iter().map(|e| Delivery::Event(Arc::new(e))));
                        self.pending_bound = bound;
                    }
                    Err(e) => return Some(Err(e)),
                }
            } else if self.check_lifecycle {
                match Box::pin(self.states()).await {
                    Ok(states) => self.note_lifecycle(&states),
                    Err(e) => return Some(Err(e)),
                }
                self.check_lifecycle = false;
            } else if self.sealed_told.iter().all(|told| *told) {
                return None;
            } else {
                match self.membership.receiver().recv().await {
                    Ok(Live::Event(event)) if event.id > self.cursor => {
                        self.cursor = event.id;
                        return Some(Ok(Delivery::Event(event)));
                    }
                    Ok(Live::Event(_)) => {}
                    Ok(Live::Closed { stream, deleted }) => {
                        if let Ok(i) = self.streams.binary_search(&stream) {
                            self.closed(i, deleted);
                        }
                    }
                    Ok(Live::Resync) => self.catching_up = true,
                    Err(RecvError::Lagged(_)) => {
                        self.lag_recoveries += 1;
                        self.shared.metrics.lag_recoveries.inc();
                        self.catching_up = true;
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    }

    /// The next event if one is ready *now* — already read from the log, or waiting in the
    /// live channel — without starting a read or waiting. Lets a writer put every event that is
    /// ready into one write (coalescing). `None` means "call [`next`](Self::next)": nothing is
    /// ready, or what comes next is not an event (a gap, a close, a catch-up from the log).
    pub fn try_next_event(&mut self) -> Option<Arc<Event>> {
        if self.unplaced.is_some() {
            return None;
        }
        loop {
            match self.pending.front() {
                Some(Delivery::Event(_)) => {
                    let Some(Delivery::Event(event)) = self.pending.pop_front() else {
                        return None;
                    };
                    self.cursor = event.id;
                    return Some(event);
                }
                Some(_) => return None,
                None => {}
            }
            if self.catching_up || self.check_lifecycle || self.sealed_told.iter().all(|t| *t) {
                return None;
            }
            match self.membership.receiver().try_recv() {
                Ok(Live::Event(event)) if event.id > self.cursor => {
                    self.cursor = event.id;
                    return Some(event);
                }
                Ok(Live::Event(_)) => {}
                Ok(Live::Closed { stream, deleted }) => {
                    if let Ok(i) = self.streams.binary_search(&stream) {
                        self.closed(i, deleted);
                    }
                }
                Ok(Live::Resync) => {
                    self.catching_up = true;
                    return None;
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    self.lag_recoveries += 1;
                    self.shared.metrics.lag_recoveries.inc();
                    self.catching_up = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Queues what changed since it was last told: deletes, and seals whose stream has been read
    /// to its end. A seal whose last events are still ahead of the cursor is not told here: those
    /// events and then the seal itself are on their way through the live channel, in order (or,
    /// if it overflows, the next catch-up reads the events and this check runs again).
    fn note_lifecycle(&mut self, states: &[StreamState]) {
        for (i, state) in states.iter().enumerate() {
            let epoch = self.shared.deletions(&self.streams[i]);
            let read_to_end = state.stats.is_none_or(|stats| stats.last_id <= self.cursor);
            self.closed(i, Some(epoch));
            if state.settings.sealed && read_to_end {
                self.closed(i, None);
            }
        }
    }

    /// Queues a `Closed` for stream `i` — sealed (`None`) or its `Some(n)`-th delete — unless
    /// it was told already.
    fn closed(&mut self, i: usize, deleted: Option<u64>) {
        let new = match deleted {
            Some(epoch) => {
                let new = epoch > self.deletions[i];
                if new {
                    self.deletions[i] = epoch;
                    self.sealed_told[i] = false; // the stream may be sealed again in its next life
                }
                new
            }
            None => !std::mem::replace(&mut self.sealed_told[i], true),
        };
        if new {
            self.pending.push_back(Delivery::Closed(Closed {
                stream: self.streams[i].clone(),
                deleted: deleted.is_some(),
            }));
        }
    }

    /// Queues one `Gap` per stream whose retained history no longer reaches the cursor.
    fn note_gaps(&mut self, states: &[StreamState]) {
        if self.cursor == EventId::ZERO {
            return; // "everything retained" cannot miss anything
        }
        for (i, state) in states.iter().enumerate() {
            if self.gap_told[i] {
                continue;
            }
            let Some(stats) = state.stats else {
                continue;
            };
            if stats.trimmed_through > self.cursor {
                self.gap_told[i] = true;
                self.pending.push_back(Delivery::Gap(Gap {
                    stream: self.streams[i].clone(),
                    requested_after: self.cursor,
                    oldest_available: (stats.length > 0).then_some(stats.first_id),
                }));
            }
        }
    }

    /// This subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl Stream<Item = Result<Delivery, BrokerError>> + Send + Sync {
        // An engine's futures need not be `Sync`; a stream is only ever polled through `&mut`.
        sync_wrapper::SyncStream::new(futures::stream::unfold(self, |mut sub| async move {
            sub.next().await.map(|item| (item, sub))
        }))
    }
}

/// Reads the next events after `after` of all `streams` in id order, up to `upto`. Returns them
/// and the id up to which the answer is complete: a stream that filled its page may hold more
/// beyond its last id, so nothing past the smallest such id can be trusted to be complete yet.
async fn read_page(
    engine: &dyn Engine,
    streams: &[StreamName],
    after: EventId,
    upto: EventId,
) -> Result<(Vec<Event>, EventId), EngineError> {
    let mut bound = upto;
    let mut events = Vec::new();
    for stream in streams {
        let mut page = engine.read(stream, after, upto, PAGE).await?;
        if page.len() == PAGE {
            if let Some(last) = page.last() {
                bound = bound.min(last.id);
            }
        }
        events.append(&mut page);
    }
    if streams.len() > 1 {
        events.retain(|e| e.id <= bound);
        events.sort_unstable_by_key(|e| e.id);
    }
    Ok((events, bound))
}
