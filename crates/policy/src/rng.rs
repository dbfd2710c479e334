//! Injectable randomness for jitter and sampling.
//!
//! Every random choice a policy makes (backoff jitter, the jittered open period of a breaker, a
//! fault injected in 5% of calls) goes through an [`Rng`], so tests can pin it: `Rng::fixed(0.0)`
//! makes jitter vanish and `Rng::seeded(n)` replays one sequence.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of uniform random numbers in `[0, 1)`; cheap to clone and shareable.
#[derive(Clone, Default)]
pub struct Rng(Source);

#[derive(Clone, Default)]
enum Source {
    /// A fast thread-local generator.
    #[default]
    Thread,
    /// Always the same value.
    Fixed(f64),
    /// A deterministic sequence shared by all clones (SplitMix64 over an atomic counter).
    Seeded(Arc<AtomicU64>),
    /// Anything else.
    Func(Arc<dyn Fn() -> f64 + Send + Sync>),
}

impl Rng {
    /// A fast, thread-local, non-cryptographic generator. The default.
    pub fn thread() -> Rng {
        Rng(Source::Thread)
    }

    /// Returns `value` every time, clamped into `[0, 1)`. `Rng::fixed(0.0)` turns jitter off.
    pub fn fixed(value: f64) -> Rng {
        let value = if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, ONE_BELOW)
        };
        Rng(Source::Fixed(value))
    }

    /// A reproducible sequence: two generators seeded alike yield the same numbers.
    pub fn seeded(seed: u64) -> Rng {
        Rng(Source::Seeded(Arc::new(AtomicU64::new(seed))))
    }

    /// Draws from a function; its results are clamped into `[0, 1)`.
    pub fn from_fn(f: impl Fn() -> f64 + Send + Sync + 'static) -> Rng {
        Rng(Source::Func(Arc::new(f)))
    }

    /// A uniform number in `[0, 1)`.
    #[inline]
    pub fn next_f64(&self) -> f64 {
        match &self.0 {
            Source::Thread => fastrand::f64(),
            Source::Fixed(value) => *value,
            Source::Seeded(state) => {
                let x = splitmix64(state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed));
                // The top 53 bits make an exactly representable fraction in [0, 1).
                (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
            }
            Source::Func(f) => {
                let value = f();
                if value.is_nan() {
                    0.0
                } else {
                    value.clamp(0.0, ONE_BELOW)
                }
            }
        }
    }

    /// True with probability `p` (clamped into `[0, 1]`).
    #[inline]
    pub fn chance(&self, p: f64) -> bool {
        self.next_f64() < p
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Thread => f.write_str("Rng::thread()"),
            Source::Fixed(value) => write!(f, "Rng::fixed({value})"),
            Source::Seeded(_) => f.write_str("Rng::seeded(..)"),
            Source::Func(_) => f.write_str("Rng::from_fn(..)"),
        }
    }
}

const ONE_BELOW: f64 = 1.0 - f64::EPSILON / 2.0;
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_is_clamped_into_the_unit_interval() {
        assert_eq!(Rng::fixed(0.25).next_f64(), 0.25);
        assert_eq!(Rng::fixed(-3.0).next_f64(), 0.0);
        assert!(Rng::fixed(1.0).next_f64() < 1.0);
        assert_eq!(Rng::fixed(f64::NAN).next_f64(), 0.0);
    }

    #[test]
    fn seeded_sequences_repeat_and_stay_in_range() {
        let a = Rng::seeded(7);
        let b = Rng::seeded(7);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::seeded(1).next_f64(), Rng::seeded(2).next_f64());
    }

    #[test]
    fn chance_follows_the_draw() {
        assert!(Rng::fixed(0.1).chance(0.2));
        assert!(!Rng::fixed(0.3).chance(0.2));
        assert!(!Rng::fixed(0.0).chance(0.0));
    }
}
