//! One setup of the services, naive or protected: its processes, started in the order their
//! addresses are needed (C, D, B's sidecar, B, A's sidecar, A), and stopped when it is dropped.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Protocol;
use crate::process::{ServiceProcess, Sidecar};
use crate::scenario::Fault;
use crate::service::{Call, Mode, Role};
use crate::sidecar::{self, Counts, Endpoints, Transition};

/// How the services call each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wiring {
    /// Directly, with a plain client at its defaults.
    Naive,
    /// Through a sidecar per calling service.
    Protected,
}

impl Wiring {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wiring::Naive => "naive",
            Wiring::Protected => "protected",
        }
    }
}

/// The processes of one setup.
#[derive(Debug)]
pub(crate) struct Cluster {
    a: ServiceProcess,
    _b: ServiceProcess,
    _d: ServiceProcess,
    c: Vec<ServiceProcess>,
    sidecars: Vec<Sidecar>,
    transitions: Arc<Mutex<Vec<Transition>>>,
    followers: Vec<JoinHandle<()>>,
}

// === impl Cluster ===

impl Cluster {
    /// Starts every process; `c` is how many C processes, `backup` whether the second is B's
    /// sidecar's backup rather than a replica (naive B knows the primary only: a backup is
    /// something a client must be told about). With `orders`, A places orders with C too
    /// (directly, or through its sidecar's async route), and C writes them to that file.
    pub(crate) async fn start(
        wiring: Wiring,
        protocol: Protocol,
        (c, backup): (usize, bool),
        dir: &Path,
        orders: Option<&Path>,
    ) -> io::Result<Cluster> {
        let mut cs = Vec::new();
        for _ in 0..c {
            let orders = orders.map(Path::to_path_buf);
            cs.push(
                ServiceProcess::start_taking_orders(Role::C, protocol, Vec::new(), orders).await?,
            );
        }
        let d = ServiceProcess::start(Role::D, protocol, Vec::new()).await?;
        let c_addrs: Vec<SocketAddr> = cs.iter().map(ServiceProcess::addr).collect();
        let endpoints = if backup {
            Endpoints {
                primary: c_addrs[..1].to_vec(),
                backup: c_addrs[1..].to_vec(),
            }
        } else {
            Endpoints {
                primary: c_addrs,
                backup: Vec::new(),
            }
        };
        let mut sidecars = Vec::new();
        let (b, a) = match wiring {
            Wiring::Naive => {
                let b = ServiceProcess::start(
                    Role::B,
                    protocol,
                    vec![call("c", endpoints.primary.clone())],
                )
                .await?;
                let mut calls = vec![call("b", vec![b.addr()]), call("d", vec![d.addr()])];
                if orders.is_some() {
                    calls.push(call("orders", endpoints.primary.clone()));
                }
                let a = ServiceProcess::start(Role::A, protocol, calls).await?;
                (b, a)
            }
            Wiring::Protected => {
                let config = sidecar::config_b(protocol, &endpoints);
                let of_b = Sidecar::start("b", &config, dir).await?;
                let b =
                    ServiceProcess::start(Role::B, protocol, vec![call("c", vec![of_b.listen])])
                        .await?;
                let outbox = dir.join("outbox-a");
                // A fresh queue for each run: a previous run's orders are not this one's.
                let _ = std::fs::remove_dir_all(&outbox);
                let orders_to = orders.map(|_| (&endpoints, outbox.as_path()));
                let config = sidecar::config_a(protocol, b.addr(), d.addr(), orders_to);
                let of_a = Sidecar::start("a", &config, dir).await?;
                let mut calls = vec![call("b", vec![of_a.listen]), call("d", vec![of_a.listen])];
                if orders.is_some() {
                    calls.push(call("orders", vec![of_a.listen]));
                }
                let a = ServiceProcess::start(Role::A, protocol, calls).await?;
                sidecars.push(of_a);
                sidecars.push(of_b);
                (b, a)
            }
        };
        Ok(Cluster {
            a,
            _b: b,
            _d: d,
            c: cs,
            sidecars,
            transitions: Arc::default(),
            followers: Vec::new(),
        })
    }

    /// Where the client sends its requests.
    pub(crate) fn entry(&self) -> SocketAddr {
        self.a.addr()
    }

    /// The sidecars (none in the naive wiring), A's first.
    pub(crate) fn sidecars(&self) -> &[Sidecar] {
        &self.sidecars
    }

    /// Begins recording the sidecars' breaker transitions and health changes, timed from
    /// `start`.
    pub(crate) fn follow(&mut self, start: Instant) {
        for sidecar in &self.sidecars {
            let transitions = self.transitions.clone();
            self.followers.push(tokio::spawn(sidecar::follow(
                sidecar.admin,
                sidecar.of,
                start,
                move |transition| {
                    transitions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(transition);
                },
            )));
        }
    }

    /// What the sidecars recorded so far.
    pub(crate) fn transitions(&self) -> Vec<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sidecars' counts, added up (zero in the naive wiring).
    pub(crate) async fn counts(&self) -> io::Result<Counts> {
        let mut total = Counts::default();
        for sidecar in &self.sidecars {
            let counts = sidecar::counts(sidecar.admin).await.ok_or_else(|| {
                io::Error::other(format!(
                    "the admin API of {}'s sidecar ({}) did not answer",
                    sidecar.of, sidecar.admin
                ))
            })?;
            total.add(&counts);
        }
        Ok(total)
    }

    /// Begins the fault.
    pub(crate) async fn inject(&mut self, fault: Fault) -> io::Result<()> {
        match fault {
            Fault::Kill(n) => self.c_number(n)?.kill().await,
            Fault::Mode(mode) => {
                for c in &mut self.c {
                    c.set_mode(mode).await?;
                }
                Ok(())
            }
        }
    }

    /// Ends the fault.
    pub(crate) async fn heal(&mut self, fault: Fault) -> io::Result<()> {
        match fault {
            Fault::Kill(n) => self.c_number(n)?.restart().await,
            Fault::Mode(_) => {
                for c in &mut self.c {
                    c.set_mode(Mode::Normal).await?;
                }
                Ok(())
            }
        }
    }

    fn c_number(&mut self, n: usize) -> io::Result<&mut ServiceProcess> {
        self.c
            .get_mut(n)
            .ok_or_else(|| io::Error::other(format!("this setup has no C number {n}")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

fn call(name: &str, addrs: Vec<SocketAddr>) -> Call {
    Call {
        name: name.to_owned(),
        addrs,
    }
}
