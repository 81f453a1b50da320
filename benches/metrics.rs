//! The request path's metric writes (`VersionMetrics::count` + `observe`, once per request) from
//! one thread, and from two threads at once as two busy workers write them, against the
//! `prometheus` crate's own histogram and counter written the same way.
//!
//! Target: two threads cost no more per write than one. A shared atomic written by every core
//! moves its cache line between them on each write; the per-thread shards of
//! `metrics::sharded` do not (on the 2-core bench machine the crate's histogram went from about 9
//! to 130 ns per observe with two writers).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tidegate::metrics::Metrics;
use tidegate::snapshot::{Role, Version};

/// Runs `write` `iters` times on each of `threads` threads at once; the wall time per write.
fn concurrently(threads: usize, iters: u64, write: &(dyn Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..iters {
                    write();
                }
            });
        }
    });
    start.elapsed()
}

fn writes(c: &mut Criterion) {
    let metrics = Metrics::new();
    let v1 = metrics.version(&Version::new("v1").expect("a valid version"));
    let latency = Duration::from_micros(300);
    let theirs = prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new("h", "h")
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
    )
    .expect("valid histogram");
    let their_count = prometheus::IntCounter::new("c", "c").expect("valid counter");
    let mut group = c.benchmark_group("metrics_per_request");
    for threads in [1, 2] {
        group.bench_with_input(BenchmarkId::new("tidegate", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                concurrently(n, iters, &|| {
                    v1.count(black_box(200), Role::Stable);
                    v1.observe(black_box(latency), Role::Stable);
                })
            });
        });
        group.bench_with_input(
            BenchmarkId::new("prometheus", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    concurrently(n, iters, &|| {
                        their_count.inc();
                        theirs.observe(black_box(latency).as_secs_f64());
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
