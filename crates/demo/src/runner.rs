//! `rampart demo` from start to end: each scenario naive then protected, the report, the summary,
//! and with `--keep-running` the last protected setup left up until Ctrl-C.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{Cluster, Wiring};
use crate::load::{self, Live, Load, Outcome};
use crate::process::TempDir;
use crate::progress::Progress;
use crate::report::{self, Delivery, Run, ScenarioResult};
use crate::scenario::{Fault, Scenario, Timing};
use crate::service::Mode;
use crate::stats::{self, Record};
use crate::{Args, Protocol};

/// The client's patience: long enough for the naive pile-up to show as latency.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The light load kept on the setup left running by `--keep-running`, so that its dashboard
/// has something to show.
const EXPLORE_RATE: u32 = 10;

pub(crate) fn run(args: Args) -> ExitCode {
    let scenarios = match chosen(&args.scenarios, args.protocol) {
        Ok(scenarios) => scenarios,
        Err(why) => {
            say!("rampart demo: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("rampart demo: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let exploring = Arc::new(AtomicBool::new(false));
    let code = runtime.block_on(async {
        // What `timeout`, `docker stop`, systemd and a cancelled CI job send, handled as Ctrl-C
        // is (with its own code); `pending` if it cannot be watched, leaving Ctrl-C.
        let terminated = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut terminate) => terminate.recv().await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = demo(&args, &scenarios, exploring.clone()) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    say!("rampart demo: {err}");
                    ExitCode::FAILURE
                }
            },
            // Dropping the demo's future drops every process handle: each child is killed.
            _ = tokio::signal::ctrl_c() => stopped(&exploring, "interrupted", 130),
            _ = terminated => stopped(&exploring, "terminated", 143),
        }
    });
    // The load's tasks may still hold connections; they end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// What a demo stopped by a signal says, and the code it exits with: `code`, as a shell reports
/// a process that signal ended (128 + its number), unless it was keeping its setup running for
/// exploring, which the signal ends as asked.
fn stopped(exploring: &AtomicBool, how: &str, code: u8) -> ExitCode {
    if exploring.load(Ordering::Acquire) {
        say!("\nstopping the setup");
        ExitCode::SUCCESS
    } else {
        say!("\nrampart demo: {how}; every process it started is stopped");
        ExitCode::from(code)
    }
}

/// The scenarios to run: those asked for, in the usual order, or every one that runs over
/// `protocol`.
fn chosen(asked: &[Scenario], protocol: Protocol) -> Result<Vec<Scenario>, String> {
    if asked.is_empty() {
        return Ok(Scenario::ALL
            .into_iter()
            .filter(|scenario| scenario.unavailable(protocol).is_none())
            .collect());
    }
    if let Some(why) = asked
        .iter()
        .find_map(|scenario| scenario.unavailable(protocol))
    {
        return Err(why.to_owned());
    }
    let mut scenarios = asked.to_vec();
    scenarios.sort();
    scenarios.dedup();
    Ok(scenarios)
}

async fn demo(args: &Args, scenarios: &[Scenario], exploring: Arc<AtomicBool>) -> io::Result<()> {
    let timing = Timing::new(args.quick);
    let names: Vec<&str> = scenarios.iter().map(|s| s.name()).collect();
    let intro = format!(
        "rampart demo: client -> A -> (B -> C, D), over {}, naive against protected\n\
         scenarios: {}; each run sends {} requests/s for {} s, the fault from {} s to {} s; \
         the client waits up to {} s",
        args.protocol.as_str(),
        names.join(", "),
        timing.rate,
        timing.duration.as_secs(),
        timing.fault_start.as_secs(),
        timing.fault_end.as_secs(),
        CLIENT_TIMEOUT.as_secs(),
    );
    say!("{}", report::wrap(&intro, 2));
    if args.scenarios.is_empty() && args.protocol == Protocol::Grpc {
        say!("(async is left out: its orders go over HTTP only)");
    }
    // Where the report goes is checked before minutes of runs, not after them.
    report::prepare(&args.out)?;
    let dir = TempDir::new()?;
    let mut results = Vec::new();
    let mut last = None;
    for &scenario in scenarios {
        say!(
            "\n{}",
            report::wrap(&format!("{}: {}", scenario.name(), scenario.story()), 2)
        );
        // The previous scenario's setup stops before this one's runs: left up, its health
        // checks and processes would take CPU from them.
        drop(last.take());
        let (naive, _) = one_run(scenario, Wiring::Naive, args.protocol, timing, &dir).await?;
        let (protected, cluster) =
            one_run(scenario, Wiring::Protected, args.protocol, timing, &dir).await?;
        results.push(ScenarioResult {
            scenario,
            timing,
            naive,
            protected,
        });
        if args.keep_running {
            last = Some(cluster);
        }
    }
    say!();
    // A closed stdout (`rampart demo | head -3`) loses the table, not the report nor the rest.
    let _ = write!(io::stdout(), "{}", report::table(&results));
    for check in report::checks(&results) {
        // Past the mark ("held   ", "FAILED ").
        say!("{}", report::wrap(&check, 7));
    }
    // After the table and the checks: a report that cannot be written (a full disk) loses
    // minutes of runs no more than it must.
    report::write(&args.out, args.protocol, &results)?;
    let report = format!(
        "report: {} (results.json, timeline.json, index.html and the charts)",
        args.out.join("index.html").display()
    );
    say!("\n{}", report::wrap(&report, 2));
    match last {
        Some(cluster) if args.keep_running => explore(cluster, args.protocol, exploring).await,
        _ => Ok(()),
    }
}

/// One run of a scenario in one wiring: the run's numbers, and its setup (still up).
async fn one_run(
    scenario: Scenario,
    wiring: Wiring,
    protocol: Protocol,
    timing: Timing,
    dir: &TempDir,
) -> io::Result<(Run, Cluster)> {
    // C writes down each order it takes, in a file of this run's own.
    let orders = scenario
        .posts_orders()
        .then(|| dir.path().join(format!("orders-{}.log", wiring.name())));
    if let Some(orders) = &orders {
        let _ = std::fs::remove_file(orders);
    }
    let mut cluster = Cluster::start(
        wiring,
        protocol,
        scenario.c_topology(),
        dir.path(),
        orders.as_deref(),
    )
    .await?;
    warm_up(cluster.entry(), protocol).await?;
    if wiring == Wiring::Protected {
        // B's sidecar is where C's breaker and health checks act; A's shows B and D.
        for sidecar in cluster.sidecars() {
            say!(
                "  dashboard of {}'s sidecar: http://{}/",
                sidecar.of.to_ascii_uppercase(),
                sidecar.admin
            );
        }
    }
    let start = Instant::now();
    cluster.follow(start);
    let live = Arc::new(Live::default());
    let load = Load {
        rate: timing.rate,
        duration: timing.duration,
        timeout: CLIENT_TIMEOUT,
        orders: scenario.posts_orders(),
    };
    let progress = Progress::start(
        format!("{} {}", scenario.name(), wiring.name()),
        live.clone(),
        start,
        timing.duration,
    );
    let sending = tokio::spawn(load::run(
        cluster.entry(),
        protocol,
        load,
        start,
        live.clone(),
    ));

    let fault = scenario.fault();
    tokio::time::sleep_until(start + timing.fault_start).await;
    progress.phase(fault_phase(scenario, fault));
    cluster.inject(fault).await?;
    let window_start = start.elapsed().as_secs_f64();
    tokio::time::sleep_until(start + timing.fault_end).await;
    cluster.heal(fault).await?;
    let window_end = start.elapsed().as_secs_f64();
    progress.phase(match fault {
        Fault::Kill(_) => "C is back",
        Fault::Mode(_) => "C is well",
    });

    let samples = sending.await.map_err(io::Error::other)?;
    let delivery = match &orders {
        Some(orders) => {
            progress.phase("orders to C");
            let accepted = live
                .accepted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            Some(delivered(&accepted, orders).await)
        }
        None => None,
    };
    progress.finish();
    let counts = cluster.counts().await?;
    let run = Run {
        wiring,
        record: Record::of(&samples),
        seconds: stats::per_second(&samples),
        trouble: stats::trouble(&samples),
        window: (window_start, window_end),
        counts,
        transitions: cluster.transitions(),
        delivery,
    };
    Ok((run, cluster))
}

/// How long the orders accepted may take to reach C once the load has ended: C has been back
/// for seconds by then, and its breaker's longest rest is 4 s.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(30);

/// What became of the `accepted` orders: waits (up to [`DELIVERY_PATIENCE`]) until C's `orders`
/// file has every one of them.
async fn delivered(accepted: &[u64], orders: &Path) -> Delivery {
    let deadline = Instant::now() + DELIVERY_PATIENCE;
    loop {
        let lines: Vec<u64> = std::fs::read_to_string(orders)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.parse().ok())
            .collect();
        let taken: HashSet<u64> = lines.iter().copied().collect();
        let delivered = accepted.iter().filter(|n| taken.contains(n)).count() as u64;
        let accepted = accepted.len() as u64;
        if delivered == accepted || Instant::now() >= deadline {
            return Delivery {
                accepted,
                delivered,
                lost: accepted - delivered,
                duplicates: (lines.len() - taken.len()) as u64,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fault_phase(scenario: Scenario, fault: Fault) -> &'static str {
    match (scenario, fault) {
        (Scenario::ReplicaLoss, _) => "a C is down",
        (Scenario::Failover, _) => "primary down",
        (_, Fault::Kill(_)) => "C is down",
        (_, Fault::Mode(Mode::Slow(_))) => "C is slow",
        (_, Fault::Mode(_)) => "C is flaky",
    }
}

/// Waits until A answers a whole page, so that no run begins with processes still starting.
async fn warm_up(entry: SocketAddr, protocol: Protocol) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if load::probe(entry, protocol).await == Outcome::Ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(io::Error::other(format!(
        "A ({entry}) did not answer a whole page within 20 s of starting"
    )))
}

/// `--keep-running`: the last protected setup stays up under a light load until Ctrl-C.
async fn explore(
    cluster: Cluster,
    protocol: Protocol,
    exploring: Arc<AtomicBool>,
) -> io::Result<()> {
    let entry = cluster.entry();
    say!("\nthe last protected setup keeps running, under {EXPLORE_RATE} requests/s:");
    match protocol {
        Protocol::Http => say!("  A:  curl http://{entry}/item/7"),
        Protocol::Grpc => say!("  A:  gRPC rampart.demo.A/Get on {entry}"),
    }
    for sidecar in cluster.sidecars() {
        say!(
            "  {}'s sidecar: dashboard http://{}/  (its configuration: {})",
            sidecar.of.to_ascii_uppercase(),
            sidecar.admin,
            sidecar.config.display()
        );
    }
    say!(
        "  the dashboards' force buttons ask for the admin token: {}",
        crate::process::admin_token()
    );
    say!("press Ctrl-C to stop it");
    exploring.store(true, Ordering::Release);
    let load = Load {
        rate: EXPLORE_RATE,
        duration: Duration::from_secs(24 * 3600),
        timeout: CLIENT_TIMEOUT,
        orders: false,
    };
    load::run(entry, protocol, load, Instant::now(), Arc::default()).await;
    drop(cluster);
    Ok(())
}
