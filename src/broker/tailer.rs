//! The node's one tailer: it reads what the engine committed, in order, and makes it live here.
//!
//! For each committed event it raises the visible watermark, then sends the event to the live
//! channels; for each seal or delete it tells the channels of that stream. Nothing else feeds
//! them. So an event reaches this node's subscribers the same way whether this node published it
//! or another did, and the watermark means the same everywhere: every event at or below it can be
//! read from the engine, every later one will come through the channels. Publishers wait for the
//! watermark to pass their events (see [`Shared::visible_through`]), so a `201` is followed by
//! reads that see it.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;

use super::engine::{Committed, Position, Record};
use super::Shared;

/// Waits between attempts to re-open a tail that failed, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MOST: Duration = Duration::from_secs(2);

/// Follows the engine's tail from `from` until the engine closes or the broker is gone. It holds
/// the broker only while it applies records, so dropping every handle still closes the engine.
pub(crate) async fn run(shared: Weak<Shared>, from: Position) {
    let mut at = from;
    let mut retry = RETRY_FIRST;
    let mut failing = false;
    loop {
        let Some(mut tail) = shared.upgrade().map(|s| s.engine.tail(at)) else {
            return;
        };
        loop {
            match tail.next().await {
                Some(Ok(records)) => {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    retry = RETRY_FIRST;
                    if std::mem::take(&mut failing) {
                        tracing::info!(position = %at, "the engine's tail is back");
                    }
                    for record in records {
                        if record.position > at {
                            at = record.position;
                            apply(&shared, record);
                        }
                    }
                    shared.visible_changed.notify_waiters();
                }
                Some(Err(e)) => {
                    // Once per outage: a store away for a minute is not a thousand lines.
                    if std::mem::replace(&mut failing, true) {
                        tracing::debug!(error = %e, position = %at, "the engine's tail failed again");
                    } else {
                        tracing::warn!(error = %e, position = %at, "the engine's tail failed; reopening it until it is back");
                    }
                    break;
                }
                None => return, // the engine closed
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MOST);
    }
}

fn apply(shared: &Shared, committed: Committed) {
    match committed.record {
        Record::Event(event) => {
            // Raised before the send: a subscription that reads the watermark after this finds
            // the event in the log, one that joined before gets it from its channel.
            shared.visible.store(event.id.0, Ordering::Release);
            shared.metrics.published.inc();
            let now = super::event::now_millis() / 1000;
            let first_this_second = match shared.published.get_mut(&event.stream) {
                Some(mut activity) => activity.bump(now),
                None => shared
                    .published
                    .entry(event.stream.clone())
                    .or_default()
                    .bump(now),
            };
            if first_this_second {
                shared.recent.add(now, &event.stream);
            }
            shared.fanout.send(&event);
        }
        Record::Sealed(stream) => shared.fanout.send_closed(&stream, None),
        Record::Deleted(stream) => {
            let epoch = {
                let mut epoch = shared.deletions.entry(stream.clone()).or_insert(0);
                *epoch += 1;
                *epoch
            };
            shared.fanout.send_closed(&stream, Some(epoch));
        }
        // Settings and trims are read from the engine when they matter (the gap check).
        Record::Settings(..) | Record::Trimmed { .. } => {}
        Record::Skipped => {
            // Events up to here are in the log; every subscription reads them from there.
            shared
                .visible
                .fetch_max(committed.position.id.0, Ordering::AcqRel);
            shared.fanout.send_resync();
        }
    }
}
