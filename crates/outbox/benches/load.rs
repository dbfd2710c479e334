//! The embedded outbox under load, as the targets are stated: throughput with concurrent
//! producers, append latency under a paced 1,000 messages/s, and the time to reopen a store
//! holding 100,000 queued messages, after a clean close and after a crash. Messages are 1 KiB
//! POSTs; every append returns only once fsync'd.
//!
//! Run: `cargo bench -p rampart-outbox --bench load` (prints a report; `--messages N` changes the
//! reopen test's size). Under `cargo test` it runs a small smoke version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rampart_outbox::{Embedded, Limits, Options, Request, Store};
use tokio::time::{Instant, MissedTickBehavior};

fn order(n: u64) -> Request {
    let mut r = Request::new(Method::POST, format!("/orders?n={n}").parse().unwrap());
    r.headers = vec![(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    )];
    r.body = Bytes::from(vec![b'x'; 1024]);
    r
}

async fn open(dir: &Path) -> Embedded {
    let options = Options {
        limits: Limits {
            max_messages: 10_000_000,
            max_bytes: u64::MAX,
            ..Limits::default()
        },
        ..Options::new(dir)
    };
    Embedded::open(options).await.unwrap()
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("rampart-outbox-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Appends `count` messages from `producers` tasks; returns how long it took.
async fn fill(store: &Arc<Embedded>, producers: u64, count: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let store = store.clone();
            let n = count / producers + u64::from(p < count % producers);
            tokio::spawn(async move {
                for i in 0..n {
                    store.append("orders", order(i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Appends at `rate` per second for `seconds`, each append started on its schedule whatever the
/// earlier ones do; returns each one's latency from its scheduled start.
async fn paced(store: &Arc<Embedded>, rate: u64, seconds: u64) -> Vec<Duration> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..rate * seconds {
        let scheduled = ticks.tick().await;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.append("orders", order(i)).await.unwrap();
            scheduled.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Opens the store and takes its first message: the time until it serves again.
async fn reopen(dir: &Path) -> Duration {
    let start = Instant::now();
    let store = open(dir).await;
    let first = store.take("orders", 1, Duration::ZERO).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(first.len(), 1);
    // Give the lease back to the queue for the next run: close voids it.
    store.close().await.unwrap();
    elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The child of the crash measurement: appends until it aborts, as a crash would stop it.
    if args.get(1).map(String::as_str) == Some("crash-child") {
        crash_child(Path::new(&args[2]));
    }
    let full = args.iter().any(|a| a == "--bench");
    let messages: u64 = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if full { 100_000 } else { 2_000 });
    let (seconds, rate) = if full { (10, 1_000) } else { (1, 200) };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = fresh_dir("throughput");
        let store = Arc::new(open(&dir).await);
        for producers in [1, 16, 64] {
            let count = if full { 5_000.max(producers * 100) } else { 200 };
            let took = fill(&store, producers, count).await;
            println!(
                "throughput  {producers:>2} producers: {count} appends in {:.2} s = {:.0} messages/s",
                took.as_secs_f64(),
                count as f64 / took.as_secs_f64()
            );
        }
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let dir = fresh_dir("paced");
        let store = Arc::new(open(&dir).await);
        let latencies = paced(&store, rate, seconds).await;
        println!(
            "paced       {rate}/s for {seconds} s: p50 {}, p99 {}, p99.9 {}, max {}",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 0.999)),
            ms(percentile(&latencies, 1.0)),
        );
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let dir = fresh_dir("reopen");
        let store = Arc::new(open(&dir).await);
        let took = fill(&store, 64, messages).await;
        store.close().await.unwrap();
        let file = std::fs::metadata(dir.join(rampart_outbox::embedded::FILE_NAME)).unwrap().len();
        println!(
            "fill        {messages} messages in {:.1} s, file {:.0} MiB",
            took.as_secs_f64(),
            file as f64 / (1 << 20) as f64
        );
        for run in 1..=3 {
            println!("reopen      clean close, run {run}: {}", ms(reopen(&dir).await));
        }

        let status = Command::new(&args[0])
            .args(["crash-child", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(!status.success(), "the child aborted");
        println!("reopen      after a crash (abort mid-append): {}", ms(reopen(&dir).await));
        println!("reopen      after that, clean: {}", ms(reopen(&dir).await));
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Appends from 16 tasks and aborts the process after 500 of them returned: no destructor runs,
/// the database is left as a crash leaves it.
fn crash_child(dir: &Path) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(open(dir).await);
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..16 {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    store.append("orders", order(0)).await.unwrap();
                    if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 500 {
                        std::process::abort();
                    }
                }
            });
        }
        std::future::pending::<()>().await;
    });
    unreachable!("the child aborts")
}
