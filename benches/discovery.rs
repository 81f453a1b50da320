//! One EndpointSlice event on a 5,000-endpoint Service (50 slices × 100): merge every slice into
//! the endpoint set, build the specs, and publish the snapshot — the work tidegate does between a
//! watch event and the new snapshot being visible to requests. Target: under 5 ms.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tidegate::config::PortRef;
use tidegate::discovery::slices;
use tidegate::metrics::Metrics;
use tidegate::snapshot::{
    Desired, EndpointSpec, EndpointState, Publisher, Role, Settings, Split, Version,
};

fn slice(index: usize, rv: u64, ready_flip: bool) -> EndpointSlice {
    let endpoints: Vec<_> = (0..100)
        .map(|i| {
            let n = index * 100 + i;
            json!({
                "addresses": [format!("127.{}.{}.{}", 10 + n / 65_536, (n / 256) % 256, n % 256)],
                "conditions": { "ready": !(ready_flip && i == 0) },
                "targetRef": { "kind": "Pod", "name": format!("web-{n}") },
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("web-{index}"), "resourceVersion": rv.to_string() },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080 }],
        "endpoints": endpoints,
    }))
    .expect("a valid EndpointSlice")
}

fn one_slice_event(c: &mut Criterion) {
    let mut slices_now: Vec<EndpointSlice> =
        (0..50).map(|i| slice(i, i as u64 + 1, false)).collect();
    let version = Version::new("5d8f7c9b6").expect("a valid version");
    let port = PortRef::Name("http".into());
    let (mut publisher, snapshots) = Publisher::new(Settings::default(), Arc::new(Metrics::new()));
    let mut rv = 1_000;
    let mut group = c.benchmark_group("discovery_5000_endpoints_50_slices");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group.bench_function("slice_event_to_published_snapshot", |b| {
        b.iter_batched(
            || {
                // The event: one slice rewritten with one endpoint's readiness flipped.
                rv += 1;
                slice(7, rv, rv % 2 == 0)
            },
            |event| {
                slices_now[7] = event;
                let (observed, _) = slices::merge(slices_now.iter(), Some(&port));
                let endpoints = observed
                    .into_iter()
                    .map(|e| {
                        let spec = EndpointSpec {
                            address: e.address,
                            version: version.clone(),
                            state: match e.condition {
                                slices::Condition::Ready => EndpointState::Ready,
                                _ => EndpointState::NotReady,
                            },
                            name: e.pod.map(Arc::from),
                            image: None,
                            protocol: None,
                        };
                        (spec, Role::Stable)
                    })
                    .collect();
                publisher.publish(Desired {
                    endpoints,
                    split: Split::ByEndpointCount,
                    canary_version: None,
                    canary_header: None,
                    settings: Settings::default(),
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(snapshots.load().listed().len(), 5_000);
}

criterion_group!(benches, one_slice_event);
criterion_main!(benches);
