//! `[routes.hedge]` against real upstreams: a request slow to answer is sent again to another
//! endpoint, the first good answer wins and the loser is cancelled.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use rampart_policy::rng::Rng;
use rampart_test_support::{Behavior, ProxyBuilder, Upstream};

use common::*;

const SLOW: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_request_slow_to_answer_is_answered_by_a_hedge_to_the_fast_endpoint() {
    let slow = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    // One failure would eject the slow endpoint, were a cancelled loser counted as one. Taking
    // turns, so that the slow endpoint keeps being asked first (p2c-ewma learns to avoid it).
    let proxy = simple(
        &[slow.addr(), fast.addr()],
        "[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "balance = \"round-robin\"\n\
         [upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"",
    )
    .await;

    let client = http1();
    let mut requests = 0;
    // Until two requests have started on the slow endpoint: the first one's cancellation must
    // not have ejected it.
    while slow.request_count() < 2 {
        assert!(requests < 20, "the slow endpoint stopped getting requests");
        requests += 1;
        let response = send(&client, request(&proxy, "/").body(Full::default()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        // The slow endpoint would have answered `ok`: the hedge won.
        assert_eq!(response.body(), "fast", "request {requests}");
    }
    // Each request reached the fast endpoint once, first or as the one hedge; none was sent a
    // third time.
    assert_eq!(fast.request_count(), requests);
    assert!(slow.request_count() + fast.request_count() <= 2 * requests);
}

#[tokio::test]
async fn p2c_learns_to_avoid_an_endpoint_whose_attempts_lose_to_hedges() {
    // It never answers within the hedge's delay, and its attempts end cancelled, never
    // finished: each still tells the balancer it took at least that long.
    let slow = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    let proxy = simple(
        &[slow.addr(), fast.addr()],
        "[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "",
    )
    .await;

    let client = http1();
    for _ in 0..20 {
        let response = send(&client, request(&proxy, "/").body(Full::default()).unwrap()).await;
        assert_eq!(response.body(), "fast");
    }
    // Both start at the same guess: the slow one is asked first until one of its attempts is
    // let go, and then, against an endpoint answering at once, hardly ever.
    assert!(
        slow.request_count() <= 3,
        "the slow endpoint was asked first {} times of 20",
        slow.request_count()
    );
}

#[tokio::test]
async fn a_post_is_not_hedged() {
    let slow = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    let proxy = simple(
        &[slow.addr(), fast.addr()],
        "[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "",
    )
    .await;

    let client = http1();
    let mut requests = 0;
    while slow.request_count() < 1 {
        assert!(requests < 20, "no request started on the slow endpoint");
        requests += 1;
        let request = request(&proxy, "/")
            .method(Method::POST)
            .body(Full::new(Bytes::from_static(b"order")))
            .unwrap();
        let response = send(&client, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        // Sent once: no hedge, so a POST that started on the slow endpoint waited for it.
        assert_eq!(slow.request_count() + fast.request_count(), requests);
    }
}

#[tokio::test]
async fn hedges_stop_at_max_extra() {
    let slow: Vec<_> = slow_upstreams(3).await;
    let proxy = simple(
        &slow.iter().map(Upstream::addr).collect::<Vec<_>>(),
        "[routes.hedge]\nafter = \"20ms\"\nmax_extra = 1",
        "",
    )
    .await;

    // Every endpoint is slow: the request waits for one, and is sent twice at most.
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen: u64 = slow.iter().map(Upstream::request_count).sum();
    assert_eq!(seen, 2);
}

#[tokio::test]
async fn each_hedge_goes_to_an_endpoint_not_racing_yet() {
    let slow = [
        Upstream::start(Behavior::Slow(SLOW)).await.unwrap(),
        Upstream::start(Behavior::Slow(SLOW)).await.unwrap(),
    ];
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    // Draws of 0 make `random` take the first endpoint it may: the request starts on the first
    // slow endpoint and its first hedge goes to the second; the second hedge must go to the
    // fast one, not back to the first, which is racing already.
    let proxy = ProxyBuilder::to(&[slow[0].addr(), slow[1].addr(), fast.addr()])
        .route("[routes.hedge]\nafter = \"50ms\"\nmax_extra = 2")
        .upstream("balance = \"random\"")
        .rng(Rng::fixed(0.0))
        .start()
        .await;

    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "fast");
    assert_eq!(slow.map(|upstream| upstream.request_count()), [1, 1]);
    assert_eq!(fast.request_count(), 1);
}

#[tokio::test]
async fn an_upstream_of_one_endpoint_is_hedged_to_it_again() {
    // One endpoint most often stands for several servers (a Kubernetes Service, a load
    // balancer): here the first attempt meets a slow one and the hedge, on another connection,
    // a fast one.
    let upstream = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "",
    )
    .await;

    let get = request(&proxy, "/").body(Full::default()).unwrap();
    let answer = tokio::spawn(async move { send(&http1(), get).await });
    upstream.wait_for_requests(1).await;
    upstream.set_behavior(Behavior::ok("fast"));
    let response = answer.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "fast", "the hedge did not win");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn a_hedge_stays_with_the_primaries_while_they_serve() {
    // The attempt a hedge races has not failed: the backup stays idle, and the one primary,
    // alone in its tier, takes the hedge itself.
    let primary = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let backup = Upstream::start(Behavior::ok("backup")).await.unwrap();
    let proxy = simple(
        &[primary.addr()],
        "[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        &format!("backup = [\"{}\"]", backup.addr()),
    )
    .await;

    let get = request(&proxy, "/").body(Full::default()).unwrap();
    let answer = tokio::spawn(async move { send(&http1(), get).await });
    primary.wait_for_requests(1).await;
    primary.set_behavior(Behavior::ok("fast"));
    let response = answer.await.unwrap();
    assert_eq!(response.body(), "fast");
    assert_eq!(primary.request_count(), 2);
    assert_eq!(backup.request_count(), 0, "the backup took a hedge");
}

async fn slow_upstreams(n: usize) -> Vec<Upstream> {
    let mut upstreams = Vec::with_capacity(n);
    for _ in 0..n {
        upstreams.push(
            Upstream::start(Behavior::Slow(Duration::from_millis(300)))
                .await
                .unwrap(),
        );
    }
    upstreams
}

#[tokio::test]
async fn a_hedge_is_paid_from_the_retry_budget() {
    let slow = Upstream::start(Behavior::Slow(SLOW)).await.unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    // An empty budget: no retry, and no hedge either.
    let proxy = simple(
        &[slow.addr(), fast.addr()],
        "[routes.retry]\nbudget = { ratio = 0.0, min_per_sec = 0 }\n\
         [routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "",
    )
    .await;

    let mut requests = 0;
    while slow.request_count() < 1 {
        assert!(requests < 20, "no request started on the slow endpoint");
        requests += 1;
        assert_eq!(get(&proxy, "/").await.status(), StatusCode::OK);
        assert_eq!(slow.request_count() + fast.request_count(), requests);
    }
}

#[tokio::test]
async fn a_failing_hedge_does_not_win_over_an_attempt_still_in_flight() {
    let slow = Upstream::start(Behavior::Slow(Duration::from_millis(300)))
        .await
        .unwrap();
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    // No retries: what the client gets is what the race came to. Round-robin reaches the slow
    // endpoint by the second request at the latest; a balancer free to send five requests in a
    // row to the failing one would open its breaker, and then no hedge could go there.
    let proxy = simple(
        &[slow.addr(), failing.addr()],
        "[routes.retry]\nattempts = 1\n[routes.hedge]\nafter = \"50ms\"\nmax_extra = 1",
        "balance = \"round-robin\"",
    )
    .await;

    let mut requests = 0;
    while slow.request_count() < 1 {
        assert!(requests < 20, "no request started on the slow endpoint");
        requests += 1;
        let failed_before = failing.request_count();
        let response = get(&proxy, "/").await;
        if slow.request_count() == 1 {
            // Its hedge went to the failing endpoint and failed first; the slow answer won.
            assert_eq!(failing.request_count(), failed_before + 1);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.body(), "ok");
        }
    }
}
