//! A store whose disk fills up refuses appends, then takes them again once there is room,
//! without a restart, and keeps every message it acknowledged.
//!
//! The process's file size limit (RLIMIT_FSIZE, set with `prlimit`) stands for the full disk:
//! writing or growing the file past it fails with EFBIG, as past the free space it fails with
//! ENOSPC. The test runs in a child process of its own, started with SIGXFSZ ignored (the
//! signal would kill it where the store must meet the write's error) and the limit its own.

mod common;

use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use common::request;
use rampart_outbox::{Embedded, Error, Options, State, Store};
use rampart_test_support::TempDir;

/// Set only in the child's environment.
const CHILD: &str = "RAMPART_OUTBOX_FULL_DISK_CHILD";

#[test]
fn a_store_whose_disk_filled_up_accepts_again_once_there_is_room() {
    // bash's trap sets SIGXFSZ's disposition to ignore, which the exec keeps.
    let child = Command::new("bash")
        .args(["-c", r#"trap '' XFSZ; exec "$0" "$@""#])
        .arg(std::env::current_exe().unwrap())
        .args([
            "child_fills_its_disk",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the child runs");
    assert!(
        child.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}

#[tokio::test]
#[ignore = "the child of a_store_whose_disk_filled_up_accepts_again_once_there_is_room"]
async fn child_fills_its_disk() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = TempDir::new("full-disk");
    let store = Embedded::open(Options::new(dir.path())).await.unwrap();
    let body = vec![b'x'; 256 << 10];
    let mut accepted = Vec::new();
    let file = dir.path().join(rampart_outbox::embedded::FILE_NAME);
    let size = std::fs::metadata(&file).unwrap().len();
    limit_file_size(Some(size));

    // The file cannot grow: appends fit in its free pages for a while, then fail.
    let mut tag = 0;
    let refused = loop {
        assert!(
            tag < 1000,
            "4 MiB of appends never reached the file size limit"
        );
        match store.append("orders", request(tag, &body)).await {
            Ok(id) => accepted.push((id, tag)),
            Err(err) => break err,
        }
        tag += 1;
    };
    assert!(matches!(refused, Error::Backend(_)), "{refused}");
    tag += 1;
    assert!(store.append("orders", request(tag, &body)).await.is_err());

    // Room again: with nothing posted, asking how the store is finds it serving again within a
    // few seconds (the writer opens it again at most once a second, when a job comes)...
    limit_file_size(None);
    let until = Instant::now() + Duration::from_secs(10);
    while let Err(err) = store.summary().await {
        assert!(
            Instant::now() < until,
            "the summary still says the store is out of service: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and it takes appends again, with no restart.
    let until = Instant::now() + Duration::from_secs(10);
    let id = loop {
        tag += 1;
        match store.append("orders", request(tag, &body)).await {
            Ok(id) => break id,
            Err(err) if Instant::now() < until => {
                eprintln!("still refused: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the store still refuses appends with room on disk: {err}"),
        }
    };
    accepted.push((id, tag));

    // Nothing acknowledged was lost, and all of it can be delivered.
    let summary = store.summary().await.unwrap();
    assert_eq!(summary.total.queued, accepted.len() as u64);
    let taken = store
        .take("orders", accepted.len() + 1, Duration::ZERO)
        .await
        .unwrap();
    let ids: Vec<_> = taken.iter().map(|leased| leased.message.id()).collect();
    let expected: Vec<_> = accepted.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, expected);
    for leased in taken {
        assert_eq!(leased.message.request.body.len(), body.len());
        store.delivered(leased.lease).await.unwrap();
        let status = store.get(leased.message.id()).await.unwrap().unwrap();
        assert_eq!(status.state, State::Delivered);
    }
    store.close().await.unwrap();
}

/// Sets how large this process may make a file (its soft limit; the hard one stays).
fn limit_file_size(bytes: Option<u64>) {
    let soft = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--fsize={soft}:"))
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit --fsize={soft}:");
}
