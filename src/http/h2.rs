//! HTTP/2 connections: hyper serves them; this adds what hyper's HTTP/2 server leaves out — an
//! idle timeout. A connection that has had no open stream (no request in flight, no SSE
//! response running) for `--idle-timeout` is closed with a GOAWAY, as nginx's
//! `keepalive_timeout` does for HTTP/2; one that carries an `EventSource` is never idle. hyper
//! already sends keep-alive pings (every heartbeat interval, the connection ends when one goes
//! unanswered for as long) and caps concurrent streams (see `listener::http2_builder`).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The streams open on one HTTP/2 connection, and since when it has had none.
pub(super) struct Streams {
    open: AtomicUsize,
    /// When the last stream ended (or the connection opened).
    idle_since: Mutex<Instant>,
    changed: Notify,
}

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    /// A stream opens; it stays open until the guard is dropped (with its response body).
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        StreamGuard(self.clone())
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the connection has had no open stream for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let since = self.idle_since();
            tokio::select! {
                () = tokio::time::sleep_until(since + timeout) => {
                    if self.open.load(Ordering::Acquire) == 0 && self.idle_since() == since {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// One open stream of a connection.
pub(super) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        // The time first: a watcher that sees no open stream also sees when that began.
        *streams.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        streams.open.fetch_sub(1, Ordering::AcqRel);
        streams.changed.notify_waiters();
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
pub(super) struct Tracked<B> {
    body: B,
    _stream: StreamGuard,
}

impl<B> Tracked<B> {
    pub fn new(body: B, stream: StreamGuard) -> Tracked<B> {
        Tracked {
            body,
            _stream: stream,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_open_streams_for_the_whole_timeout() {
        let streams = Streams::new();
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        let stream = streams.open();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!idle.is_finished(), "a stream is open: never idle");
        drop(stream);
        let closed = Instant::now();
        idle.await.unwrap();
        assert_eq!(
            closed.elapsed(),
            timeout,
            "idle from when the last stream ended"
        );
        assert!(started.elapsed() >= Duration::from_secs(130));

        // A stream that opens and ends during the wait starts the wait again.
        drop(streams.open());
        let waited = Instant::now();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(streams.open());
        idle.await.unwrap();
        assert_eq!(waited.elapsed(), Duration::from_secs(50));
    }
}
