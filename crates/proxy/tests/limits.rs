//! `[upstreams.NAME.limits]` against real upstreams: the concurrency limit and its pending queue,
//! the rate limit, the adaptive limit; refusals answered `overloaded` or `rate-limited`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, Fault, FaultProxy, Upstream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::*;

/// A GET of `/` sent on a task of its own.
fn spawn_get(proxy: &Proxy) -> JoinHandle<Response<Bytes>> {
    let uri = format!("http://{}/", addr(proxy));
    tokio::spawn(async move {
        let request = hyper::Request::get(uri).body(Default::default()).unwrap();
        send(&http1(), request).await
    })
}

fn assert_refused(response: &Response<Bytes>, status: StatusCode, reason: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(error_of(response), Some(reason));
}

#[tokio::test]
async fn past_the_limit_and_a_full_queue_the_answer_is_overloaded_and_the_queued_one_waits() {
    let upstream = Upstream::start(Behavior::Slow(Duration::from_secs(1)))
        .await
        .unwrap();
    // One failure would open the breaker, were refusals counted as failures.
    let proxy = simple(
        &[upstream.addr()],
        "",
        "[upstreams.app.limits]\nmax_concurrent = 2\nmax_pending = 1\npending_timeout = \"10s\"\n\
         [upstreams.app.breaker]\nconsecutive_failures = 1",
    )
    .await;

    let running = [spawn_get(&proxy), spawn_get(&proxy)];
    upstream.wait_for_requests(2).await;
    // Two more: one waits in the queue of one, the other finds it full and is refused at once,
    // while the first two are still running.
    let mut third = spawn_get(&proxy);
    let mut fourth = spawn_get(&proxy);
    let (refused, queued) = tokio::select! {
        refused = &mut third => (refused.unwrap(), fourth),
        refused = &mut fourth => (refused.unwrap(), third),
    };
    assert_refused(&refused, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(running.iter().all(|task| !task.is_finished()));
    assert_eq!(upstream.request_count(), 2);
    upstream.set_behavior(Behavior::ok("ok"));

    // The queued one goes through once a slot frees.
    for task in running {
        assert_eq!(task.await.unwrap().status(), StatusCode::OK);
    }
    let queued = queued.await.unwrap();
    assert_eq!(queued.status(), StatusCode::OK);
    assert_eq!(upstream.request_count(), 3);

    // The refusal did not open the endpoint's breaker.
    assert_eq!(get(&proxy, "/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_waiting_past_pending_timeout_is_overloaded() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "",
        "[upstreams.app.limits]\nmax_concurrent = 1\nmax_pending = 1\npending_timeout = \"200ms\"",
    )
    .await;

    let hanging = spawn_get(&proxy);
    upstream.wait_for_requests(1).await;
    let start = Instant::now();
    let refused = get(&proxy, "/").await;
    assert_refused(&refused, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    // It waited in the queue for the timeout (a full queue would have refused it at once).
    assert!(start.elapsed() >= Duration::from_millis(200));
    // Not retried onto the upstream either.
    assert_eq!(upstream.request_count(), 1);
    hanging.abort();
}

#[tokio::test]
async fn over_the_rate_the_answer_is_rate_limited_and_the_upstream_sees_only_the_burst() {
    let upstream = Upstream::start(Behavior::ok("ok")).await.unwrap();
    // Per minute, so that no token comes back while the test runs, however slow the machine.
    let proxy = simple(
        &[upstream.addr()],
        "",
        "[upstreams.app.limits]\nrate = \"5/m\"\nburst = 5",
    )
    .await;

    for i in 0..5 {
        assert_eq!(
            get(&proxy, "/").await.status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    let refused = get(&proxy, "/").await;
    assert_refused(&refused, StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(upstream.request_count(), 5);
    // A token comes back every 12 s: the client is told to wait, in whole seconds, at most that.
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&wait), "{wait}");
}

#[tokio::test]
async fn a_request_no_endpoint_may_take_spends_no_token() {
    // The only endpoint is a fault proxy refusing connections, in front of an upstream that
    // answers once it listens again.
    let behind = Upstream::start(Behavior::ok("ok")).await.unwrap();
    let endpoint = FaultProxy::start(behind.addr()).await.unwrap();
    endpoint.set_fault(Fault::Refuse).unwrap();
    // Per minute, so that no token comes back while the test runs, however slow the machine.
    let proxy = simple(
        &[endpoint.addr()],
        "[routes.retry]\nattempts = 1\n\
         [routes.fallback]\non = [\"breaker-open\"]\nbody = \"later\"",
        "[upstreams.app.limits]\nrate = \"10/m\"\nburst = 10\n\
         [upstreams.app.breaker]\nconsecutive_failures = 5\nopen_for = \"60s\"",
    )
    .await;

    // Five attempts fail and open the breaker: five tokens spent.
    for _ in 0..5 {
        let response = get(&proxy, "/").await;
        assert_refused(&response, StatusCode::BAD_GATEWAY, "upstream-connect");
    }
    // While it is open, every request gets the fallback: none is told to slow down for
    // attempts that were never sent.
    for i in 0..25 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(response.headers()["x-rampart-fallback"], "breaker-open");
        assert_eq!(response.body(), "later");
    }

    // The endpoint is back and its breaker closed: the five tokens left take five requests to
    // it, and the sixth is over the rate.
    endpoint.set_fault(Fault::None).unwrap();
    for breaker in proxy.handle().breakers("app", None).unwrap() {
        breaker.force_closed();
    }
    for i in 0..5 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(response.body(), "ok");
    }
    let refused = get(&proxy, "/").await;
    assert_refused(&refused, StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(behind.request_count(), 5);
}

#[tokio::test]
async fn the_adaptive_limit_refuses_past_its_limit_at_once() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "",
        "[upstreams.app.limits]\nmax_concurrent = \"adaptive\"",
    )
    .await;

    // The adaptive limit starts at 20 and learns nothing from attempts still running.
    let hanging: Vec<_> = (0..20).map(|_| spawn_get(&proxy)).collect();
    upstream.wait_for_requests(20).await;
    let refused = get(&proxy, "/").await;
    assert_refused(&refused, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(upstream.request_count(), 20);
    for task in hanging {
        task.abort();
    }
}

#[tokio::test]
async fn a_retry_kept_waiting_for_a_place_until_the_deadline_hands_back_the_answer_in_hand() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let hanging = Upstream::start(Behavior::Hang).await.unwrap();
    // One place for the upstream's two routes; `main` retries after a backoff of 396 ms (the
    // jitter drawn at its top), `hold` keeps its place for as long as its endpoint hangs.
    let proxy = rampart_test_support::ProxyBuilder::from_toml(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"hold\"\nmatch = {{ path_prefix = \"/hold\" }}\nupstream = \"app\"\n\
         timeout = \"30s\"\n[routes.retry]\nattempts = 1\n\
         [[routes]]\nname = \"main\"\nupstream = \"app\"\ntimeout = \"1s\"\n\
         [routes.retry]\nattempts = 2\nbackoff = {{ base = \"400ms\", max = \"400ms\" }}\n\n\
         [upstreams.app]\nendpoints = [\"{}\", \"{}\"]\nbalance = \"round-robin\"\n\
         [upstreams.app.breaker]\nenabled = false\n\
         [upstreams.app.limits]\nmax_concurrent = 1\nmax_pending = 1\npending_timeout = \"30s\"\n",
        failing.addr(),
        hanging.addr(),
    ))
    .rng(rampart_policy::rng::Rng::fixed(0.99))
    .start()
    .await;

    let main = spawn_get(&proxy);
    failing.wait_for_requests(1).await;
    // While `main` backs off, a request to `hold` takes the one place (round-robin's next
    // endpoint, the hanging one) and keeps it past `main`'s deadline.
    let hold = tokio::spawn({
        let uri = format!("http://{}/hold", addr(&proxy));
        async move {
            let request = hyper::Request::get(uri).body(Default::default()).unwrap();
            send(&http1(), request).await
        }
    });
    hanging.wait_for_requests(1).await;

    // The retry waited for the place until the deadline: the first attempt's 503 is the
    // answer, not a timeout.
    let answer = main.await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&answer), None, "{:?}", answer.headers());
    hold.abort();
}

#[tokio::test]
async fn attempts_in_flight_across_a_reload_still_count_against_the_limit_and_the_balancer() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let builder = |extra: &str| {
        rampart_test_support::ProxyBuilder::to(&[upstream.addr()])
            .upstream(extra)
            .upstream("[upstreams.app.limits]\nmax_concurrent = 1\nmax_pending = 0")
    };
    let proxy = builder("").start().await;
    let hanging = spawn_get(&proxy);
    upstream.wait_for_requests(1).await;

    // The upstream changes, not its limits: its pool is built anew while the attempt runs.
    let changed = builder("connect_timeout = \"2s\"").toml();
    let config = rampart_config::Config::from_str(&changed, "test.toml").unwrap();
    assert_eq!(proxy.reload(&config).unwrap().upstreams.changed, ["app"]);
    let app = proxy.handle().snapshot().upstreams.remove(0);
    assert_eq!(app.in_flight, 1, "the limit still counts it");
    assert_eq!(app.endpoints[0].in_flight, 1, "so does the balancer");
    let refused = get(&proxy, "/").await;
    assert_refused(&refused, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(upstream.request_count(), 1);
    hanging.abort();
}
