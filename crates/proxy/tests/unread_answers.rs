//! The route's timeout holds until the response's last byte even when the client takes none of
//! it: an HTTP/2 stream whose window the client never opens, an HTTP/1.1 client that reads
//! nothing. Nothing reads the response then, yet the upstream's connection is let go at the
//! route's timeout (and a second's grace), not held for as long as the client likes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{addr, proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Far longer than the route's timeout and its grace, far shorter than `body_idle_timeout`.
const PATIENCE: Duration = Duration::from_secs(8);

/// An upstream that answers one request with a body it writes until its connection is closed;
/// what it sends tells when that happened.
async fn endless_upstream() -> (SocketAddr, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closed_seen) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 << 10];
        // Blocks once rampart stops reading; fails once it has let the connection go.
        while stream.write_all(&chunk).await.is_ok() {}
        let _ = closed.send(());
    });
    (addr, closed_seen)
}

async fn proxy_to(upstream: SocketAddr) -> rampart_proxy::Proxy {
    proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nbody_idle_timeout = \"60s\"\n\n\
         [[routes]]\nupstream = \"app\"\ntimeout = \"1s\"\n\n\
         [upstreams.app]\nendpoints = [\"{upstream}\"]\n"
    ))
    .await
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_lets_its_upstream_go_at_the_timeout() {
    let (upstream, closed) = endless_upstream().await;
    let proxy = proxy_to(upstream).await;

    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    // A window of nothing: rampart may send the stream no data at all.
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://app/big").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);

    let let_go = tokio::time::timeout(PATIENCE, closed).await;
    assert!(let_go.is_ok(), "the upstream's connection is still held");
    drop(response);
}

#[tokio::test]
async fn an_http1_client_that_reads_nothing_lets_its_upstream_go_at_the_timeout() {
    let (upstream, closed) = endless_upstream().await;
    let proxy = proxy_to(upstream).await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: its socket's buffers and rampart's fill, then nothing moves.
    let let_go = tokio::time::timeout(PATIENCE, closed).await;
    assert!(let_go.is_ok(), "the upstream's connection is still held");
    drop(client);
}
