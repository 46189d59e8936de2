//! The engine of one process: a [`Store`] (sled on disk, or memory) changed by one writer
//! thread, which gathers publishes into groups, commits each with one fsync, and hands the
//! committed records to the tail.
//!
//! Why one thread: it decides the id order, the seal checks and the retention trims alone, so
//! they need no locks against each other, and a group of concurrent publishes costs one fsync.
//! Reads go straight to the store from a blocking thread; they never wait for the writer.

mod memory;
mod priority;
mod schedule;
mod sled;
pub mod store;
mod tail;
mod wal;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::oneshot;

pub use self::store::{MemoryStore, SledStore, Store, StoreError};
use self::tail::{Positions, TailHub};
use self::wal::Wal;
pub use self::writer::Durability;
use self::writer::{Checkpointer, Command, Inbox, Writer};
use super::{
    Appended, Change, Engine, EngineError, EngineFuture, IdempotencyKey, ListQuery, Position,
    Retention, StreamSettings, StreamState, Tail,
};
use crate::broker::event::{Event, EventId, NewEvent, StreamName};

/// Where the log lives.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A sled database in this directory; `cache_bytes` bounds its page cache.
    Disk { dir: PathBuf, cache_bytes: u64 },
    /// Nothing survives a restart.
    Memory,
}

/// How a local engine keeps its log.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub storage: Storage,
    pub durability: Durability,
    /// The server's retention; streams may override it.
    pub retention: Retention,
    /// How often retention is checked.
    pub trim_every: Duration,
    /// How long an idempotency key's answer is kept (a repeat within it stores nothing); keys
    /// are kept in the store, so they outlive a restart.
    pub idempotency_window: Duration,
}

/// The idempotency window unless told otherwise: the contract asks for at least 10 minutes.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// Opens the write-ahead log beside sled and stores again what sled lacks of it (from the last
/// checkpoint on); then checkpoints, so the replay is not needed again.
fn replay_into(sled: &SledStore, dir: &std::path::Path) -> Result<Wal, StoreError> {
    let started = std::time::Instant::now();
    let from = sled.wal_floor()?;
    let (mut records, mut events) = (0u64, 0usize);
    let wal = Wal::open(&dir.join(wal::WAL_DIR), from, |_, payload| {
        let group = wal::Group::decode(payload)?;
        records += 1;
        events += sled.replay(group).map_err(std::io::Error::other)?;
        Ok(())
    })
    .map_err(|source| StoreError::Io {
        what: format!("reading the write-ahead log in {}", dir.display()),
        source,
    })?;
    if records > 0 {
        sled.checkpoint(wal.end())?;
        tracing::info!(
            records,
            events,
            ms = started.elapsed().as_millis() as u64,
            "write-ahead log replayed"
        );
    }
    Ok(wal)
}

pub struct LocalEngine {
    store: Arc<dyn Store>,
    inbox: Inbox,
    tail: Arc<TailHub>,
    failed: Arc<AtomicBool>,
    retention: Retention,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    sync_seconds: Histogram,
}

impl LocalEngine {
    /// Opens the store and starts the writer thread. Start-up reads only the per-stream
    /// counters, never the events, so it is fast whatever the log's size.
    pub fn open(options: LocalOptions) -> Result<LocalEngine, EngineError> {
        let (store, wal): (Arc<dyn Store>, Option<Wal>) = match &options.storage {
            Storage::Memory => (Arc::new(MemoryStore::new()), None),
            // Never sled's own background flusher: it is flushed at checkpoints (see `writer.rs`).
            Storage::Disk { dir, cache_bytes } => {
                let sled = SledStore::open(dir, *cache_bytes).map_err(EngineError::store)?;
                let wal = replay_into(&sled, dir).map_err(EngineError::store)?;
                (Arc::new(sled), Some(wal))
            }
        };
        let head = Position::of_event(store.last_id());
        let tail = Arc::new(TailHub::new(head));
        let failed = Arc::new(AtomicBool::new(false));
        // With the log, sled is written (settled) and flushed on a thread of its own, so
        // publishers never wait for it, unless it falls far behind.
        let checkpoints = wal
            .as_ref()
            .map(|wal| Checkpointer::start(store.clone(), wal.dir().to_path_buf(), failed.clone()))
            .transpose()
            .map_err(EngineError::store)?;
        // 50 µs to ~1.6 s.
        let sync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let (commands, receiver) = mpsc::channel();
        let writer = Writer {
            store: store.clone(),
            outbox: writer::Outbox::new(tail.clone()),
            failed: failed.clone(),
            durability: options.durability,
            retention: options.retention,
            trim_every: options.trim_every,
            commands: receiver,
            positions: Positions::new(head),
            sync_seconds: sync_seconds.clone(),
            idempotency_window: options.idempotency_window,
            schedule: Default::default(),
            wal,
            checkpoints,
        };
        let handle = std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || writer.run())
            .map_err(EngineError::store)?;
        Ok(LocalEngine {
            store,
            inbox: Inbox::new(commands),
            tail,
            failed,
            retention: options.retention,
            writer: Mutex::new(Some(handle)),
            sync_seconds,
        })
    }

    /// The position of the newest committed record, known at once.
    pub fn head_now(&self) -> Position {
        self.tail.head()
    }

    /// Runs a read of the store on a blocking thread: sled may go to the disk.
    fn blocking<T, F>(&self, read: F) -> EngineFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        async move {
            tokio::task::spawn_blocking(move || read(store.as_ref()))
                .await
                .map_err(EngineError::store)?
                .map_err(EngineError::store)
        }
        .boxed()
    }

    fn state(&self, stream: &StreamName) -> StreamState {
        StreamState {
            stats: self.store.stats(stream),
            settings: self.store.settings(stream),
        }
    }
}

impl Engine for LocalEngine {
    fn append(
        &self,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> EngineFuture<'_, Appended> {
        async move {
            self.inbox
                .publish(events, key)
                .await
                .ok_or(EngineError::ShuttingDown)?
        }
        .boxed()
    }

    fn change(&self, stream: &StreamName, change: Change) -> EngineFuture<'_, StreamSettings> {
        let stream = stream.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            self.inbox
                .send(Command::Change {
                    stream,
                    change,
                    reply,
                })
                .map_err(|_| EngineError::ShuttingDown)?;
            answer.await.map_err(|_| EngineError::ShuttingDown)?
        }
        .boxed()
    }

    fn read(
        &self,
        stream: &StreamName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> EngineFuture<'_, Vec<Event>> {
        let stream = stream.clone();
        self.blocking(move |store| store.read(&stream, after, upto, limit))
    }

    fn read_last(
        &self,
        stream: &StreamName,
        upto: EventId,
        n: usize,
    ) -> EngineFuture<'_, Vec<Event>> {
        let stream = stream.clone();
        self.blocking(move |store| store.read_last(&stream, upto, n))
    }

    fn get(&self, stream: &StreamName, id: EventId) -> EngineFuture<'_, Option<Event>> {
        let stream = stream.clone();
        self.blocking(move |store| store.get(&stream, id))
    }

    fn stream(&self, stream: &StreamName) -> EngineFuture<'_, StreamState> {
        // Counters and settings are held in memory by both stores: no need to leave the thread.
        futures::future::ready(Ok(self.state(stream))).boxed()
    }

    fn list(&self, query: ListQuery) -> EngineFuture<'_, Vec<(StreamName, StreamState)>> {
        let page = self
            .store
            .names(&query)
            .into_iter()
            .map(|name| {
                let state = self.state(&name);
                (name, state)
            })
            .collect();
        futures::future::ready(Ok(page)).boxed()
    }

    fn head(&self) -> EngineFuture<'_, Position> {
        futures::future::ready(Ok(self.head_now())).boxed()
    }

    fn tail(&self, from: Position) -> Tail {
        self.tail.tail(from)
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    fn is_writable(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    fn size_on_disk(&self) -> u64 {
        self.store.size_on_disk()
    }

    fn sync_seconds(&self) -> Option<Histogram> {
        Some(self.sync_seconds.clone())
    }

    /// Commits what is queued, flushes, records a clean stop and ends the writer thread.
    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (reply, done) = oneshot::channel();
            if self.inbox.send(Command::Close { reply }).is_ok() {
                let _ = done.await;
            }
            let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::engine::contract::{exercise, Subject};

    const TRIM_EVERY: Duration = Duration::from_millis(20);

    fn options(storage: Storage) -> LocalOptions {
        LocalOptions {
            storage,
            durability: Durability::Fsync,
            retention: Retention::default(),
            trim_every: TRIM_EVERY,
            idempotency_window: IDEMPOTENCY_WINDOW,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_engine_keeps_the_contract() {
        exercise(Subject {
            open: || async {
                let engine = LocalEngine::open(options(Storage::Memory)).unwrap();
                Arc::new(engine) as Arc<dyn Engine>
            },
            keeps_its_log: false,
            trim_every: TRIM_EVERY,
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sled_engine_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::Disk {
            dir: dir.path().to_path_buf(),
            cache_bytes: 16 << 20,
        };
        exercise(Subject {
            open: || async {
                // A closed store lets go of its lock a moment after its last handle is dropped.
                for _ in 0..200 {
                    match LocalEngine::open(options(storage.clone())) {
                        Ok(engine) => return Arc::new(engine) as Arc<dyn Engine>,
                        Err(e) if e.to_string().contains("in use") => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                panic!("the previous opening never let go of its lock")
            },
            keeps_its_log: true,
            trim_every: TRIM_EVERY,
        })
        .await;
    }

    /// What a durable `201` rests on: the write-ahead log alone brings back every event, with
    /// its id, stream, type and data, and every key's answer, into a store that has none of them
    /// (as when sled had flushed nothing before a crash); and ids go on from there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_write_ahead_log_alone_brings_every_event_back() {
        let disk = |dir: &std::path::Path| {
            options(Storage::Disk {
                dir: dir.join("data"),
                cache_bytes: 16 << 20,
            })
        };
        let event = |stream: &str, kind: Option<&str>, data: &str| NewEvent {
            stream: StreamName::new(stream).unwrap(),
            kind: kind.map(|k| crate::broker::event::EventType::new(k).unwrap()),
            data: data.into(),
        };
        let key = || Some(IdempotencyKey::new("the-key").unwrap());
        let first = tempfile::tempdir().unwrap();
        let engine = LocalEngine::open(disk(first.path())).unwrap();
        engine
            .append(vec![event("a", None, "one"), event("b", None, "two")], None)
            .await
            .unwrap();
        let keyed = engine
            .append(vec![event("a", Some("note"), "three\nlines")], key())
            .await
            .unwrap()
            .receipts();
        engine
            .append(vec![event("b", None, "four")], None)
            .await
            .unwrap();
        let read = |engine: &LocalEngine, stream: &str| -> Vec<(u64, Option<String>, String)> {
            let stream = StreamName::new(stream).unwrap();
            engine
                .store
                .read(&stream, EventId::ZERO, EventId(u64::MAX), 100)
                .unwrap()
                .into_iter()
                .map(|e| (e.id.0, e.kind.map(|k| k.as_str().to_owned()), e.data))
                .collect()
        };
        let before = (read(&engine, "a"), read(&engine, "b"));
        engine.close().await;

        // A new store beside a copy of the log: sled's files are not there at all.
        let second = tempfile::tempdir().unwrap();
        let wal = second.path().join("data").join(wal::WAL_DIR);
        std::fs::create_dir_all(&wal).unwrap();
        for entry in std::fs::read_dir(first.path().join("data").join(wal::WAL_DIR)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), wal.join(entry.file_name())).unwrap();
        }
        let engine = LocalEngine::open(disk(second.path())).unwrap();
        assert_eq!((read(&engine, "a"), read(&engine, "b")), before);
        assert_eq!(before.0.len() + before.1.len(), 4);
        let again = engine
            .append(vec![event("a", Some("note"), "three\nlines")], key())
            .await
            .unwrap();
        assert!(
            matches!(&again, Appended::Repeated(r) if *r == keyed),
            "the key's answer came back"
        );
        let next = engine
            .append(vec![event("c", None, "five")], None)
            .await
            .unwrap();
        assert!(
            next.receipts()[0].id.0 > 4,
            "ids go on after the replayed ones"
        );
        engine.close().await;
        drop((engine, again, next));
        // Opened again, cleanly: nothing is replayed twice. (A closed store lets go of its lock
        // a moment after its last handle is dropped.)
        let mut reopened = LocalEngine::open(disk(second.path()));
        for _ in 0..200 {
            if !matches!(&reopened, Err(e) if e.to_string().contains("in use")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            reopened = LocalEngine::open(disk(second.path()));
        }
        let engine = reopened.unwrap();
        assert_eq!((read(&engine, "a"), read(&engine, "b")), before);
        engine.close().await;
    }

    /// The trim step looks only at streams that changed or came of age: a stream nobody
    /// publishes to again is still trimmed when its events pass the age limit, and one under
    /// its limits is not looked at again until then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quiet_streams_are_trimmed_when_their_events_come_of_age() {
        let engine = LocalEngine::open(LocalOptions {
            retention: Retention {
                max_len: Some(2),
                max_age_ms: Some(300),
            },
            ..options(Storage::Memory)
        })
        .unwrap();
        let names: Vec<StreamName> = (0..50)
            .map(|i| StreamName::new(&format!("quiet-{i}")).unwrap())
            .collect();
        let events = names
            .iter()
            .flat_map(|stream| {
                (0..3).map(|_| NewEvent {
                    stream: stream.clone(),
                    kind: None,
                    data: "x".into(),
                })
            })
            .collect();
        engine.append(events, None).await.unwrap();
        // The length limit applies at the next step; the age limit once 300 ms have passed.
        let lengths = |engine: &LocalEngine| -> Vec<u64> {
            names
                .iter()
                .map(|s| engine.store.stats(s).map_or(0, |st| st.length))
                .collect()
        };
        // Each stream's lengths as sampled, repeats dropped. A sample may land in the middle of a
        // step, so streams are judged one by one, not as a whole.
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
        for _ in 0..200 {
            tokio::time::sleep(TRIM_EVERY).await;
            let now = lengths(&engine);
            for (history, length) in seen.iter_mut().zip(&now) {
                if history.last() != Some(length) {
                    history.push(*length);
                }
            }
            if now.iter().all(|&l| l == 0) {
                break;
            }
        }
        for (name, history) in names.iter().zip(&seen) {
            let trimmed: Vec<u64> = history.iter().copied().skip_while(|&l| l == 3).collect();
            assert_eq!(
                trimmed,
                vec![2, 0],
                "{name}: over the length limit first, then aged out, unasked (saw {history:?})"
            );
        }
        engine.close().await;
    }

    /// A key is remembered for its window and then forgotten (by the trim step, from both
    /// stores): a repeat after that is a new request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotency_keys_are_forgotten_after_their_window() {
        let dir = tempfile::tempdir().unwrap();
        for storage in [
            Storage::Memory,
            Storage::Disk {
                dir: dir.path().to_path_buf(),
                cache_bytes: 16 << 20,
            },
        ] {
            let engine = LocalEngine::open(LocalOptions {
                idempotency_window: Duration::from_millis(200),
                ..options(storage)
            })
            .unwrap();
            let key = || Some(IdempotencyKey::new("k").unwrap());
            let event = || {
                vec![NewEvent {
                    stream: StreamName::new("s").unwrap(),
                    kind: None,
                    data: "x".into(),
                }]
            };
            let first = engine.append(event(), key()).await.unwrap();
            assert!(matches!(first, Appended::Stored(_)));
            let again = engine.append(event(), key()).await.unwrap();
            assert!(matches!(again, Appended::Repeated(_)));
            // Past the window the key no longer counts, and the trim step forgets it.
            let mut forgotten = false;
            for _ in 0..100 {
                tokio::time::sleep(TRIM_EVERY).await;
                if engine
                    .store
                    .answered(&IdempotencyKey::new("k").unwrap())
                    .unwrap()
                    .is_none()
                {
                    forgotten = true;
                    break;
                }
            }
            assert!(forgotten, "the key was never forgotten");
            let later = engine.append(event(), key()).await.unwrap();
            assert!(matches!(later, Appended::Stored(_)), "{later:?}");
            engine.close().await;
        }
    }
}
