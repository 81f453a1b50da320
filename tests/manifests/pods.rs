//! Reading pods, containers and the tidegate configs they run out of rendered manifests.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tidegate::config::{Config, DiscoveryConfig};

use crate::render::{Doc, Manifests};

pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// The object's namespace; none (base/ renders without one) reads as the empty string.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

pub fn find<'a, T>(list: &'a [Doc<T>], name: &str, meta: impl Fn(&T) -> &str) -> Option<&'a T> {
    list.iter()
        .map(|d| &d.object)
        .find(|object| meta(object) == name)
}

pub fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("a Deployment has spec.template.spec")
}

/// Every container of a pod: init containers (native sidecars among them) and the main ones.
pub fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

/// Containers that run for the pod's life: the main ones and native sidecars.
pub fn long_running(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .chain(&spec.containers)
}

/// A container runs tidegate when its image's repository is named `tidegate`.
pub fn is_tidegate(container: &Container) -> bool {
    let image = container.image.as_deref().unwrap_or("");
    let image = image.split('@').next().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    last.split(':').next() == Some("tidegate")
}

/// The number a probe or Service port refers to, resolving a port name in `containers`.
pub fn resolve_port<'a>(
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

pub fn pre_stop_seconds(container: &Container) -> i64 {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds)
}

/// An embedded config through tidegate's own parser and validation.
pub fn parse_config(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("tidegate.yaml")).map_err(|e| e.to_string())
}

/// Every `tidegate.yaml` held by a ConfigMap: (origin, namespace, text).
pub fn embedded_configs(m: &Manifests) -> Vec<(String, String, String)> {
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
pub fn config_of<'a>(
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
        .ok_or_else(|| format!("ConfigMap {:?} is not in the rendering", source.name))?;
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .map(String::as_str)
        .ok_or_else(|| format!("ConfigMap {:?} has no key {file:?}", source.name))
}

pub fn run_validate(text: &str) -> std::process::Output {
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
pub fn check_kubernetes_discovery(origin: &str, namespace: &str, config: &Config) -> Vec<String> {
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
