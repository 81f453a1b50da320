//! The shipped monitoring against the real thing. tidegate (the real binary) follows a paused
//! canary rollout on the fake API server under load, with a canary that answers 500 and a stable
//! pod that died; a real `prometheus` scrapes its `/metrics` through the shipped scrape config and
//! evaluates the shipped rules. Every query of `dashboards/tidegate.json` (variables substituted
//! as Grafana does, with "All" and with one selection) and every recording rule must return data
//! (those reading only gRPC series: while the scenario serves no gRPC call, evaluate without error),
//! the alerts must be quiet except the one this scenario sets off, and promtool must accept the
//! config, the rules and tidegate's metrics.

mod grafana;
mod server;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

use crate::cluster::{Cluster, Strategy};
use crate::fake_api::{endpoint_slice, SliceEndpoint};
use crate::support::*;
use grafana::{check_variables, dashboard_queries, substitute, values};
use server::{check, tool, Prometheus};

/// The pod that the example's kubernetes_sd job is shown, with the `__meta_kubernetes_*` labels
/// Prometheus' pod discovery would give it; relabelling must turn them into these labels.
const NAMESPACE: &str = "shop";
const SERVICE: &str = "tidegate";
const POD: &str = "tidegate-6f9c8d-x7k2p";

/// Alerts this scenario must set off (pending or firing); every other alert must stay inactive.
const EXPECTED_ALERTS: [&str; 1] = ["TidegateCanaryErrorRateHigh"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_query_returns_data_from_a_real_prometheus() {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    let shipped = repo("config/prometheus/prometheus.yml");
    let dashboard: Value =
        serde_json::from_str(&read(&repo("dashboards/tidegate.json"))).expect("dashboard JSON");

    // A paused rollout: 3 × v1 stable and 1 × v2 canary at the annotated 25%.
    let mut cluster = Cluster::new(
        "web",
        4,
        Strategy {
            max_surge: 1,
            max_unavailable: 0,
        },
    )
    .await;
    cluster.deploy("v1").await;
    cluster.weight_annotation = Some("25".into());
    cluster.set_image_and_pause_after("v2", 1).await;
    // A slice entry tidegate cannot use, for tidegate_discovery_skipped_total.
    let bad = SliceEndpoint::new("not-an-address", true);
    cluster
        .api
        .apply(endpoint_slice("default", "web-extra", "web", 8080, &[bad]));
    let proxy = cluster.proxy("").start().await;
    let load = start_load(&proxy.url("/"), 2, 200_000, Duration::from_secs(60));

    // The canary fails (500 is not retried, so clients see it), and a stable pod dies without
    // leaving its EndpointSlice: refused connects, connect retries and an ejection.
    pod(&cluster, "v2").backend.set_status(500);
    pod(&cluster, "v1").backend.kill();
    proxy
        .wait_until(
            "the dead pod is ejected",
            Duration::from_secs(20),
            || async {
                proxy
                    .metric("tidegate_ejections_total")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            },
        )
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, test_config(&read(&shipped), &proxy)).unwrap();
    let prom = Prometheus::start(&prometheus, &config, dir.path()).await;

    // While samples accumulate: promtool on the shipped files, the test's config and the metrics.
    let rule_files = rule_files(&shipped);
    check(&promtool, &["check", "config"], &[&shipped], "").await;
    check(&promtool, &["check", "config"], &[&config], "").await;
    let rule_paths: Vec<&Path> = rule_files.iter().map(PathBuf::as_path).collect();
    check(&promtool, &["check", "rules"], &rule_paths, "").await;
    let (_, metrics) = proxy.admin_get("/metrics").await.expect("GET /metrics");
    assert!(
        metrics.contains("tidegate_requests_total{"),
        "promtool must see real metrics: {metrics}"
    );
    check(&promtool, &["check", "metrics"], &[], &metrics).await;

    prom.wait_for_data().await;
    for alert in EXPECTED_ALERTS {
        prom.wait_for_alert(alert).await;
    }
    let rules: Vec<Rule> = rule_files.iter().flat_map(|f| rules_in(f)).collect();
    check_queries(&prom, &dashboard, &rules).await;

    // The relabelling of the Kubernetes example produces the labels the variables select on.
    let build_info = prom
        .query(r#"tidegate_build_info{job="kubernetes-tidegate"}"#)
        .await
        .unwrap();
    let labels = &build_info[0]["metric"];
    for (label, value) in [
        ("namespace", NAMESPACE),
        ("service", SERVICE),
        ("instance", POD),
    ] {
        assert_eq!(labels[label], value, "relabelling sets {label}: {labels}");
    }

    check_alerts(&prom, &rules).await;
    let report = load.stop().await;
    assert!(report.ok > 0, "load went through tidegate: {report:?}");
}

/// Every query must return data: the dashboard's with "All" and with one namespace, service and
/// instance selected, its variables' queries, and every recording rule. The one exception: while
/// the scenario has served no gRPC call, a query that reads only gRPC series (`grpc_status` set)
/// must evaluate but cannot return data; once any gRPC call is counted, it must return data too.
async fn check_queries(prom: &Prometheus, dashboard: &Value, rules: &[Rule]) {
    let grpc_served = !prom
        .query(r#"tidegate_requests_total{grpc_status!=""}"#)
        .await
        .expect("the gRPC series query evaluates")
        .is_empty();
    let all = values(dashboard, None);
    let selected = values(dashboard, Some([NAMESPACE, SERVICE, POD]));
    let mut queries = Vec::new();
    for (title, expr) in dashboard_queries(dashboard) {
        queries.push((format!("panel {title:?}, All"), substitute(&expr, &all)));
        queries.push((
            format!("panel {title:?}, {POD}"),
            substitute(&expr, &selected),
        ));
    }
    for rule in rules.iter().filter(|r| r.alert.is_none()) {
        queries.push((format!("recording rule {}", rule.name), rule.expr.clone()));
    }
    let mut failed = Vec::new();
    for (what, expr) in &queries {
        match prom.query(expr).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) if !grpc_served && reads_only_grpc(expr) => {}
            Ok(_) => failed.push(format!("{what} returned no series: {expr}")),
            Err(e) => failed.push(format!("{what} failed: {e}: {expr}")),
        }
    }
    failed.extend(check_variables(prom, dashboard, &all, &selected).await);
    assert!(
        failed.is_empty(),
        "every dashboard and recording-rule query must return at least one series:\n{}",
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The scenario and the config

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pod<'a>(cluster: &'a Cluster, version: &str) -> &'a crate::cluster::Pod {
    cluster
        .pods
        .iter()
        .find(|p| p.version == version)
        .unwrap_or_else(|| panic!("a {version} pod"))
}

/// The shipped config with its commented Kubernetes job enabled, scraping `proxy` every second.
/// Debian's Prometheus is built without Kubernetes discovery, so that job gets a static target
/// carrying the `__meta_kubernetes_*` labels pod discovery would give a tidegate pod: the
/// shipped relabelling then runs as it would in a cluster.
fn test_config(shipped: &str, proxy: &RunningProxy) -> String {
    let mut config: Yaml = serde_yaml_ng::from_str(&uncomment_kubernetes_job(shipped))
        .expect("prometheus.yml with the Kubernetes job uncommented is YAML");
    let global = &mut config["global"];
    for key in ["scrape_interval", "evaluation_interval", "scrape_timeout"] {
        global[key] = "1s".into();
    }
    let dir = repo("config/prometheus");
    let files = config["rule_files"].as_sequence_mut().expect("rule_files");
    for file in files.iter_mut() {
        *file = dir
            .join(file.as_str().unwrap())
            .display()
            .to_string()
            .into();
    }
    let target = proxy.admin.to_string();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let kubernetes = serde_yaml_ng::from_str(&format!(
        "[{{ targets: [\"{target}\"], labels: {{
            __meta_kubernetes_namespace: {NAMESPACE},
            __meta_kubernetes_pod_name: {POD},
            __meta_kubernetes_pod_phase: Running,
            __meta_kubernetes_pod_label_app_kubernetes_io_name: {SERVICE},
            __meta_kubernetes_pod_container_name: tidegate,
            __meta_kubernetes_pod_container_port_name: admin }} }}]"
    ))
    .unwrap();
    let mut names = Vec::new();
    for job in jobs.iter_mut() {
        let job = job.as_mapping_mut().unwrap();
        names.push(job["job_name"].as_str().unwrap().to_owned());
        if job.remove("kubernetes_sd_configs").is_some() {
            job.insert("static_configs".into(), Yaml::clone(&kubernetes));
        } else {
            job.insert(
                "static_configs".into(),
                serde_yaml_ng::from_str(&format!("[{{ targets: [\"{target}\"] }}]")).unwrap(),
            );
        }
    }
    assert_eq!(
        names,
        ["tidegate", "kubernetes-tidegate"],
        "the example's jobs"
    );
    serde_yaml_ng::to_string(&config).unwrap()
}

/// Uncomments the block that starts at `  # - job_name: kubernetes-tidegate`.
fn uncomment_kubernetes_job(text: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        inside |= line.starts_with("  # - job_name: kubernetes-tidegate");
        match line.strip_prefix("  # ").filter(|_| inside) {
            Some(rest) => out.push_str(&format!("  {rest}")),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(inside, "prometheus.yml has the commented Kubernetes job");
    out
}

/// The rule files the shipped config loads, resolved against its directory.
fn rule_files(config: &Path) -> Vec<PathBuf> {
    let yaml: Yaml = serde_yaml_ng::from_str(&read(config)).unwrap();
    let dir = config.parent().unwrap();
    let files: Vec<PathBuf> = yaml["rule_files"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|f| dir.join(f.as_str().expect("a rule file path")))
        .collect();
    assert!(files.len() >= 2, "recording and alert rules are loaded");
    files
}

struct Rule {
    name: String,
    /// `Some(name)` for an alerting rule.
    alert: Option<String>,
    expr: String,
}

fn rules_in(file: &Path) -> Vec<Rule> {
    let yaml: Yaml = serde_yaml_ng::from_str(&read(file)).unwrap();
    let groups = yaml["groups"].as_sequence().into_iter().flatten();
    groups
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .map(|rule| {
            let alert = rule["alert"].as_str().map(str::to_owned);
            Rule {
                name: alert
                    .clone()
                    .or_else(|| rule["record"].as_str().map(str::to_owned))
                    .expect("a rule records or alerts"),
                alert,
                expr: rule["expr"]
                    .as_str()
                    .expect("a rule has an expr")
                    .to_owned(),
            }
        })
        .collect()
}

/// Whether every `tidegate_*` selector in `expr` reads gRPC series only: a recording rule built
/// from them (`..._grpc...`), or the raw family with a `grpc_status` matcher other than `=""`.
fn reads_only_grpc(expr: &str) -> bool {
    let grpc = |s: &String| {
        s.contains("_grpc") || (s.contains("grpc_status") && !s.contains(r#"grpc_status="""#))
    };
    let selectors = selectors(expr);
    !selectors.is_empty() && selectors.iter().all(grpc)
}

#[test]
fn only_queries_of_grpc_series_may_be_empty_without_grpc_traffic() {
    assert!(reads_only_grpc(
        r#"sum(a:tidegate_requests_grpc_failures:rate1m{v=~".*"}) / sum(a:tidegate_requests_grpc:rate1m)"#
    ));
    assert!(reads_only_grpc(
        r#"rate(tidegate_requests_total{grpc_status=~"2|4"}[1m])"#
    ));
    assert!(!reads_only_grpc(
        r#"rate(tidegate_requests_total{grpc_status=""}[1m])"#
    ));
    assert!(!reads_only_grpc(
        r#"sum(a:tidegate_requests_grpc:rate1m) / sum(a:tidegate_requests:rate1m)"#
    ));
    assert!(!reads_only_grpc("vector(1)"));
}

// ---------------------------------------------------------------------------------------------
// Alerts

/// The `tidegate_*` metric and recording-rule selectors in `expr`, with their label matchers.
fn selectors(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| ident(c)) {
        let from = &rest[start..];
        let end = from.find(|c: char| !ident(c)).unwrap_or(from.len());
        let (name, after) = from.split_at(end);
        let matchers = after
            .strip_prefix('{')
            .and_then(|m| m.find('}').map(|close| &after[..close + 2]))
            .unwrap_or("");
        if name.contains("tidegate_") {
            out.push(format!("{name}{matchers}"));
        }
        rest = &after[matchers.len()..];
    }
    out
}

/// Every rule is loaded and healthy; the expected alerts are active and their expressions return
/// series; every other alert is inactive, its expression returns nothing, and each selector in
/// it returns data (so it is quiet because nothing is wrong, not because it reads nothing).
async fn check_alerts(prom: &Prometheus, rules: &[Rule]) {
    let loaded = prom.rules().await;
    let names: BTreeSet<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
    let shipped: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, shipped, "Prometheus loaded every shipped rule");
    for (name, rule) in &loaded {
        assert_eq!(rule["health"], "ok", "rule {name} evaluates: {rule}");
    }
    for rule in rules {
        let Some(alert) = &rule.alert else { continue };
        let expected = EXPECTED_ALERTS.contains(&alert.as_str());
        let state = &loaded.iter().find(|(n, _)| n == alert).unwrap().1["state"];
        let series = prom.query(&rule.expr).await.unwrap();
        if expected {
            assert_ne!(
                state, "inactive",
                "{alert} must be set off by this scenario"
            );
            assert!(!series.is_empty(), "{alert}'s expression returns the alert");
            continue;
        }
        assert_eq!(
            state, "inactive",
            "{alert} must stay quiet in this scenario"
        );
        assert!(series.is_empty(), "{alert} is quiet: {series:?}");
        // The scenario serves plain HTTP: the TLS series exist only with `tls:` configured.
        for selector in selectors(&rule.expr)
            .into_iter()
            .filter(|s| !s.contains("tidegate_tls_"))
        {
            let found = prom.query(&selector).await.unwrap();
            assert!(
                !found.is_empty(),
                "{alert} reads {selector}, which must have data"
            );
        }
    }
}
