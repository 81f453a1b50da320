//! What a run saw, as data: totals, failures by kind, latency percentiles, each version's count and
//! serving window, the per-second series and the phase marks. Printed for people, serialized for
//! machines (`--json`), charted by `report`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::plan::{parse_duration, PlanError, Stage};
use super::record::FailureCounts;
use super::LoadtestError;

/// The whole run. Built by the recorder when the run ends; `marks` may be added to afterwards.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub protocol: &'static str,
    /// Planned requests per second; 0 = closed loop (or stages).
    pub rate: u32,
    /// The ramping rate's stages, when the run had them (then `rate` is 0).
    pub stages: Vec<Stage>,
    pub connections: usize,
    /// Planned duration.
    pub duration_s: f64,
    /// From the first scheduled start to the last outcome.
    pub elapsed_s: f64,
    /// Stopped by a shutdown signal before the schedule ended.
    pub stopped_early: bool,
    /// Every request recorded: those with a response plus those without.
    pub requests: u64,
    pub responses: u64,
    /// 5xx responses plus requests with no response.
    pub failed: u64,
    /// Requests that could not start on time because every connection was busy.
    pub late: u64,
    pub failures: FailureCounts,
    pub statuses: BTreeMap<u16, u64>,
    /// Over every response, from each request's intended start (as [`super::Record::latency`]);
    /// `None` without any.
    pub latency: Option<Percentiles>,
    /// The latency distribution: (percentile 0–100, ms) points, denser towards the tail.
    pub distribution: Vec<(f64, f64)>,
    /// Over every response, measured from the actual send: the service time alone.
    pub service: Option<Percentiles>,
    /// How late on-time requests actually started (the load generator's own accuracy).
    pub start_lag: Option<Percentiles>,
    /// In order of first appearance; `seconds[].by_version` is indexed the same way.
    pub versions: Vec<VersionSummary>,
    pub seconds: Vec<SecondStats>,
    pub marks: Vec<Mark>,
    /// Each `--threshold` and how the run fared (filled by [`Summary::judge`]).
    pub thresholds: Vec<super::threshold::Verdict>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One version's responses and when it served them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionSummary {
    /// The version as the response said it, or `(none)` for responses that did not say.
    pub name: String,
    pub responses: u64,
    /// Its 5xx responses.
    pub failed: u64,
    /// Of all responses, 0–1.
    pub share: f64,
    /// The first and last second (from the start) in which it answered.
    pub first_second: u64,
    pub last_second: u64,
    /// Its responses' latency from the intended start: the canary's tail beside stable's.
    pub latency: Option<Percentiles>,
    /// Its latency distribution, as [`Summary::distribution`].
    pub distribution: Vec<(f64, f64)>,
}

/// One second of the run; a request counts in the second its outcome was known.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SecondStats {
    pub second: u64,
    /// Requests whose outcome was known in this second (responses and failures).
    pub requests: u64,
    /// Responses by version, indexed like [`Summary::versions`] (shorter when a version appeared
    /// later: missing entries are 0).
    pub by_version: Vec<u64>,
    pub failures: FailureCounts,
    pub late: u64,
    /// Latency of this second's responses; `None` when there were none.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Each version's p99 in this second, indexed like `by_version` (`None`: it did not answer).
    pub p99_by_version: Vec<Option<f64>>,
}

impl SecondStats {
    /// Responses from version `index` in this second.
    pub fn version(&self, index: usize) -> u64 {
        self.by_version.get(index).copied().unwrap_or(0)
    }
}

/// A labelled moment on the timeline, such as "set image v2"; drawn as a vertical line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// Seconds since the run started.
    pub at_s: f64,
    pub label: String,
}

impl Mark {
    /// Parses `AT:LABEL` (`12s:set image v2`), for `--mark`.
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let (at, label) = s
            .split_once(':')
            .ok_or_else(|| PlanError::Mark(s.to_owned()))?;
        Ok(Mark {
            at_s: parse_duration(at)?.as_secs_f64(),
            label: label.trim().to_owned(),
        })
    }
}

/// Microseconds to milliseconds.
pub(super) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Summary {
    /// The run as pretty-printed JSON (`--json`).
    pub fn to_json(&self) -> Result<String, LoadtestError> {
        serde_json::to_string_pretty(self).map_err(LoadtestError::Json)
    }

    /// Writes [`Summary::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadtestError> {
        write_file(path, self.to_json()?.as_bytes())
    }

    /// Requests per second over the planned duration (or the time it ran, when that was longer
    /// or it was stopped early).
    pub fn achieved_rate(&self) -> f64 {
        let seconds = match self.stopped_early {
            true => self.elapsed_s,
            false => self.elapsed_s.max(self.duration_s),
        };
        match seconds > 0.0 {
            true => self.requests as f64 / seconds,
            false => 0.0,
        }
    }

    /// "500 req/s for 60s", "closed loop for 60s" or "0→100→1000→0 req/s over 10s, 30s, 10s
    /// (50s)".
    pub fn load_description(&self) -> String {
        let what = match self.rate {
            _ if !self.stages.is_empty() => {
                let mut rates = String::from("0");
                for stage in &self.stages {
                    rates.push_str(&format!("→{}", stage.target));
                }
                let lengths: Vec<String> = self
                    .stages
                    .iter()
                    .map(|s| format!("{}s", trim(s.duration.as_secs_f64())))
                    .collect();
                format!("{rates} req/s over {} (ramping)", lengths.join(", "))
            }
            0 => "closed loop".to_owned(),
            rate => format!("{rate} req/s"),
        };
        format!(
            "{what} for {}s over {} {}",
            trim(self.duration_s),
            self.connections,
            if self.protocol == "HTTP/2" {
                "streams"
            } else {
                "connections"
            }
        )
    }
}

/// Writes `contents` to `path`, naming the path in the error.
pub(super) fn write_file(path: &Path, contents: &[u8]) -> Result<(), LoadtestError> {
    std::fs::write(path, contents).map_err(|source| LoadtestError::Write {
        path: path.to_owned(),
        source,
    })
}

/// `1.5`, `60` (no trailing `.0`).
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tidegate loadtest {} ({}, {}){}",
            self.target,
            self.protocol,
            self.load_description(),
            if self.stopped_early {
                ", stopped early"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  requests  {} in {:.1}s ({:.1}/s): {} failed, {} late",
            self.requests,
            self.elapsed_s,
            self.achieved_rate(),
            self.failed,
            self.late
        )?;
        let failures: Vec<String> = self
            .failures
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{} {n}", kind.as_str()))
            .collect();
        let failures = match failures.is_empty() {
            true => "none".to_owned(),
            false => failures.join(", "),
        };
        writeln!(f, "  failures  {failures}")?;
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let statuses = match statuses.is_empty() {
            true => "none".to_owned(),
            false => statuses.join(", "),
        };
        writeln!(f, "  statuses  {statuses}")?;
        for (label, percentiles) in [("latency", &self.latency), ("service", &self.service)] {
            if let Some(l) = percentiles {
                writeln!(
                    f,
                    "  {label:<9} min {:.2}ms, p50 {:.2}ms, p90 {:.2}ms, p99 {:.2}ms, p99.9 {:.2}ms, \
                     max {:.2}ms",
                    l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                )?;
            }
        }
        if let Some(l) = &self.start_lag {
            writeln!(
                f,
                "  schedule  started {:.3}ms after their time at p50, {:.3}ms at p99 (latency counts \
                 from the intended start, waits for a busy connection included, this lag not; \
                 service from the actual send)",
                l.p50_ms, l.p99_ms
            )?;
        }
        let width = self
            .versions
            .iter()
            .map(|v| v.name.len())
            .max()
            .unwrap_or(0);
        for (i, v) in self.versions.iter().enumerate() {
            write!(
                f,
                "  {}  {:width$}  {:>8} ({:5.1}%), {} 5xx, served {}s–{}s",
                if i == 0 { "versions" } else { "        " },
                v.name,
                v.responses,
                v.share * 100.0,
                v.failed,
                v.first_second,
                v.last_second,
            )?;
            match &v.latency {
                Some(l) => writeln!(
                    f,
                    ", p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms max {:.2}ms",
                    l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                )?,
                None => writeln!(f)?,
            }
        }
        for mark in &self.marks {
            writeln!(f, "  at {:6.1}s  {}", mark.at_s, mark.label)?;
        }
        for (i, verdict) in self.thresholds.iter().enumerate() {
            writeln!(
                f,
                "  {}  {} {} (measured {})",
                if i == 0 { "threshold" } else { "         " },
                if verdict.passed { "passed" } else { "CROSSED" },
                verdict.threshold,
                verdict.measured
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_without_noise() {
        assert_eq!(trim(60.0), "60");
        assert_eq!(trim(1.5), "1.5");
        assert_eq!(trim(0.25), "0.25");
    }

    #[test]
    fn marks_from_the_command_line() {
        let mark = Mark::parse("12.5s: set image v2").unwrap();
        assert_eq!((mark.at_s, mark.label.as_str()), (12.5, "set image v2"));
        assert!(Mark::parse("set image").is_err());
        assert!(Mark::parse("soon:x").is_err());
    }
}
