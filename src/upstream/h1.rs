//! A lean HTTP/1.1 exchange for requests whose body is already in memory (none, or a small one
//! kept for replay), driven in the request's own task: one write of the head (and body), reads
//! into the connection's buffer, `httparse` for the response head, and a body that streams the
//! rest straight from the socket. No connection task, no channels, and one timer per connection
//! rather than one per request (see [`crate::deadline`]).
//!
//! Requests that stream a body, and upgrades, go through hyper's client instead (see `upstream`).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::deadline::Deadline;

use super::chunked::{Chunked, Decoded};
use super::framing::{self, MAX_HEAD, MAX_HEADERS_LIMIT};
use super::limit::Permit;
/// Read space kept available in a connection's buffer.
const READ_SPACE: usize = 8 * 1024;

/// Why an exchange failed, and whether the request may have reached the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection broke (or closed) before a complete response head.
    #[error("{source}")]
    Io {
        source: io::Error,
        /// Not one byte of a response arrived: on a reused connection this is the peer having
        /// closed it while idle.
        nothing_received: bool,
    },
    /// The endpoint sent something that is not a valid HTTP/1 response.
    #[error("{0}")]
    Invalid(&'static str),
    /// No complete response head by the exchange's deadline.
    #[error("no response head in time")]
    Timeout,
}

/// An idle or busy HTTP/1.1 connection: the socket and what was read from it but not consumed.
/// Boxed, so that the connection moves as one pointer through checkout, exchange and the
/// response body (the box is made once per connection, not per request).
pub struct Connection(Box<Io>);

/// A connection's state.
pub struct Io {
    stream: TcpStream,
    /// Data read and not yet consumed; its spare capacity is the read space (never zero-filled).
    buf: BytesMut,
    /// Scratch space for encoding request heads, kept across requests.
    head: Vec<u8>,
    /// Scratch space for the response head's header positions.
    spans: Vec<Span>,
    /// For the response head of the exchange under way.
    deadline: Deadline,
    /// Counts the connection against its endpoint's limit until it closes.
    _permit: Permit,
}

impl std::ops::Deref for Connection {
    type Target = Io;

    fn deref(&self) -> &Io {
        &self.0
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Io {
        &mut self.0
    }
}

impl Connection {
    pub(super) fn new(stream: TcpStream, permit: Permit) -> Self {
        Self(Box::new(Io {
            stream,
            buf: BytesMut::new(),
            head: Vec::new(),
            spans: Vec::new(),
            deadline: Deadline::default(),
            _permit: permit,
        }))
    }

    /// Whether an idle connection can take a request: the peer has not closed it (and sent
    /// nothing unasked). Costs no syscall unless the socket has become readable since.
    pub(super) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Io {
    /// Reads more into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SPACE / 2 {
            // Back at the front of the same allocation once no response head still shares it (the
            // usual case: the previous one has been sent on), so a busy connection keeps reading
            // into the same few cache lines; a fresh allocation otherwise.
            self.buf.reserve(READ_SPACE);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Writes the encoded head (and body) from `*written` on, or fails at the deadline.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        written: &mut usize,
    ) -> Poll<Result<(), ExchangeError>> {
        let unsent = |source| ExchangeError::Io {
            source,
            nothing_received: true,
        };
        while *written < self.head.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.head[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(unsent(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(unsent(error))),
                Poll::Pending => {
                    ready!(self.deadline.poll_passed(cx));
                    return Poll::Ready(Err(ExchangeError::Timeout));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more into the buffer (`Ok(0)` is the end of the stream), or fails at the deadline.
    fn poll_fill_by_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<io::Result<usize>, ExchangeError>> {
        match self.poll_fill(cx) {
            Poll::Ready(read) => Poll::Ready(Ok(read)),
            Poll::Pending => {
                ready!(self.deadline.poll_passed(cx));
                Poll::Ready(Err(ExchangeError::Timeout))
            }
        }
    }

    /// Takes `n` consumed bytes off the front of the buffer.
    fn take(&mut self, n: usize) -> Bytes {
        self.buf.split_to(n).freeze()
    }

    /// Drops `n` bytes off the front of the buffer.
    fn skip(&mut self, n: usize) {
        let _ = self.buf.split_to(n);
    }
}

/// Headers written with the request head that are not in its map: `replace` ones stand in for any
/// of the same name in the map, `append` ones go alongside. (A proxy adds a few headers to every
/// request; writing them here saves inserting them into the map first.)
#[derive(Clone, Copy, Default)]
pub struct Added<'a> {
    pub replace: &'a [(HeaderName, HeaderValue)],
    pub append: &'a [(HeaderName, HeaderValue)],
}

/// One lean exchange under way: writing the request, then reading the response head. A named
/// future (not an `async fn`) so that the transport service can name its future without boxing.
pub struct Exchange {
    /// Taken into the response's body when the head has arrived.
    conn: Option<Connection>,
    /// Bytes of the encoded request written so far.
    written: usize,
    sent: bool,
    /// Some byte of a response has arrived.
    received: bool,
    /// Bytes arrived since the buffer was last parsed (a wake-up with nothing new costs no
    /// parse).
    unparsed: bool,
    head_request: bool,
    max_headers: usize,
}

impl Exchange {
    /// Starts sending `req` (whose body is `body`, already in memory) with `added` headers on
    /// `conn`; the response head must arrive by `deadline` and carry at most `max_headers` header
    /// lines. The request is encoded here, so the exchange does not borrow it.
    pub fn start<B>(
        mut conn: Connection,
        req: &Request<B>,
        added: Added<'_>,
        body: &[u8],
        deadline: Instant,
        max_headers: usize,
    ) -> Self {
        conn.deadline.set(deadline);
        encode_head(&mut conn.head, req, added, body);
        Self {
            conn: Some(conn),
            written: 0,
            sent: false,
            received: false,
            unparsed: false,
            head_request: req.method() == Method::HEAD,
            max_headers,
        }
    }
}

impl Future for Exchange {
    /// The response, whose body streams from the connection it carries.
    type Output = Result<Response<ResponseBody>, ExchangeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let conn = this
            .conn
            .as_mut()
            .expect("an exchange is not polled after it completed");
        if !this.sent {
            ready!(conn.poll_send(cx, &mut this.written))?;
            this.sent = true;
        }
        // Parse only what is new: a wake-up that brought nothing reads first.
        loop {
            if std::mem::take(&mut this.unparsed) {
                let io: &mut Io = conn;
                let buf = &io.buf[..];
                let parsed = parse_head(buf, this.head_request, &mut io.spans, this.max_headers)?;
                match parsed {
                    // This path never asks for an upgrade.
                    Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                        return Poll::Ready(Err(ExchangeError::Invalid("unsolicited 101 response")))
                    }
                    Some(head) if head.status.is_informational() => {
                        conn.skip(head.len);
                        this.unparsed = !conn.buf.is_empty();
                        continue;
                    }
                    Some(head) => {
                        let conn = this.conn.take().expect("checked above");
                        return Poll::Ready(respond(conn, head));
                    }
                    None if conn.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(ExchangeError::Invalid("response head too large")))
                    }
                    None => {}
                }
            }
            let nothing_received = !this.received;
            let n =
                ready!(conn.poll_fill_by_deadline(cx))?.map_err(|source| ExchangeError::Io {
                    source,
                    nothing_received,
                })?;
            if n == 0 {
                return Poll::Ready(Err(ExchangeError::Io {
                    source: io::ErrorKind::UnexpectedEof.into(),
                    nothing_received,
                }));
            }
            this.received = true;
            this.unparsed = true;
        }
    }
}

/// The response for a parsed `head` at the front of `conn`'s buffer.
fn respond(mut conn: Connection, head: Head) -> Result<Response<ResponseBody>, ExchangeError> {
    let bytes = conn.take(head.len);
    let mut headers = header_map(&conn.spans, &bytes)?;
    if let Some(length) = head.folded_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let mut response = Response::new(ResponseBody {
        conn: Some(conn),
        framing: head.framing,
        reusable: head.keep_alive,
        hop_by_hop_left: head.hop_by_hop_left,
        trailers: None,
    });
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = headers;
    Ok(response)
}

/// `METHOD target HTTP/1.1`, the headers as they are (hop-by-hop ones already removed) with
/// `added`, `Host` if the request has none, then the body.
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, added: Added<'_>, body: &[u8]) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = req.headers();
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = req.uri().authority() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(authority.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let replaced = |name: &HeaderName| added.replace.iter().any(|(n, _)| n == name);
    let lines = headers.iter().filter(|(name, _)| !replaced(name));
    for (name, value) in lines.chain(
        added
            .replace
            .iter()
            .chain(added.append)
            .map(|(n, v)| (n, v)),
    ) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunked),
    /// Until the endpoint closes the connection.
    Close,
}

/// A parsed response head.
struct Head {
    len: usize,
    status: StatusCode,
    version: Version,
    framing: Framing,
    keep_alive: bool,
    /// Some hop-by-hop header other than this hop's framing and connection ones is still there.
    hop_by_hop_left: bool,
    /// Content-Length came as a list or repeated: the one value to send on instead.
    folded_length: Option<u64>,
}

/// Where a kept header is within the head: name start, name end, value start, value end. Its
/// value then shares the head's bytes instead of being copied into an allocation of its own.
type Span = [u16; 4];

/// Room for the headers the proxy adds to a response on its way to the client (`Via`, the request
/// ID, the version, a sticky cookie), so adding them does not grow the map's entry vector (a
/// reallocation and a copy of every entry, per response).
const ADDED_RESPONSE_HEADERS: usize = 4;

/// The headers at `spans`, their values sharing `head`'s bytes.
fn header_map(spans: &[Span], head: &Bytes) -> Result<HeaderMap, ExchangeError> {
    let mut headers = HeaderMap::with_capacity(spans.len() + ADDED_RESPONSE_HEADERS);
    for [ns, ne, vs, ve] in spans {
        let (ns, ne, vs, ve) = (*ns as usize, *ne as usize, *vs as usize, *ve as usize);
        let name = header_name(&head[ns..ne])?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A response header's name (token characters, as httparse accepts). The names most responses
/// carry are recognised by length and first letter and confirmed a word at a time in any case
/// ([`token_is`]), which skips `HeaderName::from_bytes`'s general lower-casing parse; anything
/// else takes it.
fn header_name(name: &[u8]) -> Result<HeaderName, ExchangeError> {
    let likely: Option<(HeaderName, &[u8])> = match (name.len(), name.first().map(|b| b | 0x20)) {
        (4, Some(b'd')) => Some((header::DATE, b"date")),
        (4, Some(b'e')) => Some((header::ETAG, b"etag")),
        (4, Some(b'v')) => Some((header::VARY, b"vary")),
        (6, Some(b's')) => Some((header::SERVER, b"server")),
        (8, Some(b'l')) => Some((header::LOCATION, b"location")),
        (10, Some(b's')) => Some((header::SET_COOKIE, b"set-cookie")),
        (12, Some(b'c')) => Some((header::CONTENT_TYPE, b"content-type")),
        (13, Some(b'c')) => Some((header::CACHE_CONTROL, b"cache-control")),
        (13, Some(b'l')) => Some((header::LAST_MODIFIED, b"last-modified")),
        (14, Some(b'c')) => Some((header::CONTENT_LENGTH, b"content-length")),
        (16, Some(b'c')) => Some((header::CONTENT_ENCODING, b"content-encoding")),
        _ => None,
    };
    match likely {
        Some((known, lower)) if token_is(name, lower) => Ok(known),
        _ => {
            HeaderName::from_bytes(name).map_err(|_| ExchangeError::Invalid("invalid header name"))
        }
    }
}

/// Parses a complete response head from `buf`, or `None` if more bytes are needed. The headers to
/// pass on are left in `spans` (a buffer the connection keeps, so a response neither zeroes nor
/// moves a fixed-size table).
fn parse_head(
    buf: &[u8],
    head_request: bool,
    spans: &mut Vec<Span>,
    max_headers: usize,
) -> Result<Option<Head>, ExchangeError> {
    // Uninitialised slots: initialising a hundred of them per response costs more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let mut parsed = httparse::Response::new(&mut []);
    let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots[..max_headers.min(MAX_HEADERS_LIMIT)],
    );
    let len = match parsing {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => {
            return Err(ExchangeError::Invalid("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many response headers"))
        }
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let code = parsed.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("invalid status code"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = scan(parsed.headers, buf, spans)?;
    if fields.coded && fields.length.is_some() {
        return Err(ExchangeError::Invalid(
            "content-length and transfer-encoding together",
        ));
    }
    if fields.coded && !framing::coding_allowed(version) {
        return Err(ExchangeError::Invalid(
            "transfer-encoding on an HTTP/1.0 response",
        ));
    }
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodyless, fields.coded, fields.chunked, fields.length) {
        (true, ..) => Framing::Empty,
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); a coding other than a final
        // `chunked` runs until close.
        (_, true, true, _) => Framing::Chunked(Chunked::default()),
        (_, true, false, _) => Framing::Close,
        (_, false, _, Some(0)) => Framing::Empty,
        (_, false, _, Some(n)) => Framing::Length(n),
        (_, false, _, None) => Framing::Close,
    };
    let keep_alive = !fields.close
        && framing != Framing::Close
        && (version == Version::HTTP_11 || fields.keep_alive_token);
    Ok(Some(Head {
        len,
        status,
        version,
        framing,
        keep_alive,
        hop_by_hop_left: fields.hop_by_hop_left,
        folded_length: fields.length.filter(|_| fields.folded_length),
    }))
}

/// What a response head's headers say about this hop.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    /// A Transfer-Encoding is present; `chunked` when its last coding is chunked.
    coded: bool,
    chunked: bool,
    close: bool,
    keep_alive_token: bool,
    hop_by_hop_left: bool,
    /// Content-Length came as a list or repeated.
    folded_length: bool,
}

/// Reads the headers this hop acts on and leaves the positions of those to pass on in `spans`.
#[inline]
fn scan(
    headers: &[httparse::Header<'_>],
    buf: &[u8],
    spans: &mut Vec<Span>,
) -> Result<Fields, ExchangeError> {
    spans.clear();
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    let mut f = Fields::default();
    for h in headers {
        let name = h.name.as_bytes();
        // The headers this hop cares about are few and known: one look at the name's shape picks
        // at most one candidate, instead of comparing every name with all of them.
        match Special::of(name) {
            Some(Special::ContentLength) => {
                let first = f.length.is_none();
                f.length = Some(
                    framing::content_length(h.value, f.length)
                        .ok_or(ExchangeError::Invalid("invalid content-length"))?,
                );
                // A list or a repeat is sent on as one plain value.
                if !first || h.value.contains(&b',') {
                    f.folded_length = true;
                    if !first {
                        continue;
                    }
                }
            }
            // This hop's framing and connection handling end here.
            Some(Special::TransferEncoding) => {
                f.coded = true;
                f.chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
                continue;
            }
            Some(Special::KeepAlive) => continue,
            Some(Special::Connection) => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
                if only_close_or_keep_alive(h.value) {
                    continue;
                }
                // It names other headers: the general hop-by-hop pass removes them and it.
                f.hop_by_hop_left = true;
            }
            Some(Special::OtherHopByHop) => f.hop_by_hop_left = true,
            None => {}
        }
        let (ns, vs) = (offset(name), offset(h.value));
        // A head is at most MAX_HEAD (< 64 KiB) long, so every offset fits.
        let at = [ns, ns + name.len(), vs, vs + h.value.len()].map(|o| o as u16);
        spans.push(at);
    }
    if f.folded_length {
        // Drop the kept Content-Length line: the folded value replaces it.
        spans.retain(|[ns, ne, ..]| {
            Special::of(&buf[*ns as usize..*ne as usize]) != Some(Special::ContentLength)
        });
    }
    Ok(f)
}

/// `Connection: keep-alive` (or `close`) names no other hop-by-hop header, so it can be dropped
/// right here instead of being looked through again.
fn only_close_or_keep_alive(value: &[u8]) -> bool {
    value.split(|b| *b == b',').all(|t| {
        let t = t.trim_ascii();
        t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Response headers the exchange itself looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    /// `TE`, `Upgrade`, `Proxy-*`: hop-by-hop, left for the general pass. (`Trailer` is
    /// end-to-end, RFC 9110 §6.6.2: it names the trailer fields the client may get.)
    OtherHopByHop,
}

impl Special {
    /// `name` is a header name as httparse accepts it (token characters only).
    fn of(name: &[u8]) -> Option<Special> {
        let is = |known: &[u8]| token_is(name, known);
        match (name.len(), name.first().map(|b| b | 0x20)) {
            (14, Some(b'c')) if is(b"content-length") => Some(Special::ContentLength),
            (17, Some(b't')) if is(b"transfer-encoding") => Some(Special::TransferEncoding),
            (10, Some(b'c')) if is(b"connection") => Some(Special::Connection),
            (10, Some(b'k')) if is(b"keep-alive") => Some(Special::KeepAlive),
            (2, Some(b't')) if is(b"te") => Some(Special::OtherHopByHop),
            (7, Some(b'u')) if is(b"upgrade") => Some(Special::OtherHopByHop),
            (7.., Some(b'p')) if token_is(&name[..6], b"proxy-") => Some(Special::OtherHopByHop),
            _ => None,
        }
    }
}

/// Whether `token` (token characters, RFC 9110 §5.6.2) is `lower` (lowercase letters and `-`)
/// in any case, eight bytes at a time: every response header name goes through here. Setting bit
/// 0x20 lowercases an uppercase letter, and turns no other token character into a lowercase letter
/// or `-`, so the comparison is exact.
fn token_is(token: &[u8], lower: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let n = token.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return token.iter().zip(lower).all(|(t, l)| t | 0x20 == *l);
    }
    let word = |bytes: &[u8], at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    // Words at 0, 8, ... and a last one ending at `n` (overlapping the one before it).
    let mut at = 0;
    loop {
        if word(token, at) | LOWER != word(lower, at) {
            return false;
        }
        if at + 8 == n {
            return true;
        }
        at = (at + 8).min(n - 8);
    }
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// A response body read from its connection as the client takes it.
pub struct ResponseBody {
    conn: Option<Connection>,
    framing: Framing,
    reusable: bool,
    hop_by_hop_left: bool,
    /// Trailer fields of a chunked body, gathered until its end (boxed: rare).
    trailers: Option<Box<HeaderMap>>,
}

impl ResponseBody {
    /// Whether the response's headers are free of hop-by-hop ones already (the usual case), so
    /// the proxy need not look through them again.
    pub fn hop_by_hop_removed(&self) -> bool {
        !self.hop_by_hop_left
    }

    /// After the last frame: the connection, if it may carry another request.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        if self.is_end_stream() && self.reusable {
            self.conn.take()
        } else {
            None
        }
    }

    /// Whether the whole body (trailers included) has been read.
    pub fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && matches!(
                self.framing,
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunked::DONE)
            )
    }

    /// Exact length when known.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Empty => http_body::SizeHint::with_exact(0),
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }

    /// The next piece of the body, then its trailers if it has any; `None` at its end.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        *remaining -= n as u64;
                        return Poll::Ready(Some(Ok(Frame::data(conn.take(n)))));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let all = conn.buf.len();
                        return Poll::Ready(Some(Ok(Frame::data(conn.take(all)))));
                    }
                }
                Framing::Chunked(state) => match state.decode(&conn.buf[..]) {
                    Decoded::Data { skip, len } => {
                        conn.skip(skip);
                        return Poll::Ready(Some(Ok(Frame::data(conn.take(len)))));
                    }
                    Decoded::Skip(n) => {
                        conn.skip(n);
                        continue;
                    }
                    Decoded::Trailer(n) => {
                        let field = trailer_field(&conn.buf[..n]);
                        conn.skip(n + 2);
                        match field {
                            Some((name, value)) => {
                                self.trailers.get_or_insert_default().append(name, value);
                                continue;
                            }
                            None => {
                                return Poll::Ready(Some(Err(self.broken("invalid trailer field"))))
                            }
                        }
                    }
                    Decoded::Done(n) => {
                        conn.skip(n);
                        return match self.trailers.take() {
                            Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(*trailers)))),
                            None => Poll::Ready(None),
                        };
                    }
                    Decoded::NeedMore => {}
                    Decoded::Invalid(why) => return Poll::Ready(Some(Err(self.broken(why)))),
                },
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => {}
                Err(error) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    /// The body broke its framing: the connection is closed, never reused.
    fn broken(&mut self, why: &'static str) -> io::Error {
        self.conn = None;
        io::Error::new(io::ErrorKind::InvalidData, why)
    }
}

/// One `name: value` trailer line (RFC 9110 §6.5), or `None` if it is not a valid field.
fn trailer_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// What an endpoint's bytes amount to, read as the lean path reads them: the response head, then
/// the body its framing delimits (to the end of `bytes`), then any trailers. For the fuzzers and
/// their regression tests: whatever the bytes, this returns, never panics.
#[cfg(any(test, fuzzing))]
pub(crate) fn read_response(
    bytes: &[u8],
    method: &Method,
    max_headers: usize,
) -> Result<(Response<Vec<u8>>, Option<HeaderMap>), ExchangeError> {
    let mut spans = Vec::new();
    let mut rest = bytes;
    let head = loop {
        match parse_head(rest, method == Method::HEAD, &mut spans, max_headers)? {
            Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Err(ExchangeError::Invalid("unsolicited 101 response"))
            }
            Some(head) if head.status.is_informational() => rest = &rest[head.len..],
            Some(head) => break head,
            None => return Err(ExchangeError::Invalid("incomplete response head")),
        }
    };
    let head_bytes = Bytes::copy_from_slice(&rest[..head.len]);
    let mut headers = header_map(&spans, &head_bytes)?;
    if let Some(length) = head.folded_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let mut body = Vec::new();
    let mut trailers: Option<HeaderMap> = None;
    let mut rest = &rest[head.len..];
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
            body.extend_from_slice(&rest[..n]);
        }
        Framing::Close => body.extend_from_slice(rest),
        Framing::Chunked(mut state) => loop {
            match state.decode(rest) {
                Decoded::Data { skip, len } => {
                    body.extend_from_slice(&rest[skip..skip + len]);
                    rest = &rest[skip + len..];
                }
                Decoded::Skip(n) => rest = &rest[n..],
                Decoded::Trailer(n) => {
                    let (name, value) = trailer_field(&rest[..n])
                        .ok_or(ExchangeError::Invalid("invalid trailer field"))?;
                    trailers.get_or_insert_default().append(name, value);
                    rest = &rest[n + 2..];
                }
                Decoded::Done(_) | Decoded::NeedMore => break,
                Decoded::Invalid(why) => return Err(ExchangeError::Invalid(why)),
            }
        },
    }
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = headers;
    Ok((response, trailers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_compare_as_case_insensitive_tokens() {
        const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~0123456789\
            ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let known: [&[u8]; 7] = [
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"keep-alive",
            b"te",
            b"upgrade",
            b"proxy-",
        ];
        // Every one-character change of every name, in every case, agrees with the byte-wise
        // comparison it stands for.
        for name in known {
            for at in 0..name.len() {
                for &c in TCHAR {
                    let mut token = name.to_vec();
                    token[at] = c;
                    let upper = token.to_ascii_uppercase();
                    for token in [token, upper] {
                        assert_eq!(
                            token_is(&token, name),
                            token.eq_ignore_ascii_case(name),
                            "{:?} vs {:?}",
                            String::from_utf8_lossy(&token),
                            String::from_utf8_lossy(name)
                        );
                    }
                }
            }
            assert!(!token_is(&name[1..], name), "shorter");
        }
        assert_eq!(Special::of(b"Content-Length"), Some(Special::ContentLength));
        assert_eq!(
            Special::of(b"TRANSFER-ENCODING"),
            Some(Special::TransferEncoding)
        );
        assert_eq!(
            Special::of(b"Proxy-Authenticate"),
            Some(Special::OtherHopByHop)
        );
        assert_eq!(Special::of(b"Content-Type"), None);
        assert_eq!(Special::of(b"Keep-Alive"), Some(Special::KeepAlive));
    }

    fn head(raw: &str, method: Method) -> Head {
        parse_head(raw.as_bytes(), method == Method::HEAD, &mut Vec::new(), 100)
            .unwrap()
            .unwrap()
    }

    /// The head and the headers it passes on.
    fn head_and_headers(raw: &str) -> (Head, HeaderMap) {
        let mut spans = Vec::new();
        let h = parse_head(raw.as_bytes(), false, &mut spans, 100)
            .unwrap()
            .unwrap();
        let bytes = Bytes::copy_from_slice(&raw.as_bytes()[..h.len]);
        let headers = header_map(&spans, &bytes).unwrap();
        (h, headers)
    }

    #[test]
    fn header_names_resolve_as_the_general_parse_would() {
        let names = [
            "Date",
            "date",
            "ETag",
            "Vary",
            "Server",
            "SERVER",
            "sErVeR",
            "Location",
            "Set-Cookie",
            "Content-Type",
            "Cache-Control",
            "Content-Range",
            "Last-Modified",
            "Content-Length",
            "Content-Encoding",
            "Content-Language",
            "dare",
            "Serves",
            "X-Date",
            "x-pod",
            "Sec-Fetch",
        ];
        for name in names {
            assert_eq!(
                header_name(name.as_bytes()).unwrap(),
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "{name}"
            );
        }
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }

    #[test]
    fn encodes_the_request_line_headers_and_a_kept_body() {
        let req = Request::put("http://ignored/a?b=1")
            .header("host", "kubia")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&mut out, &req, Added::default(), b"hi");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /a?b=1 HTTP/1.1\r\nhost: kubia\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn adds_host_from_the_uri_when_the_request_has_none() {
        let req = Request::get("http://kubia:8080/").body(()).unwrap();
        let mut out = Vec::new();
        encode_head(&mut out, &req, Added::default(), b"");
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: kubia:8080\r\n\r\n");
    }

    #[test]
    fn added_headers_replace_or_join_the_requests_own() {
        let req = Request::get("/")
            .header("host", "kubia")
            .header("x-forwarded-proto", "spoofed")
            .header("via", "1.0 edge")
            .body(())
            .unwrap();
        let replace = [(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        )];
        let append = [(header::VIA, HeaderValue::from_static("1.1 tidegate"))];
        let mut out = Vec::new();
        let added = Added {
            replace: &replace,
            append: &append,
        };
        encode_head(&mut out, &req, added, b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: kubia\r\nvia: 1.0 edge\r\nx-forwarded-proto: http\r\nvia: 1.1 tidegate\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\r\n";
        let cases = [
            ("content-length: 5\r\n", Method::GET, Framing::Length(5)),
            ("content-length: 0\r\n", Method::GET, Framing::Empty),
            ("content-length: 5\r\n", Method::HEAD, Framing::Empty),
            (
                "transfer-encoding: chunked\r\n",
                Method::GET,
                Framing::Chunked(Chunked::default()),
            ),
            ("transfer-encoding: gzip\r\n", Method::GET, Framing::Close),
            ("", Method::GET, Framing::Close),
        ];
        for (headers, method, framing) in cases {
            let h = head(&format!("{ok}{headers}\r\n"), method);
            assert_eq!(h.framing, framing, "{headers:?}");
            assert_eq!(h.keep_alive, framing != Framing::Close, "{headers:?}");
        }
        let no_content = head(
            "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            Method::GET,
        );
        assert_eq!(no_content.framing, Framing::Empty);
    }

    #[test]
    fn keep_alive_needs_http_1_1_or_the_token_and_no_close() {
        let h = |raw: &str| head(raw, Method::GET).keep_alive;
        assert!(h("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(!h(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(!h("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(h(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
        ));
    }

    #[test]
    fn headers_keep_their_values_and_this_hops_framing_stays_here() {
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                   Transfer-Encoding: chunked\r\nX-Pod: kubia-1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n";
        let (h, headers) = head_and_headers(raw);
        assert_eq!(headers["server"], "nginx");
        assert_eq!(headers["x-pod"], "kubia-1");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        for gone in ["connection", "keep-alive", "transfer-encoding"] {
            assert!(!headers.contains_key(gone), "{gone} is this hop's");
        }
        assert!(!h.hop_by_hop_left, "nothing hop-by-hop is left");
        for other in ["Upgrade: h2c", "TE: trailers", "Proxy-Authenticate: Basic"] {
            let raw = format!("HTTP/1.1 200 OK\r\n{other}\r\ncontent-length: 0\r\n\r\n");
            assert!(
                head(&raw, Method::GET).hop_by_hop_left,
                "{other} needs the general pass"
            );
        }
        let named = "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\ncontent-length: 0\r\n\r\n";
        let (h, headers) = head_and_headers(named);
        assert!(
            headers.contains_key("connection") && h.hop_by_hop_left,
            "a Connection naming other headers is left for the hop-by-hop pass"
        );
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused() {
        assert!(parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-le",
            false,
            &mut Vec::new(),
            100
        )
        .unwrap()
        .is_none());
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_head(bad.as_bytes(), false, &mut Vec::new(), 100),
                    Err(ExchangeError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
