//! Why a request could not be forwarded: who is at fault, whether a retry is safe, and what the
//! client is told.
//!
//! Every failure belongs to one party (Pingora's downstream / upstream / internal split): a
//! [`ClientError`] is the client's (broken framing, a stalled body, a hang-up) and never counts
//! against an endpoint; a [`ProxyError`] is an endpoint's, or tidegate's own (`no_endpoints`,
//! `saturated`).

use std::time::Duration;

use http::StatusCode;

use crate::upstream::h1::ExchangeError;
use crate::upstream::ConnectError;

/// A closed set of failure kinds: the `kind` metric label, the `x-tidegate-error` header and the
/// status code all derive from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing routable in the snapshot.
    NoEndpoints,
    /// The endpoint refused or reset the TCP connection, or the handshake failed.
    Connect,
    /// The TCP connection was not established in time.
    ConnectTimeout,
    /// The response head did not arrive in time.
    Timeout,
    /// The connection closed or broke before a response head arrived.
    Reset,
    /// The endpoint sent something that is not valid HTTP.
    Protocol,
    /// tidegate's own cap: the endpoint had `upstream.max_connections_per_endpoint` connections
    /// open and none came free in time (answered only when no other endpoint had room).
    Saturated,
}

impl ErrorKind {
    /// Every kind, for resolving metric handles up front.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::NoEndpoints,
        ErrorKind::Connect,
        ErrorKind::ConnectTimeout,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::Saturated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Saturated => "saturated",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoEndpoints | ErrorKind::Saturated => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Connect | ErrorKind::Reset | ErrorKind::Protocol => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// True only when nothing of the request reached the endpoint, so sending it elsewhere cannot
    /// duplicate its effect.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect | ErrorKind::ConnectTimeout | ErrorKind::Saturated
        )
    }

    /// The kind an `x-tidegate-error` value names, if it is one of these.
    pub(super) fn parse(name: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().as_bytes() == name)
    }

    /// Index into per-kind handle arrays.
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// A forwarding failure with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no ready endpoints")]
    NoEndpoints,
    #[error("upstream {0}")]
    Connect(#[from] ConnectError),
    #[error("upstream sent no response head within {0:?}")]
    Timeout(Duration),
    #[error("upstream connection failed before a response: {0}")]
    Reset(hyper::Error),
    #[error("upstream sent an invalid response: {0}")]
    Protocol(hyper::Error),
    /// An HTTP/1.1 upgrade (WebSocket) routed to an endpoint that speaks HTTP/2.
    #[error("the endpoint speaks HTTP/2 (h2c), which cannot carry an HTTP/1.1 upgrade")]
    UpgradeToHttp2,
    /// A lean-path exchange failed (see `upstream::h1`).
    #[error("upstream exchange failed before a response: {0}")]
    Exchange(#[from] ExchangeError),
}

impl ProxyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::NoEndpoints => ErrorKind::NoEndpoints,
            ProxyError::Connect(e) if e.is_timeout() => ErrorKind::ConnectTimeout,
            ProxyError::Connect(e) if e.is_saturated() => ErrorKind::Saturated,
            ProxyError::Connect(_) => ErrorKind::Connect,
            ProxyError::Timeout(_) => ErrorKind::Timeout,
            ProxyError::Reset(_) => ErrorKind::Reset,
            ProxyError::Protocol(_) | ProxyError::UpgradeToHttp2 => ErrorKind::Protocol,
            ProxyError::Exchange(ExchangeError::Io { .. }) => ErrorKind::Reset,
            ProxyError::Exchange(ExchangeError::Invalid(_)) => ErrorKind::Protocol,
            ProxyError::Exchange(ExchangeError::Timeout) => ErrorKind::Timeout,
        }
    }

    /// See [`ErrorKind::retryable`].
    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }

    /// Classifies a failed exchange on an established connection.
    pub(super) fn exchange(error: hyper::Error) -> Self {
        if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
            ProxyError::Protocol(error)
        } else {
            ProxyError::Reset(error)
        }
    }
}

/// What a client did wrong. Answered with its own status when an answer is still possible,
/// counted in `tidegate_client_errors_total`, never retried and never held against an endpoint,
/// a canary's abort rate or the retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body's framing is invalid (a malformed chunk, a body longer than declared).
    BadFraming,
    /// The request body stopped arriving.
    BodyTimeout,
    /// The client closed or reset its connection before its request was complete.
    Aborted,
    /// A request a reverse proxy must not forward (an HTTP/1.1 request without exactly one Host).
    BadRequest,
    /// `CONNECT`: tidegate is a reverse proxy, not a forward proxy.
    NotAllowed,
    /// The body is larger than `limits.max_request_body`.
    BodyTooLarge,
    /// The request target is longer than `limits.max_uri_size`.
    UriTooLong,
    /// More header lines than `limits.max_request_headers` (HTTP/2; hyper refuses HTTP/1's).
    HeadersTooLarge,
}

impl ClientFault {
    /// Every kind, for resolving metric handles up front.
    pub const ALL: [ClientFault; 8] = [
        ClientFault::BadFraming,
        ClientFault::BodyTimeout,
        ClientFault::Aborted,
        ClientFault::BadRequest,
        ClientFault::NotAllowed,
        ClientFault::BodyTooLarge,
        ClientFault::UriTooLong,
        ClientFault::HeadersTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::BadFraming => "bad_framing",
            ClientFault::BodyTimeout => "body_timeout",
            ClientFault::Aborted => "aborted",
            ClientFault::BadRequest => "bad_request",
            ClientFault::NotAllowed => "method_not_allowed",
            ClientFault::BodyTooLarge => "body_too_large",
            ClientFault::UriTooLong => "uri_too_long",
            ClientFault::HeadersTooLarge => "headers_too_large",
        }
    }

    /// The status the client is answered with (and the request is counted under). A client that
    /// hung up hears nothing; it is counted as 499, nginx's "client closed request".
    pub fn status(self) -> StatusCode {
        match self {
            ClientFault::BadFraming | ClientFault::BadRequest => StatusCode::BAD_REQUEST,
            ClientFault::NotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ClientFault::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ClientFault::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ClientFault::UriTooLong => StatusCode::URI_TOO_LONG,
            ClientFault::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ClientFault::Aborted => {
                StatusCode::from_u16(499).expect("499 is within the valid status range")
            }
        }
    }

    /// Index into per-kind handle arrays.
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// What went wrong reading the client's body, from the error the body reported (hyper's
    /// server side wraps the socket's error: end of stream or a reset is a hang-up, anything
    /// else a framing fault).
    pub(super) fn of_body(error: &(dyn std::error::Error + 'static)) -> ClientFault {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<crate::upstream::TooLarge>() {
                return ClientFault::BodyTooLarge;
            }
            if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
                if hyper.is_incomplete_message() || hyper.is_canceled() {
                    return ClientFault::Aborted;
                }
                if hyper.is_timeout() {
                    return ClientFault::BodyTimeout;
                }
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as Io;
                return match io.kind() {
                    Io::UnexpectedEof
                    | Io::ConnectionReset
                    | Io::ConnectionAborted
                    | Io::BrokenPipe => ClientFault::Aborted,
                    Io::TimedOut => ClientFault::BodyTimeout,
                    _ => ClientFault::BadFraming,
                };
            }
            cause = error.source();
        }
        ClientFault::BadFraming
    }

    /// The client's fault behind a failed upstream exchange, if it was one: hyper's client
    /// reports an error of the request body it was streaming as the user's (ours), and that body
    /// is the client's.
    pub(super) fn of_exchange(error: &hyper::Error) -> Option<ClientFault> {
        use std::error::Error as _;
        if !error.is_user() {
            return None;
        }
        error.source().map(ClientFault::of_body)
    }
}

/// A request that failed through the client's fault.
#[derive(Debug, thiserror::Error)]
#[error("the client's request failed ({}): {source}", fault.as_str())]
pub struct ClientError {
    pub fault: ClientFault,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl ClientError {
    /// A request refused before forwarding, for `reason`.
    pub(super) fn refused(fault: ClientFault, reason: &'static str) -> Self {
        Self {
            fault,
            source: reason.into(),
        }
    }

    /// A failure reading the client's body.
    pub(super) fn body(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = source.into();
        let fault = ClientFault::of_body(&*source);
        Self { fault, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_sending_are_retryable() {
        for kind in ErrorKind::ALL {
            let expected = matches!(
                kind,
                ErrorKind::Connect | ErrorKind::ConnectTimeout | ErrorKind::Saturated
            );
            assert_eq!(kind.retryable(), expected, "{kind:?}");
        }
        assert_eq!(
            ErrorKind::NoEndpoints.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let saturated = ProxyError::Connect(ConnectError::Saturated(4));
        assert_eq!(saturated.kind(), ErrorKind::Saturated);
        assert_eq!(saturated.kind().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ErrorKind::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ErrorKind::Reset.status(), StatusCode::BAD_GATEWAY);
        let all: Vec<_> = ErrorKind::ALL.iter().map(|k| k.index()).collect();
        assert_eq!(all, (0..ErrorKind::ALL.len()).collect::<Vec<_>>());
        let all: Vec<_> = ClientFault::ALL.iter().map(|k| k.index()).collect();
        assert_eq!(all, (0..ClientFault::ALL.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_body_that_ends_early_is_a_hang_up_and_bad_bytes_are_bad_framing() {
        use std::io;
        let fault = |kind: io::ErrorKind| {
            let wrapped: Box<dyn std::error::Error + Send + Sync> =
                Box::new(io::Error::new(kind, "from the client"));
            ClientError::body(wrapped).fault
        };
        assert_eq!(fault(io::ErrorKind::UnexpectedEof), ClientFault::Aborted);
        assert_eq!(fault(io::ErrorKind::ConnectionReset), ClientFault::Aborted);
        assert_eq!(fault(io::ErrorKind::InvalidInput), ClientFault::BadFraming);
        assert_eq!(fault(io::ErrorKind::TimedOut), ClientFault::BodyTimeout);
        assert_eq!(ClientFault::BadFraming.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ClientFault::Aborted.status().as_u16(), 499);
    }
}
