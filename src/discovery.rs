//! Where endpoints come from. Every source speaks the same small [`Update`] language, so the control
//! loop and the snapshot never care which source produced a set.

pub mod kubernetes;
pub mod pods;
pub mod rollout;
pub mod slices;
pub mod static_file;
pub mod watch;

use crate::snapshot::{EndpointSpec, Version};

/// A discovery source's news.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The complete current endpoint set; replaces whatever was known. `rollout` is set by sources
    /// that follow a Deployment.
    Reset {
        endpoints: Vec<EndpointSpec>,
        rollout: Option<Rollout>,
    },
}

/// A Deployment's rollout state, as far as routing cares.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// The version of the newest ReplicaSet: the canary while older versions still serve.
    pub newest: Option<Version>,
    /// `kubectl rollout pause` is in effect.
    pub paused: bool,
    /// Only the newest ReplicaSet still has pods.
    pub complete: bool,
    /// The Deployment's `tidegate.io/canary-weight` annotation, unparsed.
    pub weight_annotation: Option<String>,
}
