//! The proof of zero-downtime: 20 rolling updates back to back on 6 replicas, every old pod killed
//! the moment its endpoint turns terminating, every tenth new pod crashing once right after
//! turning ready, under steady load.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::{Cluster, Strategy, Termination};
use crate::support::*;

/// What a churn run saw; printed for the record (run with `--nocapture`).
struct Churn {
    report: LoadReport,
    versions: BTreeSet<String>,
}

async fn churn(protections: &str) -> Churn {
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

    let mut retries = 0.0;
    for reason in ["connect", "reset", "502", "503"] {
        let series = format!(r#"tidegate_retries_total{{reason="{reason}"}}"#);
        retries += proxy.metric(&series).await.unwrap_or(0.0);
    }
    let ejections = proxy
        .metric("tidegate_ejections_total")
        .await
        .unwrap_or(0.0);
    let reached: usize = (0..=20).map(|v| cluster.hits(&format!("v{v}"))).sum();
    eprintln!(
        "churn ({}): {} requests, {} failed, {retries} retries, {ejections} ejections, {reached} \
         reached pods ({:+.2}% upstream load)",
        if protections.is_empty() {
            "protected"
        } else {
            "unprotected"
        },
        report.total(),
        report.failures.len(),
        100.0 * (reached as f64 / report.total() as f64 - 1.0),
    );
    let versions = report
        .by_body
        .keys()
        .filter_map(|body| body.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    Churn { report, versions }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rolling_updates_with_abrupt_kills_and_crashes_lose_nothing() {
    let Churn { report, versions } = churn("").await;
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
    let Churn { report, .. } =
        churn("retries: { connect_attempts: 1, on: [] }\noutlier: null").await;
    assert!(
        !report.failures.is_empty(),
        "without the protections the churn must show: it measures something"
    );
}

/// The same story five times over; by hand: `cargo test --test proxy soak -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a ~1 minute soak; the 20-update test above runs in CI"]
async fn soak_a_hundred_rolling_updates() {
    for _ in 0..5 {
        let Churn { report, .. } = churn("").await;
        let shown = &report.failures[..report.failures.len().min(5)];
        assert!(report.failures.is_empty(), "{shown:?}");
    }
}
