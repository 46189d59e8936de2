//! The storage of one node's log, behind a narrow, synchronous interface: what the local engine's
//! writer thread calls. Two stores: [`SledStore`] on disk and [`MemoryStore`].
//!
//! Only the writer thread calls the mutating methods (`append`, `append_group`, `sync`, `trim`,
//! `close`), so a store may assume they are never concurrent with each other; reads may come from
//! any thread at any time.

pub use super::memory::MemoryStore;
pub use super::sled::SledStore;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::broker::engine::{
    IdempotencyKey, ListQuery, Receipt, Retention, StreamSettings, StreamStats,
};
use crate::broker::event::{Event, EventId, NewEvent, StreamName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[source] ::sled::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in the log: {0}")]
    Corrupt(String),
    #[error("the event id sequence is exhausted")]
    IdsExhausted,
    #[error(
        "{0} is in use: another herald (or a Broker in this process that is still held) has it \
         open; stop that one or choose another data directory"
    )]
    InUse(String),
}

/// The page `query` asks for, from two maps kept in name order (streams with events, streams
/// with settings): a range search from where the page starts, so O(log n + page).
pub(crate) fn page_of<A, B>(
    with_events: &BTreeMap<StreamName, A>,
    with_settings: &BTreeMap<StreamName, B>,
    query: &ListQuery,
) -> Vec<StreamName> {
    let prefix = query.prefix.as_str();
    let from = match &query.after {
        Some(after) if after.as_str() >= prefix => Bound::Excluded(after.as_str()),
        _ => Bound::Included(prefix),
    };
    let bounds = (from, Bound::Unbounded);
    let page = |names: &mut dyn Iterator<Item = &StreamName>| -> Vec<StreamName> {
        names
            .take_while(|name| name.as_str().starts_with(prefix))
            .take(query.limit)
            .cloned()
            .collect()
    };
    let mut names = page(&mut with_events.range::<str, _>(bounds).map(|(name, _)| name));
    names.extend(page(
        &mut with_settings.range::<str, _>(bounds).map(|(name, _)| name),
    ));
    names.sort_unstable();
    names.dedup();
    names.truncate(query.limit);
    names
}

/// A per-stream map's entries, by stream name (the map keeps them in that order): how the
/// `all_*` methods answer.
pub(crate) fn by_name<T: Copy>(map: &BTreeMap<StreamName, T>) -> Vec<(StreamName, T)> {
    map.iter().map(|(name, v)| (name.clone(), *v)).collect()
}

impl Retention {
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

/// One publish request of a group.
#[derive(Debug, Clone)]
pub struct Request {
    pub events: Vec<NewEvent>,
    pub key: Option<IdempotencyKey>,
}

/// What a keyed request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// When (Unix milliseconds).
    pub time: u64,
    pub receipts: Vec<Receipt>,
}

/// A group's events, in order, and each request's size and key: how the stores take a group.
pub(crate) fn flatten(
    requests: Vec<Request>,
) -> (Vec<NewEvent>, Vec<(usize, Option<IdempotencyKey>)>) {
    let mut shape = Vec::with_capacity(requests.len());
    let mut events = Vec::with_capacity(requests.iter().map(|r| r.events.len()).sum());
    for request in requests {
        shape.push((request.events.len(), request.key));
        events.extend(request.events);
    }
    (events, shape)
}

/// The keyed requests of a group and where their events went, for the stores to keep.
pub(crate) fn keyed_answers<E: Borrow<Event>>(
    shape: &[(usize, Option<IdempotencyKey>)],
    appended: &[E],
) -> Vec<(IdempotencyKey, Vec<Receipt>)> {
    let mut answers = Vec::new();
    let mut rest = appended;
    for (size, key) in shape {
        let (mine, tail) = rest.split_at((*size).min(rest.len()));
        rest = tail;
        if let Some(key) = key {
            let receipts = mine
                .iter()
                .map(|e| {
                    let e = e.borrow();
                    Receipt {
                        id: e.id,
                        stream: e.stream.clone(),
                    }
                })
                .collect();
            answers.push((key.clone(), receipts));
        }
    }
    answers
}

/// How much a store holds pending, not yet written in its own form (see [`Store::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backlog {
    /// Not worth a settle of its own yet.
    Low,
    /// Worth a settle: ask for one, off the acknowledgement path.
    Due,
    /// More than the settles in idle moments keep up with: they must run now (at normal
    /// priority, see `priority.rs`), still off the acknowledgement path.
    Behind,
    /// So much that appends should wait for a settle: whatever settles has fallen behind.
    Full,
}

/// What one call to [`Store::trim`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimOutcome {
    pub removed: u64,
    /// True when the call stopped at its removal budget with more left to trim.
    pub more: bool,
}

pub trait Store: Send + Sync + 'static {
    /// Appends events in order, giving each the next id and the time `time`. All or nothing.
    /// Appended events may be read back at once; they are durable only after [`Store::sync`]
    /// (or, behind a write-ahead log, once the log is synced).
    fn append(&self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Arc<Event>>, StoreError>;

    /// Appends several independent requests' events, in order, as one group: ids as if their
    /// events were one [`Store::append`]. Each request is all or nothing, and a request's key
    /// (if it has one) is stored with its events, as atomically, with where they went; after a
    /// crash before [`Store::sync`], a store may keep some of the group's requests and not others
    /// (none was acknowledged yet).
    fn append_group(
        &self,
        requests: Vec<Request>,
        time: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError>;

    /// Stores what appends left pending. A store may keep appended events in memory (readable
    /// at once, and durable by the write-ahead log) and write them in bulk here.
    /// [`Store::sync`], [`Store::checkpoint`], [`Store::trim`], [`Store::delete`] and
    /// [`Store::close`] settle first by themselves. May run beside appends, from another thread.
    fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// How much is pending, against what is worth a settle.
    fn backlog(&self) -> Backlog {
        Backlog::Low
    }

    /// What a request with this key was answered, and when, if the store still holds it.
    fn answered(&self, key: &IdempotencyKey) -> Result<Option<Answered>, StoreError>;

    /// Forgets the keys answered before `time`, at most `budget` of them; true if more remain.
    fn forget_keys(&self, before: u64, budget: usize) -> Result<bool, StoreError>;

    /// Makes everything appended so far durable (fsync).
    fn sync(&self) -> Result<(), StoreError>;

    /// Records that every write-ahead log record before `wal_position` is in the store, then
    /// makes the store durable (as [`Store::sync`]): a restart replays the log from there.
    fn checkpoint(&self, wal_position: u64) -> Result<(), StoreError>;

    /// Events of `stream` with `after < id <= upto`, ascending, at most `limit`.
    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The newest `n` events of `stream` with `id <= upto`, ascending.
    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// One event, if `stream` still holds it.
    fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, StoreError>;

    /// Removes what `retention` says is too many or too old, oldest first, at most `budget`
    /// events per call so a huge trim never stalls publishers for long.
    fn trim(
        &self,
        stream: &StreamName,
        retention: &Retention,
        now: u64,
        budget: usize,
    ) -> Result<TrimOutcome, StoreError>;

    /// Stores a stream's settings (durable after [`Store::sync`]). Default settings are forgotten.
    fn put_settings(&self, stream: &StreamName, settings: StreamSettings)
        -> Result<(), StoreError>;

    /// A stream's settings; the default for a stream that has none.
    fn settings(&self, stream: &StreamName) -> StreamSettings;

    /// Every stream with settings other than the default, by name.
    fn all_settings(&self) -> Vec<(StreamName, StreamSettings)>;

    /// Deletes a stream: its events, counters and settings are gone at once for every reader
    /// (durable after [`Store::sync`]). The name may be used again; its new events get new ids. A
    /// backend may leave the removal of the old events' bytes to [`Store::purge`].
    fn delete(&self, stream: &StreamName) -> Result<(), StoreError>;

    /// Frees what deleted streams left behind, at most `budget` records per call (an event, or
    /// for [`SledStore`] a run of a few dozen); true if more remains.
    fn purge(&self, budget: usize) -> Result<bool, StoreError>;

    /// The counters of one stream; `None` if it was never published to.
    fn stats(&self, stream: &StreamName) -> Option<StreamStats>;

    /// Every stream ever published to and still known, by name.
    fn all_stats(&self) -> Vec<(StreamName, StreamStats)>;

    /// One page of the names of streams with events or settings, in order: those `query`
    /// admits, at most `query.limit`. Costs by the page, not by how many streams exist.
    fn names(&self, query: &ListQuery) -> Vec<StreamName>;

    /// The highest id ever appended (0 for an empty log). New ids are always above it, even
    /// after a crash.
    fn last_id(&self) -> EventId;

    /// Bytes the log occupies on disk (0 in memory).
    fn size_on_disk(&self) -> u64;

    /// Flushes and records a clean stop.
    fn close(&self) -> Result<(), StoreError>;
}

/// An untyped event, for the stores' tests.
#[cfg(test)]
pub(crate) fn new(stream: &str, data: &str) -> NewEvent {
    NewEvent {
        stream: StreamName::new(stream).unwrap(),
        kind: None,
        data: data.into(),
    }
}

#[cfg(test)]
/// Opens a sled log in `dir`, waiting for a previous opening's lock: a dropped sled database
/// lets go of it only once its io threads have finished their last writes, a moment later.
pub(crate) fn open_sled(dir: &std::path::Path) -> SledStore {
    for _ in 0..200 {
        match SledStore::open(dir, 16 << 20) {
            Ok(log) => return log,
            Err(StoreError::InUse(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the lock of the previous opening was never released")
}

#[cfg(test)]
mod store_tests {
    //! The same behaviour is asked of both stores (the engine's own contract is
    //! `engine::contract`; this is the level below it: trims by budget, purges, runs).
    use super::*;
    use crate::broker::event::EventType;

    fn ids<E: Borrow<Event>>(events: &[E]) -> Vec<u64> {
        events.iter().map(|e| e.borrow().id.0).collect()
    }

    fn exercise_store(log: &dyn Store) {
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

        // Settings are kept per stream; default settings are not listed.
        let sealed = StreamSettings {
            sealed: true,
            max_len: Some(7),
            max_age_ms: None,
        };
        log.put_settings(&b, sealed).unwrap();
        assert_eq!(log.settings(&b), sealed);
        assert_eq!(log.settings(&a), StreamSettings::default());
        assert_eq!(log.all_settings(), vec![(b.clone(), sealed)]);

        // Delete: events, counters and settings go; the name can be used again, with new ids.
        let last_before = log.last_id();
        log.delete(&a).unwrap();
        log.delete(&b).unwrap();
        assert!(log.stats(&a).is_none());
        assert!(log.all_settings().is_empty());
        assert!(log
            .read(&a, EventId(0), EventId(99), 99)
            .unwrap()
            .is_empty());
        assert!(log.read_last(&a, EventId(99), 9).unwrap().is_empty());
        assert!(log.get(&a, EventId(13)).unwrap().is_none());
        let reborn = log
            .append(vec![new("a", "again"), new("a", "and again")], 50)
            .unwrap();
        assert!(reborn[0].id > last_before);
        assert_eq!(
            ids(&log.read(&a, EventId(0), EventId(99), 99).unwrap()),
            ids(&reborn)
        );
        let stats = log.stats(&a).unwrap();
        assert_eq!((stats.length, stats.first_id), (2, reborn[0].id));
        assert_eq!(stats.trimmed_through, EventId(0));
        // Trimming the reborn stream removes its own oldest event, never what the delete left.
        let keep1 = Retention {
            max_len: Some(1),
            max_age_ms: None,
        };
        assert_eq!(log.trim(&a, &keep1, 100, 100).unwrap().removed, 1);
        while log.purge(2).unwrap() {}
        assert_eq!(
            ids(&log.read(&a, EventId(0), EventId(99), 99).unwrap()),
            [reborn[1].id.0]
        );
        assert_eq!(log.stats(&a).unwrap().length, 1);
    }

    #[test]
    fn stream_settings_override_the_server_retention() {
        let server = Retention {
            max_len: Some(100),
            max_age_ms: Some(5000),
        };
        let own = StreamSettings {
            sealed: false,
            max_len: Some(0),
            max_age_ms: Some(10),
        };
        assert_eq!(
            server.with(&own),
            Retention {
                max_len: None,
                max_age_ms: Some(10)
            }
        );
        assert_eq!(server.with(&StreamSettings::default()), server);
        assert!(Retention::default().is_unlimited());
    }

    #[test]
    fn the_memory_store_keeps_the_store_contract() {
        exercise_store(&MemoryStore::new());
    }

    #[test]
    fn the_sled_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        exercise_store(&SledStore::open(dir.path(), 16 << 20).unwrap());
    }

    type Seen = (u64, String, Option<String>, String, u64);

    fn unkeyed(requests: Vec<Vec<NewEvent>>) -> Vec<Request> {
        requests
            .into_iter()
            .map(|events| Request { events, key: None })
            .collect()
    }

    fn seen<E: Borrow<Event>>(events: Vec<E>) -> Vec<Seen> {
        events
            .iter()
            .map(|e| {
                let e = e.borrow();
                let kind = e.kind.as_ref().map(|k| k.as_str().to_owned());
                (e.id.0, e.stream.to_string(), kind, e.data.clone(), e.time)
            })
            .collect()
    }

    /// Random appends (runs of every size, big events, three streams interleaved), trims that
    /// cut runs in the middle, deletes and reopenings, with every read compared against the
    /// in-memory log, which keeps one event per entry.
    #[test]
    fn sled_runs_read_back_exactly_what_the_memory_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_sled(dir.path());
        let mut sled = open();
        let memory = MemoryStore::new();
        let names: Vec<StreamName> = ["a", "b", "c"]
            .iter()
            .map(|n| StreamName::new(n).unwrap())
            .collect();
        let kinds = [
            None,
            EventType::new("update").ok(),
            EventType::new("é").ok(),
        ];
        let mut rng = fastrand::Rng::with_seed(8);
        let mut time = 0;
        for round in 0..300 {
            time += rng.u64(0..3);
            match rng.u8(0..20) {
                0 => {
                    let stream = &names[rng.usize(0..3)];
                    sled.delete(stream).unwrap();
                    memory.delete(stream).unwrap();
                }
                1..=3 => {
                    let retention = Retention {
                        max_len: Some(rng.u64(0..400)),
                        max_age_ms: rng.bool().then(|| rng.u64(0..50)),
                    };
                    let stream = &names[rng.usize(0..3)];
                    let budget = rng.usize(1..200);
                    assert_eq!(
                        sled.trim(stream, &retention, time, budget).unwrap(),
                        memory.trim(stream, &retention, time, budget).unwrap(),
                        "round {round}"
                    );
                }
                5 | 6 => sled.settle().unwrap(),
                4 => {
                    while sled.purge(rng.usize(1..5)).unwrap() {}
                    sled.close().unwrap();
                    drop(sled);
                    sled = open();
                }
                _ => {
                    let events: Vec<NewEvent> = (0..rng.usize(1..300))
                        .map(|i| NewEvent {
                            stream: names[rng.usize(0..3)].clone(),
                            kind: kinds[rng.usize(0..3)].clone(),
                            data: match rng.u8(0..50) {
                                0 => "x".repeat(5000 + rng.usize(0..5000)),
                                1 => String::new(),
                                _ => format!("{round}/{i}:{}", "y".repeat(rng.usize(0..300))),
                            },
                        })
                        .collect();
                    if rng.bool() {
                        assert_eq!(
                            seen(sled.append(events.clone(), time).unwrap()),
                            seen(memory.append(events, time).unwrap())
                        );
                    } else {
                        // A group of requests, each of one stream or not.
                        let one_stream_each = rng.bool();
                        let mut requests: Vec<Vec<NewEvent>> = Vec::new();
                        for event in events {
                            let starts_new = match requests.last() {
                                None => true,
                                Some(r) if one_stream_each => r[0].stream != event.stream,
                                Some(_) => rng.u8(0..4) == 0,
                            };
                            if starts_new {
                                requests.push(Vec::new());
                            }
                            if let Some(r) = requests.last_mut() {
                                r.push(event);
                            }
                        }
                        assert_eq!(
                            seen(sled.append_group(unkeyed(requests.clone()), time).unwrap()),
                            seen(memory.append_group(unkeyed(requests), time).unwrap())
                        );
                    }
                }
            }
            let last = memory.last_id().0;
            assert_eq!(sled.last_id().0, last);
            for stream in &names {
                assert_eq!(sled.stats(stream), memory.stats(stream), "round {round}");
                for _ in 0..5 {
                    let after = EventId(rng.u64(0..=last + 1));
                    let upto = EventId(rng.u64(after.0..=last + 1));
                    let limit = rng.usize(0..700);
                    assert_eq!(
                        seen(sled.read(stream, after, upto, limit).unwrap()),
                        seen(memory.read(stream, after, upto, limit).unwrap()),
                        "round {round}: read {stream} after {after} upto {upto} limit {limit}"
                    );
                    let n = rng.usize(0..700);
                    assert_eq!(
                        seen(sled.read_last(stream, upto, n).unwrap()),
                        seen(memory.read_last(stream, upto, n).unwrap()),
                        "round {round}: last {n} of {stream} upto {upto}"
                    );
                    let id = EventId(rng.u64(0..=last + 1));
                    assert_eq!(
                        seen(sled.get(stream, id).unwrap().into_iter().collect()),
                        seen(memory.get(stream, id).unwrap().into_iter().collect()),
                        "round {round}: get {id} of {stream}"
                    );
                }
            }
        }
    }

    /// Stores written by earlier versions are still read, trimmed and appended to: one event
    /// per key (before runs existed) in stream `old`, and runs whose events share one time in
    /// stream `shared`. A trim keeps a cut run's tail in today's layout, each event's time kept.
    #[test]
    fn sled_log_reads_stores_written_in_earlier_layouts() {
        use crate::broker::engine::local::sled::earlier;
        let dir = tempfile::tempdir().unwrap();
        {
            let db = ::sled::open(dir.path()).unwrap();
            for (id, kind, data) in [(1u64, "", "one"), (2, "greeting", "two"), (4, "", "four")] {
                let mut key = b"eold\0".to_vec();
                key.extend_from_slice(&id.to_be_bytes());
                db.insert(key, earlier::single(100 + id, kind, data))
                    .unwrap();
            }
            // Two runs of events 5..=7 (time 150) and 8 (time 160).
            for (time, ids) in [(150u64, 5u64..=7), (160, 8..=8)] {
                let mut key = b"eshared\0".to_vec();
                key.extend_from_slice(&ids.end().to_be_bytes());
                let data: Vec<(u64, String)> = ids.map(|id| (id, id.to_string())).collect();
                let events: Vec<_> = data.iter().map(|(id, d)| (*id, "", d.as_str())).collect();
                db.insert(key, earlier::shared(time, &events)).unwrap();
            }
            for (stream, fields) in [
                (&b"mold"[..], [3u64, 1, 4, 101, 0]),
                (b"mshared", [4, 5, 8, 150, 0]),
            ] {
                let stats: Vec<u8> = fields.iter().flat_map(|f| f.to_be_bytes()).collect();
                db.insert(stream, stats).unwrap();
            }
            db.insert(b"s", &8u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let log = open_sled(dir.path());
        let old = StreamName::new("old").unwrap();
        let all = log.read(&old, EventId(0), EventId(99), 99).unwrap();
        assert_eq!(
            seen(all),
            [
                (1, "old".into(), None, "one".into(), 101),
                (2, "old".into(), Some("greeting".into()), "two".into(), 102),
                (4, "old".into(), None, "four".into(), 104),
            ]
        );
        assert_eq!(log.get(&old, EventId(2)).unwrap().unwrap().data, "two");
        assert!(log.get(&old, EventId(3)).unwrap().is_none());
        log.append(vec![new("old", "nine"), new("old", "ten")], 200)
            .unwrap();
        assert_eq!(
            ids(&log.read(&old, EventId(1), EventId(99), 3).unwrap()),
            [2, 4, 9]
        );
        assert_eq!(ids(&log.read_last(&old, EventId(9), 3).unwrap()), [2, 4, 9]);
        let keep = |n| Retention {
            max_len: Some(n),
            max_age_ms: None,
        };
        assert_eq!(log.trim(&old, &keep(2), 300, 99).unwrap().removed, 3);
        assert_eq!(
            ids(&log.read(&old, EventId(0), EventId(99), 99).unwrap()),
            [9, 10]
        );

        let shared = StreamName::new("shared").unwrap();
        let times = |log: &SledStore| -> Vec<(u64, u64)> {
            let events = log.read(&shared, EventId(0), EventId(99), 99).unwrap();
            events.iter().map(|e| (e.id.0, e.time)).collect()
        };
        assert_eq!(times(&log), [(5, 150), (6, 150), (7, 150), (8, 160)]);
        assert_eq!(log.get(&shared, EventId(6)).unwrap().unwrap().data, "6");
        log.append(vec![new("shared", "eleven")], 170).unwrap();
        log.settle().unwrap();
        assert_eq!(log.trim(&shared, &keep(4), 300, 99).unwrap().removed, 1);
        assert_eq!(times(&log), [(6, 150), (7, 150), (8, 160), (11, 170)]);
        assert_eq!(log.stats(&shared).unwrap().first_time, 150);
        drop(log);
        let log = open_sled(dir.path());
        assert_eq!(times(&log), [(6, 150), (7, 150), (8, 160), (11, 170)]);
    }

    /// A page is a range search: the same names, in the same order, as filtering and sorting
    /// everything would give — for every prefix, start and size.
    #[test]
    fn a_page_of_names_is_what_filtering_everything_would_give() {
        let name = |n: &str| StreamName::new(n).unwrap();
        let with_events: BTreeMap<StreamName, ()> = ["a", "a:1", "a:2", "ab", "b", "b:x", "c"]
            .into_iter()
            .map(|n| (name(n), ()))
            .collect();
        let with_settings: BTreeMap<StreamName, ()> = ["a:1", "a:3", "bb", "d"]
            .into_iter()
            .map(|n| (name(n), ()))
            .collect();
        let everything: std::collections::BTreeSet<StreamName> = with_events
            .keys()
            .chain(with_settings.keys())
            .cloned()
            .collect();
        for prefix in ["", "a", "a:", "b", "bb", "z"] {
            for after in [
                None,
                Some("a"),
                Some("a:1"),
                Some("ab"),
                Some("b:x"),
                Some("zz"),
            ] {
                for limit in [0, 1, 2, 3, 100] {
                    let query = ListQuery {
                        prefix: prefix.into(),
                        after: after.map(name),
                        limit,
                    };
                    let expected: Vec<StreamName> = everything
                        .iter()
                        .filter(|n| query.admits(n))
                        .take(limit)
                        .cloned()
                        .collect();
                    assert_eq!(
                        page_of(&with_events, &with_settings, &query),
                        expected,
                        "{query:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn sled_log_keeps_settings_and_deletes_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = StreamName::new("a").unwrap();
        let gone = StreamName::new("gone").unwrap();
        let settings = StreamSettings {
            sealed: true,
            max_len: None,
            max_age_ms: Some(60_000),
        };
        {
            let log = open_sled(dir.path());
            log.append(vec![new("a", "x"), new("gone", "y"), new("gone", "z")], 1)
                .unwrap();
            log.put_settings(&a, settings).unwrap();
            log.delete(&gone).unwrap();
            log.sync().unwrap();
            // no close(), no purge: as after a crash right after the delete
        }
        let log = open_sled(dir.path());
        assert_eq!(log.settings(&a), settings);
        assert!(log.stats(&gone).is_none());
        assert!(log
            .read(&gone, EventId(0), EventId(99), 9)
            .unwrap()
            .is_empty());
        assert!(!log.purge(100).unwrap());
        assert_eq!(log.all_stats().len(), 1);
    }

    #[test]
    fn sled_log_never_reuses_ids_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let log = open_sled(dir.path());
            let events = log.append(vec![new("a", "x")], 1).unwrap();
            log.sync().unwrap();
            // no close(): as after a crash
            events[0].id
        };
        let log = open_sled(dir.path());
        assert!(log.last_id() >= last);
        let next = log.append(vec![new("a", "y")], 2).unwrap();
        assert!(next[0].id > last);
        assert_eq!(log.stats(&StreamName::new("a").unwrap()).unwrap().length, 2);
    }
}
