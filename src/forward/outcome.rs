//! What an attempt amounted to for the endpoint, recorded where it feeds passive health, the
//! canary's abort rate and the per-version metrics.
//!
//! Most answers are judged by their status as the head arrives. A gRPC call is judged by its
//! `grpc-status`, which usually comes in the trailers after a streamed body: the response body
//! carries a [`GrpcVerdict`] and settles it when the trailers (or the end, or a break) arrive.

use std::sync::Arc;

use prometheus::IntCounter;

use crate::grpc::{Code, Codes};
use crate::metrics::VersionMetrics;
use crate::snapshot::health::OutlierPolicy;
use crate::snapshot::{CanaryStats, Endpoint, Role, Snapshots};

/// An attempt's result, as passive health sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Passed,
    Failed,
    /// Nothing listens there: ejects at once.
    Refused,
}

/// Where outcomes go; shared by the forwarder and the gRPC response bodies still streaming.
pub(super) struct Outcomes {
    pub(super) snapshots: Snapshots,
    pub(super) canary_stats: Arc<CanaryStats>,
    pub(super) ejections: IntCounter,
}

impl Outcomes {
    /// Feeds an attempt's outcome to passive health; may eject the endpoint.
    pub(super) fn health(
        &self,
        endpoint: &Endpoint,
        outlier: Option<OutlierPolicy>,
        now: u64,
        outcome: Outcome,
    ) {
        let Some(policy) = outlier else {
            return;
        };
        if outcome == Outcome::Passed {
            endpoint.health().success();
            return;
        }
        // Failure path only: one more snapshot load to size the version.
        let size = self
            .snapshots
            .load()
            .version_group(endpoint.version().as_str())
            .map_or(1, |g| g.endpoints.len());
        if endpoint
            .health()
            .failure(now, &policy, size, outcome == Outcome::Refused)
        {
            self.ejections.inc();
            tracing::warn!(endpoint = %endpoint.address(), version = %endpoint.version(), "ejected after consecutive failures");
        }
    }

    /// Counts a response: the metric by version, role and code, and the canary's outcome.
    #[inline]
    pub(super) fn record(&self, metrics: &VersionMetrics, role: Role, status: u16) {
        metrics.count(status, role);
        if role == Role::Canary {
            self.canary_stats.record(status);
        }
    }

    /// Counts a gRPC call that ended with `code`: a failure for the canary when `failures` has it.
    pub(super) fn record_grpc(
        &self,
        metrics: &VersionMetrics,
        role: Role,
        status: u16,
        code: Code,
        failed: bool,
    ) {
        metrics.count_grpc(status, code, role);
        if role == Role::Canary {
            self.canary_stats.record_outcome(failed);
        }
    }
}

/// A gRPC call whose status is still to come, judged once when it does.
pub(super) struct GrpcVerdict {
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) outlier: Option<OutlierPolicy>,
    pub(super) failures: Codes,
    /// The request's start on the health clock.
    pub(super) now: u64,
    /// The response's HTTP status.
    pub(super) status: u16,
}

impl GrpcVerdict {
    /// Records the call's end: `code` from the trailers, `UNKNOWN` when they were missing,
    /// `UNAVAILABLE` when the stream broke; `CANCELLED` (the client left) is nobody's failure.
    pub(super) fn settle(self, endpoint: &Endpoint, role: Role, code: Code) {
        let failed = self.failures.contains(code) && code != Code::CANCELLED;
        self.outcomes
            .record_grpc(endpoint.metrics(), role, self.status, code, failed);
        let outcome = if failed {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        if code != Code::CANCELLED {
            self.outcomes
                .health(endpoint, self.outlier, self.now, outcome);
        }
    }
}
