//! Connections to one endpoint: connect with a deadline, lock-free pools of idle keep-alive
//! HTTP/1.1 connections, and multiplexed HTTP/2 connections for endpoints that speak h2c.
//!
//! An endpoint speaks one [`Protocol`]. To an HTTP/2 endpoint every request is a stream on a shared
//! connection ([`h2`]). To an HTTP/1.1 endpoint, two kinds of connection, two pools. A request whose body is in memory (none, or a small one kept
//! for replay) takes the lean path in [`h1`]: the exchange runs in the request's own task. A request
//! that streams its body, or asks for an upgrade, goes through hyper's client, whose connection
//! task writes the body while the response streams back. Either is sent through one
//! [`Transport`] service, under one framing policy ([`framing`]).
//!
//! The pools live in the endpoint's cell, so checking out needs no lookup and an endpoint that leaves
//! the snapshot closes its idle connections when its last user lets go. Connecting happens before a
//! request is handed over, so a connect failure leaves the request intact for a retry elsewhere.
//!
//! HTTP/1.1 connections to one endpoint, in use and idle, are capped ([`limit`]): at the cap a
//! request waits a little for one to go idle or close, then fails with
//! [`ConnectError::Saturated`], which the forwarder takes elsewhere.

mod chunked;
mod client_body;
pub mod framing;
pub mod h1;
pub mod h2;
mod limit;
pub mod transport;

pub use client_body::{BodyError, ClientBody, TooLarge};
pub use transport::{Answer, Outbound, SendError, Transport};

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http_body_util::{Either, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use limit::{Limit, Permit};

/// The request body sent upstream: the client's body streamed through, or a buffered one (a small
/// body kept so that the request can be sent again after its first attempt failed).
pub type RequestBody = Either<ClientBody, Full<Bytes>>;

/// One HTTP/1.1 connection's request handle.
pub type Sender = http1::SendRequest<RequestBody>;

/// `upstream.max_connections_per_endpoint` unless configured: HTTP/1.1 connections to one endpoint,
/// in use and idle. nginx's default `worker_connections` is 512 for everything a worker does; a
/// pod's accept backlog is often 128 or less.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// The HTTP/2 connect that this request waited on, together with others, failed.
    #[error("{0}")]
    Shared(Arc<ConnectError>),
    /// tidegate's own cap: this many HTTP/1.1 connections are open to the endpoint and none came
    /// free in time. Not the endpoint's failure.
    #[error("connection limit reached: {0} open (upstream.max_connections_per_endpoint), none came free in time")]
    Saturated(usize),
}

impl ConnectError {
    /// The endpoint refused the connection: nothing listens there.
    pub fn is_refused(&self) -> bool {
        match self {
            ConnectError::Io(e) => e.kind() == io::ErrorKind::ConnectionRefused,
            ConnectError::Shared(e) => e.is_refused(),
            _ => false,
        }
    }

    /// The connection was not established in time.
    pub fn is_timeout(&self) -> bool {
        match self {
            ConnectError::Timeout(_) => true,
            ConnectError::Shared(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// No connection was attempted: the endpoint has as many as tidegate allows.
    pub fn is_saturated(&self) -> bool {
        matches!(self, ConnectError::Saturated(_))
    }
}

/// How tidegate speaks to an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, over cleartext TCP (gRPC servers speak it).
    H2c,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
        }
    }

    /// The protocol a configuration value names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "http1" => Some(Protocol::Http1),
            "h2c" => Some(Protocol::H2c),
            _ => None,
        }
    }

    /// The protocol an EndpointSlice port's `appProtocol` names (KEP-3726's `kubernetes.io/h2c`,
    /// and `grpc`, which is always HTTP/2); `None` for anything else, which leaves the default.
    pub fn from_app_protocol(app_protocol: &str) -> Option<Self> {
        match app_protocol {
            "kubernetes.io/h2c" | "grpc" => Some(Protocol::H2c),
            "http" | "kubernetes.io/http" => Some(Protocol::Http1),
            _ => None,
        }
    }
}

/// Which kind of connection a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The body (if any) is in memory: the lean exchange.
    Lean,
    /// The body streams, or the request asks for an upgrade: hyper's client.
    Streaming,
}

/// A connection checked out for one request.
pub struct Checkout {
    pub transport: Transport,
    /// Taken from the idle pool: the peer may have closed it meanwhile, so a failure before any
    /// response byte says nothing about the endpoint's health.
    pub reused: bool,
}

/// The connections to one address.
pub struct Pool {
    address: SocketAddr,
    protocol: Protocol,
    h2: h2::Pool,
    /// Idle connections. Unbounded queues, because each connection holds a permit of `limit`:
    /// there are never more than `max_connections` of them, in use and idle, and every one that
    /// ends an exchange is kept (a fixed, smaller idle cap closed and reopened a quarter of the
    /// connections at 256 concurrent requests). Empty queues allocate nothing: most endpoints of
    /// a large snapshot never see a connection from this instance.
    idle: SegQueue<Sender>,
    idle_h1: SegQueue<h1::Connection>,
    /// Open HTTP/1.1 connections; shared with them, as each gives its permit back when it closes
    /// (a hyper connection's task may outlive the pool).
    limit: OnceLock<Arc<Limit>>,
}

/// What a request at an endpoint's cap gets when room comes.
enum Room<T> {
    /// An idle connection of the kind it needs.
    Idle(T),
    /// A permit to open a new one.
    New(Permit),
}

impl Pool {
    pub fn new(address: SocketAddr, protocol: Protocol) -> Self {
        Self {
            address,
            protocol,
            h2: h2::Pool::default(),
            idle: SegQueue::new(),
            idle_h1: SegQueue::new(),
            limit: OnceLock::new(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A stream on an HTTP/2 endpoint's shared connection; else an idle connection of the kind
    /// `path` needs, or a new one (connected within `connect_timeout`; a new hyper connection
    /// refuses responses with more than `max_headers` header lines, the limit the lean path applies
    /// per exchange). A new HTTP/1.1 connection must fit under `max_connections` open to the
    /// endpoint, in use and idle; at that cap the request waits up to `connect_timeout` for room
    /// (see [`Pool::room`]).
    pub async fn checkout(
        &self,
        path: Path,
        connect_timeout: Duration,
        max_headers: usize,
        max_connections: usize,
    ) -> Result<Checkout, ConnectError> {
        if self.protocol == Protocol::H2c {
            // The connect (and its wait) is boxed: a request on an open connection, the common
            // case, carries none of its state in its future.
            let (stream, reused) = match self.h2.ready() {
                Some(stream) => (stream, true),
                None => Box::pin(self.h2.checkout(self.address, connect_timeout)).await?,
            };
            let transport = Transport::H2(Box::new(transport::H2Attempt {
                stream: Some(stream),
                address: self.address,
                rewind: None,
                heard: None,
            }));
            return Ok(Checkout { transport, reused });
        }
        let (transport, reused) = match path {
            Path::Lean => {
                let (conn, reused) = self.checkout_h1(connect_timeout, max_connections).await?;
                (Transport::H1(Some(conn)), reused)
            }
            Path::Streaming => {
                let (sender, reused) = self
                    .checkout_hyper(connect_timeout, max_headers, max_connections)
                    .await?;
                (Transport::Hyper(Some(sender)), reused)
            }
        };
        Ok(Checkout { transport, reused })
    }

    async fn checkout_h1(
        &self,
        connect_timeout: Duration,
        max: usize,
    ) -> Result<(h1::Connection, bool), ConnectError> {
        if let Some(conn) = self.idle_h1() {
            return Ok((conn, true));
        }
        let idle = || self.idle_h1();
        // Boxed: only a new connection waits, and the wait's state stays out of every request's
        // future.
        let room = Box::pin(self.room(max, connect_timeout, idle, || self.close_one(&self.idle)));
        let permit = match room.await? {
            Room::Idle(conn) => return Ok((conn, true)),
            Room::New(permit) => permit,
        };
        let stream = connect_tcp(self.address, connect_timeout).await?;
        Ok((h1::Connection::new(stream, permit), false))
    }

    /// A usable idle lean-path connection; unusable ones met on the way are closed.
    fn idle_h1(&self) -> Option<h1::Connection> {
        while let Some(conn) = self.idle_h1.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a lean-path connection whose exchange completed.
    pub fn put_h1(&self, conn: h1::Connection) {
        self.idle_h1.push(conn);
        self.wake();
    }

    /// A permit for a new HTTP/1.1 connection if the endpoint has room (the common case: one
    /// compare-and-swap, no wait).
    ///
    /// At the cap, the request waits up to `wait` for whichever comes first: an idle
    /// connection of its kind (`idle`), or a permit given back by a connection that closed. Idle
    /// connections of the other kind hold permits that this request cannot use, so one is closed
    /// (`close_other`) each time the request finds no room. Running out of time is
    /// [`ConnectError::Saturated`]. The connect that follows a wait has its own `connect_timeout`.
    async fn room<T>(
        &self,
        max: usize,
        wait: Duration,
        mut idle: impl FnMut() -> Option<T>,
        mut close_other: impl FnMut(),
    ) -> Result<Room<T>, ConnectError> {
        let limit = self.limit.get_or_init(Arc::default);
        if let Some(permit) = limit.try_acquire(max) {
            return Ok(Room::New(permit));
        }
        let waiter = limit.waiter();
        let mut deadline = pin!(tokio::time::sleep(wait));
        loop {
            let mut notified = pin!(waiter.notified());
            notified.as_mut().enable();
            if let Some(conn) = idle() {
                return Ok(Room::Idle(conn));
            }
            if let Some(permit) = limit.try_acquire(max) {
                return Ok(Room::New(permit));
            }
            close_other();
            // A lean connection gives its permit back as it is dropped; a hyper connection's task
            // a moment later, and its wake-up follows.
            if let Some(permit) = limit.try_acquire(max) {
                return Ok(Room::New(permit));
            }
            tokio::select! {
                biased;
                () = notified => {}
                () = &mut deadline => return Err(ConnectError::Saturated(max)),
            }
        }
    }

    /// Closes one idle connection of `queue`, if it holds any.
    fn close_one<C>(&self, queue: &SegQueue<C>) {
        drop(queue.pop());
    }

    /// A connection went idle: a request waiting at the cap may take it.
    fn wake(&self) {
        if let Some(limit) = self.limit.get() {
            limit.wake();
        }
    }

    async fn checkout_hyper(
        &self,
        connect_timeout: Duration,
        max_headers: usize,
        max: usize,
    ) -> Result<(Sender, bool), ConnectError> {
        if let Some(sender) = self.idle_hyper() {
            return Ok((sender, true));
        }
        let idle = || self.idle_hyper();
        let room =
            Box::pin(self.room(max, connect_timeout, idle, || self.close_one(&self.idle_h1)));
        let permit = match room.await? {
            Room::Idle(sender) => return Ok((sender, true)),
            Room::New(permit) => permit,
        };
        let sender = connect(self.address, connect_timeout, max_headers, permit).await?;
        Ok((sender, false))
    }

    /// A ready idle hyper connection; unusable ones met on the way are released.
    fn idle_hyper(&self) -> Option<Sender> {
        while let Some(sender) = self.idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
            // Closed by the peer (or otherwise unusable): dropping it releases its task.
        }
        None
    }

    /// Returns a connection that finished its exchange and is ready for the next one.
    pub fn put(&self, sender: Sender) {
        if sender.is_ready() {
            self.idle.push(sender);
            self.wake();
        }
    }

    /// Closes every idle connection (the endpoint is going away); in-use ones finish first. An
    /// HTTP/2 connection takes no new streams and closes after its last one.
    pub fn close_idle(&self) {
        self.h2.close();
        while self.idle.pop().is_some() {}
        while self.idle_h1.pop().is_some() {}
    }

    /// Open HTTP/2 connections.
    pub fn h2_connections(&self) -> usize {
        self.h2.open()
    }

    /// Idle connections currently pooled.
    pub fn idle(&self) -> usize {
        self.idle.len() + self.idle_h1.len()
    }

    /// Open HTTP/1.1 connections, in use and idle (a hyper connection until its task has ended).
    pub fn h1_connections(&self) -> usize {
        self.limit.get().map_or(0, |limit| limit.open())
    }
}

async fn connect_tcp(address: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A hyper connection whose task holds `permit` until the connection ends.
async fn connect(
    address: SocketAddr,
    timeout: Duration,
    max_headers: usize,
    permit: Permit,
) -> Result<Sender, ConnectError> {
    let stream = connect_tcp(address, timeout).await?;
    // The framing policy's limits, as the lean path applies them (see `framing`).
    let (sender, connection) = http1::Builder::new()
        .max_headers(max_headers)
        .max_header_size(framing::MAX_HEAD)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        // With upgrades, a `101` hands the socket over to the tunnel instead of closing it; the
        // tunnel is no longer counted against the limit.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%address, %error, "upstream connection ended with an error");
        }
        drop(permit);
    });
    Ok(sender)
}

#[cfg(test)]
mod tests;
