//! The dashboard in a real browser: headless Chromium, driven by `tests/browser/dashboard.mjs`
//! (playwright-core), watches `rampart run` while this test makes its upstream fail and recover,
//! and sees the route's card go OPEN then CLOSED; it forces the breaker open with the admin token
//! and releases it, then sees the page say the connection is lost when rampart is killed and
//! reconnect by itself when it starts again. Last, it opens the fleet view, `rampart dashboard`
//! over that rampart and an address where none answers, and sees one live and one lost.
//!
//! The script and this test go step by step: the script prints `step NAME` once the page shows
//! what the step waits for, and this test then takes the next action (see the script's header).
//! Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard/`.
//!
//! Chromium (`/usr/bin/chromium`), node and `tests/browser/node_modules` are installed by
//! scripts/test; without them this test fails and says so. `RAMPART_SKIP_BROWSER=1` skips it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rampart_test_support::{Behavior, Refusing, TempDir, Upstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use common::*;

/// The browser the script drives; playwright-core never downloads one.
const CHROMIUM: &str = "/usr/bin/chromium";

const TOKEN: &str = "dashboard-test-token";

/// How long one step of the script may take: far beyond what any takes (a breaker opens within a
/// second of failures, the page reconnects within 5 s), so only a page that never gets there
/// fails the test.
const STEP: Duration = Duration::from_secs(120);

/// The requests sent to a route before the traffic stops by itself, whatever the test does.
const MAX_REQUESTS: u32 = 20_000;

/// Route `api` to the switchable upstream `app`, whose lone endpoint's breaker opens at the
/// third failure in a row and half-opens after a second; route `static` to `assets`, which stays
/// healthy beside it; and the async route `orders` to `assets` too, through an outbox under
/// `outbox`.
fn config(admin: &str, app: SocketAddr, assets: SocketAddr, outbox: &Path) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_env = \"RAMPART_TEST_ADMIN_TOKEN\"\n\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [outbox]\npath = \"{}\"\n\n\
         [[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api\" }}\nupstream = \"app\"\n\
         [routes.retry]\nattempts = 1\n\n\
         [[routes]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/orders\" }}\n\
         upstream = \"assets\"\n[routes.async]\nenabled = true\n\n\
         [[routes]]\nname = \"static\"\nmatch = {{ path_prefix = \"/static\" }}\n\
         upstream = \"assets\"\n\n\
         [upstreams.app]\nendpoints = [\"{app}\"]\n\
         [upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"1s\"\n\
         open_for_max = \"1s\"\nhalf_open_probes = 1\n\n\
         [upstreams.assets]\nendpoints = [\"{assets}\"]\n",
        outbox.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_breaker_open_then_closed_forced_and_the_connection_lost() {
    if std::env::var_os("RAMPART_SKIP_BROWSER").is_some_and(|value| value == "1") {
        eprintln!("skipped: RAMPART_SKIP_BROWSER=1");
        return;
    }
    let script_dir = browser_ready();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out).expect("the target directory is writable");
    let outbox = TempDir::new("dashboard-outbox");

    let app = Upstream::start(Behavior::ok("app")).await.unwrap();
    let assets = Upstream::start(Behavior::ok("assets")).await.unwrap();
    // The admin API first on a port of the kernel's choice, then, for the restart below, on
    // the same address again.
    let file = TempConfig::new(
        "dashboard",
        &config("127.0.0.1:0", app.addr(), assets.addr(), outbox.path()),
    );
    let (rampart, proxy, admin) = start(&file.0);
    file.write(&config(&admin, app.addr(), assets.addr(), outbox.path()));
    // One order through the outbox, delivered before the page opens: the outbox panel shows it.
    let accepted = post(&proxy, "/orders/1")
        .await
        .expect("the order is posted");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let traffic = [
        Traffic::start(&proxy, "/api/x"),
        Traffic::start(&proxy, "/static/x"),
    ];

    // The second target refuses connections: the fleet view shows it down beside the live one.
    let down = Refusing::bind().unwrap();
    let mut fleet_view = Rampart::with_args(&[
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &format!("http://{admin}"),
        "--target",
        &format!("http://{}", down.addr()),
    ]);
    let fleet = fleet_view.dashboard_up();

    let mut browser = Browser::start(
        &script_dir,
        &[format!("http://{admin}/"), fleet.clone()],
        &out,
    );
    browser.step("ready").await;
    app.set_behavior(Behavior::Fail(http::StatusCode::INTERNAL_SERVER_ERROR));
    browser.step("open").await;
    app.set_behavior(Behavior::ok("app"));
    browser.step("forced").await;

    // The page must notice a rampart that is gone, without a word from it.
    drop(traffic);
    rampart.signal("KILL");
    let _ = rampart.wait();
    browser.step("lost").await;

    // A new process on the same admin address: the page finds it by itself.
    let _rampart = start(&file.0);
    browser.step("back").await;

    // Every event stream place taken, but as they free up, until the page, opened again, has
    // shown why it has none.
    let hogs = Hogs::start(&admin);
    browser.step("full").await;
    drop(hogs);
    browser.finish().await;
    println!("dashboard screenshots in {}", out.display());
}

/// `tests/browser`, once Chromium, node and playwright-core are there; fails saying how to get
/// them otherwise.
fn browser_ready() -> PathBuf {
    let how = "run scripts/test, which installs chromium, nodejs and npm (apt) and the browser \
               test's packages (npm ci --prefix tests/browser); or set RAMPART_SKIP_BROWSER=1 to \
               skip this test";
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {how}");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|output| output.status.success()),
        "node is missing: {how}"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules/playwright-core: {how}",
        dir.display()
    );
    dir
}

/// `rampart run` with the admin token set, once its admin API is up; and the addresses of its
/// listener and of its admin API.
fn start(config: &Path) -> (Rampart, String, String) {
    let mut rampart =
        Rampart::run_with_vars(&[], config, None, &[("RAMPART_TEST_ADMIN_TOKEN", TOKEN)]);
    let proxy = rampart.listening();
    let admin = rampart.admin_up();
    (rampart, proxy, admin)
}

// === Traffic ===

/// Requests to one path of the proxy, one after the other, until dropped (or `MAX_REQUESTS`).
/// Failed requests are no matter: a refused one is what an open breaker does.
struct Traffic(JoinHandle<()>);

impl Traffic {
    fn start(proxy: &str, path: &str) -> Traffic {
        let (proxy, path) = (proxy.to_owned(), path.to_owned());
        Traffic(tokio::spawn(async move {
            for _ in 0..MAX_REQUESTS {
                let _ = tokio::time::timeout(Duration::from_secs(5), send(&proxy, &path)).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// One `GET path` on a new connection, read to its end.
async fn send(addr: &str, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.read_to_end(&mut Vec::new()).await?;
    Ok(())
}

// One `POST path` with a small body on a new connection: the answer, read to its end.
async fn post(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close\r\n\r\norder"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// Event streams of the admin API at `admin`, opened as long as places are free (one more tried
/// every 50 ms) and read, so that none is cut as stalled; all closed when dropped.
struct Hogs(JoinHandle<()>);

impl Hogs {
    fn start(admin: &str) -> Hogs {
        let admin = admin.to_owned();
        Hogs(tokio::spawn(async move {
            let mut streams = tokio::task::JoinSet::new();
            loop {
                if let Ok(mut stream) = TcpStream::connect(&admin).await {
                    let head =
                        "GET /api/events HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_ok() {
                        // Read until closed: a refused one (503) closes at once, so that the
                        // tries do not use up the admin port's connections; a place taken
                        // holds until the set is dropped.
                        streams.spawn(async move {
                            let mut buf = [0; 4096];
                            while let Ok(1..) = stream.read(&mut buf).await {}
                        });
                    }
                }
                while streams.try_join_next().is_some() {}
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        // The set, and so every stream, goes with the task.
        self.0.abort();
    }
}

// === Browser ===

/// The node script, its stdout read line by line, its stderr kept for a failure's message.
struct Browser {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
    said: Vec<String>,
}

impl Browser {
    fn start(dir: &Path, [admin_url, fleet_url]: &[String; 2], out: &Path) -> Browser {
        let mut child = Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .arg(admin_url)
            .arg(out)
            .arg(fleet_url)
            .env("RAMPART_DASHBOARD_TOKEN", TOKEN)
            .env("CHROMIUM", CHROMIUM)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Browser {
            child,
            lines,
            stderr,
            said: Vec::new(),
        }
    }

    /// Waits for the script to print `step NAME`.
    async fn step(&mut self, name: &str) {
        let wanted = format!("step {name}");
        loop {
            match tokio::time::timeout(STEP, self.lines.next_line()).await {
                Ok(Ok(Some(line))) if line == wanted => return,
                Ok(Ok(Some(line))) => self.said.push(line),
                Ok(_) => {
                    self.fail(&format!("the script ended before {wanted}"))
                        .await
                }
                Err(_) => self.fail(&format!("no {wanted} within {STEP:?}")).await,
            }
        }
    }

    /// Waits for the script to end, and fails unless it succeeded.
    async fn finish(mut self) {
        match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => {
                self.fail(&format!("the script ended with {status:?}"))
                    .await
            }
            Err(_) => self.fail("the script did not end").await,
        }
    }

    async fn fail(&mut self, why: &str) -> ! {
        // A script that failed ends by itself (and prints why); one that hangs is killed.
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        panic!(
            "dashboard browser test: {why}\nstdout:\n{}\nstderr:\n{stderr}",
            self.said.join("\n")
        );
    }
}
