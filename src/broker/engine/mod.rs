//! The engine: where events are committed. The one boundary between herald's core and whatever
//! keeps the log — sled or memory in this process ([`local`]), a shared server for several nodes.
//!
//! The core never assumes the engine is local or synchronous: it asks through async calls, and it
//! reacts only to what the engine *committed*, which every engine tells through its [`tail`]:
//! the ordered records of events, seals, deletes, setting changes and trims. Each node runs one
//! tailer over it (`broker::tailer`) that raises the visible watermark and feeds the live
//! channels, so a node behaves the same whether it published an event itself or another did.
//! Ids, seal checks, idempotency and retention are the engine's: they must be decided where the
//! commit happens, or two nodes could decide them differently.
//!
//! Every engine is held to the same [`contract`] suite.
//!
//! [`tail`]: Engine::tail

pub mod contract;
pub mod local;
pub mod redis;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prometheus_client::metrics::histogram::Histogram;

use super::event::{Event, EventId, InvalidName, NewEvent, StreamName};

/// An answer that an engine may take its time to give.
pub type EngineFuture<'a, T> = BoxFuture<'a, Result<T, EngineError>>;

/// The committed records after a position, in commit order, a commit group at a time.
pub type Tail = BoxStream<'static, Result<Vec<Committed>, EngineError>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The store failed; the source says how.
    #[error("the event store failed: {0}")]
    Store(#[source] Arc<dyn StdError + Send + Sync>),
    #[error("an earlier write could not be made durable; herald refuses writes until restarted")]
    StoreFailed,
    #[error("herald is shutting down")]
    ShuttingDown,
    #[error("stream {0} is closed and takes no more events")]
    Sealed(StreamName),
    /// The store cannot be reached now (a shared store over the network); a retry may succeed.
    #[error("{0}")]
    Unavailable(Arc<str>),
}

impl EngineError {
    pub fn store(e: impl StdError + Send + Sync + 'static) -> EngineError {
        EngineError::Store(Arc::new(e))
    }

    pub fn unavailable(message: impl Into<String>) -> EngineError {
        EngineError::Unavailable(Arc::from(message.into()))
    }
}

/// A place in the tail. Every event's position is its id (`seq` 0); the records that are not
/// events (seals, deletes, settings, trims) take the id of the last event before them and count
/// up `seq` from 1. So positions rise strictly in commit order, and the watermark of a node is
/// simply the `id` of the last position it has processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub id: EventId,
    pub seq: u64,
}

impl Position {
    pub fn of_event(id: EventId) -> Position {
        Position { id, seq: 0 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.id, self.seq)
    }
}

/// A publisher's name for one publish request, so a retry of it (after a timeout, a 503, a
/// dropped connection) stores nothing twice: 1–200 printable characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 200;

    pub fn new(key: &str) -> Result<IdempotencyKey, InvalidName> {
        let chars = key.chars().count();
        if chars == 0 || chars > Self::MAX_LEN {
            return Err(InvalidName(format!(
                "an idempotency key must be 1 to {} characters long, got {chars}",
                Self::MAX_LEN
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(InvalidName(
                "an idempotency key must not contain control characters".into(),
            ));
        }
        Ok(IdempotencyKey(Arc::from(key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Where one event of an answer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: EventId,
    pub stream: StreamName,
}

/// The answer to an append.
#[derive(Debug, Clone)]
pub enum Appended {
    /// The events, committed now.
    Stored(Vec<Arc<Event>>),
    /// A repeat of an idempotency key within its window: nothing was stored; this is where the
    /// first request's events went.
    Repeated(Vec<Receipt>),
}

impl Appended {
    /// Where each event of the answer went, in order.
    pub fn receipts(&self) -> Vec<Receipt> {
        match self {
            Appended::Stored(events) => events
                .iter()
                .map(|e| Receipt {
                    id: e.id,
                    stream: e.stream.clone(),
                })
                .collect(),
            Appended::Repeated(receipts) => receipts.clone(),
        }
    }

    pub fn last_id(&self) -> Option<EventId> {
        match self {
            Appended::Stored(events) => events.last().map(|e| e.id),
            Appended::Repeated(receipts) => receipts.last().map(|r| r.id),
        }
    }
}

/// One committed record of the tail.
#[derive(Debug, Clone)]
pub struct Committed {
    pub position: Position,
    pub record: Record,
}

#[derive(Debug, Clone)]
pub enum Record {
    /// An event was appended (its position is its id).
    Event(Arc<Event>),
    /// The stream was sealed: nothing more will be appended to it.
    Sealed(StreamName),
    /// The stream's events and settings were deleted; the name may be used again.
    Deleted(StreamName),
    /// The stream's own settings are now these.
    Settings(StreamName, StreamSettings),
    /// Retention removed the stream's events up to `through`.
    Trimmed {
        stream: StreamName,
        through: EventId,
    },
    /// The records between the position asked for and this one are no longer held: a reader
    /// must take what it needs from the engine's reads instead (events are still in the log).
    Skipped,
}

/// What can be done to a stream besides publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Close for good: refuse later publishes, tell subscribers, let them go.
    Seal,
    /// Replace the stream's own retention (`None`: follow the server's; `Some(0)`: unlimited).
    Retention {
        max_len: Option<u64>,
        max_age_ms: Option<u64>,
    },
    /// Remove its events and settings; tell subscribers.
    Delete,
}

/// Counters of one stream, kept up to date by every append and trim (never computed by a scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Events retained now.
    pub length: u64,
    /// Oldest retained event, `EventId(0)` when the stream is empty.
    pub first_id: EventId,
    /// Newest event ever appended, `EventId(0)` when never published to.
    pub last_id: EventId,
    /// Publish time of the oldest retained event (Unix ms), for age-based trimming.
    pub first_time: u64,
    /// The highest id removed by retention: a reader positioned below it has missed events.
    pub trimmed_through: EventId,
}

impl StreamStats {
    /// Counts an event appended to the stream (ids ascending).
    pub(crate) fn count(&mut self, id: EventId, time: u64) {
        if self.length == 0 {
            self.first_id = id;
            self.first_time = time;
        }
        self.length += 1;
        self.last_id = id;
    }
}

/// What a stream keeps about itself besides its events; survives restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// Closed for good: publishing is refused, subscribers are told and let go.
    pub sealed: bool,
    /// The stream's own length limit: `None` follows the server's, `Some(0)` means unlimited.
    pub max_len: Option<u64>,
    /// The stream's own age limit in milliseconds: `None` follows the server's, `Some(0)` means
    /// unlimited.
    pub max_age_ms: Option<u64>,
}

impl StreamSettings {
    pub fn is_default(&self) -> bool {
        *self == StreamSettings::default()
    }
}

/// A stream as the engine knows it: its counters (`None` if never published to, or deleted)
/// and its settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    pub stats: Option<StreamStats>,
    pub settings: StreamSettings,
}

/// How much of a stream to keep. `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_len: Option<u64>,
    /// Events older than this many milliseconds are removed.
    pub max_age_ms: Option<u64>,
}

impl Retention {
    /// Whether a stream with these counters has anything to trim at time `now`.
    pub fn wants_trim(&self, stats: &StreamStats, now: u64) -> bool {
        let too_long = self.max_len.is_some_and(|max| stats.length > max);
        let too_old = self
            .max_age_ms
            .is_some_and(|age| stats.length > 0 && stats.first_time + age < now);
        too_long || too_old
    }

    /// This retention with a stream's own overrides applied.
    pub fn with(&self, settings: &StreamSettings) -> Retention {
        let pick = |own: Option<u64>, default: Option<u64>| match own {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Retention {
            max_len: pick(settings.max_len, self.max_len),
            max_age_ms: pick(settings.max_age_ms, self.max_age_ms),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_len.is_none() && self.max_age_ms.is_none()
    }
}

/// One page of the stream listing: names in order, after `after`, starting with `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    /// Only names greater than this one.
    pub after: Option<StreamName>,
    pub limit: usize,
}

impl ListQuery {
    /// Whether `name` belongs on this page, limit aside.
    pub fn admits(&self, name: &StreamName) -> bool {
        name.as_str().starts_with(&self.prefix) && self.after.as_ref().is_none_or(|a| name > a)
    }
}

/// The engine boundary. Each call is one round trip to wherever the log lives; none blocks a
/// runtime thread.
pub trait Engine: Send + Sync + 'static {
    /// Appends one request's events, in order and all or nothing, with consecutive ids above
    /// every id ever handed out. Refused whole with [`EngineError::Sealed`] if any of its
    /// streams is sealed. Resolves once the events are committed (durable as the engine
    /// promises) and on the tail (a head read after the answer is at or past them).
    ///
    /// With a `key`: a request with the same key committed within the engine's idempotency
    /// window makes this one a repeat — nothing is stored, and the answer is
    /// [`Appended::Repeated`] with where the first one's events went. The key is committed with
    /// the events, so a repeat is recognised after a crash or a restart too.
    fn append(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> EngineFuture<'_, Appended>;

    /// Seals, deletes or sets the retention of a stream, committed at this point of the tail's
    /// order; answers the stream's settings after the change.
    fn change(&self, stream: &StreamName, change: Change) -> EngineFuture<'_, StreamSettings>;

    /// Events of `stream` with `after < id <= upto`, ascending, at most `limit`.
    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> EngineFuture<'_, Vec<Event>>;

    /// The newest `n` events of `stream` with `id <= upto`, ascending.
    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> EngineFuture<'_, Vec<Event>>;

    /// One event, if `stream` still holds it.
    fn get(&self, stream: &StreamName, id: EventId) -> EngineFuture<'_, Option<Event>>;

    /// One stream's counters and settings.
    fn stream(&self, stream: &StreamName) -> EngineFuture<'_, StreamState>;

    /// Streams that hold or held events or have settings, by name, one page at a time.
    fn list(&self, query: ListQuery) -> EngineFuture<'_, Vec<(StreamName, StreamState)>>;

    /// The position of the newest committed record.
    fn head(&self) -> EngineFuture<'_, Position>;

    /// Every record committed after `from`, in order, and then each as it is committed. When
    /// records after `from` are no longer held, the first item holds one [`Record::Skipped`] at
    /// the position up to which they are gone. Ends when the engine closes.
    fn tail(&self, from: Position) -> Tail;

    /// The retention the engine applies to streams without their own.
    fn retention(&self) -> Retention;

    /// False once the engine can take no more writes (an fsync failed, say).
    fn is_writable(&self) -> bool;

    /// Bytes the store occupies on disk (0 when it is not on this machine's disk).
    fn size_on_disk(&self) -> u64;

    /// The time each sync of the store took, where the engine syncs itself.
    fn sync_seconds(&self) -> Option<Histogram> {
        None
    }

    /// Commits what is queued, makes it durable, and stops; later calls fail with
    /// [`EngineError::ShuttingDown`] and every tail ends.
    fn close(&self) -> BoxFuture<'_, ()>;
}
