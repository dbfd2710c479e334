//! An append that returned `Ok` survives the process being killed with SIGKILL at any moment.
//!
//! The test runs its own binary again as a child that appends from many tasks at once and prints
//! each id once its append has returned; the parent kills the child (SIGKILL) in the middle of
//! the stream, many times over on the same store, then opens the store and finds every printed
//! id there, with its request intact.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::request;
use rampart_outbox::{Embedded, MessageId, Options, State, Store};
use rampart_test_support::TempDir;

/// Where the child writes; set only on the child's command line.
const CHILD_DIR: &str = "RAMPART_OUTBOX_CRASH_DIR";
/// Kills, each at a different point of the stream.
const ROUNDS: u64 = 12;
const PRODUCERS: u64 = 16;
const ACK: &str = "ACK ";

#[test]
#[ignore = "the child of every_acknowledged_append_survives_sigkill"]
fn child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(Embedded::open(Options::new(dir)).await.unwrap());
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let tag = p * 1_000_000 + n;
                        let id = store.append("crash", body_of(tag)).await.unwrap();
                        // Printed only once the append returned: a promise the parent checks.
                        println!("{ACK}{id} {tag}");
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
    });
}

/// A 1 KiB body that says which tag it belongs to.
fn body_of(tag: u64) -> rampart_outbox::Request {
    let line = format!("{tag:020}|");
    request(tag, &line.repeat(1024 / line.len() + 1).as_bytes()[..1024])
}

#[test]
fn every_acknowledged_append_survives_sigkill() {
    let dir = TempDir::new("crash");
    let mut acked: Vec<(MessageId, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_appends_until_killed",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the child starts");
        // Kill after a different number of acknowledgements each round.
        let kill_after = 1 + (round * 97) % 400;
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        let mut line = String::new();
        while lines.read_line(&mut line).unwrap() > 0 {
            seen += record_ack(&line, &mut acked);
            line.clear();
            if seen >= kill_after {
                child.kill().unwrap();
                break;
            }
        }
        // What the child printed before it died counts too; a line cut short by the kill does
        // not (it has no newline).
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record_ack(&line, &mut acked);
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed");
        assert!(seen >= kill_after, "round {round}: the child stopped early");
    }
    assert!(acked.len() as u64 >= ROUNDS * 100);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Embedded::open(Options::new(dir.path())).await.unwrap();
        for &(id, _) in &acked {
            let status = store.get(id).await.unwrap();
            assert_eq!(
                status.map(|s| s.state),
                Some(State::Queued),
                "acknowledged {id} is in the store"
            );
        }
        // Every request is intact, not only indexed.
        let mut found = std::collections::HashMap::new();
        loop {
            let batch = store.take("crash", 1000, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for l in batch {
                found.insert(l.message.id(), l.message.request);
            }
        }
        for &(id, tag) in &acked {
            assert_eq!(found.get(&id), Some(&body_of(tag)), "{id}");
        }
        store.close().await.unwrap();
    });
}

/// Records an acknowledgement line; returns 1 if it was one.
fn record_ack(line: &str, acked: &mut Vec<(MessageId, u64)>) -> u64 {
    let Some(rest) = line.strip_prefix(ACK).and_then(|l| l.strip_suffix('\n')) else {
        return 0;
    };
    let (id, tag) = rest.split_once(' ').expect("id and tag");
    acked.push((id.parse().expect("an id"), tag.parse().expect("a tag")));
    1
}
