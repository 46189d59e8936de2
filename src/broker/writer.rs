//! The one thread that changes the log: group commit, then fan-out, then the acknowledgements.
//!
//! Publishers queue their events and wait. The writer takes everything queued (a group), appends
//! it in one batch, fsyncs once for the whole group, and only then makes it visible: it raises
//! the visible watermark, sends each event to the live channels in id order, and answers every
//! publisher. While it fsyncs, the next group queues up, so durable publishing costs one fsync
//! per group, not per request. Because one thread does all of this, publish order, id order and
//! live delivery order are the same thing. Retention trimming runs here too, in bounded steps
//! between groups, so it never races an append.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::event::{now_millis, Event, NewEvent};
use super::fanout::Fanout;
use super::log::{Log, Retention};
use super::BrokerError;

/// How many events one group may hold before it is committed (a single larger batch request is
/// still committed whole).
const MAX_GROUP_EVENTS: usize = 8192;
/// Events removed per trim step, so one huge trim never holds up publishers for long.
const TRIM_BUDGET: usize = 4096;

pub(crate) type PublishReply = oneshot::Sender<Result<Vec<Arc<Event>>, BrokerError>>;

pub(crate) enum Command {
    Publish {
        events: Vec<NewEvent>,
        reply: PublishReply,
    },
    /// Flush, record a clean stop, and end the thread.
    Close { reply: oneshot::Sender<()> },
}

/// When an acknowledged event is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each group is fsync'd before it is acknowledged or delivered.
    Fsync,
    /// Acknowledged at once, fsync'd in the background at this interval: a crash may lose up to
    /// that much acknowledged data (ids are still never reused).
    Interval(Duration),
}

/// Everything the writer thread owns or shares.
pub(crate) struct Writer {
    pub log: Arc<dyn Log>,
    pub fanout: Arc<Fanout>,
    /// Highest id that is durable (per `durability`) and sent to the live channels.
    pub visible: Arc<AtomicU64>,
    /// Set when an fsync failed: from then on nothing is acknowledged as durable.
    pub failed: Arc<AtomicBool>,
    pub durability: Durability,
    pub retention: Retention,
    pub trim_every: Duration,
    pub commands: Receiver<Command>,
}

impl Writer {
    pub fn run(self) {
        let mut last_time = 0u64;
        let mut next_trim = Instant::now() + self.trim_every;
        let mut trimming = false;
        loop {
            let wait = if trimming {
                Duration::ZERO
            } else {
                next_trim.saturating_duration_since(Instant::now())
            };
            let first = match self.commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut group = Vec::new();
                let mut size = 0;
                let mut command = Some(first);
                while let Some(c) = command.take() {
                    match c {
                        Command::Publish { events, reply } => {
                            size += events.len();
                            group.push((events, reply));
                        }
                        Command::Close { reply } => {
                            self.commit(group, &mut last_time);
                            self.close();
                            let _ = reply.send(());
                            return;
                        }
                    }
                    if size < MAX_GROUP_EVENTS {
                        command = self.commands.try_recv().ok();
                    }
                }
                self.commit(group, &mut last_time);
            }
            if trimming || Instant::now() >= next_trim {
                trimming = self.trim_step();
                if !trimming {
                    next_trim = Instant::now() + self.trim_every;
                }
            }
        }
        self.close();
    }

    fn commit(&self, group: Vec<(Vec<NewEvent>, PublishReply)>, last_time: &mut u64) {
        if group.is_empty() {
            return;
        }
        if self.failed.load(Ordering::Acquire) {
            for (_, reply) in group {
                let _ = reply.send(Err(BrokerError::StoreFailed));
            }
            return;
        }
        let mut sizes = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut all = Vec::new();
        for (events, reply) in group {
            sizes.push(events.len());
            replies.push(reply);
            all.extend(events);
        }
        // Never let time go backwards, so age-based retention agrees with id order.
        *last_time = now_millis().max(*last_time);
        let appended = self.log.append(all, *last_time).and_then(|events| {
            if self.durability == Durability::Fsync {
                self.log.sync().inspect_err(|_| {
                    self.failed.store(true, Ordering::Release);
                })?;
            }
            Ok(events)
        });
        let events: Vec<Arc<Event>> = match appended {
            Ok(events) => events.into_iter().map(Arc::new).collect(),
            Err(e) => {
                tracing::error!(error = %e, "append failed; the group is refused");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(BrokerError::Store(message.clone())));
                }
                return;
            }
        };
        if let Some(last) = events.last() {
            self.visible.store(last.id.0, Ordering::Release);
        }
        for event in &events {
            self.fanout.send(event);
        }
        let mut rest = events.as_slice();
        for (reply, size) in replies.into_iter().zip(sizes) {
            let (mine, tail) = rest.split_at(size);
            rest = tail;
            let _ = reply.send(Ok(mine.to_vec()));
        }
    }

    /// Trims streams over their limits, at most one budget per stream; true if more remains.
    fn trim_step(&self) -> bool {
        if self.retention == Retention::default() {
            return false;
        }
        let now = now_millis();
        let mut more = false;
        for (stream, stats) in self.log.all_stats() {
            if !self.retention.wants_trim(&stats, now) {
                continue;
            }
            match self.log.trim(&stream, &self.retention, now, TRIM_BUDGET) {
                Ok(outcome) => {
                    more |= outcome.more;
                    tracing::debug!(%stream, removed = outcome.removed, "trimmed");
                }
                Err(e) => tracing::error!(%stream, error = %e, "trim failed"),
            }
        }
        more
    }

    fn close(&self) {
        if let Err(e) = self.log.close() {
            tracing::error!(error = %e, "closing the log failed");
        }
    }
}
