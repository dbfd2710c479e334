//! `rampart check` on the real binary: exit codes, summary, and errors on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-c"])
        .arg(file)
        .output()
        .expect("the rampart binary runs")
}

#[test]
fn a_valid_config_exits_0_with_a_summary_of_its_routes() {
    let out = check(&repo("examples/rampart.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid"), "{stdout}");
    for route in ["orders-read", "orders-write", "route-2"] {
        assert!(
            stdout.contains(route),
            "summary lacks route {route}:\n{stdout}"
        );
    }
    assert!(stdout.contains("/orders* -> orders"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.1:9003"),
        "summary lacks the backup:\n{stdout}"
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn an_invalid_config_exits_2_with_every_error_on_stderr() {
    let file = repo("crates/config/tests/invalid/references.toml");
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    let origin = file.display().to_string();
    for (line, key_path) in [
        ("12:12", "routes[0].listener"),
        ("15:1", "routes[1].listener"),
        ("16:8", "routes[1].name"),
        ("17:12", "routes[1].upstream"),
        ("20:11", "routes[1].async.enabled"),
    ] {
        let wanted = format!("{origin}:{line}: {key_path}: ");
        assert!(
            stderr.contains(&wanted),
            "stderr lacks {wanted:?}:\n{stderr}"
        );
    }
    assert!(stderr.contains("5 errors"), "{stderr}");
}

#[test]
fn a_missing_file_exits_2() {
    let out = check(Path::new("/nonexistent/rampart.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rampart.toml"));
}

/// A pipe whose reader is gone before anything is written, as with `| head -0`.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer
}

#[test]
fn a_closed_output_ends_check_with_its_verdict_and_no_panic() {
    // `rampart check | head -1`: the summary goes nowhere; the file is still valid.
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-c"])
        .arg(repo("examples/rampart.toml"))
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("the rampart binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // `rampart check 2>&1 | head -1`: the errors go nowhere; the file is still invalid.
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-c"])
        .arg(repo("crates/config/tests/invalid/references.toml"))
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .output()
        .expect("the rampart binary runs");
    assert_eq!(out.status.code(), Some(2));
}
