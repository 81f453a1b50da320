//! What an operator reads besides access logs: process and load gauges, series that do not
//! outlive their versions, and log lines in words people recognise.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_load_gauges_follow_what_is_open_and_in_flight() {
    let v1 = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&v1]).start().await;
    // CPU seconds count whole seconds: present, but 0 for a young process.
    assert!(proxy.metric("process_cpu_seconds_total").await.is_some());
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        let value = proxy.metric(family).await;
        assert!(value.is_some_and(|v| v > 0.0), "{family} = {value:?}");
    }
    assert_eq!(proxy.metric("tidegate_requests_in_flight").await, Some(0.0));

    // Three slow requests at once: three in flight, three upstream connections, and the
    // clients' connections (plus the metrics client's own).
    let slow = (0..3)
        .map(|_| {
            let url = proxy.url("/slow?ms=1500");
            let client = client();
            tokio::spawn(async move { send(&client, get_request(&url)).await })
        })
        .collect::<Vec<_>>();
    proxy
        .wait_until("three in flight", Duration::from_secs(5), || async {
            proxy.metric("tidegate_requests_in_flight").await == Some(3.0)
        })
        .await;
    let upstream = proxy
        .metric(r#"tidegate_connections{side="upstream"}"#)
        .await
        .unwrap();
    assert!(upstream >= 3.0, "upstream connections {upstream}");
    let clients = proxy
        .metric(r#"tidegate_connections{side="client"}"#)
        .await
        .unwrap();
    assert!(clients >= 3.0, "client connections {clients}");
    for call in slow {
        assert_eq!(call.await.unwrap().unwrap().0, 200);
    }
    assert_eq!(proxy.metric("tidegate_requests_in_flight").await, Some(0.0));
}

#[tokio::test]
async fn a_departed_versions_series_leave_metrics_after_the_grace_period() {
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let grace = "metrics: { forget_versions_after: 1s }";
    let proxy = TestProxy::new().endpoints(&[&v1]).yaml(grace).start().await;
    assert_eq!(proxy.get("/").await.unwrap().0, 200);
    let v1_series = || async {
        proxy
            .admin_get("/metrics")
            .await
            .map(|(_, text)| {
                text.lines()
                    .filter(|l| l.starts_with("tidegate_request") && l.contains("version=\"v1\""))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(v1_series().await > 0);

    // A rollout to v2: v1 leaves the snapshot; its series stay for the grace period, then go.
    proxy.rewrite_config(&TestProxy::new().endpoints(&[&v2]).yaml(grace));
    proxy
        .wait_until("v2 serves", Duration::from_secs(10), || async {
            proxy
                .get("/")
                .await
                .is_ok_and(|(_, _, body)| body.starts_with("This is v2"))
        })
        .await;
    proxy
        .wait_until("v1's series are gone", Duration::from_secs(10), || async {
            v1_series().await == 0
        })
        .await;
    let (_, text) = proxy.admin_get("/metrics").await.unwrap();
    assert!(text.contains("version=\"v2\""), "v2's series stay");

    // The default grace is long: right after a version leaves, its series are still there.
    let kept = TestProxy::new().endpoints(&[&v1]).start().await;
    kept.get("/").await.unwrap();
    kept.rewrite_config(&TestProxy::new().endpoints(&[&v2]));
    kept.wait_until("v2 serves", Duration::from_secs(10), || async {
        kept.get("/")
            .await
            .is_ok_and(|(_, _, body)| body.starts_with("This is v2"))
    })
    .await;
    let (_, text) = kept.admin_get("/metrics").await.unwrap();
    assert!(
        text.contains("version=\"v1\""),
        "kept for 10 minutes by default"
    );
}

#[tokio::test]
async fn json_logs_are_flat_and_say_values_as_people_write_them() {
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&v1, &v2])
        .canary("v2", 10.0)
        .start()
        .await;
    let published: Value = proxy
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "published snapshot")
        .expect("the publish line");
    assert!(published.get("fields").is_none(), "{published}");
    assert_eq!(published["canary"], "v2", "{published}");
    assert_eq!(published["split"], "weighted 10%", "{published}");
    assert_eq!(published["source"], "config", "{published}");
    for line in proxy.logs() {
        assert!(
            !line.contains("Some(") && !line.contains("Weighted(") && !line.contains("Weight("),
            "Rust Debug output in a log line: {line}"
        );
    }
}
