//! The canary policy: which endpoints are canary and what share of traffic they get.
//!
//! Pure control-plane logic (no I/O, no clock): config and rollout state in, the canary version and
//! a [`Split`] out. Later sources of the weight (annotations, the admin API) feed into the same place.

use crate::config::CanaryConfig;
use crate::discovery::Rollout;
use crate::snapshot::{EndpointSpec, Split, Version, Weight};

/// The settled canary intent.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPolicy {
    /// In static mode the canary is named by version.
    pub version: Option<Version>,
    pub weight: Weight,
}

/// Which version is the canary now, and how traffic is split.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub canary: Option<Version>,
    pub split: Split,
}

impl CanaryPolicy {
    pub fn from_config(config: &CanaryConfig) -> Self {
        Self {
            version: config.version.clone(),
            weight: config.weight,
        }
    }

    /// The plan for `endpoints`, given the rollout a source reported (if it follows one).
    ///
    /// - Static endpoints: the configured version is the canary and, since a static file has no
    ///   rollout to pause, its weight always applies.
    /// - A followed Deployment: the newest ReplicaSet's version is the canary while an older
    ///   version still has endpoints; traffic is shared by ready endpoint count, as a Service would.
    pub fn plan(&self, rollout: Option<&Rollout>, endpoints: &[EndpointSpec]) -> Plan {
        match rollout {
            None => Plan {
                canary: self.version.clone(),
                split: match self.version {
                    Some(_) => Split::Weighted(self.weight),
                    None => Split::ByEndpointCount,
                },
            },
            Some(rollout) => Plan {
                canary: rollout
                    .newest
                    .clone()
                    .filter(|newest| endpoints.iter().any(|e| &e.version != newest)),
                split: Split::ByEndpointCount,
            },
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
            image: None,
        }
    }

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    #[test]
    fn static_mode_names_the_canary_and_applies_the_weight() {
        let policy = CanaryPolicy {
            version: Some(v("v2")),
            weight: Weight::new(10.0).unwrap(),
        };
        let plan = policy.plan(None, &[spec("v1"), spec("v2")]);
        assert_eq!(plan.canary, Some(v("v2")));
        assert_eq!(plan.split, Split::Weighted(Weight::new(10.0).unwrap()));
    }

    #[test]
    fn without_a_canary_everything_is_shared_evenly() {
        let policy = CanaryPolicy {
            version: None,
            weight: Weight::new(50.0).unwrap(),
        };
        let plan = policy.plan(None, &[spec("v1")]);
        assert_eq!(
            plan,
            Plan {
                canary: None,
                split: Split::ByEndpointCount
            }
        );
    }

    #[test]
    fn a_rollout_makes_the_newest_version_canary_until_it_is_alone() {
        let policy = CanaryPolicy {
            version: Some(v("ignored-in-kubernetes-mode")),
            weight: Weight::new(10.0).unwrap(),
        };
        let rollout = Rollout {
            newest: Some(v("b7c9")),
            paused: false,
            complete: false,
        };
        let moving = policy.plan(Some(&rollout), &[spec("a1f2"), spec("b7c9")]);
        assert_eq!(
            moving,
            Plan {
                canary: Some(v("b7c9")),
                split: Split::ByEndpointCount
            }
        );
        let done = policy.plan(Some(&rollout), &[spec("b7c9")]);
        assert_eq!(done.canary, None, "a finished rollout has no canary");
    }
}
