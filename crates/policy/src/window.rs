//! A sliding time window of event counters, cheap enough to touch on every call.
//!
//! The window is cut into buckets; a count lands in the bucket of the time it happened, and a sum
//! covers the buckets of the last `window`. Two things keep recording down to a few nanoseconds:
//! the time comes from [`recent_nanos`] (one atomic load) unless a clock is injected, and each
//! thread writes to its own stripe of buckets, so threads sharing one window never fight over a
//! cache line. Sums, which happen on failures and retries only, add the stripes up.
//!
//! Threads are dealt stripes in turn, and a window has twice as many as the machine has cores (up
//! to 32), so a runtime's workers each usually write their own. Counts are exact; only when more
//! threads than stripes share a window can two of them race on a bucket rotation and misplace a
//! handful of counts: statistics, not money. A clear forgets every count made before it, and may
//! forget some made while it runs, never one made after.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use crate::clock::{TimeSource, saturating_nanos};

/// `K` counters over a sliding window of time.
#[derive(Debug)]
pub(crate) struct Window<const K: usize> {
    time: TimeSource,
    bucket_nanos: u64,
    buckets: u64,
    stripes: Box<[Stripe<K>]>,
    stripe_mask: usize,
}

#[derive(Debug)]
#[repr(align(64))]
struct Stripe<const K: usize> {
    /// The end (exclusive, in nanoseconds) of the bucket this stripe is filling.
    current_end: AtomicU64,
    /// Which bucket of `ring` that is.
    current: AtomicUsize,
    ring: Box<[Bucket<K>]>,
}

// A bucket per cache line: a stripe's writer never shares a line with another stripe's.
#[derive(Debug)]
#[repr(align(64))]
struct Bucket<const K: usize> {
    /// The bucket's number since the window's origin; `EMPTY` when unused.
    epoch: AtomicU64,
    counts: [AtomicU64; K],
}

const EMPTY: u64 = u64::MAX;

/// How many stripes a window gets: twice the cores, so that a runtime's workers and the odd other
/// thread usually each have their own.
fn stripe_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 2).next_power_of_two().clamp(2, 32)
}

thread_local! {
    static STRIPE_ID: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe number, handed out in turn so that a few threads land on distinct stripes.
#[inline]
fn stripe_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE_ID.with(|id| {
        let current = id.get();
        if current != usize::MAX {
            return current;
        }
        let assigned = NEXT.fetch_add(1, Relaxed);
        id.set(assigned);
        assigned
    })
}

impl<const K: usize> Window<K> {
    /// A window of `len` (at least a millisecond) split in `buckets` buckets: fewer when `len`
    /// is too short for each to span a millisecond, so that the window stays as long as asked
    /// rather than a bucket growing past its share (a 100 ms window of 1000 buckets is 100 of
    /// 1 ms, not 1000 of 1 ms covering a second).
    pub(crate) fn new(len: Duration, buckets: u32, time: TimeSource) -> Window<K> {
        let nanos = saturating_nanos(len).max(1_000_000);
        let buckets = u64::from(buckets.max(1)).min(nanos / 1_000_000);
        let bucket_nanos = nanos / buckets;
        let stripes: Box<[Stripe<K>]> = (0..stripe_count())
            .map(|_| Stripe {
                current_end: AtomicU64::new(0),
                current: AtomicUsize::new(0),
                ring: (0..buckets)
                    .map(|_| Bucket {
                        epoch: AtomicU64::new(EMPTY),
                        counts: std::array::from_fn(|_| AtomicU64::new(0)),
                    })
                    .collect(),
            })
            .collect();
        let stripe_mask = stripes.len() - 1;
        Window {
            time,
            bucket_nanos,
            buckets,
            stripes,
            stripe_mask,
        }
    }

    /// Adds one to counter `counter` at the current time; whether it began a bucket for this
    /// thread: the window has slid since this thread last counted, and the counts of its oldest
    /// bucket may have left the sums.
    #[inline]
    pub(crate) fn record(&self, counter: usize) -> bool {
        let (count, began) = self.slot(counter);
        // Uncontended: the stripe is this thread's unless more threads than stripes share the
        // window, so the locked add stays in this core's cache.
        count.fetch_add(1, Relaxed);
        began
    }

    /// Adds `n` to counter `counter` with a plain load and store instead of a locked add: a count
    /// is lost when two threads sharing a stripe add in the same few nanoseconds. For counts whose
    /// loss errs on the safe side only (a retry budget's deposits: a lost one allows fewer
    /// retries, never more), on paths where the locked add would be most of the cost.
    #[inline]
    pub(crate) fn add_lossy(&self, counter: usize, n: u64) {
        let (count, _) = self.slot(counter);
        count.store(count.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The time, as the window reads it to place a count.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.time.nanos()
    }

    /// How many whole buckets ago `since`, a time read with [`Window::now`], was at `now`.
    pub(crate) fn buckets_since(&self, since: u64, now: u64) -> u64 {
        now.saturating_sub(since) / self.bucket_nanos
    }

    /// This thread's counter `counter` for the current time, and whether it is in a bucket this
    /// thread begins.
    #[inline]
    fn slot(&self, counter: usize) -> (&AtomicU64, bool) {
        let now = self.time.nanos();
        let stripe = &self.stripes[stripe_id() & self.stripe_mask];
        let (slot, began) = if now < stripe.current_end.load(Relaxed) {
            (stripe.current.load(Relaxed), false)
        } else {
            (self.rotate(stripe, now), true)
        };
        (&stripe.ring[slot].counts[counter], began)
    }

    /// Moves `stripe` on to the bucket of `now`, clearing it if it still holds an older epoch.
    #[cold]
    fn rotate(&self, stripe: &Stripe<K>, now: u64) -> usize {
        let epoch = now / self.bucket_nanos;
        let slot = (epoch % self.buckets) as usize;
        let bucket = &stripe.ring[slot];
        if bucket.epoch.load(Relaxed) != epoch {
            for count in &bucket.counts {
                count.store(0, Relaxed);
            }
            bucket.epoch.store(epoch, SeqCst);
        }
        stripe.current.store(slot, Relaxed);
        stripe
            .current_end
            .store((epoch + 1).saturating_mul(self.bucket_nanos), SeqCst);
        // A `clear` running meanwhile may have marked the bucket empty after the check above,
        // and reset the end before the store just made: the stripe would then fill a bucket that
        // sums ignore until it ends. These stores and this load are `SeqCst`, in one order with
        // the clear's: if its reset came before the store just made, its marking came before
        // this load, which sees it. The end is then reset again, for the next count to claim
        // the bucket anew.
        if bucket.epoch.load(SeqCst) != epoch {
            stripe.current_end.store(0, Relaxed);
        }
        slot
    }

    /// The counters summed over the window that ends now.
    pub(crate) fn sum(&self) -> [u64; K] {
        self.sum_last(self.buckets)
    }

    /// The counters summed over the last `buckets` buckets (at most the window's), the current
    /// one included.
    pub(crate) fn sum_last(&self, buckets: u64) -> [u64; K] {
        let epoch = self.time.nanos() / self.bucket_nanos;
        let oldest = epoch.saturating_sub(buckets.clamp(1, self.buckets) - 1);
        let mut sums = [0u64; K];
        for stripe in self.stripes.iter() {
            for bucket in stripe.ring.iter() {
                let e = bucket.epoch.load(Relaxed);
                if e != EMPTY && e >= oldest && e <= epoch {
                    for (sum, count) in sums.iter_mut().zip(&bucket.counts) {
                        *sum += count.load(Relaxed);
                    }
                }
            }
        }
        sums
    }

    /// Forgets every count: those made before, and maybe some made while it runs.
    pub(crate) fn clear(&self) {
        for stripe in self.stripes.iter() {
            // The buckets first, the end of the stripe's current bucket last. With the end reset
            // first, a thread counting meanwhile would claim a bucket the clear had not reached
            // yet, which the clear would then mark empty under it: sums would ignore its counts
            // until that bucket ended. With the end reset last, a thread that still sees the old
            // end counts into a bucket this clear empties (a count made during the clear,
            // forgotten with the others), and one that sees it reset claims a bucket already
            // emptied. A thread caught between claiming a bucket and storing its end checks again
            // in `rotate`.
            for bucket in stripe.ring.iter() {
                bucket.epoch.store(EMPTY, SeqCst);
                for count in &bucket.counts {
                    count.store(0, Relaxed);
                }
            }
            stripe.current_end.store(0, SeqCst);
        }
    }

    /// The span a sum covers at least (it covers up to one bucket more).
    #[cfg(test)]
    pub(crate) fn bucket_len(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::ManualClock;

    fn window(clock: &Arc<ManualClock>) -> Window<2> {
        Window::new(
            Duration::from_secs(10),
            10,
            TimeSource::new(Some(clock.clone())),
        )
    }

    #[test]
    fn a_short_window_keeps_its_length_with_fewer_buckets() {
        let clock = ManualClock::new();
        // (the window in ms, the buckets asked for, each bucket's span in µs)
        let cases = [
            (100, 1000, 1_000),
            (1, 10, 1_000),
            (25, 10, 2_500),
            (10_000, 10, 1_000_000),
        ];
        for (len, buckets, bucket) in cases {
            let w: Window<2> = Window::new(
                Duration::from_millis(len),
                buckets,
                TimeSource::new(Some(clock.clone())),
            );
            assert_eq!(
                w.bucket_len(),
                Duration::from_micros(bucket),
                "{len} ms, {buckets}"
            );
        }
        // 100 ms in 1000 asked-for buckets: a count is gone 100 ms (and a bucket) later.
        let w: Window<2> = Window::new(
            Duration::from_millis(100),
            1000,
            TimeSource::new(Some(clock.clone())),
        );
        w.record(0);
        clock.advance(Duration::from_millis(102));
        assert_eq!(w.sum(), [0, 0]);
    }

    #[test]
    fn counts_age_out_bucket_by_bucket() {
        let clock = ManualClock::new();
        let w = window(&clock);
        w.record(0);
        w.record(0);
        w.record(1);
        assert_eq!(w.sum(), [2, 1]);
        clock.advance(Duration::from_secs(5));
        w.record(0);
        assert_eq!(w.sum(), [3, 1]);
        // Ten buckets of one second: the first bucket leaves the window at t = 10 s.
        clock.advance(Duration::from_secs(5));
        assert_eq!(w.sum(), [1, 0]);
        clock.advance(Duration::from_secs(5));
        assert_eq!(w.sum(), [0, 0]);
    }

    #[test]
    fn a_reused_bucket_forgets_its_old_epoch() {
        let clock = ManualClock::new();
        let w = window(&clock);
        w.record(0);
        // Same slot of the ring, ten buckets later.
        clock.advance(Duration::from_secs(10));
        w.record(0);
        assert_eq!(w.sum(), [1, 0]);
    }

    #[test]
    fn clear_forgets_everything() {
        let clock = ManualClock::new();
        let w = window(&clock);
        w.record(0);
        w.record(1);
        w.clear();
        assert_eq!(w.sum(), [0, 0]);
        w.record(1);
        assert_eq!(w.sum(), [0, 1]);
    }

    #[test]
    fn threads_with_their_own_stripes_add_up() {
        let clock = ManualClock::new();
        let w = Arc::new(window(&clock));
        let threads: Vec<_> = (0..w.stripes.len())
            .map(|stripe| {
                let w = w.clone();
                std::thread::spawn(move || {
                    // Other tests' threads take stripe numbers too: pin this one's.
                    STRIPE_ID.with(|id| id.set(stripe));
                    for _ in 0..10_000 {
                        w.record(0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // One thread per stripe, and a clock standing still (no rotation to race on): every count
        // is kept.
        assert_eq!(w.sum(), [10_000 * w.stripes.len() as u64, 0]);
    }

    #[test]
    fn a_count_made_after_a_clear_that_raced_with_counts_is_summed() {
        // The last of many buckets: the one a clear reaches last on each stripe.
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(99_500));
        let w = Arc::new(Window::<1>::new(
            Duration::from_secs(100),
            100,
            TimeSource::new(Some(clock.clone())),
        ));
        const ROUNDS: usize = 5_000;
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let counter = {
            let (w, barrier) = (w.clone(), barrier.clone());
            std::thread::spawn(move || {
                STRIPE_ID.with(|id| id.set(0));
                for _ in 0..ROUNDS {
                    // Counting while the other thread clears, then once after.
                    barrier.wait();
                    for _ in 0..64 {
                        w.record(0);
                    }
                    barrier.wait();
                    w.record(0);
                    barrier.wait();
                }
            })
        };
        let mut lost = 0;
        for _ in 0..ROUNDS {
            barrier.wait();
            w.clear();
            barrier.wait();
            barrier.wait();
            if w.sum() == [0] {
                lost += 1;
            }
        }
        counter.join().unwrap();
        // A race, so the check is not certain to catch a wrong order: with the clear resetting
        // the stripe's bucket end first, about half the runs on two cores lost one round's
        // count in 5,000.
        assert_eq!(lost, 0, "rounds whose count after the clear was lost");
    }

    proptest! {
        /// Against a model that keeps every event with its time: the window's sum is the number
        /// of events whose bucket is one of the last `buckets` buckets.
        #[test]
        fn matches_a_model_of_every_event(
            steps in prop::collection::vec((0u64..3_000, 0usize..2), 1..200),
            buckets in 1u32..12,
            len_ms in 1u64..20_000,
        ) {
            let clock = ManualClock::new();
            let w: Window<2> = Window::new(
                Duration::from_millis(len_ms),
                buckets,
                TimeSource::new(Some(clock.clone())),
            );
            let bucket = w.bucket_len().as_nanos() as u64;
            let mut now = 0u64;
            let mut events: Vec<(u64, usize)> = Vec::new();
            for (gap_ms, counter) in steps {
                clock.advance(Duration::from_millis(gap_ms));
                now += gap_ms * 1_000_000;
                w.record(counter);
                events.push((now / bucket, counter));
                let epoch = now / bucket;
                let oldest = epoch.saturating_sub(u64::from(buckets) - 1);
                let mut model = [0u64; 2];
                for &(e, c) in &events {
                    if e >= oldest {
                        model[c] += 1;
                    }
                }
                prop_assert_eq!(w.sum(), model);
            }
        }
    }
}
