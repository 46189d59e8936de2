//! The log on sled, in one tree. An append gives events their ids and counts them, and leaves
//! them *pending*: in memory, readable at once (`pending.rs`), while the write-ahead log beside
//! sled is what makes them durable. A *settle* (on the checkpoint thread, once enough is
//! pending, and before every checkpoint, sync, trim, delete and close) stores everything pending
//! as one atomic `apply_batch`: the runs, the touched streams' counters, the keys' answers. So
//! counters never run ahead of the runs they count, and no request is ever half stored. New ids
//! are reserved durably before use.
//!
//! Here: the store (open, append, settle, read, trim, delete, purge) and crash recovery.
//! `keys.rs` is the key layout and the small records' codecs, `runs.rs` the run records that hold
//! events, `pending.rs` what is not settled yet, and `durability.rs` what makes a flush survive a
//! power cut.
//!
//! Ids: `s` holds the id ceiling — ids up to it may have been handed out. Ids are reserved in
//! blocks and the ceiling is fsync'd *before* any id above the old one is used, so after a crash
//! the next id is above every id anyone may have seen, even when publishing without per-event
//! fsync. A clean close lowers the ceiling to the last id used, so restarts do not burn ids. `k`
//! is present only while the log is closed after a clean stop; opening without it (after a crash)
//! first counts any runs stored past a stream's counters (which older versions, storing runs and
//! counters in two inserts, could leave).
//!
//! Durability: every flush is sled's flush, then the blob files sled leaves unsynced, then an
//! `fdatasync` of sled's log (`durability.rs`); sled's own periodic flusher (`--flush-interval`)
//! already `fsync`s. What this cannot reach (docs/production.md, "What a 201 survives"): sled's
//! compaction trusts `sync_file_range` when it decides what it may overwrite.

mod durability;
mod keys;
mod pending;
mod runs;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sled::{Batch, Db};

use self::durability::{Syncer, SLED_BLOB_DIR, SLED_CONF_FILE, SLED_LOG_FILE};
use self::keys::{
    answer_key, answer_time_key, answers_before, decode_answer, decode_settings, decode_stats,
    encode_answer, encode_settings, encode_stats, event_key, keyed, load, parse_answer_time_key,
    read_u64, runs_from,
};
use self::pending::{Pending, Settled};
#[cfg(test)]
pub(crate) use self::runs::earlier;
use self::runs::{Run, RunWriter};

use super::store::{
    by_name, flatten, keyed_answers, page_of, Answered, Backlog, Request, Store, StoreError,
    TrimOutcome,
};
use crate::broker::engine::{
    IdempotencyKey, ListQuery, Receipt, Retention, StreamSettings, StreamStats,
};
use crate::broker::event::{Event, EventId, EventType, NewEvent, StreamName};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

const SEQ_KEY: &[u8] = b"s";
const CLEAN_KEY: &[u8] = b"k";
/// How far the write-ahead log had got at the last checkpoint: every record before it is in
/// the store (see `wal.rs`).
const WAL_FLOOR_KEY: &[u8] = b"w";
const RESERVE: u64 = 1 << 20;

pub struct SledStore {
    db: Db,
    /// What makes a flush durable (see the module docs).
    syncer: Syncer,
    state: Mutex<State>,
    /// Held through a settle, so that two never store the same pending events.
    settling: Mutex<()>,
}

struct State {
    next: u64,
    ceiling: u64,
    /// In name order, so a page of the listing is a range search.
    stats: BTreeMap<StreamName, StreamStats>,
    settings: BTreeMap<StreamName, StreamSettings>,
    /// Deleted streams whose old events are not purged yet: events up to the id are gone.
    floors: BTreeMap<StreamName, EventId>,
    /// Deletes since opening. Readers walk sled without the lock: one that sees this change
    /// while it reads may have passed events of a deleted life, and reads again.
    deletes: u64,
    /// Appended, counted, readable, and not in sled yet (`pending.rs`).
    pending: Pending,
}

impl State {
    fn floor(&self, stream: &StreamName) -> EventId {
        self.floors.get(stream).copied().unwrap_or(EventId::ZERO)
    }
}

/// Adds a key's answer to a batch: under the key, and the key under its time (so the oldest
/// are forgotten first).
fn insert_answer(batch: &mut Batch, key: &IdempotencyKey, time: u64, receipts: &[Receipt]) {
    batch.insert(answer_key(key), encode_answer(time, receipts));
    batch.insert(answer_time_key(time, key), Vec::new());
}

/// Events as runs, per stream, in id order.
#[derive(Default)]
struct Runs {
    filled: Vec<(Vec<u8>, Vec<u8>)>,
    open: HashMap<StreamName, RunWriter>,
}

impl Runs {
    /// Adds one event (ids ascending per stream).
    fn push(
        &mut self,
        stream: &StreamName,
        id: EventId,
        time: u64,
        kind: Option<&EventType>,
        data: &str,
    ) {
        let run = match self.open.get_mut(stream) {
            Some(run) => run,
            None => self.open.entry(stream.clone()).or_default(),
        };
        let kind = kind.map_or("", EventType::as_str);
        if let Some((last, value)) = run.push(id, time, kind.as_bytes(), data.as_bytes()) {
            self.filled.push((event_key(stream, last), value));
        }
    }

    /// Closes every stream's run; returns every run to store.
    fn finish(mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        for (name, run) in &mut self.open {
            if let Some((last, value)) = run.finish() {
                self.filled.push((event_key(name, last), value));
            }
        }
        self.filled
    }
}

impl SledStore {
    /// Opens (or creates) the log in `dir`. `cache_bytes` bounds sled's page cache. Only
    /// [`Store::sync`], [`Store::checkpoint`] and [`Store::close`] flush: sled's background
    /// flusher stays off (with the write-ahead log, sled is flushed at checkpoints).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                // sled holds an exclusive lock on its file while a database is open, and reports
                // another holder only in this message (kind `Other`); the test of a directory in
                // use catches a change of wording.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::InUse(dir.display().to_string())
                }
                e => e.into(),
            })?;
        let io = |what: &str, e: std::io::Error| StoreError::Io {
            what: format!("{what} in {}", dir.display()),
            source: e,
        };
        let syncer = Syncer {
            log: File::open(dir.join(SLED_LOG_FILE)).map_err(|e| io("cannot open the log", e))?,
            blob_dir: dir.join(SLED_BLOB_DIR),
            synced_blobs: Mutex::new(HashMap::new()),
        };
        // Once per opening: sled's `conf` (written unsynced when the store is created; sled
        // cannot open a store whose `conf` is damaged) and the directory's entries, so a power
        // cut cannot lose the files themselves.
        for path in [dir.join(SLED_CONF_FILE), dir.to_path_buf()] {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("cannot fsync", e))?;
        }
        let ceiling = match db.get(SEQ_KEY)? {
            Some(v) => read_u64(&v, 0).ok_or_else(|| StoreError::Corrupt("id ceiling".into()))?,
            None => 0,
        };
        // The marker is there only if the last stop was clean. It goes at once, durably: from
        // here on, a crash must be seen as one.
        let clean = db.remove(CLEAN_KEY)?.is_some();
        if clean {
            syncer.flush(&db)?;
        }
        let mut stats = load(&db, b'm', decode_stats)?;
        let settings = load(&db, b'c', decode_settings)?;
        let floors = load(&db, b'd', |v| {
            read_u64(v, 0)
                .map(EventId)
                .ok_or_else(|| StoreError::Corrupt("delete floor".into()))
        })?;
        if !clean {
            for (name, stats) in &mut stats {
                count_runs_past(&db, name, stats)?;
            }
        }
        Ok(SledStore {
            db,
            syncer,
            state: Mutex::new(State {
                next: ceiling + 1,
                ceiling,
                stats,
                settings,
                floors,
                deletes: 0,
                pending: Pending::default(),
            }),
            settling: Mutex::new(()),
        })
    }

    /// The write-ahead log position recorded at the last checkpoint (0: none yet).
    pub(crate) fn wal_floor(&self) -> Result<u64, StoreError> {
        match self.db.get(WAL_FLOOR_KEY)? {
            Some(v) => read_u64(&v, 0).ok_or_else(|| StoreError::Corrupt("wal floor".into())),
            None => Ok(0),
        }
    }

    /// Stores again a group the write-ahead log holds, with its ids, skipping each event the
    /// store already has (sled recovers a prefix of its own log, so what it lacks of a group is
    /// a tail of each stream's part) and any event of a stream deleted since. Returns how many
    /// events were stored.
    pub(crate) fn replay(
        &self,
        group: crate::broker::engine::local::wal::Group,
    ) -> Result<usize, StoreError> {
        let mut st = self.state();
        let mut runs = Runs::default();
        let mut counters: HashMap<StreamName, StreamStats> = HashMap::new();
        let mut stored = 0;
        for event in &group.events {
            let before = st
                .stats
                .get(&event.stream)
                .map_or(EventId::ZERO, |s| s.last_id);
            // Already stored (the counters count it), or of a life of the stream since deleted.
            if event.id <= before.max(st.floor(&event.stream)) {
                continue;
            }
            runs.push(
                &event.stream,
                event.id,
                group.time,
                event.kind.as_ref(),
                &event.data,
            );
            let stats = counters
                .entry(event.stream.clone())
                .or_insert_with(|| st.stats.get(&event.stream).copied().unwrap_or_default());
            stats.count(event.id, group.time);
            stored += 1;
        }
        let mut batch = Batch::default();
        for (key, value) in runs.finish() {
            batch.insert(key, value);
        }
        for (name, stats) in &counters {
            batch.insert(keyed(b'm', name), encode_stats(stats).to_vec());
        }
        // A key's answer is the same however often it is stored.
        for (key, receipts) in keyed_answers(&group.shape, &group.events) {
            insert_answer(&mut batch, &key, group.time, &receipts);
        }
        let top = group.events.iter().map(|e| e.id.0).max().unwrap_or(0);
        st.next = st.next.max(top + 1);
        self.db.apply_batch(batch)?;
        st.stats.extend(counters);
        Ok(stored)
    }

    /// Gives `events` their ids and counts them; they stay pending (readable, not yet in sled)
    /// until the next settle. `shape`: each request's size and key, for the keys' answers.
    fn append_pending(
        &self,
        events: Vec<NewEvent>,
        time: u64,
        shape: &[(usize, Option<IdempotencyKey>)],
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.state();
        let last = st
            .next
            .checked_add(events.len() as u64 - 1)
            .ok_or(StoreError::IdsExhausted)?;
        if last > st.ceiling {
            let ceiling = last.saturating_add(RESERVE);
            self.db.insert(SEQ_KEY, &ceiling.to_be_bytes())?;
            self.syncer.flush(&self.db)?;
            st.ceiling = ceiling;
        }
        let st = &mut *st;
        let mut appended = Vec::with_capacity(events.len());
        for (offset, new) in events.into_iter().enumerate() {
            let id = EventId(st.next + offset as u64);
            match st.stats.get_mut(&new.stream) {
                Some(stats) => stats.count(id, time),
                None => st
                    .stats
                    .entry(new.stream.clone())
                    .or_default()
                    .count(id, time),
            }
            let event = Arc::new(Event::new(id, new.stream, new.kind, new.data, time));
            st.pending.push(event.clone());
            appended.push(event);
        }
        st.next = last + 1;
        for (key, receipts) in keyed_answers(shape, &appended) {
            st.pending.answer(key, Answered { time, receipts });
        }
        Ok(appended)
    }

    /// Stores what is pending in sled, in one atomic batch: the runs, each touched stream's
    /// counters, the keys' answers. One settle at a time (`settling`), from any thread; appends
    /// go on meanwhile and wait for the next.
    fn settle_pending(&self) -> Result<(), StoreError> {
        let _one = self.settling.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock only long enough to take what is pending (shared events, not copies)
        // and the counters that go with it: appends and reads go on while the batch is built.
        let (streams, answers) = {
            let st = self.state();
            if st.pending.is_empty() {
                return Ok(());
            }
            let streams: Vec<_> = st
                .pending
                .streams
                .iter()
                .map(|(stream, events)| {
                    // The counters as they are now: what sled holds once this batch is in, as
                    // nothing else changes a stream's events while appends are pending (a trim
                    // or delete settles first).
                    let stats = st.stats.get(stream).copied();
                    (stream.clone(), events.clone(), stats)
                })
                .collect();
            let answers: Vec<_> = st
                .pending
                .answers
                .iter()
                .map(|(key, answered)| (key.clone(), answered.clone()))
                .collect();
            (streams, answers)
        };
        let mut runs = Runs::default();
        let mut batch = Batch::default();
        let mut through = Vec::with_capacity(streams.len());
        for (stream, events, stats) in &streams {
            for e in events {
                runs.push(stream, e.id, e.time, e.kind.as_ref(), &e.data);
            }
            if let Some(stats) = stats {
                batch.insert(keyed(b'm', stream), encode_stats(stats).to_vec());
            }
            if let Some(last) = events.last() {
                through.push((stream.clone(), last.id));
            }
        }
        for (key, value) in runs.finish() {
            batch.insert(key, value);
        }
        for (key, answered) in &answers {
            insert_answer(&mut batch, key, answered.time, &answered.receipts);
        }
        let answers = answers.into_iter().map(|(key, a)| (key, a.time)).collect();
        self.db.apply_batch(batch)?;
        self.state().pending.settled(Settled { through, answers });
        // The events are freed here, after the lock: not while holding it.
        drop(streams);
        Ok(())
    }

    /// What `read` takes of `stream`'s pending events, and the highest id to ask sled for, at
    /// most `upto`: below the first pending id. Pending first, then sled: a settle that runs in
    /// between stores events in sled before it lets go of them (see `pending.rs`).
    fn pending_then<T>(
        &self,
        stream: &StreamName,
        upto: EventId,
        read: impl FnOnce(&Pending) -> T,
    ) -> (T, EventId) {
        let st = self.state();
        let below = st
            .pending
            .first_id(stream)
            .map_or(upto, |first| upto.min(EventId(first.0 - 1)));
        (read(&st.pending), below)
    }

    /// Runs a read with `stream`'s delete floor, again until no delete happened meanwhile.
    /// sled's iterators are not snapshots: a read that raced a delete (and its purge, and the
    /// reborn stream's first appends) could return the deleted life's events, or a mix of both
    /// lives. Deletes are rare, so a second pass is too.
    fn unraced<T>(
        &self,
        stream: &StreamName,
        read: impl Fn(EventId) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let (floor, deletes) = {
                let st = self.state();
                (st.floor(stream), st.deletes)
            };
            let result = read(floor)?;
            if self.state().deletes == deletes {
                return Ok(result);
            }
        }
    }

    /// `read` above a floor already taken.
    fn read_above(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if after >= upto || limit == 0 {
            return Ok(Vec::new());
        }
        let mut events = Vec::with_capacity(limit.min(1024));
        'runs: for item in runs_from(&self.db, stream, EventId(after.0 + 1)) {
            let (key, value) = item?;
            for stored in Run::parse(stream, &key, &value)? {
                let stored = stored?;
                if stored.id > upto {
                    break 'runs;
                }
                if stored.id > after {
                    events.push(stored.event(stream)?);
                    if events.len() == limit {
                        break 'runs;
                    }
                }
            }
        }
        Ok(events)
    }

    /// `read_last` above a floor already taken.
    fn read_last_above(
        &self,
        stream: &StreamName,
        floor: EventId,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if floor >= upto || n == 0 {
            return Ok(Vec::new());
        }
        // The run holding `upto` (the first key at or above it), then the runs below it, newest
        // first. A deleted stream's runs all end at or below its floor, so none straddles it.
        let lowest = event_key(stream, EventId(floor.0 + 1));
        let at_upto = event_key(stream, upto);
        let holding = runs_from(&self.db, stream, upto).next();
        let below = self.db.range(lowest..at_upto).rev();
        let mut newest_first = Vec::with_capacity(n.min(1024));
        'runs: for item in holding.into_iter().chain(below) {
            let (key, value) = item?;
            let mut run = Vec::new();
            for stored in Run::parse(stream, &key, &value)? {
                let stored = stored?;
                if stored.id <= upto {
                    run.push(stored);
                }
            }
            for stored in run.into_iter().rev() {
                newest_first.push(stored.event(stream)?);
                if newest_first.len() == n {
                    break 'runs;
                }
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data that every writer leaves consistent; a panic elsewhere while
        // holding it cannot leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for SledStore {
    fn append(&self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Arc<Event>>, StoreError> {
        self.append_pending(events, time, &[])
    }

    fn append_group(
        &self,
        requests: Vec<Request>,
        time: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let (events, shape) = flatten(requests);
        self.append_pending(events, time, &shape)
    }

    fn settle(&self) -> Result<(), StoreError> {
        self.settle_pending()
    }

    fn backlog(&self) -> Backlog {
        self.state().pending.backlog()
    }

    fn answered(&self, key: &IdempotencyKey) -> Result<Option<Answered>, StoreError> {
        // Pending first: a settle stores an answer before it lets go of it here.
        if let Some(answered) = self.state().pending.answered(key) {
            return Ok(Some(answered));
        }
        self.db
            .get(answer_key(key))?
            .map(|bytes| decode_answer(&bytes))
            .transpose()
    }

    fn forget_keys(&self, before: u64, budget: usize) -> Result<bool, StoreError> {
        let mut batch = Batch::default();
        let mut forgotten = 0;
        let mut entries = self.db.range(answers_before(before));
        for entry in entries.by_ref().take(budget) {
            let (entry, _) = entry?;
            let (time, key) = parse_answer_time_key(&entry)?;
            batch.remove(entry);
            // A key answered again since keeps its newer answer.
            if self.answered(&key)?.is_some_and(|a| a.time == time) {
                batch.remove(answer_key(&key));
            }
            forgotten += 1;
        }
        if forgotten > 0 {
            self.db.apply_batch(batch)?;
        }
        Ok(forgotten == budget && entries.next().is_some())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.settle_pending()?;
        self.syncer.flush(&self.db)
    }

    fn checkpoint(&self, wal_position: u64) -> Result<(), StoreError> {
        // Everything appended before the log reached `wal_position` is pending or in sled.
        self.settle_pending()?;
        self.db.insert(WAL_FLOOR_KEY, &wal_position.to_be_bytes())?;
        self.syncer.flush(&self.db)
    }

    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.unraced(stream, |floor| {
            let after = after.max(floor);
            let (newer, below) =
                self.pending_then(stream, upto, |p| p.read(stream, after, upto, limit));
            let mut events = self.read_above(stream, after, below, limit)?;
            events.extend(newer.into_iter().take(limit - events.len()));
            Ok(events)
        })
    }

    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.unraced(stream, |floor| {
            let (newest, below) =
                self.pending_then(stream, upto, |p| p.read_last(stream, floor, upto, n));
            if newest.len() == n {
                return Ok(newest);
            }
            let mut events = self.read_last_above(stream, floor, below, n - newest.len())?;
            events.extend(newest);
            Ok(events)
        })
    }

    fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, StoreError> {
        self.unraced(stream, |floor| {
            if id <= floor {
                return Ok(None);
            }
            let (pending, below) = self.pending_then(stream, id, |p| p.get(stream, id));
            if below < id {
                return Ok(pending);
            }
            let Some(item) = runs_from(&self.db, stream, id).next() else {
                return Ok(None);
            };
            let (key, value) = item?;
            for stored in Run::parse(stream, &key, &value)? {
                let stored = stored?;
                if stored.id == id {
                    return Ok(Some(stored.event(stream)?));
                }
            }
            Ok(None)
        })
    }

    fn trim(
        &self,
        stream: &StreamName,
        retention: &Retention,
        now: u64,
        budget: usize,
    ) -> Result<TrimOutcome, StoreError> {
        // A trim walks sled's runs, and stores counters: nothing may be pending.
        self.settle_pending()?;
        let mut st = self.state();
        let Some(mut stats) = st.stats.get(stream).copied() else {
            return Ok(TrimOutcome::default());
        };
        let mut plan = retention.plan(&stats, now);
        let mut batch = Batch::default();
        let mut outcome = TrimOutcome::default();
        let mut new_first = None;
        let mut last_removed = stats.trimmed_through;
        // Start above a delete floor: what lies below it belongs to the stream's former life.
        for item in runs_from(&self.db, stream, EventId(st.floor(stream).0 + 1)) {
            let (key, value) = item?;
            let events = Run::parse(stream, &key, &value)?.collect::<Result<Vec<_>, _>>()?;
            let mut cut = 0;
            for stored in &events {
                if outcome.removed as usize == budget {
                    outcome.more = plan.remove(stored.time);
                    break;
                }
                if !plan.remove(stored.time) {
                    break;
                }
                outcome.removed += 1;
                last_removed = stored.id;
                cut += 1;
            }
            let Some(first_kept) = events.get(cut) else {
                batch.remove(key);
                continue;
            };
            new_first = Some((first_kept.id, first_kept.time));
            if cut > 0 {
                // The run's tail stays, under the same key (its last id is unchanged).
                let mut rest = RunWriter::default();
                for stored in &events[cut..] {
                    let tail = rest.push(stored.id, stored.time, stored.kind, stored.data);
                    if let Some((last, value)) = tail {
                        batch.insert(event_key(stream, last), value);
                    }
                }
                if let Some((last, value)) = rest.finish() {
                    batch.insert(event_key(stream, last), value);
                }
            }
            break;
        }
        if outcome.removed == 0 {
            return Ok(outcome);
        }
        stats.length -= outcome.removed;
        stats.trimmed_through = last_removed;
        (stats.first_id, stats.first_time) = new_first.unwrap_or((EventId(0), 0));
        batch.insert(keyed(b'm', stream), encode_stats(&stats).to_vec());
        self.db.apply_batch(batch)?;
        st.stats.insert(stream.clone(), stats);
        Ok(outcome)
    }

    fn put_settings(
        &self,
        stream: &StreamName,
        settings: StreamSettings,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        if settings.is_default() {
            self.db.remove(keyed(b'c', stream))?;
            st.settings.remove(stream);
        } else {
            self.db
                .insert(keyed(b'c', stream), encode_settings(&settings).to_vec())?;
            st.settings.insert(stream.clone(), settings);
        }
        Ok(())
    }

    fn settings(&self, stream: &StreamName) -> StreamSettings {
        self.state()
            .settings
            .get(stream)
            .copied()
            .unwrap_or_default()
    }

    fn all_settings(&self) -> Vec<(StreamName, StreamSettings)> {
        by_name(&self.state().settings)
    }

    fn delete(&self, stream: &StreamName) -> Result<(), StoreError> {
        // The life being deleted goes to sled whole, so that the floor and purge cover it.
        self.settle_pending()?;
        let mut st = self.state();
        let floor = st
            .stats
            .get(stream)
            .map_or(EventId::ZERO, |s| s.last_id)
            .max(st.floor(stream));
        let mut batch = Batch::default();
        batch.remove(keyed(b'm', stream));
        batch.remove(keyed(b'c', stream));
        if floor > EventId::ZERO {
            batch.insert(keyed(b'd', stream), &floor.0.to_be_bytes());
        }
        self.db.apply_batch(batch)?;
        st.stats.remove(stream);
        st.settings.remove(stream);
        if floor > EventId::ZERO {
            st.floors.insert(stream.clone(), floor);
        }
        st.deletes += 1;
        Ok(())
    }

    fn purge(&self, budget: usize) -> Result<bool, StoreError> {
        let mut st = self.state();
        let Some((stream, floor)) = st.floors.iter().next().map(|(s, f)| (s.clone(), *f)) else {
            return Ok(false);
        };
        let mut batch = Batch::default();
        let mut removed = 0;
        for item in self
            .db
            .range(event_key(&stream, EventId::ZERO)..=event_key(&stream, floor))
            .take(budget)
        {
            let (key, _) = item?;
            batch.remove(key);
            removed += 1;
        }
        let done = removed < budget;
        if done {
            batch.remove(keyed(b'd', &stream));
        }
        self.db.apply_batch(batch)?;
        if done {
            st.floors.remove(&stream);
        }
        Ok(!st.floors.is_empty())
    }

    fn stats(&self, stream: &StreamName) -> Option<StreamStats> {
        self.state().stats.get(stream).copied()
    }

    fn all_stats(&self) -> Vec<(StreamName, StreamStats)> {
        by_name(&self.state().stats)
    }

    fn names(&self, query: &ListQuery) -> Vec<StreamName> {
        let st = self.state();
        page_of(&st.stats, &st.settings, query)
    }

    fn last_id(&self) -> EventId {
        EventId(self.state().next - 1)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.settle_pending()?;
        let st = self.state();
        self.db.insert(SEQ_KEY, &(st.next - 1).to_be_bytes())?;
        self.db.insert(CLEAN_KEY, &[])?;
        self.syncer.flush(&self.db)
    }
}

/// Adds to a stream's counters the runs stored after the last event they count: after a crash,
/// what older versions' plain inserts stored before their counters (settles store both in one
/// batch). Normally finds nothing, in one lookup.
fn count_runs_past(
    db: &Db,
    stream: &StreamName,
    stats: &mut StreamStats,
) -> Result<(), StoreError> {
    for item in runs_from(db, stream, EventId(stats.last_id.0.saturating_add(1))) {
        let (key, value) = item?;
        for stored in Run::parse(stream, &key, &value)? {
            let stored = stored?;
            if stored.id > stats.last_id {
                stats.count(stored.id, stored.time);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keys::event_prefix;
    use super::runs::RUN_BYTES;
    use super::*;
    use crate::broker::engine::local::store::{new, open_sled};

    /// What a crash between an older herald's two plain inserts (a run, then its stream's
    /// counters) could leave: the run stored, the counters as they were before it. Reopening
    /// counts the run in. (Settles store runs and counters in one batch.)
    #[test]
    fn counters_lagging_behind_their_runs_are_caught_up_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("s").unwrap();
        let t = StreamName::new("t").unwrap();
        {
            let log = open_sled(dir.path());
            log.append(vec![new("s", "1"), new("s", "2"), new("t", "3")], 10)
                .unwrap();
            log.close().unwrap();
        }
        // A clean stop, then a crash: the marker of the clean stop must not hide the crash.
        let (before_s, before_t) = {
            let log = open_sled(dir.path());
            let everything = Retention {
                max_len: Some(0),
                max_age_ms: None,
            };
            log.trim(&t, &everything, 20, 100).unwrap();
            let before = (log.stats(&s).unwrap(), log.stats(&t).unwrap());
            assert_eq!(before.1.length, 0);
            log.append(vec![new("s", "4")], 30).unwrap();
            log.append(vec![new("s", "5"), new("s", "6")], 31).unwrap();
            let request = |events| Request { events, key: None };
            log.append_group(
                vec![request(vec![new("t", "7")]), request(vec![new("s", "8")])],
                32,
            )
            .unwrap();
            log.settle().unwrap();
            // The counters' inserts are lost in the crash; the runs are not.
            for (name, stats) in [(&s, &before.0), (&t, &before.1)] {
                log.db
                    .insert(keyed(b'm', name), encode_stats(stats).to_vec())
                    .unwrap();
            }
            log.sync().unwrap();
            before
            // dropped without close(): a crash
        };
        let log = open_sled(dir.path());
        let expected = |length, first, last, first_time, before: StreamStats| StreamStats {
            length,
            first_id: EventId(first),
            last_id: EventId(last),
            first_time,
            trimmed_through: before.trimmed_through,
        };
        assert_eq!(log.stats(&s), Some(expected(6, 1, 8, 10, before_s)));
        assert_eq!(log.stats(&t), Some(expected(1, 7, 7, 32, before_t)));
        let ids: Vec<u64> = log
            .read(&s, EventId(0), EventId(99), 99)
            .unwrap()
            .iter()
            .map(|e| e.id.0)
            .collect();
        assert_eq!(ids, [1, 2, 4, 5, 6, 8]);
        // And the next append goes on from there (above the reserved ids, as after any crash).
        let next = log.append(vec![new("s", "9")], 40).unwrap();
        assert!(next[0].id > EventId(8));
        let stats = log.stats(&s).unwrap();
        assert_eq!((stats.length, stats.last_id), (7, next[0].id));
    }

    /// Appends stay pending, readable, until a settle stores them: a stream's events as full
    /// runs, each touched stream's counters beside them.
    #[test]
    fn a_settle_stores_pending_appends_as_full_runs_with_their_counters() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_sled(dir.path());
        let a = StreamName::new("a").unwrap();
        let runs = |log: &SledStore| {
            log.db
                .scan_prefix(event_prefix(&a))
                .filter_map(Result::ok)
                .count()
        };
        let big = "x".repeat(RUN_BYTES);
        let events = log
            .append(vec![new("a", &big), new("a", &big), new("b", "y")], 1)
            .unwrap();
        assert_eq!(events.len(), 3);
        // Ten appends of one small event each, at the same time: one run once settled.
        for _ in 0..10 {
            log.append(vec![new("a", "z")], 1).unwrap();
        }
        // One at a later time joins them: an event keeps its own time in the run.
        log.append(vec![new("a", "later")], 2).unwrap();
        assert_eq!(runs(&log), 0, "nothing in sled before the settle");
        assert_eq!(log.stats(&a).unwrap().length, 13);
        assert_eq!(log.read(&a, EventId(0), EventId(99), 99).unwrap().len(), 13);
        log.settle().unwrap();
        assert_eq!(
            runs(&log),
            3,
            "each event of RUN_BYTES fills a run by itself; the eleven small ones share one"
        );
        let stored = decode_stats(&log.db.get(keyed(b'm', &a)).unwrap().unwrap()).unwrap();
        assert_eq!(Some(stored), log.stats(&a));
        let read = log.read(&a, EventId(0), EventId(99), 99).unwrap();
        assert_eq!(read.len(), 13);
        assert_eq!(read[12].data, "later");
        assert_eq!(read[12].time, 2);
        assert!(read[..12].iter().all(|e| e.time == 1));
    }

    /// sled's iterators are not snapshots. A reader that took the floor before a delete, and
    /// walks on while the writer deletes, purges and appends the stream's next life, would
    /// return the deleted life's events — or both lives mixed. Here the writer's whole turn
    /// happens inside the first pass of a read: the read notices and reads again.
    #[test]
    fn a_read_that_raced_a_delete_reads_again_and_returns_one_life() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledStore::open(dir.path(), 16 << 20).unwrap();
        let a = StreamName::new("a").unwrap();
        log.append((0..50).map(|_| new("a", "old")).collect(), 0)
            .unwrap();
        log.settle().unwrap();
        let passes = std::cell::Cell::new(0);
        let events = log
            .unraced(&a, |floor| {
                passes.set(passes.get() + 1);
                // What an unlucky reader's walk sees: the old life first ...
                let mut seen = log.read_above(&a, floor, EventId(u64::MAX), 25)?;
                if passes.get() == 1 {
                    log.delete(&a).unwrap();
                    while log.purge(8).unwrap() {}
                    log.append((0..50).map(|_| new("a", "new")).collect(), 0)
                        .unwrap();
                    log.settle().unwrap();
                }
                // ... then, past them, whatever is there now.
                let last = seen.last().map_or(floor, |e| e.id);
                seen.extend(log.read_above(&a, last, EventId(u64::MAX), 100)?);
                Ok(seen)
            })
            .unwrap();
        assert_eq!(passes.get(), 2, "the raced pass was read again");
        assert_eq!(events.len(), 50);
        assert!(events.iter().all(|e| e.data == "new"), "one life only");
    }

    /// Reads while the writer appends and settles, from other threads: every read of a stream
    /// up to its last id (as the counters say) returns every event to there, once, in order,
    /// whether the events are pending, being settled, or in sled.
    #[test]
    fn reads_racing_settles_see_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open_sled(dir.path()));
        let a = StreamName::new("a").unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (log, a, done) = (log.clone(), a.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        let Some(stats) = log.stats(&a) else {
                            continue;
                        };
                        let last = stats.last_id.0;
                        let all = log.read(&a, EventId(0), stats.last_id, usize::MAX).unwrap();
                        let ids: Vec<u64> = all.iter().map(|e| e.id.0).collect();
                        assert_eq!(ids, (1..=last).collect::<Vec<_>>());
                        let newest = log.read_last(&a, stats.last_id, 50).unwrap();
                        let ids: Vec<u64> = newest.iter().map(|e| e.id.0).collect();
                        assert_eq!(
                            ids,
                            (last.saturating_sub(49).max(1)..=last).collect::<Vec<_>>()
                        );
                        let middle = EventId(last / 2 + 1);
                        assert_eq!(log.get(&a, middle).unwrap().map(|e| e.id), Some(middle));
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for round in 0..3000u64 {
            log.append((0..rng_len(round)).map(|_| new("a", "e")).collect(), round)
                .unwrap();
            if round % 7 == 0 {
                log.settle().unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0, "the reader read");
        }
    }

    fn rng_len(round: u64) -> usize {
        1 + (round * 7919 % 13) as usize
    }
}
