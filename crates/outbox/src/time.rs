//! The store's time: wall-clock milliseconds, read through an injected clock.
//!
//! A stored time must still mean something after a restart (when a message was accepted, when its
//! next attempt is due, when a tombstone may go), so the store counts in [`Timestamp`]s:
//! milliseconds since the Unix epoch. A monotonic `Instant` means nothing across processes.
//!
//! Yet every timing behaviour must be testable on tokio's paused clock. A [`StoreClock`] therefore
//! reads the wall clock once, when it is made, and from then on adds the time elapsed on an
//! injected [`Clock`](rampart_policy::clock::Clock) (tokio's, by default): production follows real time without ever seeing the
//! wall clock step, and a test that pauses tokio's clock and advances it moves the store's time
//! exactly. Tests anchor the clock at a chosen timestamp instead ([`StoreClock::starting_at`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rampart_policy::clock::{SharedClock, TokioClock};
use tokio::time::Instant;

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The time `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(d)))
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl StoreClock ===

/// Wall-clock time that moves with an injected [`Clock`](rampart_policy::clock::Clock). Cheap to clone.
#[derive(Clone)]
pub struct StoreClock {
    clock: SharedClock,
    /// The injected clock's reading when this clock was made ...
    origin: Instant,
    /// ... and the wall-clock time it stands for.
    at_origin: Timestamp,
}

impl StoreClock {
    /// Real time: the system's wall clock, read once now, moving with tokio's clock.
    pub fn system() -> StoreClock {
        StoreClock::starting_at(Arc::new(TokioClock), wall_clock_now())
    }

    /// A clock that reads `at` now and moves with `clock`.
    pub fn starting_at(clock: SharedClock, at: Timestamp) -> StoreClock {
        let origin = clock.now();
        StoreClock {
            clock,
            origin,
            at_origin: at,
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.at_origin
            .saturating_add(self.clock.now().saturating_duration_since(self.origin))
    }

    /// The tokio instant at which this clock will read `at` (now, if that is past), to sleep
    /// until a message is due.
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        let now = self.now();
        self.clock.now() + at.saturating_since(now)
    }
}

impl fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

/// The system's wall clock: read once per [`StoreClock::system`], the one place the crate looks at
/// it, because stored times must outlive the process (see the module docs).
#[allow(clippy::disallowed_types)]
fn wall_clock_now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(millis(since_epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_with_tokios_paused_clock() {
        let clock = StoreClock::starting_at(Arc::new(TokioClock), Timestamp::from_millis(5_000));
        assert_eq!(clock.now(), Timestamp::from_millis(5_000));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(6_500));
        let wake = clock.instant_at(Timestamp::from_millis(7_000));
        assert_eq!(wake - Instant::now(), Duration::from_millis(500));
        assert_eq!(
            clock.instant_at(Timestamp::from_millis(1)),
            Instant::now(),
            "a past time is now"
        );
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        let clock = StoreClock::system();
        assert!(clock.now() > Timestamp::from_millis(1_577_836_800_000));
    }
}
