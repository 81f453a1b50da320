//! Watches the config file and hands each new valid version to the control loop.
//!
//! Polls by path and compares contents, which survives editors that replace the file and
//! ConfigMap-style symlink swaps alike. An invalid version is logged and counted and never applied:
//! the running config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Polls `path` every `interval` (or the interval of the latest valid config) until shutdown.
/// `seen` is the content the running config was loaded from.
pub async fn watch(
    path: PathBuf,
    mut interval: Duration,
    mut seen: Vec<u8>,
    configs: mpsc::Sender<Config>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    let mut read_failing = false;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => {
                read_failing = false;
                bytes
            }
            Err(error) => {
                // Usually a moment inside an editor's or kubelet's replace; say it once.
                if !read_failing {
                    tracing::warn!(path = %path.display(), %error, "cannot read config; keeping the running one");
                    read_failing = true;
                }
                continue;
            }
        };
        if bytes == seen {
            continue;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| format!("invalid config {}: not UTF-8: {e}", path.display()))
            .and_then(|text| Config::parse(text, &path).map_err(|e| e.to_string()));
        seen = bytes;
        match parsed {
            Ok(config) => {
                metrics.config_reload(true);
                tracing::info!(path = %path.display(), "config changed; applying");
                interval = config.reload_interval;
                if configs.send(config).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                metrics.config_reload(false);
                tracing::error!(%error, "config change rejected; the running config keeps serving");
            }
        }
    }
}
