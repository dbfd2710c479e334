//! The balancer over real sockets: p2c-ewma, the default, keeps traffic off a slow endpoint.

mod common;

use std::time::Duration;

use hyper::StatusCode;
use rampart_config::Config;
use rampart_policy::rng::Rng;
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, Upstream};

use common::*;

#[tokio::test]
async fn p2c_ewma_sends_most_requests_to_the_fast_endpoint() {
    let slow = Upstream::start(Behavior::Slow(Duration::from_millis(200)))
        .await
        .unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    // No `balance`: p2c-ewma is the default.
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"app\"\n\
         [upstreams.app]\nendpoints = [\"{}\", \"{}\"]\n",
        slow.addr(),
        fast.addr()
    );
    // With draws of 0, the two new endpoints tie and the first drawn wins: the slow one, so it
    // surely answers once and is measured.
    let proxy = Proxy::start_with_rng(
        &Config::from_str(&toml, "test.toml").unwrap(),
        Rng::fixed(0.0),
    )
    .await
    .unwrap();

    const N: u64 = 40;
    for i in 0..N {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), 200, "request {i}");
    }
    // The slow endpoint's first answer marks it 200 ms; the fast one's estimate stays far below
    // that, and the slow one's takes far longer than this test to decay below it: the slow one
    // gets its first request or so (round-robin would give it half).
    assert_eq!(slow.request_count() + fast.request_count(), N);
    assert!(
        slow.request_count() <= N / 10,
        "slow {} fast {}",
        slow.request_count(),
        fast.request_count()
    );
}

#[tokio::test]
async fn under_p2c_ewma_an_ejected_endpoint_comes_back_when_it_recovers() {
    let live = Upstream::start(Behavior::ok("live")).await.unwrap();
    let sick = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[sick.addr(), live.addr()],
        "",
        "[upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"200ms\"\n\
         open_for_max = \"200ms\"\nhalf_open_probes = 1",
    )
    .await;

    // Its fast 503s do not make the sick endpoint look fast, nor keep it from being tried:
    // it gets two attempts (each retried on the live one), and its breaker opens.
    let mut sent = 0;
    while sick.request_count() < 2 {
        assert_eq!(get(&proxy, "/").await.status(), StatusCode::OK);
        sent += 1;
        assert!(sent < 500, "the sick endpoint is never tried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Once it recovers and its open period ends, the balancer gives it a probe, then traffic.
    sick.set_behavior(Behavior::ok("recovered"));
    let mut recovered = 0;
    for _ in 0..500 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        if response.body() == "recovered" {
            recovered += 1;
            if recovered == 3 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the recovered endpoint got {recovered} requests back");
}
