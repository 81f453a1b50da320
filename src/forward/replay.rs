//! Sending a request again after its first attempt failed.
//!
//! A request whose effect cannot be doubled goes again after any failure the policy retries: an
//! idempotent method (RFC 9110 §9.2.2) whose body is empty or small enough to keep
//! (`retries.max_replay_body`, by its Content-Length). Any other request with such a body goes
//! again only when it provably never reached the endpoint (a pooled connection the endpoint had
//! closed while idle). A small body is read in full before the first attempt; larger ones stream
//! and are never replayed.

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::upstream::RequestBody;

use super::error::ClientError;

/// RFC 9110 §9.2.2: sending these twice has the effect of sending them once.
pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What is needed to send a request again.
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Keeps what is needed to send `req` again, reading a small body first (`None` for a body
    /// of unknown or larger length). Whether it may go again is the caller's to decide.
    pub(super) async fn capture(
        req: &mut Request<RequestBody>,
        max_body: u64,
    ) -> Result<Option<Self>, ClientError> {
        let body = if req.body().is_end_stream() {
            Bytes::new()
        } else {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match declared {
                Some(len) if len <= max_body => {
                    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
                    let streamed =
                        std::mem::replace(req.body_mut(), Either::Right(Full::default()));
                    let bytes = Limited::new(streamed, limit)
                        .collect()
                        .await
                        .map_err(ClientError::body)?
                        .to_bytes();
                    *req.body_mut() = Either::Right(Full::new(bytes.clone()));
                    bytes
                }
                // Unknown or large: it streams, and is not sent twice.
                _ => return Ok(None),
            }
        };
        Ok(Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        }))
    }

    /// The kept body.
    pub(super) fn body(&self) -> &Bytes {
        &self.body
    }

    /// A fresh copy of the request.
    pub(super) fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        *req.version_mut() = Version::HTTP_11;
        req
    }
}
