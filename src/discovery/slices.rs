//! EndpointSlices → endpoints. Pure: no I/O, no clock.
//!
//! All slices of a Service are merged into one set. During a slice rewrite the same address can
//! appear in two slices; the one from the most recently written slice wins.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::config::PortRef;
use crate::upstream::Protocol;

/// What the slices say about an endpoint's readiness (EndpointConditions, KEP-1672).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `ready` (a missing `ready` means ready) and not terminating.
    Ready,
    /// Terminating but still `serving`: usable only when nothing is ready.
    ServingTerminating,
    NotReady,
}

/// One endpoint from the slices.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub address: SocketAddr,
    /// The pod behind it (`targetRef` of kind Pod).
    pub pod: Option<String>,
    pub condition: Condition,
    /// What the port's `appProtocol` says to speak, if it names a protocol tidegate knows.
    pub protocol: Option<Protocol>,
}

/// Something in a slice that was skipped, with enough to say where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// FQDN slices (or unknown types) cannot be dialled by address.
    AddressType {
        slice: String,
        address_type: String,
    },
    /// The configured port is not among the slice's ports.
    NoPort {
        slice: String,
    },
    BadAddress {
        slice: String,
        address: String,
    },
}

impl Skipped {
    /// A closed set, for the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Skipped::AddressType { .. } => "address_type",
            Skipped::NoPort { .. } => "no_port",
            Skipped::BadAddress { .. } => "bad_address",
        }
    }
}

/// As the log says it: `slice web-abc: address type FQDN`.
impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::AddressType {
                slice,
                address_type,
            } => write!(f, "slice {slice}: address type {address_type}"),
            Skipped::NoPort { slice } => write!(f, "slice {slice}: no such port"),
            Skipped::BadAddress { slice, address } => {
                write!(f, "slice {slice}: address {address:?} is not an IP address")
            }
        }
    }
}

/// Merges slices into one deduplicated endpoint set, sorted by address.
pub fn merge<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: Option<&PortRef>,
) -> (Vec<SliceEndpoint>, Vec<Skipped>) {
    let mut merged: HashMap<SocketAddr, (u64, SliceEndpoint)> = HashMap::new();
    let mut skipped = Vec::new();
    for slice in slices {
        let name = slice.metadata.name.clone().unwrap_or_default();
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            skipped.push(Skipped::AddressType {
                slice: name,
                address_type: slice.address_type.clone(),
            });
            continue;
        }
        let Some((port, protocol)) = slice_port(slice, port) else {
            skipped.push(Skipped::NoPort { slice: name });
            continue;
        };
        // resourceVersions are opaque, but etcd-backed servers hand out increasing integers.
        let recency = slice
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        for endpoint in slice.endpoints.iter().flatten() {
            let condition = condition(endpoint);
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    skipped.push(Skipped::BadAddress {
                        slice: name.clone(),
                        address: address.clone(),
                    });
                    continue;
                };
                let found = SliceEndpoint {
                    address: SocketAddr::new(ip, port),
                    pod: pod.clone(),
                    condition,
                    protocol,
                };
                match merged.get(&found.address) {
                    Some((seen, _)) if *seen >= recency => {}
                    _ => {
                        merged.insert(found.address, (recency, found));
                    }
                }
            }
        }
    }
    let mut endpoints: Vec<SliceEndpoint> = merged.into_values().map(|(_, e)| e).collect();
    endpoints.sort_by_key(|e| e.address);
    (endpoints, skipped)
}

/// The port to send to, and the protocol its `appProtocol` names.
fn slice_port(slice: &EndpointSlice, wanted: Option<&PortRef>) -> Option<(u16, Option<Protocol>)> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let found = match wanted {
        None => ports.first(),
        Some(PortRef::Name(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        Some(PortRef::Number(n)) => ports.iter().find(|p| p.port == Some(i32::from(*n))),
    }?;
    let port = found
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)?;
    let protocol = found
        .app_protocol
        .as_deref()
        .and_then(Protocol::from_app_protocol);
    Some((port, protocol))
}

fn condition(endpoint: &Endpoint) -> Condition {
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    match (ready, serving, terminating) {
        (true, _, false) => Condition::Ready,
        (_, true, true) => Condition::ServingTerminating,
        _ => Condition::NotReady,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web_slice(name: &str, rv: &str, endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": name, "resourceVersion": rv,
                          "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "ports": [ { "name": "metrics", "port": 9090 }, { "name": "http", "port": 8080 } ],
            "endpoints": endpoints,
        }))
    }

    fn http() -> PortRef {
        PortRef::Name("http".into())
    }

    #[test]
    fn conditions_follow_kube_proxy_semantics() {
        let s = web_slice(
            "web-a",
            "10",
            json!([
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true },
                  "targetRef": { "kind": "Pod", "name": "web-1" } },
                { "addresses": ["10.0.0.2"] },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": false } },
                { "addresses": ["10.0.0.4"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                { "addresses": ["10.0.0.5"], "conditions": { "ready": false, "serving": false, "terminating": true } },
            ]),
        );
        let (eps, skipped) = merge([&s], Some(&http()));
        assert!(skipped.is_empty());
        let got: Vec<_> = eps
            .iter()
            .map(|e| (e.address.to_string(), e.condition))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080".to_owned(), Condition::Ready),
                ("10.0.0.2:8080".to_owned(), Condition::Ready),
                ("10.0.0.3:8080".to_owned(), Condition::NotReady),
                ("10.0.0.4:8080".to_owned(), Condition::ServingTerminating),
                ("10.0.0.5:8080".to_owned(), Condition::NotReady),
            ]
        );
        assert_eq!(eps[0].pod.as_deref(), Some("web-1"));
    }

    #[test]
    fn an_address_in_two_slices_takes_the_newest_condition() {
        let old = web_slice(
            "web-a",
            "10",
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }]),
        );
        let new = web_slice(
            "web-b",
            "12",
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": false } }]),
        );
        for order in [[&old, &new], [&new, &old]] {
            let (eps, _) = merge(order, Some(&http()));
            assert_eq!(eps.len(), 1, "one address, one endpoint");
            assert_eq!(
                eps[0].condition,
                Condition::NotReady,
                "the newer slice wins"
            );
        }
    }

    #[test]
    fn ports_by_name_number_or_first_and_both_address_families() {
        let s = web_slice("web-a", "1", json!([{ "addresses": ["10.0.0.1"] }]));
        assert_eq!(
            merge([&s], Some(&PortRef::Number(9090))).0[0]
                .address
                .port(),
            9090
        );
        assert_eq!(
            merge([&s], None).0[0].address.port(),
            9090,
            "no port configured: the first"
        );
        let (eps, skipped) = merge([&s], Some(&PortRef::Name("grpc".into())));
        assert!(eps.is_empty());
        assert_eq!(
            skipped,
            [Skipped::NoPort {
                slice: "web-a".into()
            }]
        );

        let v6 = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-v6" }, "addressType": "IPv6",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": [{ "addresses": ["fd00::1"] }],
        }));
        assert_eq!(
            merge([&v6], Some(&http())).0[0].address.to_string(),
            "[fd00::1]:8080"
        );
    }

    #[test]
    fn nonsense_is_skipped_not_fatal() {
        let fqdn = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-fqdn" }, "addressType": "FQDN",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": [{ "addresses": ["web.example.com"] }],
        }));
        let bad = web_slice(
            "web-a",
            "1",
            json!([
                { "addresses": ["not-an-ip"] }, { "addresses": ["10.0.0.9"] },
            ]),
        );
        let empty = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-empty" }, "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }], "endpoints": null,
        }));
        let (eps, skipped) = merge([&fqdn, &bad, &empty], Some(&http()));
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].address.to_string(), "10.0.0.9:8080");
        let reasons: Vec<_> = skipped.iter().map(Skipped::reason).collect();
        assert_eq!(reasons, ["address_type", "bad_address"]);
    }

    #[test]
    fn the_ports_app_protocol_names_the_protocol() {
        let with = |app: Option<&str>| {
            let mut port = json!({ "name": "grpc", "port": 50051 });
            if let Some(app) = app {
                port["appProtocol"] = json!(app);
            }
            slice(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": "api" }, "addressType": "IPv4",
                "ports": [port], "endpoints": [{ "addresses": ["10.0.0.1"] }],
            }))
        };
        for (app, protocol) in [
            (Some("kubernetes.io/h2c"), Some(Protocol::H2c)),
            (Some("grpc"), Some(Protocol::H2c)),
            (Some("http"), Some(Protocol::Http1)),
            (Some("kubernetes.io/ws"), None),
            (None, None),
        ] {
            let (eps, _) = merge([&with(app)], None);
            assert_eq!(eps[0].protocol, protocol, "{app:?}");
        }
    }
}
