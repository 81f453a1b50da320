//! The canary policy: which endpoints are canary and what share of traffic they get.
//!
//! Pure control-plane logic (no I/O, no clock): config in, roles and a [`Split`] out. Later sources of
//! the weight (annotations, the admin API) feed into the same function.

use crate::config::CanaryConfig;
use crate::snapshot::{EndpointSpec, Role, Split, Version, Weight};

/// The settled canary intent.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPolicy {
    /// In static mode the canary is named by version.
    pub version: Option<Version>,
    pub weight: Weight,
}

impl CanaryPolicy {
    pub fn from_config(config: &CanaryConfig) -> Self {
        Self {
            version: config.version.clone(),
            weight: config.weight,
        }
    }

    /// The role of an endpoint under this policy.
    pub fn role(&self, spec: &EndpointSpec) -> Role {
        if self.version.as_ref() == Some(&spec.version) {
            Role::Canary
        } else {
            Role::Stable
        }
    }

    /// How traffic is split. A static file has no rollout to pause, so the weight always applies
    /// when a canary version is named; without one every endpoint is an equal peer.
    pub fn split(&self) -> Split {
        match self.version {
            Some(_) => Split::Weighted(self.weight),
            None => Split::ByEndpointCount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EndpointState;

    fn spec(version: &str) -> EndpointSpec {
        EndpointSpec {
            address: "127.0.0.2:80".parse().unwrap(),
            version: Version::new(version).unwrap(),
            state: EndpointState::Ready,
            name: None,
        }
    }

    #[test]
    fn the_named_version_is_canary_and_gets_the_weight() {
        let policy = CanaryPolicy {
            version: Some(Version::new("v2").unwrap()),
            weight: Weight::new(10.0).unwrap(),
        };
        assert_eq!(policy.role(&spec("v2")), Role::Canary);
        assert_eq!(policy.role(&spec("v1")), Role::Stable);
        assert_eq!(policy.split(), Split::Weighted(Weight::new(10.0).unwrap()));
    }

    #[test]
    fn without_a_canary_everything_is_stable_and_shared_evenly() {
        let policy = CanaryPolicy {
            version: None,
            weight: Weight::new(50.0).unwrap(),
        };
        assert_eq!(policy.role(&spec("v2")), Role::Stable);
        assert_eq!(policy.split(), Split::ByEndpointCount);
    }
}
