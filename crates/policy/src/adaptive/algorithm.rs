//! The two ways the limit learns: from the latency gradient (Gradient2) or from drops (AIMD).

use std::time::Duration;

use super::error::InvalidConfig;
use crate::classify::Outcome;

/// How an [`AdaptiveLimit`](super::AdaptiveLimit) learns its limit.
#[derive(Clone, Debug)]
pub enum Algorithm {
    /// Follows the ratio of long-term to short-term latency: see [`Gradient2`].
    Gradient2(Gradient2),
    /// Grows by one while calls succeed, shrinks by a ratio on a drop: see [`Aimd`].
    Aimd(Aimd),
}

impl From<Gradient2> for Algorithm {
    fn from(config: Gradient2) -> Algorithm {
        Algorithm::Gradient2(config)
    }
}

impl From<Aimd> for Algorithm {
    fn from(config: Aimd) -> Algorithm {
        Algorithm::Aimd(config)
    }
}

impl Default for Algorithm {
    fn default() -> Algorithm {
        Algorithm::Gradient2(Gradient2::default())
    }
}

/// How much queueing Gradient2 allows on top of the limit the gradient suggests: the amount the
/// limit may grow by while latency stays at its long-term level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueSize {
    /// Always this many calls.
    Fixed(usize),
    /// The square root of the current limit, but at least `min`: small limits probe upward by
    /// `min`, large ones by more, so that growth keeps pace with the limit.
    SqrtOfLimit {
        /// The smallest allowance.
        min: usize,
    },
}

impl QueueSize {
    fn for_limit(self, limit: f64) -> f64 {
        match self {
            QueueSize::Fixed(n) => n as f64,
            QueueSize::SqrtOfLimit { min } => limit.sqrt().floor().max(min as f64),
        }
    }
}

/// The Gradient2 algorithm of Netflix's concurrency-limits (`Gradient2Limit`), sample by sample.
///
/// It keeps two averages of the latency (RTT) of successful calls: a long-term exponential
/// average over `long_window` samples (the latency the callee has when not overloaded) and a
/// short-term one over `short_window` samples (by default the last sample alone). On each sample,
/// when at least half of the limit is in use:
///
/// ```text
/// gradient  = clamp(tolerance * long / short, 0.5, 1.0)
/// new_limit = limit * gradient + queue_size(limit)
/// limit     = clamp(limit * (1 - smoothing) + new_limit * smoothing, min_limit, max_limit)
/// ```
///
/// While latency stays within `tolerance` of the long-term average the gradient is 1 and the limit
/// grows by `smoothing * queue_size` per sample; when queueing pushes the latency up the gradient
/// falls below 1 and the limit shrinks, by at most half per sample before smoothing. When the
/// long-term average exceeds twice the short-term one (the callee recovered from a long overload)
/// the long-term average is cut by 5% per sample, so it does not hold the limit down for the
/// hundreds of samples it would take to decay on its own. A lasting change of latency becomes the
/// new normal as the long-term average catches up, over about `long_window` samples.
///
/// Two choices go beyond Netflix's algorithm, which ignores drops: a failed call (a drop) does
/// not feed the averages (a fast error would look like a fast, healthy answer) and counts as the
/// steepest gradient, pulling the limit towards half of itself (without the queue allowance);
/// an [`Outcome::Slow`] success is an ordinary sample, its latency is what matters here.
///
/// Defaults: initial limit 20, min 5, max 200, smoothing 0.2, tolerance 1.5, long window 600
/// samples (the first 10 are averaged plainly as a warm-up), short window 1 sample, queue size
/// `SqrtOfLimit { min: 4 }` (4 up to a limit of 24, then the square root).
#[derive(Clone, Debug)]
pub struct Gradient2 {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    smoothing: f64,
    tolerance: f64,
    long_window: usize,
    short_window: usize,
    queue_size: QueueSize,
}

/// Builds a validated [`Gradient2`].
#[derive(Clone, Debug)]
pub struct Gradient2Builder {
    config: Gradient2,
}

/// AIMD: additive increase, multiplicative decrease, like Netflix's `AIMDLimit`.
///
/// On a success while the limit is in use (at least half of it in flight when the call started;
/// an idle limit proves nothing about the callee), the limit grows by one. On a drop (a
/// [`Outcome::Failure`] or [`Outcome::Slow`] call, or one that took longer than `timeout`) it
/// shrinks to `limit * backoff_ratio`, by at least one. Always within `[min_limit, max_limit]`.
///
/// Defaults: initial limit 10, min 1, max 200, backoff ratio 0.9, timeout 5 s.
#[derive(Clone, Debug)]
pub struct Aimd {
    initial_limit: usize,
    min_limit: usize,
    max_limit: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

/// Builds a validated [`Aimd`].
#[derive(Clone, Debug)]
pub struct AimdBuilder {
    config: Aimd,
}

/// One finished call, as the algorithms see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub(super) outcome: Outcome,
    pub(super) latency: Duration,
    /// Calls in flight when this one was admitted, itself included.
    pub(super) in_flight: usize,
}

/// The learning state of an algorithm.
#[derive(Debug)]
pub(super) enum State {
    Gradient2(Gradient2State),
    Aimd(AimdState),
}

#[derive(Debug)]
pub(super) struct Gradient2State {
    config: Gradient2,
    estimate: f64,
    long_rtt: ExpAvg,
    short_rtt: ExpAvg,
}

#[derive(Debug)]
pub(super) struct AimdState {
    config: Aimd,
    limit: usize,
}

/// An exponential moving average over about `window` samples, plain average while warming up.
#[derive(Debug)]
struct ExpAvg {
    value: f64,
    sum: f64,
    count: usize,
    warmup: usize,
    factor: f64,
}

/// Gradient2 never cuts the limit by more than half in one sample, so one outlier cannot empty it.
const MIN_GRADIENT: f64 = 0.5;
/// How fast an inflated long-term RTT is pulled down after an overload ends.
const DRIFT_DECAY: f64 = 0.95;
/// Samples averaged plainly before the long-term RTT becomes exponential (Netflix uses 10).
const LONG_WARMUP: usize = 10;

// === impl Algorithm ===

impl Algorithm {
    pub(super) fn initial_limit(&self) -> usize {
        match self {
            Algorithm::Gradient2(c) => c.initial_limit,
            Algorithm::Aimd(c) => c.initial_limit,
        }
    }

    pub(super) fn into_state(self) -> State {
        match self {
            Algorithm::Gradient2(config) => State::Gradient2(Gradient2State {
                estimate: config.initial_limit as f64,
                long_rtt: ExpAvg::new(config.long_window, LONG_WARMUP),
                short_rtt: ExpAvg::new(config.short_window, 0),
                config,
            }),
            Algorithm::Aimd(config) => State::Aimd(AimdState {
                limit: config.initial_limit,
                config,
            }),
        }
    }
}

fn check_limits(min: usize, initial: usize, max: usize) -> Result<(), InvalidConfig> {
    if min == 0 {
        return Err(InvalidConfig::ZeroMinLimit);
    }
    if !(min <= initial && initial <= max) {
        return Err(InvalidConfig::LimitOrder { min, initial, max });
    }
    Ok(())
}

// === impl Gradient2 ===

impl Gradient2 {
    /// A builder starting from the defaults.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            config: Gradient2::default(),
        }
    }

    /// The limit before any sample.
    pub fn initial_limit(&self) -> usize {
        self.initial_limit
    }

    /// The lowest the limit goes.
    pub fn min_limit(&self) -> usize {
        self.min_limit
    }

    /// The highest the limit goes.
    pub fn max_limit(&self) -> usize {
        self.max_limit
    }
}

impl Default for Gradient2 {
    fn default() -> Gradient2 {
        Gradient2 {
            initial_limit: 20,
            min_limit: 5,
            max_limit: 200,
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
            short_window: 1,
            queue_size: QueueSize::SqrtOfLimit { min: 4 },
        }
    }
}

impl Gradient2Builder {
    /// The limit before any sample. Default 20.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The lowest the limit goes; at least 1. Default 5.
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The highest the limit goes. Default 200.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// How much of each new estimate the limit takes, in `(0, 1]`; 1 follows the estimate at
    /// once. Default 0.2.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.config.smoothing = smoothing;
        self
    }

    /// How far above the long-term latency the short-term one may rise before the limit shrinks,
    /// as a ratio `>= 1`. Default 1.5.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.config.tolerance = tolerance;
        self
    }

    /// The number of samples the long-term latency averages over. Default 600.
    pub fn long_window(mut self, samples: usize) -> Self {
        self.config.long_window = samples;
        self
    }

    /// The number of samples the short-term latency averages over; 1 is the last sample alone.
    /// Default 1.
    pub fn short_window(mut self, samples: usize) -> Self {
        self.config.short_window = samples;
        self
    }

    /// The queueing allowance. Default `QueueSize::SqrtOfLimit { min: 4 }`.
    pub fn queue_size(mut self, queue_size: QueueSize) -> Self {
        self.config.queue_size = queue_size;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Gradient2, InvalidConfig> {
        let c = self.config;
        check_limits(c.min_limit, c.initial_limit, c.max_limit)?;
        if !(c.smoothing > 0.0 && c.smoothing <= 1.0) {
            return Err(InvalidConfig::Smoothing(c.smoothing));
        }
        if !(c.tolerance.is_finite() && c.tolerance >= 1.0) {
            return Err(InvalidConfig::Tolerance(c.tolerance));
        }
        if c.long_window == 0 {
            return Err(InvalidConfig::ZeroWindow("long"));
        }
        if c.short_window == 0 {
            return Err(InvalidConfig::ZeroWindow("short"));
        }
        Ok(c)
    }
}

// === impl Aimd ===

impl Aimd {
    /// A builder starting from the defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            config: Aimd::default(),
        }
    }

    /// The limit before any sample.
    pub fn initial_limit(&self) -> usize {
        self.initial_limit
    }

    /// The lowest the limit goes.
    pub fn min_limit(&self) -> usize {
        self.min_limit
    }

    /// The highest the limit goes.
    pub fn max_limit(&self) -> usize {
        self.max_limit
    }
}

impl Default for Aimd {
    fn default() -> Aimd {
        Aimd {
            initial_limit: 10,
            min_limit: 1,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdBuilder {
    /// The limit before any sample. Default 10.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The lowest the limit goes; at least 1. Default 1.
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The highest the limit goes. Default 200.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// The factor applied to the limit on a drop, in `[0.5, 1)`. Default 0.9.
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.config.backoff_ratio = ratio;
        self
    }

    /// A call slower than this counts as a drop. Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Aimd, InvalidConfig> {
        let c = self.config;
        check_limits(c.min_limit, c.initial_limit, c.max_limit)?;
        if !(0.5..1.0).contains(&c.backoff_ratio) {
            return Err(InvalidConfig::BackoffRatio(c.backoff_ratio));
        }
        if c.timeout.is_zero() {
            return Err(InvalidConfig::ZeroTimeout);
        }
        Ok(c)
    }
}

// === impl State ===

impl State {
    /// Learns from one sample; returns the new limit.
    pub(super) fn update(&mut self, sample: Sample) -> usize {
        match self {
            State::Gradient2(state) => state.update(sample),
            State::Aimd(state) => state.update(sample),
        }
    }
}

impl Gradient2State {
    fn update(&mut self, sample: Sample) -> usize {
        let config = &self.config;
        if sample.outcome.is_failure() {
            self.estimate = self.smoothed(self.estimate * MIN_GRADIENT);
            return self.limit();
        }

        // A zero latency (a paused clock, a cached answer) would divide by zero.
        let rtt = sample.latency.as_secs_f64().max(1e-9);
        let queue_size = config.queue_size.for_limit(self.estimate);
        let short = self.short_rtt.add(rtt);
        let long = self.long_rtt.add(rtt);

        if long / short > 2.0 {
            self.long_rtt.scale(DRIFT_DECAY);
        }

        // An application that uses less than half of its limit says nothing about the callee's
        // capacity: growing there would only let the limit drift up unbounded.
        if (sample.in_flight as f64) < self.estimate / 2.0 {
            return self.limit();
        }

        let gradient = (config.tolerance * long / short).clamp(MIN_GRADIENT, 1.0);
        self.estimate = self.smoothed(self.estimate * gradient + queue_size);
        self.limit()
    }

    fn smoothed(&self, target: f64) -> f64 {
        let c = &self.config;
        let next = self.estimate * (1.0 - c.smoothing) + target * c.smoothing;
        next.clamp(c.min_limit as f64, c.max_limit as f64)
    }

    fn limit(&self) -> usize {
        (self.estimate as usize).clamp(self.config.min_limit, self.config.max_limit)
    }
}

impl AimdState {
    fn update(&mut self, sample: Sample) -> usize {
        let c = &self.config;
        let dropped = sample.outcome != Outcome::Success || sample.latency > c.timeout;
        if dropped {
            let backed_off = (self.limit as f64 * c.backoff_ratio) as usize;
            self.limit = backed_off.min(self.limit - 1).max(c.min_limit);
        } else if sample.in_flight * 2 >= self.limit {
            self.limit = (self.limit + 1).min(c.max_limit);
        }
        self.limit
    }
}

// === impl ExpAvg ===

impl ExpAvg {
    fn new(window: usize, warmup: usize) -> ExpAvg {
        ExpAvg {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (window as f64 + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / self.count as f64;
        } else if self.count == 0 {
            // No warm-up: the first sample is the average.
            self.count = 1;
            self.value = sample;
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }

    fn scale(&mut self, by: f64) {
        self.value *= by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn success(latency: Duration, in_flight: usize) -> Sample {
        Sample {
            outcome: Outcome::Success,
            latency,
            in_flight,
        }
    }

    fn failure(in_flight: usize) -> Sample {
        Sample {
            outcome: Outcome::Failure,
            latency: ms(1),
            in_flight,
        }
    }

    #[test]
    fn builders_refuse_misconfiguration() {
        assert_eq!(
            Gradient2::builder()
                .min_limit(0)
                .initial_limit(0)
                .build()
                .unwrap_err(),
            InvalidConfig::ZeroMinLimit
        );
        assert_eq!(
            Gradient2::builder().initial_limit(300).build().unwrap_err(),
            InvalidConfig::LimitOrder {
                min: 5,
                initial: 300,
                max: 200
            }
        );
        assert!(matches!(
            Gradient2::builder().smoothing(0.0).build(),
            Err(InvalidConfig::Smoothing(_))
        ));
        assert!(matches!(
            Gradient2::builder().smoothing(f64::NAN).build(),
            Err(InvalidConfig::Smoothing(_))
        ));
        assert!(matches!(
            Gradient2::builder().tolerance(0.9).build(),
            Err(InvalidConfig::Tolerance(_))
        ));
        assert_eq!(
            Gradient2::builder().long_window(0).build().unwrap_err(),
            InvalidConfig::ZeroWindow("long")
        );
        assert_eq!(
            Gradient2::builder().short_window(0).build().unwrap_err(),
            InvalidConfig::ZeroWindow("short")
        );
        assert!(matches!(
            Aimd::builder().backoff_ratio(1.0).build(),
            Err(InvalidConfig::BackoffRatio(_))
        ));
        assert!(matches!(
            Aimd::builder().backoff_ratio(0.4).build(),
            Err(InvalidConfig::BackoffRatio(_))
        ));
        assert_eq!(
            Aimd::builder().timeout(Duration::ZERO).build().unwrap_err(),
            InvalidConfig::ZeroTimeout
        );
        assert_eq!(
            Aimd::builder()
                .min_limit(3)
                .initial_limit(2)
                .build()
                .unwrap_err(),
            InvalidConfig::LimitOrder {
                min: 3,
                initial: 2,
                max: 200
            }
        );
        assert!(Gradient2::builder().build().is_ok());
        assert!(Aimd::builder().build().is_ok());
    }

    #[test]
    fn queue_size_follows_the_square_root_above_its_minimum() {
        let sqrt = QueueSize::SqrtOfLimit { min: 4 };
        assert_eq!(sqrt.for_limit(9.0), 4.0);
        assert_eq!(sqrt.for_limit(100.0), 10.0);
        assert_eq!(QueueSize::Fixed(3).for_limit(100.0), 3.0);
    }

    #[test]
    fn gradient2_steady_latency_grows_by_the_smoothed_queue_size() {
        let mut state = Algorithm::from(Gradient2::default()).into_state();
        let State::Gradient2(ref g) = state else {
            unreachable!()
        };
        assert_eq!(g.estimate, 20.0);
        state.update(success(ms(10), 20));
        let State::Gradient2(ref g) = state else {
            unreachable!()
        };
        // gradient 1: 20 * 0.8 + (20 + 4) * 0.2
        assert!((g.estimate - 20.8).abs() < 1e-9);
    }

    #[test]
    fn gradient2_does_not_grow_when_app_limited() {
        let mut state = Algorithm::from(Gradient2::default()).into_state();
        for _ in 0..100 {
            assert_eq!(state.update(success(ms(10), 9)), 20);
        }
    }

    #[test]
    fn gradient2_halves_at_most_per_sample_before_smoothing() {
        let config = Gradient2::builder()
            .smoothing(1.0)
            .queue_size(QueueSize::Fixed(0))
            .initial_limit(100)
            .build()
            .unwrap();
        let mut state = Algorithm::from(config).into_state();
        for _ in 0..LONG_WARMUP {
            assert_eq!(state.update(success(ms(10), 100)), 100);
        }
        // A 100x latency spike: the gradient floors at 0.5.
        assert_eq!(state.update(success(ms(1000), 100)), 50);
    }

    #[test]
    fn gradient2_tolerates_latency_up_to_tolerance_times_the_long_rtt() {
        // The limit after a steady 125 ms (exact in binary, so the long-term RTT is too), then one
        // sample at `ratio` times that; with no smoothing and no queue allowance, the new limit is
        // 100 times the gradient.
        let limit_after = |tolerance: f64, ratio: f64| {
            let config = Gradient2::builder()
                .tolerance(tolerance)
                .smoothing(1.0)
                .queue_size(QueueSize::Fixed(0))
                .initial_limit(100)
                .build()
                .unwrap();
            let mut state = Algorithm::from(config).into_state();
            for _ in 0..LONG_WARMUP {
                assert_eq!(state.update(success(ms(125), 100)), 100);
            }
            state.update(success(ms(125).mul_f64(ratio), 100))
        };
        // 1.4x and 1.5x are within a tolerance of 1.5: the limit holds.
        assert_eq!(limit_after(1.5, 1.4), 100);
        assert_eq!(limit_after(1.5, 1.5), 100);
        // 1.6x is beyond it: 1.5 * 125.25 / 200 = 0.94.
        assert_eq!(limit_after(1.5, 1.6), 93);
        // The same 1.4x rise shrinks the limit when nothing is tolerated (125.17 / 175 = 0.72)...
        assert_eq!(limit_after(1.0, 1.4), 71);
        // ...and 1.6x leaves it alone with a tolerance of 2.
        assert_eq!(limit_after(2.0, 1.6), 100);
    }

    #[test]
    fn gradient2_drift_pulls_the_long_rtt_down() {
        let mut state = Algorithm::from(Gradient2::default()).into_state();
        for _ in 0..20 {
            state.update(success(ms(100), 20));
        }
        let long_before = match &state {
            State::Gradient2(g) => g.long_rtt.value,
            State::Aimd(_) => unreachable!(),
        };
        state.update(success(ms(10), 20));
        let long_after = match &state {
            State::Gradient2(g) => g.long_rtt.value,
            State::Aimd(_) => unreachable!(),
        };
        // Without the decay one sample would move the 600-sample average by about 0.3%.
        assert!(
            long_after < long_before * 0.96,
            "{long_before} -> {long_after}"
        );
    }

    #[test]
    fn gradient2_drop_shrinks_without_feeding_the_rtt() {
        let mut state = Algorithm::from(Gradient2::default()).into_state();
        state.update(success(ms(10), 20));
        // 20.8 * 0.8 + 10.4 * 0.2 = 18.72
        assert_eq!(state.update(failure(20)), 18);
        let State::Gradient2(g) = &state else {
            unreachable!()
        };
        assert_eq!(g.long_rtt.count, 1);
    }

    #[test]
    fn aimd_adds_one_when_in_use_and_backs_off_on_drops() {
        let mut state = Algorithm::from(Aimd::default()).into_state();
        assert_eq!(state.update(success(ms(10), 4)), 10, "idle: no growth");
        assert_eq!(state.update(success(ms(10), 5)), 11);
        assert_eq!(state.update(failure(5)), 9); // 11 * 0.9 = 9.9
        assert_eq!(
            state.update(success(Duration::from_secs(6), 9)),
            8,
            "timeout"
        );
        let slow = Sample {
            outcome: Outcome::Slow,
            latency: ms(10),
            in_flight: 8,
        };
        assert_eq!(state.update(slow), 7);
    }

    #[test]
    fn aimd_backs_off_by_at_least_one_and_not_below_min() {
        let config = Aimd::builder()
            .initial_limit(5)
            .min_limit(3)
            .max_limit(6)
            .build()
            .unwrap();
        let mut state = Algorithm::from(config).into_state();
        // 5 * 0.9 = 4.5 -> 4, at least one less than 5.
        assert_eq!(state.update(failure(5)), 4);
        assert_eq!(state.update(failure(5)), 3);
        assert_eq!(state.update(failure(5)), 3);
        for _ in 0..10 {
            state.update(success(ms(1), 6));
        }
        assert_eq!(state.update(success(ms(1), 6)), 6);
    }
}
