//! One proxy instance, wired: listeners, the control loop, the config watcher, the admin API and the
//! data plane, all stopped by one [`Shutdown`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

use crate::access_log::{AccessLog, OwnErrors};
use crate::config::{Config, DiscoveryConfig};
use crate::control::Control;
use crate::discovery::kubernetes::{self, DiscoveryError};
use crate::discovery::Update;
use crate::forward::{self, ServeOptions};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{CanaryStats, Publisher};
use crate::tls::{self, Tls};
use crate::trace::otlp::Exporter;
use crate::{admin, probe, reload};

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address} ({field}): {source}")]
    Bind {
        field: &'static str,
        address: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
}

/// Where the running config came from, so that it can be watched for changes.
pub struct ConfigFile {
    pub path: PathBuf,
    /// The bytes the running config was parsed from.
    pub contents: Vec<u8>,
}

/// A proxy whose listeners are bound but which serves nothing yet.
pub struct Server {
    listener: TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Server {
    /// Binds the proxy and admin listeners from `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let (listener, local_addr) = bind("listen", config.listen).await?;
        let (admin, admin_addr) = bind("admin.listen", config.admin.listen).await?;
        Ok(Self {
            listener,
            admin,
            local_addr,
            admin_addr,
        })
    }

    /// The proxy's bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin API's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown`, then drains. Watches `file` for config changes if given.
    pub async fn run(
        self,
        config: Config,
        file: Option<ConfigFile>,
        shutdown: Shutdown,
    ) -> Result<(), ServerError> {
        self.serve(config, file, None, shutdown).await
    }

    /// Like [`run`](Self::run), with endpoints from a source outside the config (the demo's
    /// simulated Deployment), through the same control loop every source feeds.
    pub async fn run_with_source(
        self,
        config: Config,
        updates: mpsc::Receiver<Update>,
        shutdown: Shutdown,
    ) -> Result<(), ServerError> {
        self.serve(config, None, Some(updates), shutdown).await
    }

    async fn serve(
        self,
        config: Config,
        file: Option<ConfigFile>,
        source: Option<mpsc::Receiver<Update>>,
        shutdown: Shutdown,
    ) -> Result<(), ServerError> {
        let guard = admin::Guard::new(config.admin.listen, config.admin.token.clone());
        if guard == admin::Guard::Refused {
            tracing::warn!(admin = %config.admin.listen, "admin API listens beyond loopback without a token: mutating calls are refused");
        }
        let metrics = Arc::new(Metrics::new());
        metrics.set_forget_after(config.forget_versions_after);
        let (publisher, snapshots) = Publisher::new(config.settings(), metrics.clone());
        let options = ServeOptions {
            header_read_timeout: config.timeouts.header_read,
            drain_timeout: config.timeouts.drain,
            limits: config.limits,
        };
        let (updates, updates_rx) = match source {
            Some(source) => (None, source),
            None => {
                let (updates, updates_rx) = mpsc::channel(16);
                (Some(updates), updates_rx)
            }
        };
        let mut events = None;
        if let (DiscoveryConfig::Kubernetes(kube), Some(updates)) = (&config.discovery, updates) {
            let client = kubernetes::connect(kube).await?;
            events = kubernetes::EventRecorder::new(client.clone(), kube);
            tokio::spawn(kubernetes::run(
                client,
                kube.clone(),
                updates,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        let (configs, configs_rx) = mpsc::channel(4);
        if let Some(file) = file {
            tokio::spawn(reload::watch(
                file.path,
                config.reload_interval,
                file.contents,
                configs,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        let tls = match &config.tls {
            Some(files) => {
                let tls = Arc::new(Tls::new(files.clone())?);
                tokio::spawn(tls::watch(
                    tls.clone(),
                    config.reload_interval,
                    metrics.clone(),
                    shutdown.clone(),
                ));
                Some(tls)
            }
            None => None,
        };
        let telemetry = Arc::new(forward::Telemetry {
            access_log: match &config.access_log {
                Some(log) => Some(AccessLog::start(log, metrics.access_log_dropped())?),
                None => None,
            },
            request_id: config.request_id.clone(),
            start: config.tracing.start,
            spans: config
                .tracing
                .otlp
                .clone()
                .map(|otlp| Exporter::start(otlp, metrics.trace_spans(), shutdown.clone())),
            own_errors: OwnErrors::default(),
        });
        let config_checks = config.health_check.clone();
        let static_discovery = matches!(config.discovery, DiscoveryConfig::Static { .. });
        let canary_stats = Arc::new(CanaryStats::default());
        let control = Control::start(
            config,
            publisher,
            metrics.clone(),
            canary_stats.clone(),
            events,
        );
        let canary = control.status();
        let (commands, commands_rx) = mpsc::channel(4);
        tokio::spawn(control.run(configs_rx, updates_rx, commands_rx));
        if let Some(checks) = config_checks {
            tokio::spawn(probe::run(snapshots.clone(), checks, shutdown.clone()));
        }
        tokio::spawn(admin::serve(
            self.admin,
            admin::Admin {
                snapshots: snapshots.clone(),
                metrics: metrics.clone(),
                canary,
                commands,
                guard,
                static_discovery,
            },
            shutdown.clone(),
        ));
        forward::serve(
            self.listener,
            tls,
            snapshots,
            &metrics,
            options,
            canary_stats,
            telemetry.clone(),
            shutdown,
        )
        .await;
        if let Some(log) = &telemetry.access_log {
            log.close(ACCESS_LOG_CLOSE);
        }
        Ok(())
    }
}

/// How long the exit waits for the access log's last lines to be written.
const ACCESS_LOG_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Connections the kernel may hold for a listener before tidegate accepts them (it caps this at
/// `net.core.somaxconn`, 4096 by default). std's and tokio's 128 overflow when thousands of clients
/// reconnect at once (after a deploy, behind a load balancer): SYNs beyond it are dropped, and
/// each such client waits a second for its retransmit. nginx uses 511, HAProxy its maxconn.
const ACCEPT_BACKLOG: u32 = 4096;

async fn bind(
    field: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServerError> {
    let error = |source| ServerError::Bind {
        field,
        address,
        source,
    };
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(error)?;
    // As std and tokio do: a restarted proxy can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(address).map_err(error)?;
    let listener = socket.listen(ACCEPT_BACKLOG).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}
