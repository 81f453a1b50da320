//! HTTP/2 with prior knowledge (h2c) to one endpoint, through hyper's HTTP/2 client: a few
//! multiplexed connections per endpoint, shared by every request to it.
//!
//! One connection serves many streams. A second one opens only when every open connection carries
//! [`STREAMS_PER_CONNECTION`] streams. hyper does not expose the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, so this assumes RFC 9113's recommended minimum (100); a
//! peer that allows fewer makes h2 queue the excess streams until one ends, which is still correct.
//!
//! Checking out is lock-free: each slot is an `ArcSwap` of a connection cell, read with one atomic
//! load; only a missing or dead connection makes a request wait, for the one connect that every
//! request arriving meanwhile shares. A connection the peer closed (`GOAWAY`, then the end of its
//! last stream) is replaced by the next request that finds it.
//!
//! Each connection notes whether the peer has sent it anything at all: a server sends its
//! SETTINGS before anything else (RFC 9113 §3.4), so a stream that failed on a connection the peer
//! never wrote to was never processed (a pod that closed its listener just after the kernel
//! completed the handshake resets such connections), and may go elsewhere.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{connect_tcp, framing, ConnectError, RequestBody};

/// Streams one connection carries before another connection is opened (RFC 9113 §6.5.2
/// recommends a peer allow at least 100).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// Connections per endpoint at most; beyond `SLOTS × STREAMS_PER_CONNECTION` streams, h2 queues.
const SLOTS: usize = 4;

/// A ping every this long on a connection with streams open notices a peer that vanished without
/// closing (a pod whose node died) instead of waiting on it forever.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// One HTTP/2 connection's request handle.
pub type Sender = http2::SendRequest<RequestBody>;

/// The HTTP/2 connections to one endpoint.
#[derive(Default)]
pub struct Pool {
    /// Allocated on first use (most endpoints of a large snapshot never see a request here).
    slots: OnceLock<Box<[ArcSwap<Slot>]>>,
}

/// One connection, or the connect under way that every request arriving meanwhile waits on.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::OnceCell<Result<Sender, Arc<ConnectError>>>,
    /// Streams checked out on this connection and not yet finished.
    streams: AtomicUsize,
    /// The peer has sent at least one byte on the connection.
    heard: Arc<AtomicBool>,
}

impl Slot {
    fn is_dead(&self) -> bool {
        match self.conn.get() {
            Some(Ok(sender)) => sender.is_closed(),
            Some(Err(_)) => true,
            None => false,
        }
    }

    fn stream(self: &Arc<Self>, sender: &Sender) -> Stream {
        // Relaxed: a load-balancing count; nothing else is published through it.
        self.streams.fetch_add(1, Ordering::Relaxed);
        Stream {
            sender: sender.clone(),
            guard: StreamGuard(self.clone()),
        }
    }
}

/// A stream's share of a connection: the handle to send on, and the guard that counts the stream
/// until the response has been read to its end.
pub struct Stream {
    pub(super) sender: Sender,
    pub(super) guard: StreamGuard,
}

/// Counts one stream on its connection while alive.
pub struct StreamGuard(Arc<Slot>);

impl StreamGuard {
    /// Whether the peer has written anything on the stream's connection yet (see the module
    /// documentation): once it has, a failed stream may have been processed.
    pub fn heard_from_peer(&self) -> Arc<AtomicBool> {
        self.0.heard.clone()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Relaxed: see `Slot::stream`.
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A stream on an open connection with room, if there is one: the common case, with no
    /// waiting and nothing to connect.
    pub fn ready(&self) -> Option<Stream> {
        self.slots.get()?.iter().find_map(|entry| {
            let slot = entry.load();
            match slot.conn.get() {
                Some(Ok(sender))
                    if !sender.is_closed()
                        && slot.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION =>
                {
                    Some(Slot::stream(&slot, sender))
                }
                _ => None,
            }
        })
    }

    /// A stream on an open connection with room, or on a new connection (connected within
    /// `connect_timeout`). The flag says whether the connection was already open.
    pub async fn checkout(
        &self,
        address: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<(Stream, bool), ConnectError> {
        let slots = self.slots.get_or_init(|| {
            (0..SLOTS)
                .map(|_| ArcSwap::from_pointee(Slot::default()))
                .collect()
        });
        let mut vacant: Option<Arc<Slot>> = None;
        let mut least: Option<(usize, Arc<Slot>, Sender)> = None;
        for entry in slots.iter() {
            let slot = entry.load_full();
            if slot.is_dead() {
                if vacant.is_none() {
                    // Whoever swaps first installs the fresh cell; the others use theirs.
                    let fresh = Arc::new(Slot::default());
                    let previous = entry.compare_and_swap(&slot, fresh.clone());
                    vacant = Some(if Arc::ptr_eq(&previous, &slot) {
                        fresh
                    } else {
                        arc_swap::Guard::into_inner(previous)
                    });
                }
                continue;
            }
            match slot.conn.get() {
                Some(Ok(sender)) => {
                    let streams = slot.streams.load(Ordering::Relaxed);
                    if streams < STREAMS_PER_CONNECTION {
                        return Ok((slot.stream(sender), true));
                    }
                    if least.as_ref().is_none_or(|(fewest, ..)| streams < *fewest) {
                        let sender = sender.clone();
                        least = Some((streams, slot, sender));
                    }
                }
                _ => {
                    if vacant.is_none() {
                        vacant = Some(slot);
                    }
                }
            }
        }
        let slot = match (vacant, least) {
            (Some(slot), _) => slot,
            // Every connection is full: h2 queues the stream until the peer has room.
            (None, Some((_, slot, sender))) => return Ok((slot.stream(&sender), true)),
            (None, None) => unreachable!("SLOTS > 0: a slot is either vacant or open"),
        };
        let connected = slot
            .conn
            .get_or_init(|| async {
                let heard = slot.heard.clone();
                tokio::time::timeout(connect_timeout, connect(address, connect_timeout, heard))
                    .await
                    .unwrap_or(Err(ConnectError::Timeout(connect_timeout)))
                    .map_err(Arc::new)
            })
            .await;
        match connected {
            Ok(sender) => Ok((slot.stream(sender), false)),
            Err(error) => Err(ConnectError::Shared(error.clone())),
        }
    }

    /// Takes no more streams on the open connections (the endpoint is going away): each closes
    /// once its streams in flight have finished, which keep it alive until then.
    pub fn close(&self) {
        if let Some(slots) = self.slots.get() {
            for slot in slots.iter() {
                slot.store(Arc::new(Slot::default()));
            }
        }
    }

    /// Open connections (for `/endpoints` and tests).
    pub fn open(&self) -> usize {
        self.slots.get().map_or(0, |slots| {
            slots
                .iter()
                .filter(|s| matches!(s.load().conn.get(), Some(Ok(sender)) if !sender.is_closed()))
                .count()
        })
    }
}

async fn connect(
    address: SocketAddr,
    timeout: Duration,
    heard: Arc<AtomicBool>,
) -> Result<Sender, ConnectError> {
    let stream = Listening {
        stream: connect_tcp(address, timeout).await?,
        heard,
    };
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        // The framing policy's bound on a response head, as the HTTP/1.1 paths apply it.
        .max_header_list_size(framing::MAX_HEAD as u32)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%address, %error, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// A connection's socket that notes the first byte the peer sends.
struct Listening {
    stream: TcpStream,
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Listening {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && !self.heard.load(Ordering::Relaxed) {
            // Relaxed: read when a stream fails, on this connection's own tasks' side of it.
            self.heard.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Listening {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether a failed stream was never processed by the endpoint, so that sending it elsewhere
/// cannot do its work twice (RFC 9113 §8.7): the endpoint refused it (`REFUSED_STREAM`), or
/// announced a graceful `GOAWAY` whose last stream id is below it.
pub fn unprocessed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<::h2::Error>() {
            let reason = h2.reason();
            return reason == Some(::h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && reason == Some(::h2::Reason::NO_ERROR));
        }
        source = cause.source();
    }
    false
}

/// Turns a request prepared for an HTTP/1.1 hop into its HTTP/2 form: the Host becomes
/// `:authority` (the endpoint's address when the client sent none), and the headers HTTP/2 forbids
/// go (RFC 9113 §8.2.2), except `te: trailers` when the client asked for trailers.
pub(super) fn to_http2(req: &mut Request<RequestBody>, address: SocketAddr, te_trailers: bool) {
    let headers = req.headers_mut();
    let authority = headers
        .remove(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .or_else(|| Authority::try_from(address.to_string()).ok());
    headers.remove(header::TRANSFER_ENCODING);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Either, Full};

    fn request(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<RequestBody> {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Either::Right(Full::default())).unwrap()
    }

    #[test]
    fn host_becomes_the_authority_and_forbidden_headers_go() {
        let address: SocketAddr = "127.0.0.9:50051".parse().unwrap();
        let mut req = request(
            "/pkg.Svc/Call?x=1",
            &[("host", "api.example"), ("transfer-encoding", "chunked")],
        );
        to_http2(&mut req, address, true);
        assert_eq!(req.uri(), "http://api.example/pkg.Svc/Call?x=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("transfer-encoding").is_none());
        assert_eq!(req.headers()["te"], "trailers");

        let mut bare = request("/", &[]);
        to_http2(&mut bare, address, false);
        assert_eq!(bare.uri(), "http://127.0.0.9:50051/");
        assert!(bare.headers().get("te").is_none());
    }
}
