//! What appends hand to sled later: events and idempotency answers held in memory, readable at
//! once, until a *settle* stores them in sled in one batch.
//!
//! Why: with the write-ahead log, sled no longer has to hold an event before it is acknowledged
//! (the log does), so its inserts need not be on the acknowledgement path. The checkpoint thread
//! settles, at idle priority until it falls behind (the writer only when that thread has fallen
//! far behind), and in bulk: a stream's events fill runs of 4 KiB, where each group of a few
//! publishes stored a short run of its own (BENCHMARKS.md, "Step 3": durable POSTs +13 % at 16
//! connections, batches +13 %).
//!
//! Reads see pending events beside sled's: a stream's pending events are always its newest, so
//! a read takes what is pending first, then asks sled only for what lies below the first pending
//! id. Taken in that order, a settle that runs meanwhile cannot hide anything: it stores events in
//! sled before it lets go of them here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::engine::local::store::{Answered, Backlog};
use crate::broker::engine::IdempotencyKey;
use crate::broker::event::{Event, EventId, StreamName};

/// Settle once this many events are pending, or this many bytes of their data. A settle's
/// cost is nearly all sled's, per event, so its size hardly moves throughput; but at normal
/// priority it takes the core for a while, which the publishes beside it wait out (at idle
/// priority, `priority.rs`, they no longer do). Measured at normal priority (`load publish`, same
/// run): 256 events gave 25.2k / 36.0k POSTs/s at 16 / 64 connections with p99 1.9 / 3.9 ms,
/// 1,024 gave 25.7k / 36.6k with p99 2.5 / 5.0 ms; in another run 128 gave 24.8k / 34.8k with
/// p99 1.6 / 3.5 ms and 64 gave 23.7k / 32.4k with 1.5 / 3.2 ms (BENCHMARKS.md, "Step 3").
const SETTLE_EVENTS: usize = 256;
const SETTLE_BYTES: usize = 64 << 10;
/// Twice as much: the checkpoint thread, settling at idle priority, has not had the core for a
/// while, and is raised to normal priority.
const BEHIND: usize = 2;
/// Appends wait for a settle once this many times as much is pending: settles fall behind only
/// when sled cannot keep up, and then pending memory stays bounded (1 MiB of data).
const FULL: usize = 16;

#[derive(Default)]
pub(super) struct Pending {
    /// Per stream, ascending ids; never an empty list.
    pub(super) streams: HashMap<StreamName, Vec<Arc<Event>>>,
    pub(super) answers: HashMap<IdempotencyKey, Answered>,
    events: usize,
    bytes: usize,
}

/// What one settle stored, so that exactly that is let go of (appends may have come meanwhile).
pub(super) struct Settled {
    /// Per stream, the last id stored.
    pub(super) through: Vec<(StreamName, EventId)>,
    pub(super) answers: Vec<(IdempotencyKey, u64)>,
}

impl Pending {
    pub(super) fn push(&mut self, event: Arc<Event>) {
        self.events += 1;
        self.bytes += event.data.len();
        match self.streams.get_mut(&event.stream) {
            Some(events) => events.push(event),
            None => {
                self.streams.insert(event.stream.clone(), vec![event]);
            }
        }
    }

    pub(super) fn answer(&mut self, key: IdempotencyKey, answered: Answered) {
        self.answers.insert(key, answered);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.answers.is_empty()
    }

    pub(super) fn backlog(&self) -> Backlog {
        let over = |times: usize| {
            self.events >= SETTLE_EVENTS * times || self.bytes >= SETTLE_BYTES * times
        };
        if over(FULL) {
            Backlog::Full
        } else if over(BEHIND) {
            Backlog::Behind
        } else if over(1) {
            Backlog::Due
        } else {
            Backlog::Low
        }
    }

    /// The id of `stream`'s oldest pending event: every event of it below that id is in sled.
    pub(super) fn first_id(&self, stream: &StreamName) -> Option<EventId> {
        self.streams
            .get(stream)
            .and_then(|e| e.first())
            .map(|e| e.id)
    }

    fn of(&self, stream: &StreamName) -> &[Arc<Event>] {
        self.streams.get(stream).map_or(&[], Vec::as_slice)
    }

    /// Pending events of `stream` with `after < id <= upto`, at most `limit`.
    pub(super) fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Vec<Event> {
        let events = self.of(stream);
        let from = events.partition_point(|e| e.id <= after);
        events[from..]
            .iter()
            .take_while(|e| e.id <= upto)
            .take(limit)
            .map(|e| e.copy())
            .collect()
    }

    /// The newest `n` pending events of `stream` with `floor < id <= upto`, ascending.
    pub(super) fn read_last(
        &self,
        stream: &StreamName,
        floor: EventId,
        upto: EventId,
        n: usize,
    ) -> Vec<Event> {
        let events = self.of(stream);
        let end = events.partition_point(|e| e.id <= upto);
        let start = events[..end]
            .partition_point(|e| e.id <= floor)
            .max(end.saturating_sub(n));
        events[start..end].iter().map(|e| e.copy()).collect()
    }

    pub(super) fn get(&self, stream: &StreamName, id: EventId) -> Option<Event> {
        let events = self.of(stream);
        events
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|at| events[at].copy())
    }

    pub(super) fn answered(&self, key: &IdempotencyKey) -> Option<Answered> {
        self.answers.get(key).cloned()
    }

    /// Lets go of what a settle stored.
    pub(super) fn settled(&mut self, settled: Settled) {
        for (stream, through) in settled.through {
            let Some(events) = self.streams.get_mut(&stream) else {
                continue;
            };
            let stored = events.partition_point(|e| e.id <= through);
            self.events -= stored;
            self.bytes -= events[..stored].iter().map(|e| e.data.len()).sum::<usize>();
            events.drain(..stored);
            if events.is_empty() {
                self.streams.remove(&stream);
            }
        }
        for (key, time) in settled.answers {
            if self.answers.get(&key).is_some_and(|a| a.time == time) {
                self.answers.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, id: u64) -> Arc<Event> {
        event_with(stream, id, format!("{id}"))
    }

    fn event_with(stream: &str, id: u64, data: String) -> Arc<Event> {
        Arc::new(Event::new(
            EventId(id),
            StreamName::new(stream).unwrap(),
            None,
            data,
            id,
        ))
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id.0).collect()
    }

    #[test]
    fn reads_bound_by_after_upto_limit_and_floor() {
        let mut pending = Pending::default();
        for id in [3, 5, 6, 9] {
            pending.push(event("a", id));
        }
        pending.push(event("b", 7));
        let a = StreamName::new("a").unwrap();
        assert_eq!(pending.first_id(&a), Some(EventId(3)));
        assert_eq!(ids(&pending.read(&a, EventId(3), EventId(9), 9)), [5, 6, 9]);
        assert_eq!(ids(&pending.read(&a, EventId(0), EventId(6), 9)), [3, 5, 6]);
        assert_eq!(ids(&pending.read(&a, EventId(0), EventId(9), 2)), [3, 5]);
        assert_eq!(
            ids(&pending.read_last(&a, EventId(0), EventId(8), 2)),
            [5, 6]
        );
        assert_eq!(
            ids(&pending.read_last(&a, EventId(4), EventId(9), 9)),
            [5, 6, 9]
        );
        assert!(pending.read_last(&a, EventId(0), EventId(2), 9).is_empty());
        assert_eq!(
            pending.get(&a, EventId(6)).map(|e| e.data),
            Some("6".into())
        );
        assert!(pending.get(&a, EventId(7)).is_none());
        assert_eq!(pending.backlog(), Backlog::Low);
    }

    #[test]
    fn a_settle_lets_go_of_what_it_stored_only() {
        let mut pending = Pending::default();
        for id in 1..=4 {
            pending.push(event("a", id));
        }
        let key = IdempotencyKey::new("k").unwrap();
        let answered = Answered {
            time: 1,
            receipts: Vec::new(),
        };
        pending.answer(key.clone(), answered.clone());
        let a = StreamName::new("a").unwrap();
        // The settle took events up to 2 and the answer; 3 and 4 came after it looked.
        pending.settled(Settled {
            through: vec![(a.clone(), EventId(2))],
            answers: vec![(key.clone(), 1)],
        });
        assert_eq!(ids(&pending.read(&a, EventId(0), EventId(9), 9)), [3, 4]);
        assert!(pending.answered(&key).is_none());
        assert!(!pending.is_empty());
        pending.settled(Settled {
            through: vec![(a, EventId(4))],
            answers: Vec::new(),
        });
        assert!(pending.is_empty());
        assert_eq!((pending.events, pending.bytes), (0, 0));
    }

    #[test]
    fn the_backlog_is_due_then_behind_then_full_by_events_or_by_bytes() {
        let mut pending = Pending::default();
        for id in 1..SETTLE_EVENTS as u64 {
            pending.push(event("a", id));
        }
        assert_eq!(pending.backlog(), Backlog::Low);
        pending.push(event("a", SETTLE_EVENTS as u64));
        assert_eq!(pending.backlog(), Backlog::Due);
        for id in SETTLE_EVENTS..SETTLE_EVENTS * BEHIND - 1 {
            pending.push(event("a", id as u64 + 1));
        }
        assert_eq!(pending.backlog(), Backlog::Due);
        pending.push(event("a", (SETTLE_EVENTS * BEHIND) as u64));
        assert_eq!(pending.backlog(), Backlog::Behind);
        for id in SETTLE_EVENTS * BEHIND..SETTLE_EVENTS * FULL {
            pending.push(event("a", id as u64 + 1));
        }
        assert_eq!(pending.backlog(), Backlog::Full);
        let mut big = Pending::default();
        big.push(event_with("b", 1, "x".repeat(SETTLE_BYTES)));
        assert_eq!(big.backlog(), Backlog::Due);
        big.push(event_with("b", 2, "x".repeat(SETTLE_BYTES)));
        assert_eq!(big.backlog(), Backlog::Behind);
    }
}
