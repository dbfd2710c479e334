//! What a durable append costs: 1 KiB messages into the embedded store, each append returning
//! only once its commit is fsync'd.
//!
//! - `outbox_append/sequential`: one producer, one append at a time: every append pays a whole
//!   commit and its fsync.
//! - `outbox_append/concurrent_64`: 64 producers at once; the time is per message, so its inverse
//!   is the throughput. Group commit is what makes it far lower than the sequential time.
//!
//! Run: `cargo bench -p rampart-outbox --bench enqueue`; `bench/outbox` measures latency under a
//! paced load and the restart time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Method;
use rampart_outbox::{Embedded, Limits, Options, Request, Store};
use tokio::time::Instant;

/// A POST with a 1 KiB body and a few headers, as an order would be.
fn order() -> Request {
    let mut r = Request::new(Method::POST, "/orders".parse().unwrap());
    r.headers = vec![
        (
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        ),
        (
            http::HeaderName::from_static("x-request-id"),
            http::HeaderValue::from_static("6f1c2a9e-3b1d-4c55-9d8e-2f0a7b6c5d4e"),
        ),
    ];
    r.body = Bytes::from(vec![b'x'; 1024]);
    r
}

fn store_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rampart-outbox-bench-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = store_dir("criterion");
    let store = runtime.block_on(async {
        let options = Options {
            limits: Limits {
                max_messages: u64::MAX,
                max_bytes: u64::MAX,
                ..Limits::default()
            },
            ..Options::new(&dir)
        };
        Arc::new(Embedded::open(options).await.unwrap())
    });

    let mut group = c.benchmark_group("outbox_append");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter(|| runtime.block_on(store.append("orders", order())).unwrap())
    });
    group.bench_function("concurrent_64", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                let producers: Vec<_> = (0..64)
                    .map(|p| {
                        let store = store.clone();
                        let count = iters / 64 + u64::from(p < iters % 64);
                        tokio::spawn(async move {
                            for _ in 0..count {
                                store.append("orders", order()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for p in producers {
                    p.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(store.close()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, appends);
criterion_main!(benches);
