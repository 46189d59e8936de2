//! Retention in a cluster: one node at a time — the one holding a lease in Redis — trims the
//! streams that are due (`{p}:due`, kept by every append and trim), so the work grows with what
//! needs trimming, not with the number of streams or of nodes. When the holder dies, its lease
//! runs out and another node takes over.

use std::sync::Weak;
use std::time::Duration;

use super::{limit_arg, Inner};
use crate::broker::event::{now_millis, StreamName};

/// Streams trimmed per round, and events removed per stream per call, at most.
const STREAMS_PER_ROUND: usize = 256;
const BUDGET: usize = 10_000;

pub(super) async fn run(inner: Weak<Inner>) {
    let Some(holder) = inner.upgrade().map(|i| i.node.clone()) else {
        return;
    };
    loop {
        let Some(every) = inner.upgrade().map(|i| i.options.trim_every) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        if let Err(e) = round(&inner, &holder).await {
            tracing::debug!(error = %e, "retention in Redis skipped a round");
        }
    }
}

async fn round(inner: &Inner, holder: &str) -> Result<(), crate::broker::engine::EngineError> {
    let ttl = (inner.options.trim_every * 3).max(Duration::from_secs(3));
    let mut lease = inner.scripts.lease.prepare_invoke();
    lease
        .key(&inner.keys.lease)
        .arg(holder)
        .arg(ttl.as_millis() as u64);
    let held: bool = inner
        .link
        .call(|mut c| async move { lease.invoke_async(&mut c).await })
        .await?;
    if !held {
        return Ok(());
    }
    let due_key = inner.keys.due.clone();
    let now = now_millis();
    let due: Vec<String> = inner
        .link
        .call(|mut c| async move {
            redis::cmd("ZRANGE")
                .arg(&due_key)
                .arg("-inf")
                .arg(now)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(STREAMS_PER_ROUND)
                .query_async(&mut c)
                .await
        })
        .await?;
    let retention = inner.options.retention;
    for name in due {
        let Ok(stream) = StreamName::new(&name) else {
            continue;
        };
        let fence = inner.fence();
        let mut trim = inner.scripts.trim.prepare_invoke();
        trim.key(&inner.keys.head)
            .key(&inner.keys.log)
            .key(inner.keys.events(&stream))
            .key(inner.keys.meta(&stream))
            .key(&inner.keys.due)
            .arg(fence.id.0)
            .arg(fence.seq)
            .arg(inner.options.log_len)
            .arg(stream.as_str())
            .arg(limit_arg(retention.max_len))
            .arg(limit_arg(retention.max_age_ms))
            .arg(BUDGET);
        let removed: u64 = inner
            .link
            .call(|mut c| async move { trim.invoke_async(&mut c).await })
            .await?;
        if removed > 0 {
            tracing::debug!(%stream, removed, "retention trimmed");
        }
    }
    Ok(())
}
