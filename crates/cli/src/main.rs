//! The `rampart` command: wiring only; the work lives in the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rampart_config::{Config, Errors};
use rampart_proxy::{Drain, Proxy};

/// Resilient calls between services.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar proxy.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "rampart.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "rampart.toml")]
        config: PathBuf,
    },
    /// Run the client -> A -> B -> C example, naive against protected.
    Demo,
    /// Print version and build information.
    Version,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version => {
            println!("rampart {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Demo => {
            eprintln!("rampart: the demo is not part of this build yet; `run` and `check` are");
            ExitCode::from(2)
        }
    }
}

/// `rampart check`: exit 0 and a summary when the file is valid, exit 2 and every error when not.
fn check(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(config) => {
            println!("{}: valid", path.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => config_errors(path, &errors),
    }
}

/// `rampart run`: serve until SIGTERM or SIGINT, then drain and exit 0. An invalid configuration
/// exits 2 with every error, as `check` prints them; a listener that cannot bind exits 1.
fn run(path: &Path) -> ExitCode {
    let config = match Config::from_file(path) {
        Ok(config) => config,
        Err(errors) => return config_errors(path, &errors),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.runtime.worker_threads {
        runtime.worker_threads(threads);
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(serve(&config)),
        Err(err) => {
            eprintln!("rampart: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: &Config) -> ExitCode {
    // Installed before the listeners open, so a signal sent as soon as they are announced is
    // not lost.
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("rampart: cannot install the signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::start(config).await {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("rampart: {err}");
            return ExitCode::FAILURE;
        }
    };
    for listener in proxy.listeners() {
        eprintln!(
            "rampart: listener \"{}\" listening on {}",
            listener.name, listener.addr
        );
    }
    let signal = stop.await;
    eprintln!(
        "rampart: {signal}: draining, up to {:?}",
        config.runtime.drain_timeout
    );
    match proxy.shutdown().await {
        Drain::Complete => eprintln!("rampart: drained"),
        Drain::TimedOut => eprintln!("rampart: drain timeout passed; open connections were cut"),
    }
    ExitCode::SUCCESS
}

/// Resolves to the signal's name on the first SIGTERM or SIGINT.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Resolves on Ctrl-C, the one stop signal outside unix.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    Ok(async {
        // Without a handler there is nothing to wait for: stop at once rather than never.
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

/// Prints every configuration error and their count; exit 2.
fn config_errors(path: &Path, errors: &Errors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.len();
    eprintln!(
        "{}: {n} error{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}
