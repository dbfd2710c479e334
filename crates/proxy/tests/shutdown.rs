//! Graceful shutdown: in-flight requests finish, new connections are refused.

mod common;

use std::time::Duration;

use rampart_proxy::Drain;
use rampart_test_support::{Behavior, Upstream};
use tokio::net::TcpStream;

use common::*;

#[tokio::test]
async fn an_in_flight_request_finishes_during_the_drain() {
    let upstream = Upstream::start(Behavior::Slow(Duration::from_millis(300)))
        .await
        .unwrap();
    let proxy = proxy(&format!(
        "[runtime]\ndrain_timeout = \"10s\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"app\"\n\
         [upstreams.app]\nendpoints = [\"{}\"]\n",
        upstream.addr()
    ))
    .await;
    let listen = addr(&proxy);

    let in_flight = tokio::spawn({
        let uri = format!("http://{listen}/slow");
        async move {
            let request = hyper::Request::get(uri).body(Default::default()).unwrap();
            send(&http1(), request).await
        }
    });
    upstream.wait_for_requests(1).await;

    let drain = proxy.shutdown().await;

    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "ok");
    assert_eq!(drain, Drain::Complete);
    assert!(TcpStream::connect(listen).await.is_err(), "still accepting");
}

#[tokio::test]
async fn the_drain_timeout_cuts_what_does_not_finish() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let proxy = proxy(&format!(
        "[runtime]\ndrain_timeout = \"100ms\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"app\"\ntimeout = \"1h\"\n\
         [upstreams.app]\nendpoints = [\"{}\"]\n",
        upstream.addr()
    ))
    .await;
    let listen = addr(&proxy);

    let in_flight = tokio::spawn(async move {
        let request = hyper::Request::get(format!("http://{listen}/hang"))
            .body(Default::default())
            .unwrap();
        http1().request(request).await
    });
    upstream.wait_for_requests(1).await;

    assert_eq!(proxy.shutdown().await, Drain::TimedOut);
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut request got an answer"
    );
}
