//! One attempt at an endpoint: check out a connection, send through the upstream transport, and
//! classify what happened — a response for the client, or a failure put to the retry decision —
//! blaming the party at fault.

use std::future::poll_fn;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::Either;
use tower_service::Service;

use crate::grpc::{self, Code};
use crate::snapshot::{InFlight, Role};
use crate::upstream::{
    framing, h1::ExchangeError, Answer, ConnectError, Protocol, RequestBody, SendError,
};

use super::body::{ResponseBody, UpstreamBody};
use super::error::{ClientError, ClientFault, ProxyError};
use super::outcome::{GrpcVerdict, Outcome};
use super::outgoing::Outgoing;
use super::retry::{self, Charge, Decision, Failed, Retry, Tries};
use super::{Conn, Forwarder, Routed};

/// How an attempt ended.
// The large variant is the common one: boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Attempted {
    /// The request's answer: the endpoint's response, a tunnel, or a client's fault.
    Done(Response<ResponseBody>),
    /// A failure that the retry decision looks at.
    Failed(Failure),
}

/// A failed attempt: what failed, and what the client gets if it is not retried.
pub(super) struct Failure {
    failed: Failed,
    cause: Cause,
}

impl Failure {
    /// A gRPC call answered trailers-only with a status that `grpc.retry_on` lists, which may go
    /// to another endpoint if its request can be had back.
    fn wants_its_request(&self) -> bool {
        matches!(
            (&self.failed, &self.cause),
            (Failed::Status { resendable: false }, Cause::Grpc(_, None))
        )
    }

    fn give_back(&mut self, request: Box<Request<RequestBody>>) {
        if let Cause::Grpc(_, unsent) = &mut self.cause {
            *unsent = Some(request);
            self.failed = Failed::Status { resendable: true };
        }
    }
}

enum Cause {
    /// tidegate's error; with the request, if hyper handed it back unsent.
    Error(ProxyError, Option<Box<Request<RequestBody>>>),
    /// The endpoint's own 502 or 503 (boxed: the rare path).
    Status(Box<Response<ResponseBody>>),
    /// A trailers-only gRPC answer that `grpc.retry_on` lists; with the request, once its
    /// streamed body has come back.
    Grpc(
        Box<Response<ResponseBody>>,
        Option<Box<Request<RequestBody>>>,
    ),
}

impl Forwarder {
    /// One attempt on `route`'s endpoint.
    pub(super) async fn attempt(
        &self,
        out: &mut Outgoing,
        route: &Routed,
        conn: &Conn,
        start: Instant,
    ) -> Attempted {
        let settings = &route.settings;
        if out.wants_upgrade() && route.endpoint.pool().protocol() == Protocol::H2c {
            // tidegate's configuration, not the endpoint's failure: no health, no retry.
            let error = ProxyError::UpgradeToHttp2;
            self.count(&error);
            let (metrics, grpc) = (route.endpoint.metrics(), out.grpc.is_some());
            return Attempted::Done(self.local_error(&error, metrics, route.role, grpc, start));
        }
        // Counted while waiting for room too, so that the pick steers around a full endpoint.
        let in_flight = route.endpoint.begin();
        let checkout = route.endpoint.pool().checkout(
            out.path(),
            settings.connect_timeout,
            settings.max_response_headers,
            settings.max_connections_per_endpoint,
        );
        let mut checkout = match checkout.await {
            Ok(checkout) => checkout,
            Err(error) => return self.connect_failed(error, route),
        };
        let transport = &mut checkout.transport;
        let sent = match poll_fn(|cx| transport.poll_ready(cx)).await {
            Ok(()) => transport.call(out.outbound(settings)).await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(answer) => {
                let mut attempted = self.answered(answer, out, route, in_flight, conn, start);
                // In place: the attempt's answer is large, and this is every request's path.
                if let Attempted::Failed(failure) = &mut attempted {
                    if failure.wants_its_request() {
                        if let Some(request) = Box::pin(transport.reclaim()).await {
                            failure.give_back(request);
                        }
                    }
                }
                attempted
            }
            Err(error) => {
                // Boxed: the rare path's state (a timer, a request head) stays out of every
                // request's future.
                let error = Box::pin(transport.recover(error)).await;
                self.send_failed(error, out, route, checkout.reused, start)
            }
        }
    }

    fn connect_failed(&self, error: ConnectError, route: &Routed) -> Attempted {
        if error.is_saturated() {
            // tidegate's own cap, not the endpoint's failure: no health, and another endpoint
            // may have room.
            let error = ProxyError::from(error);
            self.count(&error);
            tracing::debug!(endpoint = %route.endpoint.address(), %error, "endpoint saturated");
            return Attempted::Failed(Failure {
                failed: Failed::Saturated,
                cause: Cause::Error(error, None),
            });
        }
        let refused = error.is_refused();
        let error = ProxyError::from(error);
        self.count(&error);
        let outcome = if refused {
            Outcome::Refused
        } else {
            Outcome::Failed
        };
        self.observe_health(route, outcome);
        tracing::debug!(endpoint = %route.endpoint.address(), %error, "connect failed");
        Attempted::Failed(Failure {
            failed: Failed::Connect { refused },
            cause: Cause::Error(error, None),
        })
    }

    /// A response head arrived: a tunnel, the client's answer, or a status to retry.
    fn answered(
        &self,
        answer: Answer,
        out: &mut Outgoing,
        route: &Routed,
        in_flight: InFlight,
        conn: &Conn,
        start: Instant,
    ) -> Attempted {
        let role = route.role;
        let (response, clean) = match answer {
            Answer::H1(response) => {
                let clean = response.body().hop_by_hop_removed();
                let response = response.map(|b| UpstreamBody::h1(b, in_flight, role, start));
                (response, clean)
            }
            Answer::Hyper(mut response, sender) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = out.upgrade.take() {
                        self.record(route.endpoint.metrics(), role, 101);
                        let tunnel = client_side.tunnel(response, in_flight, conn.open.clone());
                        return Attempted::Done(tunnel);
                    }
                }
                // What the lean path checks as it parses; dropping the response closes its
                // connection.
                if let Err(why) = framing::check(&mut response, false) {
                    let invalid = SendError::H1(ExchangeError::Invalid(why));
                    return self.send_failed(invalid, out, route, false, start);
                }
                // Answered with the canonical reason phrase, as the lean path does.
                response
                    .extensions_mut()
                    .remove::<hyper::ext::ReasonPhrase>();
                let response =
                    response.map(|b| UpstreamBody::hyper(b, sender, in_flight, role, start));
                (response, false)
            }
            Answer::H2(response, stream) => {
                // h2 refuses connection-specific headers as it parses.
                let response =
                    response.map(|b| UpstreamBody::h2(b, stream, in_flight, role, start));
                (response, true)
            }
        };
        let mut response = response.map(Either::Left);
        self.finish(&mut response, route, clean);
        if out.grpc.is_some() && grpc::is_grpc(response.headers()) {
            return self.grpc_answered(response, out, route);
        }
        let status = response.status();
        let outcome = if status.is_server_error() {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        self.observe_health(route, outcome);
        let policy = route.settings.retry;
        if (status == StatusCode::BAD_GATEWAY && policy.on_502)
            || (status == StatusCode::SERVICE_UNAVAILABLE && policy.on_503)
        {
            return Attempted::Failed(Failure {
                failed: Failed::Status {
                    resendable: out.can_resend(false, false),
                },
                cause: Cause::Status(Box::new(response)),
            });
        }
        self.record(route.endpoint.metrics(), role, status.as_u16());
        Attempted::Done(response)
    }

    /// A gRPC call answered: judged by its `grpc-status`, in the head of a trailers-only
    /// response, else in the trailers at the end of its body.
    fn grpc_answered(
        &self,
        mut response: Response<ResponseBody>,
        out: &Outgoing,
        route: &Routed,
    ) -> Attempted {
        let settings = &route.settings;
        match grpc::status(response.headers()) {
            // Trailers-only: the endpoint sent no message (a server shutting down answers so the
            // calls it drops). Judged here, and recorded only if it is the client's answer.
            Some(code) if settings.grpc_retry_on.contains(code) => {
                let failed = settings.grpc_failures.contains(code) && code != Code::CANCELLED;
                let outcome = if failed {
                    Outcome::Failed
                } else {
                    Outcome::Passed
                };
                self.observe_health(route, outcome);
                if route.role == Role::Canary {
                    self.outcomes.canary_stats.record_outcome(failed);
                }
                return Attempted::Failed(Failure {
                    failed: Failed::Status {
                        resendable: out.can_resend(false, false),
                    },
                    cause: Cause::Grpc(Box::new(response), None),
                });
            }
            _ => {}
        }
        let verdict = GrpcVerdict {
            outcomes: self.outcomes.clone(),
            outlier: route.settings.outlier,
            failures: route.settings.grpc_failures,
            now: route.now,
            status: response.status().as_u16(),
        };
        match (grpc::status(response.headers()), response.body_mut()) {
            (Some(code), _) => verdict.settle(&route.endpoint, route.role, code),
            (None, Either::Left(body)) => body.judge(verdict),
            (None, Either::Right(_)) => {}
        }
        Attempted::Done(response)
    }

    /// No response head: the client's fault (its body broke), or a failure to decide on.
    fn send_failed(
        &self,
        error: SendError,
        out: &Outgoing,
        route: &Routed,
        reused: bool,
        start: Instant,
    ) -> Attempted {
        // `closed`: a pooled connection the endpoint closed while idle (nothing came back);
        // `cleanly`: and it ended in a clean EOF, the endpoint having shut it before the request
        // arrived, which is what lets even a POST go again (a crash after reading it would more
        // likely reset the connection).
        let (error, unsent, closed, cleanly) = match error {
            SendError::Hyper(error, unsent) => {
                if let Some(fault) = ClientFault::of_exchange(&error) {
                    let error = ClientError {
                        fault,
                        source: error.into(),
                    };
                    let metrics = route.endpoint.metrics();
                    return Attempted::Done(
                        self.client_failure(&error, metrics, route.role, start),
                    );
                }
                (ProxyError::exchange(error), unsent, false, false)
            }
            SendError::H1(error) => {
                let (closed, cleanly) = match &error {
                    ExchangeError::Io {
                        nothing_received: true,
                        source,
                    } if reused => (true, source.kind() == std::io::ErrorKind::UnexpectedEof),
                    _ => (false, false),
                };
                (ProxyError::from(error), None, closed, cleanly)
            }
            SendError::Timeout => (
                ProxyError::Timeout(route.settings.request_timeout),
                None,
                false,
                false,
            ),
            // As certain as a clean close of an idle connection: the endpoint never saw it.
            SendError::Unprocessed(error) => (ProxyError::exchange(error), None, true, true),
        };
        self.count(&error);
        let may =
            closed || retry::may_resend(&error, unsent.is_some(), route.settings.retry.on_reset);
        Attempted::Failed(Failure {
            failed: Failed::Exchange {
                resendable: may && out.can_resend(unsent.is_some(), cleanly),
                sent: unsent.is_none(),
                reused,
            },
            cause: Cause::Error(error, unsent),
        })
    }

    /// Puts a failure to the retry decision: `None` sends the request round again (made ready
    /// in `out`), `Some` is the client's answer.
    pub(super) fn settle(
        &self,
        failure: Failure,
        route: &Routed,
        tries: &mut Tries,
        out: &mut Outgoing,
        start: Instant,
    ) -> Option<Response<ResponseBody>> {
        let decision = retry::decide(failure.failed, &route.settings, tries.used);
        // A pooled connection closed under the request says nothing of the endpoint; every
        // other broken exchange counts against it. (Connects and responses were observed as
        // they happened.)
        if matches!(failure.failed, Failed::Exchange { .. })
            && decision != Decision::Retry(Charge::Stale)
        {
            self.observe_health(route, Outcome::Failed);
        }
        let charge = match decision {
            Decision::Retry(charge) => charge,
            Decision::RetryIfBudget if self.spend(route.settings.retry.budget_percent) => {
                Charge::Attempt
            }
            Decision::RetryIfBudget | Decision::Answer => {
                tries.budget_refused |= decision == Decision::RetryIfBudget;
                let metrics = route.endpoint.metrics();
                return Some(match failure.cause {
                    Cause::Status(response) | Cause::Grpc(response, _) => {
                        let failures = route.settings.grpc_failures;
                        self.record_answer(metrics, route.role, &response, failures);
                        *response
                    }
                    Cause::Error(error, _) => {
                        let grpc = out.grpc.is_some();
                        self.local_error(&error, metrics, route.role, grpc, start)
                    }
                });
            }
        };
        tries.used.charge(charge);
        let (retry, unsent) = match failure.cause {
            Cause::Status(response) => (
                Retry::Status(response, route.endpoint.clone(), route.role),
                None,
            ),
            Cause::Grpc(response, unsent) => (
                Retry::Status(response, route.endpoint.clone(), route.role),
                unsent,
            ),
            Cause::Error(error, unsent) => (Retry::exchange(error, charge), unsent),
        };
        tries.retrying(retry, &route.endpoint, route.role, charge);
        out.rewind(unsent);
        None
    }
}
