//! What a policy costs a call that it lets through, measured beside the crates people would
//! otherwise reach for, in one run so the numbers share a machine and a moment.
//!
//! Ids are `GROUP/CONTENDER`; `rampart` is this crate. Every contender in a group does the same
//! work: one call that succeeds at once, through a policy that lets it pass. Inputs and outputs go
//! through `black_box` so that no contender's call is folded away.
//!
//! Async calls are driven by polling once, in place, not by an executor: every future here
//! completes on its first poll, so the numbers are the policy's cost alone and no contender pays
//! for, or is hidden by, a runtime's scheduling. A future that ever waits fails the bench rather
//! than being measured as a no-op. Polling in place (`pin!`) rather than moving the future into a
//! helper (`now_or_never`) matters: the move is a memcpy of the whole future, and depending on its
//! layout a store-to-load forwarding stall, which cost some contenders 15 ns and others nothing.
//!
//! Run: `cargo bench -p rampart-policy --bench policies` (add `-- breaker` for one family).
//!
//! Note: benches build with the dev-dependencies, so tokio's `test-util` feature is on; it costs
//! `tokio::time::Instant::now()` a thread-local read. Contenders that read tokio's clock on the
//! success path pay it here; rampart's breaker reads its cached clock instead.

use std::future::{self, Future, Ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use rampart_policy::breaker::CircuitBreaker;
use rampart_policy::bulkhead::{Bulkhead, BulkheadLayer as RampartBulkheadLayer};
use rampart_policy::pipeline::Pipeline;
use rampart_policy::ratelimit::RateLimiter;
use rampart_policy::retry::{ExponentialBackoff, Retry, RetryLayer};
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Drives a future that must be done on its first poll, in place (see the module docs).
macro_rules! complete {
    ($future:expr) => {{
        let future = std::pin::pin!($future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.poll(&mut cx) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => {
                panic!("every contender completes a successful call on its first poll")
            }
        }
    }};
}

/// The callee behind every tower contender: answers at once. Its error type is inhabited and its
/// result opaque, as for the direct contenders, so that no policy's failure path is compiled out
/// by knowing that the call cannot fail.
fn ok_service()
-> impl Service<(), Response = (), Error = Failed, Future = Ready<Result<(), Failed>>> + Clone {
    tower::service_fn(|()| future::ready(black_box(Ok(()))))
}

/// The error the callee could return, a real error type as tower stacks expect.
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

/// One `ready` then one `call` on a tower service, as a caller owning the service does per request.
///
/// Inlined into every bench loop, so that each contender is measured the same way: LLVM inlines
/// a function called from one place whatever its size, and one called from several (a contender
/// with several benches of the same service type) only when it is small.
#[inline(always)]
fn ready_call<S: Service<()>>(svc: &mut S) -> Result<S::Response, S::Error> {
    let svc = complete!(svc.ready())?;
    complete!(svc.call(()))
}

// === breaker ===

fn breaker_closed_sync(c: &mut Criterion) {
    use failsafe::CircuitBreaker as _;

    let mut group = c.benchmark_group("breaker_closed_sync");

    let rampart = CircuitBreaker::builder().build().unwrap();
    group.bench_function("rampart", |b| {
        b.iter(|| black_box(&rampart).call_sync(|| black_box(Ok::<_, ()>(()))))
    });

    let recloser = recloser::Recloser::custom().build();
    group.bench_function("recloser", |b| {
        b.iter(|| black_box(&recloser).call(|| black_box(Ok::<_, ()>(()))))
    });

    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(&failsafe).call(|| black_box(Ok::<_, ()>(()))))
    });

    group.finish();
}

fn breaker_closed_async(c: &mut Criterion) {
    use failsafe::futures::CircuitBreaker as _;
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};

    let mut group = c.benchmark_group("breaker_closed_async");

    let rampart = CircuitBreaker::builder().build().unwrap();
    group.bench_function("rampart", |b| {
        b.iter(|| complete!(black_box(&rampart).call(|| async { black_box(Ok::<_, ()>(())) })))
    });

    let recloser = recloser::AsyncRecloser::from(recloser::Recloser::custom().build());
    group.bench_function("recloser", |b| {
        b.iter(|| complete!(black_box(&recloser).call(async { black_box(Ok::<_, ()>(())) })))
    });

    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| complete!(black_box(&failsafe).call(async { black_box(Ok::<_, ()>(())) })))
    });

    // Configured like rampart's default: a 10 s time-based window, 50% from 20 calls. Its
    // time-based window keeps one record per call and rescans them all on every success, so its
    // cost grows with the calls made in the last 10 s (tens of thousands at bench rates).
    let mut tower_resilience = CircuitBreakerLayer::builder()
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(10))
        .failure_rate_threshold(0.5)
        .minimum_number_of_calls(20)
        .build()
        .unwrap()
        .layer(ok_service());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| ready_call(&mut tower_resilience))
    });

    // Its default count-based window (last 100 calls), whose cost does not depend on call rate:
    // what tower-resilience costs when not asked for a time window.
    let mut tower_resilience_count = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .minimum_number_of_calls(20)
        .build()
        .unwrap()
        .layer(ok_service());
    group.bench_function("tower-resilience-count-window", |b| {
        b.iter(|| ready_call(&mut tower_resilience_count))
    });

    group.finish();
}

/// Runs `call` `iters` times on each of two threads at once and returns the wall time until both
/// are done, from a common start. Divided by `iters` (criterion does that), the reported time is
/// the time in which EACH of the two threads completes one call: two calls happen in it, one per
/// thread, on the same shared breaker. A breaker that does not contend reports about its
/// single-thread time; one that serialises the threads reports up to twice that, plus the cost of
/// moving its cache lines between cores.
fn contended(iters: u64, call: impl Fn() + Sync) -> Duration {
    contended_clones(iters, &(), |()| call())
}

/// Like [`contended`], each thread calling with its own clone of `state` (a tower service, which
/// is called through `&mut`).
#[expect(
    clippy::disallowed_types,
    reason = "a bench measures real wall time; the ban on std's clock is for policy code"
)]
fn contended_clones<S: Clone + Send>(
    iters: u64,
    state: &S,
    call: impl Fn(&mut S) + Sync,
) -> Duration {
    let start_line = Barrier::new(2);
    let run = |mut state: S| {
        start_line.wait();
        let start = std::time::Instant::now();
        for _ in 0..iters {
            call(&mut state);
        }
        start.elapsed()
    };
    thread::scope(|s| {
        let theirs = state.clone();
        let other = s.spawn(|| run(theirs));
        let mine = run(state.clone());
        mine.max(other.join().unwrap())
    })
}

fn breaker_closed_contended(c: &mut Criterion) {
    use failsafe::CircuitBreaker as _;

    let mut group = c.benchmark_group("breaker_closed_contended");

    let rampart = CircuitBreaker::builder().build().unwrap();
    group.bench_function("rampart", |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                let _ = black_box(black_box(&rampart).call_sync(|| black_box(Ok::<_, ()>(()))));
            })
        })
    });

    let recloser = recloser::Recloser::custom().build();
    group.bench_function("recloser", |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                let _ = black_box(black_box(&recloser).call(|| black_box(Ok::<_, ()>(()))));
            })
        })
    });

    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                let _ = black_box(black_box(&failsafe).call(|| black_box(Ok::<_, ()>(()))));
            })
        })
    });

    group.finish();
}

// === retry ===

/// tower's retry with the least policy that is one: retry an error at once, 3 attempts in all.
#[derive(Clone)]
struct Attempts(usize);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_err() && self.0 > 1 {
            self.0 -= 1;
            Some(future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// tower's retry with tower's own budget (`TpsBudget`, 20% over 10 s plus 10/s, like rampart's
/// default), deposited once per request: what a budget costs in tower.
#[derive(Clone)]
struct Budgeted {
    attempts: usize,
    budget: std::sync::Arc<tower::retry::budget::TpsBudget>,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        use tower::retry::budget::Budget as _;
        if result.is_err() && self.attempts > 1 && self.budget.withdraw() {
            self.attempts -= 1;
            Some(future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry_success(c: &mut Criterion) {
    use backon::{ExponentialBuilder, Retryable};
    use tower_resilience::retry::RetryLayer;

    let mut group = c.benchmark_group("retry_success");

    rampart_retry_success(&mut group);

    let mut tower = tower::retry::Retry::new(Attempts(3), ok_service());
    group.bench_function("tower", |b| b.iter(|| ready_call(&mut tower)));

    let budget = std::sync::Arc::new(tower::retry::budget::TpsBudget::new(
        Duration::from_secs(10),
        10,
        0.2,
    ));
    let mut tower_budget = tower::retry::Retry::new(
        Budgeted {
            attempts: 3,
            budget: budget.clone(),
        },
        ok_service(),
    );
    group.bench_function("tower-tps-budget", |b| {
        b.iter(|| {
            use tower::retry::budget::Budget as _;
            budget.deposit();
            ready_call(&mut tower_budget)
        })
    });

    // backon's default is 3 retries after the first attempt; on this path none is taken.
    group.bench_function("backon", |b| {
        b.iter(|| {
            complete!(
                (|| async { black_box(Ok::<_, ()>(())) }).retry(ExponentialBuilder::default())
            )
        })
    });

    let mut tower_resilience = RetryLayer::<(), (), Failed>::builder()
        .max_attempts(3)
        .build()
        .layer(ok_service());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| ready_call(&mut tower_resilience))
    });

    group.finish();
}

/// rampart's retry as a tower layer (the same harness as tower's), 3 attempts, with its default
/// budget on; and its direct form around an async call.
///
/// A service whose policy has other handles (the policy itself here, a server's other
/// connections in a proxy) finds the policy by key on a failure; one that holds the policy's
/// only handle has each call hold the policy, which costs a reference count per call:
/// `rampart-sole-handle` measures that case.
fn rampart_retry_success(group: &mut BenchmarkGroup<'_, WallTime>) {
    let retry = || Retry::new(3, ExponentialBackoff::new(ms(10), ms(1000)).unwrap()).unwrap();
    let policy = retry();
    assert!(policy.budget().is_some(), "measured with the budget on");
    let mut layered = RetryLayer::new(policy.clone()).layer(ok_service());
    group.bench_function("rampart", |b| b.iter(|| ready_call(&mut layered)));
    group.bench_function("rampart-direct", |b| {
        b.iter(|| complete!(black_box(&policy).call(|| async { black_box(Ok::<_, ()>(())) })))
    });
    // For comparison: what the budget costs. `without_budget` makes a policy of its own, kept
    // here beside the service as for `rampart`.
    let unbudgeted_policy = policy.clone().without_budget();
    let mut unbudgeted = RetryLayer::new(unbudgeted_policy.clone()).layer(ok_service());
    group.bench_function("rampart-no-budget", |b| {
        b.iter(|| ready_call(&mut unbudgeted))
    });
    // The layer is a temporary, as `ServiceBuilder` makes it: the service holds the only handle
    // of its policy.
    let mut sole = RetryLayer::new(retry()).layer(ok_service());
    group.bench_function("rampart-sole-handle", |b| b.iter(|| ready_call(&mut sole)));
}

/// Two threads calling one retry policy, each through its own clone of the service, as the
/// connections of a server do: what sharing the policy's budget and counters costs.
fn retry_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry_contended");

    let retry = Retry::new(3, ExponentialBackoff::new(ms(10), ms(1000)).unwrap()).unwrap();
    let layered = RetryLayer::new(retry).layer(ok_service());
    group.bench_function("rampart", |b| {
        b.iter_custom(|iters| contended_clones(iters, &layered, |svc| drop(ready_call(svc))))
    });

    let budget = std::sync::Arc::new(tower::retry::budget::TpsBudget::new(
        Duration::from_secs(10),
        10,
        0.2,
    ));
    let tower_budget = tower::retry::Retry::new(
        Budgeted {
            attempts: 3,
            budget: budget.clone(),
        },
        ok_service(),
    );
    group.bench_function("tower-tps-budget", |b| {
        b.iter_custom(|iters| {
            contended_clones(iters, &tower_budget, |svc| {
                use tower::retry::budget::Budget as _;
                budget.deposit();
                drop(ready_call(svc))
            })
        })
    });

    group.finish();
}

// === rate limit ===

fn ratelimit_allow(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_allow");

    // A quota no bench loop can exhaust, as for governor below.
    let rampart = RateLimiter::per_second(u32::MAX).build().unwrap();
    assert!(rampart.try_acquire().is_ok());
    group.bench_function("rampart", |b| b.iter(|| black_box(&rampart).try_acquire()));

    // A quota no bench loop can exhaust, so every check is an admission.
    let governor = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
    assert!(governor.check().is_ok());
    group.bench_function("governor", |b| b.iter(|| black_box(&governor).check()));

    group.finish();
}

/// Keys the keyed rate-limit bench cycles through: more than fit in one cache line's worth of
/// map, fewer than a sweep would ever see.
const KEYS: u64 = 1_000;

fn ratelimit_keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_keyed");

    // A quota no bench loop can exhaust, per key, so every check is an admission.
    let rampart = RateLimiter::per_second(u32::MAX)
        .build_keyed::<u64>()
        .unwrap();
    let mut key = 0;
    group.bench_function("rampart", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(&rampart).try_acquire(black_box(&key))
        })
    });

    // governor's keyed limiter over its std `HashMap` store, one mutex (dashmap is off here).
    let governor = governor::RateLimiter::hashmap(governor::Quota::per_second(NonZeroU32::MAX));
    let mut key = 0;
    group.bench_function("governor", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(&governor).check_key(black_box(&key))
        })
    });

    group.finish();
}

// === bulkhead ===

/// Permits for every bulkhead contender; the bench holds at most one at a time.
const BULKHEAD_PERMITS: usize = 10;

fn bulkhead(c: &mut Criterion) {
    use tower_resilience::bulkhead::BulkheadLayer;

    let mut group = c.benchmark_group("bulkhead");

    let rampart = Bulkhead::builder(BULKHEAD_PERMITS).build().unwrap();
    let mut layered = RampartBulkheadLayer::new(rampart.clone()).layer(ok_service());
    group.bench_function("rampart", |b| b.iter(|| ready_call(&mut layered)));
    group.bench_function("rampart-direct", |b| {
        b.iter(|| drop(black_box(black_box(&rampart).try_acquire())))
    });

    let mut tower = tower::limit::ConcurrencyLimit::new(ok_service(), BULKHEAD_PERMITS);
    group.bench_function("tower", |b| b.iter(|| ready_call(&mut tower)));

    let mut tower_resilience = BulkheadLayer::builder()
        .max_concurrent_calls(BULKHEAD_PERMITS)
        .build()
        .unwrap()
        .layer(ok_service());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| ready_call(&mut tower_resilience))
    });

    group.finish();
}

// === pipeline ===

/// One successful call through breaker + retry (budget on) + total and attempt timeouts +
/// bulkhead + rate limit: the documented stack of `Pipeline`.
fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    let pipeline = Pipeline::builder()
        .timeout(ms(1000))
        .retry(Retry::new(3, ExponentialBackoff::new(ms(10), ms(1000)).unwrap()).unwrap())
        .rate_limit(RateLimiter::per_second(u32::MAX).build().unwrap())
        .bulkhead(Bulkhead::builder(BULKHEAD_PERMITS).build().unwrap())
        .breaker(CircuitBreaker::new())
        .attempt_timeout(ms(250))
        .build();
    group.bench_function("rampart", |b| {
        b.iter(|| complete!(black_box(&pipeline).call(|| async { black_box(Ok::<_, ()>(())) })))
    });
    group.finish();
}

// === clock ===

/// What reading the time costs: why the policies' statistics read a cached clock.
#[expect(
    clippy::disallowed_types,
    reason = "measuring the clock the policies avoid"
)]
fn clock_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock_read");
    group.bench_function("std-instant", |b| b.iter(std::time::Instant::now));
    group.bench_function("tokio-instant", |b| b.iter(tokio::time::Instant::now));
    group.bench_function("rampart-recent", |b| {
        b.iter(rampart_policy::clock::recent_nanos)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest times so that the whole run takes a few minutes on a shared 2-core machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets =
        breaker_closed_sync,
        breaker_closed_async,
        breaker_closed_contended,
        retry_success,
        retry_contended,
        ratelimit_allow,
        ratelimit_keyed,
        bulkhead,
        pipeline,
        clock_read,
}
criterion_main!(benches);
