//! How long to wait before each retry.
//!
//! Retrying at once, or after the same fixed pause, makes every client that saw the same failure
//! come back at the same instant. The sleeps therefore grow exponentially and are jittered, as in
//! AWS's "Exponential Backoff And Jitter": full jitter by default, decorrelated jitter on request.

use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::rng::Rng;

use super::error::InvalidBackoff;

/// Exponential backoff between `base` and `max`, jittered with an injected [`Rng`].
///
/// The `n`-th retry (`n` from 0) sleeps, by [`Jitter`]:
/// - [`Jitter::Full`] (the default): a random time in `[0, min(max, base * 2^n)]`;
/// - [`Jitter::Decorrelated`]: `min(max, random in [base, previous sleep * 3])`, starting from
///   `base`: sleeps spread out more evenly and never drop to zero;
/// - [`Jitter::None`]: exactly `min(max, base * 2^n)`.
///
/// ```
/// use std::time::Duration;
/// use rampart_policy::retry::ExponentialBackoff;
/// use rampart_policy::rng::Rng;
///
/// let ms = Duration::from_millis;
/// // Rng::fixed(0.5) sleeps half of each cap: 50ms, 100ms, 200ms, then half the max.
/// let backoff = ExponentialBackoff::new(ms(100), ms(800))?.with_rng(Rng::fixed(0.5));
/// let sleeps: Vec<_> = backoff.delays().take(5).collect();
/// assert_eq!(sleeps, [ms(50), ms(100), ms(200), ms(400), ms(400)]);
/// # Ok::<(), rampart_policy::retry::error::InvalidBackoff>(())
/// ```
#[derive(Clone, Debug)]
pub struct ExponentialBackoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    rng: Rng,
}

/// How an [`ExponentialBackoff`] randomizes its sleeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// A random time in `[0, min(max, base * 2^n)]`.
    #[default]
    Full,
    /// `min(max, random in [base, previous sleep * 3])`, starting from `base`.
    Decorrelated,
    /// No randomness: exactly `min(max, base * 2^n)`. Clients that fail together retry together.
    None,
}

impl ExponentialBackoff {
    /// Backoff from `base` up to `max`, with full jitter from [`Rng::thread`].
    ///
    /// Refuses a zero `base` and a `max` below `base`.
    pub fn new(base: Duration, max: Duration) -> Result<ExponentialBackoff, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if max < base {
            return Err(InvalidBackoff::MaxBelowBase { base, max });
        }
        Ok(ExponentialBackoff {
            base,
            max,
            jitter: Jitter::Full,
            rng: Rng::thread(),
        })
    }

    /// Uses `jitter` instead of [`Jitter::Full`].
    pub fn with_jitter(mut self, jitter: Jitter) -> ExponentialBackoff {
        self.jitter = jitter;
        self
    }

    /// Draws jitter from `rng` (tests pin it with `Rng::fixed(..)` or `Rng::seeded(..)`).
    pub fn with_rng(mut self, rng: Rng) -> ExponentialBackoff {
        self.rng = rng;
        self
    }

    /// The first sleep's cap (full jitter) or floor (decorrelated jitter).
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest sleep.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter in use.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The successive sleeps of one call's retries, without end.
    pub fn delays(&self) -> Delays<'_> {
        Delays {
            backoff: self,
            state: BackoffState::new(),
        }
    }

    /// The sleep before retry `n` (from 0), given the sleep before the previous one.
    #[inline]
    fn delay(&self, n: u32, previous: Duration) -> Duration {
        match self.jitter {
            Jitter::Full => scale(self.cap(n), self.rng.next_f64()),
            Jitter::None => self.cap(n),
            Jitter::Decorrelated => {
                let high = previous.saturating_mul(3).max(self.base);
                let drawn = self.base + scale(high - self.base, self.rng.next_f64());
                drawn.min(self.max)
            }
        }
    }

    /// `min(max, base * 2^n)`, which is `max` whenever the product would overflow.
    #[inline]
    fn cap(&self, n: u32) -> Duration {
        2u32.checked_pow(n)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// `d * r` for `r` in `[0, 1)`, in integer nanoseconds so that `Rng::fixed(0.5)` halves exactly;
/// never more than `d`.
#[inline]
fn scale(d: Duration, r: f64) -> Duration {
    const ONE: f64 = (1u64 << 53) as f64;
    // `r * 2^53` is exact for a draw in [0, 1): a 53-bit fixed-point fraction.
    let fraction = (r * ONE) as u64;
    let nanos = (u128::from(saturating_nanos(d)) * u128::from(fraction)) >> 53;
    Duration::from_nanos(nanos as u64)
}

/// Where one call is in its backoff sequence.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackoffState {
    retries: u32,
    /// The previous sleep; zero before the first, which counts as `base` (a decorrelated sleep
    /// is never zero).
    previous: Duration,
}

impl BackoffState {
    /// Before the first retry. Reads nothing, so that a call that never retries pays nothing.
    #[inline]
    pub(crate) fn new() -> BackoffState {
        BackoffState {
            retries: 0,
            previous: Duration::ZERO,
        }
    }

    /// The retries the sleeps were for so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The sleep before the next retry.
    #[inline]
    pub(crate) fn next(&mut self, backoff: &ExponentialBackoff) -> Duration {
        let previous = if self.previous.is_zero() {
            backoff.base
        } else {
            self.previous
        };
        let delay = backoff.delay(self.retries, previous);
        self.retries = self.retries.saturating_add(1);
        self.previous = delay;
        delay
    }
}

/// The successive sleeps of an [`ExponentialBackoff`]; see [`ExponentialBackoff::delays`].
#[derive(Clone, Debug)]
pub struct Delays<'a> {
    backoff: &'a ExponentialBackoff,
    state: BackoffState,
}

impl Iterator for Delays<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.state.next(self.backoff))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rng::Rng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn refuses_bad_bounds() {
        assert_eq!(
            ExponentialBackoff::new(Duration::ZERO, ms(10)).unwrap_err(),
            InvalidBackoff::ZeroBase
        );
        assert_eq!(
            ExponentialBackoff::new(ms(10), ms(9)).unwrap_err(),
            InvalidBackoff::MaxBelowBase {
                base: ms(10),
                max: ms(9)
            }
        );
        assert!(ExponentialBackoff::new(ms(10), ms(10)).is_ok());
    }

    #[test]
    fn full_jitter_scales_a_doubling_cap() {
        let backoff = ExponentialBackoff::new(ms(100), ms(1000))
            .unwrap()
            .with_rng(Rng::fixed(0.25));
        let sleeps: Vec<_> = backoff.delays().take(6).collect();
        assert_eq!(sleeps, [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]);
    }

    #[test]
    fn no_jitter_is_the_cap_itself() {
        let backoff = ExponentialBackoff::new(ms(100), ms(1000))
            .unwrap()
            .with_jitter(Jitter::None);
        let sleeps: Vec<_> = backoff.delays().take(6).collect();
        assert_eq!(
            sleeps,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn full_jitter_at_zero_does_not_sleep() {
        let backoff = ExponentialBackoff::new(ms(100), ms(1000))
            .unwrap()
            .with_rng(Rng::fixed(0.0));
        assert!(backoff.delays().take(10).all(|d| d.is_zero()));
    }

    #[test]
    fn large_retry_numbers_stay_at_the_cap() {
        let backoff = ExponentialBackoff::new(ms(100), Duration::MAX)
            .unwrap()
            .with_jitter(Jitter::None);
        assert_eq!(backoff.cap(31), ms(100) * (1 << 31));
        for n in [32, 64, 1000, u32::MAX] {
            assert_eq!(backoff.cap(n), Duration::MAX, "n = {n}");
        }
        let backoff = backoff.with_jitter(Jitter::Full).with_rng(Rng::fixed(1.0));
        // Full jitter of an enormous cap must neither panic nor exceed it.
        assert!(backoff.delay(u32::MAX, Duration::MAX) <= Duration::MAX);
        let decorrelated = backoff.with_jitter(Jitter::Decorrelated);
        assert!(decorrelated.delay(0, Duration::MAX) <= Duration::MAX);
    }

    #[test]
    fn decorrelated_grows_by_three_at_most_and_stops_at_max() {
        let top = ExponentialBackoff::new(ms(100), ms(2000))
            .unwrap()
            .with_jitter(Jitter::Decorrelated)
            .with_rng(Rng::fixed(1.0));
        let sleeps: Vec<_> = top.delays().take(5).collect();
        // Just below 3x each time (the draw is below 1), then the cap.
        assert!(sleeps[0] < ms(300) && sleeps[0] > ms(299), "{sleeps:?}");
        assert!(sleeps[1] < ms(900) && sleeps[1] > ms(897), "{sleeps:?}");
        assert_eq!(&sleeps[2..], [ms(2000); 3]);

        let bottom = top.clone().with_rng(Rng::fixed(0.0));
        assert!(bottom.delays().take(10).all(|d| d == ms(100)));

        let half = top.with_rng(Rng::fixed(0.5));
        // base + (3 * previous - base) / 2: 200, 350, 575.
        let sleeps: Vec<_> = half.delays().take(3).collect();
        assert_eq!(sleeps, [ms(200), ms(350), ms(575)]);
    }

    proptest! {
        #[test]
        fn full_jitter_stays_under_its_cap(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..1_000_000,
            n in 0u32..200,
            draw in 0.0f64..1.0,
        ) {
            let (base, max) = (ms(base_ms), ms(base_ms + extra_ms));
            let backoff = ExponentialBackoff::new(base, max)
                .unwrap()
                .with_rng(Rng::fixed(draw));
            // The model: base * 2^n in wide integers, capped at max.
            let cap = if n < 64 {
                (u128::from(base_ms) << n).min(u128::from(base_ms + extra_ms))
            } else {
                u128::from(base_ms + extra_ms)
            };
            let delay = backoff.delay(n, base);
            prop_assert!(delay <= ms(cap as u64), "{delay:?} over {cap}ms");
        }

        #[test]
        fn full_jitter_sequences_stay_in_bounds(
            base_ms in 1u64..1_000,
            extra_ms in 0u64..100_000,
            seed: u64,
        ) {
            let (base, max) = (ms(base_ms), ms(base_ms + extra_ms));
            let backoff = ExponentialBackoff::new(base, max)
                .unwrap()
                .with_rng(Rng::seeded(seed));
            for (n, delay) in backoff.delays().take(100).enumerate() {
                let cap = base.checked_mul(1 << n.min(31)).map_or(max, |c| c.min(max));
                prop_assert!(delay <= cap, "retry {n}: {delay:?} over {cap:?}");
            }
        }

        #[test]
        fn decorrelated_stays_between_base_and_max(
            base_ms in 1u64..1_000,
            extra_ms in 0u64..100_000,
            seed: u64,
        ) {
            let (base, max) = (ms(base_ms), ms(base_ms + extra_ms));
            let backoff = ExponentialBackoff::new(base, max)
                .unwrap()
                .with_jitter(Jitter::Decorrelated)
                .with_rng(Rng::seeded(seed));
            let mut previous = base;
            for delay in backoff.delays().take(100) {
                prop_assert!(delay >= base && delay <= max, "{delay:?} outside [{base:?}, {max:?}]");
                prop_assert!(delay <= previous * 3, "{delay:?} more than 3x {previous:?}");
                previous = delay;
            }
        }
    }
}
