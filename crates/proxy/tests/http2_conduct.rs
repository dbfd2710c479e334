//! HTTP/2 clients that misbehave without breaking the protocol: a rapid reset that waits for
//! each stream to be taken up before resetting it (every stream is then work for the upstream,
//! and the HTTP/2 layer's bound on streams reset before they are taken up never sees it), a
//! flood of PINGs, a header block left open. A connection whose client resets most of its
//! requests within a second of sending them, or pings without cause, is sent GOAWAY and
//! closed; one that cancels a call now and then, or pings while answers flow, is not; a header
//! block must end within `header_read_timeout`, as an HTTP/1.1 head must.

mod common;

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, Upstream};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use common::*;

/// Requests sent at once, then reset together.
const BATCH: u64 = 10;

/// The proxy in front of a slow upstream (`/slow`, whose requests wait long enough to be reset
/// while the upstream has them) and a fast one (the rest).
async fn two_upstreams() -> (Proxy, Upstream, Upstream) {
    let slow = Upstream::start(Behavior::Slow(Duration::from_secs(5)))
        .await
        .unwrap();
    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"slow\"\nupstream = \"slow\"\nmatch = {{ path_prefix = \"/slow\" }}\n\
         [routes.retry]\nattempts = 1\n\n\
         [[routes]]\nname = \"fast\"\nupstream = \"fast\"\n\n\
         [upstreams.slow]\nendpoints = [\"{}\"]\n\n\
         [upstreams.fast]\nendpoints = [\"{}\"]\n",
        slow.addr(),
        fast.addr()
    ))
    .await;
    (proxy, slow, fast)
}

/// An HTTP/2 connection to `proxy`, and its task, which ends when the connection does.
async fn connect(proxy: &Proxy) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

/// Sends `BATCH` GETs of `path` and resets them once `upstream` has them all (it had `seen`
/// before); `false` once the proxy no longer takes streams on this connection.
async fn send_and_reset(
    client: &mut SendRequest<Bytes>,
    path: &str,
    upstream: &Upstream,
    seen: u64,
) -> bool {
    let mut streams = Vec::new();
    for _ in 0..BATCH {
        let Ok(ready) = client.clone().ready().await else {
            return false;
        };
        *client = ready;
        let request = http::Request::get(format!("http://app{path}"))
            .body(())
            .unwrap();
        match client.send_request(request, true) {
            Ok(stream) => streams.push(stream),
            Err(_) => return false,
        }
    }
    // Taken up by the proxy and sent on: the reset now costs the upstream its work.
    let all_seen = upstream.wait_for_requests(seen + BATCH);
    if tokio::time::timeout(Duration::from_secs(5), all_seen)
        .await
        .is_err()
    {
        return false;
    }
    for (_, mut stream) in streams {
        stream.send_reset(h2::Reason::CANCEL);
    }
    true
}

/// GETs `path` on `client` and reads the whole answer.
async fn get(client: &mut SendRequest<Bytes>, path: &str) -> Option<Bytes> {
    *client = client.clone().ready().await.ok()?;
    let request = http::Request::get(format!("http://app{path}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).ok()?;
    let mut body = response.await.ok()?.into_body();
    let mut whole = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        whole.extend_from_slice(&chunk);
    }
    Some(Bytes::from(whole))
}

#[tokio::test]
async fn a_client_resetting_most_requests_just_after_sending_them_is_cut_off() {
    let (proxy, slow, _fast) = two_upstreams().await;
    let (mut client, connection) = connect(&proxy).await;

    let mut reset = 0;
    while send_and_reset(&mut client, "/slow", &slow, reset).await {
        reset += BATCH;
        assert!(reset <= 2_000, "still served after {reset} early resets");
    }
    // Cut off at the bound (250 early resets among fewer than 500 requests), give or take the
    // batch in flight when it was reached.
    assert!(
        (250..=250 + BATCH).contains(&reset),
        "{reset} requests reset before the connection was closed"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the connection is still open");
    // Another connection is served as before.
    let (mut other, _connection) = connect(&proxy).await;
    assert_eq!(get(&mut other, "/").await.as_deref(), Some(&b"fast"[..]));
}

#[tokio::test]
async fn a_client_going_on_resetting_after_its_goaway_is_cut_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (proxy, slow, _fast) = two_upstreams().await;
    // Raw frames: this client never answers the PING that follows the first GOAWAY, which
    // hyper waits for before it names the last stream it takes, and opens streams on.
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    write.write_all(&hello).await.unwrap();
    // Whatever comes is read and dropped, until the connection ends.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 64 << 10];
        while read.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    // GET /slow: `:method GET`, `:scheme http`, `:authority app`, `:path /slow`.
    let block: &[u8] = &[
        0x82, 0x86, 0x01, 3, b'a', b'p', b'p', 0x04, 5, b'/', b's', b'l', b'o', b'w',
    ];
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    let mut opened = 0u64;
    let mut stream = 1;
    while opened < 3_000 && !reader.is_finished() {
        let mut headers = Vec::new();
        let mut resets = Vec::new();
        for _ in 0..BATCH {
            headers.extend(frame(0x1, 0x5, stream, block));
            resets.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
            stream += 2;
        }
        if write.write_all(&headers).await.is_err() {
            break;
        }
        // Taken up and sent on, then reset: each one work for the upstream.
        let all_seen = slow.wait_for_requests(opened + BATCH);
        let _ = tokio::time::timeout(Duration::from_millis(500), all_seen).await;
        if write.write_all(&resets).await.is_err() {
            break;
        }
        opened += BATCH;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), reader).await;
    assert!(ended.is_ok(), "still open after {opened} streams");
    // Cut at the bound, and a few streams past its GOAWAY, not an idle timeout later.
    assert!(
        opened < 400,
        "{opened} streams opened before the connection was closed"
    );
}

#[tokio::test]
async fn a_client_cancelling_a_request_now_and_then_is_served_on() {
    let (proxy, slow, _fast) = two_upstreams().await;
    let (mut client, connection) = connect(&proxy).await;

    // A third of 900 requests reset just after they were sent, as a client cancels calls
    // on its deadlines: past 500 requests, far from half.
    let mut reset = 0;
    for _ in 0..30 {
        assert!(send_and_reset(&mut client, "/slow", &slow, reset).await);
        reset += BATCH;
        for _ in 0..2 * BATCH {
            assert_eq!(get(&mut client, "/").await.as_deref(), Some(&b"fast"[..]));
        }
    }
    assert_eq!(get(&mut client, "/").await.as_deref(), Some(&b"fast"[..]));
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn a_client_pinging_without_cause_is_cut_off() {
    let (proxy, _slow, _fast) = two_upstreams().await;
    let (client, connection) = connect_with_pings(&proxy).await;
    let (_client, mut pings) = (client, connection);

    let mut answered = 0;
    while pings.ping(h2::Ping::opaque()).await.is_ok() {
        answered += 1;
        assert!(answered <= 5_000, "still answered after {answered} pings");
    }
    assert!(
        (990..=1_000).contains(&answered),
        "{answered} pings answered before the connection was closed"
    );
}

#[tokio::test]
async fn a_client_pinging_between_its_requests_is_served_on() {
    let (proxy, _slow, _fast) = two_upstreams().await;
    let (mut client, mut pings) = connect_with_pings(&proxy).await;

    // 1,600 pings, more than the bound, four before each of 400 requests: each request is a
    // cause, which allows a few.
    for _ in 0..400 {
        for _ in 0..4 {
            pings.ping(h2::Ping::opaque()).await.unwrap();
        }
        assert_eq!(get(&mut client, "/").await.as_deref(), Some(&b"fast"[..]));
    }
}

#[tokio::test]
async fn a_request_now_and_then_buys_no_ping_flood() {
    let (proxy, _slow, _fast) = two_upstreams().await;
    let (mut client, mut pings) = connect_with_pings(&proxy).await;

    // 900 pings, a request, 900 more: a request (and its answer's data) is cause for a few,
    // not for a flood's worth.
    let mut answered = 0;
    'rounds: for _ in 0..5 {
        for _ in 0..900 {
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                break 'rounds;
            }
            answered += 1;
        }
        if get(&mut client, "/").await.is_none() {
            break;
        }
    }
    assert!(
        (990..=1_030).contains(&answered),
        "{answered} pings answered before the connection was closed"
    );
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_is_closed_at_the_body_idle_timeout() {
    // A streamed answer (chunked, 10 s of it) to a client whose streams have no window: it
    // takes nothing, and nothing is written it that a write stall could show.
    let streaming = Upstream::start(Behavior::SlowBody {
        chunk: Bytes::from_static(b"x"),
        every: Duration::from_millis(10),
        chunks: 1_000,
    })
    .await
    .unwrap();
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nbody_idle_timeout = \"300ms\"\n\n\
         [[routes]]\nupstream = \"app\"\ntimeout = \"60s\"\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\n",
        streaming.addr()
    ))
    .await;
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://app/stream").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // Its body never read: the connection ends, within one to two body idle timeouts.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the connection is still open");
    drop(response);
}

/// An HTTP/2 connection to `proxy` whose pings the test sends, and its task.
async fn connect_with_pings(proxy: &Proxy) -> (SendRequest<Bytes>, h2::PingPong) {
    let tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let pings = connection.ping_pong().expect("the pings, taken once");
    tokio::spawn(connection);
    (client, pings)
}

#[tokio::test]
async fn a_header_block_left_open_is_cut_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fast = Upstream::start(Behavior::ok("fast")).await.unwrap();
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"200ms\"\n\
         idle_timeout = \"60s\"\n\n\
         [[routes]]\nupstream = \"fast\"\n\n\
         [upstreams.fast]\nendpoints = [\"{}\"]\n",
        fast.addr()
    ))
    .await;
    let mut tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS, empty; then HEADERS for stream 1 without END_HEADERS: `:method GET`, and no
    // CONTINUATION ever.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]);
    tcp.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert_eq!(fast.request_count(), 0);
}
