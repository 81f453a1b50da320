//! Why a request could not be forwarded: who is at fault, whether a retry is safe, and what the
//! client is told.

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
}

impl ErrorKind {
    /// Every kind, for resolving metric handles up front.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::NoEndpoints,
        ErrorKind::Connect,
        ErrorKind::ConnectTimeout,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Connect | ErrorKind::Reset | ErrorKind::Protocol => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// True only when nothing of the request reached the endpoint, so sending it elsewhere cannot
    /// duplicate its effect.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Connect | ErrorKind::ConnectTimeout)
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
    /// A lean-path exchange failed (see `upstream::h1`).
    #[error("upstream exchange failed before a response: {0}")]
    Exchange(#[from] ExchangeError),
}

impl ProxyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::NoEndpoints => ErrorKind::NoEndpoints,
            ProxyError::Connect(ConnectError::Timeout(_)) => ErrorKind::ConnectTimeout,
            ProxyError::Connect(_) => ErrorKind::Connect,
            ProxyError::Timeout(_) => ErrorKind::Timeout,
            ProxyError::Reset(_) => ErrorKind::Reset,
            ProxyError::Protocol(_) => ErrorKind::Protocol,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_sending_are_retryable() {
        for kind in ErrorKind::ALL {
            let expected = matches!(kind, ErrorKind::Connect | ErrorKind::ConnectTimeout);
            assert_eq!(kind.retryable(), expected, "{kind:?}");
        }
        assert_eq!(
            ErrorKind::NoEndpoints.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ErrorKind::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ErrorKind::Reset.status(), StatusCode::BAD_GATEWAY);
        let all: Vec<_> = ErrorKind::ALL.iter().map(|k| k.index()).collect();
        assert_eq!(all, (0..ErrorKind::ALL.len()).collect::<Vec<_>>());
    }
}
