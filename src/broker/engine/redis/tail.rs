//! Following the global log: `XREAD BLOCK` from a position, on a connection of its own (a
//! blocking read would hold up every other call on a shared one).
//!
//! Each record names the position before it, so a reader notices when records it never saw are
//! gone — trimmed from the capped log while it was away — and says so with [`Record::Skipped`];
//! the node then catches its subscribers up from the streams' own keys. A record whose
//! predecessor is *below* the reader's position means the log lost its end (a failover without
//! the last writes): what follows is new, and is simply read on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{entries, parse_position, record_of, unexpected, Inner};
use crate::broker::engine::{Committed, EngineError, Position, Record, Tail};

/// How long one `XREAD` waits for new records, and how many it takes at most.
const BLOCK: Duration = Duration::from_millis(1000);
const BATCH: usize = 1024;

pub(super) fn follow(inner: Arc<Inner>, from: Position) -> Tail {
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut closed = inner.closed.subscribe();
        let follow = read_on(&inner, from, &sender);
        let outcome = tokio::select! {
            followed = follow => followed,
            _ = async { drop(closed.wait_for(|closed| *closed).await) } => Ok(()),
            _ = sender.closed() => Ok(()),
        };
        if let Err(e) = outcome {
            let _ = sender.send(Err(e)).await;
        }
    });
    ReceiverStream::new(receiver).boxed()
}

/// Reads on until the reader goes or Redis fails (the reader then opens a new tail).
async fn read_on(
    inner: &Inner,
    from: Position,
    sender: &mpsc::Sender<Result<Vec<Committed>, EngineError>>,
) -> Result<(), EngineError> {
    let mut connection = inner.link.dedicated(BLOCK + inner.link.timeout()).await?;
    let mut at = from;
    loop {
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&inner.keys.log)
            .arg(at.to_string())
            .query_async::<Value>(&mut connection)
            .await;
        let reply = read.map_err(|e| {
            EngineError::unavailable(format!(
                "following the log in Redis ({}) failed: {e}",
                inner.link.target()
            ))
        })?;
        let Some(log) = log_entries(reply)? else {
            continue; // nothing new within BLOCK
        };
        let log = entries(log)?;
        let follows = log
            .first()
            .and_then(|e| e.field("p"))
            .and_then(parse_position)
            .unwrap_or(at);
        let mut records = Vec::with_capacity(log.len() + 1);
        for entry in log {
            let position = entry.position;
            let before = entry.field("p").and_then(parse_position);
            if records.is_empty() {
                match before {
                    Some(before) if before > at => records.push(Committed {
                        position: before,
                        record: Record::Skipped,
                    }),
                    Some(before) if before < at => tracing::warn!(
                        %at, %position,
                        "the Redis log lost records this node had seen (a failover without the \
                         last writes?); reading on from the new ones"
                    ),
                    _ => {}
                }
            }
            records.push(Committed {
                position,
                record: record_of(entry)?,
            });
            at = position;
        }
        inner.saw(at);
        if inner.options.replicas > 0 {
            replicated(inner, &mut connection, at).await?;
        }
        inner.hot.feed(follows, &records);
        if sender.send(Ok(records)).await.is_err() {
            return Ok(()); // the reader is gone
        }
    }
}

/// Waits until the configured number of replicas hold everything read so far, so this node
/// delivers nothing a failover could still take back (the publisher of such an event got a
/// `503`, and its retry may be stored again under a new id). `WAIT` counts a connection's own
/// writes, so the tail first writes where it stands (one small key per node, which also shows
/// an operator how far each node has read).
async fn replicated(
    inner: &Inner,
    connection: &mut redis::aio::MultiplexedConnection,
    at: Position,
) -> Result<(), EngineError> {
    let wanted = inner.options.replicas;
    let wait = inner.link.timeout() / 2;
    let key = format!("{}tail:{}", inner.keys.base, inner.node);
    loop {
        let acked: usize = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(at.to_string())
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(wanted)
            .arg(wait.as_millis() as u64)
            .query_async::<(usize,)>(connection)
            .await
            .map(|(acked,)| acked)
            .map_err(|e| {
                EngineError::unavailable(format!(
                    "waiting for Redis replicas ({}) failed: {e}",
                    inner.link.target()
                ))
            })?;
        if acked >= wanted || inner.is_closed() {
            return Ok(());
        }
        tracing::debug!(acked, wanted, %at, "holding back records until replicas have them");
    }
}

/// The log's entries out of an `XREAD` answer; `None` when it timed out empty.
fn log_entries(reply: Value) -> Result<Option<Value>, EngineError> {
    match reply {
        Value::Nil => Ok(None),
        Value::Array(mut streams) => {
            let Some(Value::Array(mut stream)) = streams.pop() else {
                return Ok(None);
            };
            stream
                .pop()
                .map(Some)
                .ok_or_else(|| unexpected("an XREAD answer without entries"))
        }
        Value::Map(mut streams) => Ok(streams.pop().map(|(_, entries)| entries)),
        _ => Err(unexpected("an XREAD answer of an unknown shape")),
    }
}
