//! Presence shared by every node of a cluster, kept in the same Redis as the log.
//!
//! Per stream, Redis holds each member with the time its membership runs out (`presence.lua`).
//! The node that holds a client's connections pushes that time forward every [`REFRESH`]; when
//! the client's last connection anywhere goes, its time is set to run out after the grace
//! period, and a sweep then lets it leave. So a client connected to two nodes is one member, a
//! reload on another node is no leave, and a member whose node vanished (kill -9, power loss)
//! leaves once its time runs out: within the grace period plus about three refreshes.
//!
//! Joins and leaves travel on a Redis channel to the nodes whose subscribers watch
//! (`presence=1`). They are live only by contract, so a change missed while a node was cut off
//! is simply not told; each carries the member count, which is right again at the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::BroadcastStream;

use super::{unexpected, Inner};
use crate::broker::engine::EngineError;
use crate::broker::event::StreamName;
use crate::broker::presence::{
    poll_changes, ChangeKind, ClientId, Member, Presence, PresenceChange, PresenceGuard,
    PresenceInfo, PresenceWatch,
};

/// How often a node pushes its members' time forward and sweeps the streams it cares about.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a membership lasts without a refresh: about three refreshes.
const LASTS: Duration = Duration::from_millis(6_500);
/// Changes a watcher may fall behind by before it misses some.
const WATCH_CAPACITY: usize = 1024;

enum Op {
    Join(StreamName, ClientId),
    Release(StreamName, ClientId),
}

pub struct RedisPresence {
    inner: Arc<Inner>,
    grace: Duration,
    channel: String,
    /// This node's open connections per stream and client.
    held: Mutex<HashMap<StreamName, HashMap<ClientId, usize>>>,
    /// Streams watched here, and the channel their changes reach watchers through.
    watched: Mutex<HashMap<StreamName, broadcast::Sender<PresenceChange>>>,
    /// Joins and releases, applied in order by one task.
    ops: mpsc::UnboundedSender<Op>,
}

impl RedisPresence {
    pub(super) fn start(inner: Arc<Inner>, grace: Duration) -> Arc<RedisPresence> {
        let (ops, queue) = mpsc::unbounded_channel();
        let presence = Arc::new(RedisPresence {
            channel: format!("{}presence", inner.keys.base),
            inner,
            grace,
            held: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            ops,
        });
        tokio::spawn(apply(Arc::downgrade(&presence), queue));
        tokio::spawn(refresh(Arc::downgrade(&presence)));
        tokio::spawn(listen(Arc::downgrade(&presence)));
        presence
    }

    fn held(&self) -> MutexGuard<'_, HashMap<StreamName, HashMap<ClientId, usize>>> {
        // Every change below leaves the map consistent before anything can panic.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watched(&self) -> MutexGuard<'_, HashMap<StreamName, broadcast::Sender<PresenceChange>>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one operation of `presence.lua` on `stream`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        stream: &StreamName,
        op: &str,
        args: &[&str],
    ) -> Result<T, EngineError> {
        let base = &self.inner.keys.base;
        let mut call = self.inner.scripts.presence.prepare_invoke();
        call.key(format!("{base}p:{stream}"))
            .key(format!("{base}ps:{stream}"))
            .key(format!("{base}pc:{stream}"))
            .arg(op)
            .arg(&self.channel)
            .arg(stream.as_str());
        for arg in args {
            call.arg(*arg);
        }
        self.inner
            .link
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn sweep(&self, stream: &StreamName) {
        if let Err(e) = self.run::<u64>(stream, "sweep", &[]).await {
            tracing::debug!(%stream, error = %e, "presence sweep failed; the next one retries");
        }
    }

    fn tell(&self, change: PresenceChange) {
        if let Some(watchers) = self.watched().get(&change.stream) {
            // An error only means nobody watches any more.
            let _ = watchers.send(change);
        }
    }
}

impl Presence for RedisPresence {
    fn connect(self: Arc<Self>, streams: &[StreamName], client: ClientId) -> PresenceGuard {
        {
            let mut held = self.held();
            for stream in streams {
                *held
                    .entry(stream.clone())
                    .or_default()
                    .entry(client.clone())
                    .or_insert(0) += 1;
                let _ = self.ops.send(Op::Join(stream.clone(), client.clone()));
            }
        }
        PresenceGuard::new(self, streams.to_vec(), client)
    }

    fn disconnect(self: Arc<Self>, streams: &[StreamName], client: &ClientId) {
        let mut held = self.held();
        for stream in streams {
            if let Some(clients) = held.get_mut(stream) {
                if let Some(n) = clients.get_mut(client) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        clients.remove(client);
                    }
                }
                if clients.is_empty() {
                    held.remove(stream);
                }
            }
            let _ = self.ops.send(Op::Release(stream.clone(), client.clone()));
        }
    }

    fn members(&self, stream: &StreamName) -> BoxFuture<'_, Result<PresenceInfo, EngineError>> {
        let stream = stream.clone();
        async move {
            let flat: Vec<String> = self.run(&stream, "members", &[]).await?;
            let mut clients = Vec::with_capacity(flat.len() / 3);
            for member in flat.chunks(3) {
                let [client, since, connections] = member else {
                    return Err(unexpected("presence members of the wrong shape"));
                };
                let Ok(client) = ClientId::new(client) else {
                    continue;
                };
                clients.push(Member {
                    client,
                    connections: connections.parse::<i64>().unwrap_or(0).max(0) as usize,
                    since: since.parse().unwrap_or(0),
                });
            }
            clients.sort_by(|a, b| a.client.cmp(&b.client));
            Ok(PresenceInfo {
                stream,
                count: clients.len(),
                clients,
            })
        }
        .boxed()
    }

    fn online(&self, stream: &StreamName) -> BoxFuture<'_, Result<usize, EngineError>> {
        let stream = stream.clone();
        async move { self.run::<usize>(&stream, "count", &[]).await }.boxed()
    }

    fn online_many<'a>(
        &'a self,
        streams: &'a [StreamName],
    ) -> BoxFuture<'a, Result<Vec<usize>, EngineError>> {
        async move {
            let base = &self.inner.keys.base;
            let mut counts = Vec::with_capacity(streams.len());
            for page in streams.chunks(512) {
                let mut call = self.inner.scripts.online.prepare_invoke();
                for stream in page {
                    call.key(format!("{base}p:{stream}"));
                }
                let page: Vec<usize> = self
                    .inner
                    .link
                    .call(|mut c| async move { call.invoke_async(&mut c).await })
                    .await?;
                counts.extend(page);
            }
            if counts.len() != streams.len() {
                return Err(unexpected("member counts of the wrong shape"));
            }
            Ok(counts)
        }
        .boxed()
    }

    fn watch(self: Arc<Self>, streams: &[StreamName]) -> PresenceWatch {
        let mut changes = SelectAll::new();
        {
            let mut watched = self.watched();
            for stream in streams {
                let sender = watched
                    .entry(stream.clone())
                    .or_insert_with(|| broadcast::channel(WATCH_CAPACITY).0);
                changes.push(BroadcastStream::new(sender.subscribe()));
            }
        }
        let watch = Watch {
            presence: self,
            streams: streams.to_vec(),
            changes,
        };
        PresenceWatch::new(watch.boxed())
    }
}

/// Applies joins and releases in the order they happened here.
async fn apply(presence: Weak<RedisPresence>, mut queue: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = queue.recv().await {
        let Some(presence) = presence.upgrade() else {
            return;
        };
        let lasts = LASTS.as_millis().to_string();
        let grace = presence.grace.as_millis().to_string();
        let done = match &op {
            Op::Join(stream, client) => presence
                .run::<i64>(stream, "join", &[client.as_str(), &lasts])
                .await
                .map(drop),
            Op::Release(stream, client) => {
                let released = presence
                    .run::<i64>(stream, "release", &[client.as_str(), &grace])
                    .await;
                if matches!(released, Ok(left) if left <= 0) {
                    // Let it leave as soon as its grace period is over, not a refresh later.
                    let after = presence.grace + Duration::from_millis(20);
                    let (presence, stream) = (Arc::downgrade(&presence), stream.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        if let Some(presence) = presence.upgrade() {
                            presence.sweep(&stream).await;
                        }
                    });
                }
                released.map(drop)
            }
        };
        if let Err(e) = done {
            // The refresh puts held members back; a lost release runs out by itself.
            tracing::debug!(error = %e, "a presence change did not reach Redis");
        }
    }
}

/// Every [`REFRESH`]: pushes forward the members this node holds, and sweeps the streams it
/// holds or watches.
async fn refresh(presence: Weak<RedisPresence>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        if presence.inner.is_closed() {
            return;
        }
        let held: Vec<(StreamName, Vec<String>)> = presence
            .held()
            .iter()
            .map(|(stream, clients)| {
                let clients = clients.keys().map(|c| c.as_str().to_owned()).collect();
                (stream.clone(), clients)
            })
            .collect();
        let lasts = LASTS.as_millis().to_string();
        for (stream, clients) in &held {
            let mut args: Vec<&str> = vec![&lasts];
            args.extend(clients.iter().map(String::as_str));
            if let Err(e) = presence.run::<i64>(stream, "refresh", &args).await {
                tracing::debug!(%stream, error = %e, "presence refresh failed");
            }
        }
        let mut streams: Vec<StreamName> = presence.watched().keys().cloned().collect();
        streams.extend(held.into_iter().map(|(s, _)| s));
        streams.sort();
        streams.dedup();
        for stream in &streams {
            presence.sweep(stream).await;
        }
    }
}

/// Follows the cluster's joins and leaves and hands them to this node's watchers.
async fn listen(presence: Weak<RedisPresence>) {
    let mut retry = Duration::from_millis(100);
    loop {
        let Some(strong) = presence.upgrade() else {
            return;
        };
        if strong.inner.is_closed() {
            return;
        }
        let subscribed = async {
            let mut pubsub = strong.inner.link.pubsub().await?;
            pubsub
                .subscribe(&strong.channel)
                .await
                .map_err(|e| EngineError::unavailable(e.to_string()))?;
            Ok::<_, EngineError>(pubsub)
        };
        let subscribed = tokio::time::timeout(strong.inner.link.timeout(), subscribed).await;
        drop(strong);
        let mut messages = match subscribed {
            Ok(Ok(pubsub)) => {
                retry = Duration::from_millis(100);
                pubsub.into_on_message()
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot follow presence changes yet");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // A connection that went quiet (a stopped or partitioned Redis) is noticed by the
        // refresh failing; here a closed one ends the loop and the subscription is made again.
        while let Some(message) = messages.next().await {
            let Some(presence) = presence.upgrade() else {
                return;
            };
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            if let Some(change) = change_of(&payload) {
                presence.tell(change);
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn change_of(payload: &str) -> Option<PresenceChange> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let kind = match value.get("k")?.as_str()? {
        "join" => ChangeKind::Join,
        "leave" => ChangeKind::Leave,
        _ => return None,
    };
    Some(PresenceChange::new(
        kind,
        StreamName::new(value.get("s")?.as_str()?).ok()?,
        ClientId::new(value.get("c")?.as_str()?).ok()?,
        value.get("n")?.as_u64()? as usize,
    ))
}

/// One watcher's changes; dropping it lets go of streams nobody here watches any more.
struct Watch {
    presence: Arc<RedisPresence>,
    streams: Vec<StreamName>,
    changes: SelectAll<BroadcastStream<PresenceChange>>,
}

impl futures::Stream for Watch {
    type Item = PresenceChange;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PresenceChange>> {
        poll_changes(&mut self.changes, cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.changes = SelectAll::new(); // let go of the receivers first
        let mut watched = self.presence.watched();
        for stream in &self.streams {
            if watched.get(stream).is_some_and(|s| s.receiver_count() == 0) {
                watched.remove(stream);
            }
        }
    }
}
