//! The control loop: the sole owner of the mutable routing model.
//!
//! Config reloads, discovery updates and admin commands arrive over channels; each one that
//! changes the model produces exactly one new snapshot through the [`Publisher`], and a new
//! [`CanaryStatus`] for the admin API. Nothing here is on the request path.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use std::time::{Duration, Instant};

use crate::canary::{self, AbortWindow, Aborted, CanaryPolicy, CanaryStatus, Intent};
use crate::config::{Config, DiscoveryConfig};
use crate::discovery::kubernetes::EventRecorder;
use crate::discovery::{self, Rollout, Update};
use crate::metrics::Metrics;
use crate::snapshot::{CanaryStats, Desired, EndpointSpec, Publisher, Role, Weight};

/// How often the canary's outcomes are sampled for the abort decision.
const ABORT_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// What the admin API asks of the control loop.
#[derive(Debug)]
pub enum Command {
    /// Sets (`Some`) or clears (`None`) this instance's canary weight override; the reply is the
    /// status once the new snapshot is published.
    SetCanaryWeight(Option<Weight>, oneshot::Sender<CanaryStatus>),
}

/// The model the next snapshot is built from.
pub struct Control {
    publisher: Publisher,
    metrics: Arc<Metrics>,
    config: Config,
    policy: CanaryPolicy,
    endpoints: Vec<EndpointSpec>,
    rollout: Option<Rollout>,
    /// The last invalid annotation value seen, so that it is reported once, not per update.
    rejected_annotation: Option<String>,
    status: watch::Sender<CanaryStatus>,
    canary_stats: Arc<CanaryStats>,
    abort_window: AbortWindow,
    /// The intent the abort window is counting for; a new one starts a fresh window.
    intent: Option<Intent>,
    /// Where abort events go (a Kubernetes Event on the Deployment), if anywhere.
    events: Option<EventRecorder>,
}

impl Control {
    /// Takes the startup config. Static endpoints are published at once; a watched source's are
    /// published when its first complete set arrives, so `/readyz` stays 503 until then.
    pub fn start(
        config: Config,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        canary_stats: Arc<CanaryStats>,
        events: Option<EventRecorder>,
    ) -> Self {
        let policy = CanaryPolicy::from_config(&config.canary);
        let (status, _) = watch::channel(policy.plan(None, &[]).status);
        let mut control = Self {
            publisher,
            metrics,
            policy,
            endpoints: Vec::new(),
            rollout: None,
            rejected_annotation: None,
            status,
            canary_stats,
            abort_window: AbortWindow::default(),
            intent: None,
            events,
            config,
        };
        if let Some(update) = discovery::static_file::update(&control.config) {
            control.apply_update(update);
            control.publish();
        }
        control
    }

    /// The canary status after every publish.
    pub fn status(&self) -> watch::Receiver<CanaryStatus> {
        self.status.subscribe()
    }

    /// Applies config reloads, discovery updates and admin commands until all channels close.
    pub async fn run(
        mut self,
        mut configs: mpsc::Receiver<Config>,
        mut updates: mpsc::Receiver<Update>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let (mut configs_open, mut updates_open, mut commands_open) = (true, true, true);
        let mut tick = tokio::time::interval(ABORT_SAMPLE_INTERVAL);
        while configs_open || updates_open || commands_open {
            tokio::select! {
                _ = tick.tick() => self.check_abort(),
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
                command = commands.recv(), if commands_open => match command {
                    Some(Command::SetCanaryWeight(weight, reply)) => {
                        match weight {
                            Some(weight) => tracing::info!(weight = weight.percent(), "admin canary weight override"),
                            None => tracing::info!("admin canary weight override cleared"),
                        }
                        self.policy.admin = weight;
                        let status = self.publish();
                        let _ = reply.send(status);
                    }
                    None => commands_open = false,
                },
            }
        }
    }

    fn apply_config(&mut self, config: Config) {
        warn_on_restart_only_changes(&self.config, &config);
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        self.policy.reconfigure(&config.canary);
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
                self.apply_annotation(
                    rollout
                        .as_ref()
                        .and_then(|r| r.weight_annotation.as_deref()),
                );
                self.rollout = rollout;
            }
        }
    }

    /// An absent annotation clears its weight; an invalid one is reported once and ignored, so the
    /// previous weight stays.
    fn apply_annotation(&mut self, raw: Option<&str>) {
        let Some(raw) = raw else {
            self.policy.annotation = None;
            self.rejected_annotation = None;
            return;
        };
        match canary::parse_annotation(raw) {
            Ok(weight) => {
                self.policy.annotation = Some(weight);
                self.rejected_annotation = None;
            }
            Err(error) if self.rejected_annotation.as_deref() != Some(raw) => {
                tracing::warn!(%error, "ignoring the canary weight annotation; the previous weight stays");
                self.metrics.config_error("annotation");
                self.rejected_annotation = Some(raw.to_owned());
            }
            Err(_) => {}
        }
    }

    /// Samples the canary's outcomes and aborts it when its error rate is over the limit.
    fn check_abort(&mut self) {
        let Some(config) = self.config.canary.abort else {
            return;
        };
        let (requests, errors) =
            self.abort_window
                .observe(Instant::now(), self.canary_stats.totals(), config.window);
        if self.policy.aborted.is_some() {
            return;
        }
        let Some(error_rate) = canary::should_abort(&config, requests, errors) else {
            return;
        };
        let plan = self.policy.plan(self.rollout.as_ref(), &self.endpoints);
        let Some(version) = plan.intent.canary.clone() else {
            return;
        };
        let message = format!(
            "canary {version} aborted: error rate {:.1}% ({errors} of {requests} requests in the \
             last {:?}) is over the {:.1}% limit; its weight is 0 until the weight or the revision \
             changes",
            error_rate * 100.0,
            config.window,
            config.max_error_rate * 100.0
        );
        tracing::error!(%version, error_rate, requests, errors, "{message}");
        self.policy.aborted = Some(Aborted {
            error_rate,
            requests,
            errors,
            window_seconds: config.window.as_secs_f64(),
            intent: plan.intent,
        });
        if let Some(events) = &self.events {
            events.canary_aborted(message);
        }
        self.publish();
    }

    fn publish(&mut self) -> CanaryStatus {
        let plan = self.policy.plan(self.rollout.as_ref(), &self.endpoints);
        if self.intent.as_ref() != Some(&plan.intent) {
            if self.policy.aborted.take().is_some() {
                tracing::info!("canary intent changed: the abort is cleared");
            }
            self.abort_window.reset();
            self.intent = Some(plan.intent.clone());
        }
        self.metrics
            .set_canary_aborted(plan.status.aborted.is_some());
        let endpoints = self
            .endpoints
            .iter()
            .map(|spec| {
                let role = if plan.canary.as_ref() == Some(&spec.version) {
                    Role::Canary
                } else {
                    Role::Stable
                };
                (spec.clone(), role)
            })
            .collect();
        let generation = self.publisher.publish(Desired {
            endpoints,
            split: plan.split,
            canary_version: plan.canary.clone(),
            canary_header: self.config.canary.header.clone(),
            settings: self.config.settings(),
        });
        self.metrics
            .set_canary_weight_configured(plan.status.configured_weight);
        tracing::info!(
            generation,
            endpoints = self.endpoints.len(),
            canary = plan.canary.as_ref().map_or("none", |v| v.as_str()),
            split = %plan.split,
            source = %plan.status.source,
            "published snapshot"
        );
        let mut status = plan.status;
        status.effective_weight = self.publisher.canary_share();
        self.status.send_replace(status.clone());
        status
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
    if old.limits != new.limits {
        tracing::warn!("limits changed: take effect on restart");
    }
    if old.tls != new.tls {
        // The files themselves reload (see `tls::watch`); which files, and TLS on or off, not.
        tracing::warn!("tls settings changed: take effect on restart (the certificate files themselves reload)");
    }
    if old.access_log != new.access_log
        || old.request_id != new.request_id
        || old.tracing != new.tracing
    {
        tracing::warn!("access_log, request_id and tracing settings take effect on restart");
    }
}
