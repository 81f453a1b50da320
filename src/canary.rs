//! The canary policy: which endpoints are canary, what share of traffic they get, and why.
//!
//! Pure control-plane logic (no I/O, no clock): config, rollout state, the Deployment annotation
//! and the admin override in; the canary version, a [`Split`] and a [`CanaryStatus`] out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{AbortConfig, Apply, CanaryConfig};
use crate::discovery::Rollout;
use crate::snapshot::{EndpointSpec, Split, Version, Weight};

/// The Deployment annotation that sets the canary weight, in percent.
pub const WEIGHT_ANNOTATION: &str = "tidegate.io/canary-weight";

/// Where the configured weight came from, highest precedence first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    /// `PUT /canary` on this instance.
    Admin,
    /// The Deployment's `tidegate.io/canary-weight` annotation (shared by every replica).
    Annotation,
    /// `canary.weight` in the config file.
    Config,
}

/// As logs and the admin API say it: `admin`, `annotation`, `config`.
impl std::fmt::Display for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightSource::Admin => "admin",
            WeightSource::Annotation => "annotation",
            WeightSource::Config => "config",
        })
    }
}

/// The settled canary intent.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPolicy {
    /// In static mode the canary is named by version.
    pub version: Option<Version>,
    /// `canary.weight`.
    pub weight: Weight,
    pub apply: Apply,
    /// The admin override, if any.
    pub admin: Option<Weight>,
    /// The last valid annotation value, if the Deployment carries one.
    pub annotation: Option<Weight>,
    /// Set when the canary was aborted; its weight is then 0 until the intent changes.
    pub aborted: Option<Aborted>,
}

/// An automatic abort and the figures that caused it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aborted {
    pub error_rate: f64,
    pub requests: u64,
    pub errors: u64,
    pub window_seconds: f64,
    /// What was aborted: a change of any part of it clears the abort.
    #[serde(skip)]
    pub intent: Intent,
}

/// The canary intent an abort applies to: the canary version and the weight in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Intent {
    pub canary: Option<Version>,
    pub weight: Weight,
    pub source: WeightSource,
}

/// Canary outcomes over a sliding window, from periodic samples of running totals.
#[derive(Debug, Default)]
pub struct AbortWindow {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl AbortWindow {
    /// Adds a sample of (requests, errors) totals at `now`; returns the requests and errors of
    /// the last `window`.
    pub fn observe(&mut self, now: Instant, totals: (u64, u64), window: Duration) -> (u64, u64) {
        self.samples.push_back((now, totals.0, totals.1));
        // Keep one sample at or before the window's start as the baseline.
        while self.samples.len() > 2 && self.samples[1].0 + window <= now {
            self.samples.pop_front();
        }
        let (_, r0, e0) = self.samples[0];
        (totals.0.saturating_sub(r0), totals.1.saturating_sub(e0))
    }

    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

/// The abort decision: `Some` when the window's error rate is over the limit with enough requests.
pub fn should_abort(config: &AbortConfig, requests: u64, errors: u64) -> Option<f64> {
    let rate = errors as f64 / requests.max(1) as f64;
    (requests >= config.min_requests && rate > config.max_error_rate).then_some(rate)
}

/// Which version is the canary now, how traffic is split, and the status that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub canary: Option<Version>,
    pub split: Split,
    pub status: CanaryStatus,
    /// What an abort decided now would apply to.
    pub intent: Intent,
}

/// What `GET /canary` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryStatus {
    /// The weight in force before deciding whether it applies, in percent.
    pub configured_weight: f64,
    pub source: WeightSource,
    /// The share of requests the canary gets now, in percent: what the published snapshot does
    /// ([`crate::snapshot::Snapshot::canary_share`]), filled in by the control loop.
    pub effective_weight: f64,
    /// Whether the configured weight applies now (else traffic follows ready endpoint counts).
    pub applies: bool,
    /// `paused` or `always`.
    pub apply: &'static str,
    pub canary_version: Option<String>,
    pub stable_versions: Vec<String>,
    /// The admin override is per instance: other replicas keep their own.
    pub admin_override: Option<f64>,
    /// Says so to whoever reads `GET /canary`: `instance`.
    pub admin_override_scope: &'static str,
    /// Set while the canary is aborted (its weight is then 0).
    pub aborted: Option<Aborted>,
}

impl CanaryPolicy {
    pub fn from_config(config: &CanaryConfig) -> Self {
        Self {
            version: config.version.clone(),
            weight: config.weight,
            apply: config.apply,
            admin: None,
            annotation: None,
            aborted: None,
        }
    }

    /// Keeps runtime inputs (override, annotation) across a config reload.
    pub fn reconfigure(&mut self, config: &CanaryConfig) {
        self.version = config.version.clone();
        self.weight = config.weight;
        self.apply = config.apply;
    }

    /// The weight in force and where it came from.
    pub fn configured(&self) -> (Weight, WeightSource) {
        match (self.admin, self.annotation) {
            (Some(w), _) => (w, WeightSource::Admin),
            (None, Some(w)) => (w, WeightSource::Annotation),
            (None, None) => (self.weight, WeightSource::Config),
        }
    }

    /// The plan for `endpoints`, given the rollout a source reported (if it follows one).
    ///
    /// - Static endpoints: the configured version is the canary and, since a static file has no
    ///   rollout to pause, the weight always applies.
    /// - A followed Deployment: the newest ReplicaSet's version is the canary while an older
    ///   version still has endpoints. The weight applies with `apply: always`, or while the rollout
    ///   is paused; otherwise traffic is shared by ready endpoint count, as a Service would.
    pub fn plan(&self, rollout: Option<&Rollout>, endpoints: &[EndpointSpec]) -> Plan {
        let (weight, source) = self.configured();
        let (canary, applies) = match rollout {
            None => (self.version.clone(), true),
            Some(rollout) => (
                rollout
                    .newest
                    .clone()
                    .filter(|newest| endpoints.iter().any(|e| &e.version != newest)),
                self.apply == Apply::Always || rollout.paused,
            ),
        };
        let intent = Intent {
            canary: canary.clone(),
            weight,
            source,
        };
        // An abort holds only for the intent it was made against.
        let aborted = self.aborted.as_ref().filter(|a| a.intent == intent);
        let split = match (&canary, applies, aborted) {
            (Some(_), _, Some(_)) => Split::Weighted(Weight::ZERO),
            (Some(_), true, None) => Split::Weighted(weight),
            _ => Split::ByEndpointCount,
        };
        let mut stable_versions: Vec<String> = endpoints
            .iter()
            .filter(|e| canary.as_ref() != Some(&e.version))
            .map(|e| e.version.to_string())
            .collect();
        stable_versions.sort();
        stable_versions.dedup();
        let status = CanaryStatus {
            configured_weight: weight.percent(),
            source,
            // What the published snapshot does is its business: the control loop fills this in.
            effective_weight: 0.0,
            applies: canary.is_some() && applies,
            apply: match self.apply {
                Apply::Paused => "paused",
                Apply::Always => "always",
            },
            canary_version: canary.as_ref().map(Version::to_string),
            stable_versions,
            admin_override: self.admin.map(Weight::percent),
            admin_override_scope: "instance",
            aborted: aborted.cloned(),
        };
        Plan {
            canary,
            split,
            status,
            intent,
        }
    }
}

/// Parses the annotation's value: a percentage from 0 to 100, decimals allowed.
pub fn parse_annotation(raw: &str) -> Result<Weight, String> {
    let value: f64 = raw
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{WEIGHT_ANNOTATION}: {raw:?} is not a number"))?;
    Weight::new(value)
        .ok_or_else(|| format!("{WEIGHT_ANNOTATION}: {raw:?} is not a percentage from 0 to 100"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EndpointState;

    fn spec(version: &str) -> EndpointSpec {
        EndpointSpec {
            address: "127.0.0.2:80".parse().unwrap(),
            version: Version::new(version).unwrap(),
            state: EndpointState::Ready,
            name: None,
            image: None,
            protocol: None,
        }
    }

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    fn w(p: f64) -> Weight {
        Weight::new(p).unwrap()
    }

    fn policy(version: Option<&str>, weight: f64, apply: Apply) -> CanaryPolicy {
        CanaryPolicy {
            version: version.map(v),
            weight: w(weight),
            apply,
            admin: None,
            annotation: None,
            aborted: None,
        }
    }

    fn rollout(paused: bool) -> Rollout {
        Rollout {
            newest: Some(v("b7c9")),
            paused,
            complete: false,
            weight_annotation: None,
        }
    }

    #[test]
    fn static_mode_names_the_canary_and_applies_the_weight() {
        let plan = policy(Some("v2"), 10.0, Apply::Paused).plan(None, &[spec("v1"), spec("v2")]);
        assert_eq!(plan.canary, Some(v("v2")));
        assert_eq!(plan.split, Split::Weighted(w(10.0)));
        assert!(plan.status.applies);
        assert_eq!(plan.status.stable_versions, ["v1"]);
    }

    #[test]
    fn without_a_canary_everything_is_shared_evenly() {
        let plan = policy(None, 50.0, Apply::Paused).plan(None, &[spec("v1")]);
        assert_eq!(plan.canary, None);
        assert_eq!(plan.split, Split::ByEndpointCount);
        assert!(!plan.status.applies);
    }

    #[test]
    fn a_paused_rollout_applies_the_weight_a_moving_one_shares_by_count() {
        let endpoints = [spec("a1f2"), spec("a1f2"), spec("a1f2"), spec("b7c9")];
        let p = policy(None, 10.0, Apply::Paused);
        let paused = p.plan(Some(&rollout(true)), &endpoints);
        assert_eq!(paused.split, Split::Weighted(w(10.0)));
        assert_eq!(paused.canary, Some(v("b7c9")));
        let moving = p.plan(Some(&rollout(false)), &endpoints);
        assert_eq!(moving.split, Split::ByEndpointCount);
        let always = policy(None, 10.0, Apply::Always).plan(Some(&rollout(false)), &endpoints);
        assert_eq!(always.split, Split::Weighted(w(10.0)));
        let done = p.plan(Some(&rollout(true)), &[spec("b7c9")]);
        assert_eq!(done.canary, None, "a finished rollout has no canary");
    }

    #[test]
    fn admin_beats_annotation_beats_config() {
        let mut p = policy(Some("v2"), 10.0, Apply::Always);
        assert_eq!(p.configured(), (w(10.0), WeightSource::Config));
        p.annotation = Some(w(30.0));
        assert_eq!(p.configured(), (w(30.0), WeightSource::Annotation));
        p.admin = Some(w(55.5));
        assert_eq!(p.configured(), (w(55.5), WeightSource::Admin));
        p.reconfigure(&CanaryConfig {
            version: Some(v("v3")),
            weight: w(1.0),
            apply: Apply::Always,
            header: None,
            sticky: false,
            abort: None,
        });
        assert_eq!(p.admin, Some(w(55.5)), "a reload keeps the override");
    }

    #[test]
    fn an_abort_zeroes_the_canary_until_the_intent_changes() {
        let mut p = policy(Some("v2"), 10.0, Apply::Always);
        let endpoints = [spec("v1"), spec("v2")];
        let plan = p.plan(None, &endpoints);
        p.aborted = Some(Aborted {
            error_rate: 0.5,
            requests: 100,
            errors: 50,
            window_seconds: 30.0,
            intent: plan.intent,
        });
        let aborted = p.plan(None, &endpoints);
        assert_eq!(aborted.split, Split::Weighted(Weight::ZERO));
        assert!(aborted.status.aborted.is_some());
        p.admin = Some(w(5.0));
        let retried = p.plan(None, &endpoints);
        assert_eq!(
            retried.split,
            Split::Weighted(w(5.0)),
            "a new weight clears the abort"
        );
        assert!(retried.status.aborted.is_none());
    }

    #[test]
    fn the_window_slides_and_the_threshold_needs_enough_requests() {
        let config = AbortConfig {
            max_error_rate: 0.05,
            min_requests: 50,
            window: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let mut window = AbortWindow::default();
        assert_eq!(window.observe(t0, (0, 0), config.window), (0, 0));
        assert_eq!(
            window.observe(t0 + Duration::from_secs(10), (40, 10), config.window),
            (40, 10)
        );
        assert_eq!(should_abort(&config, 40, 10), None, "too few requests");
        let (r, e) = window.observe(t0 + Duration::from_secs(20), (100, 10), config.window);
        assert_eq!(should_abort(&config, r, e), Some(0.1));
        // 40 s later, the early errors have left the window.
        let (r, e) = window.observe(t0 + Duration::from_secs(60), (400, 12), config.window);
        assert_eq!((r, e), (300, 2));
        assert_eq!(should_abort(&config, r, e), None);
    }

    #[test]
    fn annotations_parse_as_percentages() {
        assert_eq!(parse_annotation("10"), Ok(w(10.0)));
        assert_eq!(parse_annotation(" 12.5% "), Ok(w(12.5)));
        assert!(parse_annotation("ten")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_annotation("150").unwrap_err().contains("0 to 100"));
        assert!(parse_annotation("NaN").is_err());
    }
}
