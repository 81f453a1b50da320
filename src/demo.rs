//! `tidegate demo`: three v1 "pods" and one v2 canary at 10%, in one process on loopback, with
//! tidegate in front. Needs nothing installed and no cluster.

mod backend;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, DiscoveryConfig};
use crate::server::{Server, ServerError};
use crate::shutdown;
use crate::snapshot::{EndpointSpec, EndpointState, Version, Weight};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a demo backend: {0}")]
    Backend(#[from] std::io::Error),
    #[error(transparent)]
    Server(#[from] ServerError),
}

const PODS: [(&str, &str); 4] = [
    ("v1", "demo-v1-0"),
    ("v1", "demo-v1-1"),
    ("v1", "demo-v1-2"),
    ("v2", "demo-v2-0"),
];

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), DemoError> {
    let (trigger, stop) = shutdown::channel();
    let mut endpoints = Vec::new();
    for (version, pod) in PODS {
        let address = backend::spawn(version, pod, stop.clone()).await?;
        endpoints.push(EndpointSpec {
            address,
            version: Version::new(version).expect("demo versions are valid"),
            state: EndpointState::Ready,
            name: Some(Arc::from(pod)),
            image: None,
        });
    }
    let mut config = Config::with_discovery(DiscoveryConfig::Static { endpoints });
    config.listen = listen;
    config.admin.listen = admin;
    config.canary.version = Some(Version::new("v2").expect("demo versions are valid"));
    config.canary.weight = Weight::new(10.0).expect("10 is a percentage");

    let server = Server::bind(&config).await?;
    let (proxy, admin) = (server.local_addr(), server.admin_addr());
    println!("tidegate demo: 3 pods of v1 and 1 pod of v2, with v2 as a 10% canary");
    println!("  proxy:  http://{proxy}/");
    println!("  admin:  http://{admin}/endpoints  http://{admin}/metrics");
    println!("  try:    for i in $(seq 20); do curl -s http://{proxy}/; done | sort | uniq -c");
    println!("  steer:  curl -X PUT -d '{{\"weight\": 50}}' http://{admin}/canary");
    println!("Ctrl-C stops everything.");
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.fire();
    });
    server.run(config, None, stop).await?;
    Ok(())
}
