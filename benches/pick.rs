//! The request path's routing cost: `pick` over a loaded snapshot, and the whole per-request read
//! (`Snapshots::load` + `pick` + `Arc::clone` of the winner).
//!
//! Target: under 100 ns, and flat from 10 to 10,000 ready endpoints (the split is one compare, p2c is
//! two samples and two atomic loads whatever the size).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

mod fixtures;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tidegate::metrics::Metrics;
use tidegate::pick::{pick, pick_role, pick_version, sticky, Rng};
use tidegate::snapshot::{Publisher, Role, Settings, Snapshots};

/// Snapshot sizes: a small service, a large one, and the biggest we expect to route to.
const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// `n` ready endpoints, 90% stable `v1` and 10% canary `v2` (at least one of each), 10% weight.
fn publish(n: usize) -> (Publisher, Snapshots) {
    let (mut publisher, snapshots) = Publisher::new(Settings::default(), Arc::new(Metrics::new()));
    let canaries = (n / 10).max(1);
    publisher.publish(fixtures::desired(0, n, canaries));
    let snapshot = snapshots.load();
    assert_eq!(snapshot.routable(Role::Canary).len(), canaries);
    assert_eq!(snapshot.routable(Role::Stable).len(), n - canaries);
    drop(snapshot);
    // The publisher owns the endpoint cells' map; keep it alive like the control loop does.
    (publisher, snapshots)
}

fn bench_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for n in SIZES {
        let (_publisher, snapshots) = publish(n);
        let snapshot = Arc::clone(&snapshots.load());
        let mut rng = Rng::with_seed(1);
        group.bench_with_input(BenchmarkId::new("pick", n), &n, |b, _| {
            b.iter(|| {
                pick(black_box(&snapshot), &mut rng, &[])
                    .expect("a ready endpoint")
                    .address()
            })
        });
        group.bench_with_input(BenchmarkId::new("load_pick_clone", n), &n, |b, _| {
            b.iter(|| {
                let snapshots = black_box(&snapshots);
                let snapshot = snapshots.load();
                Arc::clone(pick(&snapshot, &mut rng, &[]).expect("a ready endpoint"))
            })
        });
        // The whole routing decision a request makes: canary header, sticky cookie, split, p2c.
        for (name, cookie) in [
            (
                "decide_sticky",
                "session=abc123; tidegate-version=v2; theme=dark",
            ),
            ("decide_split", "session=abc123; theme=dark"),
        ] {
            let headers = request_headers(cookie);
            let now = tidegate::snapshot::health::now_ms(std::time::Instant::now());
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let snapshot = black_box(&snapshots).load();
                    let headers = black_box(&headers);
                    let requested = snapshot.requested_role(headers);
                    let pinned = requested
                        .is_none()
                        .then(|| sticky::pinned_version(headers))
                        .flatten();
                    let picked = pinned
                        .and_then(|v| pick_version(&snapshot, v, &mut rng, &[], now))
                        .or_else(|| pick_role(&snapshot, &mut rng, &[], requested, now))
                        .expect("a ready endpoint");
                    (Arc::clone(picked.endpoint), picked.role)
                })
            });
        }
    }
    group.finish();
}

/// A browser-like request head.
fn request_headers(cookie: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "shop.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "ko-KR,ja;q=0.8"),
        ("accept-encoding", "gzip, br"),
        ("cookie", cookie),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
