//! The one thread that changes the local log: group commit, then the tail, then the
//! acknowledgements.
//!
//! Publishers queue their events and wait (through the [`Inbox`], which first gathers the
//! requests made at the same moment). The writer takes everything queued (a group), appends it
//! in one go (each request all or nothing), fsyncs once for the whole group, and only then hands
//! it on: the committed records go to the tail (which the node's tailer turns into the watermark
//! and the live channels), then every publisher is answered (both through the [`Outbox`], from a
//! task on the async runtime). While it fsyncs, the next group queues up, so durable publishing costs one fsync per
//! group, not per request.
//! Because one thread decides all of this, and one queue carries it out, publish order, id order
//! and live delivery order are the same thing. Sealing and deleting a stream go through the same
//! queue, so they fall at an exact point of that order: every publish queued before a seal is
//! delivered before subscribers are told, every publish after it is refused. Retention trimming
//! and the purge of deleted streams run here too, in bounded steps between groups, so they never
//! race an append.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SendError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use super::priority::{Priority, Watchdog};
use super::schedule::TrimSchedule;
use super::store::{self as store, Backlog, Store, StoreError};
use super::tail::{Positions, TailHub};
use super::wal::{Group, Wal};
use crate::broker::engine::{
    Appended, Change, Committed, EngineError, IdempotencyKey, Record, Retention, StreamSettings,
};
use crate::broker::event::{now_millis, Event, NewEvent, StreamName};

/// How many events one group may hold before it is committed (a single larger batch request is
/// still committed whole).
const MAX_GROUP_EVENTS: usize = 8192;
/// Events removed per trim step, so one huge trim never holds up publishers for long.
const TRIM_BUDGET: usize = 4096;
/// How often, with a write-ahead log, the store is flushed and the log before that point
/// forgotten: off the acknowledgement path, and bounding what a start-up replays.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// ...or sooner, once the log has grown this much since: a start-up after a crash replays at
/// most about this much, however fast events come.
const CHECKPOINT_BYTES: u64 = 16 << 20;

pub(crate) type PublishReply = oneshot::Sender<Result<Appended, EngineError>>;
pub(crate) type ChangeReply = oneshot::Sender<Result<StreamSettings, EngineError>>;

/// One publish request: its events (all or nothing), its idempotency key, and where its answer
/// goes.
pub(crate) struct Request {
    pub events: Vec<NewEvent>,
    pub key: Option<IdempotencyKey>,
    pub reply: PublishReply,
}

/// A request to store in this group, with the repeats of its key in the same group, which get
/// its answer.
struct ToStore {
    request: Request,
    repeats: Vec<PublishReply>,
}

impl ToStore {
    fn refuse(self, error: EngineError) {
        for reply in self.repeats {
            let _ = reply.send(Err(error.clone()));
        }
        let _ = self.request.reply.send(Err(error));
    }
}

pub(crate) enum Command {
    /// Publish requests gathered by the [`Inbox`], in the order they were made.
    Publish(Vec<Request>),
    /// Change a stream's settings or delete it, durably, at this point of the publish order.
    Change {
        stream: StreamName,
        change: Change,
        reply: ChangeReply,
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
    pub store: Arc<dyn Store>,
    pub outbox: Outbox,
    /// Set when an fsync failed: from then on nothing is acknowledged as durable.
    pub failed: Arc<AtomicBool>,
    pub durability: Durability,
    pub retention: Retention,
    pub trim_every: Duration,
    pub commands: Receiver<Command>,
    /// Where the next committed record goes in the tail.
    pub positions: Positions,
    pub sync_seconds: Histogram,
    /// How long a key's answer is kept: a repeat within it stores nothing.
    pub idempotency_window: Duration,
    /// The streams the next trim step looks at (filled at start-up with every stream).
    pub schedule: TrimSchedule,
    /// On disk: the write-ahead log, synced before a group is acknowledged; the store is then
    /// flushed only at checkpoints, by `checkpoints`. `None` in memory.
    pub wal: Option<Wal>,
    pub checkpoints: Option<Checkpointer>,
}

impl Writer {
    pub fn run(mut self) {
        // The writer is the only one to change settings, so its copy is always current.
        let mut settings: HashMap<StreamName, StreamSettings> =
            self.store.all_settings().into_iter().collect();
        // Every stream once, then only what changes.
        self.schedule = TrimSchedule::every(self.store.all_stats().into_iter().map(|(s, _)| s));
        let mut last_time = 0u64;
        let mut next_trim = Instant::now() + self.trim_every;
        let mut trimming = false;
        // With `--flush-interval`: when the oldest acknowledged event not yet synced must be
        // (the writer syncs the log itself, so the window is the interval plus one sync).
        let mut sync_due: Option<Instant> = None;
        // With a write-ahead log: the log position last handed to the checkpoint thread.
        let mut checkpointed = self.wal.as_ref().map_or(0, Wal::end);
        let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
        loop {
            let mut wait = if trimming {
                Duration::ZERO
            } else {
                next_trim.saturating_duration_since(Instant::now())
            };
            if let Some(due) = sync_due {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            if self.wal.is_some() {
                wait = wait.min(next_checkpoint.saturating_duration_since(Instant::now()));
            }
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
                        Command::Publish(requests) => {
                            size += requests.iter().map(|r| r.events.len()).sum::<usize>();
                            group.extend(requests);
                        }
                        Command::Change {
                            stream,
                            change,
                            reply,
                        } => {
                            self.commit(std::mem::take(&mut group), &settings, &mut last_time);
                            self.change(&mut settings, &stream, change, reply);
                            if matches!(change, Change::Retention { .. }) {
                                next_trim = Instant::now();
                            }
                            break;
                        }
                        Command::Close { reply } => {
                            self.commit(group, &settings, &mut last_time);
                            self.close();
                            let _ = reply.send(());
                            return;
                        }
                    }
                    if size < MAX_GROUP_EVENTS {
                        command = self.commands.try_recv().ok();
                    }
                }
                self.commit(group, &settings, &mut last_time);
                if let (Durability::Interval(every), None) = (self.durability, sync_due) {
                    sync_due = Some(Instant::now() + every);
                }
            }
            if sync_due.is_some_and(|due| Instant::now() >= due) {
                sync_due = None;
                if let Err(e) = self.sync() {
                    tracing::error!(error = %e, "a background sync failed; nothing more is acknowledged");
                }
            }
            if let (Some(wal), Some(checkpoints)) = (&self.wal, &self.checkpoints) {
                let end = wal.end();
                if end - checkpointed >= CHECKPOINT_BYTES || Instant::now() >= next_checkpoint {
                    next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
                    if end != checkpointed && checkpoints.request(end) {
                        checkpointed = end;
                    }
                }
            }
            if trimming || Instant::now() >= next_trim {
                trimming = self.trim_step(&settings);
                if !trimming {
                    next_trim = Instant::now() + self.trim_every;
                }
            }
        }
        self.close();
    }

    /// fsync, timed for `/metrics`: of the write-ahead log when there is one, else of the
    /// store. A failure means nothing more can be acknowledged as durable (see `failed`).
    fn sync(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let synced = match &mut self.wal {
            Some(wal) => wal.sync().map_err(|source| StoreError::Io {
                what: "fdatasync of the write-ahead log failed".into(),
                source,
            }),
            None => self.store.sync(),
        };
        self.sync_seconds.observe(started.elapsed().as_secs_f64());
        synced.inspect_err(|_| self.failed.store(true, Ordering::Release))
    }

    /// Makes the store durable by itself. With a write-ahead log, it also records in the store
    /// how far the log has got: a restart replays the log from there.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(wal) = &self.wal else {
            return self.sync();
        };
        self.store
            .checkpoint(wal.end())
            .inspect_err(|_| self.failed.store(true, Ordering::Release))
    }

    fn commit(
        &mut self,
        group: Vec<Request>,
        settings: &HashMap<StreamName, StreamSettings>,
        last_time: &mut u64,
    ) {
        if group.is_empty() {
            return;
        }
        // Never let time go backwards, so age-based retention agrees with id order.
        *last_time = now_millis().max(*last_time);
        let time = *last_time;
        let group = self.without_repeats(group, time);
        // A request that touches a sealed stream is refused whole; the rest of the group goes on.
        let sealed = |events: &[NewEvent]| {
            events
                .iter()
                .find(|e| settings.get(&e.stream).is_some_and(|s| s.sealed))
                .map(|e| e.stream.clone())
        };
        let group: Vec<ToStore> = group
            .into_iter()
            .filter_map(|entry| match sealed(&entry.request.events) {
                Some(stream) => {
                    entry.refuse(EngineError::Sealed(stream));
                    None
                }
                None => Some(entry),
            })
            .collect();
        if group.is_empty() {
            return;
        }
        if self.failed.load(Ordering::Acquire) {
            for entry in group {
                entry.refuse(EngineError::StoreFailed);
            }
            return;
        }
        let mut answers = Vec::with_capacity(group.len());
        let mut requests = Vec::with_capacity(group.len());
        let mut shape = Vec::new();
        for ToStore { request, repeats } in group {
            answers.push((request.events.len(), request.reply, repeats));
            if self.wal.is_some() {
                shape.push((request.events.len(), request.key.clone()));
            }
            requests.push(store::Request {
                events: request.events,
                key: request.key,
            });
        }
        let appended = self.store.append_group(requests, time).and_then(|events| {
            if let Some(wal) = &mut self.wal {
                wal.append(&Group::encode(time, &shape, &events))
                    .map_err(|source| StoreError::Io {
                        what: "appending to the write-ahead log failed".into(),
                        source,
                    })
                    .inspect_err(|_| self.failed.store(true, Ordering::Release))?;
            }
            if self.durability == Durability::Fsync {
                self.sync()?;
            }
            Ok(events)
        });
        let events: Vec<Arc<Event>> = match appended {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "append failed; the group is refused");
                let e = EngineError::store(e);
                for (_, reply, repeats) in answers {
                    for reply in repeats.into_iter().chain([reply]) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                return;
            }
        };
        for event in &events {
            self.schedule.touch(&event.stream);
        }
        let records = events
            .iter()
            .map(|event| Committed {
                position: self.positions.event(event),
                record: Record::Event(event.clone()),
            })
            .collect();
        let mut rest = events.as_slice();
        let mut replies = Vec::with_capacity(answers.len());
        for (size, reply, repeats) in answers {
            let (mine, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            let mine = Appended::Stored(mine.to_vec());
            if !repeats.is_empty() {
                let first = Appended::Repeated(mine.receipts());
                replies.extend(repeats.into_iter().map(|r| (r, first.clone())));
            }
            replies.push((reply, mine));
        }
        self.outbox.send(Outgoing {
            records,
            replies,
            changed: None,
        });
        // The store's bulk write of what is pending: on the checkpoint thread, off the
        // acknowledgement path (in idle moments, or at once when behind); here, holding up the
        // next group, only when that thread has fallen far behind (so pending events stay
        // bounded).
        match (self.store.backlog(), &self.checkpoints) {
            (Backlog::Low, _) => {}
            (Backlog::Due, Some(checkpoints)) => checkpoints.settle(false),
            (Backlog::Behind, Some(checkpoints)) => checkpoints.settle(true),
            (Backlog::Due | Backlog::Behind, None) | (Backlog::Full, _) => {
                self.before_settling();
                if let Err(e) = self.store.settle() {
                    tracing::error!(error = %e, "storing pending events failed; nothing more is acknowledged");
                    self.failed.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Answers the requests whose key was answered within the window (nothing is stored for
    /// them), and joins a key's repeats within this group to its first request.
    fn without_repeats(&self, group: Vec<Request>, now: u64) -> Vec<ToStore> {
        let window_start = now.saturating_sub(self.idempotency_window.as_millis() as u64);
        let mut first_of: HashMap<IdempotencyKey, usize> = HashMap::new();
        let mut entries: Vec<ToStore> = Vec::with_capacity(group.len());
        for request in group {
            if let Some(key) = &request.key {
                if let Some(&first) = first_of.get(key) {
                    entries[first].repeats.push(request.reply);
                    continue;
                }
                match self.store.answered(key) {
                    Ok(Some(answered)) if answered.time >= window_start => {
                        let _ = request
                            .reply
                            .send(Ok(Appended::Repeated(answered.receipts)));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "reading an idempotency key failed");
                        let _ = request.reply.send(Err(EngineError::store(e)));
                        continue;
                    }
                }
                first_of.insert(key.clone(), entries.len());
            }
            entries.push(ToStore {
                request,
                repeats: Vec::new(),
            });
        }
        entries
    }

    /// Applies a change, makes it durable, then hands it to the tail and answers.
    fn change(
        &mut self,
        settings: &mut HashMap<StreamName, StreamSettings>,
        stream: &StreamName,
        change: Change,
        reply: ChangeReply,
    ) {
        if self.failed.load(Ordering::Acquire) {
            let _ = reply.send(Err(EngineError::StoreFailed));
            return;
        }
        let mut new = settings.get(stream).copied().unwrap_or_default();
        match change {
            Change::Seal => new.sealed = true,
            Change::Retention {
                max_len,
                max_age_ms,
            } => {
                new.max_len = max_len;
                new.max_age_ms = max_age_ms;
            }
            Change::Delete => new = StreamSettings::default(),
        }
        // A checkpoint, so that a restart never replays events from before the change.
        self.before_settling();
        let durable = match change {
            Change::Delete => self.store.delete(stream),
            _ => self.store.put_settings(stream, new),
        }
        .and_then(|()| self.checkpoint());
        if let Err(e) = durable {
            tracing::error!(%stream, error = %e, "changing the stream failed");
            let _ = reply.send(Err(EngineError::store(e)));
            return;
        }
        if new.is_default() {
            settings.remove(stream);
        } else {
            settings.insert(stream.clone(), new);
        }
        match change {
            Change::Delete => self.schedule.forget(stream),
            _ => self.schedule.touch(stream),
        }
        let record = match change {
            Change::Seal => {
                tracing::info!(%stream, "stream sealed");
                Record::Sealed(stream.clone())
            }
            Change::Delete => {
                tracing::info!(%stream, "stream deleted");
                Record::Deleted(stream.clone())
            }
            Change::Retention { .. } => {
                tracing::info!(%stream, max_len = ?new.max_len, max_age_ms = ?new.max_age_ms, "stream retention set");
                Record::Settings(stream.clone(), new)
            }
        };
        self.tell(record, Some((reply, new)));
    }

    /// Hands a record that is not an event to the tail, then the answer to whoever asked.
    fn tell(&mut self, record: Record, changed: Option<(ChangeReply, StreamSettings)>) {
        let position = self.positions.other();
        self.outbox.send(Outgoing {
            records: vec![Committed { position, record }],
            replies: Vec::new(),
            changed,
        });
    }

    /// Trims streams over their limits and purges deleted ones, at most one budget per stream;
    /// true if more remains.
    fn trim_step(&mut self, settings: &HashMap<StreamName, StreamSettings>) -> bool {
        let mut more = match self.store.purge(TRIM_BUDGET) {
            Ok(more) => more,
            Err(e) => {
                tracing::error!(error = %e, "purging deleted streams failed");
                false
            }
        };
        let expired = now_millis().saturating_sub(self.idempotency_window.as_millis() as u64);
        match self.store.forget_keys(expired, TRIM_BUDGET) {
            Ok(keys_left) => more |= keys_left,
            Err(e) => tracing::error!(error = %e, "forgetting old idempotency keys failed"),
        }
        // Only the streams appended to or re-set since the last step, and those whose oldest
        // event has come of age: a step costs by what changed, not by how many streams exist.
        let now = now_millis();
        for stream in self.schedule.take(now) {
            let Some(stats) = self.store.stats(&stream) else {
                continue;
            };
            let retention = match settings.get(&stream) {
                Some(own) => self.retention.with(own),
                None => self.retention,
            };
            let mut left = stats;
            if retention.wants_trim(&stats, now) {
                self.before_settling();
                match self.store.trim(&stream, &retention, now, TRIM_BUDGET) {
                    Ok(outcome) => {
                        tracing::debug!(%stream, removed = outcome.removed, "trimmed");
                        if outcome.more {
                            // Over its budget: the next step (at once) goes on with it.
                            more = true;
                            self.schedule.touch(&stream);
                        }
                        if let Some(after) = self.store.stats(&stream) {
                            left = after;
                            if outcome.removed > 0 {
                                let through = after.trimmed_through;
                                self.tell(
                                    Record::Trimmed {
                                        stream: stream.clone(),
                                        through,
                                    },
                                    None,
                                );
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(%stream, error = %e, "trim failed");
                        self.schedule.touch(&stream);
                    }
                }
            }
            // Looked at again when its oldest event comes of age (a ms past, as `wants_trim`
            // asks for strictly older).
            let due = retention
                .max_age_ms
                .filter(|_| left.length > 0)
                .map(|age| left.first_time.saturating_add(age).saturating_add(1));
            self.schedule.set_due(&stream, due);
        }
        more
    }

    /// Before anything of the writer's own that settles: a settle on the checkpoint thread
    /// holds the store until it ends, so that thread must not be left at idle priority.
    fn before_settling(&self) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.raise();
        }
    }

    fn close(&mut self) {
        if let Some(checkpoints) = self.checkpoints.take() {
            checkpoints.stop();
        }
        if self.wal.is_some() {
            if let Err(e) = self.sync().and_then(|()| self.checkpoint()) {
                tracing::error!(error = %e, "the last checkpoint failed; the next start replays the log");
            }
        }
        if let Err(e) = self.store.close() {
            tracing::error!(error = %e, "closing the log failed");
        }
    }
}

/// The thread beside the writer that does the store's own writing, off the acknowledgement
/// path:
/// - **settles**: stores in bulk what appends left pending (asked for when enough is), at idle
///   priority unless it has fallen behind (`priority.rs`);
/// - **checkpoints**: the writer hands it the write-ahead log position its appends have reached
///   and goes on; the thread settles, records the position in the store, flushes, and then
///   forgets the log's segments before the checkpoint before (one checkpoint's records are kept
///   beyond what the store holds).
pub(crate) struct Checkpointer {
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// A settle is asked for and not begun: the writer does not ask again.
    settle_asked: Arc<AtomicBool>,
    priority: Arc<Priority>,
    /// Stopped before `thread` is joined or dropped (fields drop in this order).
    watchdog: Option<Watchdog>,
    thread: std::thread::JoinHandle<()>,
}

enum Job {
    Settle,
    Checkpoint(u64),
}

impl Checkpointer {
    pub(crate) fn start(
        store: Arc<dyn Store>,
        wal_dir: std::path::PathBuf,
        failed: Arc<AtomicBool>,
    ) -> std::io::Result<Checkpointer> {
        // Room for a checkpoint and a settle: one asked for while one runs waits for it; more
        // are dropped (the next one covers them; a checkpoint settles too).
        let (jobs, asked) = std::sync::mpsc::sync_channel::<Job>(2);
        let settle_asked = Arc::new(AtomicBool::new(false));
        let settling = settle_asked.clone();
        let priority = Priority::new();
        let mine = priority.clone();
        let thread = std::thread::Builder::new()
            .name("herald-checkpoint".into())
            .spawn(move || {
                let mut previous: Option<u64> = None;
                for job in asked {
                    // After each job, back to idle priority if it was raised (a checkpoint
                    // asked meanwhile runs at idle priority too, until the writer finds the
                    // thread behind or the watchdog finds the job starved).
                    let _job = mine.job(|| caught_up(&*store));
                    let position = match job {
                        Job::Settle => {
                            settling.store(false, Ordering::Release);
                            if let Err(e) = store.settle() {
                                tracing::error!(error = %e, "storing pending events failed; nothing more is acknowledged");
                                failed.store(true, Ordering::Release);
                            }
                            continue;
                        }
                        Job::Checkpoint(position) => position,
                    };
                    if let Err(e) = store.checkpoint(position) {
                        tracing::error!(error = %e, "a checkpoint failed; nothing more is acknowledged");
                        failed.store(true, Ordering::Release);
                        continue;
                    }
                    if let Some(before) = previous.replace(position) {
                        if let Err(e) = super::wal::forget_before(&wal_dir, before) {
                            tracing::warn!(error = %e, "removing old write-ahead log segments failed; they stay");
                        }
                    }
                }
            })?;
        let watchdog = priority.watch(&thread);
        if watchdog.is_some() {
            tracing::debug!("events are stored in sled at idle priority");
        } else {
            tracing::info!("events are stored in sled at normal priority: leaving idle priority needs CAP_SYS_NICE or RLIMIT_NICE 20 (systemd: LimitNICE=+0); durable publishing on a busy core is faster with it");
        }
        Ok(Checkpointer {
            jobs,
            settle_asked,
            priority,
            watchdog,
            thread,
        })
    }

    /// Asks for a checkpoint at `position`; false if one is already waiting to be taken.
    fn request(&self, position: u64) -> bool {
        self.jobs.try_send(Job::Checkpoint(position)).is_ok()
    }

    /// Asks for a settle, unless one is asked for already; `behind`: and raises the thread, so
    /// the settle runs now.
    fn settle(&self, behind: bool) {
        if behind {
            self.raise();
        }
        if !self.settle_asked.swap(true, Ordering::AcqRel)
            && self.jobs.try_send(Job::Settle).is_err()
        {
            self.settle_asked.store(false, Ordering::Release);
        }
    }

    /// Puts the thread at normal priority (it lowers itself once caught up).
    fn raise(&self) {
        self.priority.raise();
    }

    /// Lets the thread finish the job it is doing, and end.
    fn stop(self) {
        // The watchdog raises the thread as it stops, so its last job runs at normal priority.
        drop(self.watchdog);
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// Whether the checkpoint thread may go back to idle priority: its settles in idle moments keep
/// up.
fn caught_up(store: &dyn Store) -> bool {
    store.backlog() < Backlog::Behind
}

/// What the writer hands out once a commit is durable: the records for the tail, with the
/// answers to whoever asked for them. So a caller hears back only once the tail has its records:
/// a head read after an answer is at or past them.
pub(crate) struct Outgoing {
    records: Vec<Committed>,
    /// Each publisher's answer channel and its answer.
    replies: Vec<(PublishReply, Appended)>,
    /// The answer to a change, and the stream's settings after it.
    changed: Option<(ChangeReply, StreamSettings)>,
}

impl Outgoing {
    /// The tail first, so the node's tailer has the records before any publisher hears back.
    fn deliver(self, tail: &TailHub) {
        tail.commit(self.records);
        for (reply, answer) in self.replies {
            let _ = reply.send(Ok(answer));
        }
        if let Some((reply, settings)) = self.changed {
            let _ = reply.send(Ok(settings));
        }
    }
}

/// Sends the writer's results out from a task on the async runtime rather than from the writer
/// thread. Each hand-over wakes the node's tailer, which wakes the subscribers; from a thread
/// outside the runtime each wake-up is a locked push onto the runtime's shared queue, from a
/// task on it a push onto the worker's own queue, and the writer pays one cross-thread wake per
/// group instead of one per reader. The publishers' answers also leave the writer thread, which
/// is then free for the next group sooner. One task, one queue: the order the writer decided is
/// the order delivered. Outside a runtime (or once it is gone) the writer delivers by itself.
pub(crate) struct Outbox {
    tail: Arc<TailHub>,
    queue: Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
}

impl Outbox {
    pub fn new(tail: Arc<TailHub>) -> Outbox {
        let queue = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (queue, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
            let tail = tail.clone();
            runtime.spawn(async move {
                let mut ready = Vec::new();
                while outgoing.recv_many(&mut ready, 64).await > 0 {
                    for out in ready.drain(..) {
                        out.deliver(&tail);
                    }
                }
                // The writer is gone, and all it committed is handed over: end every tail.
                tail.close();
            });
            queue
        });
        Outbox { tail, queue }
    }

    fn send(&self, out: Outgoing) {
        let out = match &self.queue {
            Some(queue) => match queue.send(out) {
                Ok(()) => return,
                // The runtime is gone: nobody is left to wake, but answer in order anyway.
                Err(tokio::sync::mpsc::error::SendError(out)) => out,
            },
            None => out,
        };
        out.deliver(&self.tail);
    }
}

/// The writer is gone: every tail ends once all it committed is handed over (by the task, when
/// there is one, after the rest of its queue).
impl Drop for Outbox {
    fn drop(&mut self) {
        if self.queue.is_none() {
            self.tail.close();
        }
    }
}

/// Most scheduler rounds the first publisher of a gathering waits for more requests.
const GATHER_ROUNDS: usize = 16;
/// Requests after which a gathering is handed over at once.
const GATHER_REQUESTS: usize = 256;

/// The way into the writer thread. Publish requests are gathered before they are handed over:
/// the first request since the last hand-over yields to the runtime, which first runs every
/// other task that is ready and polls the sockets (tokio runs a yielded task only once its
/// worker is out of other work), so requests from other connections that arrived meanwhile
/// join it. While each such round adds requests it yields again, up to [`GATHER_ROUNDS`]
/// rounds or [`GATHER_REQUESTS`] requests; then all of them go to the writer as one command.
/// An idle server hands a lone request over after one round (microseconds).
///
/// Without this the writer thread, woken by each request, takes the core from the runtime on
/// a busy server and commits groups of a few requests, each with its own flush, fsync and
/// wake-ups: measured, 1.7 single POSTs per group in memory and 4.8 durable from 16 publishing
/// connections; gathered, 6.2 and 6.7 (BENCHMARKS.md).
///
/// Every other command first hands over what is gathered, under the same lock, so the order
/// of the calls is the order the writer sees.
pub(crate) struct Inbox {
    commands: Sender<Command>,
    gathered: Mutex<Vec<Request>>,
}

impl Inbox {
    pub fn new(commands: Sender<Command>) -> Inbox {
        Inbox {
            commands,
            gathered: Mutex::new(Vec::new()),
        }
    }

    fn gathered(&self) -> MutexGuard<'_, Vec<Request>> {
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a publish request and hands it over soon after; resolves once it is answered
    /// (`None`: the writer is gone).
    pub async fn publish(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> Option<Result<Appended, EngineError>> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut gathered = self.gathered();
            gathered.push(Request { events, key, reply });
            gathered.len() == 1
        };
        if first {
            // Hands over when dropped, so a caller that gives up while yielding does not
            // strand the requests gathered behind its own.
            let _hand_over = HandOver(self);
            let mut seen = 1;
            for _ in 0..GATHER_ROUNDS {
                tokio::task::yield_now().await;
                let now = self.gathered().len();
                if now == seen || now >= GATHER_REQUESTS {
                    break;
                }
                seen = now;
            }
        }
        answer.await.ok()
    }

    /// Sends everything gathered to the writer as one command.
    fn hand_over(&self, gathered: &mut Vec<Request>) {
        if !gathered.is_empty() {
            // If the writer is gone, the replies are dropped and every caller hears so.
            let _ = self
                .commands
                .send(Command::Publish(std::mem::take(gathered)));
        }
    }

    /// Sends a command after everything gathered before it.
    pub fn send(&self, command: Command) -> Result<(), SendError<Command>> {
        let mut gathered = self.gathered();
        self.hand_over(&mut gathered);
        self.commands.send(command)
    }
}

struct HandOver<'a>(&'a Inbox);

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut gathered = self.0.gathered();
        self.0.hand_over(&mut gathered);
    }
}
