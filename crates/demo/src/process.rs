//! The demo's child processes: its services (`rampart __demo-service`) and their sidecars
//! (`rampart run`), both the running binary started again.
//!
//! Every child is killed when its handle is dropped (tokio's `kill_on_drop`, SIGKILL), so a run
//! that ends, fails, panics or is interrupted leaves nothing behind. A service also exits by
//! itself when its stdin closes, so even a demo killed outright does not leave services running.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::Protocol;
use crate::service::{Call, Mode, Role};

/// The name a child's command line starts with, whatever path started it: `ps` and
/// `pgrep -f rampart` then show the demo's processes as `rampart ...` (started from
/// `/proc/self/exe`, they would read `/proc/self/exe ...`).
const PROGRAM: &str = "rampart";

/// How long a child may take to say where it listens.
const START_PATIENCE: Duration = Duration::from_secs(20);
/// The log lines of a sidecar kept to explain why it did not start.
const KEPT_LINES: usize = 20;

/// The `rampart` binary this demo runs in.
///
/// On Linux, `/proc/self/exe`: the very file this process runs, even if the path it was started
/// from has since been replaced (a `cargo build` during a demo) or removed, where the path
/// `current_exe` gives would name another binary, or none.
pub(crate) fn binary() -> io::Result<PathBuf> {
    let own = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && own.exists() {
        return Ok(own.to_path_buf());
    }
    std::env::current_exe()
}

/// The admin token of every sidecar this demo starts: drawn once, printed with the dashboards
/// of the setup left running, so that its force buttons work.
pub(crate) fn admin_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        (0..24)
            .map(|_| fastrand::alphanumeric())
            .collect::<String>()
    })
}

/// One of the demo's services in a process of its own.
#[derive(Debug)]
pub(crate) struct ServiceProcess {
    role: Role,
    protocol: Protocol,
    calls: Vec<Call>,
    /// C's orders file, when it takes orders.
    orders: Option<PathBuf>,
    addr: SocketAddr,
    /// `None` while killed.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

// === impl ServiceProcess ===

impl ServiceProcess {
    /// Starts `role` on a port the kernel chooses.
    pub(crate) async fn start(
        role: Role,
        protocol: Protocol,
        calls: Vec<Call>,
    ) -> io::Result<ServiceProcess> {
        ServiceProcess::start_taking_orders(role, protocol, calls, None).await
    }

    /// Starts `role`, writing the orders it takes to `orders` (C, in the `async` scenario).
    pub(crate) async fn start_taking_orders(
        role: Role,
        protocol: Protocol,
        calls: Vec<Call>,
        orders: Option<PathBuf>,
    ) -> io::Result<ServiceProcess> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (running, addr) =
            Running::start(role, protocol, &calls, orders.as_deref(), any).await?;
        Ok(ServiceProcess {
            role,
            protocol,
            calls,
            orders,
            addr,
            running: Some(running),
        })
    }

    /// Where it listens (or listened, while killed).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how it answers (C only does anything with it).
    pub(crate) async fn set_mode(&mut self, mode: Mode) -> io::Result<()> {
        let role = self.role.name();
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| io::Error::other(format!("service {role} is not running")))?;
        running
            .stdin
            .write_all(format!("{}\n", mode.to_line()).as_bytes())
            .await?;
        running.stdin.flush().await?;
        match running.stdout.next_line().await? {
            Some(line) if line == "ok" => Ok(()),
            Some(line) => Err(io::Error::other(format!("service {role}: {line}"))),
            None => Err(io::Error::other(format!("service {role} exited"))),
        }
    }

    /// SIGKILL, and wait until it is gone: its port refuses connections and the kernel has
    /// closed its open ones.
    pub(crate) async fn kill(&mut self) -> io::Result<()> {
        if let Some(mut running) = self.running.take() {
            running.child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port, in its normal mode.
    pub(crate) async fn restart(&mut self) -> io::Result<()> {
        self.kill().await?;
        let (running, _) = Running::start(
            self.role,
            self.protocol,
            &self.calls,
            self.orders.as_deref(),
            self.addr,
        )
        .await?;
        self.running = Some(running);
        Ok(())
    }
}

// === impl Running ===

impl Running {
    async fn start(
        role: Role,
        protocol: Protocol,
        calls: &[Call],
        orders: Option<&Path>,
        listen: SocketAddr,
    ) -> io::Result<(Running, SocketAddr)> {
        let mut command = Command::new(binary()?);
        command.arg0(PROGRAM);
        command
            .arg("__demo-service")
            .args(["--role", role.name(), "--protocol", protocol.as_str()])
            .arg("--listen")
            .arg(listen.to_string());
        for call in calls {
            command.arg("--call").arg(call.to_arg());
        }
        if let Some(orders) = orders {
            command.arg("--orders").arg(orders);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("stdin and stdout are piped"));
        };
        let mut stdout = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_PATIENCE, stdout.next_line())
            .await
            .map_err(|_| io::Error::other(format!("service {} did not start", role.name())))??;
        let addr = first
            .as_deref()
            .and_then(|line| line.parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "service {} did not start on {listen} (see above)",
                    role.name()
                ))
            })?;
        Ok((
            Running {
                child,
                stdin,
                stdout,
            },
            addr,
        ))
    }
}

/// A `rampart run` sidecar process with its configuration file.
#[derive(Debug)]
pub(crate) struct Sidecar {
    /// Whose sidecar: `a` or `b`.
    pub(crate) of: &'static str,
    /// Its listener: where its service sends its calls.
    pub(crate) listen: SocketAddr,
    /// Its admin API (and dashboard).
    pub(crate) admin: SocketAddr,
    /// Its configuration file.
    pub(crate) config: PathBuf,
    _child: Child,
}

impl Sidecar {
    /// Writes `config` into `dir` and runs `rampart run` on it; returns once it listens, with the
    /// addresses it logged.
    pub(crate) async fn start(of: &'static str, config: &str, dir: &Path) -> io::Result<Sidecar> {
        let path = dir.join(format!("sidecar-{of}.toml"));
        std::fs::write(&path, config).map_err(|err| failed_at("write", &path, err))?;
        // The sidecar ends when its standard input closes: when this handle is dropped, or when
        // the demo dies, even by SIGKILL, which no destructor survives.
        let mut child = Command::new(binary()?)
            .arg0(PROGRAM)
            .args(["--log-format", "json", "run", "--until-stdin-closes", "-c"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .env(crate::sidecar::TOKEN_ENV, admin_token())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("stderr is piped"))?;
        let (found, addrs) = oneshot::channel();
        let kept = Arc::new(Mutex::new(Vec::new()));
        // Read to the end, so that the sidecar never blocks on a full pipe.
        tokio::spawn(read_log(stderr, found, kept.clone()));
        let fail = |why: &str| {
            let lines = kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .join("\n");
            io::Error::other(format!("the sidecar of {of} {why}; it wrote:\n{lines}"))
        };
        match tokio::time::timeout(START_PATIENCE, addrs).await {
            Ok(Ok((listen, admin))) => Ok(Sidecar {
                of,
                listen,
                admin,
                config: path,
                _child: child,
            }),
            Ok(Err(_)) => Err(fail("exited")),
            Err(_) => Err(fail("did not start in time")),
        }
    }
}

/// Reads a sidecar's JSON log lines: the listener's and the admin API's addresses, once both
/// are there, go to `found`; the first lines are kept for an error message.
async fn read_log(
    stderr: tokio::process::ChildStderr,
    found: oneshot::Sender<(SocketAddr, SocketAddr)>,
    kept: Arc<Mutex<Vec<String>>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let (mut listen, mut admin) = (None, None);
    let mut found = Some(found);
    while let Ok(Some(line)) = lines.next_line().await {
        if found.is_none() {
            continue;
        }
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
            let addr = event["addr"].as_str().and_then(|addr| addr.parse().ok());
            match event["message"].as_str() {
                Some("listening") => listen = listen.or(addr),
                Some("admin API up") => admin = admin.or(addr),
                _ => {}
            }
        }
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_LINES {
            kept.push(line);
        }
        drop(kept);
        if let (Some(listen), Some(admin)) = (listen, admin)
            && let Some(found) = found.take()
        {
            let _ = found.send((listen, admin));
        }
    }
}

/// `err`, from trying to `what` at `path`, saying so: the system's words name no file.
fn failed_at(what: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("cannot {what} {}: {err}", path.display()),
    )
}

/// A directory for the sidecars' configuration files, removed with everything in it when
/// dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// `rampart-demo-<pid>` in the system's temporary directory, once the directories of earlier
    /// demos that are no longer running are gone: a demo killed outright cannot remove its own.
    pub(crate) fn new() -> io::Result<TempDir> {
        let temp = std::env::temp_dir();
        remove_abandoned(&temp);
        let path = temp.join(format!("{TEMP_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|err| failed_at("make the directory", &path, err))?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the name of a demo's directory starts with, before its process id.
const TEMP_PREFIX: &str = "rampart-demo-";

/// Removes the directories in `temp` of demos whose process is gone. Only where `/proc` tells
/// which processes run (Linux); a directory of a process id now taken by another process stays,
/// as does one this user may not remove.
fn remove_abandoned(temp: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEMP_PREFIX))
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if !proc.join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directories_of_demos_no_longer_running_are_removed() {
        let temp = std::env::temp_dir().join(format!("rampart-demo-tests-{}", std::process::id()));
        std::fs::create_dir_all(&temp).unwrap();
        // A process id that was just freed, one that runs (this test's), and names that are
        // not a demo's.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let dir = |name: String| {
            let path = temp.join(name);
            std::fs::create_dir_all(path.join("inside")).unwrap();
            path
        };
        let abandoned = dir(format!("{TEMP_PREFIX}{}", gone.id()));
        let running = dir(format!("{TEMP_PREFIX}{}", std::process::id()));
        let other = dir(format!("{TEMP_PREFIX}notes"));
        let unrelated = dir("something-else".to_owned());

        remove_abandoned(&temp);

        assert!(!abandoned.exists());
        assert!(running.exists() && other.exists() && unrelated.exists());
        std::fs::remove_dir_all(&temp).unwrap();
    }
}
