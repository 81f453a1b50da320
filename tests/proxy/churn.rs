//! The proof of zero-downtime: 20 rolling updates back to back on 6 replicas, every old pod killed
//! the moment its endpoint turns terminating, every tenth new pod crashing once right after
//! turning ready, under steady load.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::{Cluster, Strategy, Termination};
use crate::support::*;

async fn churn(protections: &str) -> (LoadReport, BTreeSet<String>) {
    let mut cluster = Cluster::new(
        "churn",
        6,
        Strategy {
            max_surge: 1,
            max_unavailable: 1,
        },
    )
    .await;
    cluster.termination = Termination::Abrupt;
    cluster.crash_every = 10;
    cluster.deploy("v0").await;
    let proxy = cluster.proxy("").yaml(protections).start().await;
    let load = start_load(&proxy.url("/"), 8, 2_000_000, Duration::from_secs(90));
    load.run_for(200, "before the first update").await;
    for release in 1..=20 {
        cluster.set_image(&format!("v{release}"), true).await;
    }
    load.run_for(200, "after the last update").await;
    let report = load.stop().await;
    assert!(
        !cluster.crashed.is_empty(),
        "the scenario must include crashing pods"
    );
    let versions = report
        .by_body
        .keys()
        .filter_map(|body| body.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    (report, versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rolling_updates_with_abrupt_kills_and_crashes_lose_nothing() {
    let (report, versions) = churn("").await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failures.len(),
        report.total(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        versions.len() >= 21,
        "every release served traffic: {versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_churn_without_retries_and_ejection_drops_requests() {
    let (report, _) = churn("retries: { connect_attempts: 1, on: [] }\noutlier: null").await;
    assert!(
        !report.failures.is_empty(),
        "without the protections the churn must show: it measures something"
    );
}
