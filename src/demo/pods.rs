//! The demo's "kubelet": runs a pod's server when the simulated deployment controller creates it,
//! kills it when the controller deletes it, and feeds every change of the Deployment's state to
//! tidegate as a discovery [`Update`].

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc;

use super::deployment::{Action, Deployment, PodId};
use crate::discovery::Update;
use crate::shutdown::{self, Trigger};

use super::{backend, DemoError};

/// A simulated Deployment with real servers behind its pods.
pub struct Cluster {
    deployment: Deployment,
    running: HashMap<PodId, Trigger>,
    updates: mpsc::Sender<Update>,
    last: Option<Update>,
}

impl Cluster {
    pub fn new(deployment: Deployment, updates: mpsc::Sender<Update>) -> Self {
        Self {
            deployment,
            running: HashMap::new(),
            updates,
            last: None,
        }
    }

    /// The Deployment, for `kubectl`-style changes between ticks.
    pub fn deployment(&mut self) -> &mut Deployment {
        &mut self.deployment
    }

    /// One reconcile: start and kill pods as the controller says, then tell tidegate what the
    /// EndpointSlices now say. A killed pod dies before tidegate hears of it, as with a real
    /// kubelet and a lagging endpoints controller.
    pub async fn tick(&mut self) -> Result<(), DemoError> {
        let now = Instant::now();
        for action in self.deployment.step(now) {
            match action {
                Action::Start { pod, name, version } => {
                    let (trigger, stop) = shutdown::channel();
                    let ip = u8::try_from(pod.index() % 250 + 1).unwrap_or(1);
                    let address = backend::spawn(version.as_str(), &name, ip, stop).await?;
                    self.deployment.started(pod, address);
                    self.running.insert(pod, trigger);
                }
                Action::Stop { pod } => {
                    if let Some(process) = self.running.remove(&pod) {
                        process.fire();
                    }
                }
            }
        }
        let update = self.deployment.update(Instant::now());
        if self.last.as_ref() != Some(&update) {
            self.updates
                .send(update.clone())
                .await
                .map_err(|_| DemoError::ProxyStopped)?;
            self.last = Some(update);
        }
        Ok(())
    }
}
