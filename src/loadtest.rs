//! `tidegate loadtest`: steady HTTP load on a fixed schedule with every request recorded, so a
//! rollout can be judged second by second. An edge feature: it uses the core's shutdown signal and
//! nothing else; nothing in the proxy depends on it.
//!
//! Stages: [`plan`] → `schedule` → `engine` (connections) → [`Record`] → `tally` (the one
//! recorder) → [`Summary`] → `chart` → [`report`] / JSON / [`Progress`].
//!
//! ```no_run
//! # async fn demo(url: &str) -> Result<(), tidegate::loadtest::LoadtestError> {
//! use tidegate::loadtest::{self, Plan, Target};
//! let (_trigger, stop) = tidegate::shutdown::channel(); // dropping the trigger stops the run
//! let mut plan = Plan::new(Target::parse(url)?);
//! plan.rate = 200;
//! let running = loadtest::start(plan, stop).await?;
//! let marker = running.marker();
//! let mut live = running.live();
//! let _ = live.changed().await;
//! let latest = live.borrow().last_second.clone(); // per-version counts, failures by kind
//! marker.mark("set image v2"); // a labelled line on the report's charts
//! let summary = running.finish().await?;
//! loadtest::report::write(&summary, "rollout", "report.html".as_ref())?;
//! # Ok(()) }
//! ```

mod alarm;
mod chart;
mod csv;
mod engine;
pub mod plan;
mod progress;
mod record;
pub mod report;
mod schedule;
mod summary;
mod tally;
pub mod threshold;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use plan::{
    parse_body, parse_duration, parse_header, parse_method, parse_targets, read_targets, Plan,
    PlanError, Protocol, Stage, Target, Template, VersionFrom, VERSION_HEADER,
};
pub use progress::Progress;
pub use record::{ErrorKind, FailureCounts, FailureKind, Outcome, Record};
pub use summary::{Mark, Percentiles, SecondStats, Summary, VersionSummary};
pub use tally::Live;
pub use tls::{TlsSetupError, Verify};

use crate::shutdown::Shutdown;
use tally::{Event, RunInfo};

/// Why a load test could not run or report. (Failed requests are data, not errors.)
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("the load test stopped unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialize the summary: {0}")]
    Json(serde_json::Error),
    #[error("cannot draw the report charts: {0}")]
    Chart(String),
    /// The run completed, but failed more requests than allowed: a CI gate's "no".
    #[error("{failed} requests failed, more than --max-failures {max}")]
    TooManyFailures { failed: u64, max: u64 },
    /// The run completed, but crossed thresholds (`--threshold`): each one, with what was measured.
    #[error("thresholds crossed: {}", .0.join("; "))]
    Thresholds(Vec<String>),
}

/// A load test in progress. Dropping it does not stop the run; fire the `stop` given to
/// [`start`] for that.
pub struct Running {
    live: watch::Receiver<Live>,
    marker: Marker,
    task: JoinHandle<Result<Summary, tokio::task::JoinError>>,
}

/// Adds phase marks ("set image v2") to a running test's timeline; cheap to clone and to hand to
/// whichever task drives the phases.
#[derive(Clone)]
pub struct Marker {
    start: Instant,
    events: mpsc::UnboundedSender<Event>,
}

impl Marker {
    /// Marks the current moment with `label`. Marks made after the run ended are dropped.
    pub fn mark(&self, label: impl Into<String>) {
        let at_s = self.start.elapsed().as_secs_f64();
        let _ = self.events.send(Event::Mark(Mark {
            at_s,
            label: label.into(),
        }));
    }
}

/// Resolves the target and starts the load; returns at once. The run ends when its schedule is
/// spent (in-flight requests then finish, bounded by the plan's timeout) or when `stop` fires.
pub async fn start(plan: Plan, stop: Shutdown) -> Result<Running, LoadtestError> {
    if plan.timeout.is_zero() {
        return Err(PlanError::Duration("0s".to_owned()).into());
    }
    let address = match plan.connect_to {
        Some(address) => address,
        None => resolve(plan.target.authority()).await?,
    };
    let (events, received) = mpsc::unbounded_channel();
    let (live_tx, live) = watch::channel(Live::default());
    let start = Instant::now();
    let info = RunInfo {
        target: plan.target.to_string(),
        protocol: plan.protocol.as_str(),
        rate: match plan.stages.is_empty() {
            true => plan.rate,
            false => 0,
        },
        stages: plan.stages.clone(),
        connections: plan.connections.get(),
        duration: plan.length(),
    };
    let csv = match &plan.csv {
        Some(path) => Some(
            csv::Csv::create(path).map_err(|source| LoadtestError::Write {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let recorder = tokio::spawn(tally::record(received, live_tx, start, info, csv));
    let shared = Arc::new(engine::Shared::new(&plan, address, start, events.clone())?);
    let done = events.clone();
    let (protocol, connections) = (plan.protocol, plan.connections.get());
    let task = tokio::spawn(async move {
        let stopped_early = engine::drive(shared, protocol, connections, stop).await;
        let _ = done.send(Event::Done { stopped_early });
        recorder.await
    });
    Ok(Running {
        live,
        marker: Marker { start, events },
        task,
    })
}

/// [`start`], then [`Running::finish`]: for callers that only want the summary.
pub async fn run(plan: Plan, stop: Shutdown) -> Result<Summary, LoadtestError> {
    start(plan, stop).await?.finish().await
}

impl Running {
    /// The run so far, republished a few times a second; `last_second` is the latest complete
    /// second (per-version counts, failures by kind, latency).
    pub fn live(&self) -> watch::Receiver<Live> {
        self.live.clone()
    }

    /// A handle for adding phase marks while the run goes on.
    pub fn marker(&self) -> Marker {
        self.marker.clone()
    }

    /// Waits for the run to end and returns what it saw.
    pub async fn finish(self) -> Result<Summary, LoadtestError> {
        Ok(self.task.await??)
    }
}

impl Summary {
    /// Judges the run against `thresholds`, keeping each verdict in the summary (for the JSON and
    /// the report); `Err(Thresholds)` naming every one crossed.
    pub fn judge(&mut self, thresholds: &[threshold::Threshold]) -> Result<(), LoadtestError> {
        self.thresholds = thresholds.iter().map(|t| t.judge(self)).collect();
        self.check_thresholds()
    }

    /// `Err(Thresholds)` naming every threshold in the summary that the run crossed.
    pub fn check_thresholds(&self) -> Result<(), LoadtestError> {
        let crossed: Vec<String> = self
            .thresholds
            .iter()
            .filter(|v| !v.passed)
            .map(ToString::to_string)
            .collect();
        match crossed.is_empty() {
            true => Ok(()),
            false => Err(LoadtestError::Thresholds(crossed)),
        }
    }

    /// `Err(TooManyFailures)` when more than `max` requests failed: the exit status of a CI gate.
    pub fn check(&self, max: u64) -> Result<(), LoadtestError> {
        match self.failed > max {
            true => Err(LoadtestError::TooManyFailures {
                failed: self.failed,
                max,
            }),
            false => Ok(()),
        }
    }
}

async fn resolve(authority: &str) -> Result<SocketAddr, LoadtestError> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|source| LoadtestError::Resolve {
            authority: authority.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| LoadtestError::NoAddress(authority.to_owned()))
}
