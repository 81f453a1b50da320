//! Checks of the files under `deploy/` themselves, which need no kubectl: where the namespace and
//! the image are set, and the generated PrometheusRule against its source in `config/prometheus/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::operator::{PrometheusRule, RuleFile};
use crate::pods::assert_no_problems;
use crate::rbac::{shipped_role_grants, Grants};
use crate::render::{deploy_dir, documents, repo, typed};

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `namespace` key anywhere in a JSON value, with its path.
fn namespace_keys(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = format!("{path}.{key}");
                if key == "namespace" {
                    out.push(format!("{path} = {value}"));
                }
                namespace_keys(value, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                namespace_keys(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_namespace_is_set_only_by_kustomizations_and_never_to_default() {
    let files = yaml_files(&deploy_dir());
    assert!(files.len() >= 10, "deploy/ lost its files: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let name = relative(file);
        if name.starts_with("deploy/base/")
            && text
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("default"))
        {
            problems.push(format!("{name}: the word `default` outside a comment"));
        }
        let docs = documents(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in &docs {
            if is_kustomization(file) {
                match doc.get("namespace").and_then(Value::as_str) {
                    Some("default") => problems.push(format!("{name}: namespace: default")),
                    Some(_) if name.starts_with("deploy/base/") => {
                        problems.push(format!("{name}: base sets a namespace"))
                    }
                    _ => {}
                }
                continue;
            }
            let mut keys = Vec::new();
            namespace_keys(doc, "", &mut keys);
            for key in keys {
                problems.push(format!(
                    "{name}: {key}; set the namespace in the overlay's kustomization.yaml"
                ));
            }
        }
    }
    assert_no_problems("namespaces in deploy/", &problems);
}

#[test]
fn images_are_named_tidegate_in_sources_and_pinned_to_this_version_by_the_overlays() {
    let version = env!("CARGO_PKG_VERSION");
    let mut problems = Vec::new();
    let mut pinned = 0;
    for file in yaml_files(&deploy_dir()) {
        let name = relative(&file);
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in documents(&text).unwrap_or_else(|e| panic!("{name}: {e}")) {
            if is_kustomization(&file) {
                for image in doc["images"].as_array().into_iter().flatten() {
                    if image["name"] == "tidegate" {
                        pinned += 1;
                        if image["newTag"] != version && image["digest"].is_null() {
                            problems.push(format!(
                                "{name}: images: tidegate is tagged {}, not this version {version}",
                                image["newTag"]
                            ));
                        }
                    }
                }
                continue;
            }
            let mut images = Vec::new();
            images_in(&doc, &mut images);
            for image in images.into_iter().filter(|i| i.contains("tidegate")) {
                if image != "tidegate" {
                    problems.push(format!(
                        "{name}: image {image:?}; write `tidegate` and let the kustomization's \
                         images: set registry and tag"
                    ));
                }
            }
        }
    }
    assert!(
        pinned >= 2,
        "ingress and sidecar pin the image, found {pinned}"
    );
    assert_no_problems("images in deploy/", &problems);
}

fn images_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("image", Some(image)) => out.push(image.to_owned()),
                    _ => images_in(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| images_in(item, out)),
        _ => {}
    }
}

/// The generated PrometheusRule, typed.
fn prometheus_rule() -> PrometheusRule {
    let path = deploy_dir().join("monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/monitoring/prometheusrule.yaml");
    let docs = documents(&text).expect("YAML");
    let [doc] = &docs[..] else {
        panic!("one PrometheusRule, found {} documents", docs.len());
    };
    typed(doc).unwrap_or_else(|e| panic!("prometheusrule.yaml: {e}"))
}

#[test]
fn the_prometheus_rule_holds_exactly_the_groups_of_config_prometheus() {
    let rule = prometheus_rule();
    assert_eq!(rule.api_version, crate::operator::API_VERSION);
    assert_eq!(rule.kind, "PrometheusRule");
    let mut expected = Vec::new();
    for file in ["tidegate-rules.yml", "tidegate-alerts.yml"] {
        let path = repo().join("config/prometheus").join(file);
        let text = std::fs::read_to_string(&path).expect("a rule file");
        let docs = documents(&text).expect("YAML");
        let parsed: RuleFile = typed(&docs[0]).unwrap_or_else(|e| panic!("{file}: {e}"));
        expected.extend(parsed.groups);
    }
    assert!(
        expected.iter().map(|g| g.rules.len()).sum::<usize>() >= 10,
        "the recording rules and the alerts"
    );
    assert_eq!(
        rule.spec.groups, expected,
        "deploy/monitoring/prometheusrule.yaml differs from config/prometheus/: run \
         deploy/monitoring/generate.sh"
    );
}

#[test]
fn the_prometheus_rule_file_is_what_generate_sh_writes_today() {
    let output = Command::new("bash")
        .arg(deploy_dir().join("monitoring/generate.sh"))
        .arg("--stdout")
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read_to_string(deploy_dir().join("monitoring/prometheusrule.yaml"))
        .expect("the committed file");
    assert!(
        String::from_utf8_lossy(&output.stdout) == committed,
        "deploy/monitoring/prometheusrule.yaml was edited by hand or config/prometheus/ changed \
         since it was generated: run deploy/monitoring/generate.sh"
    );
}

#[test]
fn every_tidegate_config_under_deploy_passes_tidegate_validate() {
    let configs: Vec<PathBuf> = yaml_files(&deploy_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "tidegate.yaml"))
        .collect();
    assert!(
        configs.len() >= 2,
        "the tier's and the sidecar's: {configs:?}"
    );
    for path in configs {
        let output = Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .expect("tidegate runs");
        assert!(
            output.status.success(),
            "{}: {}",
            relative(&path),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// What the table under `## RBAC` in deploy/README.md says the Role grants: rows of
/// | `group` | `resource`, ... | verb, verb | why |.
fn documented_grants() -> Grants {
    let text = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    let section = text
        .split("\n## RBAC\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("an RBAC section");
    let mut grants = Grants::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [_, group, resources, verbs, ..] = cells[..] else {
            panic!("a row of four cells: {row}");
        };
        let group = group.trim_matches('`').trim_matches('"');
        for resource in resources.split(',').map(|r| r.trim().trim_matches('`')) {
            for verb in verbs.split(',').map(str::trim) {
                grants.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
            }
        }
    }
    grants
}

#[test]
fn the_rbac_documentation_lists_exactly_what_the_role_grants() {
    let granted = shipped_role_grants();
    assert!(granted.len() >= 10, "the Role was read: {granted:?}");
    assert_eq!(
        documented_grants(),
        granted,
        "deploy/README.md's RBAC table and base/rbac/rbac.yaml disagree"
    );
}
