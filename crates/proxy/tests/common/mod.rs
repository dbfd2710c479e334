//! Helpers shared by the proxy's integration tests: a proxy from a TOML text, and clients.

#![allow(dead_code, unreachable_pub)] // Each test file uses its own share of these.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart_proxy::Proxy;
use rampart_test_support::ProxyBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 connection (prior knowledge) to the proxy's first listener, its task spawned: for
/// requests a pooled client would not send as they are (an `:authority` of the test's choosing,
/// a body streamed by hand).
pub async fn h2_connection<B>(proxy: &Proxy) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// The proxy's metrics, as a scrape of `/metrics` would read them.
pub fn metrics(proxy: &Proxy) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, proxy.registry()).unwrap();
    text
}

/// A proxy started from `toml`, which should listen on `127.0.0.1:0`.
pub async fn proxy(toml: &str) -> Proxy {
    ProxyBuilder::from_toml(toml).start().await
}

/// A proxy with one listener, one route (with `route` lines added) to one upstream of these
/// endpoints (with `upstream` lines added).
pub async fn simple(endpoints: &[SocketAddr], route: &str, upstream: &str) -> Proxy {
    ProxyBuilder::to(endpoints)
        .route(route)
        .upstream(upstream)
        .start()
        .await
}

/// A proxy with one listener (with `listener` lines added) and one route to `upstream`.
pub async fn with_listener(listener: &str, upstream: SocketAddr) -> Proxy {
    proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n{listener}\n\n\
         [[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{upstream}\"]\n"
    ))
    .await
}

/// Reads what comes until the proxy closes the connection (a reset counts as closed), for at
/// most ten seconds: far longer than any timeout the tests set.
pub async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the proxy closes the connection")
        {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The address of the proxy's first listener.
pub fn addr(proxy: &Proxy) -> SocketAddr {
    proxy.listeners()[0].addr
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client.
pub fn http1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c client (prior knowledge).
pub fn h2c() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A request to `path` on the proxy, with its base URI filled in.
pub fn request(proxy: &Proxy, path: &str) -> hyper::http::request::Builder {
    Request::builder().uri(format!("http://{}{path}", addr(proxy)))
}

/// Sends `request` and reads the whole response.
pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Response<Bytes> {
    let response = client.request(request).await.expect("the proxy answers");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the body arrives whole")
        .to_bytes();
    Response::from_parts(parts, body)
}

/// A GET of `path` over HTTP/1.1.
pub async fn get(proxy: &Proxy, path: &str) -> Response<Bytes> {
    send(
        &http1(),
        request(proxy, path).body(Full::default()).unwrap(),
    )
    .await
}

/// Writes `raw` on a new connection to `addr` and reads until the server closes it.
pub async fn raw(addr: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The `x-rampart-error` of a response, if any.
pub fn error_of<B>(response: &Response<B>) -> Option<&str> {
    response
        .headers()
        .get("x-rampart-error")
        .map(|v| v.to_str().unwrap())
}
