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

    // The file turns into a FIFO that no one writes: reading it blocks.
    file.block_reads();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_an_async_route_says_how_many_of_its_messages_wait() {
    let down = rampart_test_support::Refusing::bind().unwrap();
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let store = rampart_test_support::TempDir::new("reload-outbox");
    let plain = config(&[("a", a.addr())]);
    // Orders go to an endpoint that refuses: they stay queued, retried a minute apart.
    let with_orders = format!(
        "{plain}[outbox]\npath = \"{}\"\nretry = {{ base = \"60s\", max = \"60s\" }}\n\n\
         [[routes]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/orders\" }}\n\
         upstream = \"orders\"\n[routes.async]\nenabled = true\n\n\
         [upstreams.orders]\nendpoints = [\"{}\"]\n",
        store.path().display(),
        down.addr(),
    );
    let file = TempConfig::new("reload-outbox", &with_orders);
    let mut rampart = Rampart::run(&["--log-format", "json"], &file.0);
    let line = rampart.line("listening", |line| line.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = event["addr"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let answer = post_empty(&addr, "/orders").await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    }

    // The route goes; its two messages stay in the store, and the log says so.
    let without = with_orders.replace("[routes.async]\nenabled = true\n", "");
    let without = without.replace(
        "[[routes]]\nname = \"orders\"\nmatch = { path_prefix = \"/orders\" }\nupstream = \"orders\"\n",
        "",
    );
    assert!(!without.contains("name = \"orders\""), "{without}");
    file.write(&without);
    rampart.signal("HUP");
    let line = rampart.line("waiting messages", |line| line.contains("not async now"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "WARN", "{line}");
    assert_eq!(event["route"], "orders", "{line}");
    assert_eq!(event["waiting"], 2, "{line}");
}

/// The answer to a POST of `path` with an empty body, on a connection of its own.
async fn post_empty(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits until a thread of process `pid` is blocked opening a FIFO, waiting for a writer (the
/// kernel's `wait_for_partner`).
async fn until_opening(pid: u32) {
    for _ in 0..1000 {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let opening = tasks.flatten().any(|task| {
            std::fs::read_to_string(task.path().join("wchan"))
                .is_ok_and(|wchan| wchan.trim() == "wait_for_partner")
        });
        if opening {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("rampart never began to read its file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_file_is_first_read_is_no_kill_and_is_made_once_started() {
    use std::io::Write;

    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let file = TempConfig::new("reload-early", &config(&[("a", a.addr())]));
    // The first read waits: the file is a FIFO nobody writes yet, as a long read would take.
    file.block_reads();
    let mut rampart = Rampart::run(&[], &file.0);
    until_opening(rampart.pid()).await;
    rampart.signal("HUP");

    // The FIFO gives the first configuration; the path then holds a second one, which the
    // reload asked meanwhile reads.
    let next = file.0.with_extension("next");
    std::fs::write(&next, config(&[("a", a.addr()), ("b", b.addr())])).unwrap();
    // Opening the FIFO waits for its reader: on a thread, so that a process the signal ended
    // fails the test instead of hanging it.
    let (opened, open) = std::sync::mpsc::channel();
    let path = file.0.clone();
    std::thread::spawn(move || {
        let _ = opened.send(std::fs::OpenOptions::new().write(true).open(path));
    });
    let mut fifo = open
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("rampart reads its file: the SIGHUP did not end it")
        .unwrap();
    std::fs::rename(&next, &file.0).unwrap();
    fifo.write_all(config(&[("a", a.addr())]).as_bytes())
        .unwrap();
    drop(fifo);

    let addr = rampart.listening();
    rampart.line("reloaded", |line| line.contains("reloaded"));
    assert!(get(&addr, "/b").await.ends_with("from b"));
    assert!(get(&addr, "/a").await.ends_with("from a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_a_reload_adds_that_fails_its_checks_is_said_to_stay_out() {
    // Held out until its first check passes, it changes no state by failing: the log still
    // tells the operator who added it why it takes no traffic.
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let refusing = rampart_test_support::Refusing::bind().unwrap();
    let health = "\n[upstreams.a.health]\npath = \"/\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\n\
                  unhealthy_after = 1\n";
    let file = TempConfig::new("reload-added", &(config(&[("a", a.addr())]) + health));
    let mut rampart = Rampart::run(&[], &file.0);
    rampart.listening();

    let both = format!("\"{}\", \"{}\"]", a.addr(), refusing.addr());
    file.write(
        &(config(&[("a", a.addr())]).replace(&format!("\"{}\"]", a.addr()), &both) + health),
    );
    rampart.signal("HUP");
    rampart.line("reloaded", |line| line.contains("reloaded"));
    let line = rampart.line("health", |line| line.contains("health check failed"));
    assert!(line.contains("added by a reload"), "{line}");
    assert!(line.contains(&refusing.addr().to_string()), "{line}");
    assert!(line.contains("reason=connection failed"), "{line}");
}
