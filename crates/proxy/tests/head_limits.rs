//! `max_headers`: a request head with more header lines than the listener allows gets 431 and
//! goes nowhere; one at the limit is forwarded. Both at the default and at a value of its own.
//! And the bound on an upstream's response head, which follows from the size of its reads.

mod common;

use common::{addr, raw, with_listener};
use rampart_test_support::{Behavior, Upstream};

/// A request whose head has `lines` header lines, `Host` and `Connection: close` among them.
fn request_with(lines: usize) -> String {
    let mut head = String::from("GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for n in 2..lines {
        head.push_str(&format!("X-Line-{n}: {n}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn limit_holds(listener: &str, limit: usize) {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let proxy = with_listener(listener, upstream.addr()).await;

    let at = raw(addr(&proxy), &request_with(limit)).await;
    assert!(at.starts_with("HTTP/1.1 200"), "{limit} lines: {at}");
    assert_eq!(upstream.request_count(), 1);

    let over = raw(addr(&proxy), &request_with(limit + 1)).await;
    assert!(
        over.starts_with("HTTP/1.1 431"),
        "{} lines: {over}",
        limit + 1
    );
    assert_eq!(upstream.request_count(), 1, "a refused head goes nowhere");
}

#[tokio::test]
async fn the_default_allows_100_header_lines() {
    limit_holds("", 100).await;
}

#[tokio::test]
async fn a_listener_may_allow_fewer() {
    limit_holds("max_headers = 10", 10).await;
}

#[tokio::test]
async fn a_listener_may_allow_more() {
    limit_holds("max_headers = 150", 150).await;
}

/// An upstream answer whose head carries one header of `bytes` bytes.
fn headed(bytes: usize) -> Behavior {
    Behavior::Headed {
        status: http::StatusCode::OK,
        headers: vec![(
            http::HeaderName::from_static("x-large"),
            http::HeaderValue::from_str(&"v".repeat(bytes)).unwrap(),
        )],
    }
}

#[tokio::test]
async fn an_upstream_head_under_64_kib_is_forwarded_and_one_over_128_kib_is_a_bad_gateway() {
    // The upstream's head is read into a buffer of at most 64 KiB before it is parsed again: a
    // head under that always fits; a larger one may fit when one read completes it, and one
    // over twice that never does. Under the bound with room for the status line and the
    // upstream's other headers:
    let upstream = Upstream::start(headed(60 * 1024)).await.unwrap();
    let proxy = with_listener("", upstream.addr()).await;
    let fits = raw(addr(&proxy), &request_with(2)).await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{}", &fits[..80]);
    assert!(
        fits.contains(&"v".repeat(60 * 1024)),
        "the large header is forwarded whole"
    );

    let upstream = Upstream::start(headed(130 * 1024)).await.unwrap();
    let proxy = with_listener("", upstream.addr()).await;
    let over = raw(addr(&proxy), &request_with(2)).await;
    assert!(
        over.starts_with("HTTP/1.1 502"),
        "{}",
        &over[..over.len().min(200)]
    );
    assert!(
        over.to_ascii_lowercase()
            .contains("x-rampart-error: upstream-invalid"),
        "{over}"
    );
}

#[tokio::test]
async fn the_limit_holds_over_http2_too() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let proxy = with_listener("max_headers = 10", upstream.addr()).await;
    let mut h2 = common::h2_connection(&proxy).await;
    let request = |fields: usize| {
        let mut request = http::Request::builder().uri(format!("http://{}/x", addr(&proxy)));
        for n in 0..fields {
            request = request.header(format!("x-line-{n}"), n);
        }
        request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    let at = h2.send_request(request(10)).await.unwrap();
    assert_eq!(at.status(), 200);
    let over = h2.send_request(request(11)).await.unwrap();
    assert_eq!(over.status(), 431);
    assert_eq!(over.headers()["x-rampart-error"], "headers-too-large");
    assert_eq!(upstream.request_count(), 1, "a refused head goes nowhere");

    // Cookie crumbs count as the one field they are joined in for the upstream.
    let mut crumbs = request(9);
    for n in 0..30 {
        crumbs.headers_mut().append(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("c{n}=v")).unwrap(),
        );
    }
    let joined = h2.send_request(crumbs).await.unwrap();
    assert_eq!(joined.status(), 200);
    assert_eq!(upstream.request_count(), 2);
    let mut crumbs = request(10);
    crumbs
        .headers_mut()
        .append(http::header::COOKIE, http::HeaderValue::from_static("c=v"));
    let over = h2.send_request(crumbs).await.unwrap();
    assert_eq!(over.status(), 431, "a cookie is a field like another");
}
