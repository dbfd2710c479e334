//! The `rampart` command: wiring only; the work lives in the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rampart_config::Config;

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
        Command::Run { .. } | Command::Demo => {
            eprintln!(
                "rampart: the proxy (`run`) and the demo are not part of this build yet; `check` is"
            );
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
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.len();
            eprintln!(
                "{}: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(2)
        }
    }
}
