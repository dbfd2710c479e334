//! `idle_timeout` closes a keep-alive connection that has no request in flight; `body_idle_timeout`
//! cuts a request or response body that stalls between two pieces.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{addr, until_closed, with_listener};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any timeout these tests set: only a proxy that never acts runs into it.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("idle_timeout = \"200ms\"", upstream.addr()).await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then, with no other request, the connection is closed.
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hi"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("header_read_timeout = \"200ms\"", upstream.addr()).await;

    // Nothing at all, and the first bytes of the HTTP/2 preface and no more: neither says yet
    // which protocol the client speaks, and neither may hold the connection for long.
    for first in [&b""[..], b"PRI * HT"] {
        let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
        client.write_all(first).await.unwrap();
        assert_eq!(until_closed(&mut client).await, "");
    }
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_keep_alive_connection_waits_past_the_header_read_timeout_and_a_begun_head_does_not() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("header_read_timeout = \"200ms\"", upstream.addr()).await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = answer_ending_in_hi(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Idle between two requests for three header read timeouts: the idle timeout (60 s
        // by default), not the head's, bounds that wait.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(upstream.request_count(), 2);
    // A head begun and not finished has the header read timeout from its first byte.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut client).await, "");
    assert_eq!(upstream.request_count(), 2);
}

/// Reads one answer whose body is `hi`, leaving the connection open.
async fn answer_ending_in_hi(client: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0; 1024];
    while !answer.ends_with(b"\r\n\r\nhi") {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_ne!(n, 0, "closed before the answer ended");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn a_preface_or_a_head_sent_a_byte_at_a_time_is_served() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("", upstream.addr()).await;

    // HTTP/1.1, its first byte also the preface's.
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    for byte in b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" {
        client.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // h2c prior knowledge, its preface in pieces.
    let stream = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(Trickle(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("http://a/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "hi"
    );
}

/// A stream whose writes go out a few bytes at a time.
struct Trickle(TcpStream);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(5);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_connection_with_a_request_in_flight_is_not_idle() {
    // The upstream takes three idle timeouts to answer.
    let upstream = Upstream::start(Behavior::Slow(Duration::from_millis(600)))
        .await
        .unwrap();
    let proxy = with_listener("idle_timeout = \"200ms\"", upstream.addr()).await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Had the wait counted as idle, the connection would be closing: it still takes a request.
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.request_count(), 2);
}

/// Reads one response whose body has a `content-length`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("the response comes")
            .unwrap();
        assert_eq!(n, 1, "closed before the response head ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("idle_timeout = \"200ms\"", upstream.addr()).await;

    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/", addr(&proxy)))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    // GOAWAY, then the connection ends.
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the proxy closes the idle HTTP/2 connection")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_upstream_request_is_aborted() {
    stalled_request_body("http1").await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_over_h2c_too() {
    stalled_request_body("http2").await;
}

async fn stalled_request_body(protocol: &str) {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = common::proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nbody_idle_timeout = \"200ms\"\n\n\
         [[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"{protocol}\"\n",
        upstream.addr()
    ))
    .await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    // One piece of a chunked body, then nothing.
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-rampart-error: bad-request"), "{answer}");
    // The upstream never got a whole request.
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_off() {
    // The head at once, then a piece a second for ten seconds.
    let upstream = Upstream::start(Behavior::SlowBody {
        chunk: "x".into(),
        every: Duration::from_secs(1),
        chunks: 10,
    })
    .await
    .unwrap();
    let proxy = with_listener("body_idle_timeout = \"200ms\"", upstream.addr()).await;

    let response = common::http1()
        .request(
            common::request(&proxy, "/")
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body is cut off long before it would end");
    assert!(body.is_err(), "a cut body must not read as complete");
}

#[tokio::test]
async fn a_body_that_keeps_flowing_is_not_cut() {
    // A piece every 100 ms, eight in all: longer than the idle timeout in total, never idle.
    let upstream = Upstream::start(Behavior::SlowBody {
        chunk: "x".into(),
        every: Duration::from_millis(100),
        chunks: 8,
    })
    .await
    .unwrap();
    let proxy = with_listener("body_idle_timeout = \"500ms\"", upstream.addr()).await;
    let response = common::get(&proxy, "/").await;
    assert_eq!(response.body(), "xxxxxxxx");
}

/// One request on a new connection: its answer, or what was read when the connection ended.
async fn try_request(proxy: &rampart_proxy::Proxy) -> String {
    let mut out = Vec::new();
    if let Ok(mut stream) = TcpStream::connect(addr(proxy)).await {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        if stream.write_all(head).await.is_ok() {
            let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_gone_after_part_of_the_http2_preface_frees_its_place_at_once() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    // One place, and a header read timeout far beyond the test: only noticing the close frees
    // the place in time.
    let proxy = with_listener(
        "max_connections = 1\nheader_read_timeout = \"10m\"",
        upstream.addr(),
    )
    .await;
    for reset in [false, true] {
        let mut half = TcpStream::connect(addr(&proxy)).await.unwrap();
        half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        if reset {
            half.set_zero_linger().unwrap();
        } else {
            half.shutdown().await.unwrap();
        }
        drop(half);
        assert!(
            answered_soon(&proxy).await,
            "the place stayed taken (reset: {reset})"
        );
    }
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = with_listener("max_connections = 1", upstream.addr()).await;
    // The one place, held by a keep-alive connection that has been answered.
    let mut held = TcpStream::connect(addr(&proxy)).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    held.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    for _ in 0..2 {
        assert_eq!(
            try_request(&proxy).await,
            "",
            "a connection past the limit was served"
        );
    }
    let text = common::metrics(&proxy);
    let line = r#"rampart_listener_refused_connections_total{listener="listener-0"} 2"#;
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing from\n{text}"
    );
    // The place comes back with the connection that held it.
    drop(held);
    assert!(answered_soon(&proxy).await, "the place stayed taken");
}

/// Whether a request on a new connection is answered within ten seconds of tries: a place
/// given back is taken up by the listener's next look, which a test cannot wait for exactly.
async fn answered_soon(proxy: &rampart_proxy::Proxy) -> bool {
    for _ in 0..500 {
        if try_request(proxy).await.starts_with("HTTP/1.1 200") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
