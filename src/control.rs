//! The control loop: the sole owner of the mutable routing model.
//!
//! Config reloads and discovery updates arrive over channels; each one that changes the model
//! produces exactly one new snapshot through the [`Publisher`]. Nothing here is on the request path.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::canary::CanaryPolicy;
use crate::config::{Config, DiscoveryConfig};
use crate::discovery::{self, Rollout, Update};
use crate::metrics::Metrics;
use crate::snapshot::{Desired, EndpointSpec, Publisher};

/// The model the next snapshot is built from.
pub struct Control {
    publisher: Publisher,
    metrics: Arc<Metrics>,
    config: Config,
    policy: CanaryPolicy,
    endpoints: Vec<EndpointSpec>,
    rollout: Option<Rollout>,
}

impl Control {
    /// Takes the startup config. Static endpoints are published at once; a watched source's are
    /// published when its first complete set arrives, so `/readyz` stays 503 until then.
    pub fn start(config: Config, publisher: Publisher, metrics: Arc<Metrics>) -> Self {
        let mut control = Self {
            publisher,
            metrics,
            policy: CanaryPolicy::from_config(&config.canary),
            endpoints: Vec::new(),
            rollout: None,
            config,
        };
        if let Some(update) = discovery::static_file::update(&control.config) {
            control.apply_update(update);
            control.publish();
        }
        control
    }

    /// Applies config reloads and discovery updates until both channels close.
    pub async fn run(
        mut self,
        mut configs: mpsc::Receiver<Config>,
        mut updates: mpsc::Receiver<Update>,
    ) {
        let (mut configs_open, mut updates_open) = (true, true);
        while configs_open || updates_open {
            tokio::select! {
                config = configs.recv(), if configs_open => match config {
                    Some(config) => {
                        self.apply_config(config);
                        self.publish();
                    }
                    None => configs_open = false,
                },
                update = updates.recv(), if updates_open => match update {
                    Some(update) => {
                        self.apply_update(update);
                        self.publish();
                    }
                    None => updates_open = false,
                },
            }
        }
    }

    fn apply_config(&mut self, config: Config) {
        warn_on_restart_only_changes(&self.config, &config);
        self.policy = CanaryPolicy::from_config(&config.canary);
        if let Some(update) = discovery::static_file::update(&config) {
            if matches!(self.config.discovery, DiscoveryConfig::Static { .. }) {
                self.apply_update(update);
            }
        }
        self.config = config;
    }

    fn apply_update(&mut self, update: Update) {
        match update {
            Update::Reset { endpoints, rollout } => {
                self.endpoints = endpoints;
                self.metrics
                    .set_rollout_paused(rollout.as_ref().is_some_and(|r| r.paused));
                self.rollout = rollout;
            }
        }
    }

    fn publish(&mut self) {
        let plan = self.policy.plan(self.rollout.as_ref(), &self.endpoints);
        let endpoints = self
            .endpoints
            .iter()
            .map(|spec| {
                let role = if plan.canary.as_ref() == Some(&spec.version) {
                    crate::snapshot::Role::Canary
                } else {
                    crate::snapshot::Role::Stable
                };
                (spec.clone(), role)
            })
            .collect();
        let generation = self.publisher.publish(Desired {
            endpoints,
            split: plan.split,
            canary_version: plan.canary.clone(),
            settings: self.config.settings(),
        });
        tracing::info!(
            generation,
            endpoints = self.endpoints.len(),
            canary = ?plan.canary,
            split = ?plan.split,
            "published snapshot"
        );
    }
}

fn warn_on_restart_only_changes(old: &Config, new: &Config) {
    if old.listen != new.listen {
        tracing::warn!(old = %old.listen, new = %new.listen, "listen changed: takes effect on restart");
    }
    if old.admin != new.admin {
        tracing::warn!("admin settings changed: take effect on restart");
    }
    if old.timeouts.header_read != new.timeouts.header_read
        || old.timeouts.drain != new.timeouts.drain
    {
        tracing::warn!("timeouts.header_read and timeouts.drain take effect on restart");
    }
    let source_changed = match (&old.discovery, &new.discovery) {
        (DiscoveryConfig::Static { .. }, DiscoveryConfig::Static { .. }) => false,
        (a, b) => a != b,
    };
    if source_changed {
        tracing::warn!("discovery source settings changed: take effect on restart");
    }
}
