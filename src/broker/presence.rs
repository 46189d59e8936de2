//! Who is online: per stream, the clients that hold at least one subscription to it.
//!
//! A client is a member of a stream while it has a connection reading it, and for a grace period
//! after its last one goes — so a page reload (close, then reconnect) is neither a leave nor a
//! join, and nobody watching sees flicker. Joins and leaves are told live, per stream, to whoever
//! watches (`presence=1` subscribers), with the stream's member count after the change.
//!
//! [`Presence`] is the boundary: the HTTP layer and the broker know only it, so presence shared
//! by several nodes can take the place of [`LocalPresence`], which keeps members in this
//! process's memory: after a restart every client is simply absent until it reconnects, so a
//! crash can never leave ghosts behind.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::engine::EngineError;
use super::event::{now_millis, InvalidName, StreamName};

/// Changes a watcher may fall behind by before it misses some (it then skips to the newest).
const WATCH_CAPACITY: usize = 1024;

/// A validated presence client id: 1–128 characters, none of them control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub const MAX_LEN: usize = 128;

    pub fn new(id: &str) -> Result<ClientId, InvalidName> {
        let chars = id.chars().count();
        if chars == 0 || chars > Self::MAX_LEN {
            return Err(InvalidName(format!(
                "client id must be 1 to {} characters long, got {chars}",
                Self::MAX_LEN
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidName(format!(
                "client id {id:?} contains a control character"
            )));
        }
        Ok(ClientId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Join,
    Leave,
}

/// One join or leave, as watchers receive it. Every watcher of a room receives a clone of the
/// same change, and they share its bytes on the wire (see [`PresenceChange::encoded`]): a room
/// of thousands encodes each join once, not once per watcher.
#[derive(Clone)]
pub struct PresenceChange {
    pub kind: ChangeKind,
    pub stream: StreamName,
    pub client: ClientId,
    /// Members of the stream after this change.
    pub count: usize,
    encoded: Arc<OnceLock<Bytes>>,
}

impl PresenceChange {
    pub fn new(
        kind: ChangeKind,
        stream: StreamName,
        client: ClientId,
        count: usize,
    ) -> PresenceChange {
        PresenceChange {
            kind,
            stream,
            client,
            count,
            encoded: Arc::default(),
        }
    }

    /// This change's bytes: made by `encode` for the first watcher that asks, then shared by
    /// every clone (a clone of `Bytes` is a reference count).
    pub fn encoded(&self, encode: impl FnOnce(&PresenceChange) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(self)).clone()
    }
}

impl PartialEq for PresenceChange {
    fn eq(&self, other: &PresenceChange) -> bool {
        (self.kind, &self.stream, &self.client, self.count)
            == (other.kind, &other.stream, &other.client, other.count)
    }
}

impl Eq for PresenceChange {}

impl fmt::Debug for PresenceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceChange")
            .field("kind", &self.kind)
            .field("stream", &self.stream)
            .field("client", &self.client)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// One member, as `GET /streams/{stream}/presence` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client: ClientId,
    /// Open connections now; 0 while the client is within its grace period.
    pub connections: usize,
    /// When the client joined (Unix milliseconds).
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceInfo {
    pub stream: StreamName,
    pub count: usize,
    pub clients: Vec<Member>,
}

struct Room {
    members: BTreeMap<ClientId, MemberState>,
    changes: broadcast::Sender<PresenceChange>,
}

struct MemberState {
    connections: usize,
    since: u64,
    /// Set while the last connection is gone: the leave that will happen unless it returns.
    leaving: Option<u64>,
}

impl Room {
    fn new() -> Room {
        Room {
            members: BTreeMap::new(),
            changes: broadcast::channel(WATCH_CAPACITY).0,
        }
    }

    fn tell(&self, kind: ChangeKind, stream: &StreamName, client: &ClientId) {
        // An error only means nobody watches.
        let _ = self.changes.send(PresenceChange::new(
            kind,
            stream.clone(),
            client.clone(),
            self.members.len(),
        ));
    }

    fn unused(&self) -> bool {
        self.members.is_empty() && self.changes.receiver_count() == 0
    }
}

/// Who is online, wherever that is kept.
pub trait Presence: Send + Sync + 'static {
    /// Counts one more connection of `client` in each of `streams`, until the guard is dropped
    /// (then [`Presence::disconnect`] starts the client's grace period where it was the last).
    fn connect(self: Arc<Self>, streams: &[StreamName], client: ClientId) -> PresenceGuard;

    /// One connection of `client` in `streams` is gone; called by [`PresenceGuard`]'s drop.
    fn disconnect(self: Arc<Self>, streams: &[StreamName], client: &ClientId);

    /// Members of `stream`, by client id.
    fn members(&self, stream: &StreamName) -> BoxFuture<'_, Result<PresenceInfo, EngineError>>;

    /// How many clients are members of `stream`.
    fn online(&self, stream: &StreamName) -> BoxFuture<'_, Result<usize, EngineError>>;

    /// How many clients are members of each of `streams`, in order: one call for a page of the
    /// stream listing (a shared store answers it in one round trip).
    fn online_many<'a>(
        &'a self,
        streams: &'a [StreamName],
    ) -> BoxFuture<'a, Result<Vec<usize>, EngineError>> {
        async move {
            let mut counts = Vec::with_capacity(streams.len());
            for stream in streams {
                counts.push(self.online(stream).await?);
            }
            Ok(counts)
        }
        .boxed()
    }

    /// Every later join and leave of `streams`, merged. A watcher that falls far behind skips to
    /// the newest (each change carries the current count, so the count is right again at once).
    fn watch(self: Arc<Self>, streams: &[StreamName]) -> PresenceWatch;
}

/// The presence registry of one process.
pub struct LocalPresence {
    grace: Duration,
    rooms: Mutex<HashMap<StreamName, Room>>,
    /// Numbers each pending leave, so a timer fires only for the absence it was started for.
    next_leave: AtomicU64,
}

impl LocalPresence {
    pub fn new(grace: Duration) -> LocalPresence {
        LocalPresence {
            grace,
            rooms: Mutex::new(HashMap::new()),
            next_leave: AtomicU64::new(0),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<StreamName, Room>> {
        // Every change below leaves the maps consistent before anything can panic.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self, streams: &[StreamName], client: &ClientId) {
        let mut rooms = self.rooms();
        for stream in streams {
            let room = rooms.entry(stream.clone()).or_insert_with(Room::new);
            match room.members.get_mut(client) {
                Some(member) => {
                    member.connections += 1;
                    member.leaving = None; // back within the grace period: no leave, no join
                }
                None => {
                    room.members.insert(
                        client.clone(),
                        MemberState {
                            connections: 1,
                            since: now_millis(),
                            leaving: None,
                        },
                    );
                    room.tell(ChangeKind::Join, stream, client);
                }
            }
        }
    }

    fn leave(self: &Arc<Self>, streams: &[StreamName], client: &ClientId) {
        let timer = tokio::runtime::Handle::try_current().ok();
        let mut rooms = self.rooms();
        for stream in streams {
            let Some(room) = rooms.get_mut(stream) else {
                continue;
            };
            let Some(member) = room.members.get_mut(client) else {
                continue;
            };
            member.connections = member.connections.saturating_sub(1);
            if member.connections > 0 {
                continue;
            }
            match &timer {
                Some(handle) if !self.grace.is_zero() => {
                    let leave = self.next_leave.fetch_add(1, Ordering::Relaxed) + 1;
                    member.leaving = Some(leave);
                    let presence = self.clone();
                    let (stream, client) = (stream.clone(), client.clone());
                    handle.spawn(async move {
                        tokio::time::sleep(presence.grace).await;
                        presence.expire(&stream, &client, leave);
                    });
                }
                // No grace, or no runtime left to wait in (the process is ending): leave now.
                _ => {
                    room.members.remove(client);
                    room.tell(ChangeKind::Leave, stream, client);
                    if room.unused() {
                        rooms.remove(stream);
                    }
                }
            }
        }
    }

    /// The grace period of one absence ended: the client leaves unless it came back.
    fn expire(&self, stream: &StreamName, client: &ClientId, leave: u64) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(stream) else {
            return;
        };
        let still_away = room
            .members
            .get(client)
            .is_some_and(|m| m.connections == 0 && m.leaving == Some(leave));
        if still_away {
            room.members.remove(client);
            room.tell(ChangeKind::Leave, stream, client);
            if room.unused() {
                rooms.remove(stream);
            }
        }
    }

    fn members_now(&self, stream: &StreamName) -> PresenceInfo {
        let rooms = self.rooms();
        let clients: Vec<Member> = rooms.get(stream).map_or_else(Vec::new, |room| {
            room.members
                .iter()
                .map(|(client, m)| Member {
                    client: client.clone(),
                    connections: m.connections,
                    since: m.since,
                })
                .collect()
        });
        PresenceInfo {
            stream: stream.clone(),
            count: clients.len(),
            clients,
        }
    }

    fn online_now(&self, stream: &StreamName) -> usize {
        self.rooms()
            .get(stream)
            .map_or(0, |room| room.members.len())
    }

    fn local_watch(self: &Arc<Self>, streams: &[StreamName]) -> LocalWatch {
        let mut rooms = self.rooms();
        let mut changes = SelectAll::new();
        for stream in streams {
            let room = rooms.entry(stream.clone()).or_insert_with(Room::new);
            changes.push(BroadcastStream::new(room.changes.subscribe()));
        }
        LocalWatch {
            presence: self.clone(),
            streams: streams.to_vec(),
            changes,
        }
    }

    fn sweep(&self, streams: &[StreamName]) {
        let mut rooms = self.rooms();
        for stream in streams {
            if rooms.get(stream).is_some_and(Room::unused) {
                rooms.remove(stream);
            }
        }
    }
}

impl Presence for LocalPresence {
    fn connect(self: Arc<Self>, streams: &[StreamName], client: ClientId) -> PresenceGuard {
        self.join(streams, &client);
        PresenceGuard {
            presence: self,
            streams: streams.to_vec(),
            client,
        }
    }

    fn disconnect(self: Arc<Self>, streams: &[StreamName], client: &ClientId) {
        self.leave(streams, client);
    }

    fn members(&self, stream: &StreamName) -> BoxFuture<'_, Result<PresenceInfo, EngineError>> {
        futures::future::ready(Ok(self.members_now(stream))).boxed()
    }

    fn online(&self, stream: &StreamName) -> BoxFuture<'_, Result<usize, EngineError>> {
        futures::future::ready(Ok(self.online_now(stream))).boxed()
    }

    fn watch(self: Arc<Self>, streams: &[StreamName]) -> PresenceWatch {
        PresenceWatch::new(self.local_watch(streams).boxed())
    }
}

/// One connection's membership; dropping it starts the client's grace period where this was
/// its last connection.
pub struct PresenceGuard {
    presence: Arc<dyn Presence>,
    streams: Vec<StreamName>,
    client: ClientId,
}

impl PresenceGuard {
    /// A guard that calls `presence`'s [`Presence::disconnect`] when dropped; for
    /// [`Presence::connect`] implementations.
    pub fn new(
        presence: Arc<dyn Presence>,
        streams: Vec<StreamName>,
        client: ClientId,
    ) -> PresenceGuard {
        PresenceGuard {
            presence,
            streams,
            client,
        }
    }

    pub fn client(&self) -> &ClientId {
        &self.client
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence
            .clone()
            .disconnect(&self.streams, &self.client);
    }
}

/// Joins and leaves of some streams, merged.
pub struct PresenceWatch {
    changes: BoxStream<'static, PresenceChange>,
}

impl PresenceWatch {
    pub fn new(changes: BoxStream<'static, PresenceChange>) -> PresenceWatch {
        PresenceWatch { changes }
    }

    /// The next change; `None` once nothing more can come.
    pub async fn next(&mut self) -> Option<PresenceChange> {
        self.changes.next().await
    }

    /// A change that is ready now, without waiting: for writing a burst of joins at once.
    pub fn try_next(&mut self) -> Option<PresenceChange> {
        self.changes.next().now_or_never().flatten()
    }
}

/// The local watch: one broadcast receiver per stream. Dropping it lets rooms that nobody uses
/// any more go.
struct LocalWatch {
    presence: Arc<LocalPresence>,
    streams: Vec<StreamName>,
    changes: SelectAll<BroadcastStream<PresenceChange>>,
}

impl futures::Stream for LocalWatch {
    type Item = PresenceChange;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PresenceChange>> {
        poll_changes(&mut self.changes, cx)
    }
}

/// The next change of a watcher's merged channels: one it fell too far behind for is skipped
/// (each change carries the count, so the next one sets it right).
pub(crate) fn poll_changes(
    changes: &mut SelectAll<BroadcastStream<PresenceChange>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Option<PresenceChange>> {
    loop {
        match futures::ready!(changes.poll_next_unpin(cx)) {
            Some(Ok(change)) => return std::task::Poll::Ready(Some(change)),
            Some(Err(lagged)) => tracing::debug!(%lagged, "presence watcher fell behind"),
            None => return std::task::Poll::Ready(None),
        }
    }
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        self.changes = SelectAll::new(); // let go of the receivers before sweeping
        self.presence.sweep(&self.streams);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    fn c(id: &str) -> ClientId {
        ClientId::new(id).unwrap()
    }

    #[test]
    fn client_ids_are_validated() {
        assert!(ClientId::new("alice").is_ok());
        assert!(ClientId::new("Zoë 🙂").is_ok());
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("a\nb").is_err());
        assert!(ClientId::new(&"x".repeat(129)).is_err());
    }

    /// Every watcher gets a clone of the same change, and the first to encode it encodes it
    /// for all; a watcher can take what is ready without waiting.
    #[tokio::test]
    async fn watchers_share_each_change_and_take_a_burst_without_waiting() {
        let presence = Arc::new(LocalPresence::new(Duration::ZERO));
        let room = [s("room")];
        let (mut one, mut two) = (presence.clone().watch(&room), presence.clone().watch(&room));
        assert!(one.try_next().is_none(), "nothing yet");
        let members: Vec<PresenceGuard> = ["a", "b", "c"]
            .into_iter()
            .map(|id| presence.clone().connect(&room, c(id)))
            .collect();
        let burst: Vec<PresenceChange> = std::iter::from_fn(|| one.try_next()).collect();
        assert_eq!(burst.iter().map(|c| c.count).collect::<Vec<_>>(), [1, 2, 3]);
        let encodings = std::sync::atomic::AtomicUsize::new(0);
        let encode = |change: &PresenceChange| {
            encodings.fetch_add(1, Ordering::Relaxed);
            Bytes::from(change.client.to_string())
        };
        let first = burst[0].encoded(encode);
        let again = two.next().await.unwrap().encoded(encode);
        assert_eq!(first, "a");
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes");
        assert_eq!(encodings.load(Ordering::Relaxed), 1, "encoded once");
        drop(members);
    }

    #[tokio::test(start_paused = true)]
    async fn several_connections_are_one_member_and_a_quick_return_is_no_leave() {
        let presence = Arc::new(LocalPresence::new(Duration::from_secs(5)));
        let room = s("room");
        let room = std::slice::from_ref(&room);
        let mut watch = presence.clone().watch(room);
        let a1 = presence.clone().connect(room, c("alice"));
        let a2 = presence.clone().connect(room, c("alice"));
        let b = presence.clone().connect(room, c("bob"));
        let info = presence.members_now(&room[0]);
        assert_eq!(info.count, 2);
        assert_eq!(info.clients[0].connections, 2);
        let joins: Vec<(String, usize)> = [watch.next().await, watch.next().await]
            .into_iter()
            .map(|c| c.map(|c| (c.client.to_string(), c.count)).unwrap())
            .collect();
        assert_eq!(joins, [("alice".into(), 1), ("bob".into(), 2)]);

        drop((a1, a2));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            presence.online_now(&room[0]),
            2,
            "alice is within her grace period"
        );
        let again = presence.clone().connect(room, c("alice"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(presence.online_now(&room[0]), 2, "alice came back in time");

        drop((again, b));
        tokio::time::sleep(Duration::from_secs(6)).await;
        let leaves: Vec<PresenceChange> =
            vec![watch.next().await.unwrap(), watch.next().await.unwrap()];
        assert!(leaves.iter().all(|l| l.kind == ChangeKind::Leave));
        assert_eq!([leaves[0].count, leaves[1].count], [1, 0]);
        let mut who: Vec<String> = leaves.iter().map(|l| l.client.to_string()).collect();
        who.sort();
        assert_eq!(who, ["alice", "bob"]);
        assert_eq!(presence.online_now(&room[0]), 0);
        drop(watch);
        assert!(presence.rooms().is_empty());
    }
}
