//! No policy allocates on the path of a call it lets through.
//!
//! A policy sits on every call; an allocation per call is a cost paid everywhere, and a source of
//! contention on the allocator. This binary runs under a counting allocator (per thread), warms each
//! policy up (first uses set up thread-locals and the cached clock), then counts the allocations of
//! many successful calls.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rampart_policy::adaptive::AdaptiveLimit;
use rampart_policy::breaker::CircuitBreaker;
use rampart_policy::bulkhead::{Bulkhead, BulkheadLayer};
use rampart_policy::fallback::Fallback;
use rampart_policy::hedge::{Hedge, HedgeDelay};
use rampart_policy::pipeline::Pipeline;
use rampart_policy::ratelimit::{RateLimitLayer, RateLimiter};
use rampart_policy::retry::{ExponentialBackoff, Retry, RetryLayer};
use rampart_policy::timeout::{Deadline, Timeout, TimeoutLayer};
use tower::{Layer, Service};

const CALLS: u64 = 1_000;

/// Polls a future that must be ready at once, in place.
fn complete<F: Future>(future: F) -> F::Output {
    let future = pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => {
            panic!("a successful call through a policy that lets it pass is ready at once")
        }
    }
}

/// Runs `call` to warm up, then asserts that `CALLS` more calls allocate nothing.
fn assert_no_alloc(what: &str, mut call: impl FnMut()) {
    for _ in 0..10 {
        call();
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..CALLS {
            call();
        }
    });
    assert_eq!(
        info.count_total, 0,
        "{what}: {} allocations in {CALLS} calls",
        info.count_total
    );
}

async fn ok() -> Result<u32, std::io::Error> {
    Ok(black_box(7))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn retry() -> Retry {
    Retry::new(3, ExponentialBackoff::new(ms(10), ms(1000)).unwrap()).unwrap()
}

/// A tower service answering at once, and one ready-and-call on it.
fn ok_service() -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = std::future::Ready<Result<u32, std::io::Error>>,
> + Clone {
    tower::service_fn(|req: u32| std::future::ready(Ok(req)))
}

fn ready_call<S: Service<u32>>(svc: &mut S) -> Result<S::Response, S::Error> {
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("the service is always ready"),
    }
    complete(svc.call(black_box(1)))
}

#[test]
fn direct_calls_allocate_nothing() {
    let breaker = CircuitBreaker::new();
    assert_no_alloc("breaker, sync", || {
        breaker.call_sync(|| Ok::<_, ()>(black_box(1))).unwrap();
    });
    assert_no_alloc("breaker", || {
        complete(breaker.call(ok)).unwrap();
    });

    let retry = retry();
    assert!(retry.budget().is_some());
    assert_no_alloc("retry with its budget", || {
        complete(retry.call(ok)).unwrap();
    });

    let timeout = Timeout::new(ms(100));
    assert_no_alloc("timeout", || {
        complete(timeout.call(ok)).unwrap();
    });
    let deadline = Deadline::after(Duration::from_secs(3600));
    assert_no_alloc("timeout inside a deadline", || {
        complete(deadline.scope(timeout.call(ok))).unwrap();
    });

    let bulkhead = Bulkhead::builder(8).build().unwrap();
    assert_no_alloc("bulkhead", || {
        complete(bulkhead.call(ok)).unwrap();
    });

    let limiter = RateLimiter::per_second(u32::MAX).build().unwrap();
    assert_no_alloc("rate limit", || {
        complete(limiter.call(ok)).unwrap();
    });

    let adaptive = AdaptiveLimit::gradient2();
    assert_no_alloc("adaptive limit", || {
        complete(adaptive.call(ok)).unwrap();
    });

    let hedge = Hedge::new(HedgeDelay::Fixed(ms(50))).unwrap();
    assert_no_alloc("hedge, answered before its delay", || {
        complete(hedge.call(ok)).unwrap();
    });

    let fallback = Fallback::value(0u32);
    assert_no_alloc("fallback, not needed", || {
        complete(fallback.call(|| async { Ok(black_box(7)) }))
            .map_err(|_: rampart_policy::Error<()>| ())
            .unwrap();
    });

    let pipeline = Pipeline::builder()
        .timeout(ms(1000))
        .retry(retry.clone())
        .rate_limit(RateLimiter::per_second(u32::MAX).build().unwrap())
        .bulkhead(Bulkhead::builder(8).build().unwrap())
        .breaker(CircuitBreaker::new())
        .attempt_timeout(ms(250))
        .build();
    assert_no_alloc("pipeline", || {
        complete(pipeline.call(ok)).unwrap();
    });
}

#[test]
fn tower_layers_allocate_nothing() {
    let mut breaker = CircuitBreaker::new().layer().layer(ok_service());
    assert_no_alloc("breaker layer", || {
        ready_call(&mut breaker).unwrap();
    });
    let mut retry = RetryLayer::new(retry()).layer(ok_service());
    assert_no_alloc("retry layer", || {
        ready_call(&mut retry).unwrap();
    });
    let mut timeout = TimeoutLayer::new(Timeout::new(ms(100))).layer(ok_service());
    assert_no_alloc("timeout layer", || {
        ready_call(&mut timeout).unwrap();
    });
    let mut bulkhead =
        BulkheadLayer::new(Bulkhead::builder(8).build().unwrap()).layer(ok_service());
    assert_no_alloc("bulkhead layer", || {
        ready_call(&mut bulkhead).unwrap();
    });
    let mut limiter =
        RateLimitLayer::new(RateLimiter::per_second(u32::MAX).build().unwrap()).layer(ok_service());
    assert_no_alloc("rate limit layer", || {
        ready_call(&mut limiter).unwrap();
    });
}
