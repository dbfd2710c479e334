//! The time source of the policies that measure time without sleeping.
//!
//! Policies sleep with `tokio::time`, and read the time through a [`Clock`], by default
//! [`TokioClock`]. Both follow tokio's paused clock, so a test that starts paused and calls
//! `tokio::time::advance` drives every timing behaviour deterministically. [`ManualClock`] serves
//! tests of the synchronous entry points that run outside a runtime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Instant;
}

/// A clock shared by the policies that hold one.
pub type SharedClock = Arc<dyn Clock>;

/// Tokio's clock: real time in production, the paused clock in tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests outside a tokio runtime.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    elapsed_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing still at the moment it is made.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            origin: Instant::now(),
            elapsed_nanos: AtomicU64::new(0),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }
}

/// The default clock as a [`SharedClock`].
pub fn tokio_clock() -> SharedClock {
    Arc::new(TokioClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - start, Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_the_paused_clock() {
        let start = TokioClock.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(TokioClock.now() - start, Duration::from_secs(3));
    }
}
