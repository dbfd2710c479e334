//! What a route or an endpoint did lately: requests per second, error rate and latency
//! percentiles over the last ten seconds, for the admin API's stats.
//!
//! Counts go into one slot per second of a ring of ten: the rates cover the current second and
//! the nine before it (less while the proxy is younger than that). Latencies go into a
//! [`LatencyRecorder`] over a 10 s window, whose percentiles describe at least the last five
//! seconds and nothing older than ten. Recording takes a few relaxed atomic adds; a count landing
//! at the very moment its slot turns over to a new second may be lost: statistics, not a ledger.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rampart_policy::clock::tokio_clock;
use rampart_policy::latency::LatencyRecorder;
use tokio::time::Instant;

/// How many seconds the rates cover.
const SECONDS: usize = 10;

/// The window of the latency percentiles.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// The recent requests of one route or endpoint.
#[derive(Debug)]
pub(crate) struct Recent {
    origin: Instant,
    slots: [Slot; SECONDS],
    latency: LatencyRecorder,
}

#[derive(Debug, Default)]
struct Slot {
    /// The second (since `origin`) plus one that the counts are for; 0 when never used.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// What a route or an endpoint did in the last ten seconds or so, read at one moment: rates
/// over the current second and the nine before it, percentiles over a window of 5 to 10 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Requests per second.
    pub requests_per_second: f64,
    /// The share of requests that were errors, from 0 to 1 (0 with no request).
    pub error_rate: f64,
    /// The median latency; `None` with no request in the window.
    pub p50: Option<Duration>,
    /// The 99th percentile latency; `None` with no request in the window.
    pub p99: Option<Duration>,
}

impl Recent {
    pub(crate) fn new() -> Recent {
        Recent {
            origin: Instant::now(),
            slots: Default::default(),
            latency: LatencyRecorder::new(LATENCY_WINDOW, tokio_clock())
                .expect("the latency window is not zero"),
        }
    }

    /// Counts a request that took `elapsed`, an error or not, ending `now` (the caller read the
    /// clock for `elapsed` already).
    pub(crate) fn record(&self, error: bool, elapsed: Duration, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs() + 1;
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.errors.store(0, Relaxed);
        }
        slot.requests.fetch_add(1, Relaxed);
        if error {
            slot.errors.fetch_add(1, Relaxed);
        }
        self.latency.record(elapsed);
    }

    /// The rates and percentiles now.
    pub(crate) fn read(&self) -> Window {
        let age = self.origin.elapsed();
        let second = age.as_secs() + 1;
        let (mut requests, mut errors) = (0u64, 0u64);
        for slot in &self.slots {
            let stamp = slot.second.load(Relaxed);
            if stamp != 0 && stamp + (SECONDS as u64) > second {
                requests += slot.requests.load(Relaxed);
                errors += slot.errors.load(Relaxed);
            }
        }
        // The current second so far and the whole ones before it, as far as the ring reaches.
        let covered = age.min(Duration::from_secs(SECONDS as u64 - 1) + subsec(age));
        let per_second = |n: u64| {
            if covered.is_zero() {
                0.0
            } else {
                n as f64 / covered.as_secs_f64()
            }
        };
        Window {
            requests_per_second: per_second(requests),
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50: self.latency.percentile(50.0),
            p99: self.latency.percentile(99.0),
        }
    }
}

fn subsec(age: Duration) -> Duration {
    Duration::from_nanos(u64::from(age.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn rates_cover_the_last_ten_seconds() {
        let recent = Recent::new();
        tokio::time::advance(ms(500)).await;
        for _ in 0..3 {
            recent.record(false, ms(10), Instant::now());
        }
        recent.record(true, ms(100), Instant::now());
        let window = recent.read();
        // Four requests in half a second.
        assert_eq!(window.requests_per_second, 8.0);
        assert_eq!(window.error_rate, 0.25);
        assert!(window.p50.unwrap().abs_diff(ms(10)) < ms(1));
        assert!(window.p99.unwrap().abs_diff(ms(100)) < ms(4));

        tokio::time::advance(Duration::from_secs(12)).await;
        let window = recent.read();
        assert_eq!(window.requests_per_second, 0.0);
        assert_eq!(window.error_rate, 0.0);
        assert_eq!(window.p50, None);
    }
}
