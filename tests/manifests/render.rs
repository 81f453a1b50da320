//! `deploy/` as a user installs it: each overlay rendered by `kubectl kustomize`, every object
//! deserialized into the typed struct of its `kind` and compared with its own re-serialization.
//! k8s-openapi (and the Prometheus Operator structs below) drop fields they do not know, so a
//! misspelt or misplaced field shows up as one that was dropped: this is the schema check.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::operator::{PodMonitor, PrometheusRule};

/// Every kustomization under `deploy/` that renders on its own.
pub const OVERLAYS: [&str; 4] = ["base", "ingress", "sidecar", "monitoring"];

/// The oldest kustomize that knows components, `labels` and `replacements` as `deploy/` uses them
/// (kubectl 1.27+ embeds v5).
const MIN_KUSTOMIZE_MAJOR: u32 = 5;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// One typed object and where it came from, for messages.
pub struct Doc<T> {
    pub origin: String,
    pub object: T,
}

/// One overlay's rendering, by kind.
#[derive(Default)]
pub struct Manifests {
    pub overlay: &'static str,
    pub namespaces: Vec<Doc<Namespace>>,
    pub service_accounts: Vec<Doc<ServiceAccount>>,
    pub roles: Vec<Doc<Role>>,
    pub role_bindings: Vec<Doc<RoleBinding>>,
    pub config_maps: Vec<Doc<ConfigMap>>,
    pub deployments: Vec<Doc<Deployment>>,
    pub services: Vec<Doc<Service>>,
    pub disruption_budgets: Vec<Doc<PodDisruptionBudget>>,
    pub network_policies: Vec<Doc<NetworkPolicy>>,
    pub pod_monitors: Vec<Doc<PodMonitor>>,
    pub prometheus_rules: Vec<Doc<PrometheusRule>>,
    /// (kind, namespace) of every object, cluster-scoped ones with no namespace.
    pub placement: Vec<(String, Option<String>)>,
}

/// Whether this machine's kubectl can render `deploy/`, or why not.
fn kubectl() -> &'static Result<(), String> {
    static KUBECTL: OnceLock<Result<(), String>> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        let output = Command::new("kubectl")
            .args(["version", "--client", "-o", "json"])
            .output()
            .map_err(|e| format!("kubectl is not runnable ({e})"))?;
        let version: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("`kubectl version --client -o json` is not JSON ({e})"))?;
        let kustomize = version["kustomizeVersion"].as_str().unwrap_or("none");
        let major = kustomize
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(major) if major >= MIN_KUSTOMIZE_MAJOR => Ok(()),
            _ => Err(format!(
                "kubectl {} embeds kustomize {kustomize}; deploy/ needs v{MIN_KUSTOMIZE_MAJOR} \
                 (kubectl 1.27 or later; Debian's kubernetes-client is too old)",
                version["clientVersion"]["gitVersion"]
                    .as_str()
                    .unwrap_or("?")
            )),
        }
    })
}

/// `kubectl kustomize deploy/<overlay>`, run once per overlay for all tests.
fn rendered_text(overlay: &'static str) -> &'static str {
    static RENDERED: OnceLock<BTreeMap<&'static str, Result<String, String>>> = OnceLock::new();
    let all = RENDERED.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|&overlay| {
                let output = Command::new("kubectl")
                    .arg("kustomize")
                    .arg(deploy_dir().join(overlay))
                    .output();
                let text = match output {
                    Ok(out) if out.status.success() => {
                        String::from_utf8(out.stdout).map_err(|e| e.to_string())
                    }
                    Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                    Err(e) => Err(e.to_string()),
                };
                (overlay, text)
            })
            .collect()
    });
    match &all[overlay] {
        Ok(text) => text,
        Err(e) => panic!("kubectl kustomize deploy/{overlay} failed:\n{e}"),
    }
}

/// Every overlay rendered and typed, or `None` after saying on the terminal why this machine
/// cannot render them. The note goes straight to the process's stderr: the test harness captures
/// only `eprintln!`, and a skip must never pass silently.
pub fn rendered(test: &str) -> Option<Vec<Manifests>> {
    if let Err(reason) = kubectl() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED manifests::{test}: {reason}; install a current kubectl to render deploy/"
        );
        return None;
    }
    Some(
        OVERLAYS
            .iter()
            .map(|&overlay| {
                load(overlay, rendered_text(overlay)).unwrap_or_else(|problems| {
                    panic!(
                        "deploy/{overlay} renders objects that do not load:\n  {}",
                        problems.join("\n  ")
                    )
                })
            })
            .collect(),
    )
}

/// The non-empty documents of a multi-document YAML text, as JSON.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Through serde_yaml_ng's own Value first: it refuses duplicate keys, which a JSON map
        // would silently collapse to the last one.
        let yaml = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml)
            .map_err(|e| format!("document {}: not representable as JSON: {e}", i + 1))?;
        documents.push(json);
    }
    Ok(documents)
}

/// Deserializes `json` as `T` and checks that re-serializing gives back exactly `json`.
pub fn typed<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    diff("", json, &back, &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "not in the schema (a typed round trip changed it): {}",
            differences.join("; ")
        ))
    }
}

fn diff(path: &str, original: &Value, typed: &Value, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let path = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => diff(&path, value, other, out),
                    None => out.push(format!("{path} was dropped (unknown field here)")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key} appeared"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (value, other)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), value, other, out);
            }
        }
        _ if original == typed => {}
        _ => out.push(format!("{path}: {original} became {typed}")),
    }
}

fn push<T: DeserializeOwned + Serialize>(
    list: &mut Vec<Doc<T>>,
    origin: String,
    json: &Value,
    problems: &mut Vec<String>,
) {
    match typed(json) {
        Ok(object) => list.push(Doc { origin, object }),
        Err(e) => problems.push(format!("{origin}: {e}")),
    }
}

/// Types every object of one overlay's rendering, or lists every problem found.
pub fn load(overlay: &'static str, text: &str) -> Result<Manifests, Vec<String>> {
    let mut m = Manifests {
        overlay,
        ..Manifests::default()
    };
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let docs = documents(text).map_err(|e| vec![e])?;
    if docs.is_empty() {
        problems.push("no objects".to_owned());
    }
    for json in &docs {
        let kind = json.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = json
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let namespace = json
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let origin = format!("deploy/{overlay}: {kind} {name:?}");
        if name.is_empty() {
            problems.push(format!("{origin}: no metadata.name"));
        }
        if !seen.insert((kind.to_owned(), name.to_owned())) {
            problems.push(format!("{origin}: defined twice"));
        }
        m.placement.push((kind.to_owned(), namespace));
        let p = &mut problems;
        match kind {
            "Namespace" => push(&mut m.namespaces, origin, json, p),
            "ServiceAccount" => push(&mut m.service_accounts, origin, json, p),
            "Role" => push(&mut m.roles, origin, json, p),
            "RoleBinding" => push(&mut m.role_bindings, origin, json, p),
            "ConfigMap" => push(&mut m.config_maps, origin, json, p),
            "Deployment" => push(&mut m.deployments, origin, json, p),
            "Service" => push(&mut m.services, origin, json, p),
            "PodDisruptionBudget" => push(&mut m.disruption_budgets, origin, json, p),
            "NetworkPolicy" => push(&mut m.network_policies, origin, json, p),
            "PodMonitor" => push(&mut m.pod_monitors, origin, json, p),
            "PrometheusRule" => push(&mut m.prometheus_rules, origin, json, p),
            _ => p.push(format!(
                "{origin}: unknown kind {kind:?}; teach tests/manifests its typed struct"
            )),
        }
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(problems)
    }
}

/// The rendering of `overlay` among `all`.
pub fn overlay<'a>(all: &'a [Manifests], overlay: &str) -> &'a Manifests {
    all.iter()
        .find(|m| m.overlay == overlay)
        .unwrap_or_else(|| panic!("deploy/{overlay} was not rendered"))
}
