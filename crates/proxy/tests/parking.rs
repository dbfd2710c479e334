//! Past `park_idle_above` open connections, an HTTP/1.1 connection waiting for its next request
//! is parked: hyper's state and buffers go, the socket stays, and the next request is served as
//! if nothing happened, whether it comes whole, in pieces, pipelined or after empty lines.

mod common;

use std::time::Duration;

use common::{addr, metrics, until_closed, with_listener};
use rampart_proxy::{Drain, Proxy};
use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than anything these tests wait for: only a proxy that never acts runs into it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A gauge of the listener, as a scrape reads it.
fn gauge(proxy: &Proxy, family: &str) -> i64 {
    let text = metrics(proxy);
    let prefix = format!("{family}{{listener=\"listener-0\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {family} in\n{text}"))
        .parse()
        .unwrap()
}

fn parked(proxy: &Proxy) -> i64 {
    gauge(proxy, PARKED)
}

const OPEN: &str = "rampart_listener_connections";
const PARKED: &str = "rampart_listener_parked_connections";

/// Waits until the listener's gauge `family` reads `count`.
async fn until_gauge(proxy: &Proxy, family: &str, count: i64) {
    tokio::time::timeout(PATIENCE, async {
        while gauge(proxy, family) != count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{family} stayed at {}", gauge(proxy, family)));
}

async fn until_parked(proxy: &Proxy, count: i64) {
    until_gauge(proxy, PARKED, count).await;
}

/// Reads one response with a Content-Length body: its head and its body.
async fn response(stream: &mut TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("a content-length")
                .parse()
                .unwrap();
            if bytes.len() >= end + 4 + length {
                assert_eq!(
                    bytes.len(),
                    end + 4 + length,
                    "nothing sent ahead of a request"
                );
                let body = String::from_utf8_lossy(&bytes[end + 4..]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// Sends a request to a parked connection in two pieces, checking that the connection is not
/// parked while it has only the first, and reads the response; the connection is parked again
/// after it.
async fn in_two_pieces(
    proxy: &Proxy,
    client: &mut TcpStream,
    first: &str,
    second: &str,
) -> (String, String) {
    client.write_all(first.as_bytes()).await.unwrap();
    until_parked(proxy, 0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(parked(proxy), 0, "parked with {first:?} read");
    client.write_all(second.as_bytes()).await.unwrap();
    let answer = response(client).await;
    until_parked(proxy, 1).await;
    answer
}

/// The path the echoing upstream saw, from its response head.
fn echoed_path(head: &str) -> &str {
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    head.lines()
        .find_map(|l| l.strip_prefix("x-echo-path: "))
        .unwrap_or_else(|| panic!("{head}"))
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_requests() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = with_listener("park_idle_above = 0", upstream.addr()).await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();

    for path in ["/one", "/two", "/three"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = response(&mut client).await;
        assert_eq!(echoed_path(&head), path);
        // Waiting for the next request, the connection gives hyper's buffers back.
        until_parked(&proxy, 1).await;
    }
    assert_eq!(gauge(&proxy, OPEN), 1);

    drop(client);
    until_parked(&proxy, 0).await;
    until_gauge(&proxy, OPEN, 0).await;
}

#[tokio::test]
async fn requests_in_pieces_pipelined_or_after_empty_lines_are_served_across_parking() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = with_listener("park_idle_above = 0", upstream.addr()).await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = response(&mut client).await;
    assert_eq!(echoed_path(&head), "/first");
    until_parked(&proxy, 1).await;

    // A head in two pieces, then a body in two pieces: the first piece wakes the connection,
    // which is not parked again before the rest.
    let (head, _) = in_two_pieces(
        &proxy,
        &mut client,
        "GET /pieces HTTP/1.1\r\nHo",
        "st: a\r\n\r\n",
    )
    .await;
    assert_eq!(echoed_path(&head), "/pieces");
    let (head, body) = in_two_pieces(
        &proxy,
        &mut client,
        "POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc",
        "def",
    )
    .await;
    assert_eq!(echoed_path(&head), "/body");
    assert!(body.contains("\"body\":\"abcdef\""), "{body}");

    // Two requests in one write, then one after empty lines: each answered, in order.
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    for path in ["/a", "/b"] {
        let (head, _) = response(&mut client).await;
        assert_eq!(echoed_path(&head), path);
    }
    until_parked(&proxy, 1).await;
    // Empty lines may come before a request (RFC 9112, section 2.2), even apart from it.
    client.write_all(b"\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .write_all(b"GET /after-empty-lines HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = response(&mut client).await;
    assert_eq!(echoed_path(&head), "/after-empty-lines");
    assert_eq!(upstream.request_count(), 6);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_timeout_not_the_header_read_timeout() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener(
        "park_idle_above = 0\nidle_timeout = \"300ms\"",
        upstream.addr(),
    )
    .await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    get_hi(&mut client).await;
    until_parked(&proxy, 1).await;
    assert_eq!(until_closed(&mut client).await, "");
    until_parked(&proxy, 0).await;

    // The head's own timeout counts from its first byte: a parked connection waits past it.
    let proxy = with_listener(
        "park_idle_above = 0\nheader_read_timeout = \"200ms\"",
        upstream.addr(),
    )
    .await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    for _ in 0..2 {
        get_hi(&mut client).await;
        until_parked(&proxy, 1).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        until_parked(&proxy, 1).await;
    }
}

/// Sends a GET on `client` and reads its answer: a 200 whose body is `hi`.
async fn get_hi(client: &mut TcpStream) {
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hi");
}

#[tokio::test]
async fn a_drain_closes_parked_connections_at_once() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("park_idle_above = 0", upstream.addr()).await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    response(&mut client).await;
    until_parked(&proxy, 1).await;

    let drain = tokio::time::timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("the drain waits for no parked connection");
    assert_eq!(drain, Drain::Complete);
    assert_eq!(until_closed(&mut client).await, "");
}

#[tokio::test]
async fn only_past_the_threshold_are_connections_parked() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    // The default threshold is far above two connections; 1 is under.
    for (listener, parked_after) in [("", 0), ("park_idle_above = 1", 2)] {
        let proxy = with_listener(listener, upstream.addr()).await;
        let mut clients = [
            TcpStream::connect(addr(&proxy)).await.unwrap(),
            TcpStream::connect(addr(&proxy)).await.unwrap(),
        ];
        // Whether to park is decided as a connection turns idle: both must be open by then.
        until_gauge(&proxy, OPEN, 2).await;
        for client in &mut clients {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            response(client).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        until_parked(&proxy, parked_after).await;
    }
}
