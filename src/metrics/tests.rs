//! The metric contract: handles count into the shared families, every family follows the
//! Prometheus naming conventions, and the shipped dashboard and rules read only what is exported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

#[test]
fn version_handles_count_into_the_shared_family() {
    let metrics = Metrics::new();
    let v1 = metrics.version(&Version::new("v1").unwrap());
    v1.count(200, Role::Stable);
    v1.count(200, Role::Stable);
    v1.count(503, Role::Canary);
    v1.observe(Duration::from_millis(3), Role::Canary);
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"tidegate_requests_total{code="200",grpc_status="",role="stable",version="v1"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tidegate_requests_total{code="503",grpc_status="",role="canary",version="v1"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"tidegate_request_duration_seconds_count{role="canary",version="v1"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"tidegate_build_info{version=""#), "{text}");
}

#[test]
fn grpc_calls_are_counted_by_grpc_status_beside_plain_responses() {
    use crate::grpc::Code;

    let metrics = Metrics::new();
    let v1 = metrics.version(&Version::new("v1").unwrap());
    v1.count(200, Role::Stable);
    v1.count_grpc(200, Code::OK, Role::Stable);
    v1.count_grpc(200, Code::OK, Role::Stable);
    v1.count_grpc(200, Code::UNAVAILABLE, Role::Canary);
    v1.count_grpc(200, Code::from_name("NOT_FOUND").unwrap(), Role::Stable);
    // Not 200: resolved each time, into the same series.
    v1.count_grpc(502, Code::UNAVAILABLE, Role::Stable);
    v1.count_grpc(502, Code::UNAVAILABLE, Role::Stable);
    metrics
        .unrouted()
        .count_grpc(200, Code::UNAVAILABLE, Role::Stable);
    let text = metrics.encode();
    for series in [
        r#"{code="200",grpc_status="",role="stable",version="v1"} 1"#,
        r#"{code="200",grpc_status="0",role="stable",version="v1"} 2"#,
        r#"{code="200",grpc_status="14",role="canary",version="v1"} 1"#,
        r#"{code="200",grpc_status="5",role="stable",version="v1"} 1"#,
        r#"{code="502",grpc_status="14",role="stable",version="v1"} 2"#,
        r#"{code="200",grpc_status="14",role="none",version="none"} 1"#,
    ] {
        assert!(
            text.contains(&format!("tidegate_requests_total{series}\n")),
            "{series}:\n{text}"
        );
    }
    let requests = text
        .lines()
        .filter(|l| l.starts_with("tidegate_requests_total{"))
        .count();
    assert_eq!(requests, 6, "no other series: {text}");
}

/// The text exposition with one series in every family: a labelled family with no series yet is
/// not gathered at all, so each is touched through the same API the proxy uses.
fn every_family_exposed() -> String {
    let metrics = Metrics::new();
    let v1 = metrics.version(&Version::new("v1").unwrap());
    v1.count(200, Role::Stable);
    v1.observe(Duration::from_millis(1), Role::Stable);
    metrics.set_endpoint_counts([("v1", "stable", "ready", 1)]);
    metrics.upstream_error("connect").inc();
    metrics.client_error("bad_framing").inc();
    metrics.retry("connect").inc();
    metrics.discovery_error("endpointslices").inc();
    metrics.discovery_skipped("no_port");
    metrics.set_tls_expiry("tls.crt", 1_796_548_407);
    metrics.encode()
}

/// `(name, type)` of every family, from the `# TYPE` lines.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Every series name a query can select: histograms expose `_bucket`, `_sum` and `_count`
/// series (summaries `_sum` and `_count` beside the family), never a bare histogram name.
fn selectable_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in families(text) {
        let suffixes: &[&str] = match kind.as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The identifiers in `text` that can be metric or recording-rule names (PromQL's
/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, leading digits tolerated).
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| !token.is_empty())
}

/// `tidegate_*` metric names referenced in `text`. Names with a `:` are recording rules
/// (`level:metric:operations`), checked against the rule files instead.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .filter(|token| token.starts_with("tidegate_") && !token.contains(':'))
        .map(str::to_owned)
        .collect()
}

/// Recording-rule names referenced in `text`: the identifiers with a `:` in them.
fn referenced_rules(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .filter(|token| token.contains(":tidegate_"))
        .map(str::to_owned)
        .collect()
}

/// What the shipped monitoring reads: the dashboard and every file in config/prometheus/.
fn monitoring_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("dashboards/tidegate.json")];
    let rules = root.join("config/prometheus");
    let mut yaml: Vec<PathBuf> = std::fs::read_dir(&rules)
        .expect("config/prometheus/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    yaml.sort();
    files.extend(yaml);
    files
}

/// The `record:` names defined in the rule files among `files`.
fn recorded_rules(files: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (path, text) in files {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let groups = yaml["groups"].as_sequence().into_iter().flatten();
        for rule in groups.flat_map(|g| g["rules"].as_sequence().into_iter().flatten()) {
            names.extend(rule["record"].as_str().map(str::to_owned));
        }
    }
    names
}

/// `(file, name)` for every name referenced in `files` that is not in `known`.
fn unknown(
    files: &[(PathBuf, String)],
    referenced: impl Fn(&str) -> BTreeSet<String>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    files
        .iter()
        .flat_map(|(path, text)| {
            referenced(text)
                .into_iter()
                .filter(|name| !known.contains(name))
                .map(move |name| format!("{}: {name}", path.display()))
        })
        .collect()
}

#[test]
fn dashboard_and_rules_reference_only_exported_metrics_and_defined_rules() {
    let exported = selectable_names(&every_family_exposed());
    let files: Vec<(PathBuf, String)> = monitoring_files()
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, text)
        })
        .collect();
    let dashboard = &files[0].1;
    assert!(
        referenced_metrics(dashboard).len() >= 10 && referenced_rules(dashboard).len() >= 3,
        "the dashboard must be found and read (it references metrics and recording rules)"
    );

    let missing = unknown(&files, referenced_metrics, &exported);
    assert!(
        missing.is_empty(),
        "the dashboard and rules may only read metrics tidegate exports; not exported: \
         {missing:#?}\nexported: {exported:#?}"
    );
    let recorded = recorded_rules(&files[1..]);
    let undefined = unknown(&files, referenced_rules, &recorded);
    assert!(
        undefined.is_empty(),
        "every recording rule the dashboard and alerts read must be defined in \
         config/prometheus/: {undefined:#?}"
    );
}

#[test]
fn the_reference_check_catches_a_misspelt_metric_and_skips_recording_rules() {
    let exported = selectable_names(&every_family_exposed());
    let files = [(
        PathBuf::from("dashboard.json"),
        r#"{"expr": "sum(rate(tidegate_request_total[1m])) / sum(version:tidegate_nonsense:rate1m)
            + histogram_quantile(0.9, rate(tidegate_request_duration_seconds_bucket[1m]))"}"#
            .to_owned(),
    )];
    assert_eq!(
        unknown(&files, referenced_metrics, &exported),
        ["dashboard.json: tidegate_request_total"],
        "a misspelt family must be reported; a histogram's _bucket series and a recording rule \
         must not"
    );
}

#[test]
fn every_family_has_help_and_a_conventional_name() {
    let text = every_family_exposed();
    let families = families(&text);
    assert!(
        families.len() >= 17,
        "every family is exposed: {families:?}"
    );
    for (name, kind) in &families {
        // tidegate's own, and the standard process collector's (as every Prometheus client's).
        assert!(
            name.starts_with("tidegate_") || name.starts_with("process_"),
            "{name}: one namespace prefix"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}: snake_case"
        );
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or("");
        assert!(help.len() > 20, "{name}: HELP must say what is counted");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}: counters end in _total"),
            _ => assert!(
                !name.ends_with("_total"),
                "{name}: only counters end in _total"
            ),
        }
        if kind == "histogram" || name.contains("duration") || name.contains("timestamp") {
            assert!(
                name.ends_with("_seconds"),
                "{name}: time in base unit seconds"
            );
        }
    }
}

#[test]
fn process_metrics_are_exported() {
    let text = every_family_exposed();
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing"
        );
    }
}

#[test]
fn a_departed_versions_series_go_after_the_grace_period_and_not_before() {
    let metrics = Metrics::new();
    let series = |text: &str, version: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("version=\"{version}\"")))
            .count()
    };
    for version in ["v1", "v2"] {
        let m = metrics.version(&Version::new(version).unwrap());
        m.count(200, Role::Stable);
        m.count(503, Role::Canary);
        m.observe(Duration::from_millis(1), Role::Stable);
    }
    metrics.versions_live(["v1", "v2"]);
    metrics.set_forget_after(Duration::from_secs(3600));
    metrics.versions_live(["v2"]);
    let text = metrics.encode();
    assert!(series(&text, "v1") > 0, "kept during the grace period");

    metrics.set_forget_after(Duration::ZERO);
    let text = metrics.encode();
    assert_eq!(series(&text, "v1"), 0, "{text}");
    assert!(series(&text, "v2") > 0, "live versions keep their series");

    // A version that comes back is counted again.
    let back = metrics.version(&Version::new("v1").unwrap());
    metrics.versions_live(["v1", "v2"]);
    back.count(200, Role::Stable);
    assert!(series(&metrics.encode(), "v1") > 0);
}
