//! One request's account, for the access log, its span and tidegate's own-error warning: begun
//! when the request arrives, given its IDs once admitted, filled in by the pipeline (attempts, the
//! endpoint, what steered it), and written when the response has ended or the client has left.
//!
//! With access logs and span export off, it costs a few field copies per request and allocates
//! nothing; the body wrapper [`Logged`] then only passes frames through.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Flags, OwnErrors, Record};
use crate::grpc;
use crate::pick::Steer;
use crate::snapshot::{Endpoint, Role};
use crate::trace::otlp::{Exporter, Span};
use crate::trace::{self, RequestIdConfig, SpanContext, Start};

use super::body::ResponseBody;
use super::error::ErrorKind;

/// What the data plane reports about each request beyond metrics (`access_log:`, `request_id:`,
/// `tracing:`). Fixed for a listener's life.
#[derive(Default)]
pub struct Telemetry {
    pub access_log: Option<Arc<AccessLog>>,
    pub request_id: Option<RequestIdConfig>,
    pub start: Start,
    pub spans: Option<Exporter>,
    pub own_errors: OwnErrors,
}

/// The status logged for a request whose client left before any answer (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

pub(super) struct Exchange<'t> {
    telemetry: &'t Arc<Telemetry>,
    record: Record,
    span: Option<SpanContext>,
    received: Option<Arc<AtomicU64>>,
    answered: bool,
}

impl<'t> Exchange<'t> {
    /// The facts of a request as it arrives.
    pub(super) fn begin<B>(
        req: &Request<B>,
        client: SocketAddr,
        telemetry: &'t Arc<Telemetry>,
    ) -> Self {
        let host = match req.uri().authority() {
            Some(_) => None,
            None => req.headers().get(header::HOST).cloned(),
        };
        Self {
            telemetry,
            record: Record::arriving(
                Instant::now(),
                client,
                req.method().clone(),
                req.uri().clone(),
                host,
                req.version(),
            ),
            span: None,
            received: None,
            answered: false,
        }
    }

    pub(super) fn start(&self) -> Instant {
        self.record.start
    }

    /// An admitted request's ID and trace context, written into `headers` for the upstream hop.
    pub(super) fn stamp(&mut self, headers: &mut HeaderMap) {
        if let Some(config) = &self.telemetry.request_id {
            self.record.request_id = Some(trace::ensure_request_id(headers, &config.header));
        }
        self.span = trace::continue_or_start(headers, self.telemetry.start);
    }

    /// A counter for the request body's bytes, when the access log will want them.
    pub(super) fn body_counter(&mut self) -> Option<Arc<AtomicU64>> {
        self.telemetry.access_log.as_ref()?;
        let counter = self.received.get_or_insert_with(Arc::default);
        Some(counter.clone())
    }

    /// One more send to an endpoint, steered as `steer` says.
    pub(super) fn attempt(&mut self, steer: Steer) {
        self.record.attempts += 1;
        let flags = &mut self.record.flags;
        if self.record.attempts > 1 {
            flags.set(Flags::RETRIED);
        }
        if steer.overridden {
            flags.set(Flags::CANARY_OVERRIDE);
        }
        if steer.pinned {
            flags.set(Flags::STICKY);
        }
        if steer.passed_over {
            flags.set(Flags::EJECTED_AVOIDED);
        }
    }

    /// The endpoint that served the answer, or failed last.
    pub(super) fn ended_at(&mut self, endpoint: Arc<Endpoint>, role: Role) {
        self.record.upstream = Some(endpoint);
        self.record.role = Some(role);
    }

    pub(super) fn flag(&mut self, flag: Flags) {
        self.record.flags.set(flag);
    }

    /// The pipeline's answer, with the client's `x-request-id`; tidegate's own errors are
    /// warned about now, and the access log line and span are written when the body has ended.
    pub(super) fn answer(
        &mut self,
        mut response: Response<ResponseBody>,
    ) -> Response<Logged<ResponseBody>> {
        self.answered = true;
        let telemetry = self.telemetry;
        let record = &mut self.record;
        record.status = response.status().as_u16();
        record.grpc_status = grpc::status(response.headers()).map(grpc::Code::number);
        let own = response
            .headers()
            .get("x-tidegate-error")
            .and_then(|v| ErrorKind::parse(v.as_bytes()));
        if let Some(kind) = own {
            record.flags.set(flag_of(kind));
        }
        if let Some(config) = &telemetry.request_id {
            let id = record.request_id.get_or_insert_with(trace::new_request_id);
            if config.respond {
                response
                    .headers_mut()
                    .insert(config.header.clone(), id.clone());
            }
        }
        if own.is_some() || telemetry.access_log.is_some() {
            record.trace_id = self.span.map(|s| s.trace_id.hex());
        }
        if let Some(kind) = own {
            record.duration = record.start.elapsed();
            telemetry.own_errors.warn(record, kind.as_str());
        }
        let sampled = self.span.is_some_and(|s| s.sampled) && telemetry.spans.is_some();
        let finish = (telemetry.access_log.is_some() || sampled).then(|| {
            Box::new(Finish {
                record: self.take_record(),
                span: self.span.filter(|_| sampled),
                received: self.received.take(),
                telemetry: telemetry.clone(),
                ended: false,
            })
        });
        response.map(|body| Logged { body, finish })
    }

    fn take_record(&mut self) -> Record {
        let start = self.record.start;
        let client = self.record.client;
        let placeholder = Record::arriving(
            start,
            client,
            http::Method::GET,
            http::Uri::default(),
            None,
            http::Version::HTTP_11,
        );
        std::mem::replace(&mut self.record, placeholder)
    }
}

impl Drop for Exchange<'_> {
    /// The client left before an answer: logged with `DC` and nginx's 499.
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let telemetry = self.telemetry;
        let sampled = self.span.is_some_and(|s| s.sampled) && telemetry.spans.is_some();
        if telemetry.access_log.is_none() && !sampled {
            return;
        }
        self.record.status = CLIENT_CLOSED;
        self.record.flags.set(Flags::CLIENT_ABORTED);
        self.record.trace_id = self.span.map(|s| s.trace_id.hex());
        Finish {
            record: self.take_record(),
            span: self.span.filter(|_| sampled),
            received: self.received.take(),
            telemetry: telemetry.clone(),
            ended: false,
        }
        .write();
    }
}

fn flag_of(kind: ErrorKind) -> Flags {
    match kind {
        ErrorKind::NoEndpoints => Flags::NO_ENDPOINTS,
        ErrorKind::Connect | ErrorKind::ConnectTimeout => Flags::CONNECT_FAILURE,
        ErrorKind::Timeout => Flags::UPSTREAM_TIMEOUT,
        ErrorKind::Reset => Flags::UPSTREAM_RESET,
        ErrorKind::Protocol => Flags::UPSTREAM_PROTOCOL,
        ErrorKind::Saturated => Flags::SATURATED,
    }
}

/// What is written when a logged response ends.
struct Finish {
    record: Record,
    span: Option<SpanContext>,
    received: Option<Arc<AtomicU64>>,
    telemetry: Arc<Telemetry>,
    /// The body's last frame went out.
    ended: bool,
}

impl Finish {
    fn write(mut self) {
        let record = &mut self.record;
        record.duration = record.start.elapsed();
        if let Some(received) = &self.received {
            record.bytes_received = received.load(Ordering::Relaxed);
        }
        if let Some(log) = &self.telemetry.access_log {
            log.write(record);
        }
        if let (Some(span), Some(exporter)) = (self.span, &self.telemetry.spans) {
            exporter.offer(span_of(record, span));
        }
    }
}

fn span_of(record: &Record, context: SpanContext) -> Span {
    let end = SystemTime::now();
    let start = end.checked_sub(record.duration).unwrap_or(end);
    let authority = match record.uri.authority() {
        Some(a) => a.host().to_owned(),
        None => record
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
            .unwrap_or_default(),
    };
    let upstream = record.upstream.as_deref();
    Span {
        context,
        start,
        end,
        method: record.method.as_str().to_owned(),
        status: record.status,
        server_address: authority,
        peer_address: record.client.ip().to_string(),
        version: upstream.map(|e| e.version().as_str().to_owned()),
        role: record.role.map(Role::as_str),
    }
}

/// A response body that writes its request's access log line and span once it has ended (or was
/// dropped early: the client left, `DC`). Without either, it only passes frames through.
pub struct Logged<B: Body> {
    body: B,
    finish: Option<Box<Finish>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(finish) = this.finish.as_deref_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        finish.record.bytes_sent += data.len() as u64;
                    }
                    if let Some(trailers) = frame.trailers_ref() {
                        if let Some(code) = grpc::status(trailers) {
                            finish.record.grpc_status = Some(code.number());
                        }
                        finish.ended = true;
                    }
                }
                None => finish.ended = true,
                Some(Err(_)) => {}
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(mut finish) = self.finish.take() {
            if !finish.ended && !self.body.is_end_stream() {
                finish.record.flags.set(Flags::CLIENT_ABORTED);
            }
            finish.write();
        }
    }
}
