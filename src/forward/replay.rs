//! Sending a request again after its first attempt failed.
//!
//! Only a request whose effect cannot be doubled qualifies: an idempotent method (RFC 9110 §9.2.2)
//! with no body. Its head is kept so that it can be rebuilt after hyper consumed the original; the
//! copy is made only for such requests.

use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Empty};

use crate::upstream::RequestBody;

/// The head of a request that may be sent again.
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// Keeps what is needed to send `req` again, if that is safe.
    pub(super) fn capture(req: &Request<RequestBody>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        (idempotent && req.body().is_end_stream()).then(|| Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    /// A fresh copy of the request.
    pub(super) fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = Version::HTTP_11;
        req
    }
}
