//! The header read timeout of one HTTP/1.1 connection, counted as nginx counts its
//! `client_header_timeout`: from the connection's start for the first request, and from the
//! first byte of each later one.
//!
//! hyper starts its header read timeout as soon as it waits for a head, so a keep-alive
//! connection waiting for its next request was closed after `header_read_timeout` (10 s by
//! default) however long `idle_timeout` allowed (60 s by default). A client's pool keeps its
//! connections for a minute or more (Go's for 90 s): it met connections closed under it, and a
//! request written on one as it closed failed, which a client retries only when it knows the
//! request was idempotent. Between two requests the listener's `idle_timeout` now governs
//! (`listener.rs`); the head's own timeout starts with its first byte, which the connection's
//! [`StrictIo`](crate::strict::StrictIo) sees ([`Quiet::between_requests`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Sleep, Timer};

use crate::strict::Quiet;
use crate::turn;

/// hyper's timer for one HTTP/1.1 connection, whose only use of it is the header read timeout.
pub(crate) struct HeadTimer {
    quiet: Arc<Quiet>,
    /// No head has been waited for yet on this connection.
    first: AtomicBool,
}

impl HeadTimer {
    /// The timer of the connection whose reads `quiet` follows.
    pub(crate) fn new(quiet: Arc<Quiet>) -> HeadTimer {
        HeadTimer {
            quiet,
            first: AtomicBool::new(true),
        }
    }
}

#[expect(
    clippy::disallowed_types,
    reason = "hyper's Timer speaks std's Instant; tokio's converts to it"
)]
impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep::new(duration, None))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let timeout = deadline.saturating_duration_since(self.now());
        // The first head counts from the connection's start: a client that connects and sends
        // nothing is let go at the timeout.
        let waiting = (!self.first.swap(false, Relaxed)).then(|| self.quiet.clone());
        Box::pin(HeadSleep::new(timeout, waiting))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: std::time::Instant) {
        let timeout = new_deadline.saturating_duration_since(self.now());
        if let Some(sleep) = sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            sleep.rearm(timeout, Some(self.quiet.clone()));
        }
    }

    fn now(&self) -> std::time::Instant {
        turn::now().into_std()
    }
}

pin_project_lite::pin_project! {
    /// A header read timeout: `timeout` from now, or, while `waiting`, from the first byte of
    /// the head.
    pub(crate) struct HeadSleep {
        // The connection's reads, until the head's first byte.
        waiting: Option<Arc<Quiet>>,
        timeout: Duration,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl HeadSleep {
    fn new(timeout: Duration, waiting: Option<Arc<Quiet>>) -> HeadSleep {
        HeadSleep {
            waiting,
            timeout,
            // Its deadline is set again when the first byte comes; a sleep is registered with
            // the timer only once polled.
            sleep: tokio::time::sleep_until(turn::now() + timeout),
        }
    }

    fn rearm(self: Pin<&mut Self>, timeout: Duration, waiting: Option<Arc<Quiet>>) {
        let this = self.project();
        *this.waiting = waiting;
        *this.timeout = timeout;
        this.sleep.reset(turn::now() + timeout);
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(quiet) = this.waiting {
            // No wake-up of its own is needed until the first byte: hyper polls this only after
            // a read that found no whole head, and that read wakes the task when bytes come.
            if quiet.between_requests() {
                return Poll::Pending;
            }
            // The head has begun: it has the whole timeout from now.
            this.sleep.as_mut().reset(turn::now() + *this.timeout);
            *this.waiting = None;
        }
        this.sleep.poll(cx)
    }
}

impl Sleep for HeadSleep {}
