//! Async routes: stored, answered 202, delivered through the route's stack until the upstream
//! takes the message, paused while its breaker is open, dead-lettered after `max_age`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use rampart_outbox::{MessageId, State, Store};
use rampart_proxy::{Drain, Proxy};
use rampart_test_support::{Behavior, Refusing, TempDir, Upstream};

use common::{error_of, http1, metrics, proxy, request, send};

/// A proxy with one async route `orders` to `endpoint`, its outbox in `dir`, with `outbox`,
/// `route` and `upstream` lines added to those tables (`route`'s after the route's
/// `[routes.async]`, whose keys it may set before any table of its own).
async fn async_proxy(
    dir: &Path,
    endpoint: SocketAddr,
    outbox: &str,
    route: &str,
    upstream: &str,
) -> Proxy {
    proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        max_request_body = "4KiB"

        [outbox]
        path = "{dir}"
        retry = {{ base = "10ms", max = "50ms" }}
        {outbox}

        [[routes]]
        name = "orders"
        upstream = "orders"
        timeout = "1s"
        [routes.async]
        enabled = true
        {route}

        [upstreams.orders]
        endpoints = ["{endpoint}"]
        {upstream}
        "#,
        dir = dir.display(),
    ))
    .await
}

/// Posts `body` to `/orders` over HTTP/1.1.
async fn post(proxy: &Proxy, body: &'static str) -> hyper::Response<Bytes> {
    send(
        &http1(),
        request(proxy, "/orders")
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

/// The id a 202 names, after checking the 202 says what the contract says.
fn accepted(response: &hyper::Response<Bytes>) -> MessageId {
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{response:?}");
    let id = response.headers()["x-rampart-message-id"].to_str().unwrap();
    assert_eq!(
        response.body(),
        &format!(r#"{{"id": "{id}", "status": "queued"}}"#)
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    id.parse().expect("the id is a message id")
}

/// Waits (up to 20 s) until `check` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

async fn state(store: &dyn Store, id: MessageId) -> Option<State> {
    store.get(id).await.unwrap().map(|status| status.state)
}

#[tokio::test]
async fn an_async_route_answers_202_once_stored_and_delivers_with_the_message_id() {
    let dir = TempDir::new("proxy-outbox-deliver");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = async_proxy(dir.path(), upstream.addr(), "", "", "").await;
    let store = proxy.handle().outbox().expect("an outbox");

    let response = send(
        &http1(),
        request(&proxy, "/orders?region=eu")
            .method("POST")
            .header("idempotency-key", "order-7")
            .header("x-rampart-message-id", "forged")
            // The client's own deadline means nothing at delivery, maybe hours later; hop-by-hop
            // fields are this connection's.
            .header("x-rampart-deadline", "300")
            .header("connection", "x-hop")
            .header("x-hop", "this connection's")
            .header("keep-alive", "timeout=5")
            .body(Full::new(Bytes::from_static(b"{\"sku\": 42}")))
            .unwrap(),
    )
    .await;
    let id = accepted(&response);

    upstream.wait_for_requests(1).await;
    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/orders?region=eu");
    assert_eq!(seen.body, "{\"sku\": 42}");
    assert_eq!(seen.headers["idempotency-key"], "order-7");
    // The id is rampart's, whatever the client sent.
    assert_eq!(
        seen.headers["x-rampart-message-id"],
        id.to_string().as_str()
    );
    assert_eq!(
        seen.headers.get_all("x-rampart-message-id").iter().count(),
        1
    );
    // The route's 1 s at delivery, not what was left of the client's 300 ms.
    let deadline: u64 = seen.headers["x-rampart-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((301..=1000).contains(&deadline), "{deadline}");
    assert_eq!(seen.headers.get_all("x-rampart-deadline").iter().count(), 1);
    for hop in ["x-hop", "keep-alive"] {
        assert!(!seen.headers.contains_key(hop), "{hop} was stored");
    }
    assert!(seen.headers.contains_key("x-forwarded-for"));

    until("the message is delivered", || async {
        state(&*store, id).await == Some(State::Delivered)
    })
    .await;
    until("the delivery is counted", || async {
        metrics(&proxy).contains("rampart_outbox_delivered_total 1")
    })
    .await;
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(proxy.shutdown().await, Drain::Complete);
}

#[tokio::test]
async fn while_the_upstream_takes_every_message_they_arrive_in_the_order_accepted() {
    let dir = TempDir::new("proxy-outbox-order");
    let upstream = Upstream::start(Behavior::Slow(Duration::from_millis(5)))
        .await
        .unwrap();
    let proxy = async_proxy(dir.path(), upstream.addr(), "", "", "").await;
    let bodies = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    for body in bodies {
        accepted(&post(&proxy, body).await);
    }
    upstream.wait_for_requests(10).await;
    let seen: Vec<Bytes> = upstream.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(seen, bodies);
    proxy.shutdown().await;
}

#[tokio::test]
async fn messages_wait_for_a_down_upstream_and_all_arrive_once_it_is_back() {
    let dir = TempDir::new("proxy-outbox-down");
    let refusing = Refusing::bind().unwrap();
    let addr = refusing.addr();
    let proxy = async_proxy(
        dir.path(),
        addr,
        "",
        "",
        "[upstreams.orders.breaker]\nopen_for = \"100ms\"\nopen_for_max = \"200ms\"",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();

    let mut ids = Vec::new();
    for body in ["first", "second", "third"] {
        ids.push(accepted(&post(&proxy, body).await));
    }
    until("a delivery has failed", || async {
        store.get(ids[0]).await.unwrap().unwrap().attempts > 0
    })
    .await;
    let summary = store.summary().await.unwrap();
    assert_eq!(summary.total.pending(), 3, "{summary:?}");

    drop(refusing);
    let upstream = Upstream::start_on(addr, Behavior::ok("taken"))
        .await
        .unwrap();
    upstream.wait_for_requests(3).await;
    let mut bodies: Vec<Bytes> = upstream.requests().into_iter().map(|r| r.body).collect();
    // A message that failed waits for its backoff; the ones behind it do not wait for it.
    bodies.sort();
    assert_eq!(bodies, ["first", "second", "third"]);
    for &id in &ids {
        until("delivered", || async {
            state(&*store, id).await == Some(State::Delivered)
        })
        .await;
    }
    let status = store.get(ids[0]).await.unwrap().unwrap();
    assert!(status.last_error.is_some(), "{status:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn deliveries_pause_while_the_breaker_is_open() {
    let dir = TempDir::new("proxy-outbox-pause");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    // Open for a minute after two failures: the test ends long before a probe.
    let proxy = async_proxy(
        dir.path(),
        upstream.addr(),
        "",
        "[routes.retry]\nattempts = 1",
        "[upstreams.orders.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\nopen_for_max = \"60s\"",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(accepted(&post(&proxy, "order").await));
    }
    upstream.wait_for_requests(2).await;
    // Long enough for every message to have been tried many times over at a 10-50 ms backoff,
    // had the loop not paused.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(upstream.request_count(), 2);
    let mut untried = 0;
    for &id in &ids {
        let status = store.get(id).await.unwrap().unwrap();
        assert_eq!(status.state, State::Queued);
        if status.attempts == 0 {
            untried += 1;
        }
    }
    // At most the two that opened the breaker, and a third that met it opening, were tried.
    assert!(untried >= 17, "only {untried} of 20 untried");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_half_open_breaker_costs_the_messages_waiting_no_attempt() {
    let dir = TempDir::new("proxy-outbox-half-open");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = async_proxy(
        dir.path(),
        upstream.addr(),
        "",
        "concurrency = 16\n[routes.retry]\nattempts = 1",
        "[upstreams.orders.breaker]\nconsecutive_failures = 2\nopen_for = \"4s\"\n\
         open_for_max = \"4s\"\nhalf_open_probes = 1",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let mut failing = Vec::new();
    for _ in 0..2 {
        failing.push(accepted(&post(&proxy, "order").await));
    }
    upstream.wait_for_requests(2).await;
    // A take under way when the breaker opened hands out what comes within a second: past
    // that, the loop waits for the breaker without taking anything.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Accepted while the breaker is open; the upstream is back before its probe.
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.push(accepted(&post(&proxy, "order").await));
    }
    upstream.set_behavior(Behavior::ok("taken"));
    for &id in failing.iter().chain(&waiting) {
        until("delivered", || async {
            state(&*store, id).await == Some(State::Delivered)
        })
        .await;
    }
    // The probe took one message; the others went once it had closed the breaker, none of
    // them refused past it.
    for &id in &waiting {
        let status = store.get(id).await.unwrap().unwrap();
        assert_eq!(status.last_error, None, "{status:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_grpc_call_is_delivered_by_its_status_0_alone() {
    use rampart_test_support::{GrpcBehavior, GrpcUpstream, SAY};
    use tonic::Code;
    for (behavior, delivered, error) in [
        (GrpcBehavior::Ok, true, None),
        (
            GrpcBehavior::FailInTrailers(Code::Unavailable),
            false,
            Some("the upstream answered grpc-status 14 (unavailable)"),
        ),
        // Not a failure of the endpoint, but no delivery either: a service being redeployed.
        (
            GrpcBehavior::FailInTrailers(Code::Unimplemented),
            false,
            Some("the upstream answered grpc-status 12 (unimplemented)"),
        ),
    ] {
        let dir = TempDir::new("proxy-outbox-grpc");
        let upstream = GrpcUpstream::start(behavior).await.unwrap();
        let proxy = async_proxy(
            dir.path(),
            upstream.addr(),
            "",
            "[routes.retry]\nattempts = 1",
            "protocol = \"grpc\"\n[upstreams.orders.breaker]\nenabled = false",
        )
        .await;
        let store = proxy.handle().outbox().unwrap();
        // A call of one message (field 1, "x"): the 200 and the reply come before the status.
        let call = request(&proxy, SAY)
            .method("POST")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x03\x0a\x01x")))
            .unwrap();
        let id = accepted(&send(&http1(), call).await);
        until("tried", || async {
            let status = store.get(id).await.unwrap().unwrap();
            status.state == State::Delivered || status.attempts > 0
        })
        .await;
        let status = store.get(id).await.unwrap().unwrap();
        assert_eq!(status.state == State::Delivered, delivered, "{status:?}");
        assert_eq!(status.last_error.as_deref(), error);
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_message_past_max_age_is_dead_and_a_redrive_delivers_it() {
    let dir = TempDir::new("proxy-outbox-dead");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR))
        .await
        .unwrap();
    let proxy = async_proxy(
        dir.path(),
        upstream.addr(),
        // Long enough for a retry or two even on a machine stalled for a while.
        "max_age = \"1s\"",
        "[routes.retry]\nattempts = 1",
        "[upstreams.orders.breaker]\nenabled = false",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let id = accepted(&post(&proxy, "doomed").await);

    until("the message is dead", || async {
        state(&*store, id).await == Some(State::Dead)
    })
    .await;
    let status = store.get(id).await.unwrap().unwrap();
    assert!(status.attempts >= 2, "{status:?}");
    assert_eq!(
        status.last_error.as_deref(),
        Some("the upstream answered 500 Internal Server Error")
    );
    until("the dead letter is counted", || async {
        metrics(&proxy).contains("rampart_outbox_dead_total 1")
    })
    .await;

    upstream.set_behavior(Behavior::ok("taken at last"));
    store.redrive(id).await.unwrap();
    until("the re-driven message is delivered", || async {
        state(&*store, id).await == Some(State::Delivered)
    })
    .await;
    assert_eq!(upstream.requests().last().unwrap().body, "doomed");
    proxy.shutdown().await;
}

/// A message posted to an async route (with `outbox` lines) whose upstream answers every
/// request 503 with `Retry-After: 120`, once tried once: the proxy, the upstream, the message's
/// id and its status then.
async fn tried_once_by_a_busy_upstream(
    dir: &Path,
    outbox: &str,
) -> (Proxy, Upstream, MessageId, rampart_outbox::Status) {
    let busy = Upstream::start(Behavior::Headed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: vec![(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("120"),
        )],
    })
    .await
    .unwrap();
    let proxy = async_proxy(
        dir,
        busy.addr(),
        outbox,
        "[routes.retry]\nattempts = 1",
        "[upstreams.orders.breaker]\nenabled = false",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let id = accepted(&post(&proxy, "busy").await);
    until("tried once", || async {
        store.get(id).await.unwrap().unwrap().attempts == 1
    })
    .await;
    let status = store.get(id).await.unwrap().unwrap();
    (proxy, busy, id, status)
}

#[tokio::test]
async fn the_upstreams_retry_after_pushes_the_next_attempt_back() {
    let dir = TempDir::new("proxy-outbox-retry-after");
    let (proxy, _busy, _, status) = tried_once_by_a_busy_upstream(dir.path(), "").await;
    assert_eq!(status.state, State::Queued);
    // Not the backoff's 50 ms at most: the upstream's two minutes.
    let wait = status.next_attempt_at.saturating_since(status.changed_at);
    assert!(wait >= Duration::from_secs(119), "{wait:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_wait_past_max_age_is_cut_to_a_last_attempt_as_the_age_is_up() {
    // The upstream asks for two minutes; the message may live one second.
    let dir = TempDir::new("proxy-outbox-age-up");
    let (proxy, _busy, id, status) =
        tried_once_by_a_busy_upstream(dir.path(), "max_age = \"1s\"").await;
    // Not queued for two minutes past its age: its last attempt is due as the age is up.
    let due = status.next_attempt_at.saturating_since(status.queued_at);
    assert!(
        status.state == State::Dead || due <= Duration::from_secs(1),
        "{status:?}"
    );
    let store = proxy.handle().outbox().unwrap();
    until("the message is dead", || async {
        state(&*store, id).await == Some(State::Dead)
    })
    .await;
    assert_eq!(store.get(id).await.unwrap().unwrap().attempts, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_full_outbox_answers_503_outbox_full_and_keeps_what_it_holds() {
    let dir = TempDir::new("proxy-outbox-full");
    let refusing = Refusing::bind().unwrap();
    let addr = refusing.addr();
    let proxy = async_proxy(dir.path(), addr, "max_messages = 2", "", "").await;
    let store = proxy.handle().outbox().unwrap();
    let kept = [
        accepted(&post(&proxy, "one").await),
        accepted(&post(&proxy, "two").await),
    ];
    let refused = post(&proxy, "three").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&refused), Some("outbox-full"));
    assert!(!refused.headers().contains_key("x-rampart-message-id"));
    for id in kept {
        assert!(state(&*store, id).await.is_some_and(State::is_held));
    }
    assert_eq!(store.summary().await.unwrap().total.pending(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_that_could_never_be_stored_is_refused_as_too_large_not_as_a_full_outbox() {
    let dir = TempDir::new("proxy-outbox-never");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        max_header_bytes = "1MiB"

        [outbox]
        path = "{dir}"
        max_bytes = "1MiB"

        [[routes]]
        name = "orders"
        upstream = "orders"
        [routes.async]
        enabled = true

        [upstreams.orders]
        endpoints = ["{endpoint}"]
        "#,
        dir = dir.path().display(),
        endpoint = upstream.addr(),
    ))
    .await;
    let store = proxy.handle().outbox().unwrap();
    let client = http1();
    let post = |key: String, body: Vec<u8>| {
        send(
            &client,
            request(&proxy, "/orders")
                .method("POST")
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    };

    // Larger alone than the outbox may hold, empty as it is: no later try would be taken.
    let big = post("k".into(), vec![b'x'; 1_100_000]).await;
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE, "{big:?}");
    assert_eq!(error_of(&big), Some("body-too-large"));
    // Read whole, its body leaves the connection as it was.
    assert!(!big.headers().contains_key("connection"), "{big:?}");
    let said = String::from_utf8_lossy(big.body()).into_owned();
    assert!(said.contains("max_bytes"), "{said}");
    // An idempotency key longer than a record holds: the head is too large, not the body.
    let long = post("k".repeat(65_536), b"ab".to_vec()).await;
    assert_eq!(
        long.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{long:?}"
    );
    assert_eq!(error_of(&long), Some("headers-too-large"));
    // Both just within the limits are taken.
    accepted(&post("k".repeat(65_535), vec![b'x'; 500]).await);
    assert_eq!(store.summary().await.unwrap().total.pending(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_slower_than_the_routes_timeout_is_answered_as_the_clients_delay() {
    let dir = TempDir::new("proxy-outbox-slow-body");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = async_proxy(dir.path(), upstream.addr(), "", "", "").await;
    // One byte of a hundred, and no more: the deadline passes while the body is read.
    let stalled = |deadline: &str| {
        format!("POST /orders HTTP/1.1\r\nhost: shop\r\n{deadline}content-length: 100\r\n\r\nx")
    };
    let addr = common::addr(&proxy);
    let answer = |raw: String| async move {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        common::until_closed(&mut tcp).await
    };
    // The route's 1 s timeout.
    let timed_out = answer(stalled("")).await;
    assert!(timed_out.starts_with("HTTP/1.1 504"), "{timed_out}");
    assert!(
        timed_out.contains("x-rampart-error: timeout"),
        "{timed_out}"
    );
    assert!(
        timed_out.contains("the request body did not arrive whole within the route's timeout"),
        "{timed_out}"
    );
    // The client's own deadline, shorter: its own reason, as on a route that forwards.
    let expired = answer(stalled("x-rampart-deadline: 300\r\n")).await;
    assert!(expired.starts_with("HTTP/1.1 504"), "{expired}");
    assert!(
        expired.contains("x-rampart-error: deadline-exceeded"),
        "{expired}"
    );
    assert_eq!(upstream.request_count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_listeners_limit_is_refused_and_nothing_is_stored() {
    let dir = TempDir::new("proxy-outbox-too-large");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = async_proxy(dir.path(), upstream.addr(), "", "", "").await;
    let store = proxy.handle().outbox().unwrap();
    let big = vec![b'x'; 8 * 1024];
    let response = send(
        &http1(),
        request(&proxy, "/orders")
            .method("POST")
            .body(Full::new(Bytes::from(big)))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&response), Some("body-too-large"));
    let summary = store.summary().await.unwrap();
    assert_eq!(summary.total.pending() + summary.total.delivered, 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn messages_queued_before_a_restart_are_delivered_after_it() {
    let dir = TempDir::new("proxy-outbox-restart");
    let refusing = Refusing::bind().unwrap();
    let addr = refusing.addr();
    let first = async_proxy(dir.path(), addr, "", "", "").await;
    let mut ids = Vec::new();
    for body in ["a", "b", "c", "d", "e"] {
        ids.push(accepted(&post(&first, body).await));
    }
    assert_eq!(first.shutdown().await, Drain::Complete);

    drop(refusing);
    let upstream = Upstream::start_on(addr, Behavior::ok("taken"))
        .await
        .unwrap();
    let second = async_proxy(dir.path(), addr, "", "", "").await;
    let store = second.handle().outbox().unwrap();
    for &id in &ids {
        until("delivered after the restart", || async {
            state(&*store, id).await == Some(State::Delivered)
        })
        .await;
    }
    let mut bodies: Vec<Bytes> = upstream.requests().into_iter().map(|r| r.body).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies, ["a", "b", "c", "d", "e"]);
    second.shutdown().await;
}

#[tokio::test]
async fn a_reload_cannot_make_a_route_async_without_the_outbox_it_started_with() {
    let upstream = Upstream::start(Behavior::ok("ok")).await.unwrap();
    let plain = format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [[routes]]
        upstream = "app"

        [upstreams.app]
        endpoints = ["{}"]
        "#,
        upstream.addr()
    );
    let proxy = proxy(&plain).await;
    let with_async = rampart_config::Config::from_str(
        &format!(
            "{plain}\n[routes.async]\nenabled = true\n[outbox]\npath = \"{}\"\n",
            std::env::temp_dir().join("rampart-never-opened").display()
        ),
        "rampart.toml",
    );
    let config = with_async.expect("a valid configuration");
    let err = proxy.reload(&config).unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    // The old route still forwards.
    assert_eq!(common::get(&proxy, "/").await.status(), StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn drop_oldest_makes_room_and_counts_what_it_dropped() {
    let dir = TempDir::new("proxy-outbox-drop-oldest");
    let refusing = Refusing::bind().unwrap();
    let addr = refusing.addr();
    let proxy = async_proxy(
        dir.path(),
        addr,
        "max_messages = 2\non_full = \"drop-oldest\"",
        "",
        "",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let first = accepted(&post(&proxy, "one").await);
    let second = accepted(&post(&proxy, "two").await);
    // Room is made for the third: the oldest queued one goes.
    let third = accepted(&post(&proxy, "three").await);
    until("the drop is counted", || async {
        metrics(&proxy).contains("rampart_outbox_dropped_total 1")
    })
    .await;
    // The oldest that was not being delivered at that moment is the one dropped.
    let states = [state(&*store, first).await, state(&*store, second).await];
    let dropped = states
        .iter()
        .filter(|s| **s == Some(State::Dropped))
        .count();
    assert_eq!(dropped, 1, "{states:?}");
    assert!(state(&*store, third).await.is_some_and(State::is_held));
    assert_eq!(store.summary().await.unwrap().dropped, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn reloads_while_messages_are_taken_strand_none_and_keep_the_order() {
    let dir = TempDir::new("proxy-outbox-reloads");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let toml = format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [outbox]
        path = "{dir}"

        [[routes]]
        name = "orders"
        upstream = "orders"
        [routes.async]
        enabled = true
        concurrency = 1

        [upstreams.orders]
        endpoints = ["{endpoint}"]
        "#,
        dir = dir.path().display(),
        endpoint = upstream.addr(),
    );
    let config = rampart_config::Config::from_str(&toml, "test.toml").unwrap();
    let proxy = proxy(&toml).await;

    // Each message posted as the configuration is reloaded (unchanged: every reload still
    // wakes the delivery loop, which may be taking the message at that moment).
    let bodies: Vec<String> = (0..40).map(|n| n.to_string()).collect();
    let client = http1();
    for body in &bodies {
        let posted = send(
            &client,
            request(&proxy, "/orders")
                .method("POST")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        );
        let (response, reloaded) = tokio::join!(posted, async { proxy.reload(&config) });
        accepted(&response);
        reloaded.unwrap();
    }
    // Well within the lease (10 s) a stranded message would wait out: all there, in order.
    upstream.wait_for_requests(bodies.len() as u64).await;
    let seen: Vec<Bytes> = upstream.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(seen, bodies);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_raising_a_routes_timeout_cannot_make_a_delivery_outlive_its_lease() {
    let dir = TempDir::new("proxy-outbox-lease");
    // Slower than half the lease set at start (10 s, for a 1 s timeout): a delivery it answers
    // would still be under way when the message was handed out again.
    let upstream = Upstream::start(Behavior::Slow(Duration::from_secs(6)))
        .await
        .unwrap();
    let config = |timeout: &str| {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
             [outbox]\npath = \"{dir}\"\n\n\
             [[routes]]\nname = \"orders\"\nupstream = \"orders\"\ntimeout = \"{timeout}\"\n\
             [routes.retry]\nattempts = 1\n[routes.async]\nenabled = true\n\n\
             [upstreams.orders]\nendpoints = [\"{endpoint}\"]\n\
             [upstreams.orders.breaker]\nenabled = false\n",
            dir = dir.path().display(),
            endpoint = upstream.addr(),
        )
    };
    let proxy = proxy(&config("1s")).await;
    let raised = rampart_config::Config::from_str(&config("30s"), "test.toml").unwrap();
    proxy.reload(&raised).unwrap();
    let store = proxy.handle().outbox().unwrap();

    let id = accepted(&post(&proxy, "slow").await);
    until("the first attempt is cut at half the lease", || async {
        let status = store.get(id).await.unwrap().unwrap();
        status.attempts >= 1 && status.state != State::Delivered
    })
    .await;
    let status = store.get(id).await.unwrap().unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timeout")),
        "{status:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_past_max_buffered_are_shed_with_503_and_taken_once_there_is_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("proxy-outbox-buffered");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = async_proxy(
        dir.path(),
        upstream.addr(),
        "max_buffered = \"3KiB\"",
        "",
        "",
    )
    .await;
    let buffered = || {
        let text = metrics(&proxy);
        let line = text
            .lines()
            .find(|line| line.starts_with("rampart_outbox_buffered_bytes "))
            .expect("the gauge is there")
            .to_owned();
        line["rampart_outbox_buffered_bytes ".len()..]
            .parse::<u64>()
            .unwrap()
    };

    // A slow client: 2,500 of its 3,000 bytes sent, which hold the whole budget (in KiB).
    let mut slow = tokio::net::TcpStream::connect(common::addr(&proxy))
        .await
        .unwrap();
    let head = "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 3000\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[b'a'; 2500]).await.unwrap();
    until("the slow body is held", || async { buffered() == 2500 }).await;

    // Meanwhile another post finds no room: shed at once, nothing stored.
    let shed = post(&proxy, "a small order").await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&shed), Some("overloaded"));
    let said = String::from_utf8_lossy(shed.body());
    assert!(said.contains("max_buffered"), "{said}");
    assert!(!shed.headers().contains_key("x-rampart-message-id"));

    // The slow body completes within what it holds, and is accepted.
    slow.write_all(&[b'a'; 500]).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = slow.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    until("the budget is given back", || async { buffered() == 0 }).await;

    // Room again; and a body larger than the whole budget is read alone, not refused forever.
    accepted(&post(&proxy, "a small order").await);
    let large = send(
        &http1(),
        request(&proxy, "/orders")
            .method("POST")
            .body(Full::new(Bytes::from(vec![b'b'; 4096])))
            .unwrap(),
    )
    .await;
    accepted(&large);
    assert_eq!(buffered(), 0);
    let store = proxy.handle().outbox().unwrap();
    until("all three are delivered", || async {
        store.summary().await.unwrap().total.delivered == 3
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn only_a_2xx_delivers_a_4xx_is_a_failed_attempt() {
    let dir = TempDir::new("proxy-outbox-refused");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::UNPROCESSABLE_ENTITY))
        .await
        .unwrap();
    let proxy = async_proxy(
        dir.path(),
        upstream.addr(),
        "max_age = \"1s\"",
        "[routes.retry]\nattempts = 1",
        "",
    )
    .await;
    let store = proxy.handle().outbox().unwrap();
    let id = accepted(&post(&proxy, "unwanted").await);
    until("the message is dead", || async {
        state(&*store, id).await == Some(State::Dead)
    })
    .await;
    let status = store.get(id).await.unwrap().unwrap();
    assert!(status.attempts >= 2, "{status:?}");
    assert_eq!(
        status.last_error.as_deref(),
        Some("the upstream answered 422 Unprocessable Entity")
    );
    assert!(metrics(&proxy).contains("rampart_outbox_delivered_total 0"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_the_store_can_never_hold_is_413_not_a_request_to_try_again() {
    // A NATS server takes no message over its `max_payload`, 1 MiB by default: a body of
    // 1.5 MiB, under `max_request_body`, would never be stored.
    let server = rampart_test_support::NatsServer::start();
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = orders_proxy(
        "max_request_body = \"4MiB\"",
        &format!(
            "store = \"nats\"\nnats = {{ url = \"{}\", stream = \"LARGE\" }}",
            server.url()
        ),
        upstream.addr(),
    )
    .await;
    let large = Bytes::from(vec![b'x'; 1536 << 10]);
    let response = send(
        &http1(),
        request(&proxy, "/orders")
            .method("POST")
            .body(Full::new(large))
            .unwrap(),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "{response:?}"
    );
    assert_eq!(error_of(&response), Some("body-too-large"));
    // A body the store takes is accepted.
    accepted(&post(&proxy, "{}").await);
}

#[tokio::test]
async fn a_request_with_more_fields_than_a_record_holds_is_431() {
    // Cookie crumbs count as one field against `max_headers`, but are stored one by one: more
    // than a record holds are refused as the head they are, before anything is read or stored.
    let dir = TempDir::new("outbox-crumbs");
    let upstream = Upstream::start(Behavior::ok("taken")).await.unwrap();
    let proxy = orders_proxy(
        "max_headers = 10000\nmax_header_bytes = \"4MiB\"",
        &format!("path = \"{}\"", dir.path().display()),
        upstream.addr(),
    )
    .await;
    let mut sender = common::h2_connection::<Full<Bytes>>(&proxy).await;
    let mut crumbs = http::Request::post(format!("http://{}/orders", common::addr(&proxy)))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    for n in 0..10_001 {
        crumbs.headers_mut().append(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("c{n}=v")).unwrap(),
        );
    }
    let response = sender.send_request(crumbs).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(error_of(&response), Some("headers-too-large"));
}

/// A proxy with one async route `orders` to `endpoint`, with `listener` and `outbox` lines in
/// those tables and nothing else set.
async fn orders_proxy(listener: &str, outbox: &str, endpoint: SocketAddr) -> Proxy {
    proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        {listener}

        [outbox]
        {outbox}

        [[routes]]
        name = "orders"
        upstream = "orders"
        [routes.async]
        enabled = true

        [upstreams.orders]
        endpoints = ["{endpoint}"]
        "#
    ))
    .await
}
