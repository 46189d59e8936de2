//! The log on sled: one tree, so that an append — its events, its streams' counters and, when
//! needed, a new id reservation — is one atomic `apply_batch`.
//!
//! Keys:
//! - `e` stream `\0` id(u64 BE) → event: `[1][time u64 BE][type len u16 BE][type][data]`. Stream names
//!   never contain `\0`, so one stream's events are one contiguous, id-ordered key range.
//! - `m` stream → the stream's [`StreamStats`], so start-up never scans events.
//! - `c` stream → the stream's [`StreamSettings`] (absent when they are the default).
//! - `d` stream → a delete floor: the stream's events up to this id were deleted. Readers skip
//!   them at once; [`Log::purge`] removes their bytes later in bounded steps, then the floor.
//! - `s` → the id ceiling: ids up to it may have been handed out. Ids are reserved in blocks and
//!   the ceiling is fsync'd *before* any id above the old one is used, so after a crash the next
//!   id is above every id anyone may have seen, even when publishing without per-event fsync. A
//!   clean close lowers the ceiling to the last id used, so restarts do not burn ids.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use sled::{Batch, Db, IVec};

use super::{by_name, Log, LogError, Retention, StreamSettings, StreamStats, TrimOutcome};
use crate::broker::event::{Event, EventId, EventType, NewEvent, StreamName};

const SEQ_KEY: &[u8] = b"s";
const RESERVE: u64 = 1 << 20;
const RECORD_VERSION: u8 = 1;

pub struct SledLog {
    db: Db,
    state: Mutex<State>,
}

struct State {
    next: u64,
    ceiling: u64,
    stats: HashMap<StreamName, StreamStats>,
    settings: HashMap<StreamName, StreamSettings>,
    /// Deleted streams whose old events are not purged yet: events up to the id are gone.
    floors: HashMap<StreamName, EventId>,
}

impl State {
    fn floor(&self, stream: &StreamName) -> EventId {
        self.floors.get(stream).copied().unwrap_or(EventId::ZERO)
    }
}

impl SledLog {
    /// Opens (or creates) the log in `dir`. `cache_bytes` bounds sled's page cache;
    /// `flush_every_ms` turns on sled's background flusher (for the relaxed durability mode; with
    /// `None` only [`Log::sync`] flushes).
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        flush_every_ms: Option<u64>,
    ) -> Result<Self, LogError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(flush_every_ms)
            .open()?;
        let ceiling = match db.get(SEQ_KEY)? {
            Some(v) => read_u64(&v, 0).ok_or_else(|| LogError::Corrupt("id ceiling".into()))?,
            None => 0,
        };
        let stats = load(&db, b'm', decode_stats)?;
        let settings = load(&db, b'c', decode_settings)?;
        let floors = load(&db, b'd', |v| {
            read_u64(v, 0)
                .map(EventId)
                .ok_or_else(|| LogError::Corrupt("delete floor".into()))
        })?;
        Ok(SledLog {
            db,
            state: Mutex::new(State {
                next: ceiling + 1,
                ceiling,
                stats,
                settings,
                floors,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data that every writer leaves consistent; a panic elsewhere while
        // holding it cannot leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Log for SledLog {
    fn append(&self, events: Vec<NewEvent>, time: u64) -> Result<Vec<Event>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.state();
        let last = st
            .next
            .checked_add(events.len() as u64 - 1)
            .ok_or(LogError::IdsExhausted)?;
        if last > st.ceiling {
            let ceiling = last.saturating_add(RESERVE);
            self.db.insert(SEQ_KEY, &ceiling.to_be_bytes())?;
            self.db.flush()?;
            st.ceiling = ceiling;
        }
        let mut batch = Batch::default();
        let mut touched: HashMap<StreamName, StreamStats> = HashMap::new();
        let mut appended = Vec::with_capacity(events.len());
        for (offset, new) in events.into_iter().enumerate() {
            let id = EventId(st.next + offset as u64);
            batch.insert(event_key(&new.stream, id), encode_record(time, &new));
            let stats = touched
                .entry(new.stream.clone())
                .or_insert_with(|| st.stats.get(&new.stream).copied().unwrap_or_default());
            if stats.length == 0 {
                stats.first_id = id;
                stats.first_time = time;
            }
            stats.length += 1;
            stats.last_id = id;
            appended.push(Event::new(id, new.stream, new.kind, new.data, time));
        }
        for (name, stats) in &touched {
            batch.insert(keyed(b'm', name), encode_stats(stats).to_vec());
        }
        self.db.apply_batch(batch)?;
        st.next = last + 1;
        st.stats.extend(touched);
        Ok(appended)
    }

    fn sync(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }

    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, LogError> {
        let after = after.max(self.state().floor(stream));
        if after >= upto || limit == 0 {
            return Ok(Vec::new());
        }
        let range = event_key(stream, EventId(after.0 + 1))..=event_key(stream, upto);
        let mut events = Vec::with_capacity(limit.min(1024));
        for item in self.db.range(range).take(limit) {
            let (key, value) = item?;
            events.push(decode_event(stream, &key, &value)?);
        }
        Ok(events)
    }

    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, LogError> {
        let floor = self.state().floor(stream);
        if floor >= upto {
            return Ok(Vec::new());
        }
        let range = event_key(stream, EventId(floor.0 + 1))..=event_key(stream, upto);
        let mut events = Vec::with_capacity(n.min(1024));
        for item in self.db.range(range).rev().take(n) {
            let (key, value) = item?;
            events.push(decode_event(stream, &key, &value)?);
        }
        events.reverse();
        Ok(events)
    }

    fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, LogError> {
        if id <= self.state().floor(stream) {
            return Ok(None);
        }
        let key = event_key(stream, id);
        match self.db.get(&key)? {
            Some(value) => Ok(Some(decode_event(stream, &key, &value)?)),
            None => Ok(None),
        }
    }

    fn trim(
        &self,
        stream: &StreamName,
        retention: &Retention,
        now: u64,
        budget: usize,
    ) -> Result<TrimOutcome, LogError> {
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
        let from = event_key(stream, EventId(st.floor(stream).0 + 1));
        for item in self.db.range(from..=event_key(stream, EventId(u64::MAX))) {
            let (key, value) = item?;
            let id = id_from_key(&key)?;
            let time =
                read_u64(&value, 1).ok_or_else(|| LogError::Corrupt(format!("event {id}")))?;
            if outcome.removed as usize == budget {
                outcome.more = plan.remove(time);
                new_first = Some((id, time));
                break;
            }
            if !plan.remove(time) {
                new_first = Some((id, time));
                break;
            }
            batch.remove(key);
            outcome.removed += 1;
            last_removed = id;
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

    fn put_settings(&self, stream: &StreamName, settings: StreamSettings) -> Result<(), LogError> {
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
        by_name(self.state().settings.iter())
    }

    fn delete(&self, stream: &StreamName) -> Result<(), LogError> {
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
        Ok(())
    }

    fn purge(&self, budget: usize) -> Result<bool, LogError> {
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
        by_name(self.state().stats.iter())
    }

    fn last_id(&self) -> EventId {
        EventId(self.state().next - 1)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn close(&self) -> Result<(), LogError> {
        let st = self.state();
        self.db.insert(SEQ_KEY, &(st.next - 1).to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

fn event_prefix(stream: &StreamName) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 10);
    key.push(b'e');
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0);
    key
}

fn event_key(stream: &StreamName, id: EventId) -> Vec<u8> {
    let mut key = event_prefix(stream);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// A per-stream key: one tag byte, then the name.
fn keyed(tag: u8, stream: &StreamName) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 1);
    key.push(tag);
    key.extend_from_slice(stream.as_str().as_bytes());
    key
}

/// Reads every per-stream value under one tag.
fn load<T>(
    db: &Db,
    tag: u8,
    decode: impl Fn(&[u8]) -> Result<T, LogError>,
) -> Result<HashMap<StreamName, T>, LogError> {
    let mut all = HashMap::new();
    for item in db.scan_prefix([tag]) {
        let (key, value) = item?;
        let name = std::str::from_utf8(&key[1..])
            .ok()
            .and_then(|n| StreamName::new(n).ok())
            .ok_or_else(|| LogError::Corrupt(format!("stream name in a {:?} key", tag as char)))?;
        all.insert(name, decode(&value)?);
    }
    Ok(all)
}

fn id_from_key(key: &[u8]) -> Result<EventId, LogError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| read_u64(key, at))
        .map(EventId)
        .ok_or_else(|| LogError::Corrupt("short event key".into()))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(slice.try_into().ok()?))
}

fn encode_record(time: u64, event: &NewEvent) -> Vec<u8> {
    let kind = event.kind.as_ref().map_or("", EventType::as_str);
    let mut value = Vec::with_capacity(11 + kind.len() + event.data.len());
    value.push(RECORD_VERSION);
    value.extend_from_slice(&time.to_be_bytes());
    // An EventType is at most 64 characters, so at most 256 bytes: a u16 always holds it.
    value.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    value.extend_from_slice(kind.as_bytes());
    value.extend_from_slice(event.data.as_bytes());
    value
}

fn decode_event(stream: &StreamName, key: &[u8], value: &IVec) -> Result<Event, LogError> {
    let id = id_from_key(key)?;
    let corrupt = || LogError::Corrupt(format!("event {id} of stream {stream}"));
    if value.first() != Some(&RECORD_VERSION) {
        return Err(corrupt());
    }
    let time = read_u64(value, 1).ok_or_else(corrupt)?;
    let kind_len = value
        .get(9..11)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or_else(corrupt)?;
    let kind_bytes = value.get(11..11 + kind_len).ok_or_else(corrupt)?;
    let kind = match kind_len {
        0 => None,
        _ => Some(
            std::str::from_utf8(kind_bytes)
                .ok()
                .and_then(|k| EventType::new(k).ok())
                .ok_or_else(corrupt)?,
        ),
    };
    let data = String::from_utf8(value[11 + kind_len..].to_vec()).map_err(|_| corrupt())?;
    Ok(Event::new(id, stream.clone(), kind, data, time))
}

fn encode_stats(stats: &StreamStats) -> [u8; 40] {
    let mut out = [0u8; 40];
    let fields = [
        stats.length,
        stats.first_id.0,
        stats.last_id.0,
        stats.first_time,
        stats.trimmed_through.0,
    ];
    for (chunk, field) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_be_bytes());
    }
    out
}

fn decode_stats(bytes: &[u8]) -> Result<StreamStats, LogError> {
    let field = |i: usize| {
        read_u64(bytes, i * 8).ok_or_else(|| LogError::Corrupt("stream counters".into()))
    };
    Ok(StreamStats {
        length: field(0)?,
        first_id: EventId(field(1)?),
        last_id: EventId(field(2)?),
        first_time: field(3)?,
        trimmed_through: EventId(field(4)?),
    })
}

const SEALED: u8 = 1;
const HAS_MAX_LEN: u8 = 2;
const HAS_MAX_AGE: u8 = 4;

/// `[version][flags][max_len u64][max_age_ms u64]`.
fn encode_settings(settings: &StreamSettings) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0] = RECORD_VERSION;
    let mut flags = 0;
    if settings.sealed {
        flags |= SEALED;
    }
    if let Some(n) = settings.max_len {
        flags |= HAS_MAX_LEN;
        out[2..10].copy_from_slice(&n.to_be_bytes());
    }
    if let Some(ms) = settings.max_age_ms {
        flags |= HAS_MAX_AGE;
        out[10..18].copy_from_slice(&ms.to_be_bytes());
    }
    out[1] = flags;
    out
}

fn decode_settings(bytes: &[u8]) -> Result<StreamSettings, LogError> {
    let corrupt = || LogError::Corrupt("stream settings".into());
    if bytes.len() != 18 || bytes[0] != RECORD_VERSION {
        return Err(corrupt());
    }
    let flags = bytes[1];
    let field = |at: usize, flag: u8| -> Result<Option<u64>, LogError> {
        if flags & flag == 0 {
            return Ok(None);
        }
        read_u64(bytes, at).map(Some).ok_or_else(corrupt)
    };
    Ok(StreamSettings {
        sealed: flags & SEALED != 0,
        max_len: field(2, HAS_MAX_LEN)?,
        max_age_ms: field(10, HAS_MAX_AGE)?,
    })
}
