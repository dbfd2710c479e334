//! An upstream process SIGKILLed under load: the proxy retries what the dead endpoint dropped onto
//! the live one, then ejects the dead one, and the clients barely notice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use rampart_test_support::{Behavior, ChildUpstream};
use tokio::time::Instant;

use common::*;

const CLIENTS: u64 = 8;
const REQUESTS: u64 = 3000;
/// The kill comes after this many requests were sent.
const KILL_AFTER: u64 = REQUESTS / 3;
/// Past this, the load stops whatever it reached; the figures are checked on what was sent.
const LOAD_FOR: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_endpoints_sigkilled_under_get_load_costs_under_a_thousandth() {
    let binary = ChildUpstream::built_binary_path();
    let mut doomed = ChildUpstream::spawn_with(&binary, Behavior::ok("doomed")).unwrap();
    let survivor = ChildUpstream::spawn_with(&binary, Behavior::ok("survivor")).unwrap();
    // The breaker stays open past the end of the test, so the ejection can be seen afterwards.
    let proxy = Arc::new(
        simple(
            &[doomed.addr(), survivor.addr()],
            "",
            "[upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"\n\
             open_for_max = \"60s\"",
        )
        .await,
    );

    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + LOAD_FOR;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (proxy, tally) = (proxy.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            // One keep-alive client per task: its connections to the proxy are reused.
            let client = http1();
            while Instant::now() < deadline {
                if tally.sent.fetch_add(1, Ordering::AcqRel) >= REQUESTS {
                    tally.sent.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
                let request = request(&proxy, "/").body(Full::default()).unwrap();
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await;
                        status == StatusCode::OK && body.is_ok()
                    }
                    Err(_) => false,
                };
                let counter = if ok { &tally.ok } else { &tally.failed };
                counter.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }

    while tally.sent.load(Ordering::Acquire) < KILL_AFTER && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed_at = tally.sent.load(Ordering::Acquire);
    // Blocks this worker until the process is reaped; the clients run on the others.
    tokio::task::block_in_place(|| doomed.kill()).unwrap();

    for client in clients {
        client.await.unwrap();
    }
    let sent = tally.sent.load(Ordering::Acquire);
    let ok = tally.ok.load(Ordering::Acquire);
    let failed = tally.failed.load(Ordering::Acquire);
    println!("requests {sent}, ok {ok}, failed {failed}, killed after {killed_at} sent");
    assert_eq!(ok + failed, sent);
    assert!(killed_at >= KILL_AFTER, "the load never reached the kill");
    assert!(sent > killed_at, "no request was sent after the kill");
    assert!(
        ok * 1000 >= sent * 999,
        "{ok} of {sent} requests succeeded, under 99.9%"
    );

    // Ejected: the dead endpoint's port answers again, yet its open breaker keeps every request
    // on the survivor.
    tokio::task::block_in_place(|| doomed.restart()).unwrap();
    let client = http1();
    for i in 0..50 {
        let response = send(&client, request(&proxy, "/").body(Full::default()).unwrap()).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} after the restart"
        );
        assert_eq!(response.body(), &Bytes::from_static(b"survivor"));
    }
}
