//! The `rampart` command: wiring only; the work lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        Command::Run { .. } | Command::Check { .. } | Command::Demo => {
            eprintln!(
                "rampart: this build has the policy library only; the proxy and the demo are not part of it yet"
            );
            ExitCode::from(2)
        }
    }
}
