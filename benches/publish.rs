//! The control plane's cost: `Publisher::publish` of a 10,000-endpoint set, from the `Desired` list
//! to the stored snapshot (sort, diff against the live cells, gauges, build, swap, drop the old one).
//!
//! Two cases: every address new (each publish creates 10,000 cells and drops the previous 10,000),
//! and the same set again (every cell reused). Target: under 5 ms.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

mod fixtures;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tidegate::metrics::Metrics;
use tidegate::snapshot::{Desired, Publisher, Role, Settings};

const ENDPOINTS: usize = 10_000;

/// `ENDPOINTS` ready endpoints starting at address index `first`: 90% stable `v1`, 10% canary `v2`.
fn desired(first: usize) -> Desired {
    fixtures::desired(first, ENDPOINTS, ENDPOINTS / 10)
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_10k");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);

    // Two disjoint address sets, published alternately: no cell survives from one publish to the
    // next, so every publish creates 10,000 cells and drops the previous 10,000.
    let sets = [desired(0), desired(1 << 16)];
    let (mut publisher, snapshots) = Publisher::new(Settings::default(), Arc::new(Metrics::new()));
    publisher.publish(sets[0].clone());
    let first = snapshots.load().routable(Role::Stable)[0].clone();
    publisher.publish(sets[1].clone());
    publisher.publish(sets[0].clone());
    assert!(
        !Arc::ptr_eq(&first, &snapshots.load().routable(Role::Stable)[0]),
        "an address that left the set must come back as a new cell, or this case measures reuse"
    );
    // Set 0 is live: the first iteration publishes set 1.
    let mut next = 0;
    group.bench_function("fresh_cells", |b| {
        b.iter_batched(
            || {
                next ^= 1;
                sets[next].clone()
            },
            |desired| publisher.publish(black_box(desired)),
            BatchSize::LargeInput,
        )
    });

    // The same set again: every cell is carried over.
    let same = desired(0);
    let (mut publisher, snapshots) = Publisher::new(Settings::default(), Arc::new(Metrics::new()));
    publisher.publish(same.clone());
    let first = snapshots.load().routable(Role::Stable)[0].clone();
    group.bench_function("reused_cells", |b| {
        b.iter_batched(
            || same.clone(),
            |desired| publisher.publish(black_box(desired)),
            BatchSize::LargeInput,
        )
    });
    assert!(
        Arc::ptr_eq(&first, &snapshots.load().routable(Role::Stable)[0]),
        "the reused case must keep its cells"
    );
    assert_eq!(
        snapshots.load().routable(Role::Canary).len(),
        ENDPOINTS / 10
    );
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
