//! Fault injection and fallback against real upstreams: aborts that never reach the upstream,
//! delays before forwarding, and canned answers in place of the failures they name.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rampart_config::Config;
use rampart_policy::rng::Rng;
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, Refusing, Upstream};
use tokio::time::Instant;

use common::*;

/// Like `common::simple`, with the proxy's random choices drawn from `rng`.
async fn with_rng(endpoint: SocketAddr, route: &str, rng: Rng) -> Proxy {
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"app\"\n{route}\n\n\
         [upstreams.app]\nendpoints = [\"{endpoint}\"]\n"
    );
    let config = Config::from_str(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    Proxy::start_with_rng(&config, rng).await.unwrap()
}

fn fallback_of<B>(response: &hyper::Response<B>) -> Option<&str> {
    response
        .headers()
        .get("x-rampart-fallback")
        .map(|v| v.to_str().unwrap())
}

// === fault injection ===

/// A gRPC call of an empty message through `proxy`.
async fn grpc_call(proxy: &Proxy) -> Response<Bytes> {
    send(
        &h2c(),
        request(proxy, "/pkg.Service/Method")
            .method("POST")
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn abort_percent_100_answers_every_request_without_the_upstream() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.fault]\nabort_status = 429\nabort_percent = 100",
        "",
    )
    .await;

    for i in 0..20 {
        let response = get(&proxy, "/").await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "request {i}"
        );
        assert_eq!(error_of(&response), Some("fault-injected"));
    }
    // A gRPC call gets the gRPC shape: HTTP 200, UNAVAILABLE.
    let response = grpc_call(&proxy).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(error_of(&response), Some("fault-injected"));
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_grpc_call_is_aborted_with_abort_grpc_status() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.fault]\nabort_grpc_status = \"resource-exhausted\"",
        "",
    )
    .await;

    let response = grpc_call(&proxy).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "8");
    assert_eq!(error_of(&response), Some("fault-injected"));
    // A plain HTTP request on the route is aborted too, with the abort's usual 503.
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), Some("fault-injected"));
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn abort_percent_0_forwards_every_request() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.fault]\nabort_status = 503\nabort_percent = 0",
        "",
    )
    .await;

    for i in 0..20 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(response.body(), "real");
        assert_eq!(error_of(&response), None);
    }
    assert_eq!(upstream.request_count(), 20);
}

#[tokio::test]
async fn the_injected_rng_picks_the_aborted_requests() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    // Draws under 0.5 abort at 50%.
    let draws = [0.1, 0.9, 0.6, 0.2, 0.3, 0.7];
    let next = Arc::new(AtomicUsize::new(0));
    let counter = next.clone();
    let rng = Rng::from_fn(move || draws[counter.fetch_add(1, Ordering::Relaxed) % draws.len()]);
    let proxy = with_rng(
        upstream.addr(),
        "[routes.fault]\nabort_status = 503\nabort_percent = 50",
        rng,
    )
    .await;

    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&proxy, "/").await.status().as_u16());
    }
    assert_eq!(statuses, [503, 200, 200, 503, 503, 200]);
    assert_eq!(upstream.request_count(), 3);
    // One draw per request: no delay is configured, so nothing else draws.
    assert_eq!(next.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn a_seeded_rng_gives_a_reproducible_sequence() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = with_rng(
        upstream.addr(),
        "[routes.fault]\nabort_status = 500\nabort_percent = 50",
        Rng::seeded(42),
    )
    .await;
    // The same seed, drawn the same way, says which requests are aborted.
    let reference = Rng::seeded(42);
    let expected: Vec<bool> = (0..16).map(|_| reference.chance(0.5)).collect();
    assert!(expected.contains(&true) && expected.contains(&false));

    let mut aborted = Vec::new();
    for _ in 0..16 {
        let response = get(&proxy, "/").await;
        aborted.push(error_of(&response) == Some("fault-injected"));
    }
    assert_eq!(aborted, expected);
    let forwarded = expected.iter().filter(|a| !**a).count() as u64;
    assert_eq!(upstream.request_count(), forwarded);
}

#[tokio::test]
async fn a_delay_comes_before_forwarding() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.fault]\ndelay = \"500ms\"\ndelay_percent = 100",
        "",
    )
    .await;

    let started = Instant::now();
    let response = tokio::spawn({
        let request = request(&proxy, "/").body(Full::<Bytes>::default()).unwrap();
        async move { send(&http1(), request).await }
    });
    // Nothing reaches the upstream while the delay runs.
    let early = tokio::time::timeout(Duration::from_millis(200), upstream.wait_for_requests(1));
    assert!(early.await.is_err(), "forwarded before the delay");
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "real");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn a_request_drawn_for_a_delay_and_an_abort_is_delayed_then_aborted() {
    // A dependency that fails slowly, rehearsed.
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.fault]\ndelay = \"300ms\"\nabort_status = 503",
        "",
    )
    .await;

    let started = Instant::now();
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), Some("fault-injected"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the delay"
    );
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_delay_past_the_deadline_times_out_without_forwarding() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"100ms\"\n[routes.fault]\ndelay = \"10s\"",
        "",
    )
    .await;

    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response), Some("timeout"));
    assert_eq!(upstream.request_count(), 0);
}

// === fallback ===

const FALLBACK: &str = "[routes.retry]\nattempts = 1\n\
    [routes.fallback]\non = [ON]\nstatus = 200\n\
    headers = { \"content-type\" = \"application/json\", \"x-degraded\" = \"yes\" }\n\
    body = '{\"items\":[],\"degraded\":true}'";

fn fallback_route(on: &str) -> String {
    FALLBACK.replace("ON", on)
}

#[tokio::test]
async fn a_dead_endpoint_gets_the_fallback_answer() {
    let refusing = Refusing::bind().unwrap();
    let proxy = simple(
        &[refusing.addr()],
        &fallback_route("\"upstream-connect\""),
        "",
    )
    .await;

    let response = get(&proxy, "/items").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-degraded"], "yes");
    assert_eq!(fallback_of(&response), Some("upstream-connect"));
    assert_eq!(error_of(&response), None);
    assert_eq!(response.body(), r#"{"items":[],"degraded":true}"#);
}

#[tokio::test]
async fn an_upstream_whose_endpoints_all_died_gets_the_default_fallback_every_time() {
    // Three dead endpoints under the default ejection cap, which keeps two in service whatever
    // their breakers say; a retry budget that soon refuses their retries. The fallback names no
    // reason: its default covers what a dead service comes to.
    let dead: Vec<Refusing> = (0..3).map(|_| Refusing::bind().unwrap()).collect();
    let endpoints: Vec<SocketAddr> = dead.iter().map(Refusing::addr).collect();
    let route = "[routes.retry]\nbudget = { ratio = 0, min_per_sec = 1 }\n\
                 [routes.fallback]\nstatus = 200\nbody = 'degraded'";
    let proxy = simple(&endpoints, route, "balance = \"round-robin\"").await;
    let mut reasons = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let response = get(&proxy, "/items").await;
        assert_eq!(response.status(), StatusCode::OK, "{response:?}");
        assert_eq!(response.body(), "degraded");
        reasons.insert(fallback_of(&response).unwrap().to_owned());
    }
    // Connections refused, then retries the budget refused, then breakers open: all covered.
    assert!(reasons.contains("upstream-connect"), "{reasons:?}");
    assert!(reasons.contains("retry-budget-exhausted"), "{reasons:?}");
}

#[tokio::test]
async fn an_upstream_5xx_gets_the_fallback_answer_when_on_names_5xx() {
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(&[upstream.addr()], &fallback_route("\"5xx\""), "").await;

    let response = get(&proxy, "/items").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fallback_of(&response), Some("5xx"));
    assert_eq!(response.body(), r#"{"items":[],"degraded":true}"#);
    assert_eq!(upstream.request_count(), 1);

    // A 4xx is an answer, not a failure: it passes through.
    upstream.set_behavior(Behavior::Fail(StatusCode::NOT_FOUND));
    let response = get(&proxy, "/items").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(fallback_of(&response), None);
}

#[tokio::test]
async fn a_reason_not_in_on_passes_through_unchanged() {
    let refusing = Refusing::bind().unwrap();
    // A dead endpoint, but the fallback covers timeouts only.
    let proxy = simple(&[refusing.addr()], &fallback_route("\"timeout\""), "").await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(&response), Some("upstream-connect"));
    assert_eq!(fallback_of(&response), None);

    // An upstream's 503 without "5xx" in `on` stays the upstream's, body included.
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        &fallback_route("\"upstream-connect\""),
        "",
    )
    .await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.body(), "Service Unavailable");
    assert_eq!(fallback_of(&response), None);
    assert_eq!(error_of(&response), None);
}

#[tokio::test]
async fn an_abort_gets_the_fallback_only_when_on_names_fault_injected() {
    let upstream = Upstream::start(Behavior::ok("real")).await.unwrap();
    let fault = "\n[routes.fault]\nabort_status = 500";
    let rehearsed = fallback_route("\"fault-injected\"") + fault;
    let proxy = simple(&[upstream.addr()], &rehearsed, "").await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fallback_of(&response), Some("fault-injected"));

    let other = fallback_route("\"upstream-connect\", \"5xx\"") + fault;
    let proxy = simple(&[upstream.addr()], &other, "").await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_of(&response), Some("fault-injected"));
    assert_eq!(fallback_of(&response), None);
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn stale_serves_the_last_good_get_answer() {
    let upstream = Upstream::start(Behavior::ok("fresh")).await.unwrap();
    let route = fallback_route("\"5xx\"") + "\nstale = \"60s\"";
    let proxy = simple(&[upstream.addr()], &route, "").await;

    let response = get(&proxy, "/items?page=1").await;
    assert_eq!(response.body(), "fresh");
    assert_eq!(fallback_of(&response), None);

    upstream.set_behavior(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE));
    let response = get(&proxy, "/items?page=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fallback_of(&response), Some("5xx"));
    assert_eq!(response.body(), "fresh");
    // Nothing was kept for another query: the configured answer.
    let response = get(&proxy, "/items?page=2").await;
    assert_eq!(fallback_of(&response), Some("5xx"));
    assert_eq!(response.body(), r#"{"items":[],"degraded":true}"#);
}

#[tokio::test]
async fn body_file_content_is_served() {
    let refusing = Refusing::bind().unwrap();
    let file =
        std::env::temp_dir().join(format!("rampart-fallback-body-{}.json", std::process::id()));
    std::fs::write(&file, "{\"from\":\"file\"}\n").unwrap();
    let route = format!(
        "[routes.retry]\nattempts = 1\n[routes.fallback]\non = [\"upstream-connect\"]\n\
         status = 203\nbody_file = '{}'",
        file.display()
    );
    let proxy = simple(&[refusing.addr()], &route, "").await;
    // Read once at start: the file may go away afterwards.
    std::fs::remove_file(&file).unwrap();

    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(fallback_of(&response), Some("upstream-connect"));
    assert_eq!(response.body(), "{\"from\":\"file\"}\n");
}

#[tokio::test]
async fn an_unreadable_body_file_stops_the_start() {
    let missing = std::env::temp_dir().join("rampart-no-such-fallback-body.json");
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"app\"\n\
         [routes.fallback]\nbody_file = '{}'\n\n[upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n",
        missing.display()
    );
    let config = Config::from_str(&toml, "test.toml").unwrap();
    let err = Proxy::start(&config).await.unwrap_err();
    assert!(
        matches!(err, rampart_proxy::Error::BodyFile { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("routes[0].fallback.body_file"),
        "{err}"
    );
}
