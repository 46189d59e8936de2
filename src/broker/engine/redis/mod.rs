//! The engine for several nodes: the log lives in one Redis (7.0 or newer), and every herald
//! node that names the same Redis and prefix serves the same streams.
//!
//! What lives where (all keys share the hash tag `{prefix}`, so one script may touch any of
//! them — and a Redis Cluster, should one be used, keeps them on one node):
//! - `{p}:head` — the newest position handed out (hash: `id`, `seq`);
//! - `{p}:log` — the global log: every committed record in commit order (events, seals, deletes,
//!   settings, trims), each naming the position before it (`p`), capped at about
//!   [`RedisOptions::log_len`] entries. Nodes tail it with `XREAD BLOCK`;
//! - `{p}:s:<stream>` — one stream's events, entry id `<event id>-0`, for history and catch-up;
//! - `{p}:m:<stream>` — its counters and settings (hash: `last`, `trimmed`, `sealed`, `max_len`,
//!   `max_age`);
//! - `{p}:names` — every stream's name (a sorted set read by name, for the paged listing);
//! - `{p}:due` — streams by when retention is due for them; `{p}:lease:trim` — which node trims;
//! - `{p}:i:<key>` — an idempotency key's first answer, expiring after the window.
//!
//! Every commit is one Lua script (`append.lua`, `change.lua`, `trim.lua`), so the id, the seal
//! check, the idempotency check and both appends happen in one atomic step whichever node asks.
//! Ids are at least the Redis clock in microseconds and above the caller's fence (the highest
//! position its node has seen), so they are never handed out twice, not even by a replica that
//! became primary without the last writes.

mod hot;
mod link;
mod presence;
mod tail;
mod trimmer;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::{Script, Value};
use tokio::sync::watch;

use self::link::Link;
pub use self::link::{redacted, RedisTarget};
pub use self::presence::RedisPresence;
use super::{
    Appended, Change, Engine, EngineError, EngineFuture, IdempotencyKey, ListQuery, Position,
    Receipt, Record, Retention, StreamSettings, StreamState, StreamStats, Tail,
};
use crate::broker::event::{Event, EventId, EventType, NewEvent, StreamName};

/// How a node reaches the shared log and what it asks of it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: RedisTarget,
    /// Names this cluster's keys: nodes with the same Redis and prefix are one broker.
    pub prefix: String,
    /// Answer a publish only once this many replicas have it too (`WAIT`).
    pub replicas: usize,
    /// The server's retention; streams may override it. Every node of a cluster should agree.
    pub retention: Retention,
    /// How often the node that holds the trimming lease applies retention.
    pub trim_every: Duration,
    /// How long an idempotency key's answer is kept.
    pub idempotency_window: Duration,
    /// Records the global log keeps, about; a node that falls further behind catches up from
    /// the streams' own keys.
    pub log_len: u64,
    /// The longest any call to Redis may take before it fails with a `503`.
    pub timeout: Duration,
}

impl RedisOptions {
    pub fn new(target: RedisTarget) -> RedisOptions {
        RedisOptions {
            target,
            prefix: "herald".into(),
            replicas: 0,
            retention: Retention {
                max_len: Some(100_000),
                max_age_ms: None,
            },
            trim_every: Duration::from_secs(1),
            idempotency_window: super::local::IDEMPOTENCY_WINDOW,
            log_len: 10_000,
            timeout: Duration::from_secs(2),
        }
    }
}

const COMMON: &str = include_str!("common.lua");

struct Scripts {
    append: Script,
    change: Script,
    trim: Script,
    stats: Script,
    lease: Script,
    presence: Script,
    online: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_common = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            append: with_common(include_str!("append.lua")),
            change: with_common(include_str!("change.lua")),
            trim: with_common(include_str!("trim.lua")),
            stats: with_common(include_str!("stats.lua")),
            lease: Script::new(include_str!("lease.lua")),
            presence: Script::new(include_str!("presence.lua")),
            online: Script::new(include_str!("online.lua")),
        }
    }
}

/// The names of one cluster's keys.
struct Keys {
    base: String,
    head: String,
    log: String,
    names: String,
    due: String,
    lease: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let base = format!("{{{prefix}}}:");
        Keys {
            head: format!("{base}head"),
            log: format!("{base}log"),
            names: format!("{base}names"),
            due: format!("{base}due"),
            lease: format!("{base}lease:trim"),
            base,
        }
    }

    fn events(&self, stream: &StreamName) -> String {
        format!("{}s:{stream}", self.base)
    }

    fn meta(&self, stream: &StreamName) -> String {
        format!("{}m:{stream}", self.base)
    }

    fn answer(&self, key: Option<&IdempotencyKey>) -> String {
        format!("{}i:{}", self.base, key.map_or("", |k| k.as_str()))
    }
}

/// Checks a prefix: it names keys and sits inside a hash tag.
pub fn valid_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the Redis prefix {prefix:?} must be 1 to 64 characters from A-Z a-z 0-9 _ - . :"
        ))
    }
}

pub(crate) struct Inner {
    link: Link,
    keys: Keys,
    scripts: Scripts,
    options: RedisOptions,
    /// The highest position this node has seen committed: the fence of its next commit.
    seen: Mutex<Position>,
    closed: watch::Sender<bool>,
    /// This node's name in Redis (for the keys that say how far each node has read).
    node: String,
    /// The newest records read from the log, for catch-up reads without a round trip.
    hot: hot::Hot,
}

impl Inner {
    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn fence(&self) -> Position {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw(&self, position: Position) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if position > *seen {
            *seen = position;
        }
    }

    fn open(&self) -> Result<(), EngineError> {
        if self.is_closed() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    async fn append(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> Result<Appended, EngineError> {
        self.open()?;
        if events.is_empty() {
            return Ok(Appended::Stored(Vec::new()));
        }
        let mut streams: Vec<&StreamName> = Vec::new();
        let mut numbers = Vec::with_capacity(events.len());
        for event in &events {
            let number = match streams.iter().position(|s| **s == event.stream) {
                Some(i) => i + 1,
                None => {
                    streams.push(&event.stream);
                    streams.len()
                }
            };
            numbers.push(number);
        }
        let fence = self.fence();
        let window = match &key {
            Some(_) => self.options.idempotency_window.as_millis().max(1) as u64,
            None => 0,
        };
        let retention = self.options.retention;
        let mut call = self.scripts.append.prepare_invoke();
        call.key(&self.keys.head)
            .key(&self.keys.log)
            .key(&self.keys.names)
            .key(self.keys.answer(key.as_ref()))
            .key(&self.keys.due);
        for stream in &streams {
            call.key(self.keys.events(stream))
                .key(self.keys.meta(stream));
        }
        call.arg(fence.id.0)
            .arg(fence.seq)
            .arg(self.options.log_len)
            .arg(window)
            .arg(limit_arg(retention.max_len))
            .arg(limit_arg(retention.max_age_ms))
            .arg(streams.len());
        for stream in &streams {
            call.arg(stream.as_str());
        }
        for (event, number) in events.iter().zip(&numbers) {
            call.arg(*number)
                .arg(event.kind.as_ref().map_or("", |k| k.as_str()))
                .arg(&event.data);
        }
        let reply: Vec<Value> = self
            .link
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let appended = match (reply.first().and_then(text).as_deref(), reply.get(1)) {
            (Some("ok"), Some(first)) => {
                let first = number(first)?;
                let time = reply.get(2).map(number).transpose()?.unwrap_or(0);
                let stored: Vec<Arc<Event>> = events
                    .into_iter()
                    .zip(first..)
                    .map(|(e, id)| {
                        Arc::new(Event::new(EventId(id), e.stream, e.kind, e.data, time))
                    })
                    .collect();
                if let Some(last) = stored.last() {
                    self.saw(Position::of_event(last.id));
                }
                Appended::Stored(stored)
            }
            (Some("sealed"), Some(which)) => {
                let which = number(which)? as usize;
                let stream = which
                    .checked_sub(1)
                    .and_then(|i| streams.get(i))
                    .ok_or_else(|| unexpected("a seal of a stream not in the request"))?;
                return Err(EngineError::Sealed((*stream).clone()));
            }
            (Some("repeat"), Some(first)) => Appended::Repeated(receipts(first)?),
            _ => return Err(unexpected("an append answered with something unknown")),
        };
        if self.options.replicas > 0 {
            self.replicated().await?;
        }
        Ok(appended)
    }

    /// Waits until the configured number of replicas hold every write so far.
    async fn replicated(&self) -> Result<(), EngineError> {
        let wanted = self.options.replicas;
        let wait = self.link.timeout() / 2;
        let acked: usize = self
            .link
            .call(|mut c| async move {
                redis::cmd("WAIT")
                    .arg(wanted)
                    .arg(wait.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if acked < wanted {
            return Err(EngineError::unavailable(format!(
                "only {acked} of {wanted} Redis replicas confirmed the write within {wait:?}; \
                 it may still be kept: retry with the same Idempotency-Key"
            )));
        }
        Ok(())
    }

    async fn change(
        &self,
        stream: &StreamName,
        change: Change,
    ) -> Result<StreamSettings, EngineError> {
        self.open()?;
        let fence = self.fence();
        let (op, max_len, max_age) = match change {
            Change::Seal => ("seal", None, None),
            Change::Delete => ("delete", None, None),
            Change::Retention {
                max_len,
                max_age_ms,
            } => ("retention", max_len, max_age_ms),
        };
        let mut call = self.scripts.change.prepare_invoke();
        call.key(&self.keys.head)
            .key(&self.keys.log)
            .key(&self.keys.names)
            .key(self.keys.events(stream))
            .key(self.keys.meta(stream))
            .key(&self.keys.due)
            .arg(fence.id.0)
            .arg(fence.seq)
            .arg(self.options.log_len)
            .arg(op)
            .arg(stream.as_str())
            .arg(limit_arg(max_len))
            .arg(limit_arg(max_age));
        let reply: Vec<String> = self
            .link
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        match reply.as_slice() {
            [sealed, max_len, max_age] => Ok(StreamSettings {
                sealed: sealed == "1",
                max_len: optional(max_len)?,
                max_age_ms: optional(max_age)?,
            }),
            _ => Err(unexpected("a change answered with something unknown")),
        }
    }

    async fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        if upto <= after || limit == 0 {
            return Ok(Vec::new());
        }
        // Only while Redis answers: what the node holds may miss a delete it cannot see now.
        if self.link.is_reachable() {
            if let Some(events) = self.hot.read(stream, after, upto, limit) {
                return Ok(events);
            }
        }
        let (from, to) = (format!("({after}-0"), format!("{upto}-0"));
        self.range(stream, "XRANGE", &from, &to, Some(limit)).await
    }

    /// One stream's events by `XRANGE` or `XREVRANGE` between two entry ids, `count` at most.
    async fn range(
        &self,
        stream: &StreamName,
        command: &str,
        from: &str,
        to: &str,
        count: Option<usize>,
    ) -> Result<Vec<Event>, EngineError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(self.keys.events(stream)).arg(from).arg(to);
        if let Some(count) = count {
            cmd.arg("COUNT").arg(count.min(i64::MAX as usize));
        }
        let entries: Value = self
            .link
            .call(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        events_of(stream, entries)
    }

    async fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> Result<Vec<Event>, EngineError> {
        if n == 0 || upto == EventId::ZERO {
            return Ok(Vec::new());
        }
        let upto = format!("{upto}-0");
        let mut events = self.range(stream, "XREVRANGE", &upto, "-", Some(n)).await?;
        events.reverse();
        Ok(events)
    }

    async fn get(&self, stream: &StreamName, id: EventId) -> Result<Option<Event>, EngineError> {
        if id == EventId::ZERO {
            return Ok(None);
        }
        let id = format!("{id}-0");
        Ok(self.range(stream, "XRANGE", &id, &id, None).await?.pop())
    }

    async fn states(&self, streams: &[StreamName]) -> Result<Vec<StreamState>, EngineError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.scripts.stats.prepare_invoke();
        for stream in streams {
            call.key(self.keys.events(stream))
                .key(self.keys.meta(stream));
        }
        let values: Vec<String> = self
            .link
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if values.len() != streams.len() * 8 {
            return Err(unexpected("stream counters of the wrong shape"));
        }
        values.chunks(8).map(state_of).collect()
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<(StreamName, StreamState)>, EngineError> {
        let lowest = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => format!("({after}"),
            _ => format!("[{}", query.prefix),
        };
        let highest = if query.prefix.is_empty() {
            "+".to_owned()
        } else {
            // Names are ASCII: every name with the prefix sorts below the prefix and 0xff.
            format!("[{}\u{7f}", query.prefix)
        };
        let names_key = self.keys.names.clone();
        let limit = query.limit.min(i64::MAX as usize);
        let names: Vec<String> = self
            .link
            .call(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&names_key)
                    .arg(&lowest)
                    .arg(&highest)
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let names: Vec<StreamName> = names
            .iter()
            .filter_map(|n| StreamName::new(n).ok())
            .filter(|n| query.admits(n))
            .collect();
        let mut listed = Vec::with_capacity(names.len());
        for page in names.chunks(256) {
            let states = self.states(page).await?;
            listed.extend(page.iter().cloned().zip(states));
        }
        Ok(listed)
    }

    async fn head(&self) -> Result<Position, EngineError> {
        let key = self.keys.head.clone();
        let (id, seq): (Option<u64>, Option<u64>) = self
            .link
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("id")
                    .arg("seq")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let head = Position {
            id: EventId(id.unwrap_or(0)),
            seq: seq.unwrap_or(0),
        };
        self.saw(head);
        Ok(head)
    }

    /// Checks that the server is a Redis this engine can use, and says clearly why not.
    async fn check_server(&self) -> Result<(), EngineError> {
        let info: String = self
            .link
            .call(|mut c| async move { redis::cmd("INFO").arg("server").query_async(&mut c).await })
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let version = field("redis_version").unwrap_or("unknown");
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(EngineError::unavailable(format!(
                "Redis {version} at {} is too old: herald needs Redis 7.0 or newer",
                self.link.target()
            )));
        }
        if field("redis_mode") == Some("cluster") {
            return Err(EngineError::unavailable(format!(
                "{} is a Redis Cluster; herald needs one primary (with replicas and Sentinels \
                 for failover), not a cluster",
                self.link.target()
            )));
        }
        Ok(())
    }
}

/// The log of several nodes in Redis. Cheap to share: every clone of the `Arc` is the same
/// connection.
pub struct RedisEngine {
    inner: Arc<Inner>,
}

impl RedisEngine {
    /// Connects, checks the server (Redis 7 or newer, not a cluster) and starts this node's
    /// part of the background work (retention, when it holds the lease).
    pub async fn connect(options: RedisOptions) -> Result<RedisEngine, EngineError> {
        valid_prefix(&options.prefix).map_err(EngineError::unavailable)?;
        let link = Link::new(options.target.clone(), options.timeout)?;
        let inner = Arc::new(Inner {
            link,
            keys: Keys::new(&options.prefix),
            scripts: Scripts::new(),
            options,
            seen: Mutex::new(Position::default()),
            closed: watch::channel(false).0,
            node: uuid::Uuid::new_v4().to_string(),
            hot: hot::Hot::new(),
        });
        inner.check_server().await?;
        inner.head().await?;
        tokio::spawn(trimmer::run(Arc::downgrade(&inner)));
        tokio::spawn(keep_in_touch(Arc::downgrade(&inner)));
        Ok(RedisEngine { inner })
    }

    /// Presence kept in this engine's Redis, shared by every node of the cluster: pass it to
    /// [`crate::broker::Broker::with_presence`].
    pub fn presence(&self, grace: Duration) -> Arc<RedisPresence> {
        RedisPresence::start(self.inner.clone(), grace)
    }

    /// Where this engine's Redis is.
    pub fn target(&self) -> &RedisTarget {
        self.inner.link.target()
    }
}

/// Pings Redis now and then, so `is_writable` (and `/healthz`) tells the truth while nobody
/// publishes.
async fn keep_in_touch(inner: Weak<Inner>) {
    let every = Duration::from_secs(1);
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        let _ = inner
            .link
            .call(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await;
    }
}

impl Engine for RedisEngine {
    fn append(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> EngineFuture<'_, Appended> {
        self.inner.append(events, key).boxed()
    }

    fn change(&self, stream: &StreamName, change: Change) -> EngineFuture<'_, StreamSettings> {
        let stream = stream.clone();
        async move { self.inner.change(&stream, change).await }.boxed()
    }

    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> EngineFuture<'_, Vec<Event>> {
        let stream = stream.clone();
        async move { self.inner.read(&stream, after, upto, limit).await }.boxed()
    }

    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> EngineFuture<'_, Vec<Event>> {
        let stream = stream.clone();
        async move { self.inner.read_last(&stream, upto, n).await }.boxed()
    }

    fn get(&self, stream: &StreamName, id: EventId) -> EngineFuture<'_, Option<Event>> {
        let stream = stream.clone();
        async move { self.inner.get(&stream, id).await }.boxed()
    }

    fn stream(&self, stream: &StreamName) -> EngineFuture<'_, StreamState> {
        let stream = stream.clone();
        async move {
            let mut states = self.inner.states(std::slice::from_ref(&stream)).await?;
            states
                .pop()
                .ok_or_else(|| unexpected("no counters for a stream"))
        }
        .boxed()
    }

    fn list(&self, query: ListQuery) -> EngineFuture<'_, Vec<(StreamName, StreamState)>> {
        self.inner.list(query).boxed()
    }

    fn head(&self) -> EngineFuture<'_, Position> {
        self.inner.head().boxed()
    }

    fn tail(&self, from: Position) -> Tail {
        tail::follow(self.inner.clone(), from)
    }

    fn retention(&self) -> Retention {
        self.inner.options.retention
    }

    fn is_writable(&self) -> bool {
        !self.inner.is_closed() && self.inner.link.is_reachable()
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.closed.send_replace(true);
        futures::future::ready(()).boxed()
    }
}

/// A limit or setting as a script argument: `''` for none.
fn limit_arg(limit: Option<u64>) -> String {
    limit.map_or_else(String::new, |n| n.to_string())
}

fn unexpected(what: &str) -> EngineError {
    EngineError::store(std::io::Error::other(format!(
        "Redis answered unexpectedly: {what}"
    )))
}

/// A reply value as text, when it is text (or a number).
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn number(value: &Value) -> Result<u64, EngineError> {
    text(value)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unexpected("a number that is not one"))
}

fn optional(text: &str) -> Result<Option<u64>, EngineError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| unexpected("a setting that is not a number"))
}

/// An idempotency key's stored answer: the first id, then each event's stream, one per line.
fn receipts(answer: &Value) -> Result<Vec<Receipt>, EngineError> {
    let answer = text(answer).ok_or_else(|| unexpected("an unreadable stored answer"))?;
    let mut lines = answer.split('\n');
    let first: u64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| unexpected("a stored answer without its first id"))?;
    lines
        .zip(first..)
        .map(|(stream, id)| {
            let stream = StreamName::new(stream).map_err(|_| unexpected("a stored stream name"))?;
            Ok(Receipt {
                id: EventId(id),
                stream,
            })
        })
        .collect()
}

fn state_of(values: &[String]) -> Result<StreamState, EngineError> {
    let [last, trimmed, sealed, max_len, max_age, length, first_id, first_time] = values else {
        return Err(unexpected("stream counters of the wrong shape"));
    };
    let settings = StreamSettings {
        sealed: sealed == "1",
        max_len: optional(max_len)?,
        max_age_ms: optional(max_age)?,
    };
    let stats = match optional(last)? {
        None => None,
        Some(last) => Some(StreamStats {
            length: optional(length)?.unwrap_or(0),
            first_id: EventId(optional(first_id)?.unwrap_or(0)),
            last_id: EventId(last),
            first_time: optional(first_time)?.unwrap_or(0),
            trimmed_through: EventId(optional(trimmed)?.unwrap_or(0)),
        }),
    };
    Ok(StreamState { stats, settings })
}

/// The parts of a stream entry: its id (`<ms>-<seq>`) and its fields.
pub(crate) struct Entry {
    pub position: Position,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn parse_position(text: &str) -> Option<Position> {
    let (id, seq) = text.split_once('-')?;
    Some(Position {
        id: EventId(id.parse().ok()?),
        seq: seq.parse().ok()?,
    })
}

/// The entries of an `XRANGE`/`XREVRANGE` answer (or one stream of an `XREAD` answer).
pub(crate) fn entries(value: Value) -> Result<Vec<Entry>, EngineError> {
    let Value::Array(items) = value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            _ => Err(unexpected("stream entries that are not a list")),
        };
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut parts) = item else {
                return Err(unexpected("a stream entry that is not a pair"));
            };
            let (Some(Value::Array(flat)), Some(id)) = (parts.pop(), parts.pop()) else {
                return Err(unexpected("a stream entry without its fields"));
            };
            let position = text(&id)
                .as_deref()
                .and_then(parse_position)
                .ok_or_else(|| unexpected("a stream entry id"))?;
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                let name = text(&name).ok_or_else(|| unexpected("a field name"))?;
                let value = match value {
                    Value::BulkString(bytes) => String::from_utf8(bytes)
                        .map_err(|_| unexpected("a field that is not UTF-8"))?,
                    other => text(&other).ok_or_else(|| unexpected("a field value"))?,
                };
                fields.push((name, value));
            }
            Ok(Entry { position, fields })
        })
        .collect()
}

fn kind_of(entry: &Entry) -> Result<Option<EventType>, EngineError> {
    entry
        .field("e")
        .map(EventType::new)
        .transpose()
        .map_err(|_| unexpected("a stored event type"))
}

fn time_of(entry: &Entry) -> u64 {
    entry.field("t").and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// The events of one stream's key.
fn events_of(stream: &StreamName, value: Value) -> Result<Vec<Event>, EngineError> {
    entries(value)?
        .into_iter()
        .map(|mut entry| {
            let kind = kind_of(&entry)?;
            let time = time_of(&entry);
            let data = entry
                .fields
                .iter_mut()
                .find(|(n, _)| n == "d")
                .map(|(_, v)| std::mem::take(v))
                .unwrap_or_default();
            Ok(Event::new(
                entry.position.id,
                stream.clone(),
                kind,
                data,
                time,
            ))
        })
        .collect()
}

/// One record of the global log.
pub(crate) fn record_of(mut entry: Entry) -> Result<Record, EngineError> {
    let stream = entry
        .field("s")
        .map(StreamName::new)
        .transpose()
        .map_err(|_| unexpected("a stored stream name"))?
        .ok_or_else(|| unexpected("a log record without its stream"))?;
    let record = match entry.field("k") {
        Some("e") => {
            let kind = kind_of(&entry)?;
            let time = time_of(&entry);
            let data = entry
                .fields
                .iter_mut()
                .find(|(n, _)| n == "d")
                .map(|(_, v)| std::mem::take(v))
                .unwrap_or_default();
            Record::Event(Arc::new(Event::new(
                entry.position.id,
                stream,
                kind,
                data,
                time,
            )))
        }
        Some("x") => Record::Sealed(stream),
        Some("D") => Record::Deleted(stream),
        Some("r") => Record::Settings(
            stream,
            StreamSettings {
                sealed: entry.field("z") == Some("1"),
                max_len: optional(entry.field("l").unwrap_or(""))?,
                max_age_ms: optional(entry.field("a").unwrap_or(""))?,
            },
        ),
        Some("t") => Record::Trimmed {
            stream,
            through: EventId(optional(entry.field("u").unwrap_or(""))?.unwrap_or(0)),
        },
        _ => return Err(unexpected("a log record of an unknown kind")),
    };
    Ok(record)
}
