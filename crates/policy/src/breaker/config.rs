//! The breaker's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::{CircuitBreaker, Listener, Transition};
use crate::clock::SharedClock;
use crate::rng::Rng;

/// Builds a [`CircuitBreaker`]. Every setting has a default; see each method.
#[must_use]
pub struct Builder {
    pub(super) settings: Settings,
    pub(super) clock: Option<SharedClock>,
    pub(super) rng: Rng,
    pub(super) listeners: Vec<Listener>,
}

/// The validated thresholds a breaker runs on.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) consecutive_failures: u32,
    pub(super) failure_rate: f64,
    pub(super) slow_call: Option<Duration>,
    pub(super) slow_call_rate: f64,
    pub(super) window: Duration,
    pub(super) window_buckets: u32,
    pub(super) min_calls: u64,
    pub(super) open_for: Duration,
    pub(super) open_for_max: Duration,
    pub(super) open_jitter: f64,
    pub(super) half_open_probes: u32,
    pub(super) half_open_max_wait: Option<Duration>,
}

impl Settings {
    /// Whether slow calls can trip the breaker (and fail a probe).
    pub(super) fn slow_trips(&self) -> bool {
        self.slow_call.is_some() && self.slow_call_rate < 1.0
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            settings: Settings {
                consecutive_failures: 5,
                failure_rate: 0.5,
                slow_call: None,
                slow_call_rate: 1.0,
                window: Duration::from_secs(10),
                window_buckets: 10,
                min_calls: 20,
                open_for: Duration::from_secs(5),
                open_for_max: Duration::from_secs(60),
                open_jitter: 0.2,
                half_open_probes: 3,
                half_open_max_wait: None,
            },
            clock: None,
            rng: Rng::thread(),
            listeners: Vec::new(),
        }
    }
}

impl Builder {
    /// Trips after this many failures in a row. Default 5; 0 turns this trigger off.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.settings.consecutive_failures = n;
        self
    }

    /// Trips when this share of the calls in the window failed (once `min_calls` is reached).
    /// Default 0.5; allowed `(0, 1]`.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.settings.failure_rate = rate;
        self
    }

    /// A success slower than this counts as slow. Default: none, and calls are not timed.
    pub fn slow_call(mut self, threshold: Duration) -> Self {
        self.settings.slow_call = Some(threshold);
        self
    }

    /// Trips when this share of the calls in the window was slow. Default 1.0, which turns this
    /// trigger off; allowed `(0, 1]`, and below 1 only with a `slow_call` threshold.
    pub fn slow_call_rate(mut self, rate: f64) -> Self {
        self.settings.slow_call_rate = rate;
        self
    }

    /// The sliding window the rates are computed over. Default 10 s; at least 1 ms.
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// How many buckets the window slides by. Default 10; allowed 1 to 1000. A bucket spans at
    /// least a millisecond: a window too short for that many has fewer, and keeps its length.
    pub fn window_buckets(mut self, buckets: u32) -> Self {
        self.settings.window_buckets = buckets;
        self
    }

    /// No rate-based trip below this many calls in the window. Default 20.
    pub fn min_calls(mut self, n: u64) -> Self {
        self.settings.min_calls = n;
        self
    }

    /// The first open period. Default 5 s; more than zero.
    pub fn open_for(mut self, period: Duration) -> Self {
        self.settings.open_for = period;
        self
    }

    /// Repeated trips double the open period up to this: failed probes, and trips soon after
    /// the breaker closed again (an endpoint that flaps); a calm this long after a close starts
    /// the backoff over. Default 60 s; at least `open_for`.
    pub fn open_for_max(mut self, period: Duration) -> Self {
        self.settings.open_for_max = period;
        self
    }

    /// Each open period is shortened by a random share of at most this, so that many clients
    /// tripped together do not probe together. Default 0.2; allowed `[0, 1)`.
    pub fn open_jitter(mut self, jitter: f64) -> Self {
        self.settings.open_jitter = jitter;
        self
    }

    /// Probes let through when half-open; all must succeed for the breaker to close. Default 3;
    /// at least 1.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.settings.half_open_probes = n;
        self
    }

    /// How long a half-open breaker waits for its probes' outcomes: once every probe is out and
    /// this long has passed since it half-opened, the next call opens it again, as a failed
    /// probe would (for a longer period; [`Reason::ProbesTimedOut`](super::Reason)), and the
    /// late outcomes count for nothing. Without it, a probe that never ends (a call with no
    /// timeout below the breaker, to a callee that hangs) keeps the breaker half-open, refusing
    /// every other call, until its future is dropped. Off by default, as resilience4j's
    /// `maxWaitDurationInHalfOpenState`; above zero.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.settings.half_open_max_wait = Some(wait);
        self
    }

    /// Reads time from `clock` instead of tokio's clock and the cached clock. Tests inject
    /// [`TokioClock`](crate::clock::TokioClock) so that the window follows tokio's paused clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The randomness behind the open period's jitter.
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Calls `listener` at every transition; see [`CircuitBreaker::subscribe`].
    pub fn on_transition(mut self, listener: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Checks every setting and builds the breaker.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let s = &self.settings;
        let rate_ok = |rate: f64| rate > 0.0 && rate <= 1.0;
        if !rate_ok(s.failure_rate) {
            return Err(ConfigError::new(
                "failure_rate",
                s.failure_rate,
                "it must be more than 0 and at most 1",
            ));
        }
        if !rate_ok(s.slow_call_rate) {
            return Err(ConfigError::new(
                "slow_call_rate",
                s.slow_call_rate,
                "it must be more than 0 and at most 1 (1 turns the trigger off)",
            ));
        }
        if s.slow_call_rate < 1.0 && s.slow_call.is_none() {
            return Err(ConfigError::new(
                "slow_call_rate",
                s.slow_call_rate,
                "a slow-call rate below 1 needs a `slow_call` threshold",
            ));
        }
        if s.window < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "window",
                s.window,
                "it must be at least 1ms",
            ));
        }
        if !(1..=1000).contains(&s.window_buckets) {
            return Err(ConfigError::new(
                "window_buckets",
                s.window_buckets,
                "it must be from 1 to 1000",
            ));
        }
        if s.open_for.is_zero() {
            return Err(ConfigError::new(
                "open_for",
                s.open_for,
                "it must be more than zero",
            ));
        }
        if s.open_for_max < s.open_for {
            return Err(ConfigError::new(
                "open_for_max",
                s.open_for_max,
                "it must be at least `open_for`",
            ));
        }
        if !(0.0..1.0).contains(&s.open_jitter) {
            return Err(ConfigError::new(
                "open_jitter",
                s.open_jitter,
                "it must be at least 0 and less than 1",
            ));
        }
        if s.half_open_max_wait == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "half_open_max_wait",
                Duration::ZERO,
                "it must be above zero: probes need time to answer",
            ));
        }
        if s.half_open_probes == 0 {
            return Err(ConfigError::new(
                "half_open_probes",
                s.half_open_probes,
                "at least one probe is needed to find out whether the callee recovered",
            ));
        }
        Ok(CircuitBreaker::from_builder(self))
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .field("clock", &self.clock)
            .field("rng", &self.rng)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}
