//! From the samples of a run to the numbers of the report: the record of `results.json` and the
//! per-second series of the charts.

use crate::load::{Outcome, Sample};

/// What the account calls a slow answer: a second, beyond any user's patience for a page.
pub(crate) const SLOW_MS: f64 = 1000.0;

/// One run's numbers, as `results.json` holds them, and a few more for the account.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) requests: u64,
    /// Whole pages.
    pub(crate) ok: u64,
    /// Pages with a part missing, error answers and timeouts.
    pub(crate) failed: u64,
    /// Pages with stand-ins that protection chose.
    pub(crate) fallback: u64,
    /// Of `failed`: pages with a hole.
    pub(crate) partial: u64,
    /// Of `failed`: no answer within the client's timeout.
    pub(crate) timeouts: u64,
    /// Answers (of any kind) that took longer than [`SLOW_MS`].
    pub(crate) slow: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Record {
    pub(crate) fn of(samples: &[Sample]) -> Record {
        let mut record = Record {
            requests: samples.len() as u64,
            ..Record::default()
        };
        for sample in samples {
            match sample.outcome {
                Outcome::Ok => record.ok += 1,
                Outcome::Fallback => record.fallback += 1,
                Outcome::Partial => {
                    record.failed += 1;
                    record.partial += 1;
                }
                Outcome::Error => record.failed += 1,
                Outcome::Timeout => {
                    record.failed += 1;
                    record.timeouts += 1;
                }
            }
        }
        let mut latencies: Vec<f64> = samples.iter().map(|sample| sample.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        record.slow = latencies.iter().filter(|&&ms| ms > SLOW_MS).count() as u64;
        record.p50_ms = percentile(&latencies, 0.5);
        record.p99_ms = percentile(&latencies, 0.99);
        record.max_ms = latencies.last().copied().unwrap_or(0.0);
        record
    }

    /// Real or stand-in answers, as a fraction of the requests (1 with no requests).
    pub(crate) fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            (self.ok + self.fallback) as f64 / self.requests as f64
        }
    }
}

/// The nearest-rank percentile of sorted values; 0 for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The requests sent during one second of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Second {
    /// The second, from the start of the run.
    pub(crate) at: u32,
    pub(crate) requests: u64,
    /// Real or stand-in answers.
    pub(crate) succeeded: u64,
    /// Of those, stand-ins.
    pub(crate) fallback: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Second {
    pub(crate) fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.succeeded as f64 / self.requests as f64
        }
    }
}

/// The run second by second, by the time each request was sent.
pub(crate) fn per_second(samples: &[Sample]) -> Vec<Second> {
    let seconds = samples
        .iter()
        .map(|sample| sample.sent as u32 + 1)
        .max()
        .unwrap_or(0);
    (0..seconds)
        .map(|at| {
            let these: Vec<&Sample> = samples
                .iter()
                .filter(|sample| sample.sent as u32 == at)
                .collect();
            let mut latencies: Vec<f64> = these.iter().map(|sample| sample.latency_ms).collect();
            latencies.sort_by(f64::total_cmp);
            Second {
                at,
                requests: these.len() as u64,
                succeeded: these.iter().filter(|s| s.outcome.succeeded()).count() as u64,
                fallback: these
                    .iter()
                    .filter(|s| s.outcome == Outcome::Fallback)
                    .count() as u64,
                p50_ms: percentile(&latencies, 0.5),
                p99_ms: percentile(&latencies, 0.99),
            }
        })
        .collect()
}

/// When the requests that did not get a whole page within [`SLOW_MS`] were sent: the first and
/// the last, in seconds from the start. A page that took seconds was no whole page to its user:
/// counted with the failures only, a wiring whose requests all waited out the fault would seem
/// whole again before the fault ended.
pub(crate) fn trouble(samples: &[Sample]) -> Option<(f64, f64)> {
    let mut troubled = samples
        .iter()
        .filter(|sample| sample.outcome != Outcome::Ok || sample.latency_ms > SLOW_MS)
        .map(|sample| sample.sent);
    let first = troubled.next()?;
    Some((first, troubled.next_back().unwrap_or(first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: f64, latency_ms: f64, outcome: Outcome) -> Sample {
        Sample {
            sent,
            latency_ms,
            outcome,
        }
    }

    #[test]
    fn a_record_counts_every_request_once() {
        let samples = [
            sample(0.1, 10.0, Outcome::Ok),
            sample(0.5, 20.0, Outcome::Fallback),
            sample(1.2, 30.0, Outcome::Partial),
            sample(1.4, 10_000.0, Outcome::Timeout),
            sample(2.0, 5.0, Outcome::Error),
        ];
        let record = Record::of(&samples);
        assert_eq!(record.requests, 5);
        assert_eq!((record.ok, record.fallback, record.failed), (1, 1, 3));
        assert_eq!((record.partial, record.timeouts, record.slow), (1, 1, 1));
        assert_eq!(record.success_rate(), 0.4);
        assert_eq!(record.p50_ms, 20.0);
        assert_eq!(record.max_ms, 10_000.0);
        assert_eq!(trouble(&samples), Some((0.5, 2.0)));
        // A whole page that took more than a second is trouble too.
        let slow = [
            sample(0.1, 10.0, Outcome::Ok),
            sample(0.4, 8_000.0, Outcome::Ok),
            sample(0.9, 1_500.0, Outcome::Ok),
            sample(1.0, 12.0, Outcome::Ok),
        ];
        assert_eq!(trouble(&slow), Some((0.4, 0.9)));

        let seconds = per_second(&samples);
        assert_eq!(seconds.len(), 3);
        assert_eq!((seconds[0].requests, seconds[0].succeeded), (2, 2));
        assert_eq!(seconds[1].success_rate(), 0.0);
        assert_eq!(seconds[1].p99_ms, 10_000.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
