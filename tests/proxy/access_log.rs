//! Access logs, request IDs and tidegate's own-error warnings, through the real binary: lines
//! read back from the file (or stdout) the proxy writes, and headers as the backend saw them.

use std::time::Duration;

use http::{HeaderValue, Request};
use serde_json::Value;

use crate::support::*;

const FIELDS: [&str; 18] = [
    "time",
    "request_id",
    "client",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "grpc_status",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream",
    "version",
    "role",
    "attempts",
    "flags",
    "trace_id",
];

/// The JSON lines of the access log file, once it holds at least `count` (or the deadline passes).
async fn log_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect::<Vec<_>>()
    };
    wait_until(
        "the access log has every line",
        Duration::from_secs(20),
        || std::future::ready(read().len() >= count),
    )
    .await;
    read()
}

fn access_log_to(path: &std::path::Path) -> String {
    format!("access_log: {{ format: json, path: {} }}", path.display())
}

/// A loopback port nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_under_load_gets_one_json_line_with_every_field() {
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let proxy = TestProxy::new()
        .endpoints(&[&v1, &v2])
        .canary("v2", 50.0)
        .yaml(&access_log_to(&path))
        .start()
        .await;
    let load = start_load(
        &proxy.url("/hello?secret=1"),
        8,
        600,
        Duration::from_secs(30),
    );
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let lines = log_lines(&path, report.total()).await;
    assert_eq!(lines.len(), report.total(), "one line per request");
    let mut ids = std::collections::HashSet::new();
    for line in &lines {
        for field in FIELDS {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["method"], "GET");
        assert_eq!(
            line["path"], "/hello",
            "no query string unless include_query"
        );
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["flags"], "-");
        assert!(line["grpc_status"].is_null());
        let version = line["version"].as_str().unwrap();
        let (backend, role) = match version {
            "v1" => (&v1, "stable"),
            "v2" => (&v2, "canary"),
            other => panic!("version {other}"),
        };
        assert_eq!(line["role"], role);
        assert_eq!(line["upstream"], backend.addr.to_string());
        let sent = line["bytes_sent"].as_u64().unwrap();
        assert!(sent > 10, "the body's bytes: {line}");
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        let id = line["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{line}");
        assert!(ids.insert(id.to_owned()), "request IDs are unique");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    let served: usize = [&v1, &v2].iter().map(|b| b.hits()).sum();
    assert_eq!(served, lines.len());
}

#[tokio::test]
async fn a_post_body_is_counted_and_the_query_is_logged_only_when_asked() {
    let v1 = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let proxy = TestProxy::new()
        .endpoints(&[&v1])
        .yaml(&format!(
            "access_log: {{ format: json, path: {}, include_query: true }}",
            path.display()
        ))
        .start()
        .await;
    let request = Request::post(proxy.url("/upload?name=a"))
        .body(full(&"x".repeat(100_000)))
        .unwrap();
    let (status, _, answer) = send(proxy.client(), request).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let lines = log_lines(&path, 1).await;
    assert_eq!(lines[0]["path"], "/upload?name=a");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["bytes_received"], 100_000);
    assert_eq!(lines[0]["bytes_sent"], answer.len());
}

#[tokio::test]
async fn tidegate_own_errors_carry_flags_and_are_warned_even_with_access_logs_off() {
    let dead = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let logged = TestProxy::new()
        .endpoint_at(dead, "v1")
        .yaml(&access_log_to(&path))
        .start()
        .await;
    let (status, headers, _) = logged.get("/x").await.unwrap();
    assert_eq!(status, 502);
    let line = &log_lines(&path, 1).await[0];
    assert_eq!(line["status"], 502);
    assert_eq!(line["flags"], "UF", "{line}");
    assert_eq!(line["upstream"], dead.to_string());
    assert_eq!(line["version"], "v1");
    assert_eq!(
        line["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );

    // Access logs off: the same failure is a warning with the same fields.
    let quiet = TestProxy::new().endpoint_at(dead, "v1").start().await;
    assert_eq!(quiet.get("/y").await.unwrap().0, 502);
    let warning = wait_for_warning(&quiet, "tidegate answered the request itself").await;
    assert_eq!(warning["level"], "WARN");
    let fields = &warning;
    assert_eq!(fields["status"], 502);
    assert_eq!(fields["error"], "connect");
    assert_eq!(fields["flags"], "UF");
    assert_eq!(fields["path"], "/y");
    assert_eq!(fields["upstream"], dead.to_string());
    assert_eq!(fields["request_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn a_storm_of_own_errors_is_warned_at_a_bounded_rate() {
    let dead = closed_port();
    let proxy = TestProxy::new().endpoint_at(dead, "v1").start().await;
    for _ in 0..200 {
        assert_eq!(proxy.get("/").await.unwrap().0, 502);
    }
    let warnings = || {
        proxy
            .logs()
            .iter()
            .filter(|l| l.contains("tidegate answered the request itself"))
            .count()
    };
    wait_until("some warnings", Duration::from_secs(5), || {
        std::future::ready(warnings() > 0)
    })
    .await;
    // 200 failures within a few seconds: at most 10 lines a second get through.
    assert!(warnings() <= 40, "{} warnings for 200 errors", warnings());
}

async fn wait_for_warning(proxy: &RunningProxy, message: &str) -> Value {
    let mut found = None;
    wait_until("the warning", Duration::from_secs(5), || {
        found = proxy.logs().into_iter().find_map(|l| {
            let v: Value = serde_json::from_str(&l).ok()?;
            (v["message"] == message).then_some(v)
        });
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_drops_and_counts_lines_instead_of_stalling_requests() {
    let v1 = backend("v1").run().await;
    // Nobody reads the proxy's stdout: after the pipe's 64 KiB and the writer's buffer, every
    // write blocks. A small queue makes the drops come early.
    let proxy = TestProxy::new()
        .endpoints(&[&v1])
        .yaml("access_log: { format: json, path: stdout, buffer: 100 }")
        .stdout_unread()
        .start()
        .await;
    let load = start_load(&proxy.url("/"), 8, 3000, Duration::from_secs(20));
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.ok, 3000,
        "every request answered while the log stalls"
    );
    let dropped = proxy
        .metric("tidegate_access_log_dropped_total")
        .await
        .unwrap_or(0.0);
    // 3000 lines of ~400 bytes; the pipe, the writer's 64 KiB and the queue of 100 hold < 500.
    assert!(dropped >= 2000.0, "dropped {dropped}");
}

#[tokio::test]
async fn request_ids_are_kept_or_generated_and_sent_both_ways() {
    let v1 = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&v1]).start().await;

    let mut request = get_request(&proxy.url("/"));
    request
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_static("client-id-42"));
    let (_, headers, _) = send(proxy.client(), request).await.unwrap();
    assert_eq!(headers["x-request-id"], "client-id-42");
    assert_eq!(v1.last_headers()["x-request-id"], "client-id-42");

    for sent in [None, Some("has spaces"), Some("{\"json\":1}")] {
        let mut request = get_request(&proxy.url("/"));
        if let Some(sent) = sent {
            request
                .headers_mut()
                .insert("x-request-id", HeaderValue::from_str(sent).unwrap());
        }
        let (_, headers, _) = send(proxy.client(), request).await.unwrap();
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{sent:?} gets a new ID");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let upstream = v1.last_headers();
        assert_eq!(upstream.get_all("x-request-id").iter().count(), 1);
        assert_eq!(
            upstream["x-request-id"],
            id.as_str(),
            "the same ID upstream"
        );
    }

    // Another header name, not answered to the client.
    let custom = TestProxy::new()
        .endpoints(&[&v1])
        .yaml("request_id: { header: x-correlation-id, response: false }")
        .start()
        .await;
    let (_, headers, _) = custom.get("/").await.unwrap();
    assert!(headers.get("x-correlation-id").is_none());
    assert!(headers.get("x-request-id").is_none());
    assert_eq!(v1.last_headers()["x-correlation-id"].len(), 32);

    let off = TestProxy::new()
        .endpoints(&[&v1])
        .yaml("request_id: { enabled: false }")
        .start()
        .await;
    let (_, headers, _) = off.get("/").await.unwrap();
    assert!(headers.get("x-request-id").is_none());
    assert!(v1.last_headers().get("x-request-id").is_none());
}
