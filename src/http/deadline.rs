//! A write deadline for a connection: a peer that accepts no bytes for `--peer-timeout` while
//! herald has something to send is dropped by herald itself. `TCP_USER_TIMEOUT` does the same
//! only on Linux, and only for data the kernel is retransmitting — a peer that acknowledges
//! packets but never reads (its receive window stays shut) is not covered by it.
//!
//! The direct writer ([`direct`](super::direct)) bounds each of its writes; connections hyper
//! serves (plain and TLS) get their socket wrapped in [`Deadline`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The error a stalled peer ends its connection with.
pub(super) fn stalled(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the peer accepted no bytes for {:.1} s (--peer-timeout)",
            limit.as_secs_f64()
        ),
    )
}

/// `io` whose writes fail once one has waited `limit` without a byte going out. Reads pass
/// through. The timer exists only while a write is waiting, so an idle connection carries one
/// pointer for it.
pub(super) struct Deadline<IO> {
    io: IO,
    limit: Option<Duration>,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<IO> Deadline<IO> {
    /// `limit: None` leaves writes unbounded.
    pub(super) fn new(io: IO, limit: Option<Duration>) -> Deadline<IO> {
        Deadline {
            io,
            limit,
            waiting: None,
        }
    }

    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Pending => {
                let Some(limit) = self.limit else {
                    return Poll::Pending;
                };
                let timer = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(stalled(limit))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(result) => {
                // Only progress restarts the clock; a failed write is the end anyway.
                if matches!(result, Ok(n) if n > 0) {
                    self.waiting = None;
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Deadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Deadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_restarts_the_clock() {
        // A pipe of 64 bytes that nobody reads: the second write waits forever.
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = Deadline::new(near, Some(Duration::from_secs(5)));
        io.write_all(&[0; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = io.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        // Reading a little lets a write through; the clock starts again from there.
        let mut io = Deadline::new(io.io, Some(Duration::from_secs(5)));
        let mut drained = [0u8; 64];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut drained)
            .await
            .unwrap();
        io.write_all(&[0; 64]).await.unwrap();
        assert!(io.waiting.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_writes_wait() {
        let (near, _far) = tokio::io::duplex(8);
        let mut io = Deadline::new(near, None);
        io.write_all(&[0; 8]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(3600), io.write_all(&[0; 1])).await;
        assert!(waited.is_err(), "still waiting after an hour");
    }
}
