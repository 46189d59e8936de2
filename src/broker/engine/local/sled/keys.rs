//! The layout of herald's one sled tree, and the codecs of its small records.
//!
//! Keys:
//! - `e` stream `\0` id(u64 BE) → a *run* of that stream's events (`runs.rs`), keyed by the id of
//!   the run's **last** event. Stream names never contain `\0`, so one stream's runs are one
//!   contiguous, id-ordered key range, and the run that holds event `n` is the first key at or
//!   after `n`: a read from any id is one forward range.
//! - `m` stream → the stream's [`StreamStats`], so start-up never scans events.
//! - `c` stream → the stream's [`StreamSettings`] (absent when they are the default).
//! - `d` stream → a delete floor: the stream's events up to this id were deleted. Readers skip
//!   them at once; `purge` removes their bytes later in bounded steps, then the floor.
//! - `s` → the id ceiling: ids up to it may have been handed out (see `mod.rs`).
//! - `k` → nothing: present only while the log is closed after a clean stop.
//! - `i` key → what the publish request with that idempotency key was answered, and when:
//!   `[time u64 BE][count u32 BE]`, then per event `[id u64 BE][name len u8][name]`.
//! - `j` time(u64 BE) key → nothing: the same keys by time, so the oldest are forgotten first.

use std::collections::BTreeMap;

use sled::Db;

use crate::broker::engine::local::store::{Answered, StoreError};
use crate::broker::engine::{IdempotencyKey, Receipt, StreamSettings, StreamStats};
use crate::broker::event::{EventId, StreamName};

const RECORD_VERSION: u8 = 1;

/// The runs of `stream`, in id order, from the one holding `id` (the first key at or above it).
pub(super) fn runs_from(db: &Db, stream: &StreamName, id: EventId) -> sled::Iter {
    db.range(event_key(stream, id)..=event_key(stream, EventId(u64::MAX)))
}

pub(super) fn event_prefix(stream: &StreamName) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 10);
    key.push(b'e');
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0);
    key
}

pub(super) fn event_key(stream: &StreamName, id: EventId) -> Vec<u8> {
    let mut key = event_prefix(stream);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// A per-stream key: one tag byte, then the name.
pub(super) fn keyed(tag: u8, stream: &StreamName) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.as_str().len() + 1);
    key.push(tag);
    key.extend_from_slice(stream.as_str().as_bytes());
    key
}

/// Reads every per-stream value under one tag.
pub(super) fn load<T>(
    db: &Db,
    tag: u8,
    decode: impl Fn(&[u8]) -> Result<T, StoreError>,
) -> Result<BTreeMap<StreamName, T>, StoreError> {
    let mut all = BTreeMap::new();
    for item in db.scan_prefix([tag]) {
        let (key, value) = item?;
        let name = std::str::from_utf8(&key[1..])
            .ok()
            .and_then(|n| StreamName::new(n).ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("stream name in a {:?} key", tag as char))
            })?;
        all.insert(name, decode(&value)?);
    }
    Ok(all)
}

pub(super) fn id_from_key(key: &[u8]) -> Result<EventId, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| read_u64(key, at))
        .map(EventId)
        .ok_or_else(|| StoreError::Corrupt("short event key".into()))
}

pub(super) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(slice.try_into().ok()?))
}

pub(super) fn encode_stats(stats: &StreamStats) -> [u8; 40] {
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

pub(super) fn decode_stats(bytes: &[u8]) -> Result<StreamStats, StoreError> {
    let field = |i: usize| {
        read_u64(bytes, i * 8).ok_or_else(|| StoreError::Corrupt("stream counters".into()))
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
pub(super) fn encode_settings(settings: &StreamSettings) -> [u8; 18] {
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

pub(super) fn decode_settings(bytes: &[u8]) -> Result<StreamSettings, StoreError> {
    let corrupt = || StoreError::Corrupt("stream settings".into());
    if bytes.len() != 18 || bytes[0] != RECORD_VERSION {
        return Err(corrupt());
    }
    let flags = bytes[1];
    let field = |at: usize, flag: u8| -> Result<Option<u64>, StoreError> {
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

pub(super) fn answer_key(key: &IdempotencyKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.as_str().len() + 1);
    out.push(b'i');
    out.extend_from_slice(key.as_str().as_bytes());
    out
}

pub(super) fn answer_time_key(time: u64, key: &IdempotencyKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.as_str().len() + 9);
    out.push(b'j');
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(key.as_str().as_bytes());
    out
}

/// The `j` entries of the keys answered before `time`.
pub(super) fn answers_before(time: u64) -> std::ops::Range<Vec<u8>> {
    let at = |t: u64| {
        let mut key = vec![b'j'];
        key.extend_from_slice(&t.to_be_bytes());
        key
    };
    at(0)..at(time)
}

/// The key and time of a `j` entry.
pub(super) fn parse_answer_time_key(entry: &[u8]) -> Result<(u64, IdempotencyKey), StoreError> {
    let corrupt = || StoreError::Corrupt("an idempotency key's time entry".into());
    let time = read_u64(entry, 1).ok_or_else(corrupt)?;
    let key = std::str::from_utf8(entry.get(9..).ok_or_else(corrupt)?)
        .ok()
        .and_then(|k| IdempotencyKey::new(k).ok())
        .ok_or_else(corrupt)?;
    Ok((time, key))
}

pub(super) fn encode_answer(time: u64, receipts: &[Receipt]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + receipts.len() * 24);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&(receipts.len() as u32).to_be_bytes());
    for receipt in receipts {
        out.extend_from_slice(&receipt.id.0.to_be_bytes());
        // A stream name is at most 128 bytes.
        out.push(receipt.stream.as_str().len() as u8);
        out.extend_from_slice(receipt.stream.as_str().as_bytes());
    }
    out
}

pub(super) fn decode_answer(bytes: &[u8]) -> Result<Answered, StoreError> {
    let corrupt = || StoreError::Corrupt("an idempotency key's answer".into());
    let time = read_u64(bytes, 0).ok_or_else(corrupt)?;
    let count = bytes
        .get(8..12)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(corrupt)?;
    let mut rest = bytes.get(12..).ok_or_else(corrupt)?;
    let mut receipts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = read_u64(rest, 0).ok_or_else(corrupt)?;
        let len = *rest.get(8).ok_or_else(corrupt)? as usize;
        let name = rest.get(9..9 + len).ok_or_else(corrupt)?;
        let stream = std::str::from_utf8(name)
            .ok()
            .and_then(|n| StreamName::new(n).ok())
            .ok_or_else(corrupt)?;
        receipts.push(Receipt {
            id: EventId(id),
            stream,
        });
        rest = &rest[9 + len..];
    }
    Ok(Answered { time, receipts })
}
