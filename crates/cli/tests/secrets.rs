//! Secrets never leave rampart: the admin token, the credentials in a NATS URL, and what clients
//! send in `Authorization` and `Cookie` headers appear in no log line and in no answer of the
//! admin API, whatever happens to the requests that carry them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use rampart_test_support::{Behavior, Refusing, TempDir, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const TOKEN: &str = "admin-token-5ecret";
const BEARER: &str = "client-bearer-5ecret";
const COOKIE: &str = "session-5ecret";
/// Every secret above has this in it: one search finds any of them.
const MARK: &str = "5ecret";

/// One exchange on a connection of its own, closed after the answer: the whole answer.
async fn exchange(addr: &str, head: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("rampart answers")
}

/// A request through the proxy carrying the client's secrets.
async fn with_secrets(addr: &str, method: &str, path: &str) -> String {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer {BEARER}\r\n\
         Cookie: id={COOKIE}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    exchange(addr, &head).await
}

/// The body of an admin answer read for at most `for_at_most` (event streams never end).
async fn admin_get(admin: SocketAddr, path: &str, for_at_most: Duration) -> String {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(for_at_most, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_an_admin_answer() {
    let up = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let refusing = Refusing::bind().unwrap();
    let dead = refusing.addr();
    let outbox = TempDir::new("secrets");
    let file = TempConfig::new(
        "secrets",
        &format!(
            r#"
            [admin]
            listen = "127.0.0.1:0"
            token_env = "RAMPART_TEST_SECRET_TOKEN"

            [[listeners]]
            listen = "127.0.0.1:0"

            [outbox]
            path = "{outbox}"

            [[routes]]
            name = "ok"
            match = {{ path_prefix = "/ok" }}
            upstream = "up"

            [[routes]]
            name = "failing"
            match = {{ path_prefix = "/failing" }}
            upstream = "failing"

            [[routes]]
            name = "dead"
            match = {{ path_prefix = "/dead" }}
            upstream = "dead"
            timeout = "1s"

            [[routes]]
            name = "later"
            match = {{ path_prefix = "/later" }}
            upstream = "up"
            [routes.async]
            enabled = true

            [upstreams.up]
            endpoints = ["{up}"]
            [upstreams.failing]
            endpoints = ["{failing}"]
            [upstreams.dead]
            endpoints = ["{dead}"]
            "#,
            up = up.addr(),
            failing = failing.addr(),
            outbox = outbox.path().display(),
        ),
    );
    // The most verbose level: what an operator chasing a problem would turn on.
    let mut rampart = Rampart::run_with_vars(
        &["--log-level", "trace"],
        &file.0,
        None,
        &[("RAMPART_TEST_SECRET_TOKEN", TOKEN)],
    );
    let proxy = rampart.listening();
    let admin: SocketAddr = rampart.admin_up().parse().unwrap();

    // Requests answered, failed by the upstream, failed to connect, and stored for later.
    assert!(
        with_secrets(&proxy, "GET", "/ok")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        with_secrets(&proxy, "GET", "/failing")
            .await
            .starts_with("HTTP/1.1 503")
    );
    assert!(
        with_secrets(&proxy, "GET", "/dead")
            .await
            .starts_with("HTTP/1.1 502")
    );
    let accepted = with_secrets(&proxy, "POST", "/later/order").await;
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let id = accepted
        .lines()
        .find_map(|line| line.strip_prefix("x-rampart-message-id: "))
        .expect("a 202 names its message")
        .to_owned();
    // The stored request reached the upstream with its headers: forwarding them is the job.
    let delivered = tokio::time::timeout(Duration::from_secs(30), async {
        while !up.requests().iter().any(|r| r.path == "/later/order") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(delivered.is_ok(), "the stored request is delivered");

    // Every answer of the admin API, mutating calls with the token included.
    let short = Duration::from_secs(2);
    let mut answers = String::new();
    for path in [
        "/metrics",
        "/api/stats",
        "/api/outbox",
        &format!("/api/outbox/{id}"),
        "/",
    ] {
        let answer = admin_get(admin, path, short).await;
        // Looked at for what it holds: an error or an empty answer would hide nothing.
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.len() > 200, "{path}: {answer}");
        answers.push_str(&answer);
    }
    for path in ["/api/events", "/hystrix.stream"] {
        let answer = admin_get(admin, path, short).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            answer.contains("\ndata: "),
            "{path}: no event within {short:?}: {answer}"
        );
        answers.push_str(&answer);
    }
    let addr = admin.to_string();
    for (path, body) in [
        ("/api/reload", ""),
        ("/api/breakers/up/*", r#"{"state": "open"}"#),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(&addr, &head).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        answers.push_str(&answer);
    }
    // A wrong token is refused, and its refusal does not echo the right one.
    let wrong = exchange(
        &addr,
        "POST /api/reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    answers.push_str(&wrong);

    rampart.signal("TERM");
    let (status, logs) = rampart.wait();
    assert!(status.success(), "{logs}");

    assert!(logs.lines().count() > 20, "trace logging is on: {logs}");
    for (what, text) in [("the logs", &logs), ("the admin API", &answers)] {
        let leaks: Vec<&str> = text.lines().filter(|line| line.contains(MARK)).collect();
        assert!(
            leaks.is_empty(),
            "{what} show a secret:\n{}",
            leaks.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_url_is_logged_without_its_credentials() {
    // Nothing listens there: the start fails, and says where it tried.
    let refusing = Refusing::bind().unwrap();
    let nats = refusing.addr();
    let file = TempConfig::new(
        "secrets-nats",
        &format!(
            r#"
            [[listeners]]
            listen = "127.0.0.1:0"

            [outbox]
            store = "nats"
            nats = {{ url = "nats://alice:{MARK}@{nats}" }}

            [[routes]]
            upstream = "up"
            [routes.async]
            enabled = true

            [upstreams.up]
            endpoints = ["127.0.0.1:9"]
            "#
        ),
    );
    let rampart = Rampart::run(&["--log-level", "trace"], &file.0);
    let (status, logs) = rampart.wait();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains(&format!("nats://***@{nats}")), "{logs}");
    let leaks: Vec<&str> = logs.lines().filter(|line| line.contains(MARK)).collect();
    assert!(
        leaks.is_empty(),
        "the logs show a secret:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn a_dashboard_target_with_a_password_is_refused_without_showing_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args([
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &format!("http://alice:{MARK}@127.0.0.1:9901"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a user or password"), "{stderr}");
    assert!(stderr.contains("Usage:"), "{stderr}");
    assert!(
        !stderr.contains(MARK),
        "the error shows the password: {stderr}"
    );
}
