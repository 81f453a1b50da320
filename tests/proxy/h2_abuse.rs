//! A hostile HTTP/2 client, written frame by frame (real clients cannot send what it sends): a
//! malformed request on one stream, the rapid-reset attack, and the CONTINUATION flood. Each is
//! contained to what it harms, while a well-behaved client on another connection is served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;
const PROTOCOL_ERROR: u32 = 1;
const CANCEL: u32 = 8;
const ENHANCE_YOUR_CALM: u32 = 11;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal header field without indexing, with a new name (RFC 7541 §6.2.2); names and
/// values under 127 bytes.
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

/// `GET /` for `shop`, plus `extra` headers, as an HPACK block.
fn get_block(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table 2, 6, 4), then :authority (index 1) literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 4];
    block.extend_from_slice(b"shop");
    for (name, value) in extra {
        literal(&mut block, name, value);
    }
    block
}

/// A frame read back: its type, flags, stream and payload.
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A raw HTTP/2 connection after the preface and an empty SETTINGS.
struct Raw {
    socket: TcpStream,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr) -> Raw {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.unwrap();
        Raw { socket }
    }

    /// Writes `bytes`; false once the proxy has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.socket.write_all(bytes).await.is_ok()
    }

    /// The next frame other than SETTINGS and PING (acknowledged), or `None` at the end of the
    /// connection or after 5 s.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.socket.read_exact(&mut head));
            read.await.ok()?.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).await.ok()?;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &payload)).await;
                }
                SETTINGS | PING => {}
                _ => {
                    return Some(Frame {
                        kind,
                        stream,
                        payload,
                    })
                }
            }
        }
    }

    /// Frames until a GOAWAY (returned with its error code) or the end of the connection (`None`).
    async fn until_goaway(&mut self) -> Option<u32> {
        while let Some(frame) = self.next().await {
            if frame.kind == GOAWAY {
                let code = &frame.payload[4..8];
                return Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            }
        }
        None
    }
}

fn error_code(frame: &Frame) -> u32 {
    let p = &frame.payload;
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// `:status 200` is static table entry 8: how h2 encodes it, as the block's first byte.
fn is_ok_response(frame: &Frame) -> bool {
    frame.kind == HEADERS && frame.payload.first() == Some(&0x88)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_resets_its_stream_only() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let mut raw = Raw::open(proxy.addr).await;
    // Stream 1: a connection-specific header (RFC 9113 §8.2.2); stream 3: `te` other than
    // `trailers`; stream 5: a good request on the same connection.
    let mut bytes = frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block(&[(b"connection", b"close")]),
    );
    bytes.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &get_block(&[(b"te", b"gzip")]),
    ));
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 5, &get_block(&[])));
    assert!(raw.send(&bytes).await);
    let (mut reset, mut answered) = (Vec::new(), false);
    while let Some(frame) = raw.next().await {
        match frame.kind {
            RST_STREAM => reset.push((frame.stream, error_code(&frame))),
            HEADERS if frame.stream == 5 => {
                assert!(is_ok_response(&frame), "stream 5 is answered 200");
                answered = true;
            }
            GOAWAY => panic!("a malformed stream must not end the connection: {reset:?}"),
            _ => {}
        }
        if answered && reset.len() == 2 {
            break;
        }
    }
    reset.sort_unstable();
    assert_eq!(
        reset,
        [(1, 1), (3, 1)],
        "each malformed stream reset with PROTOCOL_ERROR"
    );
    assert!(answered, "the good stream on the same connection is served");
    assert_eq!(app.hits(), 1, "only the good request reaches the endpoint");
}

/// What h2 (0.4) cannot contain to a stream: a header field whose bytes HPACK decoding rejects
/// (an uppercase name, a CR in a value) fails the whole header block, and h2 answers it with a
/// connection-level `GOAWAY(PROTOCOL_ERROR)` (`codec/framed_read.rs`, any `hpack::DecoderError`).
/// The connection ends cleanly and nobody else notices; if h2 learns to reset the stream instead,
/// this test says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_hpack_rejects_end_the_connection_cleanly() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    for (name, value) in [(&b"X-Upper"[..], &b"1"[..]), (b"x-cr", b"a\rb")] {
        let mut raw = Raw::open(proxy.addr).await;
        let block = get_block(&[(name, value)]);
        assert!(
            raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
                .await
        );
        assert_eq!(raw.until_goaway().await, Some(PROTOCOL_ERROR));
        let (status, _, body) = proxy.get("/").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        app.hits(),
        2,
        "neither malformed request reached the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_connection_and_spares_everyone_else() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let mut raw = Raw::open(proxy.addr).await;
    // CVE-2023-44487: open a stream and cancel it at once, thousands of times.
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block(&[]),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let _ = raw.send(&burst).await;
    let code = raw.until_goaway().await;
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "the attacker is told to calm down and closed"
    );
    let (status, _, body) = proxy.get("/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        app.hits() < 1_000,
        "the attack must not reach the endpoint in full: {} requests did",
        app.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_early() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { max_request_head_size: 16KiB }")
        .start()
        .await;
    let mut raw = Raw::open(proxy.addr).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATIONs of 8 KiB.
    assert!(
        raw.send(&frame(HEADERS, END_STREAM, 1, &get_block(&[])))
            .await
    );
    let mut chunk = Vec::new();
    while chunk.len() < 8 * 1024 {
        literal(&mut chunk, b"x-flood", &[b'a'; 100]);
    }
    // 50 frames (400 KiB) fit in the socket buffers: the writes never wait for the proxy.
    let continuation = frame(CONTINUATION, 0, 1, &chunk);
    for _ in 0..50 {
        if !raw.send(&continuation).await {
            break;
        }
    }
    // h2 allows a header block max_request_head_size / 16 KiB frames (at least 5) before it calls
    // it a flood.
    assert_eq!(raw.until_goaway().await, Some(ENHANCE_YOUR_CALM));
    let (status, _, body) = proxy.get("/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.hits(), 1, "the flood never became a request");
}
