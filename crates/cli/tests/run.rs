//! `rampart run` on the real binary: it forwards, and SIGTERM drains it to exit 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A configuration file in the temporary directory, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let path = std::env::temp_dir().join(format!("rampart-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("the temporary directory is writable");
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `rampart run -c file`, stderr piped.
fn rampart_run(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rampart binary runs")
}

/// Reads stderr up to the line announcing the listener, and returns its address.
fn listening_addr(stderr: &mut BufReader<ChildStderr>) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("stderr reads");
        assert!(n > 0, "rampart ended before listening; stderr:\n{seen}");
        if let Some((_, addr)) = line.trim_end().split_once(" listening on ") {
            return addr.to_owned();
        }
        seen.push_str(&line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_forwards_requests_and_exits_0_on_sigterm() {
    let upstream = Upstream::start(Behavior::ok("through")).await.unwrap();
    let config = TempConfig::new(
        "run",
        &format!(
            "[runtime]\nworker_threads = 1\n\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[routes]]\nupstream = \"app\"\n\n\
             [upstreams.app]\nendpoints = [\"{}\"]\n",
            upstream.addr()
        ),
    );
    let mut child = rampart_run(&config.0);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = tokio::task::spawn_blocking(move || {
        let addr = listening_addr(&mut stderr);
        (addr, stderr)
    });
    let (addr, mut stderr) = addr.await.unwrap();

    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("through"), "{answer}");
    assert_eq!(upstream.requests()[0].path, "/hello");

    // `Child::kill` sends SIGKILL; the drain is what SIGTERM is for.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (status, rest) = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("rampart ends");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        (status, rest)
    })
    .await
    .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "stderr after the listener line:\n{rest}"
    );
    assert!(rest.contains("SIGTERM"), "{rest}");
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
}
