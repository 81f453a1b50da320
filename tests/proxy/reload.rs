//! Changing the config file while traffic flows: applied atomically, nothing dropped, bad edits
//! refused with the old config still serving.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edit_is_picked_up_under_load_with_zero_failures() {
    let v1 = [
        backend("v1").pod("nginx-1.14.2-a").run().await,
        backend("v1").pod("nginx-1.14.2-b").run().await,
    ];
    let v2 = [
        backend("v2").pod("nginx-1.16.1-a").run().await,
        backend("v2").pod("nginx-1.16.1-b").run().await,
    ];
    let proxy = TestProxy::new().endpoints(&[&v1[0], &v1[1]]).start().await;
    let load = start_load(&proxy.url("/"), 6, 20_000, Duration::from_secs(30));
    wait_until("load reaches v1", Duration::from_secs(10), || async {
        v1[0].hits() + v1[1].hits() > 100
    })
    .await;

    proxy.rewrite_config(&TestProxy::new().endpoints(&[&v2[0], &v2[1]]));
    proxy
        .wait_until("the edit is published", Duration::from_secs(10), || async {
            proxy.generation().await >= 2
        })
        .await;
    let v1_hits_at_swap = v1[0].hits() + v1[1].hits();
    wait_until("load reaches v2", Duration::from_secs(10), || async {
        v2[0].hits() + v2[1].hits() > 200
    })
    .await;
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "an edit must drop nothing: {:?}",
        report.failures
    );
    // Requests already picked before the swap may still land on v1; a handful at most.
    let late = v1[0].hits() + v1[1].hits() - v1_hits_at_swap;
    assert!(
        late <= 6,
        "after the swap new requests must go to v2 only ({late} reached v1)"
    );
    assert_eq!(
        proxy
            .metric(r#"tidegate_config_reloads_total{result="success"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_the_old_config_serving() {
    let v1 = backend("v1").pod("kubia-v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&v1]).start().await;
    let before = proxy.generation().await;

    let bad = TestProxy::new()
        .endpoints(&[&v1])
        .render()
        .replace("version: v1", "version: \"not ok\"");
    proxy.write_raw_config(&bad);
    proxy
        .wait_metric(
            r#"tidegate_config_reloads_total{result="error"}"#,
            1.0,
            Duration::from_secs(10),
        )
        .await;

    assert_eq!(
        proxy.generation().await,
        before,
        "a rejected edit must not publish a snapshot"
    );
    let report = run_load(&proxy.url("/"), 2, 50).await;
    assert_eq!(
        report.ok, 50,
        "the old config must keep serving: {:?}",
        report.failures
    );
    let logged = proxy
        .logs()
        .iter()
        .any(|l| l.contains("config change rejected") && l.contains("endpoints[0].version"));
    assert!(
        logged,
        "the rejection must be logged naming the field: {:#?}",
        proxy.logs()
    );

    // A later valid edit still applies.
    let v2 = backend("v2").run().await;
    proxy.rewrite_config(&TestProxy::new().endpoints(&[&v2]));
    proxy
        .wait_until(
            "the fixed edit is published",
            Duration::from_secs(10),
            || async { proxy.generation().await > before },
        )
        .await;
    let (_, _, body) = proxy.get("/").await.unwrap();
    assert!(body.contains("This is v2"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_picked_up() {
    // Kubelet updates a mounted ConfigMap by pointing `..data` at a new directory.
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01")).unwrap();
    std::fs::write(
        root.join("..2026_01/tidegate.yaml"),
        TestProxy::new().endpoints(&[&v1]).render(),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_01", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tidegate.yaml", root.join("tidegate.yaml")).unwrap();
    let config = root.join("tidegate.yaml");
    let proxy = RunningProxy::spawn(dir, config).await;
    assert!(proxy.get("/").await.unwrap().2.contains("This is v1"));

    let root = proxy.dir.path();
    std::fs::create_dir(root.join("..2026_02")).unwrap();
    std::fs::write(
        root.join("..2026_02/tidegate.yaml"),
        TestProxy::new().endpoints(&[&v2]).render(),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_01")).unwrap();

    proxy
        .wait_until(
            "the swapped config serves v2",
            Duration::from_secs(10),
            || async {
                proxy
                    .get("/")
                    .await
                    .map(|r| r.2.contains("This is v2"))
                    .unwrap_or(false)
            },
        )
        .await;
}
