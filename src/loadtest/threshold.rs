//! `--threshold`: limits a run must stay within to pass, k6 style: `p99<250ms`,
//! `failures<0.1%`, `v2:p99<300ms` (one version's latency). A run that crosses any exits 1 naming
//! every threshold crossed, so a rollout's load test can gate a CI pipeline.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::plan::PlanError;
use super::summary::{Percentiles, Summary};

/// One limit, as parsed from `--threshold`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// `v2:` in front: that version's latency instead of the whole run's.
    version: Option<String>,
    measure: Measure,
    /// `<=` rather than `<`.
    inclusive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Measure {
    /// A latency percentile (from the intended start), and its limit.
    Latency(Quantile, Duration),
    /// The share of requests that failed, 0 to 1.
    Failures(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Quantile {
    P50,
    P90,
    P99,
    P999,
    Max,
}

impl Quantile {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "p50" | "med" => Quantile::P50,
            "p90" => Quantile::P90,
            "p99" => Quantile::P99,
            "p99.9" => Quantile::P999,
            "max" => Quantile::Max,
            _ => return None,
        })
    }

    fn of(self, p: &Percentiles) -> f64 {
        match self {
            Quantile::P50 => p.p50_ms,
            Quantile::P90 => p.p90_ms,
            Quantile::P99 => p.p99_ms,
            Quantile::P999 => p.p999_ms,
            Quantile::Max => p.max_ms,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
            Quantile::P99 => "p99",
            Quantile::P999 => "p99.9",
            Quantile::Max => "max",
        }
    }
}

impl Threshold {
    /// Parses `[VERSION:]p50|p90|p99|p99.9|max<DURATION` or `[VERSION:]failures<PERCENT%`, with
    /// `<` or `<=`.
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let bad = || PlanError::Threshold(s.to_owned());
        let text = s.trim();
        let (version, rest) = match text.split_once(':') {
            Some((version, rest)) if !version.is_empty() && !version.contains('<') => {
                (Some(version.to_owned()), rest)
            }
            _ => (None, text),
        };
        let (name, inclusive, limit) = match rest.split_once("<=") {
            Some((name, limit)) => (name, true, limit),
            None => {
                let (name, limit) = rest.split_once('<').ok_or_else(bad)?;
                (name, false, limit)
            }
        };
        let (name, limit) = (name.trim(), limit.trim());
        let measure = if name == "failures" {
            let percent: f64 = limit
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .filter(|p: &f64| (0.0..=100.0).contains(p))
                .ok_or_else(bad)?;
            Measure::Failures(percent / 100.0)
        } else {
            let quantile = Quantile::parse(name).ok_or_else(bad)?;
            let limit = crate::config::parse_duration(limit).ok_or_else(bad)?;
            Measure::Latency(quantile, limit)
        };
        Ok(Self {
            version,
            measure,
            inclusive,
        })
    }

    /// How `summary` fares against this limit.
    pub fn judge(&self, summary: &Summary) -> Verdict {
        let verdict = |measured: Option<(f64, &str)>, passed: bool| Verdict {
            threshold: self.to_string(),
            measured: measured.map_or_else(
                || "no responses to measure".to_owned(),
                |(value, unit)| format!("{value:.3}{unit}"),
            ),
            passed,
            latency_limit_ms: match self.measure {
                Measure::Latency(_, limit) => Some(limit.as_secs_f64() * 1000.0),
                Measure::Failures(_) => None,
            },
            version: self.version.clone(),
        };
        let (value, limit, unit) = match self.measure {
            Measure::Failures(limit) => {
                let (failed, requests) = match &self.version {
                    Some(name) => summary
                        .versions
                        .iter()
                        .find(|v| &v.name == name)
                        .map_or((0, 0), |v| (v.failed, v.responses)),
                    None => (summary.failed, summary.requests),
                };
                let share = failed as f64 / requests.max(1) as f64;
                (share * 100.0, limit * 100.0, "%")
            }
            Measure::Latency(quantile, limit) => {
                let percentiles = match &self.version {
                    Some(name) => summary
                        .versions
                        .iter()
                        .find(|v| &v.name == name)
                        .and_then(|v| v.latency),
                    None => summary.latency,
                };
                let Some(percentiles) = percentiles else {
                    return verdict(None, false);
                };
                (
                    quantile.of(&percentiles),
                    limit.as_secs_f64() * 1000.0,
                    "ms",
                )
            }
        };
        let within = if self.inclusive {
            value <= limit
        } else {
            value < limit
        };
        verdict(Some((value, unit)), within)
    }
}

/// One threshold's outcome, kept in the summary (JSON, report) and named on exit when crossed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// As given: `v2:p99<300ms`.
    pub threshold: String,
    /// `12.345ms`, `0.100%`, or why nothing could be measured.
    pub measured: String,
    pub passed: bool,
    /// A latency threshold's limit, for the report's charts.
    pub latency_limit_ms: Option<f64>,
    /// The version it is about, when not the whole run.
    pub version: Option<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: measured {}", self.threshold, self.measured)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(version) = &self.version {
            write!(f, "{version}:")?;
        }
        let op = if self.inclusive { "<=" } else { "<" };
        match self.measure {
            Measure::Failures(limit) => write!(f, "failures{op}{}%", limit * 100.0),
            Measure::Latency(q, limit) => {
                write!(f, "{}{op}{}ms", q.name(), limit.as_secs_f64() * 1000.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_k6_style_forms_and_refuses_others() {
        assert_eq!(
            Threshold::parse("p99<250ms").unwrap().to_string(),
            "p99<250ms"
        );
        assert_eq!(
            Threshold::parse("failures<0.1%").unwrap().to_string(),
            "failures<0.1%"
        );
        assert_eq!(
            Threshold::parse("v2:p99<=300ms").unwrap().to_string(),
            "v2:p99<=300ms"
        );
        for bad in [
            "p98<1s",
            "p99>1s",
            "failures<2",
            "p99<fast",
            "failures<101%",
            "",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }
}
