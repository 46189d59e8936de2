//! The broker: durable streams with live fan-out. Knows nothing of HTTP.
//!
//! An event's way through it: [`Broker::publish`] hands it to the [`engine`], which commits it
//! (ids, seal checks and durability are the engine's) and tells it on its tail; the node's one
//! [`tailer`] raises the visible watermark and hands it to the [`fanout`] channels; each
//! [`Subscription`] reads those channels, or the engine's log when it is behind.

pub mod activity;
pub mod engine;
pub mod event;
pub mod fanout;
pub mod metrics;
pub mod presence;
pub mod subscription;
mod tailer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

pub use self::engine::local::{Durability, Storage};
use self::engine::local::{LocalEngine, LocalOptions};
use self::engine::{
    Appended, Change, Engine, IdempotencyKey, ListQuery, Position, StreamSettings, StreamState,
};
pub use self::engine::{EngineError as BrokerError, Retention};
use self::event::{Event, EventId, NewEvent, StreamName};
use self::fanout::{topic, Fanout};
use self::presence::{LocalPresence, Presence};
pub use self::subscription::{Closed, Delivery, Gap, StartAt, Subscription};

/// How to open a broker on a local engine: where its log lives and how this node serves it.
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
    /// How long an idempotency key's answer is kept.
    pub idempotency_window: Duration,
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
            idempotency_window: engine::local::IDEMPOTENCY_WINDOW,
        }
    }
}

impl BrokerOptions {
    /// The engine's part of these options.
    pub fn local(&self) -> LocalOptions {
        LocalOptions {
            storage: self.storage.clone(),
            durability: self.durability,
            retention: self.retention,
            trim_every: self.trim_every,
            idempotency_window: self.idempotency_window,
        }
    }

    /// This node's part of these options.
    pub fn node(&self) -> NodeOptions {
        NodeOptions {
            channel_capacity: self.channel_capacity,
            presence_grace: self.presence_grace,
        }
    }
}

/// How a node serves an engine, whichever engine it is.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Slots in each live channel; a subscriber further behind is caught up from the log.
    pub channel_capacity: usize,
    /// How long a presence client stays a member after its last connection went.
    pub presence_grace: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        BrokerOptions::default().node()
    }
}

/// What one node knows of a stream: its counters from the engine, and its subscribers, rate and
/// members here.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub name: StreamName,
    pub length: u64,
    pub first_id: Option<EventId>,
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

/// What the subscriptions, the tailer and the broker handles share.
pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    pub fanout: Arc<Fanout>,
    /// Every event at or below this id is committed and readable from the engine; every later
    /// one will reach the live channels. Raised only by the tailer.
    pub visible: AtomicU64,
    /// Notified whenever the tailer has raised `visible`.
    pub visible_changed: Notify,
    /// How often each stream was deleted since start-up; subscriptions notice a delete they
    /// missed on their live channel by comparing.
    pub deletions: DashMap<StreamName, u64>,
    /// Events published to each stream since start-up, and per second lately.
    pub published: DashMap<StreamName, activity::Activity>,
    /// The streams with events in the last minute.
    pub recent: activity::Recent,
    pub metrics: metrics::BrokerMetrics,
}

impl Shared {
    pub fn deletions(&self, stream: &StreamName) -> u64 {
        self.deletions.get(stream).map_or(0, |e| *e)
    }

    pub fn visible(&self) -> EventId {
        EventId(self.visible.load(Ordering::Acquire))
    }

    /// Resolves once the tailer has made `id` visible on this node.
    async fn visible_through(&self, id: EventId) {
        loop {
            let notified = self.visible_changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.visible() >= id {
                return;
            }
            notified.await;
        }
    }
}

/// A handle to the broker; cheap to clone, all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    presence: Arc<dyn Presence>,
}

impl Broker {
    /// Opens a local engine (sled or memory, per `options.storage`) and serves it.
    pub fn open(options: BrokerOptions) -> Result<Broker, BrokerError> {
        let engine = LocalEngine::open(options.local())?;
        let head = engine.head_now();
        Broker::start(Arc::new(engine), head, options.node())
    }

    /// Serves any engine: a Rust app may pass its own. Follows the engine's tail from its head.
    pub async fn on_engine(
        engine: Arc<dyn Engine>,
        node: NodeOptions,
    ) -> Result<Broker, BrokerError> {
        let head = engine.head().await?;
        Broker::start(engine, head, node)
    }

    fn start(
        engine: Arc<dyn Engine>,
        head: Position,
        node: NodeOptions,
    ) -> Result<Broker, BrokerError> {
        let mut metrics = metrics::BrokerMetrics::default();
        if let Some(histogram) = engine.sync_seconds() {
            metrics.fsync_seconds = histogram;
        }
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            fanout: Arc::new(Fanout::new(node.channel_capacity)),
            visible: AtomicU64::new(head.id.0),
            visible_changed: Notify::new(),
            deletions: DashMap::new(),
            published: DashMap::new(),
            recent: activity::Recent::default(),
            metrics,
        });
        let tailer = tailer::run(Arc::downgrade(&shared), head);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(tailer)),
            // No runtime to run on (a plain `main`, a benchmark): a thread of its own.
            Err(_) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(BrokerError::store)?;
                std::thread::Builder::new()
                    .name("herald-tailer".into())
                    .spawn(move || runtime.block_on(tailer))
                    .map_err(BrokerError::store)?;
            }
        }
        Ok(Broker {
            shared,
            presence: Arc::new(LocalPresence::new(node.presence_grace)),
        })
    }

    /// This broker with presence kept by `presence` rather than in this process (the
    /// default), say to share members with other nodes.
    pub fn with_presence(mut self, presence: Arc<dyn Presence>) -> Broker {
        self.presence = presence;
        self
    }

    /// Publishes one event; resolves once it is committed and visible to every live subscriber
    /// of this node.
    pub async fn publish(&self, event: NewEvent) -> Result<Arc<Event>, BrokerError> {
        let mut events = self.publish_batch(vec![event]).await?;
        events.pop().ok_or(BrokerError::ShuttingDown)
    }

    /// Publishes events in order, all or nothing, with consecutive positions in the sequence.
    pub async fn publish_batch(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, BrokerError> {
        match self.publish_once(events, None).await? {
            Appended::Stored(events) => Ok(events),
            // Only a request with a key can be a repeat.
            Appended::Repeated(_) => Err(BrokerError::store(std::io::Error::other(
                "the engine answered a request without an idempotency key as a repeat",
            ))),
        }
    }

    /// Publishes events in order, all or nothing, once per `key`: a repeat of a key within the
    /// engine's idempotency window stores nothing and answers where the first request's events
    /// went. Resolves once they are visible here.
    pub async fn publish_once(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> Result<Appended, BrokerError> {
        let appended = self.shared.engine.append(events, key).await?;
        if let Some(last) = appended.last_id() {
            self.shared.visible_through(last).await;
        }
        Ok(appended)
    }

    /// Seals a stream: later publishes are refused with [`BrokerError::Sealed`], and every
    /// subscriber gets [`Delivery::Closed`] after the stream's last event. Durable; idempotent.
    pub async fn seal(&self, stream: &StreamName) -> Result<(), BrokerError> {
        self.shared
            .engine
            .change(stream, Change::Seal)
            .await
            .map(drop)
    }

    /// Deletes a stream's events and settings; its subscribers get [`Delivery::Closed`]. The
    /// name can be published to again.
    pub async fn delete(&self, stream: &StreamName) -> Result<(), BrokerError> {
        self.shared
            .engine
            .change(stream, Change::Delete)
            .await
            .map(drop)
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
        let own = self.shared.engine.change(stream, change).await?;
        Ok(self.retention_of(stream.clone(), own))
    }

    /// A stream's retention settings and what they come to.
    pub async fn retention(&self, stream: &StreamName) -> Result<RetentionInfo, BrokerError> {
        let state = self.shared.engine.stream(stream).await?;
        Ok(self.retention_of(stream.clone(), state.settings))
    }

    fn retention_of(&self, stream: StreamName, own: StreamSettings) -> RetentionInfo {
        RetentionInfo {
            stream,
            effective: self.shared.engine.retention().with(&own),
            own,
        }
    }

    /// Whether a stream is sealed.
    pub async fn is_sealed(&self, stream: &StreamName) -> Result<bool, BrokerError> {
        Ok(self.shared.engine.stream(stream).await?.settings.sealed)
    }

    /// Who is online in each stream.
    pub fn presence(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    /// Subscribes to one or more streams from `start`. Streams need not exist yet.
    pub fn subscribe(&self, streams: Vec<StreamName>, start: StartAt) -> Subscription {
        Subscription::new(self.shared.clone(), topic(streams), start)
    }

    /// The id of the newest event visible to readers.
    pub fn last_visible_id(&self) -> EventId {
        self.shared.visible()
    }

    /// Up to `limit` events of `stream` after `after`, ascending.
    pub async fn read_after(
        &self,
        stream: &StreamName,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, BrokerError> {
        let upto = self.last_visible_id();
        self.shared.engine.read(stream, after, upto, limit).await
    }

    /// The newest `n` events of `stream`, ascending.
    pub async fn read_last(
        &self,
        stream: &StreamName,
        n: usize,
    ) -> Result<Vec<Event>, BrokerError> {
        let upto = self.last_visible_id();
        self.shared.engine.read_last(stream, upto, n).await
    }

    /// One event of `stream` by id.
    pub async fn get(
        &self,
        stream: &StreamName,
        id: EventId,
    ) -> Result<Option<Event>, BrokerError> {
        // Asked of the engine even above this node's watermark: an id another node just
        // acknowledged is committed, and its publisher may read it here a moment before this
        // node's tailer has passed it.
        self.shared.engine.get(stream, id).await
    }

    /// One stream's counters; a stream never published to has length 0.
    pub async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, BrokerError> {
        let state = self.shared.engine.stream(stream).await?;
        self.info(stream.clone(), state).await
    }

    /// One page of the streams that hold or held events, have settings or have live
    /// subscribers here, by name.
    pub async fn streams(&self, query: ListQuery) -> Result<Vec<StreamInfo>, BrokerError> {
        let stored = self.shared.engine.list(query.clone()).await?;
        // Streams with subscribers but nothing stored belong on the page too, up to where it
        // ends (a full page ends at its last name; a short one reaches the end of the list).
        let full = stored.len() == query.limit;
        let end = stored.last().map(|(name, _)| name.clone());
        let mut page: std::collections::BTreeMap<StreamName, StreamState> =
            stored.into_iter().collect();
        for name in self.shared.fanout.streams() {
            let within = !full || end.as_ref().is_some_and(|end| &name <= end);
            if query.admits(&name) && within && !page.contains_key(&name) {
                let state = self.shared.engine.stream(&name).await?;
                page.insert(name, state);
            }
        }
        let page: Vec<(StreamName, StreamState)> = page.into_iter().take(query.limit).collect();
        let names: Vec<StreamName> = page.iter().map(|(name, _)| name.clone()).collect();
        let online = self.presence.online_many(&names).await?;
        Ok(page
            .into_iter()
            .zip(online)
            .map(|((name, state), online)| self.info_with(name, state, online))
            .collect())
    }

    /// The `limit` busiest streams, by name, and whether there are more streams than shown: those
    /// with the most subscribers on this node, then the most events in the last minute; when
    /// fewer are busy, the first streams by name fill the page. Costs by the busy streams and
    /// the page, however many streams exist (the dashboard asks every second).
    pub async fn busiest(&self, limit: usize) -> Result<(Vec<StreamInfo>, bool), BrokerError> {
        let now = event::now_millis() / 1000;
        let mut busy = self.shared.recent.streams(now);
        busy.extend(self.shared.fanout.streams());
        let mut ranked: Vec<(usize, u32, StreamName)> = busy
            .into_iter()
            .map(|name| {
                let subscribers = self.shared.fanout.subscribers(&name);
                let lately = self
                    .shared
                    .published
                    .get(&name)
                    .map_or(0, |a| a.last_minute(now));
                (subscribers, lately, name)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut more = ranked.len() > limit;
        let mut shown = std::collections::BTreeMap::new();
        for (subscribers, _, name) in ranked.into_iter().take(limit) {
            let state = self.shared.engine.stream(&name).await?;
            if state.stats.is_some() || !state.settings.is_default() || subscribers > 0 {
                shown.insert(name.clone(), self.info(name, state).await?);
            }
        }
        if shown.len() < limit {
            let page = self
                .streams(ListQuery {
                    prefix: String::new(),
                    after: None,
                    limit: limit + 1,
                })
                .await?;
            for info in page {
                if shown.contains_key(&info.name) {
                    continue;
                }
                if shown.len() == limit {
                    more = true;
                    break;
                }
                shown.insert(info.name.clone(), info);
            }
        }
        Ok((shown.into_values().collect(), more))
    }

    /// Every stream [`Broker::streams`] would list, in one page (for `/metrics`; `GET /streams`
    /// pages, the dashboard shows [`Broker::busiest`]).
    pub async fn all_streams(&self) -> Result<Vec<StreamInfo>, BrokerError> {
        self.streams(ListQuery {
            prefix: String::new(),
            after: None,
            limit: usize::MAX,
        })
        .await
    }

    async fn info(&self, name: StreamName, state: StreamState) -> Result<StreamInfo, BrokerError> {
        let online = self.presence.online(&name).await?;
        Ok(self.info_with(name, state, online))
    }

    fn info_with(&self, name: StreamName, state: StreamState, online: usize) -> StreamInfo {
        let stats = state.stats.unwrap_or_default();
        StreamInfo {
            subscribers: self.shared.fanout.subscribers(&name),
            published: self.shared.published.get(&name).map_or(0, |a| a.published),
            online,
            sealed: state.settings.sealed,
            length: stats.length,
            first_id: (stats.length > 0).then_some(stats.first_id),
            last_id: (stats.last_id > EventId::ZERO).then_some(stats.last_id),
            name,
        }
    }

    /// Events made visible on this node per second over the last minute (oldest first, the
    /// current second left out), for each of `streams`: the dashboard's sparklines.
    pub fn recent_rates(&self, streams: &[StreamName]) -> Vec<Vec<u32>> {
        let now = event::now_millis() / 1000;
        streams
            .iter()
            .map(|s| {
                self.shared
                    .published
                    .get(s)
                    .map_or_else(|| vec![0; activity::SECONDS - 1], |a| a.per_second(now))
            })
            .collect()
    }

    /// Events made visible on this node since start-up, all streams.
    pub fn published(&self) -> u64 {
        self.shared.metrics.published.get()
    }

    /// The broker's counters and fsync histogram, for `/metrics`.
    pub fn metrics(&self) -> &metrics::BrokerMetrics {
        &self.shared.metrics
    }

    /// False once a write could not be made durable.
    pub fn is_writable(&self) -> bool {
        self.shared.engine.is_writable()
    }

    /// Bytes the log occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.engine.size_on_disk()
    }

    /// Commits what is queued, flushes, records a clean stop and stops the engine. Later
    /// publishes fail with `ShuttingDown`.
    ///
    /// A disk log stays open (and its directory locked) until every handle that shares it is
    /// dropped: the `Broker` and its clones, its subscriptions, and an [`crate::http::Api`] made
    /// from it. Once they are, the directory can be opened again at once, in this process or
    /// another; before, [`Broker::open`] on it fails with an "is in use" error.
    pub async fn close(&self) {
        self.shared.engine.close().await;
    }
}
