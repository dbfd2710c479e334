//! The time source of the policies that measure time without sleeping.
//!
//! Policies sleep with `tokio::time`, and read the time through a [`Clock`], by default
//! [`TokioClock`]. Both follow tokio's paused clock, so a test that starts paused and calls
//! `tokio::time::advance` drives every timing behaviour deterministically. [`ManualClock`] serves
//! tests of the synchronous entry points that run outside a runtime.
//!
//! Statistics windows (a breaker's failure rate, a retry budget) are touched on every call, where
//! even a vDSO clock read costs more than the rest of the work together (35 ns against a few).
//! Unless a clock is injected, they read [`recent_nanos`]: a value a background thread refreshes
//! every [`RECENT_RESOLUTION`], read with one atomic load. nginx caches its time per event-loop
//! turn for the same reason.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
        self.elapsed_nanos
            .fetch_add(saturating_nanos(by), Ordering::SeqCst);
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

/// How often the cached clock of [`recent_nanos`] is refreshed.
pub const RECENT_RESOLUTION: Duration = Duration::from_millis(5);

/// The cached time, in nanoseconds since `ORIGIN`; kept fresh by the clock thread.
static RECENT: AtomicU64 = AtomicU64::new(0);
static ORIGIN: OnceLock<Instant> = OnceLock::new();
/// Whether the clock thread runs; if it could not be started, readers fall back to the clock.
static REFRESHED: AtomicBool = AtomicBool::new(false);

/// The origin of the cached clock's timeline; the first call starts the thread that keeps the
/// cached time fresh.
fn origin() -> Instant {
    *ORIGIN.get_or_init(|| {
        let origin = Instant::now();
        let started = std::thread::Builder::new()
            .name("rampart-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RECENT_RESOLUTION);
                    refresh(origin);
                }
            });
        REFRESHED.store(started.is_ok(), Ordering::Release);
        origin
    })
}

/// Brings the cached time up to now. Never moves it back, whichever of two refreshes lands last.
fn refresh(origin: Instant) {
    RECENT.fetch_max(saturating_nanos(origin.elapsed()), Ordering::Relaxed);
}

/// Whether the cached clock is kept fresh (its thread could be started).
fn refreshed() -> bool {
    origin();
    REFRESHED.load(Ordering::Acquire)
}

/// Nanoseconds since a process-wide origin, lagging real time by [`RECENT_RESOLUTION`] or so
/// (more only while the machine is too starved to run the refreshing thread).
///
/// The first call starts the thread that keeps it fresh. It follows real time, never tokio's
/// paused clock: code that must be tested on a paused clock takes an injected [`Clock`] instead.
#[inline]
pub fn recent_nanos() -> u64 {
    if refreshed() {
        RECENT.load(Ordering::Relaxed)
    } else {
        precise_nanos()
    }
}

/// Nanoseconds on [`recent_nanos`]'s timeline, read from the clock itself: exact, and as costly
/// as a clock read.
pub(crate) fn precise_nanos() -> u64 {
    saturating_nanos(origin().elapsed())
}

/// Where a policy that counts time in nanoseconds reads it.
#[derive(Clone, Debug)]
pub(crate) enum TimeSource {
    /// The process-wide cached clock: real time, a few milliseconds stale at most, and
    /// [`precise_nanos`] on the same timeline when that is not good enough.
    Recent,
    /// An injected clock (tests, or a user who wants it), read on every call.
    Clock { clock: SharedClock, origin: Instant },
}

impl TimeSource {
    pub(crate) fn new(clock: Option<SharedClock>) -> TimeSource {
        match clock {
            // Started now, so that reading it on the hot path needs no check.
            None if refreshed() => TimeSource::Recent,
            // No thread to keep a cached clock fresh: read tokio's clock each time instead.
            None => TimeSource::new(Some(tokio_clock())),
            Some(clock) => {
                let origin = clock.now();
                TimeSource::Clock { clock, origin }
            }
        }
    }

    /// The time, cheaply: never ahead of the real time, usually behind it by less than
    /// [`RECENT_RESOLUTION`].
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            TimeSource::Recent => RECENT.load(Ordering::Relaxed),
            TimeSource::Clock { clock, origin } => {
                saturating_nanos(clock.now().saturating_duration_since(*origin))
            }
        }
    }

    /// The time, exactly.
    pub(crate) fn precise_nanos(&self) -> u64 {
        match self {
            TimeSource::Recent => precise_nanos(),
            TimeSource::Clock { .. } => self.nanos(),
        }
    }
}

/// `now + after`, or about thirty years from now when that does not fit in an `Instant`: a
/// setting of `Duration::MAX` means "never", not a panic.
pub(crate) fn saturating_after(now: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    now.checked_add(after)
        .unwrap_or_else(|| now.checked_add(FAR).unwrap_or(now))
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
#[inline]
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

    #[test]
    fn a_refresh_brings_the_cached_clock_up_to_now_and_never_back() {
        let before = precise_nanos();
        refresh(origin());
        let refreshed = recent_nanos();
        assert!(
            refreshed >= before,
            "the cached clock is not behind the last refresh"
        );
        assert!(
            refreshed <= precise_nanos(),
            "nor ever ahead of the real time"
        );
    }
}
