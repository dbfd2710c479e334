//! The upstream in a child process: it answers, dies for real when killed, and comes back.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_test_support::{Behavior, ChildUpstream};
use tokio::net::TcpStream;
use tokio::time::timeout;

const BINARY: &str = env!("CARGO_BIN_EXE_rampart-test-upstream");

/// A guard against a test hanging forever; it bounds nothing the test asserts about timing.
const LIVENESS: Duration = Duration::from_secs(10);

async fn get_http1(addr: SocketAddr) -> hyper::Result<Response<Incoming>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut client, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    client
        .send_request(Request::get("/").body(Full::<Bytes>::default()).unwrap())
        .await
}

async fn get_h2c(addr: SocketAddr) -> hyper::Result<Response<Incoming>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let request = Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    client.send_request(request).await
}

async fn assert_refused(addr: SocketAddr) {
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn answers_then_refuses_once_killed() {
    let mut upstream = ChildUpstream::spawn_with(BINARY, Behavior::ok("from the child")).unwrap();
    let addr = upstream.addr();
    assert!(upstream.is_running());

    let response = get_http1(addr).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"from the child");
    assert_eq!(get_h2c(addr).await.unwrap().status(), StatusCode::OK);

    upstream.kill().unwrap();

    assert!(!upstream.is_running());
    assert_eq!(upstream.id(), None);
    assert_refused(addr).await;
}

#[tokio::test]
async fn spawn_finds_the_binary_beside_the_tests() {
    let path = ChildUpstream::binary_path().unwrap();
    assert!(
        path.ends_with(rampart_test_support::UPSTREAM_BINARY),
        "{}",
        path.display()
    );

    let upstream = ChildUpstream::spawn(Behavior::Fail(StatusCode::BAD_GATEWAY)).unwrap();
    let response = get_http1(upstream.addr()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn killing_cuts_a_response_midway() {
    let mut upstream = ChildUpstream::spawn_with(
        BINARY,
        Behavior::SlowBody {
            chunk: Bytes::from_static(b"x"),
            every: Duration::from_millis(20),
            // Long enough that the body cannot be over before the kill.
            chunks: 10_000,
        },
    )
    .unwrap();
    let response = get_http1(upstream.addr()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    upstream.kill().unwrap();

    let body = timeout(LIVENESS, response.into_body().collect())
        .await
        .expect("the body still flows");
    assert!(body.is_err(), "the body ended cleanly");
}

#[tokio::test]
async fn restart_comes_back_on_the_same_port_with_the_latest_behaviour() {
    let mut upstream = ChildUpstream::spawn_with(BINARY, Behavior::default()).unwrap();
    let addr = upstream.addr();
    // Leave a closed connection in TIME_WAIT on the port, as real traffic would.
    assert_eq!(get_http1(addr).await.unwrap().status(), StatusCode::OK);
    upstream
        .set_behavior(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    assert_eq!(
        get_http1(addr).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    upstream.kill().unwrap();
    assert_refused(addr).await;
    let restarted = upstream.restart().unwrap();

    assert_eq!(restarted, addr);
    assert_eq!(
        get_h2c(addr).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn set_behavior_applies_before_returning() {
    let mut upstream = ChildUpstream::spawn_with(BINARY, Behavior::default()).unwrap();

    upstream.set_behavior(Behavior::Echo).unwrap();

    let response = get_http1(upstream.addr()).await.unwrap();
    assert_eq!(response.headers()["x-echo-method"], "GET");
}

#[tokio::test]
async fn set_behavior_on_a_killed_upstream_fails() {
    let mut upstream = ChildUpstream::spawn_with(BINARY, Behavior::default()).unwrap();
    upstream.kill().unwrap();

    let err = upstream.set_behavior(Behavior::Hang).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::NotConnected);
}

#[tokio::test]
async fn a_body_with_a_line_break_goes_through_spawn_not_set_behavior() {
    let two_lines = Behavior::ok("one\ntwo");
    let mut upstream = ChildUpstream::spawn_with(BINARY, two_lines.clone()).unwrap();
    let response = get_http1(upstream.addr()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"one\ntwo");

    let err = upstream.set_behavior(two_lines).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn dropping_kills_the_process() {
    let upstream = ChildUpstream::spawn_with(BINARY, Behavior::default()).unwrap();
    let addr = upstream.addr();

    drop(upstream);

    assert_refused(addr).await;
}

#[test]
fn a_spawn_that_cannot_bind_fails_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();

    let output = Command::new(BINARY)
        .args(["--addr", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();

    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_bad_behaviour_is_refused_with_usage() {
    let output = Command::new(BINARY)
        .args(["--behavior", "sometimes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`sometimes` is not a behaviour"),
        "{stderr}"
    );
}

/// If the test process dies without dropping its `ChildUpstream`, the child must not live on:
/// it exits when its stdin closes.
#[test]
fn the_process_exits_when_its_stdin_closes() {
    let mut child = Command::new(BINARY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 1];
    stdout.read_exact(&mut first).unwrap();

    drop(child.stdin.take());

    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_grpc_child_answers_calls_and_keeps_its_behaviour() {
    use rampart_test_support::{EchoClient, GrpcBehavior};

    let mut upstream = ChildUpstream::spawn_grpc_with(BINARY, GrpcBehavior::Ok).unwrap();
    let mut client = EchoClient::connect(upstream.addr()).await.unwrap();
    let reply = timeout(LIVENESS, client.say("to the child"))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "to the child");
    assert_eq!(reply.served_by, upstream.addr().to_string());

    let err = upstream.set_behavior(Behavior::Hang).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    upstream.kill().unwrap();
    assert_refused(upstream.addr()).await;
}
