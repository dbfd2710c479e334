//! `rampart run` serves the admin API beside the proxy: its address is logged, the token comes
//! from the variable `token_env` names, `POST /api/reload` reloads the file as SIGHUP does, and
//! the API stops with the drain.

mod common;

use std::net::SocketAddr;

use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const TOKEN: &str = "cli-test-token";

fn config(routes: &[(&str, SocketAddr)]) -> String {
    // The admin API on a port of the kernel's choice: the test reads it from the log.
    let mut text = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"RAMPART_TEST_ADMIN_TOKEN\"\n\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\n",
    );
    for (name, addr) in routes {
        text.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\n\
             upstream = \"{name}\"\n\n[upstreams.{name}]\nendpoints = [\"{addr}\"]\n\n"
        ));
    }
    text
}

/// `POST path` with the bearer `token`, on a new connection: the whole answer.
async fn post(addr: &str, path: &str, token: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reloads_with_the_token_and_stops_with_the_drain() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let file = TempConfig::new("admin", &config(&[("a", a.addr())]));
    let mut rampart =
        Rampart::run_with_vars(&[], &file.0, None, &[("RAMPART_TEST_ADMIN_TOKEN", TOKEN)]);
    let proxy = rampart.listening();
    // The address logged is the one the API answers on.
    let admin = rampart.admin_up();

    assert!(get(&admin, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(&proxy, "/a").await.ends_with("from a"));
    let metrics = get(&admin, "/metrics").await;
    assert!(
        metrics.contains(r#"rampart_requests_total{route="a",outcome="success"} 1"#),
        "{metrics}"
    );

    assert!(
        post(&admin, "/api/reload", "wrong")
            .await
            .starts_with("HTTP/1.1 401")
    );
    file.write(&config(&[("a", a.addr()), ("b", b.addr())]));
    let reloaded = post(&admin, "/api/reload", TOKEN).await;
    assert!(reloaded.starts_with("HTTP/1.1 200"), "{reloaded}");
    assert!(reloaded.contains("routes: added b"), "{reloaded}");
    assert!(get(&proxy, "/b").await.ends_with("from b"));

    rampart.signal("TERM");
    let (status, _) = rampart.wait();
    assert!(status.success());
    assert!(
        TcpStream::connect(&admin).await.is_err(),
        "the admin API still listens"
    );
}

/// A rampart serving the route `a`, whose config file `file` is now a FIFO no one writes (see
/// `TempConfig::block_reads`), with `b` to route to once it is written; `proxy` and `admin` are
/// its addresses.
struct Reading {
    a: Upstream,
    b: Upstream,
    file: TempConfig,
    rampart: Rampart,
    proxy: String,
    admin: String,
}

async fn reading_a_fifo(name: &str) -> Reading {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let file = TempConfig::new(name, &config(&[("a", a.addr())]));
    let mut rampart =
        Rampart::run_with_vars(&[], &file.0, None, &[("RAMPART_TEST_ADMIN_TOKEN", TOKEN)]);
    let proxy = rampart.listening();
    let admin = rampart.admin_up();
    file.block_reads();
    Reading {
        a,
        b,
        file,
        rampart,
        proxy,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_asked_while_a_sighups_reload_is_under_way_is_refused_at_once() {
    let Reading {
        a,
        b,
        file,
        mut rampart,
        proxy,
        admin,
    } = reading_a_fifo("admin-busy").await;
    // SIGHUP's reload reads a FIFO no one writes yet: it blocks, as on a hung network mount.
    rampart.signal("HUP");
    rampart.line("SIGHUP's reload begun", |line| {
        line.contains("SIGHUP: reloading")
    });
    // Refused, not queued behind it to be made later with whatever file is there then.
    let busy = post(&admin, "/api/reload", TOKEN).await;
    assert!(busy.starts_with("HTTP/1.1 409"), "{busy}");
    assert!(busy.contains("another reload is under way"), "{busy}");

    // The read ends: SIGHUP's reload is made, and once it is, the API's may be.
    let fed = tokio::task::spawn_blocking({
        let (path, text) = (file.0.clone(), config(&[("a", a.addr()), ("b", b.addr())]));
        move || std::fs::write(path, text)
    });
    let line = rampart.line("reloaded", |line| line.contains("reloaded"));
    assert!(line.contains("routes: added b"), "{line}");
    fed.await.unwrap().unwrap();
    assert!(get(&proxy, "/b").await.ends_with("from b"));
    std::fs::remove_file(&file.0).unwrap();
    file.write(&config(&[("a", a.addr())]));
    // SIGHUP's reload lets go of its turn just after it logs: a 409 until then says so.
    let mut reloaded = post(&admin, "/api/reload", TOKEN).await;
    for _ in 0..100 {
        if !reloaded.starts_with("HTTP/1.1 409") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reloaded = post(&admin, "/api/reload", TOKEN).await;
    }
    assert!(reloaded.starts_with("HTTP/1.1 200"), "{reloaded}");
    assert!(reloaded.contains("routes: removed b"), "{reloaded}");
    // Two reloads were made, SIGHUP's and the last; the refused one never was.
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.matches("reloaded").count(), 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_file_never_reads_is_refused_in_time_and_the_next_is_made() {
    let Reading {
        a,
        b,
        file,
        mut rampart,
        proxy,
        admin,
    } = reading_a_fifo("admin-hung-read").await;
    // A FIFO no one will ever write: its read hangs for good.
    rampart.signal("HUP");
    let refused = rampart.line("SIGHUP's reload refused", |line| {
        line.contains("reload refused")
    });
    assert!(refused.contains("not read within"), "{refused}");
    assert!(get(&proxy, "/a").await.ends_with("from a"));
    // Refused before it reached the proxy, and counted so: an alert on reloads sees it.
    let metrics = get(&admin, "/metrics").await;
    assert!(
        metrics.contains("rampart_config_reloads_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_config_last_reload_successful 0"),
        "{metrics}"
    );

    // The file put right, the next reloads are made: the hung read holds none of them off.
    std::fs::remove_file(&file.0).unwrap();
    file.write(&config(&[("a", a.addr()), ("b", b.addr())]));
    let reloaded = post(&admin, "/api/reload", TOKEN).await;
    assert!(reloaded.starts_with("HTTP/1.1 200"), "{reloaded}");
    assert!(get(&proxy, "/b").await.ends_with("from b"));
    let metrics = get(&admin, "/metrics").await;
    assert!(
        metrics.contains("rampart_config_last_reload_successful 1"),
        "{metrics}"
    );
    file.write(&config(&[("a", a.addr())]));
    rampart.signal("HUP");
    rampart.line("SIGHUP's reload made", |line| {
        line.contains("reloaded") && line.contains("routes: removed b")
    });
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_taken_stops_the_process_before_it_serves() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let text = config(&[("app", upstream.addr())]).replace(
        "listen = \"127.0.0.1:0\"\ntoken_env",
        &format!("listen = \"{}\"\ntoken_env", taken.local_addr().unwrap()),
    );
    let file = TempConfig::new("admin-taken", &text);
    let rampart = Rampart::run(&[], &file.0);
    let (status, stderr) = rampart.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("admin API cannot listen on"), "{stderr}");
    // Nothing was served meanwhile: no listener opened, no delivery started.
    assert!(!stderr.contains(" listening "), "{stderr}");
}
