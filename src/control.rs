//! The control loop: the sole owner of the mutable routing model.
//!
//! Config reloads and discovery updates arrive as [`Input`]s over one channel; each one that changes
//! the model produces exactly one new snapshot through the [`Publisher`]. Nothing here is on the
//! request path.

use tokio::sync::mpsc;

use crate::canary::CanaryPolicy;
use crate::config::Config;
use crate::discovery::{self, Update};
use crate::snapshot::{Desired, EndpointSpec, Publisher, Settings};

/// What the control loop reacts to.
#[derive(Debug)]
pub enum Input {
    /// A newly read and validated config file.
    Config(Box<Config>),
    /// News from a discovery source.
    Discovery(Update),
}

/// The model the next snapshot is built from.
pub struct Control {
    publisher: Publisher,
    config: Config,
    policy: CanaryPolicy,
    settings: Settings,
    endpoints: Vec<EndpointSpec>,
}

impl Control {
    /// Takes the startup config and publishes the first snapshot from it.
    pub fn start(config: Config, publisher: Publisher) -> Self {
        let mut control = Self {
            publisher,
            policy: CanaryPolicy::from_config(&config.canary),
            settings: config.settings(),
            endpoints: Vec::new(),
            config,
        };
        if let Some(Update::Reset(endpoints)) = discovery::static_file::update(&control.config) {
            control.endpoints = endpoints;
        }
        control.publish();
        control
    }

    /// Applies inputs until every sender is gone.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        while let Some(input) = inputs.recv().await {
            self.apply(input);
        }
    }

    fn apply(&mut self, input: Input) {
        match input {
            Input::Config(config) => {
                warn_on_restart_only_changes(&self.config, &config);
                self.policy = CanaryPolicy::from_config(&config.canary);
                self.settings = config.settings();
                if let Some(Update::Reset(endpoints)) = discovery::static_file::update(&config) {
                    self.endpoints = endpoints;
                }
                self.config = *config;
            }
            Input::Discovery(Update::Reset(endpoints)) => self.endpoints = endpoints,
        }
        self.publish();
    }

    fn publish(&mut self) {
        let endpoints = self
            .endpoints
            .iter()
            .map(|spec| (spec.clone(), self.policy.role(spec)))
            .collect();
        let generation = self.publisher.publish(Desired {
            endpoints,
            split: self.policy.split(),
            canary_version: self.policy.version.clone(),
            settings: self.settings,
        });
        tracing::info!(
            generation,
            endpoints = self.endpoints.len(),
            canary = ?self.policy.version,
            weight = self.policy.weight.percent(),
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
}
