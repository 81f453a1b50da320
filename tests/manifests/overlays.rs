//! The properties of every rendered overlay: schema, RBAC, configs, hardening, probes, shutdown,
//! and what each overlay adds (the ingress tier's availability and network policy, the sidecar
//! patch, the Prometheus Operator objects).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Probe, Service, ServiceAccount};
use serde_json::Value;
use tidegate::config::DiscoveryConfig;

use crate::forms::rendered_or_skip;
use crate::operator::PodMonitor;
use crate::pods::*;
use crate::render::{rendered, typed, Manifests};

#[test]
fn every_overlay_renders_objects_that_keep_every_field_through_their_typed_schema() {
    let all = rendered_or_skip!(
        "every_overlay_renders_objects_that_keep_every_field_through_their_typed_schema"
    );
    let mut problems = Vec::new();
    for m in &all {
        let at = format!("deploy/{}", m.overlay);
        let kinds: BTreeSet<&str> = m.placement.iter().map(|(k, _)| k.as_str()).collect();
        let mut expected = vec![
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
        ];
        match m.overlay {
            "base" => expected.push("Service"),
            "ingress" => expected.extend([
                "Namespace",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy",
            ]),
            "monitoring" => expected.extend([
                "Namespace",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "PodMonitor",
                "PrometheusRule",
            ]),
            _ => {}
        }
        for kind in expected {
            if !kinds.contains(kind) {
                problems.push(format!("{at}: no {kind}"));
            }
        }
        // One namespace per installation: the one the overlay's kustomization.yaml sets (base
        // sets none, so that an overlay's applies to everything).
        let namespaces: BTreeSet<Option<&str>> = m
            .placement
            .iter()
            .filter(|(kind, _)| kind != "Namespace")
            .map(|(_, ns)| ns.as_deref())
            .collect();
        let namespaces: Vec<Option<&str>> = namespaces.into_iter().collect();
        match (m.overlay, &namespaces[..]) {
            ("base", [None]) => {}
            ("base", _) => problems.push(format!("{at}: objects with a namespace: {namespaces:?}")),
            (_, [Some(ns)]) if *ns != "default" => {
                for doc in &m.namespaces {
                    if name_of(&doc.object.metadata) != *ns {
                        problems.push(format!(
                            "{}: not the namespace {ns} the objects are in",
                            doc.origin
                        ));
                    }
                }
            }
            _ => problems.push(format!(
                "{at}: not exactly one namespace, other than default: {namespaces:?}"
            )),
        }
    }
    assert_no_problems("rendered overlays", &problems);
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

    let operator_typo: Value = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": { "name": "x" },
        "spec": { "selector": {}, "podMetricEndpoints": [] }
    });
    assert!(typed::<PodMonitor>(&operator_typo).is_err());
}

#[test]
fn the_role_grants_exactly_list_and_watch_on_the_four_resources_getting_services_and_creating_events(
) {
    let all = rendered_or_skip!("the_role_grants_exactly_list_and_watch_on_the_four_resources_getting_services_and_creating_events");
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
    for m in &all {
        let role = find(&m.roles, "tidegate", |r| name_of(&r.metadata))
            .unwrap_or_else(|| panic!("deploy/{}: Role tidegate", m.overlay));
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
        assert_no_problems(&format!("deploy/{}: Role tidegate", m.overlay), &problems);
        assert_eq!(
            granted, expected,
            "deploy/{}: Role tidegate: (apiGroup, resource, verb)",
            m.overlay
        );
    }
}

#[test]
fn the_role_is_bound_to_the_service_account_the_tidegate_pods_run_as() {
    let all =
        rendered_or_skip!("the_role_is_bound_to_the_service_account_the_tidegate_pods_run_as");
    let mut problems = Vec::new();
    for m in &all {
        let at = format!("deploy/{}", m.overlay);
        let account = find(&m.service_accounts, "tidegate", |a| name_of(&a.metadata))
            .unwrap_or_else(|| panic!("{at}: ServiceAccount tidegate"));
        let namespace = namespace_of(&account.metadata);
        let binding = find(&m.role_bindings, "tidegate", |b| name_of(&b.metadata))
            .unwrap_or_else(|| panic!("{at}: RoleBinding tidegate"));
        if binding.role_ref.api_group.as_deref() != Some("rbac.authorization.k8s.io")
            || binding.role_ref.kind != "Role"
            || binding.role_ref.name != "tidegate"
        {
            problems.push(format!(
                "{at}: RoleBinding refers to {:?}",
                binding.role_ref
            ));
        }
        let subjects: Vec<_> = binding
            .subjects
            .iter()
            .flatten()
            .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
            .collect();
        // base renders without a namespace; every installable overlay must fill the subject's in.
        let want = (m.overlay != "base").then_some(namespace);
        if subjects != [("ServiceAccount", "tidegate", want)] {
            problems.push(format!(
                "{at}: RoleBinding subjects {subjects:?}, want the ServiceAccount in {namespace:?}"
            ));
        }
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
    }
    assert_no_problems("tidegate pods and their ServiceAccount", &problems);
}

#[test]
fn embedded_configs_pass_tidegate_validate() {
    let all = rendered_or_skip!("embedded_configs_pass_tidegate_validate");
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for m in &all {
        let configs = embedded_configs(m);
        if configs.is_empty() {
            problems.push(format!(
                "deploy/{}: no ConfigMap holds a tidegate.yaml",
                m.overlay
            ));
        }
        for (origin, namespace, text) in configs {
            if !checked.insert(text.clone()) {
                continue; // the same file, rendered by another overlay
            }
            // The real binary, as an operator would check the file...
            let output = run_validate(&text);
            if !output.status.success() {
                problems.push(format!(
                    "{origin}: tidegate validate exited {:?}: {}",
                    output.status.code(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
                continue;
            }
            // ...and the typed config, for what only the manifests can tell.
            match parse_config(&text) {
                Ok(config) => {
                    problems.extend(check_kubernetes_discovery(&origin, &namespace, &config))
                }
                Err(e) => problems.push(format!("{origin}: {e}")),
            }
        }
    }
    assert!(checked.len() >= 2, "the tier's and the sidecar's configs");
    assert_no_problems("embedded tidegate configs", &problems);
}

/// tidegate sets no CPU limit (CFS throttling stalls every connection of a proxy that bursts) and
/// sizes its runtime from the CPU request instead, through the downward API.
fn check_cpu(at: &str, container: &Container, problems: &mut Vec<String>) {
    let resources = container.resources.as_ref();
    if resources
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key("cpu"))
    {
        problems.push(format!(
            "{at}: a CPU limit (throttling); size it by its request"
        ));
    }
    let sized = container.env.iter().flatten().any(|var| {
        var.name == "TOKIO_WORKER_THREADS"
            && var
                .value_from
                .as_ref()
                .and_then(|v| v.resource_field_ref.as_ref())
                .is_some_and(|r| {
                    r.resource == "requests.cpu"
                        && r.container_name.as_deref() == Some(container.name.as_str())
                        && r.divisor.as_ref().is_some_and(|d| d.0 == "1")
                })
    });
    if !sized {
        problems.push(format!(
            "{at}: TOKIO_WORKER_THREADS is not its own requests.cpu (divisor 1)"
        ));
    }
}

#[test]
fn every_container_is_hardened_and_has_resources() {
    let all = rendered_or_skip!("every_container_is_hardened_and_has_resources");
    let mut problems = Vec::new();
    for m in &all {
        for doc in &m.deployments {
            let spec = pod_spec(&doc.object);
            let pod_non_root = spec
                .security_context
                .as_ref()
                .is_some_and(|sc| sc.run_as_non_root == Some(true));
            for container in all_containers(spec) {
                let at = format!("{} container {:?}", doc.origin, container.name);
                let Some(sc) = container.security_context.as_ref() else {
                    problems.push(format!("{at}: no securityContext"));
                    continue;
                };
                if sc.run_as_non_root != Some(true) && !pod_non_root {
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
                for (what, key) in [
                    ("requests", "cpu"),
                    ("requests", "memory"),
                    ("limits", "memory"),
                ] {
                    let list = resources.and_then(|r| match what {
                        "requests" => r.requests.as_ref(),
                        _ => r.limits.as_ref(),
                    });
                    if !list.is_some_and(|l| l.contains_key(key)) {
                        problems.push(format!("{at}: no resources.{what}.{key}"));
                    }
                }
                if is_tidegate(container) {
                    check_cpu(&at, container, &mut problems);
                }
            }
        }
    }
    assert_no_problems("container hardening", &problems);
}

#[test]
fn tidegate_containers_run_their_config_and_are_probed_where_it_listens() {
    let all =
        rendered_or_skip!("tidegate_containers_run_their_config_and_are_probed_where_it_listens");
    let mut problems = Vec::new();
    for m in &all {
        let mut seen = 0;
        for doc in &m.deployments {
            let namespace = namespace_of(&doc.object.metadata);
            let spec = pod_spec(&doc.object);
            for container in all_containers(spec).filter(|c| is_tidegate(c)) {
                seen += 1;
                check_tidegate_container(m, &doc.origin, namespace, spec, container, &mut problems);
            }
        }
        if seen != 1 {
            problems.push(format!(
                "deploy/{}: {seen} tidegate containers, not 1",
                m.overlay
            ));
        }
    }
    assert_no_problems("tidegate containers", &problems);
}

fn check_tidegate_container(
    m: &Manifests,
    origin: &str,
    namespace: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    problems: &mut Vec<String>,
) {
    let at = format!("{origin} container {:?}", container.name);
    let config = match config_of(m, namespace, spec, container).and_then(parse_config) {
        Ok(config) => config,
        Err(e) => {
            problems.push(format!("{at}: {e}"));
            return;
        }
    };
    let is_init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| std::ptr::eq(c, container));
    if is_init && container.restart_policy.as_deref() != Some("Always") {
        problems.push(format!(
            "{at}: an init container that is not a native sidecar (restartPolicy: Always) would \
             block the pod's start forever"
        ));
    }
    let probes: [(&str, Option<&Probe>, &[&str]); 3] = [
        (
            "startupProbe",
            container.startup_probe.as_ref(),
            &["/healthz", "/readyz"],
        ),
        (
            "readinessProbe",
            container.readiness_probe.as_ref(),
            &["/readyz"],
        ),
        (
            "livenessProbe",
            container.liveness_probe.as_ref(),
            &["/healthz"],
        ),
    ];
    for (what, probe, paths) in probes {
        let path = probe
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.as_deref());
        if !path.is_some_and(|p| paths.contains(&p)) {
            problems.push(format!(
                "{at}: {what} should be httpGet {paths:?}, not {path:?}"
            ));
        }
    }
    // Every httpGet probe must reach the admin API: its port, on an address the kubelet can reach
    // (the pod IP, so not loopback).
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
    // Shutdown: the longest preStop sleep plus the drain fit in the grace period.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let pre_stop = all_containers(spec)
        .map(pre_stop_seconds)
        .max()
        .unwrap_or(0);
    let needed = config.timeouts.drain.as_secs_f64() + pre_stop as f64;
    if (grace as f64) <= needed {
        problems.push(format!(
            "{at}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + \
             timeouts.drain {:?}",
            config.timeouts.drain
        ));
    }
    if !matches!(config.discovery, DiscoveryConfig::Kubernetes(_)) {
        problems.push(format!(
            "{at}: the config does not use discovery.kubernetes"
        ));
    }
}
