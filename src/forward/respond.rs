//! The answers tidegate gives, and the bookkeeping every answer does: an endpoint's response
//! finished for the client hop, tidegate's own errors, a client's fault, and the metrics, passive
//! health and canary outcomes they feed.

use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::grpc;
use crate::metrics::VersionMetrics;
use crate::snapshot::Role;

use super::body::{self, ResponseBody};
use super::error::{ClientError, ClientFault, ErrorKind, ProxyError};
use super::outcome::Outcome;
use super::request;
use super::retry::Retry;
use super::{Forwarder, Routed, VERSION_HEADER};

impl Forwarder {
    /// An endpoint's response made ready for the client: this hop's headers, the sticky cookie
    /// and the version header. `clean`: the upstream path removed hop-by-hop headers already.
    pub(super) fn finish(
        &self,
        response: &mut Response<ResponseBody>,
        route: &Routed,
        clean: bool,
    ) {
        if clean {
            request::for_client_hop(response);
        } else {
            request::prepare_response(response);
        }
        if route.set_cookie {
            response
                .headers_mut()
                .append(header::SET_COOKIE, route.endpoint.sticky_cookie().clone());
        }
        if route.settings.expose_version_header {
            response
                .headers_mut()
                .insert(VERSION_HEADER, route.endpoint.version_header().clone());
        }
    }

    /// Feeds an attempt's outcome to passive health; may eject the endpoint.
    pub(super) fn observe_health(&self, route: &Routed, outcome: Outcome) {
        let settings = &route.settings;
        self.outcomes
            .health(&route.endpoint, settings.outlier, route.now, outcome);
    }

    /// Takes a retry from the budget, counting a refusal.
    pub(super) fn spend(&self, percent: u32) -> bool {
        let granted = self.budget.withdraw(Instant::now(), percent);
        if !granted {
            self.budget_exhausted.inc();
        }
        granted
    }

    /// The answer when no endpoint is left to retry on: the upstream's own 502/503 if there was
    /// one, else tidegate's error for the last failure.
    pub(super) fn give_up(
        &self,
        retry: Retry,
        metrics: &VersionMetrics,
        role: Role,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        match retry {
            Retry::Status(response, endpoint, role) => {
                // The rare path: one more snapshot load for the current failure codes.
                let failures = self.snapshots.load().settings().grpc_failures;
                self.record_answer(endpoint.metrics(), role, &response, failures);
                *response
            }
            Retry::Failed(error) | Retry::Stale(error) | Retry::Saturated(error) => {
                self.local_error(&error, metrics, role, grpc, start)
            }
        }
    }

    pub(super) fn count(&self, error: &ProxyError) {
        self.errors[error.kind().index()].inc();
    }

    /// Counts a response: the metric by version, role and code, and the canary's outcome.
    #[inline]
    pub(super) fn record(&self, metrics: &VersionMetrics, role: Role, status: u16) {
        self.outcomes.record(metrics, role, status);
    }

    /// Counts an endpoint's answer that failed a retry's hopes but goes to the client after all:
    /// by its `grpc-status` if it is a trailers-only gRPC answer, else by its HTTP status.
    pub(super) fn record_answer(
        &self,
        metrics: &VersionMetrics,
        role: Role,
        response: &Response<ResponseBody>,
        failures: grpc::Codes,
    ) {
        let status = response.status().as_u16();
        match grpc::status(response.headers()) {
            Some(code) => {
                let failed = failures.contains(code) && code != grpc::Code::CANCELLED;
                self.outcomes
                    .record_grpc(metrics, role, status, code, failed);
            }
            None => self.record(metrics, role, status),
        }
    }

    /// The answer to a request that failed through the client's fault: counted as the client's,
    /// recorded under its status for the version, and kept out of the canary's outcomes. The
    /// connection closes after it: its framing can no longer be trusted.
    pub(super) fn client_failure(
        &self,
        error: &ClientError,
        metrics: &VersionMetrics,
        role: Role,
        start: Instant,
    ) -> Response<ResponseBody> {
        tracing::debug!(%error, "client request failed");
        self.client_errors[error.fault.index()].inc();
        let status = error.fault.status();
        metrics.count(status.as_u16(), role);
        metrics.observe(start.elapsed(), role);
        let mut response = error_response(status, error.fault.as_str(), error);
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if error.fault == ClientFault::NotAllowed {
            // RFC 9110 §15.5.6: a 405 says what is allowed.
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
            );
        }
        response
    }

    /// tidegate's own answer for a request it could not forward: a 502/503/504, or to a gRPC
    /// client a trailers-only gRPC error (`UNAVAILABLE`, or `DEADLINE_EXCEEDED` for a timeout) with
    /// the reason in `grpc-message`, as Envoy answers, so the client sees a status and not a
    /// protocol error.
    pub(super) fn local_error(
        &self,
        error: &ProxyError,
        metrics: &VersionMetrics,
        role: Role,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        let kind = error.kind();
        metrics.observe(start.elapsed(), role);
        if !grpc {
            self.record(metrics, role, kind.status().as_u16());
            return error_response(kind.status(), kind.as_str(), error);
        }
        let code = match kind {
            ErrorKind::Timeout | ErrorKind::ConnectTimeout => grpc::Code::DEADLINE_EXCEEDED,
            _ => grpc::Code::UNAVAILABLE,
        };
        self.outcomes
            .record_grpc(metrics, role, StatusCode::OK.as_u16(), code, true);
        let mut response = Response::new(body::local(Bytes::new()));
        let headers = response.headers_mut();
        *headers = grpc::trailers_only(code, &format!("tidegate: {error}"));
        headers.insert("x-tidegate-error", HeaderValue::from_static(kind.as_str()));
        response
    }
}

/// A plain-text answer of tidegate's own: the reason in the body, the kind in `x-tidegate-error`.
fn error_response(
    status: StatusCode,
    kind: &'static str,
    reason: &dyn std::fmt::Display,
) -> Response<ResponseBody> {
    let mut response = Response::new(body::local(format!("{reason}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-tidegate-error", HeaderValue::from_static(kind));
    response
}
