//! What the pod watch knows ahead of the EndpointSlice: a pod being deleted (its
//! `deletionTimestamp` is set the moment `kubectl delete`, a rollout or a drain asks, while the
//! kubelet is already sending SIGTERM) and a pod that is gone. The endpoints controller writes the
//! same news into the slice one hop later, batched in real clusters; routing acts on it now.
//!
//! Pure: pod objects in, fates out. A deleted pod leaves a tombstone (its last state, for its
//! version label) for as long as a slice still lists an endpoint of it.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::PartialObjectMeta;

/// What routing should make of an endpoint, by its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Nothing known against it: the slice's word stands.
    Alive,
    /// Its pod is being deleted: no new requests unless nothing else is left (as `terminating`).
    Deleting,
    /// Its pod is gone: its process has exited.
    Gone,
}

/// Pods that were deleted, by name, with their last state.
#[derive(Default)]
pub struct Tombstones {
    gone: HashMap<String, PartialObjectMeta<Pod>>,
}

impl Tombstones {
    /// `pod` was deleted (a watch event, or absent from a re-list).
    pub fn bury(&mut self, pod: PartialObjectMeta<Pod>) {
        if let Some(name) = pod.metadata.name.clone() {
            self.gone.insert(name, pod);
        }
    }

    /// A pod of this name exists again (a StatefulSet's pod is recreated under its name).
    pub fn revive(&mut self, name: &str) {
        self.gone.remove(name);
    }

    /// The last state of a deleted pod.
    pub fn get(&self, name: &str) -> Option<&PartialObjectMeta<Pod>> {
        self.gone.get(name)
    }

    /// Forgets the pods no slice lists any more: their news has reached the slices.
    pub fn keep_only(&mut self, listed: &HashSet<&str>) {
        self.gone.retain(|name, _| listed.contains(name.as_str()));
    }
}

/// The fate of the endpoint of pod `name`, from the live pods and the tombstones.
pub fn fate(
    name: &str,
    live: &BTreeMap<String, PartialObjectMeta<Pod>>,
    tombstones: &Tombstones,
) -> Fate {
    match live.get(name) {
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => Fate::Deleting,
        Some(_) => Fate::Alive,
        None if tombstones.get(name).is_some() => Fate::Gone,
        None => Fate::Alive,
    }
}

/// A Service's pod selector as a label selector (`app=shop,tier=web`, keys in order); `None` for a
/// Service without one (its EndpointSlices are written by hand or by another controller).
pub fn selector(service: &Service) -> Option<String> {
    let selector = service.spec.as_ref()?.selector.as_ref()?;
    if selector.is_empty() {
        return None;
    }
    let terms: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(terms.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, deleting: bool) -> PartialObjectMeta<Pod> {
        let mut meta = serde_json::json!({ "name": name });
        if deleting {
            meta["deletionTimestamp"] = "2026-12-04T12:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta,
        }))
        .unwrap()
    }

    #[test]
    fn deletion_then_absence_then_revival() {
        let mut live = BTreeMap::new();
        let mut tombstones = Tombstones::default();
        live.insert("a".to_owned(), pod("a", false));
        assert_eq!(fate("a", &live, &tombstones), Fate::Alive);
        live.insert("a".to_owned(), pod("a", true));
        assert_eq!(fate("a", &live, &tombstones), Fate::Deleting);
        let last = live.remove("a").unwrap();
        tombstones.bury(last);
        assert_eq!(fate("a", &live, &tombstones), Fate::Gone);
        assert_eq!(
            fate("never-seen", &live, &tombstones),
            Fate::Alive,
            "a pod not yet seen is not presumed gone"
        );
        tombstones.revive("a");
        live.insert("a".to_owned(), pod("a", false));
        assert_eq!(fate("a", &live, &tombstones), Fate::Alive);
    }

    #[test]
    fn tombstones_last_while_a_slice_lists_the_pod() {
        let mut tombstones = Tombstones::default();
        tombstones.bury(pod("a", true));
        tombstones.bury(pod("b", true));
        tombstones.keep_only(&HashSet::from(["a"]));
        assert!(tombstones.get("a").is_some());
        assert!(tombstones.get("b").is_none());
    }

    #[test]
    fn a_service_selector_becomes_a_label_selector() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "shop" },
            "spec": { "selector": { "tier": "web", "app": "shop" } },
        }))
        .unwrap();
        assert_eq!(selector(&service).as_deref(), Some("app=shop,tier=web"));
        let manual: Service =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": "x" }, "spec": {} }))
                .unwrap();
        assert_eq!(selector(&manual), None);
    }
}
