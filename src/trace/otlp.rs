//! Span export over OTLP/HTTP with protobuf bodies (`POST /v1/traces`), batched off the request
//! path: a request's end offers its span to a bounded queue (full: dropped and counted), and one
//! task sends a batch every second or every [`BATCH`] spans. One server span per request, with the
//! attributes of OpenTelemetry's HTTP semantic conventions.
//!
//! The protobuf is written by hand (a few dozen lines for the handful of message types of
//! `opentelemetry/proto/collector/trace/v1`), which spares the binary a protobuf code generator;
//! the tests decode it with the `opentelemetry-proto` types.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounterVec;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::SpanContext;
use crate::shutdown::Shutdown;

/// `tracing.otlp_endpoint` and what to call the service.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// `http://collector:4318/v1/traces` (plain HTTP; a hostname is resolved at each send).
    pub endpoint: Uri,
    pub service_name: String,
}

/// Spans waiting for the exporter at most.
const QUEUE: usize = 8192;
/// Spans per request to the collector at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch.
const INTERVAL: Duration = Duration::from_secs(1);
/// A collector that does not answer within this is given up on for the batch.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One finished request, as a span.
#[derive(Clone, Debug)]
pub struct Span {
    pub context: SpanContext,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: String,
    pub status: u16,
    /// The request's authority without the port.
    pub server_address: String,
    pub peer_address: String,
    /// The version and role that served, if any endpoint did.
    pub version: Option<String>,
    pub role: Option<&'static str>,
}

/// Where finished spans go. Cloned into the data plane; sending never waits.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    results: IntCounterVec,
}

impl Exporter {
    /// Starts the export task; it sends what is queued when `shutdown` fires, then stops.
    pub fn start(config: OtlpConfig, results: IntCounterVec, shutdown: Shutdown) -> Self {
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export(config, spans, results.clone(), shutdown));
        Self { queue, results }
    }

    /// Queues `span`, or drops it (counted) when the queue is full.
    pub fn offer(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.results.with_label_values(&["dropped"]).inc();
        }
    }
}

async fn export(
    config: OtlpConfig,
    mut spans: mpsc::Receiver<Span>,
    results: IntCounterVec,
    mut shutdown: Shutdown,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        let deadline = tokio::time::sleep(INTERVAL);
        tokio::pin!(deadline);
        while batch.len() < BATCH {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => { stopping = true; break; }
                },
                () = &mut deadline => break,
                () = shutdown.wait(), if !stopping => {
                    stopping = true;
                    while let Ok(span) = spans.try_recv() {
                        batch.push(span);
                    }
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let body = encode(&config.service_name, &batch);
            let result = match tokio::time::timeout(SEND_TIMEOUT, send(&config.endpoint, body))
                .await
            {
                Ok(Ok(())) => "success",
                Ok(Err(error)) => {
                    tracing::warn!(endpoint = %config.endpoint, %error, spans = batch.len(), "span export failed");
                    "error"
                }
                Err(_) => {
                    tracing::warn!(endpoint = %config.endpoint, spans = batch.len(), "span export timed out");
                    "error"
                }
            };
            results
                .with_label_values(&[result])
                .inc_by(batch.len() as u64);
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Why a batch did not reach the collector.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("cannot resolve or connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the collector answered {0}")]
    Status(http::StatusCode),
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
}

async fn send(endpoint: &Uri, body: Vec<u8>) -> Result<(), SendError> {
    let host = endpoint.host().unwrap_or("127.0.0.1");
    let port = endpoint.port_u16().unwrap_or(80);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(SendError::Connect)?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(SendError::Connect(last))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let path = endpoint
        .path_and_query()
        .map_or("/v1/traces", |p| p.as_str());
    let request = Request::post(path)
        .header(
            header::HOST,
            endpoint.authority().map_or(host, |a| a.as_str()),
        )
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(header::USER_AGENT, "tidegate")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(SendError::Status(response.status()))
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf, by hand: varints, length-delimited fields, fixed64.

/// Wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn message(out: &mut Vec<u8>, field: u64, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    bytes_field(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }` with a string (1) or int (3) value.
fn attribute(out: &mut Vec<u8>, field: u64, key: &str, value: Attr<'_>) {
    message(out, field, |kv| {
        bytes_field(kv, 1, key.as_bytes());
        message(kv, 2, |any| match value {
            Attr::Text(s) => bytes_field(any, 1, s.as_bytes()),
            Attr::Int(n) => {
                tag(any, 3, VARINT);
                varint(any, n);
            }
        });
    });
}

enum Attr<'a> {
    Text(&'a str),
    Int(u64),
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `ExportTraceServiceRequest` for `spans`: one resource (the service), one scope (tidegate).
pub fn encode(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * spans.len() + 128);
    // resource_spans = 1
    message(&mut out, 1, |resource_spans| {
        // resource = 1 { attributes = 1 }
        message(resource_spans, 1, |resource| {
            attribute(resource, 1, "service.name", Attr::Text(service_name));
        });
        // scope_spans = 2 { scope = 1 { name = 1, version = 2 }, spans = 2 }
        message(resource_spans, 2, |scope_spans| {
            message(scope_spans, 1, |scope| {
                bytes_field(scope, 1, b"tidegate");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for span in spans {
                message(scope_spans, 2, |s| encode_span(s, span));
            }
        });
    });
    out
}

/// `Span`: ids (1, 2, 4), name (5), kind SERVER (6), times (7, 8), attributes (9), status (15),
/// flags (16, fixed32: the W3C trace flags in its low byte).
fn encode_span(out: &mut Vec<u8>, span: &Span) {
    bytes_field(out, 1, &span.context.trace_id.0);
    bytes_field(out, 2, &span.context.span_id.0);
    if let Some(parent) = &span.context.parent {
        bytes_field(out, 4, &parent.0);
    }
    bytes_field(out, 5, span.method.as_bytes());
    tag(out, 6, VARINT);
    varint(out, 2);
    tag(out, 7, FIXED64);
    out.extend_from_slice(&nanos(span.start).to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&nanos(span.end).to_le_bytes());
    attribute(out, 9, "http.request.method", Attr::Text(&span.method));
    attribute(
        out,
        9,
        "http.response.status_code",
        Attr::Int(u64::from(span.status)),
    );
    attribute(out, 9, "server.address", Attr::Text(&span.server_address));
    attribute(
        out,
        9,
        "network.peer.address",
        Attr::Text(&span.peer_address),
    );
    if let Some(version) = &span.version {
        attribute(out, 9, "tidegate.version", Attr::Text(version));
    }
    if let Some(role) = span.role {
        attribute(out, 9, "tidegate.role", Attr::Text(role));
    }
    // A server span's status is an error for 5xx only (4xx are the client's).
    if span.status >= 500 {
        message(out, 15, |status| {
            tag(status, 3, VARINT);
            varint(status, 2);
        });
    }
    tag(out, 16, FIXED32);
    out.extend_from_slice(&u32::from(span.context.sampled).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        let mut out = Vec::new();
        varint(&mut out, 150);
        assert_eq!(out, [0x96, 0x01]);
        out.clear();
        varint(&mut out, 1);
        assert_eq!(out, [0x01]);
    }
}
