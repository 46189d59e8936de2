//! The local engine's tail: the writer's committed records, handed to every reader in order.
//!
//! For one process the tail is only an in-process notice: the writer's outbox task hands each
//! commit here after the fsync, and each reader's channel carries it on. A short run of recent
//! records is held, so a tail may start a little in the past (the contract suite does, and so
//! would a second reader that starts late); from further back the reader is told what it
//! missed with [`Record::Skipped`] and reads the log instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::broker::engine::{Committed, Position, Record, Tail};

/// Records held for tails that start in the past, at most; and bytes of event data.
const HELD_RECORDS: usize = 4096;
const HELD_BYTES: usize = 4 << 20;

pub(crate) struct TailHub {
    state: Mutex<HubState>,
}

struct HubState {
    held: VecDeque<Committed>,
    held_bytes: usize,
    /// Every record at or below this position is no longer held (at opening: every record
    /// before it, which this process never had).
    gone_through: Position,
    /// Each reader's channel. Unbounded: the node's own tailer empties it as fast as records
    /// come, and a bound would stall the writer behind the slowest reader.
    readers: Vec<UnboundedSender<Vec<Committed>>>,
    closed: bool,
}

impl TailHub {
    pub fn new(head: Position) -> TailHub {
        TailHub {
            state: Mutex::new(HubState {
                held: VecDeque::new(),
                held_bytes: 0,
                gone_through: head,
                readers: Vec::new(),
                closed: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // Each change below leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest position committed.
    pub fn head(&self) -> Position {
        let st = self.state();
        st.held.back().map_or(st.gone_through, |c| c.position)
    }

    /// Hands one commit to every reader, and holds it for later ones.
    pub fn commit(&self, records: Vec<Committed>) {
        if records.is_empty() {
            return;
        }
        let mut st = self.state();
        st.readers
            .retain(|reader| reader.send(records.clone()).is_ok());
        for record in records {
            st.held_bytes += size(&record);
            st.held.push_back(record);
        }
        while st.held.len() > HELD_RECORDS || st.held_bytes > HELD_BYTES {
            let Some(oldest) = st.held.pop_front() else {
                break;
            };
            st.held_bytes -= size(&oldest);
            st.gone_through = oldest.position;
        }
    }

    pub fn tail(&self, from: Position) -> Tail {
        let (reader, records) = unbounded_channel();
        let mut st = self.state();
        let mut first = Vec::new();
        if from < st.gone_through {
            first.push(Committed {
                position: st.gone_through,
                record: Record::Skipped,
            });
        }
        first.extend(st.held.iter().filter(|c| c.position > from).cloned());
        if !first.is_empty() {
            // The receiver is alive: it is ours, just made.
            let _ = reader.send(first);
        }
        if !st.closed {
            st.readers.push(reader);
        }
        UnboundedReceiverStream::new(records).map(Ok).boxed()
    }

    /// Ends every tail, once what was committed is handed over.
    pub fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.readers.clear();
    }
}

fn size(record: &Committed) -> usize {
    match &record.record {
        Record::Event(event) => event.data.len() + 64,
        _ => 64,
    }
}

/// Positions for the records a writer commits (see [`Position`]).
pub(crate) struct Positions(Position);

impl Positions {
    pub fn new(head: Position) -> Positions {
        Positions(head)
    }

    pub fn event(&mut self, event: &Arc<crate::broker::event::Event>) -> Position {
        self.0 = Position::of_event(event.id);
        self.0
    }

    pub fn other(&mut self) -> Position {
        self.0.seq += 1;
        self.0
    }
}
