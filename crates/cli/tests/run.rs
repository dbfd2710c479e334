//! `rampart run` on the real binary: it forwards, logs as asked, and SIGTERM drains it to exit 0.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use rampart_test_support::{Behavior, Upstream, open_file_limits};

use common::*;

fn config(upstream: SocketAddr) -> String {
    format!(
        "[runtime]\nworker_threads = 1\n\n\
         [[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"app\"\n\n\
         [upstreams.app]\nendpoints = [\"{upstream}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_forwards_requests_and_exits_0_on_sigterm() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new("run", &config(upstream.addr()));
    let mut rampart = Rampart::run(&[], &config.0);
    let addr = rampart.listening();

    let answer = get(&addr, "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("through"), "{answer}");
    assert_eq!(upstream.requests()[0].path, "/hello");

    // `Child::kill` sends SIGKILL; the drain is what SIGTERM is for.
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("draining signal=\"SIGTERM\""), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_event_fields() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new("json", &config(upstream.addr()));
    let mut rampart = Rampart::run(&["--log-format", "json"], &config.0);

    let line = rampart.line("listening", |line| line.contains("listening"));
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["message"], "listening", "{line}");
    assert_eq!(event["listener"], "listener-0", "{line}");
    assert!(event["timestamp"].is_string(), "{line}");
    let addr: SocketAddr = event["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address: {line}"));

    assert!(get(&addr.to_string(), "/").await.ends_with("through"));
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

/// A configuration listening on an address known beforehand: the test can tell the proxy is up
/// without reading its logs.
fn config_on(listen: SocketAddr, upstream: SocketAddr) -> String {
    config(upstream).replace("127.0.0.1:0", &listen.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_hides_less_severe_events_unless_rust_log_says_otherwise() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    for (flag, rust_log, shown) in [
        ("warn", None, false),
        ("info", Some("error"), false),
        ("error", Some("rampart=info"), true),
    ] {
        // The logs may not say where rampart listens: it is told a port that was free a moment
        // ago, and another should a socket elsewhere take that one first.
        let mut started = None;
        for _ in 0..3 {
            let listen = free_addr();
            let config = TempConfig::new("level", &config_on(listen, upstream.addr()));
            let mut rampart = Rampart::run_with_env(&["--log-level", flag], &config.0, rust_log);
            if accepting_unless_exited(listen, &mut rampart).await {
                started = Some((rampart, config));
                break;
            }
        }
        let (rampart, _config) = started.expect("rampart listens on one of three free ports");
        rampart.signal("TERM");
        let (status, stderr) = rampart.wait();
        assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
        for info in ["listening", "drained"] {
            assert_eq!(
                stderr.contains(info),
                shown,
                "--log-level {flag}, RUST_LOG={rust_log:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn run_with_an_invalid_config_exits_2_with_the_errors() {
    let config = TempConfig::new("invalid", "[[routes]]\nupstream = \"nowhere\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "-c"])
        .arg(&config.0)
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("routes[0].upstream"), "{stderr}");
    assert!(stderr.contains("1 error"), "{stderr}");

    // With JSON logs, the errors are log events like the rest; so is a RUST_LOG directive
    // that cannot be read.
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .env("RUST_LOG", "foo[,info")
        .args(["--log-format", "json", "run", "-c"])
        .arg(&config.0)
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        events.iter().any(|event| event["message"]
            .as_str()
            .is_some_and(|message| message.contains("routes[0].upstream"))),
        "{stderr}"
    );
    assert!(
        events.iter().any(|event| event["message"]
            .as_str()
            .is_some_and(|message| message.contains("RUST_LOG: ignoring `foo[`"))),
        "{stderr}"
    );

    // A RUST_LOG that leaves out rampart's own events would leave nothing said: printed then.
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "-c"])
        .arg(&config.0)
        .env("RUST_LOG", "rampart_proxy=debug")
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("routes[0].upstream"), "{stderr}");
}

#[test]
fn a_thread_count_in_the_environment_that_is_none_is_refused_as_check_refuses_it() {
    // `worker_threads` left out is tokio's default, read from TOKIO_WORKER_THREADS; tokio
    // panicked on a value that is no number, and took any number, past the key's 1024.
    // On port 0, and ended by its closed stdin should it start: a run refused exits at once,
    // one that starts must not hold a fixed port nor run on.
    let config = TempConfig::new(
        "threads-from-env",
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"app\"\n\
         [upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    for threads in ["abc", "0", "", "2000"] {
        for command in [&["check"][..], &["run", "--until-stdin-closes"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
                .args(command)
                .arg("-c")
                .arg(&config.0)
                .env("TOKIO_WORKER_THREADS", threads)
                .output()
                .expect("the rampart binary runs");
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command:?} {threads:?}: {said}"
            );
            assert!(
                said.contains("runtime.worker_threads") && said.contains("TOKIO_WORKER_THREADS"),
                "{command:?} {threads:?}: {said}"
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-c"])
        .arg(&config.0)
        .env("TOKIO_WORKER_THREADS", "2")
        .output()
        .expect("the rampart binary runs");
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_failing_on_every_endpoint_says_the_checks_are_ignored() {
    // One endpoint, failing its checks: health is then ignored (fail open), and the log must
    // not say the endpoint is out of the rotation while traffic still reaches it.
    let failing = Upstream::start(Behavior::Fail(503.try_into().unwrap()))
        .await
        .unwrap();
    let text = config(failing.addr())
        + "\n[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\n\
           unhealthy_after = 1\n";
    let config = TempConfig::new("health-log", &text);
    let mut rampart = Rampart::run(&[], &config.0);
    let line = rampart.line("health", |line| line.contains("health check failed"));
    assert!(line.contains("fail open"), "{line}");
    assert!(!line.contains("out of the rotation"), "{line}");
    // What the check met, for the operator to act on.
    assert!(line.contains("reason=answered 503"), "{line}");
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_says_what_it_met() {
    // Beside a healthy endpoint, one whose port refuses connections: out of the rotation, for
    // a refused connection, not a timeout or a bad status.
    let healthy = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let refusing = rampart_test_support::Refusing::bind().unwrap();
    let text = config(healthy.addr()).replace(
        &format!("\"{}\"]", healthy.addr()),
        &format!("\"{}\", \"{}\"]", healthy.addr(), refusing.addr()),
    ) + "\n[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"50ms\"\n\
           timeout = \"50ms\"\nunhealthy_after = 1\n";
    let config = TempConfig::new("health-reason", &text);
    let mut rampart = Rampart::run(&[], &config.0);
    let line = rampart.line("health", |line| line.contains("health check failed"));
    assert!(line.contains("out of the rotation"), "{line}");
    assert!(
        line.contains("reason=connection failed") && line.contains("refused"),
        "{line}"
    );
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opening_is_logged_as_a_warning_naming_the_endpoint() {
    let failing = Upstream::start(Behavior::Fail(503.try_into().unwrap()))
        .await
        .unwrap();
    let text = config(failing.addr()).replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nretry = { attempts = 1 }\n",
    ) + "\n[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"200ms\"\n\
           half_open_probes = 1\n";
    let config = TempConfig::new("breaker-log", &text);
    let mut rampart = Rampart::run(&["--log-format", "json"], &config.0);
    let line = rampart.line("listening", |line| line.contains("listening"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = event["addr"].as_str().unwrap().to_owned();

    assert!(get(&addr, "/").await.starts_with("HTTP/1.1 503"));
    let line = rampart.line("breaker", |line| line.contains("circuit breaker"));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "WARN", "{line}");
    assert_eq!(event["upstream"], "app", "{line}");
    assert_eq!(event["endpoint"], failing.addr().to_string(), "{line}");
    assert_eq!(event["from"], "closed", "{line}");
    assert_eq!(event["to"], "open", "{line}");
    assert_eq!(event["reason"], "a failure", "{line}");
    // What the failure was, for the operator to know where to look.
    assert_eq!(event["last_failure"], "answered 503", "{line}");
    assert_eq!(event["target"], "rampart_proxy::breaker", "{line}");

    // Its probes, failing, are no news at the default level: down is said once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(get(&addr, "/").await.starts_with("HTTP/1.1 503"));
    // The failed probe doubled the period.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(get(&addr, "/").await.starts_with("HTTP/1.1 503"));
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.matches("circuit breaker").count(), 1, "{stderr}");
    assert_eq!(failing.request_count(), 3, "two probes went: {stderr}");
}

/// `rampart run --until-stdin-closes` on `config`, its stdin held open, and its stderr's lines.
fn until_stdin_closes(
    config: &std::path::Path,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "--until-stdin-closes", "-c"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    (child, std::io::BufRead::lines(stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_stdin_closes_drains_and_exits_0_when_its_parent_lets_go() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new("stdin", &config(upstream.addr()));
    let (mut child, mut lines) = until_stdin_closes(&config.0);
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains(" listening "))
        .expect("a listening line");
    let addr = listening.split_once(" addr=").unwrap().1.trim().to_owned();
    assert!(get(&addr, "/").await.ends_with("through"));

    // Still serving while stdin is open; closing it is the parent letting go.
    drop(child.stdin.take());
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter()
            .any(|line| line.contains("signal=\"stdin closed\"")),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_cuts_the_drain_short() {
    let upstream = Upstream::start(Behavior::Hang).await.unwrap();
    let config = TempConfig::new(
        "second-signal",
        &config(upstream.addr()).replace("[runtime]\n", "[runtime]\ndrain_timeout = \"10m\"\n"),
    );
    let mut rampart = Rampart::run(&[], &config.0);
    let addr = rampart.listening();
    // A request the upstream never answers holds the drain for its whole timeout.
    let held = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/held").await }
    });
    while upstream.request_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    rampart.signal("TERM");
    rampart.line("draining", |line| line.contains("draining"));
    rampart.signal("INT");
    // Bounded, so that a drain not cut fails here rather than waiting out its ten minutes.
    for _ in 0..3000 {
        if !rampart.is_running() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        !rampart.is_running(),
        "still draining after the second signal"
    );
    let (status, stderr) = rampart.wait();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("a second stop signal: the drain is cut short"),
        "{stderr}"
    );
    held.abort();
}

/// Polls until `child` has exited, 30 s at most: a bound, so that a process that never exits
/// fails the test rather than hanging it.
async fn exited(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    for _ in 0..3000 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_process_exits_whatever_its_blocking_threads_wait_for() {
    // With `--until-stdin-closes` a blocking thread reads stdin, which the parent holds open:
    // after SIGTERM's drain the process must end without it (it waited for the read, as it did
    // for a name lookup that the resolver never answered).
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new("stdin-held", &config(upstream.addr()));
    let (mut child, mut lines) = until_stdin_closes(&config.0);
    lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("admin API up"))
        .expect("an admin API line");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = exited(&mut child).await;
    let stdin = child.stdin.take();
    let _ = child.kill();
    drop(stdin);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_while_the_outbox_store_connects_stops_the_start() {
    // A "NATS server" that accepts and never says a word: the start waits on it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nats = silent.local_addr().unwrap();
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new(
        "stop-while-starting",
        &format!(
            "{}\n[outbox]\nstore = \"nats\"\nnats = {{ url = \"nats://{nats}\" }}\n",
            config(upstream.addr())
        ),
    );
    let rampart = Rampart::run(&[], &config.0);
    // Connected: the signal handlers are in place (they come first), the start is under way.
    let (_held, _) = silent.accept().await.unwrap();
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("stopped while starting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_for_max_connections_or_its_shortfall_said() {
    let upstream = Upstream::start(Behavior::ok("ok")).await.unwrap();
    let small = config(upstream.addr()).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nmax_connections = 1000\n",
    );
    let file = TempConfig::new("nofile", &small);

    // A soft limit of 256 under a hard one of 3,000: raised to what 1,000 connections need
    // (two descriptors each, and a reserve), quietly.
    let mut rampart = Rampart::run_with_nofile("256:3000", &file.0);
    rampart.listening();
    assert_eq!(
        open_file_limits(&rampart.pid().to_string()).unwrap(),
        (2_512, 3_000)
    );
    rampart.signal("TERM");
    let (status, stderr) = rampart.wait();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("open-file limit"), "{stderr}");

    // The default 10,000 under a hard limit of 1,024: raised to it, and the shortfall said.
    let file = TempConfig::new("nofile-short", &config(upstream.addr()));
    let mut rampart = Rampart::run_with_nofile("256:1024", &file.0);
    let line = rampart.line("the warning", |line| line.contains("open-file limit"));
    assert!(
        line.contains("limit=1024") && line.contains("wanted=20512"),
        "{line}"
    );
    assert_eq!(
        open_file_limits(&rampart.pid().to_string()).unwrap(),
        (1_024, 1_024)
    );
}
