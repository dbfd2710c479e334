//! The proxy's metrics after known traffic, read from its registry as a scrape would.

mod common;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use prometheus_client::encoding::text::encode;
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, Upstream};

use common::{http1, request, send, simple};

fn scrape(proxy: &Proxy) -> String {
    let mut text = String::new();
    encode(&mut text, proxy.registry()).unwrap();
    text
}

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

    let text = scrape(&proxy);
    let endpoint = format!("upstream=\"app\",endpoint=\"{}\"", upstream.addr());
    for line in [
        r#"rampart_requests_total{route="api",outcome="success"} 5"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="failure"} 3"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="rejected"} 1"#.to_owned(),
        r#"rampart_requests_total{route="api",outcome="fallback"} 0"#.to_owned(),
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
