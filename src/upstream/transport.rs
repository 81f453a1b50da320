//! One interface for "send this request to this endpoint", whatever carries it: a
//! [`tower_service::Service`] over a checked-out connection, implemented by the lean HTTP/1.1
//! exchange and by hyper's HTTP/1 client (and, next, by HTTP/2). `forward` sees only this.
//!
//! Concrete types on the hot path: the lean exchange is a named future, so a bodyless GET sends
//! with no boxing. hyper's client returns an unnameable future; it is boxed, on the streaming path
//! only.

use std::future::Future;
use std::mem;
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

use super::h1::{self, ExchangeError};
use super::{RequestBody, Sender};

/// A connection checked out for one request.
pub enum Transport {
    /// A lean HTTP/1.1 connection; the exchange runs in the request's task.
    H1(Option<h1::Connection>),
    /// A hyper HTTP/1 client connection, whose own task writes a streamed body.
    Hyper(Option<Sender>),
}

/// What one attempt sends.
pub struct Outbound<'a> {
    /// The lean path encodes it and leaves it in place (a retry sends it again); hyper's path
    /// takes it, and hands it back in [`SendError::Hyper`] if it never left.
    pub request: &'a mut Request<RequestBody>,
    /// Headers the lean path writes with the head (hyper's path has them in the request).
    pub added: h1::Added<'a>,
    /// The lean path's body, already in memory.
    pub body: &'a [u8],
    /// The lean path's response head must have arrived by then.
    pub deadline: Instant,
    /// hyper's path: the response head must arrive this long after the request body's end.
    pub request_timeout: Duration,
    /// The framing policy's header-line limit, for the lean path (hyper's connection has its own).
    pub max_headers: usize,
}

/// An endpoint's answer, with what its body needs to stream and to free its connection.
pub enum Answer {
    H1(Response<h1::ResponseBody>),
    Hyper(Response<Incoming>, Sender),
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
}

/// hyper's send.
type HyperSend = Pin<
    Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + Send>,
>;

/// An attempt under way.
pub enum Sending {
    H1(h1::Exchange),
    Hyper(Box<HyperSending>),
}

/// An attempt through hyper's client (boxed: the streaming path only).
pub struct HyperSending {
    send: HyperSend,
    sender: Option<Sender>,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    /// Set when the client's body has all been read; `None`: it was complete from the start.
    body_ended: Option<Arc<AtomicBool>>,
}

impl HyperSending {
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
                let body_ended = match out.request.body_mut() {
                    Either::Left(body) if !body.is_end_stream() => Some(body.watch_end()),
                    _ => None,
                };
                let request =
                    mem::replace(out.request, Request::new(Either::Right(Full::default())));
                let timeout = out.request_timeout;
                Sending::Hyper(Box::new(HyperSending {
                    send: Box::pin(sender.try_send_request(request)),
                    sender: Some(sender),
                    timer: Box::pin(tokio::time::sleep(timeout)),
                    timeout,
                    body_ended,
                }))
            }
        }
    }
}

impl Future for Sending {
    type Output = Result<Answer, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::H1(exchange) => Pin::new(exchange)
                .poll(cx)
                .map(|sent| sent.map(Answer::H1).map_err(SendError::from)),
            Sending::Hyper(hyper) => {
                let sent = match hyper.send.as_mut().poll(cx) {
                    Poll::Ready(sent) => sent,
                    Poll::Pending => {
                        ready!(hyper.poll_overdue(cx));
                        return Poll::Ready(Err(SendError::Timeout));
                    }
                };
                Poll::Ready(match sent {
                    Ok(response) => Ok(Answer::Hyper(
                        response,
                        hyper.sender.take().expect("a send completes once"),
                    )),
                    Err(mut failed) => {
                        let unsent = failed.take_message().map(Box::new);
                        Err(SendError::Hyper(failed.into_error(), unsent))
                    }
                })
            }
        }
    }
}
