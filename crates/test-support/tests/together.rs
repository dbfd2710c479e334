//! The fault proxy in front of the scriptable upstream, as a proxy's integration test uses them.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rampart_test_support::{Behavior, Fault, FaultProxy, Upstream};
use tokio::net::TcpStream;

async fn get(addr: SocketAddr) -> hyper::Result<Response<Incoming>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut client, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    client
        .send_request(Request::get("/").body(Full::<Bytes>::default()).unwrap())
        .await
}

#[tokio::test]
async fn reset_after_cuts_an_http_body_after_its_head() {
    let upstream = Upstream::start(Behavior::ok(vec![b'x'; 10_000]))
        .await
        .unwrap();
    let proxy = FaultProxy::start(upstream.addr()).await.unwrap();

    let whole = get(proxy.addr()).await.unwrap();
    let body = whole.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 10_000);

    // The head is well under 300 bytes; the body is not.
    proxy.set_fault(Fault::ResetAfter(300)).unwrap();
    let cut = get(proxy.addr()).await.unwrap();
    assert_eq!(cut.status(), StatusCode::OK);
    let body = cut.into_body().collect().await;
    assert!(body.is_err(), "the body arrived whole");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn refuse_keeps_requests_from_the_upstream() {
    let upstream = Upstream::start(Behavior::default()).await.unwrap();
    let proxy = FaultProxy::start(upstream.addr()).await.unwrap();

    proxy.set_fault(Fault::Refuse).unwrap();
    assert!(TcpStream::connect(proxy.addr()).await.is_err());

    proxy.set_fault(Fault::None).unwrap();
    assert_eq!(get(proxy.addr()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(proxy.connections(), 1);
}
