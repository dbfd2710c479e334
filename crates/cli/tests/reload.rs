//! SIGHUP on the real binary: the file is read again; a valid one is served, an invalid one is
//! refused with its errors logged, and the configuration in force keeps serving.

mod common;

use std::net::SocketAddr;

use rampart_test_support::{Behavior, Upstream};

use common::*;

/// One listener; a route for `/NAME...` to an upstream for each `(NAME, address)`.
fn config(routes: &[(&str, SocketAddr)]) -> String {
    let mut text = String::from("[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n");
    for (name, addr) in routes {
        text.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\n\
             upstream = \"{name}\"\n\n[upstreams.{name}]\nendpoints = [\"{addr}\"]\n\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_a_new_route_serves() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let file = TempConfig::new("reload", &config(&[("a", a.addr())]));
    let mut rampart = Rampart::run(&[], &file.0);
    let addr = rampart.listening();
    assert!(get(&addr, "/b").await.starts_with("HTTP/1.1 404"));

    file.write(&config(&[("a", a.addr()), ("b", b.addr())]));
    rampart.signal("HUP");
    let line = rampart.line("reloaded", |line| line.contains("reloaded"));
    assert!(line.contains("routes: added b"), "{line}");
    assert!(line.contains("upstreams: added b"), "{line}");

    let answer = get(&addr, "/b").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("from b"), "{answer}");
    assert!(get(&addr, "/a").await.ends_with("from a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_on_sighup_is_refused_with_its_errors_and_the_old_routes_keep_serving() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let file = TempConfig::new("reload-invalid", &config(&[("a", a.addr())]));
    let mut rampart = Rampart::run(&[], &file.0);
    let addr = rampart.listening();

    // A new route, and a timeout without a unit on line 16 of the same file.
    let invalid = config(&[("a", a.addr()), ("b", b.addr())])
        .replace("upstream = \"b\"\n", "upstream = \"b\"\ntimeout = \"2\"\n");
    assert_eq!(invalid.lines().nth(15), Some("timeout = \"2\""));
    file.write(&invalid);
    rampart.signal("HUP");
    let error = format!("{}:16:11: routes[1].timeout: ", file.0.display());
    let line = rampart.line("error", |line| line.contains("ERROR"));
    assert!(line.contains(&error), "{line}");
    let line = rampart.line("refusal", |line| line.contains("reload refused"));
    assert!(line.contains("1 error"), "{line}");

    assert!(get(&addr, "/a").await.ends_with("from a"));
    assert!(get(&addr, "/b").await.starts_with("HTTP/1.1 404"));
    assert_eq!(b.request_count(), 0);

    // Fixed, it is taken.
    file.write(&config(&[("a", a.addr()), ("b", b.addr())]));
    rampart.signal("HUP");
    rampart.line("reloaded", |line| line.contains("reloaded"));
    assert!(get(&addr, "/b").await.ends_with("from b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_read_blocks_holds_up_neither_the_traffic_nor_the_signals() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let file = TempConfig::new("reload-fifo", &config(&[("a", a.addr())]));
    let mut rampart = Rampart::run(&[], &file.0);
    let addr = rampart.listening();

    // The file turns into a FIFO that no one writes: reading it blocks, as on a hung network
    // mount.
    std::fs::remove_file(&file.0).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file.0)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    rampart.signal("HUP");
    assert!(get(&addr, "/a").await.ends_with("from a"));

    // A stop signal is still heard, and the drain does not wait for the read.
    rampart.signal("TERM");
    let mut waited = 0;
    while rampart.is_running() && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    if rampart.is_running() {
        // Let the read end, so that the process can be stopped, then fail.
        let _ = std::fs::write(&file.0, config(&[("a", a.addr())]));
        panic!("rampart did not stop within 10 s while a reload's read blocked");
    }
    let (status, _) = rampart.wait();
    assert!(status.success(), "{status}");
}
