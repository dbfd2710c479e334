//! The resilience stack against real upstreams: per-endpoint breakers (outlier ejection) and
//! retries absorb the textbook failures, and stop where they must.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use rampart_policy::rng::Rng;
use rampart_test_support::{
    Behavior, Fault, FaultProxy, H2Code, Misbehaving, ProxyBuilder, Refusing, SeenRequest, Step,
    Upstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

async fn put(
    proxy: &rampart_proxy::Proxy,
    method: Method,
    body: &'static str,
) -> hyper::Response<Bytes> {
    let request = request(proxy, "/")
        .method(method)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(&http1(), request).await
}

#[tokio::test]
async fn one_dead_endpoint_of_two_is_retried_around_then_ejected() {
    let live = Upstream::start(Behavior::ok("live")).await.unwrap();
    // The dead endpoint is a fault proxy refusing connections, in front of an upstream that
    // counts what would get through once it listens again.
    let behind_dead = Upstream::start(Behavior::ok("dead")).await.unwrap();
    let dead = FaultProxy::start(behind_dead.addr()).await.unwrap();
    dead.set_fault(Fault::Refuse).unwrap();
    let proxy = simple(
        &[dead.addr(), live.addr()],
        "",
        "[upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"",
    )
    .await;

    let client = http1();
    for i in 0..100 {
        let response = send(&client, request(&proxy, "/").body(Full::default()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(response.body(), "live");
    }
    // Each request reached the live endpoint exactly once: the first attempts at the dead one
    // were retried there, and nothing was retried twice.
    assert_eq!(live.request_count(), 100);

    // The dead endpoint's breaker is open (for a minute): it listens again, yet gets nothing.
    dead.set_fault(Fault::None).unwrap();
    for _ in 0..20 {
        let response = send(&client, request(&proxy, "/").body(Full::default()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(dead.connections(), 0);
    assert_eq!(behind_dead.request_count(), 0);
    assert_eq!(live.request_count(), 120);
}

#[tokio::test]
async fn an_ejected_endpoint_gets_probes_and_comes_back_when_it_recovers() {
    let live = Upstream::start(Behavior::ok("live")).await.unwrap();
    let sick = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[sick.addr(), live.addr()],
        "",
        "balance = \"round-robin\"\n\
         [upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"200ms\"\n\
         open_for_max = \"200ms\"\nhalf_open_probes = 1",
    )
    .await;

    // Two failures at the sick endpoint open its breaker; the clients see only 200s.
    for _ in 0..10 {
        assert_eq!(get(&proxy, "/").await.status(), StatusCode::OK);
    }
    let ejected_at = sick.request_count();
    assert_eq!(ejected_at, 2);

    // It recovers; once the open period ends, a probe finds out, and traffic comes back to it.
    sick.set_behavior(Behavior::ok("recovered"));
    let mut recovered = 0;
    for _ in 0..500 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        if response.body() == "recovered" {
            recovered += 1;
            if recovered == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recovered, 3, "the recovered endpoint never came back");
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_endpoint() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let ok = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[failing.addr(), ok.addr()],
        "",
        "balance = \"round-robin\"",
    )
    .await;

    for _ in 0..4 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "fine");
    }
    // Round-robin sent half the first attempts to the failing endpoint.
    assert_eq!(failing.request_count(), 2);
    assert_eq!(ok.request_count(), 4);
}

#[tokio::test]
async fn a_retry_goes_to_an_endpoint_the_request_has_not_tried_yet() {
    let failing = [refusing(&[]).await, refusing(&[]).await];
    let ok = Upstream::start(Behavior::ok("fine")).await.unwrap();
    // Draws of 0 make `random` take the first endpoint it may: the first try goes to the first
    // failing endpoint, the retry to the second; were only the last failed endpoint avoided,
    // the third attempt would go back to the first.
    let proxy = ProxyBuilder::to(&[failing[0].addr(), failing[1].addr(), ok.addr()])
        .route("[routes.retry]\nattempts = 3")
        .upstream(&format!("balance = \"random\"\n{NO_BREAKER}"))
        .rng(Rng::fixed(0.0))
        .start()
        .await;

    for i in 0..10 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(response.body(), "fine");
    }
    // Each failing endpoint was tried once per request, never twice.
    assert_eq!(failing.map(|upstream| upstream.request_count()), [10, 10]);
    assert_eq!(ok.request_count(), 10);
}

#[tokio::test]
async fn a_retried_request_carries_its_body_again() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let echo = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(
        &[failing.addr(), echo.addr()],
        "",
        "balance = \"round-robin\"",
    )
    .await;

    for _ in 0..2 {
        let response = put(&proxy, Method::PUT, "the order").await;
        assert_eq!(response.status(), StatusCode::OK);
        let echoed = String::from_utf8_lossy(response.body()).into_owned();
        assert!(echoed.contains("the order"), "{echoed}");
    }
    let seen = failing.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "the order");
}

#[tokio::test]
async fn a_post_is_not_retried_by_default() {
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let response = put(&proxy, Method::POST, "pay once").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), None, "the upstream's own 503");
    assert_eq!(upstream.request_count(), 1);
}

/// Sends each of `requests` through a route (`route` lines in its table) to an endpoint that
/// refuses connections, as one being redeployed does, beside one that echoes: nothing of the
/// request reached the first, and the other takes it, body and all. Then, beside an endpoint
/// answering 503, the first request twice: the one the 503 answered is not sent again.
async fn sent_to_another_only_while_unsent(route: &str, requests: &[(Method, &'static str)]) {
    let redeployed = Refusing::bind().unwrap();
    let echo = Upstream::start(Behavior::Echo).await.unwrap();
    let upstream = "balance = \"round-robin\"\n[upstreams.app.breaker]\nenabled = false";
    let proxy = simple(&[redeployed.addr(), echo.addr()], route, upstream).await;
    for (method, body) in requests {
        let response = put(&proxy, method.clone(), body).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}: {response:?}");
        assert_eq!(echo.requests().last().unwrap().body, *body);
    }
    assert_eq!(echo.request_count(), requests.len() as u64);

    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(&[failing.addr(), echo.addr()], route, upstream).await;
    let (method, body) = &requests[0];
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(put(&proxy, method.clone(), body).await.status());
    }
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert_eq!(failing.request_count(), 1);
}

#[tokio::test]
async fn a_post_whose_connection_was_refused_goes_to_another_endpoint() {
    // A POST is still never sent twice to endpoints that may have had it.
    let orders = ["order 0", "order 1", "order 2", "order 3"].map(|body| (Method::POST, body));
    sent_to_another_only_while_unsent("", &orders).await;
}

#[tokio::test]
async fn an_upload_too_large_to_copy_whose_connection_was_refused_goes_to_another_endpoint() {
    // Over `max_replay_body`, no copy is kept; but nothing of it was read when the connection
    // was refused, and the body goes to the next attempt as it is.
    let upload: &'static str = "x".repeat(100 * 1024).leak();
    let uploads = [Method::POST, Method::PUT, Method::POST, Method::PUT].map(|m| (m, upload));
    sent_to_another_only_while_unsent("[routes.retry]\nmax_replay_body = \"1KiB\"", &uploads).await;
}

#[tokio::test]
async fn the_budget_stops_retries_past_its_floor_and_hands_back_the_upstreams_503() {
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    // No share of the load for retries; a floor of 1/s: 10 retries over the budget's 10 s
    // window, and 2 over its last fifth, 2 s.
    let proxy = simple(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }\n\
         budget = { ratio = 0, min_per_sec = 1 }",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;

    for _ in 0..20 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response), None, "the upstream's own 503");
    }
    // 20 first attempts, and the floor's 2 retries of the last fifth, not all 10 of the window
    // at once; without the budget, 40 retries. The last fifth is two buckets of a second, and
    // slides by one: requests that took longer than a second (they take a fraction of one)
    // would see it pass their first retries once, and 2 more.
    let seen = upstream.request_count();
    assert!((22..=24).contains(&seen), "{seen}");
}

#[tokio::test]
async fn retried_and_replaced_503s_leave_their_connection_for_the_next_attempt() {
    // Each 503 is dropped unread, for a retry or for the fallback; its short body is read out,
    // so that its connection carries a later attempt. A failed answer is kept until its retry
    // has one of its own (it is the answer if the retry gets none): two connections take
    // turns.
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let path = FaultProxy::start(upstream.addr()).await.unwrap();
    let proxy = simple(
        &[path.addr()],
        "[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }\n\
         budget = { ratio = 1, min_per_sec = 100 }\n\
         [routes.fallback]\non = [\"5xx\"]\nstatus = 200\nbody = \"later\"",
        NO_BREAKER,
    )
    .await;
    for _ in 0..10 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.body(), "later");
    }
    assert_eq!(upstream.request_count(), 30);
    assert_eq!(path.connections(), 2);
}

/// `count` GETs over HTTP/1.1, one after the other, each on a connection of its own read
/// until the proxy closes it: a body cut short is no error here.
async fn gets(proxy: &rampart_proxy::Proxy, count: usize) {
    for _ in 0..count {
        raw(
            addr(proxy),
            "GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
        )
        .await;
    }
}

/// The attempts on `endpoint` of the upstream `app` counted with `outcome` in the metrics.
fn attempts(proxy: &rampart_proxy::Proxy, endpoint: std::net::SocketAddr, outcome: &str) -> u64 {
    let series = format!(
        "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} "
    );
    let text = metrics(proxy);
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_endpoint_that_cuts_its_answers_short_is_ejected() {
    // A good head, then 5 of the 100 bytes it announced, and the connection closes.
    let cutting = Misbehaving::start(vec![
        Step::ReadRequest,
        Step::Write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".into()),
    ])
    .await
    .unwrap();
    let whole = Upstream::start(Behavior::ok("whole")).await.unwrap();
    let proxy = simple(
        &[cutting.addr(), whole.addr()],
        "[routes.retry]\nattempts = 1",
        "balance = \"round-robin\"\n\
         [upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"",
    )
    .await;
    gets(&proxy, 20).await;
    // Three answers cut short in a row open its breaker; the rest go to the other endpoint.
    assert_eq!(cutting.request_count(), 3);
    assert_eq!(attempts(&proxy, cutting.addr(), "failure"), 3);
    assert_eq!(attempts(&proxy, cutting.addr(), "success"), 0);
    assert_eq!(attempts(&proxy, whole.addr(), "success"), 17);
}

#[tokio::test]
async fn an_answer_cut_short_reaches_the_client_as_far_as_it_came() {
    // The head and 5 of the 100 bytes it announced in one write, then the end: read at once,
    // the piece and the end come together, and the client still gets what came before the cut.
    let cutting = Misbehaving::start(vec![
        Step::ReadRequest,
        Step::Write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".into()),
    ])
    .await
    .unwrap();
    let proxy = simple(
        &[cutting.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    for i in 0..20 {
        let answer = raw(
            addr(&proxy),
            "GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "answer {i}: {answer:?}");
        assert!(answer.ends_with("\r\n\r\nshort"), "answer {i}: {answer:?}");
    }
}

#[tokio::test]
async fn an_http2_stream_reset_with_no_error_before_its_length_is_a_failure() {
    // A good head announcing 100 bytes, 5 of them, then RST_STREAM(NO_ERROR): hyper reads the
    // reset as the body's end.
    let cutting = Misbehaving::start(vec![
        Step::Settings,
        Step::ReadRequest,
        Step::Headers {
            fields: vec![
                (":status".to_owned(), "200".to_owned()),
                ("content-length".to_owned(), "100".to_owned()),
            ],
            end_stream: false,
        },
        Step::Data {
            data: Bytes::from_static(b"short"),
            end_stream: false,
        },
        Step::RstStream(H2Code::NO_ERROR),
    ])
    .await
    .unwrap();
    let proxy = simple(
        &[cutting.addr()],
        "[routes.retry]\nattempts = 1",
        "protocol = \"http2\"\n[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    gets(&proxy, 2).await;
    assert_eq!(cutting.request_count(), 2);
    assert_eq!(attempts(&proxy, cutting.addr(), "failure"), 2);
    assert_eq!(attempts(&proxy, cutting.addr(), "success"), 0);
}

#[tokio::test]
async fn a_body_the_upstream_sends_past_the_routes_timeout_is_a_failure() {
    // The head at once, then a piece every 70 ms for two seconds; the route's 300 ms run out
    // in the middle of a wait for the upstream.
    let slow = Upstream::start(Behavior::SlowBody {
        chunk: "x".into(),
        every: Duration::from_millis(70),
        chunks: 30,
    })
    .await
    .unwrap();
    let proxy = simple(
        &[slow.addr()],
        "timeout = \"300ms\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    gets(&proxy, 2).await;
    assert_eq!(attempts(&proxy, slow.addr(), "failure"), 2);
    assert_eq!(attempts(&proxy, slow.addr(), "success"), 0);
}

#[tokio::test]
async fn a_client_reading_slower_than_the_routes_timeout_allows_never_opens_a_breaker() {
    // 8 MiB ready at once; the client takes 16 KiB every 10 ms, and the route's 300 ms run out
    // long before it has it all. The upstream kept up: the cut is the client's.
    let big = Upstream::start(Behavior::ok(vec![b'x'; 8 << 20]))
        .await
        .unwrap();
    let proxy = simple(
        &[big.addr()],
        "timeout = \"300ms\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"",
    )
    .await;
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        let mut got = 0;
        let mut buf = vec![0; 16 << 10];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(got < 8 << 20, "the answer was cut: {got} bytes");
    }
    assert_eq!(attempts(&proxy, big.addr(), "success"), 2);
    assert_no_failure(&proxy, big.addr());
}

/// An upstream that answers its head at once, then `xxxxxxxx` over 400 ms, a byte every 50 ms.
async fn streaming() -> Upstream {
    Upstream::start(Behavior::SlowBody {
        chunk: "x".into(),
        every: Duration::from_millis(50),
        chunks: 8,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_long_body_after_a_quick_head_is_no_slow_call_and_counts_once_whole() {
    // The head at once, then the body over 400 ms: four times the slow-call threshold.
    let streaming = streaming().await;
    let proxy = simple(
        &[streaming.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nslow_call = \"100ms\"\nslow_call_rate = 0.5\nmin_calls = 2",
    )
    .await;
    for _ in 0..3 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.body(), "xxxxxxxx");
    }
    assert_eq!(attempts(&proxy, streaming.addr(), "success"), 3);
    assert_eq!(attempts(&proxy, streaming.addr(), "failure"), 0);
    // The breaker stayed closed: the third request reached the endpoint.
    assert_eq!(streaming.request_count(), 3);
}

/// An upstream answering every request 503 with these header lines.
async fn refusing(headers: &[(&'static str, &'static str)]) -> Upstream {
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
    Upstream::start(Behavior::Headed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers,
    })
    .await
    .unwrap()
}

const NO_BREAKER: &str = "[upstreams.app.breaker]\nenabled = false";

#[tokio::test]
async fn a_retry_waits_at_least_the_upstreams_retry_after_and_is_told_the_time_then_left() {
    let upstream = refusing(&[("retry-after", "1")]).await;
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"10s\"\n[routes.retry]\nattempts = 2\nbackoff = { base = \"1ms\", max = \"2s\" }",
        NO_BREAKER,
    )
    .await;

    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    // Not the backoff's millisecond: the second attempt came the second the upstream asked for.
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    // Each attempt carries the time it has: the retry, a second later, a second less.
    let [first, second] = [&seen[0], &seen[1]].map(deadline_header);
    assert!(first <= 10_000, "{first}");
    assert!(second <= 9_000, "{second}");
}

#[tokio::test]
async fn an_answer_a_rampart_further_down_shed_is_not_retried_into_it() {
    // The upstream is a rampart shedding load: each retry would be one more request to shed,
    // at every hop of a chain.
    let upstream = refusing(&[("x-rampart-error", "overloaded")]).await;
    let proxy = simple(&[upstream.addr()], "", NO_BREAKER).await;
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), Some("overloaded"));
    assert_eq!(upstream.request_count(), 1);

    // Where it could not reach its service, another try may find one that can.
    let upstream = refusing(&[("x-rampart-error", "upstream-connect")]).await;
    let proxy = simple(&[upstream.addr()], "", NO_BREAKER).await;
    assert_eq!(
        get(&proxy, "/").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(upstream.request_count(), 3);
}

/// The milliseconds an upstream was told it had.
fn deadline_header(seen: &SeenRequest) -> u64 {
    seen.headers["x-rampart-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_attempt_bounded_by_the_per_try_timeout_is_told_that_and_not_the_routes_time() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"10s\"\nper_try_timeout = \"500ms\"",
        NO_BREAKER,
    )
    .await;

    assert_eq!(get(&proxy, "/").await.status(), StatusCode::OK);
    let told = deadline_header(&upstream.requests()[0]);
    assert!(told > 0 && told <= 500, "{told}");
}

#[tokio::test]
async fn a_slow_uploads_per_try_timeout_counts_from_its_end() {
    // The body comes over about 800 ms, past the per-try timeout of 300 ms: no answer can be
    // asked of the upstream before it has the request, so the wait for the head begins at the
    // body's end (as Envoy's). Counted from the attempt's start, the upload was cut and sent
    // again, and again.
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"10s\"\nper_try_timeout = \"300ms\"",
        NO_BREAKER,
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..8 {
        tcp.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("fine"), "{answer}");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "sent once");
    assert_eq!(seen[0].body, "hello".repeat(8));
    // Told the call's time: when the body would end, and the per-try time begin, was not known.
    let told = deadline_header(&seen[0]);
    assert!(told > 300 && told <= 10_000, "{told}");
}

#[tokio::test]
async fn a_retry_after_past_the_backoffs_cap_or_the_deadline_hands_back_the_answer_at_once() {
    // (Retry-After, route lines): longer than the backoff ever waits (1 s by default), and
    // within the backoff's cap but past the deadline.
    for (asked, route) in [
        ("120", "timeout = \"60s\"\n[routes.retry]\nattempts = 3"),
        (
            "3",
            "timeout = \"2s\"\n[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"5s\" }",
        ),
    ] {
        let upstream = refusing(&[("retry-after", asked)]).await;
        let proxy = simple(&[upstream.addr()], route, NO_BREAKER).await;

        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response), None, "the upstream's own 503");
        assert_eq!(response.headers()["retry-after"], asked);
        assert_eq!(upstream.request_count(), 1, "Retry-After: {asked}");
    }

    // A Retry-After in the HTTP-date form is not read: the backoff alone decides.
    let dated = refusing(&[("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT")]).await;
    let proxy = simple(
        &[dated.addr()],
        "timeout = \"2s\"\n[routes.retry]\nattempts = 3",
        NO_BREAKER,
    )
    .await;
    assert_eq!(
        get(&proxy, "/").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(dated.request_count(), 3);
}

#[tokio::test]
async fn the_budget_refusing_a_retry_after_a_connect_failure_says_so() {
    let dead = Refusing::bind().unwrap();
    let proxy = simple(
        &[dead.addr()],
        "[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }\n\
         budget = { ratio = 0, min_per_sec = 1 }",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;

    let mut reasons = Vec::new();
    let mut last = None;
    for _ in 0..20 {
        let response = get(&proxy, "/").await;
        reasons.push(error_of(&response).unwrap().to_owned());
        last = Some(response);
    }
    // The floor's 10 retries let the first requests try three times each.
    assert_eq!(reasons[0], "upstream-connect");
    let refused = reasons
        .iter()
        .filter(|r| *r == "retry-budget-exhausted")
        .count();
    assert!(refused > 0, "{reasons:?}");
    assert_eq!(reasons[19], "retry-budget-exhausted");
    // Its message names the failure the retry was for: the endpoint is down, not overloaded.
    let body = String::from_utf8(last.unwrap().into_body().to_vec()).unwrap();
    assert!(
        body.contains("(could not connect to the upstream) and the retry budget"),
        "{body}"
    );
}

#[tokio::test]
async fn a_hanging_endpoint_is_cut_short_by_the_per_try_timeout() {
    let hanging = Upstream::start(Behavior::Hang).await.unwrap();
    let ok = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[hanging.addr(), ok.addr()],
        "timeout = \"10s\"\nper_try_timeout = \"100ms\"",
        "balance = \"round-robin\"",
    )
    .await;

    for _ in 0..4 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "fine");
    }
    assert_eq!(hanging.request_count(), 2);
}

#[tokio::test]
async fn a_lone_endpoints_open_breaker_answers_without_calling_it() {
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"",
    )
    .await;

    for _ in 0..3 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response), None);
    }
    for _ in 0..5 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response), Some("breaker-open"));
    }
    assert_eq!(upstream.request_count(), 3);
}

#[tokio::test]
async fn backups_take_over_while_no_primary_admits() {
    let primary = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let backup = Upstream::start(Behavior::ok("backup")).await.unwrap();
    let proxy = simple(
        &[primary.addr()],
        "[routes.retry]\nattempts = 1",
        &format!(
            "backup = [\"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 2\n\
             open_for = \"60s\"",
            backup.addr()
        ),
    )
    .await;

    for _ in 0..2 {
        assert_eq!(
            get(&proxy, "/").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(backup.request_count(), 0);
    for _ in 0..3 {
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "backup");
    }
    assert_eq!(primary.request_count(), 2);
}

#[tokio::test]
async fn a_retry_goes_to_an_untried_backup_before_the_primary_that_failed() {
    let dead = Refusing::bind().unwrap();
    let backup = Upstream::start(Behavior::ok("backup")).await.unwrap();
    let proxy = simple(
        &[dead.addr()],
        "",
        &format!("backup = [\"{}\"]", backup.addr()),
    )
    .await;

    // The primary's breaker still admits (one failure): the retry goes to the backup at once.
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "backup");
    assert_eq!(backup.request_count(), 1);
}

#[tokio::test]
async fn an_answer_that_came_before_the_request_body_ended_stands_rather_than_hang_its_retry() {
    // It answers 503 as soon as the head is in, and reads nothing more: its connection's writer
    // still holds the request's body while the answer is kept.
    let early = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let early_addr = early.local_addr().unwrap();
    let answering = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = early.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // Held open, unread, until the test ends.
        std::future::pending::<()>().await;
        drop(stream);
    });
    let other = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = simple(
        &[early_addr, other.addr()],
        "timeout = \"2s\"",
        &format!("balance = \"round-robin\"\n{NO_BREAKER}"),
    )
    .await;

    // A PUT whose body is still coming when the 503 arrives.
    let (pieces, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    pieces.send(Bytes::from_static(b"first")).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::put("/")
        .header("host", "app")
        .body(Pieces(rx))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();

    // The upstream's answer, at once: not a retry waiting for a body that cannot come, until
    // the route's timeout, and then blamed on the other endpoint.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&response).is_none(), "{:?}", response.headers());
    drop(pieces);
    answering.abort();
}

/// A request body of the pieces sent on a channel, ending when the channel closes.
struct Pieces(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|piece| Ok(hyper::body::Frame::data(piece))))
    }
}

#[tokio::test]
async fn a_clients_own_short_deadline_never_opens_a_breaker() {
    // Each client asks for less time than the endpoint needs: its 504 says so, and says nothing
    // about the endpoint, which answers everyone with the route's time.
    let slow = Upstream::start(Behavior::Slow(Duration::from_millis(200)))
        .await
        .unwrap();
    let proxy = simple(
        &[slow.addr()],
        "timeout = \"5s\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"",
    )
    .await;
    let client = http1();
    for i in 0..5 {
        let hurried = request(&proxy, "/")
            .header("x-rampart-deadline", "20")
            .body(Full::default())
            .unwrap();
        let response = send(&client, hurried).await;
        assert_eq!(
            response.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "request {i}"
        );
        assert_eq!(error_of(&response), Some("deadline-exceeded"));
    }
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    assert_no_failure(&proxy, slow.addr());
    let succeeded = format!(
        "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{}\",outcome=\"success\"}} 1\n",
        slow.addr()
    );
    let text = metrics(&proxy);
    assert!(text.contains(&succeeded), "{text}");
}

#[tokio::test]
async fn a_body_cut_by_the_clients_own_deadline_never_opens_a_breaker() {
    // The head at once, the body over 400 ms; each client gives it 100 ms. The body is cut for
    // the client, and says nothing about the endpoint: it counts as its good head.
    let streaming = streaming().await;
    let proxy = simple(
        &[streaming.addr()],
        "timeout = \"5s\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"",
    )
    .await;
    for _ in 0..3 {
        raw(
            addr(&proxy),
            "GET / HTTP/1.1\r\nhost: app\r\nx-rampart-deadline: 100\r\nconnection: close\r\n\r\n",
        )
        .await;
    }
    assert_eq!(get(&proxy, "/").await.body(), "xxxxxxxx");
    assert_eq!(attempts(&proxy, streaming.addr(), "success"), 4);
    assert_no_failure(&proxy, streaming.addr());
}

/// Asserts that no attempt on `endpoint`, of the upstream `app`, was counted a failure.
fn assert_no_failure(proxy: &rampart_proxy::Proxy, endpoint: std::net::SocketAddr) {
    let failed = format!(
        "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{endpoint}\",outcome=\"failure\"}} 0\n"
    );
    let text = metrics(proxy);
    assert!(text.contains(&failed), "{text}");
}

#[tokio::test]
async fn a_hung_endpoint_behind_short_deadlines_is_a_slow_one() {
    // Every client gives up before the route's timeout, but after the slow-call threshold: the
    // endpoint never answered within a slow call's time, and slow calls open the breaker.
    let hung = Upstream::start(Behavior::Slow(Duration::from_secs(30)))
        .await
        .unwrap();
    let proxy = simple(
        &[hung.addr()],
        "timeout = \"5s\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nslow_call = \"100ms\"\nslow_call_rate = 0.5\nmin_calls = 2\nopen_for = \"60s\"",
    )
    .await;
    let client = http1();
    let hurried = || {
        request(&proxy, "/")
            .header("x-rampart-deadline", "300")
            .body(Full::default())
            .unwrap()
    };
    for i in 0..2 {
        let response = send(&client, hurried()).await;
        assert_eq!(
            error_of(&response),
            Some("deadline-exceeded"),
            "request {i}"
        );
    }
    let response = send(&client, hurried()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), Some("breaker-open"));
}

#[tokio::test]
async fn a_hung_endpoint_whose_clients_go_away_first_is_a_slow_one() {
    // Every client hangs up before the route's timeout (its own client timeout, unknown to the
    // proxy), after the slow-call threshold: as with its own deadline, the attempts are slow
    // calls, and they open the breaker. One that hangs up sooner says nothing.
    let hung = Upstream::start(Behavior::Slow(Duration::from_secs(30)))
        .await
        .unwrap();
    let proxy = simple(
        &[hung.addr()],
        "timeout = \"10s\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nslow_call = \"1s\"\nslow_call_rate = 0.5\nmin_calls = 2\nopen_for = \"60s\"",
    )
    .await;
    let proxy_addr = addr(&proxy);
    // A client that hangs up once the upstream has its request and `wait` more has passed.
    let sent = std::sync::atomic::AtomicU64::new(0);
    let give_up_after = |wait: Duration| {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let hung = &hung;
        async move {
            let mut stream = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), hung.wait_for_requests(n))
                .await
                .expect("the upstream gets the request");
            tokio::time::sleep(wait).await;
            drop(stream);
        }
    };
    for _ in 0..3 {
        give_up_after(Duration::ZERO).await;
    }
    for _ in 0..2 {
        give_up_after(Duration::from_millis(1200)).await;
    }
    // The proxy notices a hang-up as it comes; give the last one's outcome a moment to land.
    let open = format!(
        "rampart_breaker_state{{upstream=\"app\",endpoint=\"{}\"}} 1\n",
        hung.addr()
    );
    for _ in 0..100 {
        if metrics(&proxy).contains(&open) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics(&proxy);
    assert!(text.contains(&open), "{text}");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_upload_is_no_slow_call() {
    // The client sends a little of its body, waits past the slow-call threshold, and hangs up:
    // the exchange was waiting for the client, which says nothing of the endpoint.
    let upstream = Upstream::start(Behavior::Slow(Duration::from_secs(30)))
        .await
        .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"10s\"\n[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nslow_call = \"200ms\"\nslow_call_rate = 0.5\nmin_calls = 1\nopen_for = \"60s\"",
    )
    .await;
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 1000\r\n\r\nten bytes.")
            .await
            .unwrap();
        // Twice the threshold: the upstream has the head and the ten bytes, and waits.
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = format!(
        "rampart_breaker_state{{upstream=\"app\",endpoint=\"{}\"}} 0\n",
        upstream.addr()
    );
    let text = metrics(&proxy);
    assert!(text.contains(&closed), "{text}");
    // Nor does the route count them as failures: the clients left, as they do before a head.
    let route = |outcome: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("rampart_requests_total{")
                    && line.contains(&format!("outcome=\"{outcome}\"}}"))
            })
            .unwrap_or_else(|| panic!("no {outcome} in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(route("cancelled"), "2", "{text}");
    assert_eq!(route("failure"), "0", "{text}");
}

#[tokio::test]
async fn an_http2_connection_that_stops_answering_is_replaced() {
    // The endpoint serves new connections, but the one rampart shares for every request went
    // silent without closing (a wedged peer, a black-holed flow): pings find it dead.
    let upstream = Upstream::start(Behavior::ok("fresh")).await.unwrap();
    let path = FaultProxy::start(upstream.addr()).await.unwrap();
    let proxy = simple(
        &[path.addr()],
        "timeout = \"1s\"\n[routes.retry]\nattempts = 1",
        "protocol = \"http2\"\n[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    let client = http1();
    let get = || send(&client, request(&proxy, "/").body(Full::default()).unwrap());
    assert_eq!(get().await.status(), StatusCode::OK);
    path.freeze_open();
    assert_eq!(get().await.status(), StatusCode::GATEWAY_TIMEOUT);
    // Ten seconds of silence, then five for the ping's answer; well within thirty.
    let mut answered = None;
    for _ in 0..30 {
        let response = get().await;
        if response.status() == StatusCode::OK {
            answered = Some(response);
            break;
        }
    }
    let answered = answered.expect("a new connection serves again");
    assert_eq!(answered.body(), "fresh");
    assert_eq!(path.connections(), 2);
}

#[tokio::test]
async fn clients_that_stop_reading_hold_up_no_other_client_of_an_http2_upstream() {
    use tokio::io::AsyncWriteExt;
    let big = Bytes::from(vec![b'x'; 32 << 20]);
    let upstream = Upstream::start(Behavior::Ok {
        status: StatusCode::OK,
        body: big.clone(),
    })
    .await
    .unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "timeout = \"20s\"",
        "protocol = \"http2\"",
    )
    .await;
    // Four clients ask for the large body and never read a byte of it.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    tokio::time::timeout(Duration::from_secs(10), upstream.wait_for_requests(4))
        .await
        .expect("the four requests reach the upstream");
    // Another client of the same endpoint gets its whole answer.
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().len(), big.len());
    drop(stalled);
}

#[tokio::test]
async fn an_http2_upstream_may_send_a_head_as_large_as_an_http1_one() {
    let large = HeaderValue::from_str(&"v".repeat(40 << 10)).unwrap();
    let upstream = Upstream::start(Behavior::Headed {
        status: StatusCode::OK,
        headers: vec![(HeaderName::from_static("x-large"), large.clone())],
    })
    .await
    .unwrap();
    let proxy = simple(&[upstream.addr()], "", "protocol = \"http2\"").await;
    let response = get(&proxy, "/").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        error_of(&response)
    );
    assert_eq!(response.headers()["x-large"], large);
}

#[tokio::test]
async fn a_client_claiming_grpc_cannot_open_a_plain_upstreams_breaker() {
    // The upstream speaks plain HTTP: its answers never carry a grpc-status. A client sending
    // gRPC's content-type must not get them judged as gRPC calls that ended without one.
    let upstream = Upstream::start(Behavior::ok("plain")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"",
    )
    .await;
    for client in [h2c(), http1()] {
        for i in 0..5 {
            let claiming = request(&proxy, "/")
                .header("content-type", "application/grpc")
                .body(Full::default())
                .unwrap();
            let response = send(&client, claiming).await;
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
            assert_eq!(response.body(), "plain");
        }
    }
    // Nor is the answer passed off as a gRPC call that broke off: no status added after it.
    let mut sender = h2_connection::<Full<Bytes>>(&proxy).await;
    let claiming = http::Request::post(format!("http://{}/", addr(&proxy)))
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let mut response = sender.send_request(claiming).await.unwrap();
    let mut trailers = None;
    while let Some(frame) = response.body_mut().frame().await {
        if let Ok(frame) = frame.unwrap().into_trailers() {
            trailers = Some(frame);
        }
    }
    assert_eq!(trailers, None);
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    assert_no_failure(&proxy, upstream.addr());
}

#[tokio::test]
async fn an_endpoint_that_hangs_with_a_whole_body_or_one_it_stopped_taking_counts() {
    use futures_util::stream::{self, StreamExt};
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    // The request's body reached the endpoint whole, or the endpoint stopped taking it (its
    // buffers full, a body without end behind them): it had all it asked for, and its hanging
    // is its own. Both ways open its breaker.
    // An endpoint that takes connections and then nothing: it never reads, and its receive
    // buffer is small, so that a body it stops taking stops soon, however slow the machine.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmax_request_body = \"1GiB\"\n\n\
         [[routes]]\nupstream = \"app\"\ntimeout = \"500ms\"\n[routes.retry]\nattempts = 1\n\n\
         [upstreams.app]\nendpoints = [\"{upstream}\"]\n\
         [upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\n"
    ))
    .await;
    let whole = request(&proxy, "/upload")
        .method(Method::POST)
        .body(Full::new(Bytes::from_static(b"the whole body")))
        .unwrap();
    let response = send(&http1(), whole).await;
    assert_eq!(error_of(&response), Some("timeout"));
    let failures = |n: u32| {
        format!(
            "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{upstream}\",outcome=\"failure\"}} {n}\n"
        )
    };
    assert!(
        metrics(&proxy).contains(&failures(1)),
        "{}",
        metrics(&proxy)
    );
    // A megabyte at a time, for ever: more than the sockets between hold.
    let mut sender = h2_connection(&proxy).await;
    let piece = Bytes::from(vec![b'x'; 1 << 20]);
    let endless =
        stream::repeat_with(move || Ok::<_, std::convert::Infallible>(Frame::data(piece.clone())));
    let flooding = http::Request::post(format!("http://{}/upload", addr(&proxy)))
        .body(StreamBody::new(endless.boxed()))
        .unwrap();
    let response = sender.send_request(flooding).await.unwrap();
    assert_eq!(error_of(&response), Some("timeout"));
    assert!(
        metrics(&proxy).contains(&failures(2)),
        "{}",
        metrics(&proxy)
    );
    let refused = get(&proxy, "/").await;
    assert_eq!(error_of(&refused), Some("breaker-open"), "{refused:?}");
}

#[tokio::test]
async fn a_request_whose_body_the_upstream_awaits_does_not_count_against_the_endpoint() {
    use futures_util::stream::{self, BoxStream, StreamExt};
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    type Held = StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;

    // The upstream answers once it has the whole body, which never ends: an HTTP/2 client
    // waiting for a `100 Continue` rampart cannot send it, say, or an upload slower than the
    // route's timeout. Each request ends at the route's timeout, or at the attempt's, and the
    // endpoint, which had no whole request to answer, is not blamed.
    for route in [
        "timeout = \"200ms\"\n[routes.retry]\nattempts = 1",
        "timeout = \"5s\"\nper_try_timeout = \"100ms\"\n[routes.retry]\nattempts = 2",
    ] {
        let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
        let proxy = simple(
            &[upstream.addr()],
            route,
            "[upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"",
        )
        .await;
        let mut sender = h2_connection::<Held>(&proxy).await;
        for i in 0..4 {
            let (held, body) = if i % 2 == 0 {
                let never_begins = stream::pending().boxed();
                (
                    http::Request::post(format!("http://{}/upload", addr(&proxy)))
                        .header("expect", "100-continue"),
                    never_begins,
                )
            } else {
                let first = Ok(Frame::data(Bytes::from_static(b"the first piece")));
                let never_ends = stream::once(async move { first })
                    .chain(stream::pending())
                    .boxed();
                (
                    http::Request::post(format!("http://{}/upload", addr(&proxy))),
                    never_ends,
                )
            };
            let held = held.body(StreamBody::new(body)).unwrap();
            let response = sender.send_request(held).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::GATEWAY_TIMEOUT,
                "{route}: request {i}"
            );
            assert_eq!(error_of(&response), Some("timeout"));
        }
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::OK, "{route}: {response:?}");
        assert_no_failure(&proxy, upstream.addr());
    }
}
