//! The scriptable upstream in a separate OS process, for crash tests.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::{Behavior, GrpcBehavior};

/// The name of the binary [`ChildUpstream`] runs.
pub const UPSTREAM_BINARY: &str = "rampart-test-upstream";

/// An HTTP/1.1 and h2c upstream, or a gRPC one, in a child process: killed for real by
/// [`kill`](Self::kill), killed on drop.
///
/// An in-process [`Upstream`](crate::Upstream) can only be dropped, which closes its sockets
/// politely. This runs the same server as the `rampart-test-upstream` binary of this crate, so a test can SIGKILL it and see what a proxy sees when an upstream really dies: the
/// kernel closes its sockets, open connections break, and the port refuses connections.
///
/// # Finding the binary
///
/// Cargo builds a package's binaries before that package's own integration tests, but not for
/// other packages that only depend on it. [`ChildUpstream::spawn`] looks for the binary next to
/// the running test executable (`target/<profile>/`, the parent of `deps/`), so a test of
/// another crate needs it built first:
///
/// ```text
/// cargo build -p rampart-test-support --bin rampart-test-upstream
/// ```
///
/// Or pass the path with [`ChildUpstream::spawn_with`]; this crate's own tests pass
/// `env!("CARGO_BIN_EXE_rampart-test-upstream")`.
///
/// Its methods block the calling thread briefly (starting the process and reading its first
/// line), which is harmless in a test, even on an async runtime's thread.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// use rampart_test_support::{Behavior, ChildUpstream};
///
/// let mut upstream = ChildUpstream::spawn(Behavior::default())?;
/// let addr = upstream.addr();
/// // ... requests to `addr` are answered ...
/// upstream.kill()?;
/// // ... connections to `addr` are refused ...
/// upstream.restart()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ChildUpstream {
    binary: PathBuf,
    addr: SocketAddr,
    behavior: Serving,
    /// `None` once killed.
    running: Option<Running>,
}

/// What the child serves: the [`Upstream`](crate::Upstream)'s behaviours or the
/// [`GrpcUpstream`](crate::GrpcUpstream)'s.
#[derive(Debug, Clone)]
enum Serving {
    Http(Behavior),
    Grpc(GrpcBehavior),
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

// === impl ChildUpstream ===

impl ChildUpstream {
    /// Starts the upstream on a free port of 127.0.0.1, running the binary found by
    /// [`binary_path`](Self::binary_path).
    pub fn spawn(behavior: Behavior) -> io::Result<ChildUpstream> {
        ChildUpstream::spawn_with(ChildUpstream::binary_path()?, behavior)
    }

    /// Starts the upstream on a free port of 127.0.0.1, running `binary`.
    pub fn spawn_with(binary: impl Into<PathBuf>, behavior: Behavior) -> io::Result<ChildUpstream> {
        ChildUpstream::serving(binary.into(), Serving::Http(behavior))
    }

    /// Starts a gRPC upstream (a [`GrpcUpstream`](crate::GrpcUpstream)) on a free port of
    /// 127.0.0.1, running `binary`. Its behaviour is set for good:
    /// [`set_behavior`](Self::set_behavior) refuses to change it.
    pub fn spawn_grpc_with(
        binary: impl Into<PathBuf>,
        behavior: GrpcBehavior,
    ) -> io::Result<ChildUpstream> {
        ChildUpstream::serving(binary.into(), Serving::Grpc(behavior))
    }

    fn serving(binary: PathBuf, behavior: Serving) -> io::Result<ChildUpstream> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (running, addr) = Running::start(&binary, &behavior, any_port)?;
        Ok(ChildUpstream {
            binary,
            addr,
            behavior,
            running: Some(running),
        })
    }

    /// Where [`spawn`](Self::spawn) looks for the binary: beside the running executable, or one
    /// folder up (a test executable lives in `target/<profile>/deps/`, binaries in
    /// `target/<profile>/`).
    ///
    /// # Errors
    ///
    /// `NotFound`, saying how to build it, when it is in neither place.
    pub fn binary_path() -> io::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let name = format!("{UPSTREAM_BINARY}{}", std::env::consts::EXE_SUFFIX);
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{name} is not beside {} nor one folder up; build it with \
                         `cargo build -p rampart-test-support --bin {UPSTREAM_BINARY}` \
                         or pass its path to ChildUpstream::spawn_with",
                        exe.display()
                    ),
                )
            })
    }

    /// [`binary_path`](Self::binary_path), after building the binary when it is in neither
    /// place: cargo builds a package's binaries only for that package's own tests, so a test of
    /// another package may find none. A binary already there is used as it is.
    ///
    /// # Panics
    ///
    /// When cargo cannot build it.
    pub fn built_binary_path() -> PathBuf {
        if let Ok(path) = ChildUpstream::binary_path() {
            return path;
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "rampart-test-support",
                "--bin",
                UPSTREAM_BINARY,
            ])
            .current_dir(workspace)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {UPSTREAM_BINARY} failed");
        ChildUpstream::binary_path().expect("the upstream binary was just built")
    }

    /// The address the upstream listens on (or listened on, once killed).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.running.as_ref().map(|running| running.child.id())
    }

    /// Whether the process is running: not killed, and not exited on its own.
    pub fn is_running(&mut self) -> bool {
        self.running
            .as_mut()
            .is_some_and(|running| matches!(running.child.try_wait(), Ok(None)))
    }

    /// Switches the behaviour of the running upstream, and of the one [`restart`](Self::restart)
    /// starts. Returns once the upstream has applied it.
    ///
    /// # Errors
    ///
    /// When the process is not running or does not acknowledge the change; `InvalidInput` for
    /// a body with a line break, which the one-line protocol to the process cannot carry (give
    /// such a body to [`spawn`](Self::spawn) instead, as an argument), and for a gRPC upstream.
    pub fn set_behavior(&mut self, behavior: Behavior) -> io::Result<()> {
        if matches!(self.behavior, Serving::Grpc(_)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a gRPC child keeps the behaviour it was spawned with",
            ));
        }
        let line = behavior.to_string();
        if line.contains(['\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a behaviour sent to a running child must fit on one line",
            ));
        }
        let running = self.running.as_mut().ok_or_else(not_running)?;
        writeln!(running.stdin, "{line}")?;
        running.stdin.flush()?;
        let reply = running.read_line()?;
        if reply != "ok" {
            return Err(io::Error::other(format!("the upstream answered `{reply}`")));
        }
        self.behavior = Serving::Http(behavior);
        Ok(())
    }

    /// Kills the process with SIGKILL and waits until it is gone: its port refuses connections
    /// and its open connections are closed by the kernel. Killing a killed upstream does
    /// nothing.
    pub fn kill(&mut self) -> io::Result<()> {
        match self.running.take() {
            Some(running) => running.kill(),
            None => Ok(()),
        }
    }

    /// Kills the process if it runs, then starts a new one with the latest behaviour, on the
    /// same port if it can be had again, else on a new free port. Returns the address, which
    /// [`addr`](Self::addr) then also gives.
    ///
    /// The port is free once the old process is gone, and the server sets `SO_REUSEADDR`, so
    /// its connections left in `TIME_WAIT` do not hold it; only another socket that took the
    /// port in the meantime moves the upstream to a new one.
    pub fn restart(&mut self) -> io::Result<SocketAddr> {
        self.kill()?;
        let (running, addr) = match Running::start(&self.binary, &self.behavior, self.addr) {
            Ok(started) => started,
            Err(_) => {
                let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
                Running::start(&self.binary, &self.behavior, any_port)?
            }
        };
        self.running = Some(running);
        self.addr = addr;
        Ok(addr)
    }
}

impl Drop for ChildUpstream {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn not_running() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the upstream process is not running",
    )
}

// === impl Running ===

impl Running {
    fn start(
        binary: &Path,
        behavior: &Serving,
        addr: SocketAddr,
    ) -> io::Result<(Running, SocketAddr)> {
        let mut command = Command::new(binary);
        match behavior {
            Serving::Http(behavior) => command.arg("--behavior").arg(behavior.to_string()),
            Serving::Grpc(behavior) => command.arg("--grpc").arg(behavior.to_string()),
        };
        let mut child = command
            .arg("--addr")
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", binary.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("stdin and stdout are piped");
        };
        let mut running = Running {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = match running.read_line() {
            Ok(line) => line,
            Err(err) => {
                // Why it failed is on stderr, which the test shows.
                let _ = running.kill();
                return Err(err);
            }
        };
        match line.parse() {
            Ok(addr) => Ok((running, addr)),
            Err(_) => {
                let _ = running.kill();
                Err(io::Error::other(format!(
                    "the upstream announced `{line}` instead of its address"
                )))
            }
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream process exited",
            ));
        }
        Ok(line.trim_end().to_owned())
    }

    fn kill(mut self) -> io::Result<()> {
        // `Child::kill` sends SIGKILL on Unix; waiting reaps the process, so once this returns
        // its sockets are closed.
        match self.child.kill() {
            Ok(()) => {}
            // It had already exited: there is nothing to kill, only to reap.
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => {}
            Err(err) => return Err(err),
        }
        self.child.wait().map(drop)
    }
}

/// The soft and hard limits of open files of process `pid` (`"self"` for this one), from
/// `/proc/PID/limits`.
pub fn open_file_limits(pid: &str) -> io::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let numbers: Vec<u64> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .ok_or_else(|| io::Error::other("no line for open files"))?
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard, ..] => Ok((soft, hard)),
        _ => Err(io::Error::other("the open-file limits are not numbers")),
    }
}
