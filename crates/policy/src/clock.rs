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
//! turn for the same reason. The thread sleeps once nobody has read the value for 100 to 200 ms,
//! and the next read, which then reads the clock itself, wakes it: an idle process is not woken
//! 200 times a second.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The cached time, kept fresh by the clock thread.
static RECENT: Cached = Cached::new();
static ORIGIN: OnceLock<Instant> = OnceLock::new();
/// The clock thread, for a reader to wake it; set once it runs. Readers fall back to the clock
/// if it could not be started.
static REFRESHER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Refreshes between two checks that somebody still reads the cached clock: after two checks
/// with no read between them (100 to 200 ms of silence) the thread sleeps until the next read,
/// so that an idle process is not woken 200 times a second for nothing.
const PROBE_EVERY: u32 = 20;

/// The origin of the cached clock's timeline; the first call starts the thread that keeps the
/// cached time fresh.
fn origin() -> Instant {
    *ORIGIN.get_or_init(|| {
        let origin = Instant::now();
        let started = std::thread::Builder::new()
            .name("rampart-clock".into())
            .spawn(move || {
                // Set here too, so that it is set before this thread can ever park.
                let _ = REFRESHER.set(std::thread::current());
                let mut refreshes = 0u32;
                loop {
                    std::thread::sleep(RECENT_RESOLUTION);
                    refreshes = refreshes.wrapping_add(1);
                    let probe = refreshes.is_multiple_of(PROBE_EVERY);
                    if RECENT.refresh(elapsed_nanos(origin), probe) == Refreshed::Parked {
                        // Unparked by the first reader; park() may also return spuriously.
                        while RECENT.is_parked() {
                            std::thread::park();
                        }
                        refreshes = 0;
                    }
                }
            });
        if let Ok(handle) = started {
            let _ = REFRESHER.set(handle.thread().clone());
        }
        origin
    })
}

fn elapsed_nanos(origin: Instant) -> u64 {
    saturating_nanos(origin.elapsed())
}

/// Brings the cached time up to now, as the clock thread does.
#[cfg(test)]
fn refresh(origin: Instant) {
    RECENT.refresh(elapsed_nanos(origin), false);
}

/// Whether the cached clock is kept fresh (its thread could be started).
fn refreshed() -> bool {
    origin();
    REFRESHER.get().is_some()
}

/// Nanoseconds since a process-wide origin, lagging real time by [`RECENT_RESOLUTION`] or so
/// (more only while the machine is too starved to run the refreshing thread).
///
/// The first call starts the thread that keeps it fresh. It follows real time, never tokio's
/// paused clock: code that must be tested on a paused clock takes an injected [`Clock`] instead.
#[inline]
pub fn recent_nanos() -> u64 {
    if refreshed() {
        RECENT.read()
    } else {
        precise_nanos()
    }
}

// === Cached ===

/// The cached clock's one word: the time in nanoseconds, whose two low bits (4 ns of a clock
/// refreshed every 5 ms) carry the flags by which the thread learns whether anyone still reads.
struct Cached(AtomicU64);

/// Set by the thread every [`PROBE_EVERY`] refreshes, cleared by the first read after.
const PROBE: u64 = 1;
/// The thread sleeps: the next read reads the clock itself and wakes the thread.
const PARKED: u64 = 2;
const FLAGS: u64 = PROBE | PARKED;

/// What a refresh did.
#[derive(Debug, PartialEq, Eq)]
enum Refreshed {
    Fresh,
    /// Nobody read since the last probe: the thread is to park until a reader wakes it.
    Parked,
}

impl Cached {
    const fn new() -> Cached {
        Cached(AtomicU64::new(0))
    }

    /// The cached time: one load, and a test that the thread asks nothing of this read.
    #[inline]
    fn read(&self) -> u64 {
        let word = self.0.load(Ordering::Relaxed);
        if word & FLAGS == 0 {
            return word;
        }
        self.read_flagged(word, precise_nanos, || {
            if let Some(thread) = REFRESHER.get() {
                thread.unpark();
            }
        })
    }

    /// A read that answers the thread: clears the probe, or, if the thread is parked, reads
    /// the time with `now`, stores it and wakes the thread with `wake` (the first reader to
    /// find it parked does).
    #[cold]
    #[inline(never)]
    fn read_flagged(&self, word: u64, now: impl FnOnce() -> u64, wake: impl FnOnce()) -> u64 {
        if word & PARKED == 0 {
            self.0.fetch_and(!PROBE, Ordering::Relaxed);
            return word & !FLAGS;
        }
        let now = now() & !FLAGS;
        let before = self
            .0
            .fetch_update(Ordering::Release, Ordering::Relaxed, |word| {
                Some((word & !FLAGS).max(now))
            })
            .expect("the update always applies");
        if before & PARKED != 0 {
            wake();
        }
        now.max(before & !FLAGS)
    }

    /// The thread's refresh to `now`, probing whether anyone reads if `probe`: a probe still
    /// unanswered from the last one parks the thread.
    fn refresh(&self, now: u64, probe: bool) -> Refreshed {
        let now = now & !FLAGS;
        let mut parked = false;
        self.0
            .fetch_update(Ordering::Release, Ordering::Relaxed, |word| {
                let time = (word & !FLAGS).max(now);
                parked = probe && word & PROBE != 0;
                Some(match (probe, parked) {
                    (true, true) => time | PARKED,
                    (true, false) => time | PROBE,
                    (false, _) => time | (word & PROBE),
                })
            })
            .expect("the update always applies");
        if parked {
            Refreshed::Parked
        } else {
            Refreshed::Fresh
        }
    }

    fn is_parked(&self) -> bool {
        self.0.load(Ordering::Acquire) & PARKED != 0
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
            TimeSource::Recent => RECENT.read(),
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
            refreshed >= before & !FLAGS,
            "the cached clock is not behind the last refresh (but for its flag bits)"
        );
        assert!(
            refreshed <= precise_nanos(),
            "nor ever ahead of the real time"
        );
    }

    #[test]
    fn a_read_answers_the_probe_and_keeps_the_thread_awake() {
        let cached = Cached::new();
        assert_eq!(cached.refresh(1_000, true), Refreshed::Fresh);
        assert_eq!(
            cached.read(),
            1_000,
            "the flag bits are not part of the time"
        );
        assert_eq!(cached.refresh(2_000, false), Refreshed::Fresh);
        assert_eq!(cached.refresh(3_000, true), Refreshed::Fresh);
        assert!(!cached.is_parked());
    }

    #[test]
    fn a_probe_unanswered_until_the_next_parks_the_thread() {
        let cached = Cached::new();
        assert_eq!(cached.refresh(1_000, true), Refreshed::Fresh);
        // Refreshes between probes keep the question open.
        assert_eq!(cached.refresh(2_000, false), Refreshed::Fresh);
        assert_eq!(cached.refresh(3_000, true), Refreshed::Parked);
        assert!(cached.is_parked());
    }

    #[test]
    fn the_first_read_of_a_parked_clock_reads_the_time_and_wakes_the_thread_once() {
        let cached = Cached::new();
        cached.refresh(1_000, true);
        cached.refresh(2_000, true);
        let stale = cached.0.load(Ordering::Relaxed);
        let mut wakes = 0;
        assert_eq!(cached.read_flagged(stale, || 9_000, || wakes += 1), 9_000);
        assert_eq!(wakes, 1);
        assert!(!cached.is_parked());
        assert_eq!(
            cached.read(),
            9_000,
            "later reads find the time the first one stored"
        );
        // A second reader that saw the thread parked before the first woke it: it reads the
        // clock too, and does not wake the thread again.
        assert_eq!(cached.read_flagged(stale, || 9_500, || wakes += 1), 9_500);
        assert_eq!(wakes, 1);
    }

    #[test]
    fn the_cached_time_never_goes_back() {
        let cached = Cached::new();
        cached.refresh(5_000, false);
        cached.refresh(4_000, false);
        assert_eq!(cached.read(), 5_000);
        cached.refresh(6_000, true);
        cached.refresh(7_000, true);
        assert!(cached.is_parked());
        let parked = cached.0.load(Ordering::Relaxed);
        assert_eq!(cached.read_flagged(parked, || 3_000, || ()), 7_000);
    }
}
