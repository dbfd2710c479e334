//! `max_headers`: a request head with more header lines than the listener allows gets 431 and
//! goes nowhere; one at the limit is forwarded. Both at the default and at a value of its own.

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
