//! HTTP/1.1 upgrades: a WebSocket handshake is forwarded with its `Upgrade`, and once the upstream
//! answers 101 the two connections are joined byte for byte; anything else passes as a plain
//! response; `h2c` is never tunnelled; an upgrade is never retried.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{addr, proxy, simple};
use http::StatusCode;
use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const HANDSHAKE: &str = "GET /chat HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\n\
                         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A raw upstream that accepts one connection, answers its request 101, greets, then echoes
/// every byte until the other side closes. Sends the request head it read.
async fn echo_upstream() -> (SocketAddr, oneshot::Receiver<String>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (head_tx, head_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        let _ = head_tx.send(head);
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                  Upgrade: websocket\r\n\r\nhello from upstream",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (addr, head_rx, task)
}

/// Reads up to the end of a head (CRLF CRLF), byte by byte so nothing after it is taken.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .expect("the bytes arrive")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn a_websocket_is_tunnelled_both_ways_after_101() {
    let (upstream, head, upstream_task) = echo_upstream().await;
    let proxy = simple(&[upstream], "", "").await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let answer = read_head(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{answer}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{answer}");

    // The upstream got the handshake with its upgrade intact.
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /chat http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nsec-websocket-key: "), "{head}");

    // Upstream to client, then client to upstream and back.
    assert_eq!(read_exactly(&mut client, 19).await, "hello from upstream");
    for message in ["ping", "not HTTP at all\r\n\r\n", "x"] {
        client.write_all(message.as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut client, message.len()).await, message);
    }

    // The client closing ends the tunnel: the upstream sees its side close.
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), upstream_task)
        .await
        .expect("the upstream's side is closed")
        .unwrap();
}

#[tokio::test]
async fn a_tunnel_quiet_past_tunnel_idle_timeout_is_closed() {
    let (upstream, _head, upstream_task) = echo_upstream().await;
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\ntunnel_idle_timeout = \"300ms\"\n\
         [[routes]]\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"{upstream}\"]\n"
    ))
    .await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));
    assert_eq!(read_exactly(&mut client, 19).await, "hello from upstream");

    // A byte each way every 100 ms for over a second, three times the timeout: kept open.
    for _ in 0..12 {
        client.write_all(b"k").await.unwrap();
        assert_eq!(read_exactly(&mut client, 1).await, "k");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then nothing: closed, both sides.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .expect("the quiet tunnel is closed");
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    tokio::time::timeout(Duration::from_secs(10), upstream_task)
        .await
        .expect("the upstream's side is closed")
        .unwrap();
}

#[tokio::test]
async fn dropping_the_proxy_cuts_its_tunnels() {
    let (upstream, _head, upstream_task) = echo_upstream().await;
    let proxy = simple(&[upstream], "", "").await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));
    assert_eq!(read_exactly(&mut client, 19).await, "hello from upstream");

    drop(proxy);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .expect("the client's side is closed");
    // A clean close or a reset: either way, nothing more comes.
    assert!(read.is_err() || rest.is_empty());
    tokio::time::timeout(Duration::from_secs(10), upstream_task)
        .await
        .expect("the upstream's side is closed")
        .unwrap();
}

#[tokio::test]
async fn a_shutdown_closes_tunnels_without_waiting_for_them() {
    let (upstream, _head, _upstream_task) = echo_upstream().await;
    let proxy = proxy(&format!(
        "[runtime]\ndrain_timeout = \"30s\"\n\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{upstream}\"]\n"
    ))
    .await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));

    // Well within the 30 s drain timeout: the open tunnel does not hold the drain.
    let drain = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("the drain does not wait for the tunnel");
    assert_eq!(drain, rampart_proxy::Drain::Complete);
}

#[tokio::test]
async fn an_upstream_declining_the_upgrade_answers_as_usual_and_the_connection_ends() {
    let upstream = Upstream::start(Behavior::ok("plain answer")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exactly(&mut client, 12).await, "plain answer");
    assert!(upstream.requests()[0].headers.contains_key("upgrade"));

    // And then the connection ends: what the client wrote after its offer could have been in
    // the protocol it offered, and is not read as a request.
    assert!(head.contains("connection: close"), "{head}");
    client
        .write_all(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    let _ = client.read_to_string(&mut rest).await;
    assert_eq!(rest, "");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn h2c_upgrade_is_stripped_not_tunnelled() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let answer = common::raw(
        addr(&proxy),
        "GET /h2 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &upstream.requests()[0];
    assert!(!seen.headers.contains_key("upgrade"));
    assert!(!seen.headers.contains_key("http2-settings"));
}

#[tokio::test]
async fn an_upgrade_is_never_retried() {
    // GET and 503 are retried by default; an upgrade still gets one attempt.
    let first = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let second = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = simple(
        &[first.addr(), second.addr()],
        "[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }",
        // Round-robin: the first attempt goes to the first endpoint.
        "balance = \"round-robin\"",
    )
    .await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(first.request_count() + second.request_count(), 1);

    // The same request without the upgrade is retried: the test's retry settings are live.
    let response = common::get(&proxy, "/chat").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.request_count() + second.request_count(), 4);
}
