//! Whether a failed attempt goes round again: a pure decision over what failed, the settings and
//! what this request has used so far. The retry budget is shared state, so the decision only says
//! when it must be consulted; the caller withdraws.

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::grpc;
use crate::snapshot::{Endpoint, Role, Settings};

use super::body::ResponseBody;
use super::error::{ErrorKind, ProxyError};

/// Extra attempts allowed when a pooled keep-alive connection turns out closed under a request:
/// the peer closing an idle connection is not a failure of the endpoint, so these do not count
/// against `connect_attempts`.
const STALE_CONNECTION_RETRIES: u32 = 2;

/// Extra endpoints tried after refused connects, beyond `connect_attempts`: during churn several
/// pods may be gone at once, and a refused connect costs nothing.
const REFUSED_CONNECT_RETRIES: u32 = 8;

/// Extra endpoints tried after finding endpoints at tidegate's connection cap, beyond
/// `connect_attempts`: the request never reached them. Each one may cost a wait of up to
/// `timeouts.connect`, so few; and the pick already steers around an endpoint with requests
/// waiting (they count as in flight).
const SATURATED_RETRIES: u32 = 2;

/// What went wrong with an attempt, as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failed {
    /// No connection; `refused` when nothing listens there.
    Connect { refused: bool },
    /// No connection tried: the endpoint was at tidegate's connection cap. Not its failure.
    Saturated,
    /// The endpoint answered a status that the policy retries (502/503); `resendable` when the
    /// request can be sent again.
    Status { resendable: bool },
    /// The exchange broke before a response. `resendable`: the request can and may be sent again
    /// (it never left, or the policy retries resets of resendable requests); `sent`: the endpoint
    /// may have processed it; `reused`: the connection came from the idle pool.
    Exchange {
        resendable: bool,
        sent: bool,
        reused: bool,
    },
}

/// Retries used so far by one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Used {
    /// Attempts counted against `connect_attempts` (the first included).
    pub(super) attempts: u32,
    pub(super) refused: u32,
    pub(super) stale: u32,
    pub(super) saturated: u32,
}

impl Default for Used {
    fn default() -> Self {
        Self {
            attempts: 1,
            refused: 0,
            stale: 0,
            saturated: 0,
        }
    }
}

/// Which allowance a retry uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Charge {
    Attempt,
    /// A free retry after a refused connect.
    Refused,
    /// A free retry after a pooled connection turned out closed; says nothing of the endpoint.
    Stale,
    /// A free retry after an endpoint at the connection cap; says nothing of the endpoint.
    Saturated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Give the client the answer this attempt produced.
    Answer,
    Retry(Charge),
    /// Retry (an attempt) if the budget grants it; else answer.
    RetryIfBudget,
}

/// The decision after `failed`, given the `settings` and what the request has `used`.
pub(super) fn decide(failed: Failed, settings: &Settings, used: Used) -> Decision {
    let can_retry = used.attempts < settings.connect_attempts;
    match failed {
        Failed::Connect { refused } => {
            let free =
                refused && settings.connect_attempts > 1 && used.refused < REFUSED_CONNECT_RETRIES;
            if free {
                Decision::Retry(Charge::Refused)
            } else if can_retry {
                Decision::Retry(Charge::Attempt)
            } else {
                Decision::Answer
            }
        }
        // As a refused connect: nothing was sent, and another endpoint may have room. Once the
        // allowance is spent the fleet is full: the client is answered, not queued any longer.
        Failed::Saturated => {
            if settings.connect_attempts > 1 && used.saturated < SATURATED_RETRIES {
                Decision::Retry(Charge::Saturated)
            } else {
                Decision::Answer
            }
        }
        Failed::Status { resendable } if resendable && can_retry => Decision::RetryIfBudget,
        Failed::Status { .. } => Decision::Answer,
        Failed::Exchange {
            resendable,
            sent,
            reused,
        } => {
            if !resendable {
                Decision::Answer
            } else if reused && used.stale < STALE_CONNECTION_RETRIES {
                Decision::Retry(Charge::Stale)
            } else if can_retry && !sent {
                Decision::Retry(Charge::Attempt)
            } else if can_retry {
                Decision::RetryIfBudget
            } else {
                Decision::Answer
            }
        }
    }
}

impl Used {
    pub(super) fn charge(&mut self, charge: Charge) {
        match charge {
            Charge::Attempt => self.attempts += 1,
            Charge::Refused => self.refused += 1,
            Charge::Stale => self.stale += 1,
            Charge::Saturated => self.saturated += 1,
        }
    }
}

/// Why a request went round again: kept for the metrics and for the answer if no endpoint is left.
pub(super) enum Retry {
    /// Nothing reached the endpoint (connect failed, or the request was handed back unsent).
    Failed(ProxyError),
    /// The endpoint answered 502 or 503; this is the answer to fall back on (boxed: rare).
    Status(Box<Response<ResponseBody>>, Arc<Endpoint>, Role),
    /// A pooled keep-alive connection had been closed by the peer: not the endpoint's failure.
    Stale(ProxyError),
    /// The endpoint was at tidegate's connection cap: not the endpoint's failure.
    Saturated(ProxyError),
}

impl Retry {
    pub(super) const REASONS: usize = 6;
    pub(super) const LABELS: [&'static str; Retry::REASONS] =
        ["connect", "reset", "502", "503", "saturated", "grpc"];

    /// The status the failed attempt amounts to, if it was the endpoint's failure.
    pub(super) fn endpoint_status(&self) -> Option<StatusCode> {
        match self {
            Retry::Failed(e) => Some(e.kind().status()),
            // A retried gRPC status fed the canary's outcomes as it arrived.
            Retry::Status(r, _, _) if r.headers().contains_key(grpc::GRPC_STATUS) => None,
            Retry::Status(r, _, _) => Some(r.status()),
            Retry::Stale(_) | Retry::Saturated(_) => None,
        }
    }

    /// Index into [`Retry::LABELS`].
    pub(super) fn reason(&self) -> usize {
        match self {
            Retry::Failed(e) if e.retryable() => 0,
            Retry::Failed(_) | Retry::Stale(_) => 1,
            // A trailers-only gRPC status that `grpc.retry_on` lists.
            Retry::Status(r, _, _) if r.headers().contains_key(grpc::GRPC_STATUS) => 5,
            Retry::Status(r, _, _) if r.status() == StatusCode::BAD_GATEWAY => 2,
            Retry::Status(..) => 3,
            Retry::Saturated(_) => 4,
        }
    }

    /// The failure of an attempt that got no response, under the charge the decision made.
    pub(super) fn exchange(error: ProxyError, charge: Charge) -> Self {
        if error.kind() == ErrorKind::Saturated {
            return Retry::Saturated(error);
        }
        match charge {
            Charge::Stale => Retry::Stale(error),
            Charge::Attempt | Charge::Refused | Charge::Saturated => Retry::Failed(error),
        }
    }
}

/// One request's retries so far: allowances used, endpoints failed on, and the last failure.
pub(super) struct Tries {
    pub(super) used: Used,
    /// Endpoints this request failed on; allocates only on a retry.
    tried: Vec<Arc<Endpoint>>,
    /// What sent the request round again, not yet counted.
    retrying: Option<Retry>,
    /// The role the last counted failure happened in.
    failed_role: Role,
    /// A retry was refused for lack of budget (the access log's `URX`).
    pub(super) budget_refused: bool,
}

impl Default for Tries {
    fn default() -> Self {
        Self {
            used: Used::default(),
            tried: Vec::new(),
            retrying: None,
            failed_role: Role::Stable,
            budget_refused: false,
        }
    }
}

impl Tries {
    /// Endpoints routing must avoid.
    pub(super) fn avoid(&self) -> &[Arc<Endpoint>] {
        &self.tried
    }

    /// The request goes round again after `retry` on `endpoint`. A stale pooled connection is
    /// not the endpoint's failure: it may be picked again.
    pub(super) fn retrying(
        &mut self,
        retry: Retry,
        endpoint: &Arc<Endpoint>,
        role: Role,
        charge: Charge,
    ) {
        if charge != Charge::Stale {
            self.tried.push(endpoint.clone());
            self.failed_role = role;
        }
        self.retrying = Some(retry);
    }

    /// The retry about to be made, with the role its failure happened in (once per retry).
    pub(super) fn take_retry(&mut self) -> Option<(Retry, Role)> {
        self.retrying.take().map(|retry| (retry, self.failed_role))
    }

    /// Nothing is left to try: the last failure, where it happened and in which role.
    pub(super) fn last_failure(self) -> Option<(Retry, Arc<Endpoint>, Role)> {
        let failed = self.tried.last()?.clone();
        Some((self.retrying?, failed, self.failed_role))
    }
}

/// Whether a broken exchange's request may go again under the policy: it never left, or the
/// connection broke before any response (a reset) and the policy retries those.
pub(super) fn may_resend(error: &ProxyError, unsent: bool, on_reset: bool) -> bool {
    unsent || (error.kind() == ErrorKind::Reset && on_reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(connect_attempts: u32) -> Settings {
        Settings {
            connect_attempts,
            ..Settings::default()
        }
    }

    fn used(attempts: u32, refused: u32, stale: u32) -> Used {
        Used {
            attempts,
            refused,
            stale,
            saturated: 0,
        }
    }

    #[test]
    fn refused_connects_are_free_until_their_allowance_is_spent() {
        let refused = Failed::Connect { refused: true };
        let s = settings(2);
        assert_eq!(
            decide(refused, &s, used(2, 0, 0)),
            Decision::Retry(Charge::Refused)
        );
        assert_eq!(
            decide(refused, &s, used(2, REFUSED_CONNECT_RETRIES, 0)),
            Decision::Answer
        );
        assert_eq!(
            decide(refused, &settings(1), used(1, 0, 0)),
            Decision::Answer,
            "retries off: no free retries either"
        );
        let timeout = Failed::Connect { refused: false };
        assert_eq!(
            decide(timeout, &s, used(1, 0, 0)),
            Decision::Retry(Charge::Attempt)
        );
        assert_eq!(decide(timeout, &s, used(2, 0, 0)), Decision::Answer);
    }

    #[test]
    fn a_saturated_endpoint_sends_the_request_elsewhere_for_free() {
        let s = settings(2);
        assert_eq!(
            decide(Failed::Saturated, &s, used(2, REFUSED_CONNECT_RETRIES, 0)),
            Decision::Retry(Charge::Saturated),
            "its own allowance, whatever else was spent"
        );
        let spent = Used {
            saturated: SATURATED_RETRIES,
            ..Used::default()
        };
        assert_eq!(
            decide(Failed::Saturated, &s, spent),
            Decision::Answer,
            "every endpoint tried was full: the client hears so"
        );
        assert_eq!(
            decide(Failed::Saturated, &settings(1), Used::default()),
            Decision::Answer,
            "retries off: no free retries either"
        );
        let error = ProxyError::Connect(crate::upstream::ConnectError::Saturated(4));
        let retry = Retry::exchange(error, Charge::Attempt);
        assert_eq!(Retry::LABELS[retry.reason()], "saturated");
        assert_eq!(
            retry.endpoint_status(),
            None,
            "never the endpoint's failure, also for a canary"
        );
    }

    #[test]
    fn a_sent_request_needs_the_budget_and_an_unsent_one_does_not() {
        let s = settings(3);
        let exchange = |resendable, sent, reused| Failed::Exchange {
            resendable,
            sent,
            reused,
        };
        assert_eq!(
            decide(exchange(true, false, false), &s, used(1, 0, 0)),
            Decision::Retry(Charge::Attempt)
        );
        assert_eq!(
            decide(exchange(true, true, false), &s, used(1, 0, 0)),
            Decision::RetryIfBudget
        );
        assert_eq!(
            decide(exchange(false, true, false), &s, used(1, 0, 0)),
            Decision::Answer,
            "a request that cannot be resent is answered"
        );
        assert_eq!(
            decide(exchange(true, true, false), &s, used(3, 0, 0)),
            Decision::Answer
        );
        assert_eq!(
            decide(Failed::Status { resendable: true }, &s, used(1, 0, 0)),
            Decision::RetryIfBudget
        );
        assert_eq!(
            decide(Failed::Status { resendable: false }, &s, used(1, 0, 0)),
            Decision::Answer
        );
    }

    #[test]
    fn a_closed_pooled_connection_is_retried_for_free_twice() {
        let s = settings(1);
        let stale = Failed::Exchange {
            resendable: true,
            sent: true,
            reused: true,
        };
        assert_eq!(
            decide(stale, &s, used(1, 0, 0)),
            Decision::Retry(Charge::Stale)
        );
        assert_eq!(
            decide(stale, &s, used(1, 0, STALE_CONNECTION_RETRIES)),
            Decision::Answer
        );
        let mut u = Used::default();
        u.charge(Charge::Stale);
        u.charge(Charge::Attempt);
        assert_eq!(u, used(2, 0, 1));
    }
}
