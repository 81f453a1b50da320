//! Offline checks of the Kubernetes manifests in `config/kubernetes/` and of the image recipe: no
//! cluster, no kubectl, no container runtime.
//!
//! Every document of every `*.yaml` there is deserialized into the k8s-openapi type of its `kind`
//! (an unknown kind fails) and compared with its own re-serialization: k8s-openapi ignores fields
//! it does not know, so a misspelt or misplaced field shows up as one that was dropped. On top of
//! that schema check come the properties the manifests promise: the Role's exact grants, embedded
//! configs that the real `tidegate validate` accepts, hardened containers, probes and Services that
//! point at ports tidegate really listens on, and grace periods that outlast the drain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidegate::config::{Config, DiscoveryConfig};

// ---------------------------------------------------------------------------------------------
// Loading: every document, typed by kind, with the schema (round-trip) check.

/// One typed document and where it came from, for messages.
struct Doc<T> {
    origin: String,
    object: T,
}

#[derive(Default)]
struct Manifests {
    service_accounts: Vec<Doc<ServiceAccount>>,
    roles: Vec<Doc<Role>>,
    role_bindings: Vec<Doc<RoleBinding>>,
    config_maps: Vec<Doc<ConfigMap>>,
    deployments: Vec<Doc<Deployment>>,
    services: Vec<Doc<Service>>,
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubernetes")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("config/kubernetes/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The non-empty documents of one multi-document YAML file, as JSON.
fn documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut documents = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        // Through serde_yaml_ng's own Value first: it refuses duplicate keys, which a JSON map
        // would silently collapse to the last one.
        let yaml = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if yaml.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let json = serde_json::to_value(&yaml)
            .map_err(|e| format!("document {}: not representable as JSON: {e}", i + 1))?;
        documents.push(json);
    }
    Ok(documents)
}

/// Deserializes `json` as `T` and checks that re-serializing gives back exactly `json`.
fn typed<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, String> {
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

/// Everything in config/kubernetes/, or every problem found while loading it.
fn load() -> Result<Manifests, Vec<String>> {
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let files = manifest_files();
    if files.is_empty() {
        problems.push("no *.yaml in config/kubernetes/".to_owned());
    }
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let docs = match documents(&file) {
            Ok(docs) => docs,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if docs.is_empty() {
            problems.push(format!("{name}: no documents"));
        }
        for (i, json) in docs.iter().enumerate() {
            let kind = json.get("kind").and_then(Value::as_str).unwrap_or("");
            let object_name = json
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let origin = format!("{name} document {} ({kind} {object_name:?})", i + 1);
            if object_name.is_empty() {
                problems.push(format!("{origin}: no metadata.name"));
            }
            if !seen.insert((kind.to_owned(), object_name.to_owned())) {
                problems.push(format!("{origin}: defined twice"));
            }
            let m = &mut manifests;
            match kind {
                "ServiceAccount" => push(&mut m.service_accounts, origin, json, &mut problems),
                "Role" => push(&mut m.roles, origin, json, &mut problems),
                "RoleBinding" => push(&mut m.role_bindings, origin, json, &mut problems),
                "ConfigMap" => push(&mut m.config_maps, origin, json, &mut problems),
                "Deployment" => push(&mut m.deployments, origin, json, &mut problems),
                "Service" => push(&mut m.services, origin, json, &mut problems),
                _ => problems.push(format!(
                    "{origin}: unknown kind {kind:?}; teach tests/manifests.rs its k8s-openapi type"
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(problems)
    }
}

/// The manifests, for the tests that check properties; a load failure fails them too.
fn manifests() -> Manifests {
    load().unwrap_or_else(|problems| panic!("manifests do not load:\n{}", problems.join("\n")))
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn find<'a, T>(list: &'a [Doc<T>], name: &str, meta: impl Fn(&T) -> &str) -> Option<&'a T> {
    list.iter()
        .map(|d| &d.object)
        .find(|object| meta(object) == name)
}

// ---------------------------------------------------------------------------------------------
// Pods and containers.

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("a Deployment has spec.template.spec")
}

/// Every container of a pod: init containers (native sidecars among them) and the main ones.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

/// Containers that run for the pod's life: the main ones and native sidecars.
fn long_running(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .chain(&spec.containers)
}

/// A container runs tidegate when its image's repository is named `tidegate`.
fn is_tidegate(container: &Container) -> bool {
    let image = container.image.as_deref().unwrap_or("");
    let image = image.split('@').next().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    last.split(':').next() == Some("tidegate")
}

/// The number a probe or Service port refers to, resolving a port name in `containers`.
fn resolve_port<'a>(
    port: &IntOrString,
    mut containers: impl Iterator<Item = &'a Container>,
) -> Option<i32> {
    match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => containers.find_map(|c| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }),
    }
}

fn pre_stop_seconds(container: &Container) -> i64 {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds)
}

// ---------------------------------------------------------------------------------------------
// tidegate configs embedded in ConfigMaps.

/// An embedded config through tidegate's own parser and validation.
fn parse_config(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("tidegate.yaml")).map_err(|e| e.to_string())
}

/// Every `tidegate.yaml` held by a ConfigMap: (origin, namespace, text).
fn embedded_configs(m: &Manifests) -> Vec<(String, String, String)> {
    m.config_maps
        .iter()
        .filter_map(|doc| {
            let text = doc.object.data.as_ref()?.get("tidegate.yaml")?;
            Some((
                doc.origin.clone(),
                namespace_of(&doc.object.metadata).to_owned(),
                text.clone(),
            ))
        })
        .collect()
}

/// The config file a tidegate container is started with, found through its `--config` argument,
/// the volume mounted there and the ConfigMap behind that volume.
fn config_of<'a>(
    m: &'a Manifests,
    namespace: &str,
    spec: &PodSpec,
    container: &Container,
) -> Result<&'a str, String> {
    let args = container.args.as_deref().unwrap_or_default();
    let [proxy, flag, path] = args else {
        return Err(format!(
            "args should be [proxy, --config, PATH], not {args:?}"
        ));
    };
    if proxy != "proxy" || flag != "--config" {
        return Err(format!(
            "args should be [proxy, --config, PATH], not {args:?}"
        ));
    }
    let (directory, file) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("--config {path} is not an absolute path"))?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.mount_path.trim_end_matches('/') == directory)
        .ok_or_else(|| format!("nothing is mounted at {directory} for --config {path}"))?;
    if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
        return Err(format!(
            "{directory} is a subPath mount: ConfigMap updates would never reach tidegate"
        ));
    }
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .ok_or_else(|| format!("no volume {:?}", mount.name))?;
    let source = volume
        .config_map
        .as_ref()
        .ok_or_else(|| format!("volume {:?} is not a ConfigMap", volume.name))?;
    if source.items.is_some() {
        return Err(format!(
            "volume {:?} remaps keys with items; mount the whole ConfigMap",
            volume.name
        ));
    }
    let config_map = m
        .config_maps
        .iter()
        .map(|d| &d.object)
        .find(|c| name_of(&c.metadata) == source.name && namespace_of(&c.metadata) == namespace)
        .ok_or_else(|| format!("ConfigMap {:?} is not in config/kubernetes/", source.name))?;
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .map(String::as_str)
        .ok_or_else(|| format!("ConfigMap {:?} has no key {file:?}", source.name))
}

fn run_validate(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, text).expect("the config is written");
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("tidegate runs")
}

/// What `validate` cannot know: that the watched namespace is the one the Role grants. An embedded
/// config names none: tidegate then watches the pod's own namespace, which is the manifests'.
fn check_kubernetes_discovery(origin: &str, namespace: &str, config: &Config) -> Vec<String> {
    match &config.discovery {
        DiscoveryConfig::Kubernetes(k) if k.namespace.is_some() => vec![format!(
            "{origin}: discovery.kubernetes.namespace {:?} is set: leave it out so that tidegate \
             watches the namespace it is installed in ({namespace:?} here), which the Role grants",
            k.namespace
        )],
        DiscoveryConfig::Kubernetes(_) => Vec::new(),
        DiscoveryConfig::Static { .. } => {
            vec![format!(
                "{origin}: the config does not use discovery.kubernetes"
            )]
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn every_document_has_a_known_kind_and_loses_no_field_in_its_typed_round_trip() {
    let manifests = load().unwrap_or_else(|problems| {
        panic!(
            "config/kubernetes/ has problems:\n  {}",
            problems.join("\n  ")
        )
    });
    // The set the README documents; a file that went missing would otherwise pass unnoticed.
    assert!(!manifests.service_accounts.is_empty(), "no ServiceAccount");
    assert!(!manifests.roles.is_empty(), "no Role");
    assert!(!manifests.role_bindings.is_empty(), "no RoleBinding");
    assert!(!manifests.config_maps.is_empty(), "no ConfigMap");
    assert!(manifests.deployments.len() >= 2, "standalone and sidecar");
    assert!(manifests.services.len() >= 2, "tidegate and web");
}

#[test]
fn the_round_trip_check_catches_a_misspelt_or_misplaced_field() {
    let misspelt: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "x", "namepsace": "default" }
    });
    let error = typed::<ServiceAccount>(&misspelt).unwrap_err();
    assert!(error.contains(".metadata.namepsace was dropped"), "{error}");

    let misplaced: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "x" },
        "spec": { "ports": [{ "port": 80 }] },
        "selector": { "app": "x" }
    });
    let error = typed::<Service>(&misplaced).unwrap_err();
    assert!(error.contains(".selector was dropped"), "{error}");

    let wrong_api_version: Value = serde_json::json!({
        "apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": { "name": "x" }
    });
    assert!(typed::<Deployment>(&wrong_api_version).is_err());
}

#[test]
fn the_role_grants_exactly_list_and_watch_on_the_four_resources_getting_services_and_creating_events(
) {
    let m = manifests();
    let role = find(&m.roles, "tidegate", |r| name_of(&r.metadata)).expect("Role tidegate");
    let mut granted = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        if rule.resource_names.is_some() || rule.non_resource_urls.is_some() {
            problems.push(format!("rule {i} has resourceNames or nonResourceURLs"));
        }
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if groups.is_empty() || resources.is_empty() || rule.verbs.is_empty() {
            problems.push(format!("rule {i} lacks apiGroups, resources or verbs"));
        }
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    assert_no_problems("Role tidegate", &problems);
    let expected: BTreeSet<(String, String, String)> = [
        ("discovery.k8s.io", "endpointslices"),
        ("", "pods"),
        ("apps", "replicasets"),
        ("apps", "deployments"),
    ]
    .into_iter()
    .flat_map(|(group, resource)| {
        ["list", "watch"].map(|verb| (group.to_owned(), resource.to_owned(), verb.to_owned()))
    })
    .chain([
        (String::new(), "events".to_owned(), "create".to_owned()),
        (String::new(), "services".to_owned(), "get".to_owned()),
    ])
    .collect();
    assert_eq!(
        granted, expected,
        "Role tidegate: (apiGroup, resource, verb)"
    );
}

#[test]
fn the_role_is_bound_to_the_service_account_the_tidegate_pods_run_as() {
    let m = manifests();
    let account = find(&m.service_accounts, "tidegate", |a| name_of(&a.metadata))
        .expect("ServiceAccount tidegate");
    let role = find(&m.roles, "tidegate", |r| name_of(&r.metadata)).expect("Role tidegate");
    let namespace = namespace_of(&account.metadata);
    assert_eq!(namespace_of(&role.metadata), namespace);

    let binding =
        find(&m.role_bindings, "tidegate", |b| name_of(&b.metadata)).expect("RoleBinding tidegate");
    assert_eq!(namespace_of(&binding.metadata), namespace);
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "tidegate");
    let subjects: Vec<_> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect();
    assert_eq!(
        subjects,
        [("ServiceAccount", "tidegate", Some(namespace))],
        "RoleBinding subjects"
    );

    let mut problems = Vec::new();
    for doc in &m.deployments {
        let spec = pod_spec(&doc.object);
        let Some(tidegate) = all_containers(spec).find(|c| is_tidegate(c)) else {
            continue;
        };
        if spec.service_account_name.as_deref() != Some("tidegate") {
            problems.push(format!(
                "{}: serviceAccountName is not tidegate",
                doc.origin
            ));
        }
        if namespace_of(&doc.object.metadata) != namespace {
            problems.push(format!("{}: not in the namespace of the Role", doc.origin));
        }
        // Without the automatic token mount, tidegate needs its own projected token volume.
        if spec.automount_service_account_token == Some(false) {
            let mounted = tidegate.volume_mounts.iter().flatten().any(|mount| {
                mount.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"
                    && spec.volumes.iter().flatten().any(|v| {
                        v.name == mount.name
                            && v.projected.as_ref().is_some_and(|p| {
                                p.sources
                                    .iter()
                                    .flatten()
                                    .any(|s| s.service_account_token.is_some())
                            })
                    })
            });
            if !mounted {
                problems.push(format!(
                    "{}: automountServiceAccountToken is false and the tidegate container \
                     mounts no projected ServiceAccount token",
                    doc.origin
                ));
            }
        }
    }
    assert_no_problems("tidegate pods and their ServiceAccount", &problems);
}

#[test]
fn embedded_configs_pass_tidegate_validate() {
    let m = manifests();
    let configs = embedded_configs(&m);
    assert!(!configs.is_empty(), "no ConfigMap holds a tidegate.yaml");
    let mut problems = Vec::new();
    for (origin, namespace, text) in &configs {
        // The real binary, as an operator would check the file...
        let output = run_validate(text);
        if !output.status.success() {
            problems.push(format!(
                "{origin}: tidegate validate exited {:?}: {}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            continue;
        }
        // ...and the typed config, for what only the manifests can tell.
        match parse_config(text) {
            Ok(config) => problems.extend(check_kubernetes_discovery(origin, namespace, &config)),
            Err(e) => problems.push(format!("{origin}: {e}")),
        }
    }
    assert_no_problems("embedded tidegate configs", &problems);
}

#[test]
fn every_container_is_hardened_and_has_resources() {
    let m = manifests();
    let mut problems = Vec::new();
    for doc in &m.deployments {
        for container in all_containers(pod_spec(&doc.object)) {
            let at = format!("{} container {:?}", doc.origin, container.name);
            let Some(sc) = container.security_context.as_ref() else {
                problems.push(format!("{at}: no securityContext"));
                continue;
            };
            if sc.run_as_non_root != Some(true) {
                problems.push(format!("{at}: runAsNonRoot is not true"));
            }
            if sc.read_only_root_filesystem != Some(true) {
                problems.push(format!("{at}: readOnlyRootFilesystem is not true"));
            }
            if sc.allow_privilege_escalation != Some(false) {
                problems.push(format!("{at}: allowPrivilegeEscalation is not false"));
            }
            if sc.privileged == Some(true) {
                problems.push(format!("{at}: privileged"));
            }
            let caps = sc.capabilities.as_ref();
            if !caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|c| c == "ALL"))
            {
                problems.push(format!("{at}: capabilities.drop lacks ALL"));
            }
            if caps
                .and_then(|c| c.add.as_ref())
                .is_some_and(|a| !a.is_empty())
            {
                problems.push(format!("{at}: capabilities.add is not empty"));
            }
            if sc.run_as_user == Some(0) {
                problems.push(format!("{at}: runAsUser 0"));
            }
            let resources = container.resources.as_ref();
            for (what, list) in [
                ("requests", resources.and_then(|r| r.requests.as_ref())),
                ("limits", resources.and_then(|r| r.limits.as_ref())),
            ] {
                for key in ["cpu", "memory"] {
                    if !list.is_some_and(|l| l.contains_key(key)) {
                        problems.push(format!("{at}: no resources.{what}.{key}"));
                    }
                }
            }
        }
    }
    assert_no_problems("container hardening", &problems);
}

#[test]
fn tidegate_containers_run_their_config_and_are_probed_where_it_listens() {
    let m = manifests();
    let mut problems = Vec::new();
    let mut seen = 0;
    for doc in &m.deployments {
        let namespace = namespace_of(&doc.object.metadata);
        let spec = pod_spec(&doc.object);
        for container in all_containers(spec).filter(|c| is_tidegate(c)) {
            seen += 1;
            let at = format!("{} container {:?}", doc.origin, container.name);
            let config = match config_of(&m, namespace, spec, container).and_then(parse_config) {
                Ok(config) => config,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let is_init = spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| std::ptr::eq(c, container));
            if is_init && container.restart_policy.as_deref() != Some("Always") {
                problems.push(format!(
                    "{at}: an init container that is not a native sidecar (restartPolicy: Always) \
                     would block the pod's start forever"
                ));
            }
            let probes: [(&str, Option<&Probe>, &str); 2] = [
                (
                    "readinessProbe",
                    container.readiness_probe.as_ref(),
                    "/readyz",
                ),
                (
                    "livenessProbe",
                    container.liveness_probe.as_ref(),
                    "/healthz",
                ),
            ];
            for (what, probe, path) in probes {
                match probe.and_then(|p| p.http_get.as_ref()) {
                    Some(get) if get.path.as_deref() == Some(path) => {}
                    _ => problems.push(format!("{at}: {what} should be httpGet {path}")),
                }
            }
            // Every httpGet probe must reach the admin API: its port, on an address the kubelet
            // can reach (the pod IP, so not loopback).
            let http_probes = [
                &container.startup_probe,
                &container.readiness_probe,
                &container.liveness_probe,
            ];
            for get in http_probes
                .into_iter()
                .flatten()
                .filter_map(|p| p.http_get.as_ref())
            {
                if get.host.is_some() {
                    problems.push(format!(
                        "{at}: a probe sets host; the kubelet must probe the pod IP"
                    ));
                }
                let port = resolve_port(&get.port, std::iter::once(container));
                if port != Some(i32::from(config.admin.listen.port())) {
                    problems.push(format!(
                        "{at}: probe port {:?} is {port:?}, but admin.listen is {}",
                        get.port, config.admin.listen
                    ));
                }
                if config.admin.listen.ip().is_loopback() {
                    problems.push(format!(
                        "{at}: probes target admin.listen {}, which the kubelet cannot reach",
                        config.admin.listen
                    ));
                }
            }
            // Declared ports are the ones tidegate listens on.
            for port in container.ports.iter().flatten() {
                let listens = [config.listen, config.admin.listen]
                    .iter()
                    .any(|a| i32::from(a.port()) == port.container_port && !a.ip().is_loopback());
                if !listens {
                    problems.push(format!(
                        "{at}: port {:?} {} is not where tidegate listens (listen {}, admin {})",
                        port.name, port.container_port, config.listen, config.admin.listen
                    ));
                }
            }
            // Shutdown: every preStop sleep plus the drain fit in the grace period.
            let grace = spec.termination_grace_period_seconds.unwrap_or(30);
            let pre_stop = all_containers(spec)
                .map(pre_stop_seconds)
                .max()
                .unwrap_or(0);
            let needed = config.timeouts.drain.as_secs_f64() + pre_stop as f64;
            if (grace as f64) <= needed {
                problems.push(format!(
                    "{at}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s \
                     + timeouts.drain {:?}",
                    config.timeouts.drain
                ));
            }
            if !matches!(config.discovery, DiscoveryConfig::Kubernetes(_)) {
                problems.push(format!(
                    "{at}: the config does not use discovery.kubernetes"
                ));
            }
        }
    }
    assert!(
        seen >= 2,
        "expected a standalone and a sidecar tidegate, found {seen}"
    );
    assert_no_problems("tidegate containers", &problems);
}

#[test]
fn the_standalone_deployment_and_service_are_as_documented() {
    let m = manifests();
    let deployment =
        find(&m.deployments, "tidegate", |d| name_of(&d.metadata)).expect("Deployment tidegate");
    assert_eq!(deployment.spec.replicas, Some(2));
    let spec = pod_spec(deployment);
    let container = spec
        .containers
        .iter()
        .find(|c| is_tidegate(c))
        .expect("a tidegate container");
    assert_eq!(container.image.as_deref(), Some("tidegate:latest"));
    assert!(
        pre_stop_seconds(container) > 0,
        "a preStop sleep lets endpoint removal propagate before the drain"
    );
    let service =
        find(&m.services, "tidegate", |s| name_of(&s.metadata)).expect("Service tidegate");
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("Service tidegate has ports");
    assert_eq!(
        ports.len(),
        1,
        "only the proxy port; admin stays off the Service"
    );
    assert_eq!(ports[0].port, 80);
    let target = ports[0].target_port.as_ref().expect("a targetPort");
    assert_eq!(resolve_port(target, spec.containers.iter()), Some(8080));
}

#[test]
fn deployments_select_their_pods_and_services_reach_declared_ports() {
    let m = manifests();
    let mut problems = Vec::new();
    for doc in &m.deployments {
        let spec = &doc.object.spec;
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        let labels = labels.unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        if selector.is_empty() || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            problems.push(format!(
                "{}: selector {selector:?} does not match the template labels {labels:?}",
                doc.origin
            ));
        }
        for volume in pod_spec(&doc.object).volumes.iter().flatten() {
            if let Some(source) = &volume.config_map {
                if find(&m.config_maps, &source.name, |c| name_of(&c.metadata)).is_none() {
                    problems.push(format!(
                        "{}: volume {:?} uses ConfigMap {:?}, which is not defined here",
                        doc.origin, volume.name, source.name
                    ));
                }
            }
        }
    }
    for doc in &m.services {
        let spec = doc.object.spec.as_ref().expect("spec");
        let selector: BTreeMap<String, String> = spec.selector.clone().unwrap_or_default();
        let matching: Vec<&Deployment> = m
            .deployments
            .iter()
            .map(|d| &d.object)
            .filter(|d| namespace_of(&d.metadata) == namespace_of(&doc.object.metadata))
            .filter(|d| {
                let labels = d
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref());
                !selector.is_empty()
                    && selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect();
        let [deployment] = matching[..] else {
            problems.push(format!(
                "{}: selector {selector:?} matches {} Deployments, not 1",
                doc.origin,
                matching.len()
            ));
            continue;
        };
        let pod = pod_spec(deployment);
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            let declared = long_running(pod)
                .flat_map(|c| c.ports.iter().flatten())
                .any(|p| Some(p.container_port) == resolve_port(&target, long_running(pod)));
            if !declared {
                problems.push(format!(
                    "{}: port {:?} targets {target:?}, which no container declares",
                    doc.origin, port.name
                ));
            }
        }
    }
    // A config that discovers a Service defined here must name one of its ports.
    for (origin, namespace, text) in embedded_configs(&m) {
        let Ok(raw) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
            continue; // reported by embedded_configs_pass_tidegate_validate
        };
        let Some(kubernetes) = raw.get("discovery").and_then(|d| d.get("kubernetes")) else {
            continue;
        };
        let service_name = kubernetes
            .get("service")
            .and_then(|s| s.as_str())
            .unwrap_or("");
        let Some(service) = m.services.iter().map(|d| &d.object).find(|s| {
            name_of(&s.metadata) == service_name && namespace_of(&s.metadata) == namespace
        }) else {
            continue; // an upstream outside these manifests (sidecar.yaml's `api`)
        };
        let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        // EndpointSlice ports carry the Service port's name and the target port's number.
        let found = match kubernetes.get("port") {
            Some(p) if p.as_str().is_some() => ports
                .into_iter()
                .flatten()
                .any(|sp| sp.name.as_deref() == p.as_str()),
            Some(p) => ports.into_iter().flatten().any(|sp| {
                sp.target_port
                    .as_ref()
                    .map_or(Some(sp.port), |t| match t {
                        IntOrString::Int(n) => Some(*n),
                        IntOrString::String(_) => None, // a number cannot be checked against a name
                    })
                    .is_none_or(|n| p.as_u64() == u64::try_from(n).ok())
            }),
            None => false,
        };
        if !found {
            problems.push(format!(
                "{origin}: discovery.kubernetes.port {:?} is not a port of Service {service_name:?}",
                kubernetes.get("port")
            ));
        }
    }
    assert_no_problems("selectors and ports", &problems);
}

// ---------------------------------------------------------------------------------------------
// The container image recipe, checked statically (no image can be built offline here).

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped: (stage, line).
fn dockerfile() -> Vec<(usize, String)> {
    let text = repo_file("Dockerfile");
    let mut out = Vec::new();
    let (mut stage, mut pending) = (0, String::new());
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let instruction = std::mem::take(&mut pending);
                if instruction.starts_with("FROM ") {
                    stage += 1;
                }
                out.push((stage, instruction));
            }
        }
    }
    out
}

#[test]
fn the_image_builds_the_release_binary_in_a_pinned_builder_and_ships_only_it_as_non_root() {
    let lines = dockerfile();
    let froms: Vec<&String> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(_, l)| l)
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(
        froms[0].contains("rust:${RUST_VERSION}-bookworm AS build"),
        "{}",
        froms[0]
    );
    let pinned = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("ARG RUST_VERSION="))
        .expect("the Rust version is pinned");
    assert_eq!(pinned.split('.').count(), 3, "a full version: {pinned}");
    assert!(
        froms[1].contains("distroless/cc-debian12:nonroot"),
        "{}",
        froms[1]
    );
    let builds: Vec<&String> = lines
        .iter()
        .filter(|(stage, l)| *stage == 1 && l.contains("cargo build"))
        .map(|(_, l)| l)
        .collect();
    assert!(
        builds.len() >= 2
            && builds
                .iter()
                .all(|b| b.contains("--release --locked --bin tidegate")),
        "dependencies cached, then the release binary, from the lock file: {builds:?}"
    );
    let runtime: Vec<&String> = lines
        .iter()
        .filter(|(stage, _)| *stage == 2)
        .map(|(_, l)| l)
        .collect();
    let copies: Vec<&&String> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        [&&"COPY --from=build /src/target/release/tidegate /tidegate".to_owned()],
        "the runtime stage holds the binary and nothing else"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric UID");
    assert_ne!(uid, 0, "not root");
    assert!(runtime.contains(&&"ENTRYPOINT [\"/tidegate\"]".to_owned()));
    for label in ["source", "version", "licenses"] {
        assert!(
            runtime
                .iter()
                .any(|l| l.contains(&format!("org.opencontainers.image.{label}="))),
            "OCI label {label}"
        );
    }
    let ignore = repo_file(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "the context excludes everything by default"
    );
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/", "!benches/"] {
        assert!(rules.contains(&needed), "{needed} re-included");
    }
}

#[test]
fn the_release_binary_carries_no_debug_info_but_keeps_its_symbols() {
    let manifest: toml_like::Profile = toml_like::release_profile(&repo_file("Cargo.toml"));
    assert_eq!(manifest.debug.as_deref(), Some("false"));
    assert_eq!(
        manifest.strip.as_deref(),
        Some("\"debuginfo\""),
        "symbols stay for backtraces"
    );
}

/// Just enough of Cargo.toml's `[profile.release]` table.
mod toml_like {
    #[derive(Default)]
    pub struct Profile {
        pub debug: Option<String>,
        pub strip: Option<String>,
    }

    pub fn release_profile(text: &str) -> Profile {
        let mut profile = Profile::default();
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                inside = line == "[profile.release]";
                continue;
            }
            if let (true, Some((key, value))) = (inside, line.split_once('=')) {
                let value = Some(value.trim().to_owned());
                match key.trim() {
                    "debug" => profile.debug = value,
                    "strip" => profile.strip = value,
                    _ => {}
                }
            }
        }
        profile
    }
}
