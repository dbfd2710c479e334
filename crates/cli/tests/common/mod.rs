//! Helpers shared by the tests of the `rampart` binary: a temporary configuration file, the
//! binary as a child process with its log lines read as they come, and a one-shot HTTP client.

#![allow(dead_code, unreachable_pub)] // Each test file uses its own share of these.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a log line before it gives up: far beyond what any step takes, so
/// that only a missing line fails the test.
const PATIENCE: Duration = Duration::from_secs(60);

/// A configuration file in the temporary directory, removed when dropped.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(name: &str, text: &str) -> TempConfig {
        let path = std::env::temp_dir().join(format!("rampart-{name}-{}.toml", std::process::id()));
        let config = TempConfig(path);
        config.write(text);
        config
    }

    /// Replaces the file's content. A text without an `[admin]` section gets one on port 0: the
    /// default port would be shared by every rampart the tests run at once.
    pub fn write(&self, text: &str) {
        let text = if text.contains("[admin]") {
            text.to_owned()
        } else {
            format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
        };
        std::fs::write(&self.0, text).expect("the temporary directory is writable");
    }

    /// Turns the file into a FIFO that no one writes yet: reading it blocks, as on a hung
    /// network mount, until something is written to it.
    pub fn block_reads(&self) {
        std::fs::remove_file(&self.0).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&self.0)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `rampart [GLOBAL ARGS] run -c FILE` (or another subcommand) as a child process, stderr read
/// line by line on a thread of its own. Killed when dropped, if still running.
pub struct Rampart {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Rampart {
    pub fn run(global: &[&str], config: &Path) -> Rampart {
        Rampart::run_with_env(global, config, None)
    }

    /// [`Rampart::run`] with `RUST_LOG` set to `rust_log`; with `None`, `RUST_LOG` is unset,
    /// whatever the tests' own environment says.
    pub fn run_with_env(global: &[&str], config: &Path, rust_log: Option<&str>) -> Rampart {
        Rampart::run_with_vars(global, config, rust_log, &[])
    }

    /// [`Rampart::run_with_env`] with the environment variables `vars` set too.
    pub fn run_with_vars(
        global: &[&str],
        config: &Path,
        rust_log: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Rampart {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        match rust_log {
            Some(value) => command.env("RUST_LOG", value),
            None => command.env_remove("RUST_LOG"),
        };
        command.envs(vars.iter().copied());
        command.args(global).args(["run", "-c"]).arg(config);
        Rampart::spawn(command)
    }

    /// `rampart run -c CONFIG` started by `prlimit --nofile=NOFILE` (`SOFT:HARD`), which
    /// becomes it: its limit of open files set so.
    pub fn run_with_nofile(nofile: &str, config: &Path) -> Rampart {
        let mut command = Command::new("prlimit");
        command
            .env_remove("RUST_LOG")
            .arg(format!("--nofile={nofile}"))
            .arg(env!("CARGO_BIN_EXE_rampart"))
            .args(["run", "-c"])
            .arg(config);
        Rampart::spawn(command)
    }

    /// `rampart ARGS` (any subcommand), `RUST_LOG` unset.
    pub fn with_args(args: &[&str]) -> Rampart {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        command.env_remove("RUST_LOG").args(args);
        Rampart::spawn(command)
    }

    fn spawn(mut command: Command) -> Rampart {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the rampart binary runs");
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Rampart {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stderr up to the first line `wanted` accepts, and returns it. Blocks the thread:
    /// call it from a multi-threaded runtime.
    pub fn line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        tokio::task::block_in_place(|| {
            loop {
                match self.lines.recv_timeout(PATIENCE) {
                    Ok(line) => {
                        self.seen.push(line.clone());
                        if wanted(&line) {
                            return line;
                        }
                    }
                    Err(_) => panic!(
                        "no {what} line on rampart's stderr; it wrote:\n{}",
                        self.seen.join("\n")
                    ),
                }
            }
        })
    }

    /// Waits for the line announcing the first listener (text logs), and returns its address.
    pub fn listening(&mut self) -> String {
        let line = self.line("listening", |line| line.contains(" listening "));
        logged("addr", &line)
    }

    /// Waits for the line announcing `rampart dashboard` (text logs), and returns its URL.
    pub fn dashboard_up(&mut self) -> String {
        let line = self.line("dashboard up", |line| line.contains("dashboard up"));
        logged("url", &line)
    }

    /// Waits for the line announcing the admin API (text logs), and returns its address.
    pub fn admin_up(&mut self) -> String {
        let line = self.line("admin API", |line| line.contains("admin API up"));
        logged("addr", &line)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`HUP`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to end; its exit status and everything it wrote on stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("rampart ends");
        // The reader thread ends at the end of stderr.
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

impl Drop for Rampart {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of field `field` in a text log line.
fn logged(field: &str, line: &str) -> String {
    let (_, value) = line
        .split_once(&format!(" {field}="))
        .unwrap_or_else(|| panic!("the line names the {field}: {line}"));
    value.split_whitespace().next().unwrap().to_owned()
}

/// An address on 127.0.0.1 that was free a moment ago, for a test that must know a listener's
/// address before it starts and cannot read it from the logs. Another socket may take the port
/// meanwhile: such a test tries again when rampart could not listen
/// ([`accepting_unless_exited`]).
pub fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// Waits until `addr` accepts connections (`true`), or until `rampart` has exited (`false`).
pub async fn accepting_unless_exited(addr: SocketAddr, rampart: &mut Rampart) -> bool {
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return true;
            }
            if !rampart.is_running() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("nothing listens on {addr}"))
}

/// Waits until `addr` accepts connections.
pub async fn accepting(addr: SocketAddr) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "nothing listens on {addr}");
}

/// `GET path` on a new connection to `addr`, closed after the answer: the whole answer, head
/// and body.
pub async fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
