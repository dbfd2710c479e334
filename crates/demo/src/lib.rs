//! `rampart demo`: the textbook case, run for real and measured.
//!
//! A client calls service A; for each request A calls B and D in parallel, B calls C, and A builds
//! its answer from theirs. Every service is a process of its own on 127.0.0.1 (the `rampart`
//! binary run again as `rampart __demo-service --role ...`), and faults are injected into C:
//! killed, slowed, made flaky, one replica lost, the primary lost to a backup. Each scenario runs
//! twice, with the same services and the same load:
//!
//! - **naive**: each service calls the next with a plain hyper client at its default settings (no
//!   timeout, no retry, no breaker), as most code does;
//! - **protected**: every hop goes through a `rampart run` sidecar process, with the policies
//!   [`sidecar`] writes into its configuration (and explains there, in comments).
//!
//! An open-loop load generator ([`load`]) sends requests to A on a fixed schedule, whatever the
//! answers, so that slowness shows as latency and pile-up rather than as fewer requests. The
//! report holds `results.json` (as CONTRACT.md fixes it), `timeline.json` (the
//! per-second series, the fault windows, the breaker transitions), `index.html` with an account of
//! each scenario drawn from the recorded data, and SVG charts of success and latency over time.
//!
//! The crate is the whole demo; the `rampart` binary only parses its arguments ([`Args`],
//! [`ServiceArgs`]) and calls [`run`] or [`serve`].

pub mod load;
pub mod sidecar;

/// `eprintln!` that goes on quietly when stderr is gone (`rampart demo 2>&1 | head`): the
/// demo's work, and stopping every process it started, matter more than its narration.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod chart;
mod cluster;
mod grpc;
mod process;
mod progress;
mod report;
mod runner;
mod scenario;
mod service;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

pub use scenario::Scenario;
pub use service::{Call, Role};

/// The arguments of `rampart demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A scenario to run; may be repeated. With none, every scenario this build can run.
    #[arg(long = "scenario", value_name = "NAME", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// How the services call each other.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Shorter runs: every scenario in under three minutes.
    #[arg(long)]
    pub quick: bool,
    /// Where the report is written.
    #[arg(long, value_name = "DIR", default_value = "rampart-demo-report")]
    pub out: PathBuf,
    /// Leave the last protected setup running, to explore its dashboard, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// The protocol between the services (and through their sidecars).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with JSON bodies.
    Http,
    /// gRPC (HTTP/2) with protobuf messages.
    Grpc,
}

impl Protocol {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The arguments of the hidden `rampart __demo-service`: one of the demo's services.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Which service this process is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Where to listen; port 0 lets the kernel choose. The bound address is the first line on
    /// stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The protocol it serves and calls with.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// A service it calls, `NAME=ADDR[,ADDR...]` (several addresses are taken in turn); may be
    /// repeated.
    #[arg(long = "call", value_name = "NAME=ADDRS", value_parser = Call::parse)]
    pub calls: Vec<Call>,
    /// C only: the file each order it takes is written to, its number on a line (appended, so
    /// that what C took before a SIGKILL is still there after it).
    #[arg(long, value_name = "FILE")]
    pub orders: Option<PathBuf>,
}

/// Runs `rampart demo`: every scenario asked for, naive then protected, then the report.
/// Exit 0 when it ran to the end, 1 when it could not (a process would not start, the report
/// could not be written), 2 for a scenario this build cannot run, 130 on Ctrl-C.
pub fn run(args: Args) -> ExitCode {
    runner::run(args)
}

/// Runs one of the demo's services until its standard input closes (the demo has ended, or
/// died) or it is killed.
pub fn serve(args: ServiceArgs) -> ExitCode {
    service::serve(args)
}
