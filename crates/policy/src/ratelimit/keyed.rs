//! Rate limits per key: a bucket for each client, tenant or API key.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hashbrown::HashTable;
use tower_layer::Layer;
use tower_service::Service;

use super::Rate;
use super::error::RateLimited;
use super::future::ResponseFuture;
use crate::clock::TimeSource;
use crate::error::{BoxError, Error};

/// Shards of the key map, each behind its own lock: callers with different keys seldom wait on
/// one another.
const SHARDS: usize = 16;

/// A shard's map is swept of full buckets once it holds this many keys, at the least.
const SWEEP_MIN: usize = 64;

/// A rate limit with a bucket of its own for each key: each client (a tenant, an API key, an
/// address) gets the rate and burst, whatever the others do, as with Envoy's local rate limit by
/// descriptor or a stick table in HAProxy. Made by
/// [`RateLimiterBuilder::build_keyed`](super::RateLimiterBuilder::build_keyed). Cheap to
/// clone: clones share the buckets.
///
/// A bucket is one number, the theoretical arrival time of the key's next call (GCRA, as in
/// [`RateLimiter`](super::RateLimiter)), kept in a map split into shards, each behind a lock
/// held for a lookup. A key whose bucket has refilled is the same as a key never seen, so the
/// map forgets it: a shard drops its full buckets whenever it has grown to twice what it held
/// after the last sweep, so memory follows the keys active in the last burst's worth of time,
/// not every key ever seen.
///
/// ```
/// use rampart_policy::ratelimit::RateLimiter;
///
/// // Two calls a second for each tenant.
/// let limiter = RateLimiter::per_second(2).build_keyed::<String>().unwrap();
/// let (acme, initech) = ("acme".to_owned(), "initech".to_owned());
/// assert!(limiter.try_acquire(&acme).is_ok());
/// assert!(limiter.try_acquire(&acme).is_ok());
/// assert!(limiter.try_acquire(&acme).is_err());
/// assert!(limiter.try_acquire(&initech).is_ok(), "another tenant's bucket is full");
/// ```
pub struct KeyedRateLimiter<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    hasher: RandomState,
    rate: Rate,
    time: TimeSource,
}

struct Shard<K> {
    /// Each key and the theoretical arrival time of its next call; a key absent has a full
    /// bucket.
    tats: HashTable<(K, u64)>,
    /// The size at which the shard is next swept.
    sweep_at: usize,
}

// === impl KeyedRateLimiter ===

impl<K: Hash + Eq> KeyedRateLimiter<K> {
    pub(super) fn new(rate: Rate, time: TimeSource) -> KeyedRateLimiter<K> {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tats: HashTable::new(),
                    sweep_at: SWEEP_MIN,
                })
            })
            .collect();
        KeyedRateLimiter {
            shared: Arc::new(Shared {
                shards,
                hasher: RandomState::new(),
                rate,
                time,
            }),
        }
    }

    /// Takes one call's worth from `key`'s bucket, or says how long until one is there.
    pub fn try_acquire(&self, key: &K) -> Result<(), RateLimited>
    where
        K: Clone,
    {
        let shared = &*self.shared;
        match shared.admit(key, shared.time.nanos()) {
            Ok(()) => Ok(()),
            // The cached clock may lag: before refusing, look at the real time.
            Err(_) => shared
                .admit(key, shared.time.precise_nanos())
                .map_err(|wait| RateLimited::new(Duration::from_nanos(wait))),
        }
    }

    /// Calls `f` if `key`'s bucket allows a call now; fails with
    /// [`Rejected::RateLimited`](crate::Rejected::RateLimited) at once, without calling `f`,
    /// when it does not.
    pub async fn call<F, Fut, T, E>(&self, key: &K, f: F) -> Result<T, Error<E>>
    where
        K: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.try_acquire(key)
            .map_err(|limited| Error::Rejected(limited.into()))?;
        f().await.map_err(Error::Inner)
    }

    /// A tower layer that limits each request by the bucket of the key `key` gives it (say,
    /// a tenant header); its services share the buckets.
    pub fn layer<F>(&self, key: F) -> KeyedRateLimitLayer<K, F> {
        KeyedRateLimitLayer {
            limiter: self.clone(),
            key,
        }
    }

    /// How many keys have a bucket not known to be full: those seen lately, and some whose
    /// bucket refilled and is not swept yet.
    pub fn keys(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| lock(shard).tats.len())
            .sum()
    }
}

impl<K> KeyedRateLimiter<K> {
    /// The most calls allowed in a row for one key.
    pub fn burst(&self) -> u32 {
        self.shared.rate.burst
    }

    /// The time it takes for one call's worth to come back into a key's bucket.
    pub fn replenish_interval(&self) -> Duration {
        Duration::from_nanos(self.shared.rate.interval)
    }
}

impl<K> Clone for KeyedRateLimiter<K> {
    fn clone(&self) -> Self {
        KeyedRateLimiter {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("burst", &self.burst())
            .field("replenish_interval", &self.replenish_interval())
            .finish_non_exhaustive()
    }
}

fn lock<K>(shard: &Mutex<Shard<K>>) -> std::sync::MutexGuard<'_, Shard<K>> {
    // The map holds plain numbers: a panic elsewhere cannot leave it half-written.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Shared ===

impl<K: Hash + Eq> Shared<K> {
    /// Admits a call for `key` at `now`, or says how many nanoseconds until one would be.
    fn admit(&self, key: &K, now: u64) -> Result<(), u64>
    where
        K: Clone,
    {
        // One hash for the shard and the slot: SipHash with a random key, as a client may
        // choose its key. The shard takes bits the table does not use for a slot in any table
        // of under four billion entries, nor for its tags (the top seven).
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize % self.shards.len();
        let mut shard = lock(&self.shards[index]);
        if let Some((_, tat)) = shard.tats.find_mut(hash, |(k, _)| k == key) {
            let (_, next) = self.rate.step(*tat, now, 0)?;
            *tat = next;
            return Ok(());
        }
        let (_, next) = self.rate.step(0, now, 0)?;
        if shard.tats.len() >= shard.sweep_at {
            // A bucket refilled by now is a key never seen.
            shard.tats.retain(|(_, tat)| *tat > now);
            shard.sweep_at = (shard.tats.len() * 2).max(SWEEP_MIN);
        }
        shard
            .tats
            .insert_unique(hash, (key.clone(), next), |(k, _)| self.hasher.hash_one(k));
        Ok(())
    }
}

// === KeyedRateLimitLayer ===

/// Limits each request by the bucket of its key; made by [`KeyedRateLimiter::layer`].
#[derive(Clone, Debug)]
pub struct KeyedRateLimitLayer<K, F> {
    limiter: KeyedRateLimiter<K>,
    key: F,
}

impl<S, K, F: Clone> Layer<S> for KeyedRateLimitLayer<K, F> {
    type Service = KeyedRateLimitService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// A service whose requests are limited by the bucket of their key.
///
/// A request over its key's limit is refused from the response future with [`RateLimited`],
/// without calling the service below; `poll_ready` only asks the service below.
#[derive(Clone, Debug)]
pub struct KeyedRateLimitService<S, K, F> {
    inner: S,
    limiter: KeyedRateLimiter<K>,
    key: F,
}

impl<S, K, F> KeyedRateLimitService<S, K, F> {
    /// The limiter.
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, K, F> Service<R> for KeyedRateLimitService<S, K, F>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&R) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let key = (self.key)(&request);
        match self.limiter.try_acquire(&key) {
            Ok(()) => ResponseFuture::allowed(self.inner.call(request)),
            // The request is dropped unsent; the readiness it was given serves the next one.
            Err(limited) => ResponseFuture::limited(limited),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::clock::tokio_clock;
    use crate::error::is_caused_by;
    use crate::ratelimit::RateLimiter;

    fn limiter(per_second: u32, burst: u32) -> KeyedRateLimiter<u32> {
        RateLimiter::per_second(per_second)
            .burst(burst)
            .clock(tokio_clock())
            .build_keyed()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_a_bucket_of_its_own() {
        let limiter = limiter(10, 2);
        assert!(limiter.try_acquire(&1).is_ok());
        assert!(limiter.try_acquire(&1).is_ok());
        let limited = limiter.try_acquire(&1).unwrap_err();
        assert_eq!(limited.retry_after(), Duration::from_millis(100));
        // Another key is untouched by the first's calls.
        assert!(limiter.try_acquire(&2).is_ok());
        assert!(limiter.try_acquire(&2).is_ok());
        assert!(limiter.try_acquire(&2).is_err());
        // A tenth of a second later each key has one call's worth back.
        tokio::time::advance(Duration::from_millis(100)).await;
        for key in [1, 2] {
            assert!(limiter.try_acquire(&key).is_ok());
            assert!(limiter.try_acquire(&key).is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_whose_buckets_refilled_are_forgotten() {
        let limiter = limiter(10, 1);
        for key in 0..5_000 {
            limiter.try_acquire(&key).unwrap();
        }
        assert_eq!(limiter.keys(), 5_000);
        // A second later every bucket is full again: as good as never seen.
        tokio::time::advance(Duration::from_secs(1)).await;
        for key in 5_000..10_000 {
            limiter.try_acquire(&key).unwrap();
        }
        let keys = limiter.keys();
        assert!(
            keys < 6_000,
            "{keys} keys kept of 10,000, 5,000 of them full"
        );
        // A forgotten key starts with a full bucket, as it would have had.
        assert!(limiter.try_acquire(&0).is_ok());
        assert!(limiter.try_acquire(&0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_limits_each_request_by_its_key() {
        let limiter = limiter(1, 1);
        let service = limiter
            .layer(|request: &(u32, char)| request.0)
            .layer(service_fn(|request: (u32, char)| async move {
                Ok::<_, BoxError>(request.1)
            }));
        assert_eq!(service.clone().oneshot((1, 'a')).await.unwrap(), 'a');
        let err = service.clone().oneshot((1, 'b')).await.unwrap_err();
        assert!(is_caused_by::<RateLimited>(&*err), "{err}");
        assert_eq!(service.oneshot((2, 'c')).await.unwrap(), 'c');
    }
}
