//! Runs: consecutive events of one stream, stored behind one key (the run's last id).
//!
//! Value: `[3][time u64 BE][count u32 BE]`, then per event `[id u64 BE][time offset u32 BE][type
//! len u16 BE][data len u32 BE][type][data]`: an event's time is the run's time plus its offset,
//! so one run holds events of many milliseconds. Read too, never written since:
//! - `[2][time u64 BE][count u32 BE]`, then per event `[id u64 BE][type len u16 BE][data len u32
//!   BE][type][data]`: a run of events of one time (until 2026-12-02);
//! - `[1][time u64 BE][type len u16 BE][type][data]`, keyed by its id: one event per key (stores
//!   written before runs), read as a run of one.
//!
//! Why runs: sled's cost is per key (each insert is a tree operation and a log record; each key
//! read is a node lookup), so 100-byte events one per key capped batch publishing near 200k
//! events/s and a catch-up from disk near 500k/s (BENCHMARKS.md). Why times per event: runs of
//! one time each were cut at every millisecond, so at 40k publishes/s they held a third fewer
//! events than their 4 KiB allow, and sled's per-key work (a split every ninth key) with them.

use super::keys::{id_from_key, read_u64};
use crate::broker::engine::local::store::StoreError;
use crate::broker::event::{Event, EventId, EventType, StreamName};

/// An event record from before runs: one event, whose id is in the key.
const SINGLE_EVENT: u8 = 1;
/// A run record whose events share the run's time.
const EVENT_RUN: u8 = 2;
/// A run record whose events each carry their time, as an offset from the run's.
const TIMED_RUN: u8 = 3;
const RUN_HEADER: usize = 13;
/// What follows an event's id (and time offset) in a run: its type's length and its data's.
const LENGTHS: usize = 6;
/// An event's header in a `TIMED_RUN`: id, time offset, lengths.
const TIMED_EVENT_HEADER: usize = 8 + 4 + LENGTHS;
/// Bytes of events one run holds at most; one larger event is a run of its own. sled splits a
/// leaf node at 17 keys and writes any node whose serialised form passes a quarter of its 512 KiB
/// segment to a separate blob file (one file per write), so runs stay small enough that a full
/// node of them is far below that (17 × 4 KiB ≈ 70 KiB < 128 KiB), while still putting ~35
/// 100-byte events behind each key.
pub(super) const RUN_BYTES: usize = 4096;

/// Fills run records for one stream during an append (or a trim that keeps a run's tail).
#[derive(Default)]
pub(super) struct RunWriter {
    /// The time of the run's first event; the others are stored as offsets from it.
    time: u64,
    value: Vec<u8>,
    count: u32,
    last: EventId,
}

impl RunWriter {
    /// Adds an event. When it does not fit beside what the run already holds — by size, or by a
    /// time before the run's first or too far after it for an offset — the run so far is
    /// finished first and returned (its last id and value) for the caller to store.
    pub(super) fn push(
        &mut self,
        id: EventId,
        time: u64,
        kind: &[u8],
        data: &[u8],
    ) -> Option<(EventId, Vec<u8>)> {
        let size = TIMED_EVENT_HEADER + kind.len() + data.len();
        let full = if self.count > 0
            && (self.value.len() - RUN_HEADER + size > RUN_BYTES || self.offset(time).is_none())
        {
            self.finish()
        } else {
            None
        };
        if self.count == 0 {
            self.time = time;
            self.value.reserve(RUN_HEADER + size.max(RUN_BYTES));
            self.value.push(TIMED_RUN);
            self.value.extend_from_slice(&time.to_be_bytes());
            self.value.extend_from_slice(&0u32.to_be_bytes()); // the count, set by `finish`
        }
        // Always there: 0 for a run's first event, checked above for the others.
        let offset = self.offset(time).unwrap_or_default();
        self.value.extend_from_slice(&id.0.to_be_bytes());
        self.value.extend_from_slice(&offset.to_be_bytes());
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

    /// `time` as an offset from the run's first event, if it is one.
    fn offset(&self, time: u64) -> Option<u32> {
        time.checked_sub(self.time)
            .and_then(|offset| u32::try_from(offset).ok())
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
    layout: Layout,
    /// The record's time: every event's in an `EVENT_RUN`, the base of the offsets in a
    /// `TIMED_RUN`.
    time: u64,
    left: u32,
    rest: &'a [u8],
    stream: &'a StreamName,
}

/// How a record lays out its events.
enum Layout {
    /// A pre-run record: its one event, whose id (from the key) is not yet yielded.
    Single(EventId),
    /// Events of the record's time.
    Shared,
    /// Events with their own times.
    Timed,
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
        let run = |layout| {
            let count = value
                .get(9..RUN_HEADER)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(corrupt)?;
            Ok(Run {
                layout,
                time,
                left: count,
                rest: &value[RUN_HEADER..],
                stream,
            })
        };
        match value.first() {
            Some(&SINGLE_EVENT) => Ok(Run {
                layout: Layout::Single(key_id),
                time,
                left: 1,
                rest: &value[9..],
                stream,
            }),
            Some(&EVENT_RUN) => run(Layout::Shared),
            Some(&TIMED_RUN) => run(Layout::Timed),
            _ => Err(corrupt()),
        }
    }

    fn next_event(&mut self) -> Option<Stored<'a>> {
        let rest = self.rest;
        // The event's id, time, and the rest of the record from its lengths on.
        let (id, time, header) = match self.layout {
            Layout::Single(id) => {
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
            Layout::Shared => (read_u64(rest, 0)?, self.time, rest.get(8..)?),
            Layout::Timed => {
                let offset = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
                let time = self.time.checked_add(u64::from(offset))?;
                (read_u64(rest, 0)?, time, rest.get(12..)?)
            }
        };
        let kind_len = u16::from_be_bytes(header.get(..2)?.try_into().ok()?) as usize;
        let data_len = u32::from_be_bytes(header.get(2..LENGTHS)?.try_into().ok()?) as usize;
        let kind_end = LENGTHS + kind_len;
        let data_end = kind_end.checked_add(data_len)?;
        let stored = Stored {
            id: EventId(id),
            time,
            kind: header.get(LENGTHS..kind_end)?,
            data: header.get(kind_end..data_end)?,
        };
        self.rest = &header[data_end..];
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

/// Records in the layouts earlier versions wrote, for tests that read them.
#[cfg(test)]
pub(crate) mod earlier {
    use super::{EVENT_RUN, SINGLE_EVENT};

    /// A record from before runs: one event, whose id is in its key.
    pub(crate) fn single(time: u64, kind: &str, data: &str) -> Vec<u8> {
        let mut value = vec![SINGLE_EVENT];
        value.extend_from_slice(&time.to_be_bytes());
        value.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        value.extend_from_slice(kind.as_bytes());
        value.extend_from_slice(data.as_bytes());
        value
    }

    /// A run whose events, `(id, type, data)` each, share its one time.
    pub(crate) fn shared(time: u64, events: &[(u64, &str, &str)]) -> Vec<u8> {
        let mut value = vec![EVENT_RUN];
        value.extend_from_slice(&time.to_be_bytes());
        value.extend_from_slice(&(events.len() as u32).to_be_bytes());
        for (id, kind, data) in events {
            value.extend_from_slice(&id.to_be_bytes());
            value.extend_from_slice(&(kind.len() as u16).to_be_bytes());
            value.extend_from_slice(&(data.len() as u32).to_be_bytes());
            value.extend_from_slice(kind.as_bytes());
            value.extend_from_slice(data.as_bytes());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::engine::local::sled::keys::event_key;

    /// Every event read back from the records `push` and `finish` made, as (id, time, data).
    fn written(events: &[(u64, u64, &str)]) -> (usize, Vec<(u64, u64, String)>) {
        let stream = StreamName::new("s").unwrap();
        let mut writer = RunWriter::default();
        let mut records: Vec<(EventId, Vec<u8>)> = events
            .iter()
            .filter_map(|&(id, time, data)| writer.push(EventId(id), time, b"", data.as_bytes()))
            .collect();
        records.extend(writer.finish());
        let read = records
            .iter()
            .flat_map(|(last, value)| {
                Run::parse(&stream, &event_key(&stream, *last), value)
                    .unwrap()
                    .map(|stored| {
                        let stored = stored.unwrap();
                        let data = String::from_utf8(stored.data.to_vec()).unwrap();
                        (stored.id.0, stored.time, data)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        (records.len(), read)
    }

    fn owned(events: &[(u64, u64, &str)]) -> Vec<(u64, u64, String)> {
        events
            .iter()
            .map(|&(id, time, data)| (id, time, data.to_owned()))
            .collect()
    }

    #[test]
    fn a_run_holds_events_of_many_times_each_with_its_own() {
        let events = [
            (1, 1_000, "a"),
            (2, 1_000, "b"),
            (3, 1_007, "c"),
            (9, 90_000, "d"),
        ];
        assert_eq!(written(&events), (1, owned(&events)));
    }

    /// An offset is unsigned and 32 bits: a clock that went back, or a gap of 50 days, starts a
    /// new run, and every event still reads back with its time.
    #[test]
    fn a_time_an_offset_cannot_hold_starts_a_new_run() {
        let far = 1_000 + u64::from(u32::MAX) + 1;
        let events = [
            (1, 1_000, "a"),
            (2, 999, "b"),
            (3, 1_000, "c"),
            (4, far, "d"),
        ];
        assert_eq!(written(&events), (3, owned(&events)));
        let edge = [(1, 0, "a"), (2, u64::from(u32::MAX), "b")];
        assert_eq!(written(&edge), (1, owned(&edge)));
    }

    #[test]
    fn a_run_is_cut_at_its_size() {
        let big = "x".repeat(RUN_BYTES / 3);
        let events: Vec<(u64, u64, &str)> = (1..=7).map(|id| (id, id, big.as_str())).collect();
        let (records, read) = written(&events);
        assert_eq!(read, owned(&events));
        // With their headers, three such events pass RUN_BYTES: two to a run.
        assert_eq!(records, 4);
    }

    /// Records of the two earlier layouts, as older herald versions wrote them, still read.
    #[test]
    fn records_of_earlier_layouts_are_read() {
        let stream = StreamName::new("s").unwrap();
        let shared = earlier::shared(500, &[(7, "", "seven"), (8, "greeting", "eight")]);
        let read: Vec<_> = Run::parse(&stream, &event_key(&stream, EventId(8)), &shared)
            .unwrap()
            .map(|stored| stored.unwrap().event(&stream).unwrap())
            .map(|e| {
                (
                    e.id.0,
                    e.time,
                    e.kind.map(|k| k.as_str().to_owned()),
                    e.data,
                )
            })
            .collect();
        assert_eq!(
            read,
            [
                (7, 500, None, "seven".to_owned()),
                (8, 500, Some("greeting".to_owned()), "eight".to_owned())
            ]
        );
        let single = earlier::single(600, "", "nine");
        let read: Vec<_> = Run::parse(&stream, &event_key(&stream, EventId(9)), &single)
            .unwrap()
            .map(|stored| stored.unwrap().event(&stream).unwrap())
            .map(|e| (e.id.0, e.time, e.data))
            .collect();
        assert_eq!(read, [(9, 600, "nine".to_owned())]);
    }

    /// A record cut short is an error, not a shorter run or a panic.
    #[test]
    fn a_record_cut_short_is_corrupt() {
        let stream = StreamName::new("s").unwrap();
        let mut writer = RunWriter::default();
        writer.push(EventId(1), 5, b"t", b"data");
        let (last, value) = writer.finish().unwrap();
        let key = event_key(&stream, last);
        for len in [0, 5, RUN_HEADER, RUN_HEADER + 10, value.len() - 1] {
            let errors = match Run::parse(&stream, &key, &value[..len]) {
                Err(_) => 1,
                Ok(run) => run.filter(Result::is_err).count(),
            };
            assert_eq!(errors, 1, "cut at {len} of {}", value.len());
        }
    }
}
