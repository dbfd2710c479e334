//! A lock-free record of recent latencies, for policies that act on percentiles.
//!
//! A hedge that fires at the 95th percentile, or a dashboard showing p99, needs the distribution
//! of *recent* latencies, read while many threads keep adding to it. [`LatencyRecorder`] keeps
//! counts in fixed log-linear buckets, so recording is a couple of atomic increments, nothing is
//! allocated after construction, and a percentile is exact to within
//! [`LatencyRecorder::PRECISION`] of the true value.
//!
//! # Buckets
//!
//! Every power of two of nanoseconds from 1.024 µs to 137 s is split into 16 equal buckets, so a
//! bucket is at most 1/16 as wide as the values it holds. A percentile is reported as the middle
//! of the bucket that holds it, hence within 1/32 (3.125%) of the exact value. Latencies below
//! [`LatencyRecorder::MIN`] are counted in the lowest bucket and those above
//! [`LatencyRecorder::MAX`] in the highest.
//!
//! # Window
//!
//! The recorder keeps two generations, each covering half of the window, and forgets the older
//! one as time passes through an injected [`SharedClock`]: percentiles describe at least the last
//! half window and never anything older than the window. A sample recorded at the very instant a
//! generation is recycled may be lost; the recorder is a statistic, not a ledger.
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::clock::tokio_clock;
//! use rampart_policy::latency::LatencyRecorder;
//!
//! let recorder = LatencyRecorder::new(Duration::from_secs(10), tokio_clock()).unwrap();
//! for ms in 1..=100 {
//!     recorder.record(Duration::from_millis(ms));
//! }
//! let p90 = recorder.percentile(90.0).unwrap();
//! assert!(p90.abs_diff(Duration::from_millis(90)) <= Duration::from_millis(90).div_f64(32.0));
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::SharedClock;

/// Each power of two is split into `2^SUB_BITS` linear buckets.
const SUB_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// The lowest power of two tracked: 2^10 ns = 1.024 µs.
const MIN_OCTAVE: u32 = 10;
/// The highest power of two tracked: up to 2^37 ns, about 137 s.
const MAX_OCTAVE: u32 = 36;
const BUCKETS: usize = (MAX_OCTAVE - MIN_OCTAVE + 1) as usize * SUB_BUCKETS;
const MIN_NANOS: u64 = 1 << MIN_OCTAVE;
const MAX_NANOS: u64 = (1 << (MAX_OCTAVE + 1)) - 1;

/// A lock-free, fixed-size record of the latencies of the last window.
///
/// `Sync`: share it behind an `Arc` and record from any thread.
pub struct LatencyRecorder {
    clock: SharedClock,
    origin: Instant,
    generation_nanos: u64,
    /// The generation number (time since `origin` / generation length) last seen; the generation
    /// `epoch % 2` is the current one.
    epoch: AtomicU64,
    generations: [Generation; 2],
}

struct Generation {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
}

/// The window given to [`LatencyRecorder::new`] was zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the latency window must be longer than zero")]
pub struct InvalidWindow {
    _priv: (),
}

// === impl LatencyRecorder ===

impl LatencyRecorder {
    /// The largest relative error of a reported percentile: 1/32 (3.125%) of the exact value,
    /// for latencies between [`MIN`](Self::MIN) and [`MAX`](Self::MAX).
    pub const PRECISION: f64 = 1.0 / 32.0;

    /// The smallest latency told apart; shorter ones count as this one.
    pub const MIN: Duration = Duration::from_nanos(MIN_NANOS);

    /// The largest latency told apart (about 137 s); longer ones count as this one.
    pub const MAX: Duration = Duration::from_nanos(MAX_NANOS);

    /// A recorder of the latencies of the last `window`, reading time from `clock`.
    ///
    /// Fails when `window` is zero.
    pub fn new(window: Duration, clock: SharedClock) -> Result<LatencyRecorder, InvalidWindow> {
        if window.is_zero() {
            return Err(InvalidWindow { _priv: () });
        }
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let origin = clock.now();
        Ok(LatencyRecorder {
            clock,
            origin,
            generation_nanos: (window_nanos / 2).max(1),
            epoch: AtomicU64::new(0),
            generations: [Generation::new(), Generation::new()],
        })
    }

    /// The window this recorder covers.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.generation_nanos * 2)
    }

    /// Records one latency.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let epoch = self.advance();
        let generation = &self.generations[(epoch % 2) as usize];
        // Counters guard no other data: relaxed increments are enough.
        generation.buckets[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        generation.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of latencies recorded in the window.
    pub fn count(&self) -> u64 {
        self.advance();
        self.generations
            .iter()
            .map(|g| g.count.load(Ordering::Relaxed))
            .sum()
    }

    /// The latency below which `p` percent of the recorded ones fall (nearest rank), within
    /// [`PRECISION`](Self::PRECISION); `None` when nothing was recorded in the window or `p` is
    /// NaN. `p` is clamped into `[0, 100]`: `percentile(99.0)` is the p99.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        self.percentile_if_at_least(p, 1)
    }

    /// Like [`percentile`](Self::percentile), but `None` unless the window holds at least
    /// `min_count` latencies; reads the counters once.
    pub(crate) fn percentile_if_at_least(&self, p: f64, min_count: u64) -> Option<Duration> {
        if p.is_nan() {
            return None;
        }
        // The cheap total first: a recorder that is not warm yet costs two loads, not a scan.
        if self.count() < min_count.max(1) {
            return None;
        }
        let mut counts = [0u64; BUCKETS];
        let mut total = 0u64;
        for generation in &self.generations {
            for (sum, bucket) in counts.iter_mut().zip(&generation.buckets) {
                let n = bucket.load(Ordering::Relaxed);
                *sum += n;
                total += n;
            }
        }
        if total == 0 || total < min_count {
            return None;
        }
        let rank = nearest_rank(p, total);
        let mut seen = 0u64;
        for (index, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_middle(index)));
            }
        }
        unreachable!("the rank never exceeds the total count")
    }

    /// Moves to the generation of the current time, recycling those that fell out of the window;
    /// returns the current generation number.
    #[inline]
    fn advance(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.origin);
        let now = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) / self.generation_nanos;
        let seen = self.epoch.load(Ordering::Acquire);
        if now > seen
            && self
                .epoch
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Only the thread that moved the epoch recycles, so a generation is cleared once.
            if now - seen >= 2 {
                self.generations.iter().for_each(Generation::clear);
            } else {
                self.generations[(now % 2) as usize].clear();
            }
        }
        now
    }
}

impl fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyRecorder")
            .field("window", &self.window())
            .field("count", &self.count())
            .finish()
    }
}

// === impl Generation ===

impl Generation {
    fn new() -> Generation {
        Generation {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
        }
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
    }
}

// === buckets ===

/// The bucket holding `latency`.
#[inline]
fn bucket_of(latency: Duration) -> usize {
    let nanos = u64::try_from(latency.as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(MIN_NANOS, MAX_NANOS);
    let octave = u64::BITS - 1 - nanos.leading_zeros();
    let sub = (nanos >> (octave - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    (octave - MIN_OCTAVE) as usize * SUB_BUCKETS + sub
}

/// The lowest value of bucket `index`, and its width, in nanoseconds.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let octave = (index / SUB_BUCKETS) as u32 + MIN_OCTAVE;
    let sub = (index % SUB_BUCKETS) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    ((SUB_BUCKETS as u64 + sub) * width, width)
}

/// The value reported for bucket `index`: its middle, at most half a width (1/32 of the value)
/// away from anything in it.
fn bucket_middle(index: usize) -> u64 {
    let (low, width) = bucket_bounds(index);
    low + width / 2
}

/// The 1-based rank of the `p`th percentile among `total` sorted values (nearest-rank method).
fn nearest_rank(p: f64, total: u64) -> u64 {
    let rank = (p.clamp(0.0, 100.0) / 100.0 * total as f64).ceil() as u64;
    rank.clamp(1, total)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::ManualClock;

    fn recorder(window: Duration) -> (LatencyRecorder, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let recorder = LatencyRecorder::new(window, clock.clone()).unwrap();
        (recorder, clock)
    }

    /// The exact nearest-rank percentile of `samples`, as the recorder defines it.
    fn exact_percentile(samples: &[u64], p: f64) -> u64 {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        sorted[nearest_rank(p, sorted.len() as u64) as usize - 1]
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut expected_low = MIN_NANOS;
        for index in 0..BUCKETS {
            let (low, width) = bucket_bounds(index);
            assert_eq!(low, expected_low, "bucket {index}");
            assert_eq!(bucket_of(Duration::from_nanos(low)), index);
            assert_eq!(bucket_of(Duration::from_nanos(low + width - 1)), index);
            assert!(width as f64 / low as f64 <= 2.0 * LatencyRecorder::PRECISION);
            expected_low = low + width;
        }
        assert_eq!(expected_low - 1, MAX_NANOS);
    }

    #[test]
    fn out_of_range_latencies_land_in_the_end_buckets() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_nanos(5)), 0);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket_of(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn empty_recorder_has_no_percentile() {
        let (recorder, _clock) = recorder(Duration::from_secs(10));
        assert_eq!(recorder.percentile(50.0), None);
        assert_eq!(recorder.count(), 0);
        recorder.record(Duration::from_millis(3));
        assert_eq!(recorder.percentile(f64::NAN), None);
        assert!(recorder.percentile(50.0).is_some());
    }

    #[test]
    fn zero_window_is_refused() {
        let clock = ManualClock::new();
        assert!(LatencyRecorder::new(Duration::ZERO, clock).is_err());
    }

    #[test]
    fn percentiles_order_the_samples() {
        let (recorder, _clock) = recorder(Duration::from_secs(10));
        for _ in 0..90 {
            recorder.record(Duration::from_millis(10));
        }
        for _ in 0..10 {
            recorder.record(Duration::from_millis(500));
        }
        let close = |d: Duration, ms: u64| {
            let exact = Duration::from_millis(ms);
            d.abs_diff(exact) <= exact.mul_f64(LatencyRecorder::PRECISION)
        };
        assert!(close(recorder.percentile(0.0).unwrap(), 10));
        assert!(close(recorder.percentile(90.0).unwrap(), 10));
        assert!(close(recorder.percentile(90.1).unwrap(), 500));
        assert!(close(recorder.percentile(100.0).unwrap(), 500));
        // Out-of-range percentiles are clamped.
        assert_eq!(recorder.percentile(250.0), recorder.percentile(100.0));
        assert_eq!(recorder.percentile(-1.0), recorder.percentile(0.0));
    }

    #[test]
    fn old_generations_are_forgotten() {
        let (recorder, clock) = recorder(Duration::from_secs(10));
        recorder.record(Duration::from_millis(100));
        assert_eq!(recorder.count(), 1);

        // Half a window later the sample is in the previous generation: still counted.
        clock.advance(Duration::from_secs(5));
        recorder.record(Duration::from_millis(1));
        assert_eq!(recorder.count(), 2);
        assert!(recorder.percentile(100.0).unwrap() > Duration::from_millis(90));

        // One more half window: the first sample is older than the window and gone.
        clock.advance(Duration::from_secs(5));
        assert_eq!(recorder.count(), 1);
        assert!(recorder.percentile(100.0).unwrap() < Duration::from_millis(2));

        // A long silence forgets everything, even without records in between.
        clock.advance(Duration::from_secs(60));
        assert_eq!(recorder.count(), 0);
        assert_eq!(recorder.percentile(50.0), None);
    }

    #[test]
    fn percentile_can_require_a_minimum_count() {
        let (recorder, _clock) = recorder(Duration::from_secs(10));
        for _ in 0..4 {
            recorder.record(Duration::from_millis(7));
        }
        assert_eq!(recorder.percentile_if_at_least(50.0, 5), None);
        recorder.record(Duration::from_millis(7));
        assert!(recorder.percentile_if_at_least(50.0, 5).is_some());
    }

    #[test]
    fn records_from_many_threads_are_all_counted() {
        let (recorder, _clock) = recorder(Duration::from_secs(10));
        let recorder = Arc::new(recorder);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        recorder.record(Duration::from_micros(1 + (i * (t + 1)) % 5000));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(recorder.count(), 40_000);
    }

    proptest! {
        #[test]
        fn percentile_is_within_precision_of_the_exact_one(
            samples in prop::collection::vec(MIN_NANOS..=MAX_NANOS, 1..500),
            small in prop::collection::vec(MIN_NANOS..100_000u64, 0..100),
            p in 0.0f64..=100.0,
        ) {
            let (recorder, _clock) = recorder(Duration::from_secs(10));
            let all: Vec<u64> = samples.into_iter().chain(small).collect();
            for &nanos in &all {
                recorder.record(Duration::from_nanos(nanos));
            }
            let exact = exact_percentile(&all, p);
            let estimate = recorder.percentile(p).unwrap().as_nanos() as u64;
            prop_assert!(
                estimate.abs_diff(exact) as f64 <= exact as f64 * LatencyRecorder::PRECISION,
                "p{p}: estimate {estimate} ns, exact {exact} ns"
            );
            prop_assert_eq!(recorder.count(), all.len() as u64);
        }
    }
}
