//! The demo's rollout story, phase by phase, as the tutorials tell it: kubia's paused rollout as a
//! weighted canary, then the bootcamp's broken v10 and `kubectl rollout undo`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::deployment::Deployment;
use crate::loadtest::{Live, Marker};
use crate::snapshot::Version;

use super::pods::Cluster;
use super::DemoError;

/// How often the simulated controller reconciles.
const TICK: Duration = Duration::from_millis(50);

/// Traffic right after a change still reflects the previous phase (requests in flight, the live
/// counters' refresh); a phase's shares are measured from this long after it starts.
const SETTLE: Duration = Duration::from_millis(400);

/// What a phase waits for before its hold time starts.
#[derive(Clone, Copy)]
enum Until {
    Now,
    /// This many pods of the newest template are available.
    NewestAvailable(usize),
    /// `kubectl rollout status` would return.
    Complete,
}

/// `kubectl` verbs the story uses.
#[derive(Clone, Copy)]
enum Step {
    Nothing,
    SetImage(&'static str, bool),
    PauseWithWeight(&'static str),
    Weight(&'static str),
    Resume,
    Undo,
}

struct Phase {
    /// Short, for the chart's marks and the summary.
    label: &'static str,
    /// What the user would type.
    command: &'static str,
    step: Step,
    until: Until,
    /// Seconds of the 60-second story spent in this phase once `until` holds.
    hold: f64,
}

const PHASES: [Phase; 7] = [
    Phase {
        label: "v1 steady",
        command: "kubectl create deployment kubia --image=kubia:v1 --replicas=4",
        step: Step::Nothing,
        until: Until::Complete,
        hold: 8.0,
    },
    Phase {
        label: "set image v2",
        command: "kubectl set image deployment/kubia app=kubia:v2",
        step: Step::SetImage("v2", true),
        until: Until::NewestAvailable(1),
        hold: 0.0,
    },
    Phase {
        label: "paused, canary 10%",
        command: "kubectl rollout pause deployment/kubia; kubectl annotate deployment/kubia tidegate.io/canary-weight=10",
        step: Step::PauseWithWeight("10"),
        until: Until::Now,
        hold: 10.0,
    },
    Phase {
        label: "canary 50%",
        command: "kubectl annotate --overwrite deployment/kubia tidegate.io/canary-weight=50",
        step: Step::Weight("50"),
        until: Until::Now,
        hold: 10.0,
    },
    Phase {
        label: "resume to v2",
        command: "kubectl rollout resume deployment/kubia",
        step: Step::Resume,
        until: Until::Complete,
        hold: 4.0,
    },
    Phase {
        label: "set image v10 (never ready)",
        command: "kubectl set image deployment/kubia app=kubia:v10",
        step: Step::SetImage("v10", false),
        until: Until::Now,
        hold: 10.0,
    },
    Phase {
        label: "undo to v2",
        command: "kubectl rollout undo deployment/kubia",
        step: Step::Undo,
        until: Until::Complete,
        hold: 6.0,
    },
];

/// The story's length in its own units; `--duration` scales every hold and pod delay by
/// `duration / STORY_SECONDS`.
pub const STORY_SECONDS: f64 = 60.0;

/// What one phase's traffic looked like.
pub struct PhaseReport {
    pub label: &'static str,
    pub seconds: f64,
    pub requests: u64,
    pub failed: u64,
    /// Responses by version, measured after the phase settled.
    pub by_version: BTreeMap<String, u64>,
}

impl PhaseReport {
    /// `v1 90.1% · v2 9.9%`.
    pub fn shares(&self) -> String {
        let total: u64 = self.by_version.values().sum();
        if total == 0 {
            return "-".to_owned();
        }
        self.by_version
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| format!("{v} {:.1}%", *n as f64 * 100.0 / total as f64))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// Runs every phase, printing each as it happens and a live line every second.
pub async fn run(
    cluster: &mut Cluster,
    scale: f64,
    live: &mut watch::Receiver<Live>,
    marker: &Marker,
    started: Instant,
) -> Result<Vec<PhaseReport>, DemoError> {
    let mut reports = Vec::with_capacity(PHASES.len());
    let mut next_line = Instant::now() + Duration::from_secs(1);
    for phase in &PHASES {
        apply(cluster.deployment(), phase.step)?;
        marker.mark(phase.label);
        println!(
            "\n▶ [{:>5.1}s] {}\n  $ {}",
            started.elapsed().as_secs_f64(),
            phase.label,
            phase.command
        );
        let begin = Instant::now();
        // Waiting for the condition is bounded: a story stuck here is a bug, not a slow pod.
        let deadline = begin + Duration::from_secs_f64(30.0 * scale).max(Duration::from_secs(10));
        let mut held_from = None;
        let mut baseline = None;
        loop {
            cluster.tick().await?;
            let now = Instant::now();
            if baseline.is_none() && now >= begin + SETTLE {
                baseline = Some(counts(&live.borrow()));
            }
            if held_from.is_none()
                && (reached(cluster.deployment(), phase.until, now) || now >= deadline)
            {
                if now >= deadline {
                    println!(
                        "  (gave up waiting for the rollout after {:?})",
                        now - begin
                    );
                }
                held_from = Some(now);
            }
            if let Some(from) = held_from {
                if now >= from + Duration::from_secs_f64(phase.hold * scale)
                    && now >= begin + SETTLE * 2
                {
                    break;
                }
            }
            if now >= next_line {
                next_line += Duration::from_secs(1);
                print_live(&live.borrow(), cluster.deployment().describe(now));
            }
            tokio::time::sleep(TICK).await;
        }
        let end = counts(&live.borrow());
        let start = baseline.unwrap_or_default();
        reports.push(PhaseReport {
            label: phase.label,
            seconds: begin.elapsed().as_secs_f64(),
            requests: end.requests - start.requests,
            failed: end.failed - start.failed,
            by_version: end
                .by_version
                .iter()
                .map(|(v, n)| (v.clone(), n - start.by_version.get(v).copied().unwrap_or(0)))
                .collect(),
        });
    }
    Ok(reports)
}

fn apply(deployment: &mut Deployment, step: Step) -> Result<(), DemoError> {
    let version = |v: &str| Version::new(v).map_err(|_| DemoError::Story("bad version"));
    match step {
        Step::Nothing => {}
        Step::SetImage(v, healthy) => deployment.set_image(version(v)?, healthy),
        Step::PauseWithWeight(weight) => {
            deployment.set_paused(true);
            deployment.annotate_weight(Some(weight));
        }
        Step::Weight(weight) => deployment.annotate_weight(Some(weight)),
        Step::Resume => deployment.set_paused(false),
        Step::Undo => deployment.undo(),
    }
    Ok(())
}

fn reached(deployment: &Deployment, until: Until, now: Instant) -> bool {
    match until {
        Until::Now => true,
        Until::NewestAvailable(n) => deployment.newest_available(now) >= n,
        Until::Complete => deployment.is_complete(now),
    }
}

/// Cumulative counts at one moment.
#[derive(Default)]
struct Counts {
    requests: u64,
    failed: u64,
    by_version: BTreeMap<String, u64>,
}

fn counts(live: &Live) -> Counts {
    Counts {
        requests: live.requests,
        failed: live.failed,
        by_version: live
            .versions
            .iter()
            .zip(&live.by_version)
            .map(|(v, n)| (v.to_string(), *n))
            .collect(),
    }
}

fn print_live(live: &Live, pods: String) {
    let Some(second) = &live.last_second else {
        return;
    };
    let total: u64 = second.by_version.iter().sum();
    let shares = live
        .versions
        .iter()
        .enumerate()
        .filter(|(i, _)| second.version(*i) > 0)
        .map(|(i, v)| {
            format!(
                "{v} {:>3.0}%",
                second.version(i) as f64 * 100.0 / total.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join("  ");
    println!(
        "  [{:>3}s–{:<3}] {:>4} req/s  {shares:<24} failed {:<3}  pods: {pods}",
        second.second,
        format!("{}s", second.second + 1),
        second.requests,
        live.failed,
    );
}
