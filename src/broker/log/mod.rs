//! The append-only event log, behind a narrow interface.
//!
//! The broker needs only: append (the log assigns ids), make durable, read a range of one stream,
//! trim by retention, and per-stream counters. Keeping it this small is what lets a second backend
//! (Redis Streams, for several herald nodes behind one load balancer) slot in without touching the
//! fan-out or the HTTP layer. Two backends live here: [`SledLog`] on disk and [`MemoryLog`].
//!
//! Only the broker's single writer thread calls the mutating methods (`append`, `sync`, `trim`,
//! `close`), so a backend may assume they are never concurrent with each other; reads may come
//! from any thread at any time.

mod memory;
mod sled;

pub use self::memory::MemoryLog;
pub use self::sled::SledLog;

use super::event::{Event, EventId, NewEvent, StreamName};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("corrupt record in the log: {0}")]
    Corrupt(String),
    #[error("the event id sequence is exhausted")]
    IdsExhausted,
}

impl From<::sled::Error> for LogError {
    fn from(e: ::sled::Error) -> Self {
        LogError::Storage(e.to_string())
    }
}

/// Counters of one stream, kept up to date by every append and trim (never computed by a scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Events retained now.
    pub length: u64,
    /// Oldest retained event, `EventId(0)` when the stream is empty.
    pub first_id: EventId,
    /// Newest event ever appended, `EventId(0)` when never published to.
    pub last_id: EventId,
    /// Publish time of the oldest retained event (Unix ms), for age-based trimming.
    pub first_time: u64,
    /// The highest id removed by retention: a reader positioned below it has missed events.
    pub trimmed_through: EventId,
}

/// How much of a stream to keep. `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_len: Option<u64>,
    /// Events older than this many milliseconds are removed.
    pub max_age_ms: Option<u64>,
}

impl Retention {
    /// Whether a stream with these counters has anything to trim at time `now`.
    pub fn wants_trim(&self, stats: &StreamStats, now: u64) -> bool {
        let too_long = self.max_len.is_some_and(|max| stats.length > max);
        let too_old = self
            .max_age_ms
            .is_some_and(|age| stats.length > 0 && stats.first_time + age < now);
        too_long || too_old
    }

    /// Walks a stream from its oldest event and says which to remove. Shared by the backends so
    /// they trim by exactly the same rule.
    pub(crate) fn plan(&self, stats: &StreamStats, now: u64) -> TrimPlan {
        TrimPlan {
            excess: self
                .max_len
                .map_or(0, |max| stats.length.saturating_sub(max)),
            cutoff: self.max_age_ms.map(|age| now.saturating_sub(age)),
            removed: 0,
        }
    }
}

pub(crate) struct TrimPlan {
    excess: u64,
    cutoff: Option<u64>,
    removed: u64,
}

impl TrimPlan {
    /// Called for each event from the oldest on; true means remove it and ask about the next.
    pub(crate) fn remove(&mut self, time: u64) -> bool {
        let remove = self.removed < self.excess || self.cutoff.is_some_and(|c| time < c);
        if remove {
            self.removed += 1;
        }
        remove
    }
}

/// What one call to [`Log::trim`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimOutcome {
    pub removed: u64,
    /// True when the call stopped at its removal budget with more left to trim.
    pub more: bool,
}

pub trait Log: Send + Sync + 'static {
    /// Appends events in order, giving each the next id and the time `time`. All or nothing.
    /// Appended events may be read back at once; they are durable only after [`Log::sync`].
    fn append(&self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Event>, LogError>;

    /// Makes everything appended so far durable (fsync).
    fn sync(&self) -> Result<(), LogError>;

    /// Events of `stream` with `after < id <= upto`, ascending, at most `limit`.
    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, LogError>;

    /// The newest `n` events of `stream` with `id <= upto`, ascending.
    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, LogError>;

    /// One event, if `stream` still holds it.
    fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, LogError>;

    /// Removes what `retention` says is too many or too old, oldest first, at most `budget`
    /// events per call so a huge trim never stalls publishers for long.
    fn trim(
        &self,
        stream: &StreamName,
        retention: &Retention,
        now: u64,
        budget: usize,
    ) -> Result<TrimOutcome, LogError>;

    /// The counters of one stream; `None` if it was never published to.
    fn stats(&self, stream: &StreamName) -> Option<StreamStats>;

    /// Every stream ever published to and still known, by name.
    fn all_stats(&self) -> Vec<(StreamName, StreamStats)>;

    /// The highest id ever appended (0 for an empty log). New ids are always above it, even
    /// after a crash.
    fn last_id(&self) -> EventId;

    /// Bytes the log occupies on disk (0 in memory).
    fn size_on_disk(&self) -> u64;

    /// Flushes and records a clean stop.
    fn close(&self) -> Result<(), LogError>;
}

#[cfg(test)]
mod contract_tests {
    //! The same behaviour is asked of every backend.
    use super::*;

    fn new(stream: &str, data: &str) -> NewEvent {
        NewEvent {
            stream: StreamName::new(stream).unwrap(),
            kind: None,
            data: data.into(),
        }
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id.0).collect()
    }

    fn exercise(log: &dyn Log) {
        let a = StreamName::new("a").unwrap();
        let b = StreamName::new("b").unwrap();
        assert_eq!(log.last_id(), EventId(0));
        let first = log
            .append(vec![new("a", "1"), new("b", "2"), new("a", "3")], 10)
            .unwrap();
        assert_eq!(ids(&first), [1, 2, 3]);
        log.sync().unwrap();
        assert_eq!(log.last_id(), EventId(3));
        assert_eq!(
            ids(&log.read(&a, EventId(0), EventId(99), 10).unwrap()),
            [1, 3]
        );
        assert_eq!(
            ids(&log.read(&a, EventId(1), EventId(99), 10).unwrap()),
            [3]
        );
        assert_eq!(ids(&log.read(&a, EventId(0), EventId(2), 10).unwrap()), [1]);
        assert_eq!(ids(&log.read(&a, EventId(0), EventId(9), 1).unwrap()), [1]);
        assert_eq!(ids(&log.read_last(&a, EventId(9), 1).unwrap()), [3]);
        assert_eq!(log.get(&b, EventId(2)).unwrap().unwrap().data, "2");
        assert!(log.get(&a, EventId(2)).unwrap().is_none());
        let stats = log.stats(&a).unwrap();
        assert_eq!(
            (stats.length, stats.first_id, stats.last_id),
            (2, EventId(1), EventId(3))
        );

        for i in 0..10 {
            log.append(vec![new("a", &i.to_string())], 20 + i).unwrap();
        }
        let keep5 = Retention {
            max_len: Some(5),
            max_age_ms: None,
        };
        let outcome = log.trim(&a, &keep5, 100, 3).unwrap();
        assert_eq!(
            outcome,
            TrimOutcome {
                removed: 3,
                more: true
            }
        );
        let outcome = log.trim(&a, &keep5, 100, 100).unwrap();
        assert_eq!(
            outcome,
            TrimOutcome {
                removed: 4,
                more: false
            }
        );
        let stats = log.stats(&a).unwrap();
        assert_eq!(stats.length, 5);
        assert_eq!(stats.trimmed_through, EventId(8));
        assert_eq!(stats.first_id, EventId(9));
        assert_eq!(
            ids(&log.read(&a, EventId(0), EventId(99), 99).unwrap()),
            [9, 10, 11, 12, 13]
        );

        let younger_than_3ms = Retention {
            max_len: None,
            max_age_ms: Some(3),
        };
        // times of 9..=13 are 25..=29; at now=30 the cutoff is 27
        let outcome = log.trim(&a, &younger_than_3ms, 30, 100).unwrap();
        assert_eq!(outcome.removed, 2);
        assert_eq!(log.stats(&a).unwrap().first_time, 27);
        assert_eq!(log.all_stats().len(), 2);
    }

    #[test]
    fn memory_log_keeps_the_contract() {
        exercise(&MemoryLog::new());
    }

    #[test]
    fn sled_log_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SledLog::open(dir.path(), 16 << 20, None).unwrap());
    }

    #[test]
    fn sled_log_never_reuses_ids_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let log = SledLog::open(dir.path(), 16 << 20, None).unwrap();
            let events = log.append(vec![new("a", "x")], 1).unwrap();
            log.sync().unwrap();
            // no close(): as after a crash
            events[0].id
        };
        let log = SledLog::open(dir.path(), 16 << 20, None).unwrap();
        assert!(log.last_id() >= last);
        let next = log.append(vec![new("a", "y")], 2).unwrap();
        assert!(next[0].id > last);
        assert_eq!(log.stats(&StreamName::new("a").unwrap()).unwrap().length, 2);
    }
}
