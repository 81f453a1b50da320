//! Static discovery: the endpoints listed in the config file.
//!
//! The file itself is watched by [`crate::reload`]; every valid version of it is a full [`Update::Reset`].

use crate::config::{Config, DiscoveryConfig};

use super::Update;

/// The endpoint set a config lists, if its discovery is static.
pub fn update(config: &Config) -> Option<Update> {
    match &config.discovery {
        DiscoveryConfig::Static { endpoints } => Some(Update::Reset {
            endpoints: endpoints.clone(),
            rollout: None,
        }),
        DiscoveryConfig::Kubernetes(_) => None,
    }
}
