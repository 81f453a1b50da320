//! One interface for "send this request to this endpoint", whatever carries it: a
//! [`tower_service::Service`] over a checked-out connection, implemented by the lean HTTP/1.1
//! exchange, by hyper's HTTP/1 client and by hyper's HTTP/2 client. `forward` sees only this.
//!
//! Concrete types on the hot path: the lean exchange is a named future, so a bodyless GET sends
//! with no boxing. hyper's clients return unnameable futures; they are boxed, on the streaming and
//! HTTP/2 paths only.

use std::future::Future;
use std::mem;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use tokio::time::{Instant, Sleep};

use bytes::Bytes;

use tokio::sync::oneshot;

use super::h1::{self, ExchangeError};
use super::h2;
use super::{ClientBody, RequestBody, Sender};

/// A connection checked out for one request.
pub enum Transport {
    /// A lean HTTP/1.1 connection; the exchange runs in the request's task.
    H1(Option<h1::Connection>),
    /// A hyper HTTP/1 client connection, whose own task writes a streamed body.
    Hyper(Option<Sender>),
    /// A stream on a shared HTTP/2 connection (boxed: the HTTP/1.1 variants stay small, and every
    /// request's future with them).
    H2(Box<H2Attempt>),
}

/// One request's stream on a shared HTTP/2 connection to `address`; `rewind` gets a streamed
/// request back if the endpoint refuses its stream unprocessed.
pub struct H2Attempt {
    pub(super) stream: Option<h2::Stream>,
    pub(super) address: SocketAddr,
    pub(super) rewind: Option<Box<Rewind>>,
    /// Whether the endpoint had written anything on the stream's connection (set when sent).
    pub(super) heard: Option<Arc<AtomicBool>>,
}

/// What rebuilds a streamed request whose stream was refused: its head as it was prepared (for
/// either protocol), and its body, returned rewound (see [`ClientBody::keep_for_return`]).
pub struct Rewind {
    head: Request<()>,
    returned: oneshot::Receiver<ClientBody>,
}

/// How long a refused stream's body may take to come back from hyper's connection task, which
/// drops it as soon as the stream ends.
const RETURN_WAIT: Duration = Duration::from_secs(1);

/// What one attempt sends.
pub struct Outbound<'a> {
    /// The lean path encodes it and leaves it in place (a retry sends it again); hyper's path
    /// takes it, and hands it back in [`SendError::Hyper`] if it never left.
    pub request: &'a mut Request<RequestBody>,
    /// Headers the lean path writes with the head (hyper's path has them in the request).
    pub added: h1::Added<'a>,
    /// The lean path's body, already in memory.
    pub body: &'a Bytes,
    /// The lean path's response head must have arrived by then.
    pub deadline: Instant,
    /// hyper's path: the response head must arrive this long after the request body's end.
    pub request_timeout: Duration,
    /// The framing policy's header-line limit, for the lean path (hyper's connection has its own).
    pub max_headers: usize,
    /// The request is the lean path's: it stays in place, to be sent again on a retry.
    pub in_place: bool,
    /// The client sent `te: trailers`: an HTTP/2 upstream gets it (gRPC servers require it).
    pub te_trailers: bool,
    /// A streamed body up to this size can come back for another endpoint after an HTTP/2 stream
    /// was refused unprocessed.
    pub replay_limit: usize,
}

/// An endpoint's answer, with what its body needs to stream and to free its connection.
pub enum Answer {
    H1(Response<h1::ResponseBody>),
    Hyper(Response<Incoming>, Sender),
    /// An HTTP/2 response, with the guard that counts its stream until the body ends.
    H2(Response<Incoming>, h2::StreamGuard),
}

/// Why an attempt got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    H1(#[from] ExchangeError),
    /// hyper's client failed; the request comes back if it was never sent.
    #[error("{0}")]
    Hyper(hyper::Error, Option<Box<Request<RequestBody>>>),
    #[error("no response head in time")]
    Timeout,
    /// hyper's client failed on an HTTP/2 connection the endpoint never wrote a byte on: it
    /// processed nothing, and the request (kept in place) may go elsewhere.
    #[error("{0}")]
    Unprocessed(hyper::Error),
}

/// hyper's send.
type HyperSend = Pin<
    Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + Send>,
>;

/// An attempt under way.
pub enum Sending {
    H1(h1::Exchange),
    Hyper(Box<HyperSending<Sender>>),
    H2(Box<HyperSending<h2::StreamGuard>>),
}

/// An attempt through one of hyper's clients (boxed: not the lean path). `K` is what the response
/// keeps of the connection: an HTTP/1 handle to pool again, or an HTTP/2 stream's guard.
pub struct HyperSending<K> {
    send: HyperSend,
    keep: Option<K>,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    /// Set when the client's body has all been read; `None`: it was complete from the start.
    body_ended: Option<Arc<AtomicBool>>,
}

impl<K> HyperSending<K> {
    /// A send under way, under its response timeout.
    fn start(
        send: HyperSend,
        keep: K,
        out: &Outbound<'_>,
        body_ended: Option<Arc<AtomicBool>>,
    ) -> Box<Self> {
        let timeout = out.request_timeout;
        Box::new(HyperSending {
            send,
            keep: Some(keep),
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            body_ended,
        })
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Response<Incoming>, K), SendError>> {
        let sent = match self.send.as_mut().poll(cx) {
            Poll::Ready(sent) => sent,
            Poll::Pending => {
                ready!(self.poll_overdue(cx));
                return Poll::Ready(Err(SendError::Timeout));
            }
        };
        Poll::Ready(match sent {
            Ok(response) => Ok((response, self.keep.take().expect("a send completes once"))),
            Err(mut failed) => {
                let unsent = failed.take_message().map(Box::new);
                Err(SendError::Hyper(failed.into_error(), unsent))
            }
        })
    }

    /// Whether the response is overdue: the timer fired and the endpoint has had the whole
    /// request for `timeout`. While the client is still sending, the timer starts again (a
    /// stalled body fails on its own, see `ClientBody`).
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            match &self.body_ended {
                // Acquire: pairs with the body's Release store.
                Some(ended) if !ended.load(Ordering::Acquire) => {
                    let next = Instant::now() + self.timeout;
                    self.timer.as_mut().reset(next);
                }
                _ => return Poll::Ready(()),
            }
        }
    }
}

impl<'a> tower_service::Service<Outbound<'a>> for Transport {
    type Response = Answer;
    type Error = SendError;
    type Future = Sending;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        match self {
            Transport::Hyper(Some(sender)) => sender
                .poll_ready(cx)
                .map_err(|error| SendError::Hyper(error, None)),
            Transport::H2(attempt) => match &mut attempt.stream {
                Some(stream) => stream
                    .sender
                    .poll_ready(cx)
                    .map_err(|error| SendError::Hyper(error, None)),
                None => Poll::Ready(Ok(())),
            },
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Each checkout carries one request: a second call panics (a programming error).
    fn call(&mut self, out: Outbound<'a>) -> Sending {
        const ONCE: &str = "a checked-out transport sends one request";
        match self {
            Transport::H1(conn) => Sending::H1(h1::Exchange::start(
                conn.take().expect(ONCE),
                out.request,
                out.added,
                out.body,
                out.deadline,
                out.max_headers,
            )),
            Transport::Hyper(sender) => {
                let mut sender = sender.take().expect(ONCE);
                let (request, body_ended) = take_streamed(out.request);
                let send = Box::pin(sender.try_send_request(request));
                Sending::Hyper(HyperSending::start(send, sender, &out, body_ended))
            }
            Transport::H2(attempt) => {
                let H2Attempt {
                    stream,
                    address,
                    rewind,
                    heard,
                } = &mut **attempt;
                let h2::Stream { mut sender, guard } = stream.take().expect(ONCE);
                *heard = Some(guard.heard_from_peer());
                let (mut request, body_ended) = if out.in_place {
                    (copy_lean(&out), None)
                } else {
                    let (mut request, body_ended) = take_streamed(out.request);
                    *rewind = keep_for_return(&mut request, out.replay_limit);
                    (request, body_ended)
                };
                h2::to_http2(&mut request, *address, out.te_trailers);
                let send = Box::pin(sender.try_send_request(request));
                Sending::H2(HyperSending::start(send, guard, &out, body_ended))
            }
        }
    }
}

/// A copy of a streamed request's head and a return ticket for its body.
fn keep_for_return(request: &mut Request<RequestBody>, limit: usize) -> Option<Box<Rewind>> {
    let Either::Left(body) = request.body_mut() else {
        return None;
    };
    let returned = body.keep_for_return(limit);
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    Some(Box::new(Rewind { head, returned }))
}

impl Transport {
    /// Gives a failed HTTP/2 attempt its request back when the endpoint never processed it, so
    /// that it can go elsewhere: the request hyper handed back unsent, in the form it was prepared
    /// in, or one rebuilt around its returned body after a refused stream.
    pub async fn recover(&mut self, error: SendError) -> SendError {
        let Transport::H2(attempt) = self else {
            return error;
        };
        // The peer never wrote a byte on the connection, not even its SETTINGS: it processed
        // nothing (it reset a connection its closing listener had let the kernel complete).
        let silent = attempt
            .heard
            .as_ref()
            .is_some_and(|heard| !heard.load(Ordering::Relaxed));
        let rewind = &mut attempt.rewind;
        let Some(rewind) = rewind.take() else {
            return match error {
                SendError::Hyper(error, None) if silent => SendError::Unprocessed(error),
                other => other,
            };
        };
        let Rewind { head, returned } = *rewind;
        match error {
            SendError::Hyper(error, Some(unsent)) => {
                let body = unsent.into_body();
                SendError::Hyper(error, Some(Box::new(head.map(|()| body))))
            }
            SendError::Hyper(error, None) if silent || h2::unprocessed(&error) => {
                match tokio::time::timeout(RETURN_WAIT, returned).await {
                    Ok(Ok(body)) => {
                        let request = head.map(|()| Either::Left(body));
                        SendError::Hyper(error, Some(Box::new(request)))
                    }
                    _ => SendError::Hyper(error, None),
                }
            }
            other => other,
        }
    }
}

impl Transport {
    /// The streamed request of an HTTP/2 attempt whose answer (a trailers-only gRPC status) sends
    /// it elsewhere: its head, and its body once hyper has let go of it, rewound; `None` if the
    /// body passed on more than it could keep, or does not come back in time.
    pub async fn reclaim(&mut self) -> Option<Box<Request<RequestBody>>> {
        let Transport::H2(attempt) = self else {
            return None;
        };
        let rewind = &mut attempt.rewind;
        let Rewind { head, returned } = *rewind.take()?;
        let body = tokio::time::timeout(RETURN_WAIT, returned)
            .await
            .ok()?
            .ok()?;
        Some(Box::new(head.map(|()| Either::Left(body))))
    }
}

/// Takes a streamed request out of its place, with the flag its body sets at its end.
fn take_streamed(
    request: &mut Request<RequestBody>,
) -> (Request<RequestBody>, Option<Arc<AtomicBool>>) {
    let body_ended = match request.body_mut() {
        Either::Left(body) if !body.is_end_stream() => Some(body.watch_end()),
        _ => None,
    };
    let request = mem::replace(request, Request::new(Either::Right(Full::default())));
    (request, body_ended)
}

/// The lean path's request as hyper needs it: a copy of the head with the forwarding headers, and
/// the body from memory (the original stays in place for a retry).
fn copy_lean(out: &Outbound<'_>) -> Request<RequestBody> {
    let source = &*out.request;
    let mut request = Request::new(Either::Right(Full::new(out.body.clone())));
    *request.method_mut() = source.method().clone();
    *request.uri_mut() = source.uri().clone();
    *request.headers_mut() = source.headers().clone();
    let headers = request.headers_mut();
    for (name, value) in out.added.replace {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in out.added.append {
        headers.append(name.clone(), value.clone());
    }
    request
}

impl Future for Sending {
    type Output = Result<Answer, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::H1(exchange) => Pin::new(exchange)
                .poll(cx)
                .map(|sent| sent.map(Answer::H1).map_err(SendError::from)),
            Sending::Hyper(hyper) => hyper
                .poll_send(cx)
                .map_ok(|(response, sender)| Answer::Hyper(response, sender)),
            Sending::H2(h2) => h2
                .poll_send(cx)
                .map_ok(|(response, guard)| Answer::H2(response, guard)),
        }
    }
}
