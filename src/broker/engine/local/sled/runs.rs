//! Runs: consecutive events of one stream from one append, stored behind one key.
//!
//! Value: `[2][time u64 BE][count u32 BE]`, then per event `[id u64 BE][type len u16 BE][data len
//! u32 BE][type][data]`. Stores written before runs hold one event per key, as `[1][time u64
//! BE][type len u16 BE][type][data]` keyed by its id; they are read as runs of one.
//!
//! Why runs: sled's cost is per key (each insert is a tree operation and a log record; each key
//! read is a node lookup), so 100-byte events one per key capped batch publishing near 200k
//! events/s and a catch-up from disk near 500k/s (BENCHMARKS.md).

use super::keys::{id_from_key, read_u64};
use crate::broker::engine::local::store::StoreError;
use crate::broker::event::{Event, EventId, EventType, StreamName};

/// An event record from before runs: one event, whose id is in the key.
const SINGLE_EVENT: u8 = 1;
/// A run record.
const EVENT_RUN: u8 = 2;
const RUN_HEADER: usize = 13;
const EVENT_HEADER: usize = 14;
/// Bytes of events one run holds at most; one larger event is a run of its own. sled splits a
/// leaf node at 17 keys and writes any node whose serialised form passes a quarter of its 512 KiB
/// segment to a separate blob file (one file per write), so runs stay small enough that a full
/// node of them is far below that (17 × 4 KiB ≈ 70 KiB < 128 KiB), while still putting ~35
/// 100-byte events behind each key.
pub(super) const RUN_BYTES: usize = 4096;

/// Fills run records for one stream during an append (or a trim that keeps a run's tail).
pub(super) struct RunWriter {
    time: u64,
    value: Vec<u8>,
    count: u32,
    last: EventId,
}

impl RunWriter {
    pub(super) fn new(time: u64) -> RunWriter {
        RunWriter {
            time,
            value: Vec::new(),
            count: 0,
            last: EventId::ZERO,
        }
    }

    /// The time of the events it holds.
    pub(super) fn time(&self) -> u64 {
        self.time
    }

    /// Adds an event. When it does not fit beside what the run already holds, the run so far is
    /// finished first and returned (its last id and value) for the caller to store.
    pub(super) fn push(
        &mut self,
        id: EventId,
        kind: &[u8],
        data: &[u8],
    ) -> Option<(EventId, Vec<u8>)> {
        let size = EVENT_HEADER + kind.len() + data.len();
        let full = if self.count > 0 && self.value.len() - RUN_HEADER + size > RUN_BYTES {
            self.finish()
        } else {
            None
        };
        if self.count == 0 {
            self.value.reserve(RUN_HEADER + size.max(RUN_BYTES));
            self.value.push(EVENT_RUN);
            self.value.extend_from_slice(&self.time.to_be_bytes());
            self.value.extend_from_slice(&0u32.to_be_bytes()); // the count, set by `finish`
        }
        self.value.extend_from_slice(&id.0.to_be_bytes());
        // An EventType is at most 64 characters, so at most 256 bytes: a u16 always holds it.
        self.value
            .extend_from_slice(&(kind.len() as u16).to_be_bytes());
        // Data is bounded by the request body limit, far below 4 GiB.
        self.value
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.value.extend_from_slice(kind);
        self.value.extend_from_slice(data);
        self.count += 1;
        self.last = id;
        full
    }

    /// The run's last id and value, or `None` when it holds nothing; the writer is empty after.
    pub(super) fn finish(&mut self) -> Option<(EventId, Vec<u8>)> {
        if self.count == 0 {
            return None;
        }
        self.value[9..RUN_HEADER].copy_from_slice(&self.count.to_be_bytes());
        self.count = 0;
        Some((self.last, std::mem::take(&mut self.value)))
    }
}

/// The events of one record, read in place.
pub(super) struct Run<'a> {
    pub(super) time: u64,
    /// For a pre-run record: its one event's id, not yet yielded.
    single: Option<EventId>,
    left: u32,
    rest: &'a [u8],
    stream: &'a StreamName,
}

/// One stored event, borrowed from its record.
pub(super) struct Stored<'a> {
    pub(super) id: EventId,
    pub(super) time: u64,
    pub(super) kind: &'a [u8],
    pub(super) data: &'a [u8],
}

impl<'a> Run<'a> {
    pub(super) fn parse(
        stream: &'a StreamName,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<Run<'a>, StoreError> {
        let key_id = id_from_key(key)?;
        let corrupt = || StoreError::Corrupt(format!("record {key_id} of stream {stream}"));
        let time = read_u64(value, 1).ok_or_else(corrupt)?;
        match value.first() {
            Some(&SINGLE_EVENT) => Ok(Run {
                time,
                single: Some(key_id),
                left: 1,
                rest: &value[9..],
                stream,
            }),
            Some(&EVENT_RUN) => {
                let count = value
                    .get(9..RUN_HEADER)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(corrupt)?;
                Ok(Run {
                    time,
                    single: None,
                    left: count,
                    rest: &value[RUN_HEADER..],
                    stream,
                })
            }
            _ => Err(corrupt()),
        }
    }

    fn next_event(&mut self) -> Option<Stored<'a>> {
        let rest = self.rest;
        if let Some(id) = self.single.take() {
            let kind_len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let kind = rest.get(2..2 + kind_len)?;
            self.rest = &[];
            return Some(Stored {
                id,
                time: self.time,
                kind,
                data: &rest[2 + kind_len..],
            });
        }
        let id = read_u64(rest, 0)?;
        let kind_len = u16::from_be_bytes(rest.get(8..10)?.try_into().ok()?) as usize;
        let data_len = u32::from_be_bytes(rest.get(10..EVENT_HEADER)?.try_into().ok()?) as usize;
        let kind_end = EVENT_HEADER + kind_len;
        let data_end = kind_end.checked_add(data_len)?;
        let stored = Stored {
            id: EventId(id),
            time: self.time,
            kind: rest.get(EVENT_HEADER..kind_end)?,
            data: rest.get(kind_end..data_end)?,
        };
        self.rest = &rest[data_end..];
        Some(stored)
    }
}

impl<'a> Iterator for Run<'a> {
    type Item = Result<Stored<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.next_event().ok_or_else(|| {
            self.left = 0;
            StoreError::Corrupt(format!("a record of stream {} is cut short", self.stream))
        }))
    }
}

impl Stored<'_> {
    pub(super) fn event(&self, stream: &StreamName) -> Result<Event, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("event {} of stream {stream}", self.id));
        let kind = match self.kind {
            [] => None,
            bytes => Some(
                std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|k| EventType::new(k).ok())
                    .ok_or_else(corrupt)?,
            ),
        };
        let data = std::str::from_utf8(self.data).map_err(|_| corrupt())?;
        Ok(Event::new(
            self.id,
            stream.clone(),
            kind,
            data.to_owned(),
            self.time,
        ))
    }
}
