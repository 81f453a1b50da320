//! The canary policy: which endpoints are canary, what share of traffic they get, and why.
//!
//! Pure control-plane logic (no I/O, no clock): config, rollout state, the Deployment annotation
//! and the admin override in; the canary version, a [`Split`] and a [`CanaryStatus`] out.

use serde::Serialize;

use crate::config::{Apply, CanaryConfig};
use crate::discovery::Rollout;
use crate::snapshot::{EndpointSpec, EndpointState, Split, Version, Weight};

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
}

/// Which version is the canary now, how traffic is split, and the status that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub canary: Option<Version>,
    pub split: Split,
    pub status: CanaryStatus,
}

/// What `GET /canary` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryStatus {
    /// The weight in force before deciding whether it applies, in percent.
    pub configured_weight: f64,
    pub source: WeightSource,
    /// The share of requests the canary gets now, in percent.
    pub effective_weight: f64,
    /// Whether the configured weight applies now (else traffic follows ready endpoint counts).
    pub applies: bool,
    /// `paused` or `always`.
    pub apply: &'static str,
    pub canary_version: Option<String>,
    pub stable_versions: Vec<String>,
    /// The admin override is per instance: other replicas keep their own.
    pub admin_override: Option<f64>,
}

impl CanaryPolicy {
    pub fn from_config(config: &CanaryConfig) -> Self {
        Self {
            version: config.version.clone(),
            weight: config.weight,
            apply: config.apply,
            admin: None,
            annotation: None,
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
        let split = match (&canary, applies) {
            (Some(_), true) => Split::Weighted(weight),
            _ => Split::ByEndpointCount,
        };
        let ready = |canary_side: bool| {
            endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Ready)
                .filter(|e| (canary.as_ref() == Some(&e.version)) == canary_side)
                .count() as f64
        };
        let effective_weight = match split {
            Split::Weighted(w) => w.percent(),
            Split::ByEndpointCount => {
                let (c, s) = (ready(true), ready(false));
                if c + s == 0.0 {
                    0.0
                } else {
                    100.0 * c / (c + s)
                }
            }
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
            effective_weight,
            applies: canary.is_some() && applies,
            apply: match self.apply {
                Apply::Paused => "paused",
                Apply::Always => "always",
            },
            canary_version: canary.as_ref().map(Version::to_string),
            stable_versions,
            admin_override: self.admin.map(Weight::percent),
        };
        Plan {
            canary,
            split,
            status,
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

    fn spec(version: &str) -> EndpointSpec {
        EndpointSpec {
            address: "127.0.0.2:80".parse().unwrap(),
            version: Version::new(version).unwrap(),
            state: EndpointState::Ready,
            name: None,
            image: None,
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
        assert_eq!(moving.status.effective_weight, 25.0, "1 ready canary of 4");
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
        });
        assert_eq!(p.admin, Some(w(55.5)), "a reload keeps the override");
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
