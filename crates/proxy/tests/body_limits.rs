//! `max_request_body`: a body announced too large is refused before anything is sent upstream; a
//! chunked body that grows too large is cut, the upstream request aborted, the client answered 413.
//! And retries of chunked bodies: replayed whole when they fit `max_replay_body`, sent once when
//! they do not.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{addr, error_of, raw, simple};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITED: &str = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmax_request_body = \"16B\"\n\n";

async fn limited_proxy(upstream: &Upstream) -> rampart_proxy::Proxy {
    limited_proxy_over(upstream, "http1").await
}

/// The proxy speaking `protocol` to the upstream.
async fn limited_proxy_over(upstream: &Upstream, protocol: &str) -> rampart_proxy::Proxy {
    common::proxy(&format!(
        "{LIMITED}[[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"{protocol}\"\n",
        upstream.addr()
    ))
    .await
}

#[tokio::test]
async fn a_content_length_over_the_limit_gets_413_and_nothing_is_sent() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = limited_proxy(&upstream).await;

    // The body is announced, not sent: the answer must not wait for it.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        raw(
            addr(&proxy),
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n",
        ),
    )
    .await
    .expect("answered at once, and the connection closed");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("x-rampart-error: body-too-large"),
        "{answer}"
    );
    assert_eq!(upstream.request_count(), 0);

    // At the limit is fine.
    let answer = raw(
        addr(&proxy),
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\nConnection: close\r\n\r\n\
         0123456789abcdef",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.requests()[0].body, "0123456789abcdef");
}

#[tokio::test]
async fn a_chunked_body_growing_over_the_limit_is_cut_with_413() {
    cut_with_413("http1").await;
}

#[tokio::test]
async fn a_chunked_body_growing_over_the_limit_is_cut_with_413_over_h2c_too() {
    // An HTTP/2 upstream connection reports only a reset stream: the 413 must not become a 502.
    cut_with_413("http2").await;
}

async fn cut_with_413(protocol: &str) {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = limited_proxy_over(&upstream, protocol).await;

    let answer = raw(
        addr(&proxy),
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         a\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("x-rampart-error: body-too-large"),
        "{answer}"
    );
    // The upstream saw a request start, never a whole one: it records only complete bodies.
    assert_eq!(upstream.request_count(), 0);

    // A chunked body within the limit goes through whole.
    let answer = raw(
        addr(&proxy),
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         a\r\n0123456789\r\n6\r\nabcdef\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.requests()[0].body, "0123456789abcdef");
}

/// A chunked body (no length) of `pieces`, sent one after another.
fn chunked(pieces: &[&'static str]) -> Pieces {
    Pieces(
        pieces
            .iter()
            .rev()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect(),
    )
}

/// A body of known pieces whose length it does not tell.
struct Pieces(Vec<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop().map(|piece| Ok(Frame::data(piece))))
    }
}

#[tokio::test]
async fn a_chunked_body_that_fits_is_replayed_whole_to_the_next_endpoint() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let working = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(
        &[failing.addr(), working.addr()],
        "[routes.retry]\nattempts = 2\nmethods = [\"POST\"]\nmax_replay_body = \"1KiB\"\n\
         backoff = { base = \"1ms\", max = \"1ms\" }",
        // Round-robin: the first attempt goes to the first endpoint.
        "balance = \"round-robin\"",
    )
    .await;

    let client = Client::builder(TokioExecutor::new()).build_http();
    let pieces = ["first piece, ", "second piece, ", "third piece"];
    let request = hyper::Request::post(format!("http://{}/orders", addr(&proxy)))
        .body(chunked(&pieces))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    let whole = pieces.concat();
    assert_eq!(failing.request_count(), 1);
    assert_eq!(failing.requests()[0].body, whole);
    assert_eq!(working.request_count(), 1);
    assert_eq!(working.requests()[0].body, whole);
}

#[tokio::test]
async fn a_chunked_body_over_max_replay_body_is_sent_once() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let working = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(
        &[failing.addr(), working.addr()],
        "[routes.retry]\nattempts = 2\nmethods = [\"POST\"]\nmax_replay_body = \"16B\"\n\
         backoff = { base = \"1ms\", max = \"1ms\" }",
        // Round-robin: the first attempt goes to the first endpoint.
        "balance = \"round-robin\"",
    )
    .await;

    let client = Client::builder(TokioExecutor::new()).build_http();
    let pieces = ["0123456789", "abcdefghij"];
    let request = hyper::Request::post(format!("http://{}/orders", addr(&proxy)))
        .body(chunked(&pieces))
        .unwrap();
    let response = client.request(request).await.unwrap();
    // The first attempt's own answer: it could not be retried.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), None);
    assert_eq!(failing.request_count(), 1);
    assert_eq!(failing.requests()[0].body, pieces.concat());
    assert_eq!(working.request_count(), 0);
}

#[tokio::test]
async fn a_client_body_over_the_limit_does_not_count_against_the_endpoint() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    // One failure would open the lone endpoint's breaker for a minute; HTTP/2 to the upstream,
    // where the body's failure reaches the stack as a reset stream only.
    let proxy = common::proxy(&format!(
        "{LIMITED}[[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n\
         [upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\n",
        upstream.addr()
    ))
    .await;

    for _ in 0..3 {
        let answer = raw(
            addr(&proxy),
            "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             a\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    let response = common::get(&proxy, "/still-there").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.requests()[0].path, "/still-there");
}

#[tokio::test]
async fn a_client_body_broken_off_or_garbled_gets_400_and_does_not_count_against_the_endpoint() {
    for protocol in ["http1", "http2"] {
        let upstream = Upstream::start(Behavior::Echo).await.unwrap();
        // One failure would open the lone endpoint's breaker for a minute: any client could take
        // the upstream away from every other by sending bad bodies.
        let proxy = common::proxy(&format!(
            "{LIMITED}[[routes]]\nupstream = \"app\"\n\n\
             [upstreams.app]\nendpoints = [\"{}\"]\nprotocol = \"{protocol}\"\n\
             [upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\n",
            upstream.addr()
        ))
        .await;

        for _ in 0..3 {
            // A chunk size that is no number.
            let answer = raw(
                addr(&proxy),
                "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\nzz\r\n",
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{protocol}: {answer}");
            assert!(answer.contains("x-rampart-error: bad-request"), "{answer}");
            assert!(
                answer.contains("request body broke off or was malformed"),
                "{answer}"
            );

            // A body the client stops sending: its connection's write side closes.
            let mut stream = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
            stream
                .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 400"), "{protocol}: {answer}");
        }
        let response = common::get(&proxy, "/still-there").await;
        assert_eq!(response.status(), StatusCode::OK, "{protocol}");
        assert_eq!(upstream.requests().last().unwrap().path, "/still-there");
    }
}
