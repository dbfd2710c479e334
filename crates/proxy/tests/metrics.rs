//! The proxy's metrics after known traffic, read from its registry as a scrape would.

mod common;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use rampart_test_support::{Behavior, Upstream};

use common::{get, http1, metrics, request, send, simple};

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing from\n{text}"
    );
}

#[tokio::test]
async fn counts_follow_the_traffic_and_the_breaker() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "name = \"api\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"1h\"\nopen_for_max = \"1h\"",
    )
    .await;
    let client = http1();
    let get = || request(&proxy, "/").body(Full::new(Bytes::new())).unwrap();
    for _ in 0..5 {
        assert_eq!(send(&client, get()).await.status(), StatusCode::OK);
    }
    upstream.set_behavior(Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..3 {
        assert_eq!(send(&client, get()).await.status(), 500);
    }
    // The third failure opened the breaker: the next request is refused without being sent.
    assert_eq!(send(&client, get()).await.status(), 503);

    let text = metrics(&proxy);
    let endpoint = format!("upstream=\"app\",endpoint=\"{}\"", upstream.addr());
    for line in [
        r#"rampart_requests_total{route="api",outcome="success"} 5"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="failure"} 3"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="rejected"} 1"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="fallback"} 0"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="cancelled"} 0"#.to_owned(),
        r#"rampart_request_duration_seconds_count{route="api"} 9"#.to_owned(),
        format!("rampart_upstream_requests_total{{{endpoint},outcome=\"success\"}} 5"),
        format!("rampart_upstream_requests_total{{{endpoint},outcome=\"failure\"}} 3"),
        format!("rampart_breaker_state{{{endpoint}}} 1"),
        format!("rampart_breaker_transitions_total{{{endpoint},to=\"open\"}} 1"),
        format!("rampart_breaker_transitions_total{{{endpoint},to=\"closed\"}} 0"),
        format!("rampart_endpoint_healthy{{{endpoint}}} 1"),
        r#"rampart_inflight{upstream="app"} 0"#.to_owned(),
        r#"rampart_concurrency_limit{upstream="app"} 256"#.to_owned(),
        r#"rampart_retries_total{route="api"} 0"#.to_owned(),
    ] {
        assert_has(&text, &line);
    }
}

#[tokio::test]
async fn a_reload_keeps_counting_in_the_same_series() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let text = |balance: &str| {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"api\"\n\
             upstream = \"app\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\nbalance = \"{balance}\"\n",
            upstream.addr()
        )
    };
    let proxy = common::proxy(&text("random")).await;
    let client = http1();
    let get = || request(&proxy, "/").body(Full::new(Bytes::new())).unwrap();
    for _ in 0..2 {
        assert_eq!(send(&client, get()).await.status(), StatusCode::OK);
    }
    // A changed upstream: a new pool, whose endpoint takes the same series.
    let config = rampart_config::Config::from_str(&text("round-robin"), "test.toml").unwrap();
    let summary = proxy.reload(&config).unwrap();
    assert_eq!(summary.upstreams.changed, ["app"]);
    assert_eq!(send(&client, get()).await.status(), StatusCode::OK);

    let text = metrics(&proxy);
    let endpoint = format!("upstream=\"app\",endpoint=\"{}\"", upstream.addr());
    assert_has(
        &text,
        r#"rampart_requests_total{route="api",outcome="success"} 3"#,
    );
    assert_has(
        &text,
        &format!("rampart_upstream_requests_total{{{endpoint},outcome=\"success\"}} 3"),
    );
    let snapshot = proxy.handle().snapshot();
    assert_eq!(snapshot.routes[0].requests.success, 3);
    assert_eq!(snapshot.upstreams[0].endpoints[0].attempts, (3, 0));
}

#[tokio::test]
async fn an_upstream_ramparts_own_fallbacks_and_errors_are_not_this_routes() {
    // The upstream is itself behind a rampart (B in A -> B -> C): its answers carry the marks of
    // its own fallback and refusals, which the client still sees.
    let headed = |status: StatusCode, name: &'static str, value: &'static str| Behavior::Headed {
        status,
        headers: vec![(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        )],
    };
    let upstream = Upstream::start(headed(
        StatusCode::OK,
        "x-rampart-fallback",
        "upstream-connect",
    ))
    .await
    .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "name = \"api\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    let client = http1();
    let get = || request(&proxy, "/").body(Full::new(Bytes::new())).unwrap();
    for _ in 0..2 {
        let response = send(&client, get()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-rampart-fallback"], "upstream-connect");
    }
    upstream.set_behavior(headed(
        StatusCode::SERVICE_UNAVAILABLE,
        "x-rampart-error",
        "breaker-open",
    ));
    let response = send(&client, get()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-rampart-error"], "breaker-open");

    // This route's upstream answered every time: two successes and a failure (its 503), no
    // fallback and no refusal of this route's own.
    let text = metrics(&proxy);
    for line in [
        r#"rampart_requests_total{route="api",outcome="success"} 2"#,
        r#"rampart_requests_total{route="api",outcome="failure"} 1"#,
        r#"rampart_requests_total{route="api",outcome="fallback"} 0"#,
        r#"rampart_requests_total{route="api",outcome="rejected"} 0"#,
    ] {
        assert_has(&text, line);
    }
}

#[tokio::test]
async fn a_request_its_client_gave_up_on_counts_as_cancelled() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(&[upstream.addr()], "name = \"api\"", "").await;

    let mut client = tokio::net::TcpStream::connect(common::addr(&proxy))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    while upstream.request_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(client);

    let cancelled = r#"rampart_requests_total{route="api",outcome="cancelled"} 1"#;
    for _ in 0..1000 {
        if metrics(&proxy).lines().any(|line| line == cancelled) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let text = metrics(&proxy);
    assert_has(&text, cancelled);
    assert_has(
        &text,
        r#"rampart_requests_total{route="api",outcome="failure"} 0"#,
    );
}

#[tokio::test]
async fn only_retries_sent_count_as_retries() {
    // The first failure opens the lone endpoint's breaker: the retry it called for waits its
    // backoff, then finds no endpoint to go to, and is not sent.
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "name = \"api\"\n[routes.retry]\nattempts = 3",
        "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"1h\"\nopen_for_max = \"1h\"",
    )
    .await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.request_count(), 1);
    assert_has(&metrics(&proxy), r#"rampart_retries_total{route="api"} 0"#);
}

#[tokio::test]
async fn an_endpoint_the_ejection_cap_keeps_in_service_shows_as_reinstated() {
    let first = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let second = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    // Both trip; the cap (50% of two: one) puts the one ejected last back in service.
    let text = |failures: u32| {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"app\"\n\
             [routes.retry]\nattempts = 1\n\n[upstreams.app]\nendpoints = [\"{}\", \"{}\"]\n\
             balance = \"round-robin\"\n[upstreams.app.breaker]\nconsecutive_failures = {failures}\n\
             open_for = \"1h\"\nopen_for_max = \"1h\"\n",
            first.addr(),
            second.addr()
        )
    };
    let proxy = common::proxy(&text(1)).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/").await.status(), 503);
    }
    let series = |upstream: &Upstream, name: &str| {
        let text = metrics(&proxy);
        let line = format!(
            "{name}{{upstream=\"app\",endpoint=\"{}\"}} ",
            upstream.addr()
        );
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{line} missing from\n{text}"))
            .to_owned()
    };
    for upstream in [&first, &second] {
        assert_eq!(series(upstream, "rampart_breaker_state"), "1", "open");
    }
    let mut reinstated = [&first, &second].map(|u| series(u, "rampart_endpoint_reinstated"));
    reinstated.sort();
    assert_eq!(reinstated, ["0", "1"], "one kept in service");

    // New breaker settings end the ejections: the new pool keeps no endpoint in service past
    // a cap, and the series, which outlives the old pool, says so.
    let config = rampart_config::Config::from_str(&text(2), "test.toml").unwrap();
    proxy.reload(&config).unwrap();
    for upstream in [&first, &second] {
        assert_eq!(series(upstream, "rampart_endpoint_reinstated"), "0");
    }
}

#[tokio::test]
async fn requests_answered_before_any_route_count_on_the_listener() {
    use tokio::io::AsyncWriteExt;

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "name = \"api\"\nmatch = { path_prefix = \"/api\" }",
        "",
    )
    .await;
    assert_eq!(get(&proxy, "/api/x").await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, "/elsewhere").await.status(),
            StatusCode::NOT_FOUND
        );
    }
    // No Host: refused before a route is asked.
    let mut client = tokio::net::TcpStream::connect(common::addr(&proxy))
        .await
        .unwrap();
    client
        .write_all(b"GET /api HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let answer = common::until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let text = metrics(&proxy);
    let listener = r#"listener="listener-0""#;
    for line in [
        format!("rampart_listener_unrouted_requests_total{{{listener},reason=\"no-route\"}} 2"),
        format!("rampart_listener_unrouted_requests_total{{{listener},reason=\"bad-request\"}} 1"),
        format!(
            "rampart_listener_unrouted_requests_total{{{listener},reason=\"body-too-large\"}} 0"
        ),
        r#"rampart_requests_total{route="api",outcome="success"} 1"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="failure"} 0"#.to_owned(),
    ] {
        assert_has(&text, &line);
    }
}
