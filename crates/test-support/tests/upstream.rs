//! The scriptable upstream, spoken to over HTTP/1.1 and over h2c with hyper's own client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_test_support::{Behavior, Upstream};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long a test waits to be sure a request is stuck. Only ever a lower bound.
const PATIENCE: Duration = Duration::from_millis(200);

/// A guard against a test hanging forever when something it waits for never happens; it bounds
/// nothing the test asserts about timing.
const LIVENESS: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http1,
    H2c,
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::H2c];

/// One request on a fresh connection.
async fn send(
    addr: SocketAddr,
    protocol: Protocol,
    request: Request<Full<Bytes>>,
) -> hyper::Result<Response<Incoming>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    match protocol {
        Protocol::Http1 => {
            let (mut client, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            client.send_request(request).await
        }
        Protocol::H2c => {
            let (mut client, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            client.send_request(request).await
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn ok_answers_its_status_and_body() {
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::default()).await.unwrap();
        let response = send(upstream.addr(), protocol, get(upstream.addr(), "/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
        assert_eq!(text(response).await, "ok", "{protocol:?}");

        upstream.set_behavior(Behavior::Ok {
            status: StatusCode::CREATED,
            body: Bytes::from_static(b"made"),
        });
        let response = send(upstream.addr(), protocol, get(upstream.addr(), "/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{protocol:?}");
        assert_eq!(text(response).await, "made", "{protocol:?}");
    }
}

#[tokio::test]
async fn fail_answers_the_status() {
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
            .await
            .unwrap();
        let response = send(upstream.addr(), protocol, get(upstream.addr(), "/"))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{protocol:?}"
        );
        assert_eq!(text(response).await, "Service Unavailable", "{protocol:?}");
    }
}

#[tokio::test]
async fn slow_answers_after_the_delay() {
    let delay = Duration::from_millis(150);
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::Slow(delay)).await.unwrap();
        let started = Instant::now();
        let response = send(upstream.addr(), protocol, get(upstream.addr(), "/"))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= delay,
            "{protocol:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
    }
}

#[tokio::test]
async fn hang_never_answers_but_records_the_request() {
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::Hang).await.unwrap();
        let answer = timeout(
            PATIENCE,
            send(upstream.addr(), protocol, get(upstream.addr(), "/stuck")),
        )
        .await;
        assert!(answer.is_err(), "{protocol:?}: answered {answer:?}");
        assert_eq!(upstream.request_count(), 1, "{protocol:?}");
        assert_eq!(upstream.requests()[0].path, "/stuck", "{protocol:?}");
    }
}

#[tokio::test]
async fn reset_closes_the_connection_without_answering() {
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::Reset).await.unwrap();
        let answer = timeout(
            LIVENESS,
            send(upstream.addr(), protocol, get(upstream.addr(), "/")),
        )
        .await
        .expect("the connection was not closed");
        let err = answer.expect_err("answered");
        match protocol {
            Protocol::Http1 => assert!(err.is_incomplete_message(), "{err:?}"),
            // The connection's end reaches the stream as an IO error or a closed connection,
            // depending on what the client was doing when it came.
            Protocol::H2c => assert!(
                !err.is_user() && !err.is_parse() && !err.is_timeout(),
                "{err:?}"
            ),
        }
        assert_eq!(upstream.request_count(), 1, "{protocol:?}");
    }
}

#[tokio::test]
async fn slow_body_drips_the_body_after_the_head() {
    let every = Duration::from_millis(50);
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::SlowBody {
            chunk: Bytes::from_static(b"ab"),
            every,
            chunks: 3,
        })
        .await
        .unwrap();
        let response = send(upstream.addr(), protocol, get(upstream.addr(), "/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");

        let head_arrived = Instant::now();
        let mut body = response.into_body();
        let mut frames = 0;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                frames += 1;
                got.extend_from_slice(&data);
            }
        }

        assert_eq!(got, b"ababab", "{protocol:?}");
        assert!(frames > 1, "{protocol:?}: the body came in one piece");
        // The head came before the body was written, so the pieces arrived after it.
        assert!(
            head_arrived.elapsed() >= 2 * every,
            "{protocol:?}: {:?}",
            head_arrived.elapsed()
        );
    }
}

#[tokio::test]
async fn echo_replies_with_what_was_received() {
    for protocol in PROTOCOLS {
        let upstream = Upstream::start(Behavior::Echo).await.unwrap();
        let request = Request::post(format!("http://{}/orders?id=7", upstream.addr()))
            .header("x-test", "yes \"quoted\"")
            .body(Full::new(Bytes::from_static(b"payload\n")))
            .unwrap();
        let response = send(upstream.addr(), protocol, request).await.unwrap();

        assert_eq!(response.headers()["x-echo-method"], "POST", "{protocol:?}");
        assert_eq!(
            response.headers()["x-echo-path"],
            "/orders?id=7",
            "{protocol:?}"
        );
        let echoed = text(response).await;
        assert!(
            echoed.starts_with(r#"{"method":"POST","path":"/orders?id=7","#),
            "{echoed}"
        );
        assert!(
            echoed.contains(r#"["x-test","yes \"quoted\""]"#),
            "{echoed}"
        );
        assert!(echoed.ends_with(r#""body":"payload\n"}"#), "{echoed}");
    }
}

#[tokio::test]
async fn records_every_request() {
    for (protocol, version) in [
        (Protocol::Http1, Version::HTTP_11),
        (Protocol::H2c, Version::HTTP_2),
    ] {
        let upstream = Upstream::start(Behavior::default()).await.unwrap();
        let before = Instant::now();
        let request = Request::put(format!("http://{}/items/3?x=1", upstream.addr()))
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::from_static(b"{\"n\":3}")))
            .unwrap();
        send(upstream.addr(), protocol, request).await.unwrap();
        send(upstream.addr(), protocol, get(upstream.addr(), "/second"))
            .await
            .unwrap();

        assert_eq!(upstream.request_count(), 2, "{protocol:?}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{protocol:?}");
        assert_eq!(seen[0].method, hyper::Method::PUT, "{protocol:?}");
        assert_eq!(seen[0].path, "/items/3?x=1", "{protocol:?}");
        assert_eq!(seen[0].version, version, "{protocol:?}");
        assert_eq!(seen[0].headers["x-request-id"], "abc", "{protocol:?}");
        assert_eq!(&seen[0].body[..], b"{\"n\":3}", "{protocol:?}");
        assert!(
            seen[0].at >= before && seen[1].at >= seen[0].at,
            "{protocol:?}"
        );
        assert_eq!(seen[1].path, "/second", "{protocol:?}");
    }
}

#[tokio::test]
async fn behaviour_switches_while_running() {
    let upstream = Upstream::start(Behavior::default()).await.unwrap();
    let first = send(upstream.addr(), Protocol::Http1, get(upstream.addr(), "/"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);

    upstream.set_behavior(Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(
        upstream.behavior(),
        Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR)
    );
    let second = send(upstream.addr(), Protocol::Http1, get(upstream.addr(), "/"))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn wait_for_requests_returns_once_they_arrived() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let addr = upstream.addr();
    let client = tokio::spawn(async move {
        let _ = send(addr, Protocol::H2c, get(addr, "/late")).await;
    });

    timeout(LIVENESS, upstream.wait_for_requests(1))
        .await
        .expect("the request never arrived");
    assert_eq!(upstream.requests()[0].path, "/late");
    client.abort();
}

/// Dropping the upstream ends hanging requests on both protocols, and leaves no task behind:
/// hyper runs each HTTP/2 stream in a task of its own, which must not outlive the upstream.
#[tokio::test]
async fn dropping_ends_everything_it_started() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let addr = upstream.addr();
    let clients: Vec<_> = PROTOCOLS
        .into_iter()
        .map(|protocol| tokio::spawn(send(addr, protocol, get(addr, "/"))))
        .collect();
    timeout(LIVENESS, upstream.wait_for_requests(2))
        .await
        .expect("the requests never arrived");

    drop(upstream);

    for client in clients {
        let answer = timeout(LIVENESS, client)
            .await
            .expect("a request still hangs")
            .unwrap();
        assert!(answer.is_err(), "answered {answer:?}");
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port still listens"
    );
    timeout(LIVENESS, async {
        while metrics.num_alive_tasks() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks still alive", metrics.num_alive_tasks()));
}
