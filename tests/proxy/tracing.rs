//! W3C Trace Context through the proxy, and span export to an OTLP/HTTP receiver started here,
//! decoded with the reference `opentelemetry-proto` types.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::support::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced_get(url: &str, traceparent: &str) -> Request<ClientBody> {
    let mut request = get_request(url);
    let headers = request.headers_mut();
    headers.insert("traceparent", HeaderValue::from_str(traceparent).unwrap());
    headers.insert("tracestate", HeaderValue::from_static("vendor=opaque"));
    request
}

#[tokio::test]
async fn a_traced_request_goes_upstream_as_a_child_with_the_same_trace_and_is_logged() {
    let v1 = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = TestProxy::new()
        .endpoints(&[&v1])
        .yaml(&format!("access_log: {{ path: {} }}", log.display()))
        .start()
        .await;
    for flags in ["01", "00"] {
        let sent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}");
        let (status, _, _) = send(proxy.client(), traced_get(&proxy.url("/"), &sent))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let upstream = v1.last_headers();
        let parent = upstream["traceparent"].to_str().unwrap().to_owned();
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(parts.len(), 4, "{parent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], CLIENT_TRACE, "the same trace");
        assert_ne!(
            parts[2], CLIENT_SPAN,
            "tidegate's own span is the parent upstream"
        );
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], flags, "the sampled flag is kept");
        assert_eq!(upstream["tracestate"], "vendor=opaque");
    }
    let lines: Vec<Value> = {
        let mut lines = Vec::new();
        wait_until("two log lines", Duration::from_secs(10), || {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            std::future::ready(lines.len() >= 2)
        })
        .await;
        lines
    };
    assert!(lines.iter().all(|l| l["trace_id"] == CLIENT_TRACE));

    // No traceparent: none is made up unless tracing.start says so; an invalid one is dropped.
    let (_, _, _) = proxy.get("/").await.unwrap();
    assert!(v1.last_headers().get("traceparent").is_none());
    let broken = traced_get(&proxy.url("/"), "00-xyz-00f067aa0ba902b7-01");
    send(proxy.client(), broken).await.unwrap();
    assert!(v1.last_headers().get("traceparent").is_none());
    assert!(v1.last_headers().get("tracestate").is_none());

    let starting = TestProxy::new()
        .endpoints(&[&v1])
        .yaml("tracing: { start: always }")
        .start()
        .await;
    starting.get("/").await.unwrap();
    let started = v1.last_headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        started.starts_with("00-") && started.ends_with("-01"),
        "{started}"
    );
    assert_ne!(&started[3..35], "00000000000000000000000000000000");
}

/// An OTLP/HTTP receiver on loopback: every request body it was sent.
struct Receiver {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<(String, String, Bytes)>>>,
}

async fn otlp_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<Mutex<Vec<(String, String, Bytes)>>> = Arc::default();
    let sink = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let content_type = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        sink.lock().unwrap().push((path, content_type, body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver { addr, bodies }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[tokio::test]
async fn sampled_requests_are_exported_as_server_spans_over_otlp_http() {
    let receiver = otlp_receiver().await;
    let v1 = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&v1])
        .yaml(&format!(
            "tracing: {{ otlp_endpoint: \"http://{}/v1/traces\", service_name: shop-edge }}",
            receiver.addr
        ))
        .start()
        .await;
    // Sampled, unsampled, and one without a trace (tracing.start: never): one span.
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    send(proxy.client(), traced_get(&proxy.url("/shop"), &sampled))
        .await
        .unwrap();
    let upstream_parent = v1.last_headers()["traceparent"].to_str().unwrap()[36..52].to_owned();
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    send(proxy.client(), traced_get(&proxy.url("/"), &unsampled))
        .await
        .unwrap();
    proxy.get("/").await.unwrap();

    let mut spans = Vec::new();
    wait_until("a span is exported", Duration::from_secs(10), || {
        spans = receiver
            .bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(path, content_type, body)| {
                assert_eq!(path, "/v1/traces");
                assert_eq!(content_type, "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body.clone()).expect("protobuf");
                let resource = request.resource_spans[0].resource.clone().unwrap();
                assert_eq!(
                    resource.attributes[0].value.as_ref().unwrap().value,
                    Some(AnyValue::StringValue("shop-edge".into())),
                    "service.name"
                );
                request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans)
                    .collect::<Vec<_>>()
            })
            .collect();
        std::future::ready(!spans.is_empty())
    })
    .await;
    // Let a wrongly exported second span arrive before counting.
    let exported = || async {
        proxy
            .metric(r#"tidegate_trace_spans_total{result="success"}"#)
            .await
    };
    wait_until("the export is counted", Duration::from_secs(5), || async {
        exported().await == Some(1.0)
    })
    .await;
    assert_eq!(spans.len(), 1, "only the sampled request");
    let span = &spans[0];
    assert_eq!(hex(&span.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        hex(&span.span_id),
        upstream_parent,
        "the span the backend saw as its parent"
    );
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, 2, "SERVER");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(span.start_time_unix_nano > 1_700_000_000_000_000_000);
    assert_eq!(
        attribute(span, "http.request.method"),
        Some(&AnyValue::StringValue("GET".into()))
    );
    assert_eq!(
        attribute(span, "http.response.status_code"),
        Some(&AnyValue::IntValue(200))
    );
    assert_eq!(
        attribute(span, "network.peer.address"),
        Some(&AnyValue::StringValue("127.0.0.1".into()))
    );
    assert_eq!(
        attribute(span, "server.address"),
        Some(&AnyValue::StringValue(proxy.addr.ip().to_string()))
    );
    assert_eq!(
        attribute(span, "tidegate.version"),
        Some(&AnyValue::StringValue("v1".into()))
    );
    assert_eq!(
        attribute(span, "tidegate.role"),
        Some(&AnyValue::StringValue("stable".into()))
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
