//! The shipped Role's grants, read from `deploy/base/rbac/rbac.yaml`; shared by the manifest
//! checks (its documentation) and the Kubernetes tests (every API call tidegate makes).

use std::collections::BTreeSet;

/// (API group, resource, verb) triples.
pub type Grants = BTreeSet<(String, String, String)>;

/// What the Role in `deploy/base/rbac/rbac.yaml` grants.
pub fn shipped_role_grants() -> Grants {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/rbac/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/base/rbac/rbac.yaml");
    let mut grants = Grants::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_json::Value =
            serde::Deserialize::deserialize(doc).expect("rbac.yaml is YAML");
        if doc["kind"] != "Role" {
            continue;
        }
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        grants.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    grants
}
