//! The scenarios: what is done to C, when, and how the run is timed.

use std::time::Duration;

use crate::Protocol;
use crate::service::Mode;

/// A fault injected into C for a while (the fault window), then taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// C is killed (SIGKILL), and started again at the end of the window.
    Crash,
    /// Each of C's requests holds one of its workers for 2 s: a queue builds up.
    Slow,
    /// Half of C's answers are 500s.
    Flaky,
    /// C has two replicas; one is killed, and started again at the end of the window.
    ReplicaLoss,
    /// C's primary is killed; a backup C takes the calls until it is back.
    Failover,
    /// Orders are posted to C through the outbox while C is down; all must arrive once it is
    /// back. Over HTTP only: a 202 Accepted is no gRPC answer.
    Async,
}

/// What a scenario does to C at the start of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL C number `n` (0: the primary or only one; 1: the second replica or the backup);
    /// start it again on the same port at the end.
    Kill(usize),
    /// Set every C to this mode; back to normal at the end.
    Mode(Mode),
}

/// How a scenario's runs are timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing {
    /// Requests per second.
    pub(crate) rate: u32,
    /// How long requests are sent for.
    pub(crate) duration: Duration,
    /// When the fault begins, from the start of the load.
    pub(crate) fault_start: Duration,
    /// When it ends.
    pub(crate) fault_end: Duration,
}

impl Timing {
    /// `--quick` keeps every scenario, both wirings and their setup under three minutes; the
    /// default gives each phase time to show its shape, and the naive pile-up time to pass the
    /// client's timeout. The same rate for both: 50 requests a second keeps the naive pile-up
    /// (up to 10 s of requests, each holding a socket on each side of A) within the usual limit
    /// of 1024 open files per process.
    pub(crate) fn new(quick: bool) -> Timing {
        if quick {
            Timing {
                rate: 50,
                duration: Duration::from_secs(14),
                fault_start: Duration::from_secs(3),
                fault_end: Duration::from_secs(9),
            }
        } else {
            Timing {
                rate: 50,
                duration: Duration::from_secs(40),
                fault_start: Duration::from_secs(10),
                fault_end: Duration::from_secs(25),
            }
        }
    }
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 6] = [
        Scenario::Crash,
        Scenario::Slow,
        Scenario::Flaky,
        Scenario::ReplicaLoss,
        Scenario::Failover,
        Scenario::Async,
    ];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Slow => "slow",
            Scenario::Flaky => "flaky",
            Scenario::ReplicaLoss => "replica-loss",
            Scenario::Failover => "failover",
            Scenario::Async => "async",
        }
    }

    /// What happens to C, in a sentence.
    pub fn story(self) -> &'static str {
        match self {
            Scenario::Crash => "C is killed with SIGKILL, then started again",
            Scenario::Slow => {
                "each request holds one of C's 16 workers for 2 s, so a queue builds up in front of them"
            }
            Scenario::Flaky => "half of C's answers are 500s",
            Scenario::ReplicaLoss => {
                "C runs as two replicas; one is killed with SIGKILL, then started again"
            }
            Scenario::Failover => {
                "C's primary is killed with SIGKILL, then comes back; a backup C is there, which B's \
                 sidecar is told of and naive B, knowing one address, is not"
            }
            Scenario::Async => "orders are posted to C through the outbox while C is down",
        }
    }

    /// Why the scenario cannot run over `protocol`, if it cannot.
    pub fn unavailable(self, protocol: Protocol) -> Option<&'static str> {
        match (self, protocol) {
            (Scenario::Async, Protocol::Grpc) => Some(
                "the `async` scenario posts orders over HTTP (an async route answers 202 \
                 Accepted, which is no gRPC answer); run it without `--protocol grpc`",
            ),
            _ => None,
        }
    }

    /// Whether the client posts orders (to be stored and delivered later) instead of asking for
    /// pages.
    pub(crate) fn posts_orders(self) -> bool {
        self == Scenario::Async
    }

    /// The fault of the window.
    pub(crate) fn fault(self) -> Fault {
        match self {
            Scenario::Crash | Scenario::Failover | Scenario::Async => Fault::Kill(0),
            Scenario::ReplicaLoss => Fault::Kill(1),
            Scenario::Slow => Fault::Mode(Mode::Slow(Duration::from_secs(2))),
            Scenario::Flaky => Fault::Mode(Mode::Flaky(50)),
        }
    }

    /// C's processes: how many, and whether the second is a backup (rather than a replica).
    pub(crate) fn c_topology(self) -> (usize, bool) {
        match self {
            Scenario::ReplicaLoss => (2, false),
            Scenario::Failover => (2, true),
            _ => (1, false),
        }
    }
}
