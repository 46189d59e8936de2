//! The broker: durable streams with live fan-out. Knows nothing of HTTP.
//!
//! An event's way through it: [`Broker::publish`] queues it for the [`writer`] thread, which
//! appends it to the [`log`], makes it durable, raises the visible watermark and hands it to the
//! [`fanout`] channels; each [`Subscription`] reads those channels, or the log when it is behind.

pub mod event;
pub mod fanout;
pub mod log;
pub mod metrics;
pub mod presence;
pub mod subscription;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::oneshot;

use self::event::{Event, EventId, NewEvent, StreamName};
use self::fanout::{topic, Fanout};
use self::log::{Log, LogError, MemoryLog, Retention, SledLog, StreamSettings, StreamStats};
use self::presence::Presence;
pub use self::subscription::{Closed, Delivery, Gap, StartAt, Subscription};
pub use self::writer::Durability;
use self::writer::{Change, Command, Inbox, Writer};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("the event store failed: {0}")]
    Store(String),
    #[error("an earlier write could not be made durable; herald refuses writes until restarted")]
    StoreFailed,
    #[error("herald is shutting down")]
    ShuttingDown,
    #[error("stream {0} is closed and takes no more events")]
    Sealed(StreamName),
}

impl From<LogError> for BrokerError {
    fn from(e: LogError) -> Self {
        BrokerError::Store(e.to_string())
    }
}

/// Where the log lives.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A sled database in this directory; `cache_bytes` bounds its page cache.
    Disk { dir: PathBuf, cache_bytes: u64 },
    /// Nothing survives a restart.
    Memory,
}

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub storage: Storage,
    pub durability: Durability,
    pub retention: Retention,
    /// Slots in each live channel; a subscriber further behind is caught up from the log.
    pub channel_capacity: usize,
    /// How often retention is checked.
    pub trim_every: Duration,
    /// How long a presence client stays a member after its last connection went.
    pub presence_grace: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            storage: Storage::Memory,
            durability: Durability::Fsync,
            retention: Retention {
                max_len: Some(100_000),
                max_age_ms: None,
            },
            channel_capacity: 256,
            trim_every: Duration::from_secs(1),
            presence_grace: Duration::from_secs(5),
        }
    }
}

/// A stream as `GET /streams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub name: StreamName,
    pub length: u64,
    #[serde(serialize_with = "opt_id")]
    pub first_id: Option<EventId>,
    #[serde(serialize_with = "opt_id")]
    pub last_id: Option<EventId>,
    pub subscribers: usize,
    /// Events published to it since herald started (in memory; for rates).
    pub published: u64,
    /// Presence members (clients), see [`Presence`].
    pub online: usize,
    /// Closed for good: no more events, subscribers are let go.
    pub sealed: bool,
}

/// A stream's retention: its own overrides and what applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionInfo {
    pub stream: StreamName,
    /// The stream's own settings (`None`: the server's applies; `Some(0)`: unlimited).
    pub own: StreamSettings,
    /// What is applied to it now.
    pub effective: Retention,
}

fn opt_id<S: serde::Serializer>(id: &Option<EventId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.0.to_string()),
        None => s.serialize_none(),
    }
}

/// What the subscriptions and the broker handle share with the writer thread.
pub(crate) struct Shared {
    pub log: Arc<dyn Log>,
    pub fanout: Arc<Fanout>,
    pub visible: Arc<AtomicU64>,
    pub failed: Arc<AtomicBool>,
    /// How often each stream was deleted since start-up; subscriptions notice a delete they
    /// missed on their live channel by comparing.
    pub deletions: Arc<DashMap<StreamName, u64>>,
    /// Events published to each stream since start-up.
    pub published: Arc<DashMap<StreamName, u64>>,
    pub metrics: Arc<metrics::BrokerMetrics>,
}

impl Shared {
    pub fn deletions(&self, stream: &StreamName) -> u64 {
        self.deletions.get(stream).map_or(0, |e| *e)
    }
}

/// A handle to the broker; cheap to clone, all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    presence: Arc<Presence>,
    retention: Retention,
}

impl Broker {
    /// Opens the log and starts the writer thread. Start-up reads only the per-stream counters,
    /// never the events, so it is fast whatever the log's size.
    pub fn open(options: BrokerOptions) -> Result<Broker, BrokerError> {
        let log: Arc<dyn Log> = match &options.storage {
            Storage::Memory => Arc::new(MemoryLog::new()),
            Storage::Disk { dir, cache_bytes } => {
                let flush_every = match options.durability {
                    Durability::Fsync => None,
                    Durability::Interval(every) => Some(every.as_millis().max(1) as u64),
                };
                Arc::new(SledLog::open(dir, *cache_bytes, flush_every)?)
            }
        };
        let shared = Arc::new(Shared {
            visible: Arc::new(AtomicU64::new(log.last_id().0)),
            fanout: Arc::new(Fanout::new(options.channel_capacity)),
            failed: Arc::new(AtomicBool::new(false)),
            deletions: Arc::new(DashMap::new()),
            published: Arc::new(DashMap::new()),
            metrics: Arc::new(metrics::BrokerMetrics::default()),
            log,
        });
        let (commands, receiver) = mpsc::channel();
        let writer = Writer {
            log: shared.log.clone(),
            outbox: writer::Outbox::new(shared.fanout.clone()),
            visible: shared.visible.clone(),
            failed: shared.failed.clone(),
            durability: options.durability,
            retention: options.retention,
            trim_every: options.trim_every,
            commands: receiver,
            deletions: shared.deletions.clone(),
            published: shared.published.clone(),
            metrics: shared.metrics.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| BrokerError::Store(format!("cannot start the writer thread: {e}")))?;
        Ok(Broker {
            shared,
            inbox: Arc::new(Inbox::new(commands)),
            writer: Arc::new(Mutex::new(Some(handle))),
            presence: Arc::new(Presence::new(options.presence_grace)),
            retention: options.retention,
        })
    }

    /// Publishes one event; resolves once it is durable and visible to every live subscriber.
    pub async fn publish(&self, event: NewEvent) -> Result<Arc<Event>, BrokerError> {
        let mut events = self.publish_batch(vec![event]).await?;
        events.pop().ok_or(BrokerError::ShuttingDown)
    }

    /// Publishes events in order, all or nothing, with consecutive positions in the sequence.
    pub async fn publish_batch(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, BrokerError> {
        self.inbox
            .publish(events)
            .await
            .ok_or(BrokerError::ShuttingDown)?
    }

    /// Seals a stream: later publishes are refused with [`BrokerError::Sealed`], and every
    /// subscriber gets [`Delivery::Closed`] after the stream's last event. Durable; idempotent.
    pub async fn seal(&self, stream: &StreamName) -> Result<(), BrokerError> {
        self.change(stream, Change::Seal).await.map(drop)
    }

    /// Deletes a stream's events and settings; its subscribers get [`Delivery::Closed`]. The
    /// name can be published to again.
    pub async fn delete(&self, stream: &StreamName) -> Result<(), BrokerError> {
        self.change(stream, Change::Delete).await.map(drop)
    }

    /// Sets a stream's own retention (`None`: the server's; `Some(0)`: unlimited), kept across
    /// restarts. Trimming follows within the trim interval.
    pub async fn set_retention(
        &self,
        stream: &StreamName,
        max_len: Option<u64>,
        max_age_ms: Option<u64>,
    ) -> Result<RetentionInfo, BrokerError> {
        let change = Change::Retention {
            max_len,
            max_age_ms,
        };
        let own = self.change(stream, change).await?;
        Ok(self.retention_of(stream.clone(), own))
    }

    /// A stream's retention settings and what they come to.
    pub fn retention(&self, stream: &StreamName) -> RetentionInfo {
        self.retention_of(stream.clone(), self.shared.log.settings(stream))
    }

    fn retention_of(&self, stream: StreamName, own: StreamSettings) -> RetentionInfo {
        RetentionInfo {
            stream,
            effective: self.retention.with(&own),
            own,
        }
    }

    /// Whether a stream is sealed.
    pub fn is_sealed(&self, stream: &StreamName) -> bool {
        self.shared.log.settings(stream).sealed
    }

    async fn change(
        &self,
        stream: &StreamName,
        change: Change,
    ) -> Result<StreamSettings, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Command::Change {
                stream: stream.clone(),
                change,
                reply,
            })
            .map_err(|_| BrokerError::ShuttingDown)?;
        answer.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Who is online in each stream.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// Subscribes to one or more streams from `start`. Streams need not exist yet.
    pub fn subscribe(&self, streams: Vec<StreamName>, start: StartAt) -> Subscription {
        Subscription::new(self.shared.clone(), topic(streams), start)
    }

    /// The id of the newest event visible to readers.
    pub fn last_visible_id(&self) -> EventId {
        EventId(self.shared.visible.load(Ordering::Acquire))
    }

    /// Up to `limit` events of `stream` after `after`, ascending.
    pub async fn read_after(
        &self,
        stream: &StreamName,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, BrokerError> {
        let upto = self.last_visible_id();
        self.blocking_read(stream, move |log, s| log.read(s, after, upto, limit))
            .await
    }

    /// The newest `n` events of `stream`, ascending.
    pub async fn read_last(
        &self,
        stream: &StreamName,
        n: usize,
    ) -> Result<Vec<Event>, BrokerError> {
        let upto = self.last_visible_id();
        self.blocking_read(stream, move |log, s| log.read_last(s, upto, n))
            .await
    }

    /// One event of `stream` by id.
    pub async fn get(
        &self,
        stream: &StreamName,
        id: EventId,
    ) -> Result<Option<Event>, BrokerError> {
        if id > self.last_visible_id() {
            return Ok(None);
        }
        self.blocking_read(stream, move |log, s| log.get(s, id))
            .await
    }

    async fn blocking_read<T, F>(&self, stream: &StreamName, read: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Log, &StreamName) -> Result<T, LogError> + Send + 'static,
    {
        let log = self.shared.log.clone();
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || read(log.as_ref(), &stream))
            .await
            .map_err(|e| BrokerError::Store(e.to_string()))?
            .map_err(BrokerError::from)
    }

    /// One stream's counters; a stream never published to has length 0.
    pub fn stream_info(&self, stream: &StreamName) -> StreamInfo {
        let stats = self.shared.log.stats(stream).unwrap_or_default();
        self.info(stream.clone(), stats)
    }

    /// Every stream that holds or held events, has settings or has live subscribers, by name.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let mut all: std::collections::BTreeMap<StreamName, StreamStats> =
            self.shared.log.all_stats().into_iter().collect();
        let others = self
            .shared
            .log
            .all_settings()
            .into_iter()
            .map(|(name, _)| name)
            .chain(self.shared.fanout.streams());
        for stream in others {
            all.entry(stream).or_default();
        }
        all.into_iter()
            .map(|(name, stats)| self.info(name, stats))
            .collect()
    }

    fn info(&self, name: StreamName, stats: StreamStats) -> StreamInfo {
        StreamInfo {
            subscribers: self.shared.fanout.subscribers(&name),
            published: self.shared.published.get(&name).map_or(0, |n| *n),
            online: self.presence.online(&name),
            sealed: self.shared.log.settings(&name).sealed,
            length: stats.length,
            first_id: (stats.length > 0).then_some(stats.first_id),
            last_id: (stats.last_id > EventId::ZERO).then_some(stats.last_id),
            name,
        }
    }

    /// Events published since start-up, all streams.
    pub fn published(&self) -> u64 {
        self.shared.metrics.published.get()
    }

    /// The broker's counters and fsync histogram, for `/metrics`.
    pub fn metrics(&self) -> &metrics::BrokerMetrics {
        &self.shared.metrics
    }

    /// False once a write could not be made durable.
    pub fn is_writable(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
    }

    /// Bytes the log occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.log.size_on_disk()
    }

    /// Commits what is queued, flushes, records a clean stop and ends the writer thread. Later
    /// publishes fail with `ShuttingDown`.
    ///
    /// A disk log stays open (and its directory locked) until every handle that shares it is
    /// dropped: the `Broker` and its clones, its subscriptions, and an [`crate::http::Api`] made
    /// from it. Once they are, the directory can be opened again at once, in this process or
    /// another; before, [`Broker::open`] on it fails with an "is in use" error.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inbox.send(Command::Close { reply }).is_ok() {
            let _ = done.await;
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
