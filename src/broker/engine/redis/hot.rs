//! The hot tail: the newest records this node has read from the global log, kept in memory, so
//! the reads of a reconnect storm — thousands of subscribers resuming a few events back — are
//! answered here instead of each asking Redis.
//!
//! It is fed by the node's tails, in log order, and is always one unbroken run of the log: a
//! record that does not follow the last one held (another tail read past it, or records were
//! skipped) starts the run again from that record. So it can answer "the events of a stream
//! after `after`" exactly when `after` is within the run and `upto` not past its end. Deletes
//! and trims are applied to it as they pass, so it never shows what Redis no longer holds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::broker::engine::{Committed, Position, Record};
use crate::broker::event::{Event, EventId, StreamName};

/// Records held at most, and bytes of event data.
const HELD_RECORDS: usize = 8192;
const HELD_BYTES: usize = 8 << 20;

pub(super) struct Hot {
    state: Mutex<Run>,
}

#[derive(Default)]
struct Run {
    /// Every event of the log after this position is held, up to `last`.
    from: Position,
    last: Position,
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl Hot {
    pub fn new() -> Hot {
        Hot {
            state: Mutex::new(Run::default()),
        }
    }

    fn run(&self) -> MutexGuard<'_, Run> {
        // Every change below leaves the run consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes records read from the log: `before` is the position the first one follows.
    pub fn feed(&self, before: Position, records: &[Committed]) {
        let mut run = self.run();
        let mut expected = before;
        for committed in records {
            if matches!(committed.record, Record::Skipped) {
                expected = committed.position;
                continue;
            }
            if committed.position <= run.last {
                expected = committed.position; // held already (another tail read it first)
                continue;
            }
            if expected != run.last {
                // Not the next record of the run: start a new run after its predecessor.
                *run = Run {
                    from: expected,
                    last: expected,
                    ..Run::default()
                };
            }
            match &committed.record {
                Record::Event(event) => {
                    run.bytes += event.data.len() + 64;
                    run.events.push_back(event.clone());
                }
                Record::Deleted(stream) => run.forget(stream, EventId(u64::MAX)),
                Record::Trimmed { stream, through } => run.forget(stream, *through),
                _ => {}
            }
            run.last = committed.position;
            expected = committed.position;
            while run.events.len() > HELD_RECORDS || run.bytes > HELD_BYTES {
                let Some(oldest) = run.events.pop_front() else {
                    break;
                };
                run.bytes -= oldest.data.len() + 64;
                run.from = Position::of_event(oldest.id);
            }
        }
    }

    /// The events of `stream` with `after < id <= upto`, at most `limit`, if the run holds
    /// them all; `None` sends the reader to Redis.
    pub fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Option<Vec<Event>> {
        let run = self.run();
        if after < run.from.id || upto > run.last.id || run.last == Position::default() {
            return None;
        }
        let start = run.events.partition_point(|e| e.id <= after);
        Some(
            run.events
                .range(start..)
                .take_while(|e| e.id <= upto)
                .filter(|e| e.stream == *stream)
                .take(limit)
                .map(|e| e.copy())
                .collect(),
        )
    }
}

impl Run {
    fn forget(&mut self, stream: &StreamName, through: EventId) {
        let before = self.events.len();
        let mut freed = 0;
        self.events.retain(|e| {
            let gone = e.stream == *stream && e.id <= through;
            if gone {
                freed += e.data.len() + 64;
            }
            !gone
        });
        if self.events.len() != before {
            self.bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    fn event(id: u64, stream: &str) -> Committed {
        Committed {
            position: Position::of_event(EventId(id)),
            record: Record::Event(Arc::new(Event::new(
                EventId(id),
                name(stream),
                None,
                format!("e{id}"),
                0,
            ))),
        }
    }

    fn ids(events: Option<Vec<Event>>) -> Option<Vec<u64>> {
        events.map(|e| e.iter().map(|e| e.id.0).collect())
    }

    #[test]
    fn reads_within_the_run_are_answered_and_others_go_to_redis() {
        let hot = Hot::new();
        let a = name("a");
        assert_eq!(ids(hot.read(&a, EventId(0), EventId(5), 10)), None, "empty");
        hot.feed(
            Position::of_event(EventId(10)),
            &[event(11, "a"), event(12, "b")],
        );
        hot.feed(Position::of_event(EventId(12)), &[event(13, "a")]);
        assert_eq!(
            ids(hot.read(&a, EventId(10), EventId(13), 10)),
            Some(vec![11, 13])
        );
        assert_eq!(
            ids(hot.read(&a, EventId(11), EventId(13), 10)),
            Some(vec![13])
        );
        assert_eq!(
            ids(hot.read(&a, EventId(10), EventId(13), 1)),
            Some(vec![11])
        );
        assert_eq!(
            ids(hot.read(&a, EventId(9), EventId(13), 10)),
            None,
            "before the run"
        );
        assert_eq!(
            ids(hot.read(&a, EventId(10), EventId(14), 10)),
            None,
            "past its end"
        );
        // Fed again by another tail: nothing doubles.
        hot.feed(
            Position::of_event(EventId(10)),
            &[event(11, "a"), event(12, "b"), event(13, "a")],
        );
        assert_eq!(
            ids(hot.read(&a, EventId(10), EventId(13), 10)),
            Some(vec![11, 13])
        );
    }

    #[test]
    fn a_break_in_the_log_starts_a_new_run_and_deletes_and_trims_are_applied() {
        let hot = Hot::new();
        let a = name("a");
        hot.feed(
            Position::of_event(EventId(10)),
            &[event(11, "a"), event(12, "a")],
        );
        // Records after 20 follow 20, not 12: what lies between was never read here.
        hot.feed(Position::of_event(EventId(20)), &[event(21, "a")]);
        assert_eq!(ids(hot.read(&a, EventId(10), EventId(21), 10)), None);
        assert_eq!(
            ids(hot.read(&a, EventId(20), EventId(21), 10)),
            Some(vec![21])
        );
        let trim = Committed {
            position: Position {
                id: EventId(21),
                seq: 1,
            },
            record: Record::Trimmed {
                stream: a.clone(),
                through: EventId(21),
            },
        };
        hot.feed(
            Position::of_event(EventId(21)),
            &[trim, event(22, "a"), event(23, "b")],
        );
        assert_eq!(
            ids(hot.read(&a, EventId(20), EventId(23), 10)),
            Some(vec![22])
        );
        let delete = Committed {
            position: Position {
                id: EventId(23),
                seq: 1,
            },
            record: Record::Deleted(a.clone()),
        };
        hot.feed(Position::of_event(EventId(23)), &[delete, event(24, "a")]);
        assert_eq!(
            ids(hot.read(&a, EventId(20), EventId(24), 10)),
            Some(vec![24])
        );
        // A log that lost its end (a failover): the next record follows an older position.
        hot.feed(Position::of_event(EventId(22)), &[event(30, "a")]);
        assert_eq!(ids(hot.read(&a, EventId(20), EventId(30), 10)), None);
        assert_eq!(
            ids(hot.read(&a, EventId(22), EventId(30), 10)),
            Some(vec![30])
        );
    }
}
