//! What each overlay adds to the base: the ingress tier's availability (replicas, disruption
//! budget, spread), its Service and network policy and TLS mount; the sidecar patch; the
//! Prometheus Operator objects; and, for all, selectors and ports that meet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pods::*;
use crate::render::{overlay, rendered, Manifests};

/// Renders every overlay, or returns from the test after saying why this machine cannot.
macro_rules! rendered_or_skip {
    ($test:literal) => {
        match rendered($test) {
            Some(all) => all,
            None => return,
        }
    };
}
pub(crate) use rendered_or_skip;

pub fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let wanted = selector.match_labels.as_ref();
    selector.match_expressions.is_none()
        && wanted.is_some_and(|w| !w.is_empty())
        && wanted
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

pub fn pod_labels(deployment: &Deployment) -> Option<&BTreeMap<String, String>> {
    deployment.spec.template.metadata.as_ref()?.labels.as_ref()
}

/// The ingress tier's Deployment and its tidegate container.
fn tier(m: &Manifests) -> (&Deployment, &Container) {
    let deployment = find(&m.deployments, "tidegate", |d| name_of(&d.metadata))
        .unwrap_or_else(|| panic!("deploy/{}: no Deployment tidegate", m.overlay));
    let container = pod_spec(deployment)
        .containers
        .iter()
        .find(|c| is_tidegate(c))
        .expect("the tier's tidegate container");
    (deployment, container)
}

fn port_number(container: &Container, name: &str) -> i32 {
    resolve_port(
        &IntOrString::String(name.to_owned()),
        std::iter::once(container),
    )
    .unwrap_or_else(|| panic!("container port {name}"))
}

#[test]
fn the_ingress_tier_runs_two_spread_replicas_under_a_disruption_budget() {
    let all =
        rendered_or_skip!("the_ingress_tier_runs_two_spread_replicas_under_a_disruption_budget");
    for name in ["ingress", "monitoring"] {
        let m = overlay(&all, name);
        let (deployment, _) = tier(m);
        let labels = pod_labels(deployment);
        let spec = &deployment.spec;
        assert!(
            spec.replicas.unwrap_or(1) >= 2,
            "deploy/{name}: replicas {:?}",
            spec.replicas
        );
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("a rolling update strategy");
        assert_eq!(
            rolling.max_unavailable,
            Some(IntOrString::Int(0)),
            "deploy/{name}: a rollout of tidegate never lowers the ready count"
        );

        let [budget] = &m.disruption_budgets[..] else {
            panic!(
                "deploy/{name}: one PodDisruptionBudget, found {}",
                m.disruption_budgets.len()
            );
        };
        let budget = budget.object.spec.as_ref().expect("PDB spec");
        assert_eq!(
            budget.max_unavailable,
            Some(IntOrString::Int(1)),
            "deploy/{name}"
        );
        assert!(
            budget.min_available.is_none(),
            "deploy/{name}: maxUnavailable only"
        );
        assert!(
            budget.selector.as_ref().is_some_and(|s| selects(s, labels)),
            "deploy/{name}: the PDB selects the tier's pods"
        );

        let spread = pod_spec(deployment)
            .topology_spread_constraints
            .as_deref()
            .unwrap_or_default();
        let by_key: BTreeMap<&str, &str> = spread
            .iter()
            .filter(|c| {
                c.label_selector
                    .as_ref()
                    .is_some_and(|s| selects(s, labels))
            })
            .map(|c| (c.topology_key.as_str(), c.when_unsatisfiable.as_str()))
            .collect();
        assert_eq!(
            by_key.get("kubernetes.io/hostname"),
            Some(&"DoNotSchedule"),
            "deploy/{name}: replicas on different nodes, or the PDB protects nothing: {by_key:?}"
        );
        assert_eq!(
            by_key.get("topology.kubernetes.io/zone"),
            Some(&"ScheduleAnyway"),
            "deploy/{name}: spread over zones where there are zones: {by_key:?}"
        );
    }
}

#[test]
fn the_ingress_service_is_a_load_balancer_for_the_proxy_port_only_and_tls_is_mounted() {
    let all = rendered_or_skip!(
        "the_ingress_service_is_a_load_balancer_for_the_proxy_port_only_and_tls_is_mounted"
    );
    let m = overlay(&all, "ingress");
    let (deployment, container) = tier(m);
    let service =
        find(&m.services, "tidegate", |s| name_of(&s.metadata)).expect("Service tidegate");
    let spec = service.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(
        ports.len(),
        1,
        "only the proxy port; admin stays off the Service"
    );
    let target = ports[0].target_port.as_ref().expect("a targetPort");
    assert_eq!(
        resolve_port(target, std::iter::once(container)),
        Some(port_number(container, "http"))
    );

    let pod = pod_spec(deployment);
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == "/etc/tidegate-tls")
        .expect("the TLS Secret is mounted where base/tidegate.yaml's tls: comment points");
    assert!(
        mount.sub_path.is_none(),
        "a directory, so renewals reach tidegate"
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the TLS volume");
    let secret = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("tidegate-tls"));
    assert_eq!(
        secret.optional,
        Some(true),
        "the pod starts without it, serving plain HTTP"
    );
    let config = std::fs::read_to_string(crate::render::deploy_dir().join("base/tidegate.yaml"))
        .expect("base/tidegate.yaml");
    assert!(
        config.contains(
            "# tls: { cert_file: /etc/tidegate-tls/tls.crt, key_file: /etc/tidegate-tls/tls.key }"
        ),
        "the config says how to turn HTTPS on with that mount"
    );
}

#[test]
fn the_network_policy_admits_the_proxy_port_from_anywhere_and_admin_only_from_monitoring() {
    let all = rendered_or_skip!(
        "the_network_policy_admits_the_proxy_port_from_anywhere_and_admin_only_from_monitoring"
    );
    let m = overlay(&all, "ingress");
    let (deployment, container) = tier(m);
    let [policy] = &m.network_policies[..] else {
        panic!("one NetworkPolicy, found {}", m.network_policies.len());
    };
    let spec = policy.object.spec.as_ref().expect("spec");
    assert!(
        spec.pod_selector
            .as_ref()
            .is_some_and(|s| selects(s, pod_labels(deployment))),
        "it selects the tier's pods"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    let proxy = port_number(container, "http");
    let admin = port_number(container, "admin");
    let mut open_to_all = Vec::new();
    let mut admin_sources = Vec::new();
    for rule in spec.ingress.iter().flatten() {
        let ports: Vec<i32> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| {
                p.port
                    .as_ref()
                    .and_then(|p| resolve_port(p, std::iter::once(container)))
                    .expect("every rule names its port")
            })
            .collect();
        assert!(!ports.is_empty(), "a rule without ports opens every port");
        let from = rule.from.as_deref().unwrap_or_default();
        if from.is_empty() {
            open_to_all.extend(ports);
        } else if ports.contains(&admin) {
            admin_sources.extend(from.iter().map(|peer| {
                peer.namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default()
            }));
        }
    }
    assert_eq!(
        open_to_all,
        [proxy],
        "only the proxy port is open to every source"
    );
    assert_eq!(
        admin_sources,
        [BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "monitoring".to_owned()
        )])],
        "the admin port admits the monitoring namespace only"
    );
}

#[test]
fn the_sidecar_component_adds_a_native_sidecar_the_app_reaches_on_loopback() {
    let all = rendered_or_skip!(
        "the_sidecar_component_adds_a_native_sidecar_the_app_reaches_on_loopback"
    );
    let m = overlay(&all, "sidecar");
    assert!(
        find(&m.deployments, "tidegate", |d| name_of(&d.metadata)).is_none(),
        "the sidecar form installs no tier of its own"
    );
    let app = find(&m.deployments, "web", |d| name_of(&d.metadata)).expect("the example app");
    let spec = pod_spec(app);
    let [sidecar] = spec.init_containers.as_deref().unwrap_or_default() else {
        panic!("tidegate is the one init container");
    };
    assert!(is_tidegate(sidecar));
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "no token for the app"
    );
    let config = config_of(m, namespace_of(&app.metadata), spec, sidecar)
        .and_then(parse_config)
        .expect("the sidecar's config");
    assert!(
        config.listen.ip().is_loopback(),
        "only the pod's containers reach the proxy"
    );
    let app_container = spec.containers.first().expect("the app container");
    let api_url = app_container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "API_URL")
        .and_then(|e| e.value.clone())
        .expect("the app's upstream address");
    assert_eq!(
        api_url,
        format!("http://{}", config.listen),
        "the app calls through tidegate"
    );
    assert!(
        app_container
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| !m.name.starts_with("tidegate")),
        "the app mounts neither tidegate's config nor its API token"
    );
}

#[test]
fn the_pod_monitor_scrapes_the_tiers_admin_port_with_the_rules_labels() {
    let all =
        rendered_or_skip!("the_pod_monitor_scrapes_the_tiers_admin_port_with_the_rules_labels");
    let m = overlay(&all, "monitoring");
    let (deployment, container) = tier(m);
    let namespace = namespace_of(&deployment.metadata);
    let [monitor] = &m.pod_monitors[..] else {
        panic!("one PodMonitor, found {}", m.pod_monitors.len());
    };
    let monitor = &monitor.object;
    assert_eq!(monitor.api_version, crate::operator::API_VERSION);
    assert_eq!(
        namespace_of(&monitor.metadata),
        namespace,
        "beside the pods it selects"
    );
    assert!(selects(&monitor.spec.selector, pod_labels(deployment)));
    let [endpoint] = &monitor.spec.pod_metrics_endpoints[..] else {
        panic!("one endpoint");
    };
    let config = config_of(m, namespace, pod_spec(deployment), container)
        .and_then(parse_config)
        .expect("the tier's config");
    assert_eq!(
        port_number(container, &endpoint.port),
        i32::from(config.admin.listen.port()),
        "it scrapes the admin API"
    );
    assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
    let targets: BTreeMap<&str, &[String]> = endpoint
        .relabelings
        .iter()
        .filter_map(|r| Some((r.target_label.as_deref()?, &r.source_labels[..])))
        .collect();
    assert_eq!(
        targets.get("service").copied(),
        Some(&["__meta_kubernetes_pod_label_app_kubernetes_io_name".to_owned()][..]),
        "the rules group by service"
    );
    assert_eq!(
        targets.get("instance").copied(),
        Some(&["__meta_kubernetes_pod_name".to_owned()][..])
    );
    let [rule] = &m.prometheus_rules[..] else {
        panic!("one PrometheusRule");
    };
    assert_eq!(namespace_of(&rule.object.metadata), namespace);
}

#[test]
fn deployments_select_their_pods_and_services_reach_declared_ports() {
    let all = rendered_or_skip!("deployments_select_their_pods_and_services_reach_declared_ports");
    let mut problems = Vec::new();
    for m in &all {
        check_selectors_and_ports(m, &mut problems);
    }
    assert_no_problems("selectors and ports", &problems);
}

fn check_selectors_and_ports(m: &Manifests, problems: &mut Vec<String>) {
    for doc in &m.deployments {
        let spec = &doc.object.spec;
        if !selects(&spec.selector, pod_labels(&doc.object)) {
            problems.push(format!(
                "{}: the selector does not match the template labels",
                doc.origin
            ));
        }
        for volume in pod_spec(&doc.object).volumes.iter().flatten() {
            if let Some(source) = &volume.config_map {
                if source.name != "kube-root-ca.crt"
                    && find(&m.config_maps, &source.name, |c| name_of(&c.metadata)).is_none()
                {
                    problems.push(format!(
                        "{}: volume {:?} uses ConfigMap {:?}, which is not rendered",
                        doc.origin, volume.name, source.name
                    ));
                }
            }
        }
    }
    for doc in &m.services {
        let spec = doc.object.spec.as_ref().expect("spec");
        let selector: BTreeMap<String, String> = spec.selector.clone().unwrap_or_default();
        let as_selector = LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        };
        let matching: Vec<&Deployment> = m
            .deployments
            .iter()
            .map(|d| &d.object)
            .filter(|d| selects(&as_selector, pod_labels(d)))
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
    // A config that discovers a Service rendered here must name one of its ports.
    for (origin, namespace, text) in embedded_configs(m) {
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
            continue; // an upstream outside these manifests (the tier's `web`, the sidecar's `api`)
        };
        let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        // EndpointSlice ports carry the Service port's name.
        let found = kubernetes
            .get("port")
            .and_then(|p| p.as_str())
            .is_some_and(|p| {
                ports
                    .into_iter()
                    .flatten()
                    .any(|sp| sp.name.as_deref() == Some(p))
            });
        if !found {
            problems.push(format!(
                "{origin}: discovery.kubernetes.port {:?} is not a port of Service {service_name:?}",
                kubernetes.get("port")
            ));
        }
    }
}
