//! Pods that die under load: connect failures are retried elsewhere, clients see nothing.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_load_gives_zero_client_errors() {
    let pods = [
        backend("v1").pod("kubia-0").run().await,
        backend("v1").pod("kubia-1").run().await,
        backend("v1").pod("kubia-2").run().await,
    ];
    // The endpoint stays listed, as it would until the endpoint controller catches up.
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .start()
        .await;
    let load = steady_load(&proxy, 8).await;

    pods[1].kill();
    load.run_for(1500, "after the kill").await;
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "a dead pod must cost clients nothing: {:?}",
        report.failures
    );
    assert!(
        report.ok >= 1500,
        "the load must have run on after the kill"
    );
    let retried = proxy
        .metric(r#"tidegate_retries_total{reason="connect"}"#)
        .await
        .unwrap_or(0.0)
        + proxy
            .metric(r#"tidegate_retries_total{reason="reset"}"#)
            .await
            .unwrap_or(0.0);
    assert!(
        retried > 0.0,
        "requests that picked the dead pod must have been retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_dead_pod_fails_requests() {
    // The same scenario with the protection off proves the test above measures something.
    let alive = backend("v1").run().await;
    let dead = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&alive, &dead])
        .yaml("retries: { connect_attempts: 1 }")
        .start()
        .await;
    dead.kill();
    let report = run_load(&proxy.url("/"), 4, 400).await;
    assert!(
        !report.failures.is_empty(),
        "with one attempt, requests picking the dead pod must fail"
    );
    assert!(
        report.failures.iter().all(|f| f.starts_with("502")),
        "{:?}",
        report.failures
    );
}
