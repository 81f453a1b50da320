//! Weighted canaries: the annotation, config and admin weights, when they apply, the header
//! override, and the admin API's guard.

use std::time::{Duration, Instant};

use http::Request;

use crate::cluster::{Cluster, Strategy};
use crate::support::*;

const ONE_SURGE: Strategy = Strategy {
    max_surge: 1,
    max_unavailable: 0,
};

/// The canary's share of `n` requests, and its binomial tolerance (5σ, at least 2 points is the
/// rule the issue sets; whichever is tighter would make a correct proxy fail now and then).
async fn share(proxy: &RunningProxy, version: &str, n: usize) -> f64 {
    let report = run_load(&proxy.url("/"), 8, n).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    report.count_containing(&format!("This is {version} ")) as f64 / n as f64
}

async fn canary_json(proxy: &RunningProxy) -> serde_json::Value {
    let (status, body) = proxy.admin_get("/canary").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// kubia: 4 replicas, `kubectl set image` then `kubectl rollout pause` after the first new pod.
async fn paused_kubia() -> Cluster {
    let mut cluster = Cluster::new("kubia-canary", 4, ONE_SURGE).await;
    cluster.deploy("v1").await;
    cluster.weight_annotation = Some("10".into());
    cluster.set_image_and_pause_after("v2", 1).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubia_paused_rollout_sends_the_annotated_weight_to_the_canary() {
    let mut cluster = paused_kubia().await;
    let proxy = cluster.proxy("").start().await;
    let replica = cluster.proxy("").start().await;
    for p in [&proxy, &replica] {
        p.wait_until(
            "the annotated weight applies",
            Duration::from_secs(10),
            || async {
                let c = canary_json(p).await;
                c["applies"] == true
                    && c["source"] == "annotation"
                    && c["configured_weight"] == 10.0
            },
        )
        .await;
    }

    // A Service would give the 1-of-4 (or 1-of-5) new pods 20-25%. Every replica holds 10% on its
    // own traffic. At n = 5000, σ ≈ 0.42 points, so 2 points is over 4.7σ.
    for p in [&proxy, &replica] {
        let s = share(p, "v2", 5000).await;
        assert!(
            (s - 0.10).abs() <= 0.02,
            "canary share {s:.4} must be 10% ± 2 points"
        );
    }

    // Raising the annotation under load takes effect within a second, without reconnects.
    let load = steady_load(&proxy, 4).await;
    cluster.annotate_weight("50");
    let changed = Instant::now();
    proxy
        .wait_until(
            "the new weight is in force",
            Duration::from_secs(5),
            || async { canary_json(&proxy).await["configured_weight"] == 50.0 },
        )
        .await;
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        changed.elapsed()
    );
    let s = share(&proxy, "v2", 4000).await;
    assert!(
        (s - 0.50).abs() <= 0.03,
        "canary share {s:.4} must follow the annotation to 50%"
    );

    // A bad annotation is ignored with a warning and a metric; the previous weight stays.
    cluster.annotate_weight("lots");
    proxy
        .wait_metric(
            r#"tidegate_config_errors_total{source="annotation"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(canary_json(&proxy).await["configured_weight"], 50.0);
    let report = load.stop().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_0_and_100_are_exact() {
    let mut cluster = paused_kubia().await;
    let proxy = cluster.proxy("").start().await;
    for (weight, expected) in [("0", 0.0), ("100", 1.0)] {
        cluster.annotate_weight(weight);
        proxy
            .wait_until("the weight is in force", Duration::from_secs(5), || async {
                canary_json(&proxy).await["configured_weight"].as_f64() == weight.parse().ok()
            })
            .await;
        assert_eq!(share(&proxy, "v2", 1000).await, expected, "weight {weight}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_paused_shares_by_pod_count_while_moving_and_apply_always_keeps_the_weight() {
    let mut cluster = paused_kubia().await;
    // Between two controller steps, no longer paused: 1 new pod of 4.
    cluster.set_paused(false);
    let paused_only = cluster.proxy("").start().await;
    let always = cluster
        .proxy("")
        .yaml("canary: { weight: 10, apply: always }")
        .start()
        .await;
    paused_only
        .wait_until(
            "the unpaused rollout is seen",
            Duration::from_secs(10),
            || async { canary_json(&paused_only).await["applies"] == false },
        )
        .await;
    let ready_new = cluster.pods.iter().filter(|p| p.version == "v2").count() as f64;
    let expected = ready_new / cluster.pods.len() as f64;

    let s = share(&paused_only, "v2", 4000).await;
    assert!(
        (s - expected).abs() <= 0.03,
        "not paused: share {s:.4} must follow pod count ({expected})"
    );
    let s = share(&always, "v2", 4000).await;
    assert!(
        (s - 0.10).abs() <= 0.02,
        "apply: always: share {s:.4} must be the weight"
    );
}

/// `config` in front of one `v1` and one `v2` endpoint, `v2` the canary at 10%. The endpoints live
/// as long as the returned handles.
async fn ten_percent_canary(config: TestProxy) -> (RunningProxy, [Backend; 2]) {
    let backends = [backend("v1").run().await, backend("v2").run().await];
    let proxy = config
        .endpoints(&[&backends[0], &backends[1]])
        .canary("v2", 10.0)
        .start()
        .await;
    (proxy, backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_kept_in_a_file_guards_the_admin_api() {
    let (proxy, _backends) =
        ten_percent_canary(TestProxy::new().admin_token_file("from-a-secret\n")).await;
    let put = |token: &str| {
        Request::put(format!("http://{}/canary", proxy.admin))
            .header("authorization", format!("Bearer {token}"))
            .body(full(r#"{"weight": 30}"#))
            .unwrap()
    };
    let (status, _, _) = send(proxy.client(), put("null")).await.unwrap();
    assert_eq!(status, 401, "a token is required once the file sets one");
    let (status, _, body) = send(proxy.client(), put("from-a-secret")).await.unwrap();
    assert_eq!(status, 200, "the file's token, without its newline: {body}");
    assert_eq!(canary_json(&proxy).await["configured_weight"], 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_beyond_loopback_without_a_token_refuses_to_change_anything() {
    let (proxy, _backends) = ten_percent_canary(TestProxy::new().admin_on_all_interfaces()).await;
    let url = format!("http://{}/canary", proxy.admin);
    let put = Request::put(&url).body(full(r#"{"weight": 100}"#)).unwrap();
    let (status, _, body) = send(proxy.client(), put).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("admin.token"),
        "the refusal says what to set: {body}"
    );
    let delete = Request::delete(&url).body(empty()).unwrap();
    let (status, _, _) = send(proxy.client(), delete).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(canary_json(&proxy).await["configured_weight"], 10.0);
    let (status, _) = proxy.admin_get("/metrics").await.unwrap();
    assert_eq!(status, 200, "reading stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_override_needs_the_token_and_validates_its_body() {
    let stable = [backend("v1").run().await, backend("v1").run().await];
    let canary = backend("v2").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&stable[0], &stable[1], &canary])
        .canary("v2", 10.0)
        .admin_token("s3cret")
        .start()
        .await;
    let url = format!("http://{}/canary", proxy.admin);
    let put = |token: Option<&str>, body: &str| {
        let mut b = Request::put(&url);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(full(body)).unwrap()
    };

    let (status, headers, _) = send(proxy.client(), put(None, r#"{"weight": 50}"#))
        .await
        .unwrap();
    assert_eq!(status, 401, "no token, no change");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = send(proxy.client(), put(Some("guess"), r#"{"weight": 50}"#))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _, body) = send(proxy.client(), put(Some("s3cret"), r#"{"weight": 120}"#))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("0 to 100"), "{body}");
    let (status, _, body) = send(proxy.client(), put(Some("s3cret"), "fifty"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        canary_json(&proxy).await["configured_weight"],
        10.0,
        "refused calls change nothing"
    );

    let (status, _, body) = send(proxy.client(), put(Some("s3cret"), r#"{"weight": 50}"#))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (c["source"].as_str(), c["configured_weight"].as_f64()),
        (Some("admin"), Some(50.0))
    );
    assert_eq!(proxy.metric("tidegate_canary_weight").await, Some(50.0));
    let s = share(&proxy, "v2", 4000).await;
    assert!(
        (s - 0.50).abs() <= 0.03,
        "share {s:.4} must follow the override"
    );

    let delete = Request::delete(&url)
        .header("authorization", "Bearer s3cret")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(proxy.client(), delete).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(canary_json(&proxy).await["source"], "config");
    assert_eq!(
        proxy.metric("tidegate_canary_weight_configured").await,
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_header_forces_a_role() {
    let stable = backend("v1").run().await;
    let canary = backend("v2").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&stable, &canary])
        .yaml("canary: { version: v2, weight: 50, header: x-tidegate-canary }")
        .start()
        .await;
    for (value, version) in [("always", "v2"), ("never", "v1")] {
        for _ in 0..100 {
            let req = Request::get(proxy.url("/"))
                .header("x-tidegate-canary", value)
                .body(empty())
                .unwrap();
            let (status, _, body) = send(proxy.client(), req).await.unwrap();
            assert_eq!(status, 200);
            assert!(
                body.contains(&format!("This is {version} ")),
                "`{value}` must go to {version}: {body}"
            );
        }
    }
}

/// One sticky client: `n` requests carrying whatever cookie it was last given; the versions seen.
async fn sticky_client(url: String, n: usize) -> Vec<String> {
    let client = client();
    let mut cookie: Option<String> = None;
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = Request::get(&url);
        if let Some(c) = &cookie {
            req = req.header("cookie", format!("session=1; {c}"));
        }
        let (status, headers, body) = send(&client, req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(status, 200, "{body}");
        if let Some(set) = headers.get("set-cookie") {
            cookie = Some(set.to_str().unwrap().split(';').next().unwrap().to_owned());
        }
        seen.push(body.split_whitespace().nth(2).unwrap().to_owned());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_never_flip_while_their_version_is_ready() {
    let stable = [backend("v1").run().await, backend("v1").run().await];
    let canary = backend("v2").run().await;
    let sticky = |canary_too: bool| {
        let p = TestProxy::new().endpoints(&[&stable[0], &stable[1]]);
        let p = if canary_too {
            p.endpoints(&[&canary])
        } else {
            p
        };
        p.yaml("canary: { version: v2, weight: 50, sticky: true }")
    };
    let proxy = sticky(true).start().await;

    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(sticky_client(proxy.url("/"), 1000)))
        .collect();
    let mut pinned_to_canary = 0;
    for client in clients {
        let seen = client.await.unwrap();
        assert!(
            seen.iter().all(|v| v == &seen[0]),
            "a sticky client flipped versions: {:?}",
            {
                let mut flips: Vec<_> = seen.clone();
                flips.dedup();
                flips
            }
        );
        pinned_to_canary += usize::from(seen[0] == "v2");
    }
    assert!(
        pinned_to_canary > 0 && pinned_to_canary < 8,
        "the first pick still follows the weight"
    );

    // The canary goes away: its sticky clients are re-picked and re-cookied.
    proxy.rewrite_config(&sticky(false));
    proxy
        .wait_until("the canary is gone", Duration::from_secs(10), || async {
            proxy.generation().await >= 2
        })
        .await;
    let req = Request::get(proxy.url("/"))
        .header("cookie", "tidegate-version=v2")
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(proxy.client(), req).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("This is v1 "), "{body}");
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("tidegate-version=v1;"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_aborted_and_then_gets_nothing() {
    let stable = [backend("v1").run().await, backend("v1").run().await];
    let canary = backend("v2").run().await;
    canary.set_status(500);
    let proxy = TestProxy::new()
        .endpoints(&[&stable[0], &stable[1], &canary])
        .admin_token("t")
        .yaml("canary: { version: v2, weight: 30, abort: { max_error_rate: 0.2, min_requests: 20, window: 5s } }")
        .start()
        .await;

    let load = start_load(&proxy.url("/"), 4, 100_000, Duration::from_secs(30));
    proxy
        .wait_until("the canary is aborted", Duration::from_secs(10), || async {
            !canary_json(&proxy).await["aborted"].is_null()
        })
        .await;
    let before = canary.hits();
    load.run_for(1000, "after the abort").await;
    let report = load.stop().await;
    // Requests already in flight to the canary when it was aborted may still land there.
    assert!(
        canary.hits() - before <= 8,
        "an aborted canary must receive (almost) nothing"
    );
    assert!(
        report.failures.iter().all(|f| f.starts_with("500")),
        "{:?}",
        report.failures
    );
    let status = canary_json(&proxy).await;
    assert_eq!(status["effective_weight"], 0.0);
    assert!(
        status["aborted"]["error_rate"].as_f64().unwrap() > 0.2,
        "{status}"
    );
    assert_eq!(proxy.metric("tidegate_canary_aborted").await, Some(1.0));

    // A new weight (an operator's decision) clears the abort.
    let req = Request::put(format!("http://{}/canary", proxy.admin))
        .header("authorization", "Bearer t")
        .body(full(r#"{"weight": 5}"#))
        .unwrap();
    let (status, _, body) = send(proxy.client(), req).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.metric("tidegate_canary_aborted").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_rollout_canary_is_reported_as_a_kubernetes_event() {
    let cluster = paused_kubia().await;
    let proxy = cluster
        .proxy("")
        .yaml(
            "canary: { weight: 50, abort: { max_error_rate: 0.1, min_requests: 20, window: 5s } }",
        )
        .start()
        .await;
    proxy
        .wait_until(
            "the annotated weight applies",
            Duration::from_secs(10),
            || async { canary_json(&proxy).await["applies"] == true },
        )
        .await;
    for pod in cluster.pods.iter().filter(|p| p.version == "v2") {
        pod.backend.set_status(503);
    }
    let load = start_load(&proxy.url("/"), 4, 100_000, Duration::from_secs(30));
    cluster
        .api
        .wait_request(
            "the CanaryAborted event is created",
            Duration::from_secs(15),
            |r| r.method == "POST" && r.uri.contains("/events"),
        )
        .await;
    load.stop().await;
    let events = cluster.api.list("Event");
    let event = events
        .iter()
        .find(|e| e["reason"] == "CanaryAborted")
        .unwrap_or_else(|| panic!("no CanaryAborted event: {events:?}"));
    assert_eq!(event["involvedObject"]["kind"], "Deployment");
    assert_eq!(event["involvedObject"]["name"], "kubia-canary");
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"].as_str().unwrap().contains("error rate"),
        "{event}"
    );
}
