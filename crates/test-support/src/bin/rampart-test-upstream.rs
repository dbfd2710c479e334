//! The scriptable [`Upstream`] in a process of its own, so that a test can kill it for real.
//!
//! ```text
//! rampart-test-upstream [--behavior BEHAVIOR | --grpc GRPC_BEHAVIOR] [--addr 127.0.0.1:PORT]
//! ```
//!
//! `BEHAVIOR` is the text form of [`Behavior`] (default `ok`); `--grpc` serves a [`GrpcUpstream`]
//! instead, `GRPC_BEHAVIOR` the text form of [`GrpcBehavior`]. `--addr` defaults to a free port
//! on 127.0.0.1. The first line on stdout is the address the upstream listens on. Each line then
//! read on stdin is a new behaviour of the same kind, acknowledged with a line `ok` (or
//! `error: ...`) on stdout. The process exits when stdin closes, so it does not outlive the test
//! that started it, even one that crashed.
//! [`ChildUpstream`](rampart_test_support::ChildUpstream) drives it.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use rampart_test_support::{Behavior, GrpcBehavior, GrpcUpstream, Upstream};

/// The upstream the process serves.
enum Server {
    Http(Upstream),
    Grpc(GrpcUpstream),
}

/// What the arguments ask for.
enum Serve {
    Http(Behavior),
    Grpc(GrpcBehavior),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Http(upstream) => upstream.addr(),
            Server::Grpc(upstream) => upstream.addr(),
        }
    }

    /// Applies a behaviour read on stdin: the reply line.
    fn set(&self, line: &str) -> String {
        let applied = match self {
            Server::Http(upstream) => line.parse().map(|behavior| upstream.set_behavior(behavior)),
            Server::Grpc(upstream) => line.parse().map(|behavior| upstream.set_behavior(behavior)),
        };
        match applied {
            Ok(()) => "ok".to_owned(),
            Err(err) => format!("error: {err}"),
        }
    }
}

fn main() -> ExitCode {
    let (serve, addr) = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("rampart-test-upstream: {message}");
            eprintln!(
                "usage: rampart-test-upstream [--behavior BEHAVIOR | --grpc GRPC_BEHAVIOR] \
                 [--addr 127.0.0.1:PORT]"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rampart-test-upstream: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let started = runtime.block_on(async {
        match serve {
            Serve::Http(behavior) => Upstream::start_on(addr, behavior).await.map(Server::Http),
            Serve::Grpc(behavior) => GrpcUpstream::start_on(addr, behavior)
                .await
                .map(Server::Grpc),
        }
    });
    let server = match started {
        Ok(server) => server,
        Err(err) => {
            eprintln!("rampart-test-upstream: cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };
    if announce(&server.addr().to_string()).is_err() {
        return ExitCode::FAILURE;
    }

    // The runtime serves only while `block_on` runs, so stdin is read on a thread of its own.
    let (stdin_closed, closed) = tokio::sync::oneshot::channel::<()>();
    let server = Arc::new(server);
    let commands = Arc::clone(&server);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if announce(&commands.set(line.trim())).is_err() {
                break;
            }
        }
        drop(stdin_closed);
    });
    let _ = runtime.block_on(closed);
    ExitCode::SUCCESS
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Serve, SocketAddr), String> {
    let mut serve = Serve::Http(Behavior::default());
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--behavior" => serve = Serve::Http(value.parse().map_err(|err| format!("{err}"))?),
            "--grpc" => serve = Serve::Grpc(value.parse().map_err(|err| format!("{err}"))?),
            "--addr" => {
                addr = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not an address like 127.0.0.1:8080"))?;
            }
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    Ok((serve, addr))
}

fn announce(line: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}
