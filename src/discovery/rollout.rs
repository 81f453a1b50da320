//! A Deployment's rollout as routing needs it: which ReplicaSet is newest, whether the rollout is
//! paused or still moving. Pure: objects in, facts out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

/// The label the ReplicaSet controller puts on every pod (and ReplicaSet) of one template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

/// What the rollout looks like right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutView {
    /// The pod-template-hash of the Deployment's newest ReplicaSet (highest revision).
    pub newest: Option<String>,
    /// `spec.paused`.
    pub paused: bool,
    /// Only the newest ReplicaSet still has pods.
    pub complete: bool,
    /// `spec.minReadySeconds`.
    pub min_ready: Duration,
    /// Container image tag per pod-template-hash, for display.
    pub images: BTreeMap<String, String>,
    /// The canary weight annotation, unparsed.
    pub weight_annotation: Option<String>,
}

/// Reads the rollout of `deployment` from its object and the ReplicaSets it owns.
pub fn view<'a>(
    name: &str,
    deployment: Option<&Deployment>,
    replicasets: impl IntoIterator<Item = &'a ReplicaSet>,
) -> RolloutView {
    let owned: Vec<&ReplicaSet> = replicasets
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Deployment" && o.name == name)
        })
        .collect();
    let revision = |rs: &ReplicaSet| -> u64 {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    let newest = owned
        .iter()
        .max_by_key(|rs| {
            (
                revision(rs),
                rs.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        })
        .copied();
    let hash = |rs: &ReplicaSet| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH))
            .cloned()
    };
    let has_pods = |rs: &ReplicaSet| {
        rs.status.as_ref().is_some_and(|s| s.replicas > 0) || rs.spec.replicas.unwrap_or(0) > 0
    };
    let complete = newest.is_some_and(|newest| {
        owned
            .iter()
            .all(|rs| std::ptr::eq(*rs, newest) || !has_pods(rs))
    });
    let images = owned
        .iter()
        .filter_map(|rs| {
            let image = rs
                .spec
                .template
                .as_ref()?
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()?;
            let tag = image
                .rsplit_once(':')
                .map(|(_, t)| t.to_owned())
                .unwrap_or(image);
            Some((hash(rs)?, tag))
        })
        .collect();
    RolloutView {
        newest: newest.and_then(hash),
        paused: deployment.and_then(|d| d.spec.paused).unwrap_or(false),
        complete,
        min_ready: Duration::from_secs(
            deployment
                .and_then(|d| d.spec.min_ready_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        ),
        images,
        weight_annotation: deployment
            .and_then(|d| d.metadata.annotations.as_ref())
            .and_then(|a| a.get(crate::canary::WEIGHT_ANNOTATION))
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(hash: &str, revision: u64, replicas: i32, owner: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{owner}-{hash}"),
                "labels": { "pod-template-hash": hash },
                "annotations": { "deployment.kubernetes.io/revision": revision.to_string() },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": owner, "uid": "u" }],
            },
            "spec": { "replicas": replicas, "selector": {},
                      "template": { "spec": { "containers": [{ "name": "app", "image": format!("kubia:{hash}") }] } } },
            "status": { "replicas": replicas },
        }))
        .unwrap()
    }

    fn deployment(paused: bool, min_ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "kubia" },
            "spec": { "paused": paused, "minReadySeconds": min_ready, "selector": {}, "template": {} },
        }))
        .unwrap()
    }

    #[test]
    fn the_highest_revision_is_newest_and_a_rollout_completes_when_old_sets_are_empty() {
        let d = deployment(false, 10);
        let moving = [
            rs("aaa", 1, 2, "kubia"),
            rs("bbb", 2, 1, "kubia"),
            rs("zzz", 9, 3, "other"),
        ];
        let v = view("kubia", Some(&d), &moving);
        assert_eq!(
            v.newest.as_deref(),
            Some("bbb"),
            "another Deployment's sets do not count"
        );
        assert!(!v.complete);
        assert_eq!(v.min_ready, Duration::from_secs(10));
        assert_eq!(v.images.get("aaa").map(String::as_str), Some("aaa"));

        let done = [rs("aaa", 1, 0, "kubia"), rs("bbb", 2, 3, "kubia")];
        assert!(view("kubia", Some(&d), &done).complete);
    }

    #[test]
    fn undo_makes_the_old_template_newest_again() {
        // `kubectl rollout undo` re-uses v2's ReplicaSet and gives it the next revision.
        let sets = [
            rs("v1hash", 1, 0, "kubia"),
            rs("v2hash", 4, 2, "kubia"),
            rs("v10hash", 3, 1, "kubia"),
        ];
        assert_eq!(view("kubia", None, &sets).newest.as_deref(), Some("v2hash"));
    }

    #[test]
    fn paused_is_read_from_the_spec() {
        assert!(view("kubia", Some(&deployment(true, 0)), &[]).paused);
        assert!(!view("kubia", None, &[]).paused);
    }
}
