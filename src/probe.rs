//! Active health checks: every `interval`, a GET of the health path on each known endpoint, on a
//! connection of its own; the verdict (after `healthy`/`unhealthy` results in a row) is recorded
//! in the endpoint's cell, and routing leaves unhealthy endpoints out while others can serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;
use crate::snapshot::{Endpoint, Snapshots};

/// What to check and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckConfig {
    pub path: http::uri::PathAndQuery,
    /// Checked on this port instead of the serving one, if set.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy again.
    pub healthy: u32,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy: u32,
}

/// Checks every endpoint of the current snapshot each `interval` until `shutdown`.
pub async fn run(snapshots: Snapshots, config: CheckConfig, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let endpoints: Vec<Arc<Endpoint>> = snapshots
            .load()
            .listed()
            .iter()
            .map(|l| l.endpoint.clone())
            .collect();
        let mut checks = JoinSet::new();
        for endpoint in endpoints {
            let config = config.clone();
            checks.spawn(async move {
                let address = match config.port {
                    Some(port) => SocketAddr::new(endpoint.address().ip(), port),
                    None => endpoint.address(),
                };
                let passed = tokio::time::timeout(config.timeout, check(address, &config.path))
                    .await
                    .unwrap_or(false);
                let health = endpoint.health();
                match health.record_check(passed, config.healthy, config.unhealthy) {
                    Some(false) => tracing::warn!(endpoint = %endpoint.address(), "health check failing: endpoint left out"),
                    Some(true) => tracing::info!(endpoint = %endpoint.address(), "health check passing again"),
                    None => {}
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// One GET; true for a 2xx or 3xx answer.
async fn check(address: SocketAddr, path: &http::uri::PathAndQuery) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let request = Request::get(path.as_str())
        .header(header::HOST, address.to_string())
        .header(header::USER_AGENT, "tidegate-health-check")
        .body(Empty::new());
    match request {
        Ok(request) => sender
            .send_request(request)
            .await
            .is_ok_and(|r| r.status().is_success() || r.status().is_redirection()),
        Err(_) => false,
    }
}
