//! `rampart demo` on the real binary: a quick run of three scenarios writes a report whose
//! numbers add up and keep the demo's promise, over gRPC as over HTTP, and Ctrl-C stops every
//! process the demo started.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_test_support::TempDir;
use serde_json::Value;

fn number(record: &Value, key: &str) -> f64 {
    record[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {record}"))
}

fn count(record: &Value, key: &str) -> u64 {
    record[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a whole number in {record}"))
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// Runs `rampart demo --quick` with `args`, its report in `out`; it must end well. Its stdout
/// and stderr.
fn quick_demo(args: &[&str], out: &Path) -> (String, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--quick"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "exit {:?}\n{stderr}", run.status);
    (String::from_utf8_lossy(&run.stdout).into_owned(), stderr)
}

/// A scenario's two runs add up, had the same schedule, and the protected one kept the demo's
/// promise of at least 99.5 % success.
fn keeps_the_promise(name: &str, runs: &Value, stderr: &str) {
    let mut requests = Vec::new();
    for wiring in ["naive", "protected"] {
        let record = &runs[wiring];
        let what = format!("{name} {wiring}: {record}");
        let n = count(record, "requests");
        assert!(n > 0, "{what}");
        assert_eq!(
            count(record, "ok") + count(record, "failed") + count(record, "fallback"),
            n,
            "{what}"
        );
        let success = (count(record, "ok") + count(record, "fallback")) as f64 / n as f64;
        assert!(
            (number(record, "success_rate") - success).abs() < 1e-3,
            "{what}"
        );
        let (p50, p99, max) = (
            number(record, "p50_ms"),
            number(record, "p99_ms"),
            number(record, "max_ms"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{what}");
        count(record, "breaker_transitions");
        requests.push(n);
    }
    // The same open-loop schedule for both wirings, whatever the answers.
    assert_eq!(requests[0], requests[1], "{name}");
    let protected = &runs["protected"];
    assert!(
        number(protected, "success_rate") >= 0.995,
        "{name} protected: {protected}\n{stderr}"
    );
    assert_eq!(count(&runs["naive"], "breaker_transitions"), 0, "{name}");
}

#[test]
fn a_quick_demo_writes_a_report_whose_numbers_add_up() {
    let out = TempDir::new("demo-report");
    let (table, stderr) = quick_demo(
        &[
            "--scenario",
            "crash",
            "--scenario",
            "flaky",
            "--scenario",
            "async",
        ],
        out.path(),
    );
    // The summary table is on stdout.
    assert!(
        table.contains("crash") && table.contains("protected"),
        "{table}"
    );

    let results: Value = serde_json::from_str(&read(out.path(), "results.json")).unwrap();
    let scenarios = results["scenarios"]
        .as_object()
        .expect("a `scenarios` object");
    let mut names: Vec<&str> = scenarios.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["async", "crash", "flaky"]);
    for (name, runs) in scenarios {
        keeps_the_promise(name, runs, &stderr);
    }
    // Naive fails while C is down; protected answers, and a breaker opened to do it.
    let crash = &results["scenarios"]["crash"];
    assert!(number(&crash["naive"], "success_rate") < 0.9, "{crash}");
    assert!(
        count(&crash["protected"], "breaker_transitions") >= 1,
        "{crash}"
    );

    // Every order the protected setup accepted reached C, though C was down for a while; the
    // naive one refused orders meanwhile.
    let orders = &results["scenarios"]["async"];
    let protected = &orders["protected"];
    assert!(count(protected, "accepted") > 0, "{orders}");
    assert_eq!(count(protected, "lost"), 0, "{orders}");
    assert_eq!(
        count(protected, "delivered"),
        count(protected, "accepted"),
        "{orders}"
    );
    // At least once: a second delivery is possible for an order C took as it was killed, so at
    // most as many as the async route delivers at once (4), and counted.
    assert!(count(protected, "duplicates") <= 4, "{orders}");
    let naive = &orders["naive"];
    assert!(number(naive, "success_rate") < 0.9, "{orders}");
    assert_eq!(count(naive, "lost"), 0, "{orders}");
    assert!(stderr.contains("protected lost 0 of"), "{stderr}");

    let timeline: Value = serde_json::from_str(&read(out.path(), "timeline.json")).unwrap();
    let window = &timeline["scenarios"]["crash"]["protected"]["fault_window_s"];
    let (start, end) = (window[0].as_f64(), window[1].as_f64());
    assert!(start.is_some() && start < end, "{window}");

    let index = read(out.path(), "index.html");
    for name in ["async", "crash", "flaky"] {
        for chart in [format!("{name}-success.svg"), format!("{name}-latency.svg")] {
            assert!(
                index.contains(&format!("src=\"{chart}\"")),
                "index.html does not show {chart}"
            );
            let svg = read(out.path(), &chart);
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{chart}");
        }
    }
    assert!(index.contains("href=\"results.json\""));
}

#[test]
fn over_grpc_a_flaky_service_is_stood_in_for_as_over_http() {
    // C's failures come back as a failing `grpc-status` in an HTTP 200; once B's retries are
    // out of budget, A's fallback must still answer for them as it does for a 5xx.
    let out = TempDir::new("demo-grpc");
    let (_, stderr) = quick_demo(&["--protocol", "grpc", "--scenario", "flaky"], out.path());
    let results: Value = serde_json::from_str(&read(out.path(), "results.json")).unwrap();
    let flaky = &results["scenarios"]["flaky"];
    keeps_the_promise("flaky", flaky, &stderr);
    let naive = &flaky["naive"];
    assert!(number(naive, "success_rate") < 0.9, "{flaky}");
}

#[test]
fn a_closed_stdout_loses_the_table_and_nothing_else() {
    // `rampart demo | head -0`: the reader of the table is gone before it is written.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = TempDir::new("demo-closed-stdout");
    let run = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--quick", "--scenario", "crash", "--out"])
        .arg(out.path())
        .stdout(writer)
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    // What comes after the table still comes.
    assert!(stderr.contains("report: "), "{stderr}");
    assert!(out.path().join("results.json").exists());
}

#[test]
fn the_async_scenario_over_grpc_is_refused_with_the_reason() {
    let run = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--protocol", "grpc", "--scenario", "async", "--out"])
        .arg(std::env::temp_dir().join("rampart-demo-never-written"))
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("202 Accepted"), "{stderr}");
}

#[test]
fn a_closed_stderr_changes_no_verdict() {
    // `rampart demo 2>&1 | head -0`: what the demo says has no reader; its exit code still
    // tells why it stopped, not a panic's 101.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let run = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--protocol", "grpc", "--scenario", "async", "--out"])
        .arg(std::env::temp_dir().join("rampart-demo-never-written"))
        .stderr(writer)
        .output()
        .expect("the rampart binary runs");
    assert_eq!(run.status.code(), Some(2));
}

/// The processes whose parent is `pid`, from /proc.
#[cfg(target_os = "linux")]
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `PID (COMM) STATE PPID ...`; COMM may hold spaces, so read after its last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_stops_every_process_the_demo_started() {
    stopped_by("INT", 130, "interrupted");
}

#[cfg(target_os = "linux")]
#[test]
fn sigterm_stops_every_process_the_demo_started() {
    stopped_by("TERM", 143, "terminated");
}

/// Sends `signal` to a demo once its naive setup runs, and checks that it exits with `code`,
/// saying `said`, with every process it started stopped and its files removed.
#[cfg(target_os = "linux")]
fn stopped_by(signal: &str, code: i32, said: &str) {
    let out = TempDir::new(&format!("demo-{said}"));
    let mut demo = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--quick", "--scenario", "crash", "--out"])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rampart binary runs");
    let pid = demo.id();
    let stderr = BufReader::new(demo.stderr.take().unwrap());
    let reader =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());

    // The naive setup is four services: C, D, B and A.
    let mut started = Vec::new();
    for _ in 0..600 {
        started = children(pid);
        if started.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.len() >= 4, "the demo started {started:?}");
    let configs = std::env::temp_dir().join(format!("rampart-demo-{pid}"));
    assert!(configs.exists(), "{}", configs.display());

    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = demo.wait().unwrap();
    let lines = reader.join().unwrap().join("\n");
    assert_eq!(status.code(), Some(code), "{lines}");
    assert!(lines.contains(said), "{lines}");
    // SIGKILL is sent as the handles drop; the kernel takes a moment to finish them off.
    for _ in 0..100 {
        if !started.iter().any(|&child| alive(child)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = started.into_iter().filter(|&child| alive(child)).collect();
    assert!(
        left.is_empty(),
        "still running after the demo ended: {left:?}"
    );
    assert!(!configs.exists(), "{} is left behind", configs.display());
    assert!(
        !out.path().join("results.json").exists(),
        "an interrupted demo writes no report"
    );
}

/// Whether process `pid` runs `rampart run` (a sidecar).
#[cfg(target_os = "linux")]
fn is_sidecar(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == b"run"))
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_demo_leaves_no_process_behind() {
    let out = TempDir::new("demo-killed");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--quick", "--scenario", "crash", "--out"])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the rampart binary runs");
    let pid = demo.id();

    // Until the protected setup runs: its two sidecars among the children.
    let mut started = Vec::new();
    for _ in 0..1200 {
        started = children(pid);
        if started.iter().filter(|&&child| is_sidecar(child)).count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sidecars = started.iter().filter(|&&child| is_sidecar(child)).count();
    assert!(sidecars >= 2, "the demo started {started:?}");

    // No destructor runs: each child must notice by itself that the demo is gone.
    demo.kill().unwrap();
    demo.wait().unwrap();
    let mut left = started.clone();
    for _ in 0..200 {
        left.retain(|&child| alive(child));
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        left.is_empty(),
        "still running 10 s after the demo was killed: {left:?} of {started:?}"
    );
    // Its temporary directory is left behind (nothing runs to remove it); it is the demo's own.
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("rampart-demo-{pid}")));
}
