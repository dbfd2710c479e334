//! What the client gets when the proxy cannot forward: one response per reason, with
//! `x-rampart-error` saying why, and nothing sent upstream where nothing should be.

mod common;

use http_body_util::Full;
use hyper::{Method, StatusCode};
use rampart_test_support::{Behavior, Refusing, Upstream};

use common::*;

#[tokio::test]
async fn no_matching_route_is_404_no_route() {
    let upstream = Upstream::start(Behavior::ok("orders")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "match = { path_prefix = \"/orders\" }",
        "",
    )
    .await;

    let response = get(&proxy, "/billing").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(&response), Some("no-route"));
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_grpc_call_with_no_route_gets_unimplemented() {
    let upstream = Upstream::start(Behavior::ok("orders")).await.unwrap();
    let proxy = simple(
        &[upstream.addr()],
        "match = { path_prefix = \"/orders\" }",
        "",
    )
    .await;

    let request = request(&proxy, "/billing.Billing/Charge")
        .method(Method::POST)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let response = send(&h2c(), request).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "12");
    assert_eq!(error_of(&response), Some("no-route"));
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_502_upstream_connect() {
    let closed = Refusing::bind().unwrap();
    let proxy = simple(&[closed.addr()], "", "").await;

    let response = get(&proxy, "/").await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(&response), Some("upstream-connect"));
}

#[tokio::test]
async fn an_upstream_closing_without_answering_is_502_upstream_reset() {
    let upstream = Upstream::start(Behavior::Reset).await.unwrap();
    // One attempt: the reason of a reset, not the retries after it (tests/resilience.rs).
    let proxy = simple(&[upstream.addr()], "[routes.retry]\nattempts = 1", "").await;

    let response = get(&proxy, "/").await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(&response), Some("upstream-reset"));
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn a_hanging_upstream_is_504_timeout_after_the_route_timeout() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(&[upstream.addr()], "timeout = \"200ms\"", "").await;

    let response = get(&proxy, "/").await;

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response), Some("timeout"));
    assert_eq!(upstream.request_count(), 1);
}

// On tokio's paused clock, time moves only to the next timer once every task waits: the
// answer comes when the route's timeout fires, and the clock read then says which timer that
// was. A timeout taken from anywhere else (a default, the connect timeout, a pool timer) or
// a deadline that outlives the route's shows as another elapsed time.
#[tokio::test(start_paused = true)]
async fn a_hanging_upstream_is_answered_when_the_route_timeout_passes() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(&[upstream.addr()], "timeout = \"500ms\"", "").await;

    let start = tokio::time::Instant::now();
    let response = get(&proxy, "/").await;
    let elapsed = start.elapsed();

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response), Some("timeout"));
    assert!(
        elapsed >= std::time::Duration::from_millis(500)
            && elapsed <= std::time::Duration::from_millis(550),
        "answered after {elapsed:?} of a 500ms route timeout"
    );
}

#[tokio::test]
async fn the_clients_shorter_deadline_is_504_deadline_exceeded() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = simple(&[upstream.addr()], "timeout = \"10s\"", "").await;

    let request = request(&proxy, "/")
        .header("x-rampart-deadline", "100")
        .body(Full::default())
        .unwrap();
    let response = send(&http1(), request).await;

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response), Some("deadline-exceeded"));
    // The upstream was told the client's budget, not the route's.
    let left: u64 = upstream.requests()[0].headers["x-rampart-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 100, "{left}");
}

#[tokio::test]
async fn a_request_arriving_with_no_time_left_is_not_forwarded() {
    let upstream = Upstream::start(Behavior::ok("late")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let request = request(&proxy, "/")
        .header("x-rampart-deadline", "0")
        .body(Full::default())
        .unwrap();
    let response = send(&http1(), request).await;

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response), Some("deadline-exceeded"));
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_garbled_deadline_header_is_400_saying_what_is_allowed() {
    let upstream = Upstream::start(Behavior::ok("never")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    for value in ["abc", "-1", "123456789", "1.5"] {
        let request = request(&proxy, "/")
            .header("x-rampart-deadline", value)
            .body(Full::default())
            .unwrap();
        let response = send(&http1(), request).await;

        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{value}");
        assert_eq!(error_of(&response), Some("bad-request"));
        let body = String::from_utf8_lossy(response.body());
        assert!(
            body.contains("x-rampart-deadline must appear once, as the milliseconds left"),
            "{value}: {body}"
        );
        assert!(
            body.starts_with(r#"{"error":"bad-request","message":""#) && body.ends_with("\"}\n"),
            "{body}"
        );
    }
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let upstream = Upstream::start(Behavior::ok("no")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let answer = raw(
        addr(&proxy),
        "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\
         Connection: close\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: get"),
        "{answer}"
    );
    // The body says what was refused, not only that something was.
    assert!(answer.contains("CONNECT is not allowed"), "{answer}");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_response_body_outliving_the_route_timeout_is_cut_off() {
    // The head comes at once, then a piece every 100 ms, 50 in all: far past the timeout.
    let upstream = Upstream::start(Behavior::SlowBody {
        chunk: "x".into(),
        every: std::time::Duration::from_millis(100),
        chunks: 50,
    })
    .await
    .unwrap();
    let proxy = simple(&[upstream.addr()], "timeout = \"300ms\"", "").await;

    let request = request(&proxy, "/").body(Full::default()).unwrap();
    let response = http1().request(request).await.expect("the head arrives");
    assert_eq!(response.status(), StatusCode::OK);

    use http_body_util::BodyExt;
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the body ended as if whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_read_by_a_slow_client_is_cut_off_at_the_route_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // The upstream sends as fast as it may; the client reads slower. The body never waits on the
    // upstream, so only a deadline looked at as the frames pass cuts it.
    let upstream = Upstream::start(Behavior::SlowBody {
        chunk: "x".repeat(1 << 20).into(),
        every: std::time::Duration::ZERO,
        chunks: u32::MAX,
    })
    .await
    .unwrap();
    let proxy = simple(&[upstream.addr()], "timeout = \"300ms\"", "").await;

    let mut client = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET /endless HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    // About 3 MB/s: 64 MiB would take twenty seconds, far past the timeout.
    let mut buf = vec![0; 64 << 10];
    let mut read = 0usize;
    loop {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        assert!(read < 64 << 20, "still streaming after {read} bytes");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(read > 0, "the head came");
}

#[tokio::test]
async fn a_status_past_599_is_502_upstream_invalid_over_either_protocol() {
    // `StatusCode` takes up to 999; RFC 9110 §15 stops at 599.
    let upstream = Upstream::start(Behavior::Ok {
        status: StatusCode::from_u16(999).unwrap(),
        body: "weird".into(),
    })
    .await
    .unwrap();
    for protocol in ["http1", "http2"] {
        let proxy = simple(
            &[upstream.addr()],
            "",
            &format!("protocol = \"{protocol}\""),
        )
        .await;
        let response = get(&proxy, "/").await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{protocol}");
        assert_eq!(error_of(&response), Some("upstream-invalid"), "{protocol}");
    }
}

#[tokio::test]
async fn a_grpc_content_type_over_http1_gets_plain_http_answers() {
    // gRPC is carried over HTTP/2: an HTTP/1.1 client would not get the trailers a gRPC status
    // comes in, and a call cut short would look whole. Its errors are HTTP statuses.
    let refusing = Refusing::bind().unwrap();
    let proxy = simple(&[refusing.addr()], "[routes.retry]\nattempts = 1", "").await;
    let call = request(&proxy, "/echo.Echo/Call")
        .method(Method::POST)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let response = send(&http1(), call).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(&response), Some("upstream-connect"));
    assert!(
        response.headers().get("grpc-status").is_none(),
        "{response:?}"
    );

    // Over HTTP/2 the same call gets a gRPC answer.
    let call = request(&proxy, "/echo.Echo/Call")
        .method(Method::POST)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let response = send(&h2c(), call).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
}
