//! A client connection cut off once it has taken none of what rampart writes for the listener's
//! `body_idle_timeout` (the admin API's connections too, with a bound of their own).
//!
//! A client that never reads holds what is written to it in the kernel's buffers, then blocks
//! every write. No timer above the connection sees it: hyper stops polling a response body (and
//! with it the route's deadline) while its writes wait, and an HTTP/2 GOAWAY or a SETTINGS
//! acknowledgement that cannot be written keeps an idle connection open for ever. Timing the
//! wait of each blocked write here, below hyper, ends all of them: past the timeout the write
//! fails, and hyper closes the connection. A client that reads slowly makes progress with every
//! write taken, which starts the count again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::turn;

/// Resolves once `look` has given the same count at two looks `period` apart, the first made at
/// once: between one and two periods after the count last moved. A look of `None` (nothing to
/// watch now) starts the count over.
pub(crate) async fn unmoved_for(period: Duration, look: impl Fn() -> Option<u64>) {
    let mut seen = look();
    loop {
        tokio::time::sleep(period).await;
        let now = look();
        if now.is_some() && now == seen {
            return;
        }
        seen = now;
    }
}

pin_project_lite::pin_project! {
    /// A client connection whose writes fail after waiting `timeout` without taking a byte.
    pub struct StallIo<T> {
        #[pin]
        inner: T,
        timeout: Duration,
        // Armed when a write starts to wait; disarmed by any write that goes through. Made at
        // the first wait only (boxed, so that the connection stays `Unpin`), and reused.
        stall: Option<Pin<Box<Sleep>>>,
        stalled: bool,
    }
}

impl<T> StallIo<T> {
    /// `inner`, its writes failing once one has waited `timeout` without a byte taken.
    pub fn new(inner: T, timeout: Duration) -> StallIo<T> {
        StallIo {
            inner,
            timeout,
            stall: None,
            stalled: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> StallIo<T> {
    // What a write that returned `written` answers: `written`, unless it has waited too long.
    fn timed<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        written: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let this = self.project();
        if written.is_ready() {
            *this.stalled = false;
            return written;
        }
        let deadline = turn::now() + *this.timeout;
        let stall = this
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.stalled {
            stall.as_mut().reset(deadline);
            *this.stalled = true;
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing written to it within the stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead> AsyncRead for StallIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for StallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.as_mut().project().inner.poll_write(cx, buf);
        self.timed(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.timed(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A flush comes after the writes it follows went through; a socket's takes no wait.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_fails_the_write_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(16);
        let mut io = StallIo::new(near, TIMEOUT);
        let started = Instant::now();
        let err = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_slowly_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut read = 0;
            while read < 64 {
                // Each piece is taken a little before the timeout would pass.
                tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
                read += far.read(&mut buf).await.unwrap();
            }
        });
        let mut io = StallIo::new(near, TIMEOUT);
        io.write_all(&[0; 64]).await.unwrap();
        reader.await.unwrap();
    }
}
