//! `tidegate demo`: a rolling update you can watch, in one process on loopback with nothing
//! installed. A simulated Deployment of four kubia "pods" feeds tidegate through the same control
//! loop every discovery source feeds; `tidegate loadtest` drives steady load through it while the
//! story runs v1 → paused v2 canary at 10% and 50% → v2 → broken v10 → undo.

mod backend;
mod deployment;
mod pods;
mod story;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{Config, DiscoveryConfig};
use crate::loadtest::{self, LoadtestError, Plan, Summary, Target};
use crate::server::{Server, ServerError};
use crate::shutdown::{self, Shutdown};
use crate::snapshot::Version;
use deployment::{Deployment, Spec, Strategy};

pub use story::STORY_SECONDS;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a demo pod: {0}")]
    Pod(#[from] std::io::Error),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Load(#[from] LoadtestError),
    #[error("the proxy stopped during the demo")]
    ProxyStopped,
    #[error("the demo story is broken: {0}")]
    Story(&'static str),
    /// The story ran, but requests failed: exactly what the demo exists to show does not happen.
    #[error("{failed} of {requests} requests failed")]
    Failed { failed: u64, requests: u64 },
}

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The story's length; every delay and hold scales with it.
    pub duration: Duration,
    /// Requests per second of the built-in load.
    pub rate: u32,
    /// Where to write the HTML report; `None` for no report.
    pub report: Option<PathBuf>,
    /// Also write the load test's data as JSON.
    pub json: Option<PathBuf>,
    /// Keep the proxy and the pods running after the story, until Ctrl-C.
    pub serve: bool,
    /// Turn off retries and outlier ejection: what the same rollout costs behind a proxy that
    /// only follows endpoints.
    pub unprotected: bool,
}

/// Runs the story (and then the playground with `serve`), until done or Ctrl-C. Any failed
/// request makes it an error.
pub async fn run(options: Options) -> Result<(), DemoError> {
    let (trigger, stop) = shutdown::channel();
    let (interrupt, mut interrupted_rx) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        interrupt.fire();
    });

    let scale = options.duration.as_secs_f64() / STORY_SECONDS;
    let spec = Spec {
        replicas: 4,
        strategy: Strategy {
            max_surge: 1,
            max_unavailable: 0,
        },
        min_ready: Duration::from_secs_f64(1.0 * scale),
        readiness_delay: Duration::from_secs_f64(1.5 * scale),
        endpoint_lag: Duration::from_secs_f64(0.4 * scale),
    };
    let v1 = Version::new("v1").map_err(|_| DemoError::Story("bad version"))?;
    let (updates, source) = mpsc::channel(16);
    let mut cluster = pods::Cluster::new(Deployment::new("kubia", spec, v1), updates);

    let mut config = Config::with_discovery(DiscoveryConfig::Static {
        endpoints: Vec::new(),
    });
    config.listen = options.listen;
    config.admin.listen = options.admin;
    config.expose_version_header = true;
    if options.unprotected {
        config.retries.connect_attempts = 1;
        config.retries.policy.on_reset = false;
        config.retries.policy.on_502 = false;
        config.retries.policy.on_503 = false;
        config.outlier = None;
    }
    let server = Server::bind(&config).await?;
    let (proxy, admin) = (server.local_addr(), server.admin_addr());
    let proxy_task = tokio::spawn(server.run_with_source(config, source, stop.clone()));

    println!("tidegate demo: a Deployment of 4 kubia pods rolled v1 → v2 (canary) → v10 → undo, under load");
    println!("  proxy:  http://{proxy}/");
    println!("  admin:  http://{admin}/endpoints  http://{admin}/canary  http://{admin}/metrics");

    // The pods come up before the load starts, as a Deployment created beforehand would.
    let deadline = Instant::now() + Duration::from_secs(10).max(options.duration);
    while !cluster.deployment().is_complete(Instant::now()) && Instant::now() < deadline {
        cluster.tick().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (load_trigger, load_stop) = shutdown::channel();
    let mut plan =
        Plan::new(Target::parse(&format!("http://{proxy}/")).map_err(LoadtestError::from)?);
    plan.rate = options.rate;
    // Bounded even if the story stalls; the story's end stops it sooner.
    plan.duration = options.duration * 2 + Duration::from_secs(10);
    plan.connections = std::num::NonZeroUsize::new(16).expect("16 is not zero");
    let running = loadtest::start(plan, load_stop).await?;
    let (mut live, marker) = (running.live(), running.marker());
    let started = Instant::now();

    let story = story::run(&mut cluster, scale, &mut live, &marker, started);
    let phases = tokio::select! {
        phases = story => Some(phases?),
        _ = interrupted_rx.wait() => None,
    };
    load_trigger.fire();
    let summary = running.finish().await?;

    if let Some(phases) = &phases {
        // Quoted labels, padded to the longest so the columns line up.
        let width = phases
            .iter()
            .map(|p| p.label.len() + 2)
            .fold(26, usize::max);
        println!(
            "\n{:<width$} seconds  requests  failed  versions (after settling)",
            "phase",
            width = width + 4
        );
        for p in phases {
            println!(
                "phase {:<width$} {:>6.1} {:>9} {:>7}  {}",
                format!("\"{}\"", p.label),
                p.seconds,
                p.requests,
                p.failed,
                p.shares()
            );
        }
    }
    print_summary(&summary);
    write_files(&summary, &options)?;

    if options.serve && phases.is_some() {
        println!("\nstill serving (Ctrl-C stops):");
        println!("  try:    for i in $(seq 20); do curl -s http://{proxy}/; done | sort | uniq -c");
        // The rollout is complete, so there is no canary left to steer: show the state instead.
        println!("  look:   curl http://{admin}/endpoints; curl http://{admin}/canary");
        serve(&mut cluster, interrupted_rx).await?;
    }
    trigger.fire();
    let _ = proxy_task.await;
    match summary.failed {
        0 => Ok(()),
        failed => Err(DemoError::Failed {
            failed,
            requests: summary.requests,
        }),
    }
}

/// Keeps the simulated Deployment reconciling until Ctrl-C.
async fn serve(cluster: &mut pods::Cluster, mut interrupted: Shutdown) -> Result<(), DemoError> {
    loop {
        tokio::select! {
            _ = interrupted.wait() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => cluster.tick().await?,
        }
    }
}

fn print_summary(summary: &Summary) {
    println!("\n{} requests, {} failed", summary.requests, summary.failed);
    for v in &summary.versions {
        println!(
            "  {:<6} {:>7} responses ({:>5.1}%), served from {}s to {}s",
            v.name,
            v.responses,
            v.share * 100.0,
            v.first_second,
            v.last_second
        );
    }
    if let Some(latency) = summary.latency {
        println!(
            "  latency p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
            latency.p50_ms, latency.p99_ms, latency.max_ms
        );
    }
}

fn write_files(summary: &Summary, options: &Options) -> Result<(), DemoError> {
    if let Some(path) = &options.report {
        loadtest::report::write(summary, "tidegate demo: kubia v1 → v2 → v10 → undo", path)?;
        println!("report: {}", path.display());
    }
    if let Some(path) = &options.json {
        summary.write_json(path)?;
        println!("data:   {}", path.display());
    }
    Ok(())
}
