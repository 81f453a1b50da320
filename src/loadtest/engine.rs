//! The load itself: one task per connection (HTTP/1.1) or stream (HTTP/2) claims tickets from the
//! schedule, waits for each one's time, sends it, reads the response and reports one `Record`.
//! Nothing here counts or aggregates: that is the recorder's job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::alarm::Alarm;
use super::plan::{Plan, Protocol, VersionFrom, BODY_LIMIT, STREAMS_PER_H2_CONNECTION};
use super::record::{classify, version_from_body, version_from_header, ErrorKind, Outcome, Record};
use super::schedule::Schedule;
use super::tally::Event;
use super::tls::{Connector, Stream, TlsSetupError};
use crate::shutdown::Shutdown;

type H2 = http2::SendRequest<Full<Bytes>>;
type H2Reply = oneshot::Sender<Result<H2, ErrorKind>>;

/// A closed-loop connection whose connect failed waits this long before its next request, so a
/// dead target is probed, not spun on. (Open loop needs no pause: the schedule paces it.)
const CLOSED_LOOP_CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection task reads; built once per run.
pub(super) struct Shared {
    pub start: Instant,
    pub schedule: Schedule,
    address: SocketAddr,
    /// For an `https://` target.
    tls: Option<Connector>,
    /// What request `n` sends: `requests[n % len]` (method, URI, headers, body).
    requests: Vec<(http::Method, Uri, HeaderMap, Bytes)>,
    version_from: VersionFrom,
    timeout: Duration,
    events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    pub fn new(
        plan: &Plan,
        address: SocketAddr,
        start: Instant,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, TlsSetupError> {
        let tls = match plan.target.tls_name() {
            Some(name) => Some(Connector::new(name, &plan.verify, plan.protocol)?),
            None => None,
        };
        Ok(Self {
            start,
            schedule: Schedule::new(plan.rate, plan.duration, &plan.stages),
            address,
            tls,
            requests: plan.requests(),
            version_from: plan.version_from.clone(),
            timeout: plan.timeout,
            events,
        })
    }

    /// Request `n` of the run.
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        // `requests` is never empty: a plan always has at least its one target.
        let i = usize::try_from(n % self.requests.len().max(1) as u64).unwrap_or(0);
        let (method, uri, headers, body) = &self.requests[i];
        // A `Bytes` clone: the body is shared, not copied, per request.
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers.clone();
        request
    }
}

/// Runs the load until the schedule is spent or `stop` fires, then lets in-flight requests
/// finish. Returns whether `stop` cut it short.
pub(super) async fn drive(
    shared: Arc<Shared>,
    protocol: Protocol,
    connections: usize,
    mut stop: Shutdown,
) -> bool {
    let mut tasks = JoinSet::new();
    let h2_connectors: Vec<_> = match protocol {
        Protocol::Http1 => Vec::new(),
        Protocol::Http2 => (0..connections.div_ceil(STREAMS_PER_H2_CONNECTION))
            .map(|_| {
                let (tx, rx) = mpsc::channel(connections);
                tokio::spawn(h2_connector(shared.clone(), rx));
                tx
            })
            .collect(),
    };
    for i in 0..connections {
        let link = match h2_connectors.get(i / STREAMS_PER_H2_CONNECTION) {
            Some(connector) => Link::H2 {
                sender: None,
                connector: connector.clone(),
            },
            None => Link::H1(None),
        };
        tasks.spawn(connection(shared.clone(), link, stop.clone()));
    }
    drop(h2_connectors);
    while tasks.join_next().await.is_some() {}
    stop.wait().now_or_never().is_some()
}

/// Waits until `at` (to the microsecond with an [`Alarm`]; to tokio's millisecond tick without
/// one); true if `stop` fired first.
async fn wait_until(at: Instant, alarm: Option<&Alarm>, stop: &mut Shutdown) -> bool {
    let wait = async {
        let precise = match alarm {
            Some(alarm) => alarm.wait_until(at).await.is_ok(),
            None => false,
        };
        if !precise {
            tokio::time::sleep_until(at.into()).await;
        }
    };
    tokio::select! {
        biased;
        _ = stop.wait() => true,
        _ = wait => false,
    }
}

/// One connection's (or stream's) loop over the tickets it claims.
async fn connection(shared: Arc<Shared>, mut link: Link, mut stop: Shutdown) {
    let closed_loop = shared.schedule.total().is_none();
    // Without a timerfd (its creation failed: out of file descriptors) requests start up to a
    // millisecond late, and the summary's start lag says so.
    let alarm = match closed_loop {
        true => None,
        false => Alarm::new()
            .inspect_err(|error| tracing::warn!(%error, "no timerfd: requests may start late"))
            .ok(),
    };
    // When this connection's latest request ended.
    let mut busy_until = Duration::ZERO;
    loop {
        if stop.wait().now_or_never().is_some() {
            return;
        }
        let Some(ticket) = shared.schedule.claim(shared.start.elapsed()) else {
            return;
        };
        if !ticket.late
            && wait_until(shared.start + ticket.intended, alarm.as_ref(), &mut stop).await
        {
            return;
        }
        let sent = shared.start.elapsed();
        let overdue = sent > ticket.intended + shared.timeout;
        let (outcome, version) = if overdue {
            (Outcome::Error(ErrorKind::Overdue), None)
        } else {
            match tokio::time::timeout(shared.timeout, link.exchange(&shared, ticket.n)).await {
                Ok(Ok((status, version))) => (Outcome::Status(status), version),
                Ok(Err(kind)) => {
                    link.close();
                    (Outcome::Error(kind), None)
                }
                Err(_) => {
                    link.close();
                    (Outcome::Error(ErrorKind::Timeout), None)
                }
            }
        };
        let done = shared.start.elapsed();
        // Waiting for this connection's previous request to end is the system's doing and
        // counts; from then (or from the intended start, if it had ended by then) to the send is
        // the generator's own lag, and does not.
        let ready = busy_until.max(ticket.intended);
        let record = Record {
            intended: ticket.intended,
            done,
            latency: match overdue {
                true => done.saturating_sub(ticket.intended),
                false => done.saturating_sub(sent) + ready.saturating_sub(ticket.intended),
            },
            service: (!overdue).then(|| done.saturating_sub(sent)),
            start_lag: (!ticket.late && !overdue).then(|| sent.saturating_sub(ready)),
            outcome,
            late: ticket.late,
            version,
        };
        busy_until = done;
        // The recorder outlives every connection task; a send can only fail if it panicked.
        let _ = shared.events.send(Event::Record(record));
        if closed_loop && outcome == Outcome::Error(ErrorKind::Connect) {
            tokio::select! {
                _ = stop.wait() => return,
                _ = tokio::time::sleep(CLOSED_LOOP_CONNECT_BACKOFF) => {}
            }
        }
    }
}

/// An HTTP/1.1 connection. Dropping it aborts its task, which closes the socket: a request that
/// timed out against a silent server leaves nothing behind.
struct H1 {
    sender: http1::SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

impl Drop for H1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection task's way to the target.
enum Link {
    /// Its own connection, made on first use and again after any failure.
    H1(Option<H1>),
    /// A handle on a connection shared with other streams; a new one comes from the connector.
    H2 {
        sender: Option<H2>,
        connector: mpsc::Sender<H2Reply>,
    },
}

impl Link {
    /// Sends one request and reads the whole response: its status and version.
    async fn exchange(
        &mut self,
        shared: &Shared,
        n: u64,
    ) -> Result<(u16, Option<Bytes>), ErrorKind> {
        let response = match self {
            Link::H1(slot) => {
                let kept = match slot.take() {
                    // Not ready: the server closed the idle connection; nothing was sent on it.
                    Some(mut h1) => h1.sender.ready().await.is_ok().then_some(h1),
                    None => None,
                };
                let mut h1 = match kept {
                    Some(h1) => h1,
                    None => connect_h1(shared).await?,
                };
                let response = h1.sender.send_request(shared.request(n)).await;
                *slot = Some(h1);
                response
            }
            Link::H2 { sender, connector } => {
                let mut current = match sender.take().filter(|s| !s.is_closed()) {
                    Some(current) => current,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        connector.send(tx).await.map_err(|_| ErrorKind::Other)?;
                        rx.await.map_err(|_| ErrorKind::Other)??
                    }
                };
                let response = current.send_request(shared.request(n)).await;
                *sender = Some(current);
                response
            }
        }
        .map_err(|e| classify(&e))?;
        read(response, &shared.version_from).await
    }

    /// Drops this task's connection after a failure; the next request connects again.
    fn close(&mut self) {
        match self {
            Link::H1(slot) => *slot = None,
            Link::H2 { sender, .. } => *sender = None,
        }
    }
}

/// Reads the body to its end (keeping at most [`BODY_LIMIT`] bytes, and only for a body regex).
async fn read(
    response: http::Response<Incoming>,
    version_from: &VersionFrom,
) -> Result<(u16, Option<Bytes>), ErrorKind> {
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| classify(&e))?;
        if let (VersionFrom::BodyRegex(_), Ok(data)) = (version_from, frame.into_data()) {
            let room = BODY_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let version = match version_from {
        VersionFrom::Header(name) => version_from_header(&parts.headers, name),
        VersionFrom::BodyRegex(regex) => version_from_body(regex, &kept),
    };
    Ok((status, version))
}

/// A connection to the target: TCP, and TLS over it for `https://` (a failed handshake is
/// `other`: the server refused it, or its certificate did not verify).
async fn connect(shared: &Shared) -> Result<TokioIo<Stream>, ErrorKind> {
    let stream = TcpStream::connect(shared.address)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    // Requests are small and latency is what is measured.
    let _ = stream.set_nodelay(true);
    let stream = match &shared.tls {
        None => Stream::Plain(stream),
        Some(tls) => match tls.connect(stream).await {
            Ok(stream) => Stream::Tls(Box::new(stream)),
            Err(error) => {
                tracing::debug!(%error, "TLS handshake failed");
                return Err(ErrorKind::Other);
            }
        },
    };
    Ok(TokioIo::new(stream))
}

async fn connect_h1(shared: &Shared) -> Result<H1, ErrorKind> {
    let (sender, connection) = http1::handshake(connect(shared).await?)
        .await
        .map_err(|e| classify(&e))?;
    let task = tokio::spawn(connection).abort_handle();
    Ok(H1 { sender, task })
}

/// Owns one shared HTTP/2 connection: hands out handles on it, and replaces it when it is gone.
/// Requests that arrive while it connects wait, so a broken connection is replaced once, not once
/// per stream.
async fn h2_connector(shared: Arc<Shared>, mut requests: mpsc::Receiver<H2Reply>) {
    let mut current: Option<H2> = None;
    while let Some(reply) = requests.recv().await {
        if reply.is_closed() {
            continue; // Its request timed out meanwhile.
        }
        if current.as_ref().is_none_or(H2::is_closed) {
            let connect = async {
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), connect(&shared).await?)
                        .await
                        .map_err(|e| classify(&e))?;
                tokio::spawn(connection);
                Ok::<_, ErrorKind>(sender)
            };
            match tokio::time::timeout(shared.timeout, connect).await {
                Ok(Ok(sender)) => current = Some(sender),
                Ok(Err(kind)) => {
                    let _ = reply.send(Err(kind));
                    continue;
                }
                Err(_) => {
                    let _ = reply.send(Err(ErrorKind::Timeout));
                    continue;
                }
            }
        }
        if let Some(sender) = &current {
            let _ = reply.send(Ok(sender.clone()));
        }
    }
}
