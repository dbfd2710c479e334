//! The outbox's promise under crashes, for each store: every message answered 202 reaches the
//! upstream, though `rampart run` is SIGKILLed again and again while clients post and the
//! upstream is down part of the time.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_test_support::{Behavior, NatsServer, Refusing, TempDir, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// Messages the clients get accepted in all.
const MESSAGES: usize = 1000;
/// Clients posting at once.
const CLIENTS: usize = 4;
/// SIGKILLs, spread over the posting.
const KILLS: usize = 6;

/// `store` is the `[outbox]` lines naming the store.
fn config(listen: &str, store: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
        [runtime]
        worker_threads = 2

        [[listeners]]
        listen = "{listen}"

        [outbox]
        {store}
        retry = {{ base = "20ms", max = "200ms" }}

        [[routes]]
        name = "orders"
        upstream = "orders"
        timeout = "2s"
        [routes.async]
        enabled = true
        concurrency = 8

        [upstreams.orders]
        endpoints = ["{upstream}"]
        [upstreams.orders.breaker]
        open_for = "100ms"
        open_for_max = "400ms"
        "#,
    )
}

/// Posts one order on a connection of its own: the message id if rampart answered 202, `None`
/// if it did not (it was down, or killed before answering).
async fn post(addr: SocketAddr, n: usize) -> Option<String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let body = format!("{{\"order\": {n}}}");
        let head = format!(
            "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if !answer.starts_with("HTTP/1.1 202") {
            return None;
        }
        answer.lines().find_map(|line| {
            line.strip_prefix("x-rampart-message-id: ")
                .map(|id| id.trim().to_owned())
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// The message ids an upstream has seen.
fn seen_ids(upstream: &Upstream) -> HashSet<String> {
    upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-rampart-message-id"))
        .map(|id| id.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_answered_202_is_delivered_through_repeated_sigkills_embedded() {
    let dir = TempDir::new("outbox-crash");
    crash_run("embedded", &format!("path = \"{}\"", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_answered_202_is_delivered_through_repeated_sigkills_nats() {
    let server = NatsServer::start();
    let store = format!(
        "store = \"nats\"\nnats = {{ url = \"{}\", stream = \"CRASH\" }}",
        server.url()
    );
    crash_run("nats", &store).await;
}

/// Clients post `MESSAGES` orders to a `rampart run` whose outbox is `store`, SIGKILLed `KILLS`
/// times meanwhile, the upstream down until the third kill and again after the fifth; then
/// every id answered 202 must reach the upstream.
async fn crash_run(name: &str, store: &str) {
    // The upstream's port is held, refusing connections, until the upstream first comes up.
    let refusing = Refusing::bind().unwrap();
    let upstream_addr = refusing.addr();
    let mut upstream_port = Some(refusing);
    // The first rampart listens on a port of the kernel's choice; the restarts on the same.
    let file = TempConfig::new(
        &format!("outbox-crash-{name}"),
        &config("127.0.0.1:0", store, upstream_addr),
    );
    let mut rampart = Rampart::run(&[], &file.0);
    let listen: SocketAddr = rampart.listening().parse().unwrap();
    file.write(&config(&listen.to_string(), store, upstream_addr));

    // The upstream is down for the first part of the run.
    let mut upstream: Option<Upstream> = None;
    let mut delivered: HashSet<String> = HashSet::new();

    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (accepted, next) = (accepted.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= MESSAGES {
                        return;
                    }
                    // Posted until accepted: while rampart is down, or was killed mid-answer.
                    loop {
                        if let Some(id) = post(listen, n).await {
                            accepted.lock().unwrap().push(id);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();

    let count = || accepted.lock().unwrap().len();
    let mut kills = 0;
    while kills < KILLS {
        // Kill after each sixth of the messages is accepted.
        let target = (kills + 1) * MESSAGES / (KILLS + 1);
        while count() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(rampart); // SIGKILL
        kills += 1;
        // Up from the third kill on; down again for a while after the fifth.
        match kills {
            3 => {
                drop(upstream_port.take());
                upstream = Some(
                    Upstream::start_on(upstream_addr, Behavior::ok("ok"))
                        .await
                        .unwrap(),
                )
            }
            5 => {
                if let Some(up) = upstream.take() {
                    delivered.extend(seen_ids(&up));
                }
                // Held while the upstream is down, as before its first start.
                upstream_port = Some(Refusing::bind_to(upstream_addr).await.unwrap());
            }
            _ => {}
        }
        rampart = Rampart::run(&[], &file.0);
        rampart.listening();
    }
    for client in clients {
        client.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), MESSAGES);
    assert_eq!(kills, KILLS);

    let upstream = match upstream {
        Some(up) => up,
        None => {
            drop(upstream_port.take());
            Upstream::start_on(upstream_addr, Behavior::ok("ok"))
                .await
                .unwrap()
        }
    };
    let mut missing = Vec::new();
    for _ in 0..1500 {
        let mut all = delivered.clone();
        all.extend(seen_ids(&upstream));
        missing = accepted
            .iter()
            .filter(|id| !all.contains(*id))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached the upstream, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
    drop(rampart);
}
