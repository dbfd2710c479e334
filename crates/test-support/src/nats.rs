//! A real nats-server for tests of the nats outbox store: JetStream on, 127.0.0.1 on a free
//! port, its store in a temporary directory. Dropping it kills it (the process it started, nothing else)
//! and removes the directory; [`NatsServer::kill`] and [`NatsServer::restart`] crash it and start
//! it again on the same port and directory.
//!
//! A test that needs a server and cannot start one fails, saying why: it never skips.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a server may take to say it is ready.
const READY: Duration = Duration::from_secs(15);
/// How often to look whether it is ready.
const POLL: Duration = Duration::from_millis(20);
/// Ports tried when another process takes the free one first.
const PORT_TRIES: usize = 10;

/// A nats-server process; `nats-server` must be installed (the Debian package of that name).
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    jetstream: bool,
    // `--user` and `--pass`, when the server requires them.
    user: Option<(String, String)>,
    dir: StoreDir,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// Starts a server with JetStream.
    pub fn start() -> NatsServer {
        NatsServer::launch(true, None)
    }

    /// Starts a server without JetStream, to see the store refuse it.
    pub fn start_without_jetstream() -> NatsServer {
        NatsServer::launch(false, None)
    }

    /// Starts a server with JetStream that admits only clients connecting as `user` with
    /// `password`.
    pub fn start_with_user(user: &str, password: &str) -> NatsServer {
        NatsServer::launch(true, Some((user.to_owned(), password.to_owned())))
    }

    fn launch(jetstream: bool, user: Option<(String, String)>) -> NatsServer {
        let mut server = NatsServer {
            binary: binary(),
            port: 0,
            jetstream,
            user,
            dir: StoreDir::new(),
            child: None,
            starts: 0,
        };
        for _ in 0..PORT_TRIES {
            server.port = free_port();
            match server.spawn() {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(Start::PortTaken) => continue,
                Err(Start::Failed(why)) => panic!("nats-server did not start: {why}"),
            }
        }
        panic!(
            "nats-server did not start: {PORT_TRIES} free ports were taken before it bound them"
        );
    }

    /// The URL to connect to, without credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL: a crash, with no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, over the same store directory.
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn() {
            Ok(child) => self.child = Some(child),
            Err(Start::PortTaken) => {
                panic!("nats-server did not restart: port {} was taken", self.port)
            }
            Err(Start::Failed(why)) => panic!("nats-server did not restart: {why}"),
        }
    }

    fn spawn(&mut self) -> Result<Child, Start> {
        self.starts += 1;
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        let store = self.dir.path().join("store");
        let mut command = Command::new(&self.binary);
        if self.jetstream {
            command.arg("-js");
        }
        if let Some((user, password)) = &self.user {
            command.args(["--user", user, "--pass", password]);
        }
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::create(&log).map_err(|e| Start::Failed(format!("{}: {e}", log.display())))?,
            );
        let mut child = command
            .spawn()
            .map_err(|e| Start::Failed(format!("{}: {e}", self.binary.display())))?;
        // Counted in polls, as tests read no std clock.
        for _ in 0..READY.as_millis() / POLL.as_millis() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(if text.contains("address already in use") {
                    Start::PortTaken
                } else {
                    Start::Failed(format!("it exited ({status}); its log:\n{text}"))
                });
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Err(Start::Failed(format!(
            "not ready after {READY:?}; its log:\n{text}"
        )))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's directory in the temporary directory, removed when dropped.
#[derive(Debug)]
struct StoreDir(PathBuf);

impl StoreDir {
    fn new() -> StoreDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("rampart-nats-server-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temporary directory is writable");
        StoreDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Start {
    PortTaken,
    Failed(String),
}

/// A port free a moment ago: bound to 127.0.0.1:0, then released for the server to take.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("a bound address").port()
}

/// The nats-server binary: on the PATH, or where Debian's package puts it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"));
    for candidate in candidates {
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "nats-server is not installed, and the nats store's tests need it: install the Debian \
         package nats-server (scripts/test does)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
