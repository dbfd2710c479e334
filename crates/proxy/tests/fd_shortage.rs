//! A proxy out of file descriptors: its answers say `overloaded`, and the endpoint it could not
//! connect to is not blamed. Alone in its test binary, since it lowers the process's limit.

mod common;

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use rampart_test_support::{Behavior, Upstream, open_file_limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// One GET on `client`, a keep-alive connection to the proxy: the head of the answer.
async fn get_on(client: &mut TcpStream) -> String {
    client
        .write_all(b"GET /work HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answers are short and whole once their body (a length-framed one) is in.
    loop {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return text[..end].to_owned();
            }
        }
    }
}

/// Sets this process's soft limit of open files to `soft`, the hard one left as it is.
fn limit_open_files(soft: u64) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

// One test, the protocols one after the other: the limit is the whole process's.
#[tokio::test]
async fn out_of_file_descriptors_the_answer_is_overloaded_and_no_endpoint_is_ejected() {
    for protocol in ["http1", "http2"] {
        out_of_file_descriptors(protocol).await;
    }
}

async fn out_of_file_descriptors(protocol: &str) {
    let upstream = Upstream::start(Behavior::ok("ok")).await.unwrap();
    // Each request needs a new upstream connection: one idle a millisecond is not reused.
    let proxy = simple(
        &[upstream.addr()],
        "",
        &format!(
            "protocol = \"{protocol}\"\nidle_timeout = \"1ms\"\n\
             [upstreams.app.breaker]\nconsecutive_failures = 2"
        ),
    )
    .await;
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    assert!(get_on(&mut client).await.starts_with("HTTP/1.1 200"));

    // Every descriptor taken: the next connect cannot open a socket.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (soft, _) = open_file_limits("self").unwrap();
    limit_open_files(open_files() + 16);
    let mut taken = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => taken.push(file),
            Err(err) if err.raw_os_error() == Some(24) => break,
            Err(err) => panic!("{err}"),
        }
        assert!(taken.len() < 1000, "the limit did not hold");
    }
    for i in 0..4 {
        let head = get_on(&mut client).await;
        assert!(
            head.starts_with("HTTP/1.1 503"),
            "{protocol} request {i}: {head}"
        );
        assert!(head.contains("x-rampart-error: overloaded"), "{head}");
    }
    assert_eq!(upstream.request_count(), 1, "none reached the upstream");

    // A client connecting now (on the one descriptor given back) waits in the kernel's queue:
    // the listener's accept fails, and is counted.
    drop(taken.pop());
    let waiting = TcpStream::connect(addr(&proxy)).await.unwrap();
    let failures = "rampart_listener_accept_failures_total{listener=\"listener-0\"} ";
    for _ in 0..500 {
        if !metrics(&proxy).contains(&format!("{failures}0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = metrics(&proxy);
    assert!(
        text.lines()
            .any(|line| line.starts_with(failures) && !line.ends_with(" 0")),
        "{text}"
    );

    // Descriptors free again: the endpoint takes the next request at once, its breaker closed
    // (four connect failures, two of them in a row, would have opened it).
    drop(taken);
    limit_open_files(soft);
    drop(waiting);
    let head = get_on(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(upstream.request_count(), 2);
    let app = proxy.handle().snapshot().upstreams.remove(0);
    assert_eq!(
        app.endpoints[0].state,
        Some(rampart_policy::breaker::State::Closed)
    );
}
