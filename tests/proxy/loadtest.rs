//! `tidegate loadtest` against loopback servers with known behaviour: every request counted once,
//! failures classified, the schedule held (or lateness counted), versions read, exit codes, and the
//! report and JSON files.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::{Command, Output};
use std::time::Duration;

use tidegate::loadtest::{self, ErrorKind, FailureKind, Plan, Summary, Target, VersionFrom};
use tidegate::shutdown;

use crate::support::*;

/// `rate` req/s for `duration` over `connections` connections, 5 s timeout.
fn plan(url: &str, rate: u32, duration: Duration, connections: usize) -> Plan {
    let mut plan = Plan::new(Target::parse(url).expect("a valid test URL"));
    plan.rate = rate;
    plan.duration = duration;
    plan.connections = NonZeroUsize::new(connections).expect("at least one connection");
    plan
}

/// Runs `plan` to its end (bounded: a run may take at most 20 s).
async fn run(plan: Plan) -> Summary {
    let (_trigger, stop) = shutdown::channel();
    tokio::time::timeout(Duration::from_secs(20), loadtest::run(plan, stop))
        .await
        .expect("the load test ends within 20 s")
        .expect("the load test runs")
}

fn error(summary: &Summary, kind: ErrorKind) -> u64 {
    summary.failures.get(FailureKind::Error(kind))
}

/// Runs the real binary's `loadtest` with `args`, off the runtime's threads.
async fn tidegate_loadtest(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .arg("loadtest")
            .args(args)
            .output()
            .expect("run tidegate loadtest")
    })
    .await
    .expect("the command thread")
}

/// A loopback address where nothing listens (a pod that has just died).
async fn closed_address() -> SocketAddr {
    let listener = bind_again(SocketAddr::new(pod_ip().into(), 0)).await;
    listener.local_addr().unwrap()
}

/// A `--json` file, parsed.
fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the JSON file"))
        .expect("valid JSON")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_once_and_the_rate_is_held() {
    let v1 = backend("v1").run().await;

    let summary = run(plan(
        &format!("http://{}/", v1.addr),
        200,
        Duration::from_secs(3),
        8,
    ))
    .await;

    assert_eq!(summary.requests, 600, "200 req/s for 3 s is 600 requests");
    assert_eq!(
        v1.hits() as u64,
        summary.requests,
        "the server saw exactly what the load test counted"
    );
    assert_eq!((summary.responses, summary.failed), (600, 0));
    let rate = summary.requests as f64 / summary.elapsed_s;
    assert!(
        (190.0..=210.0).contains(&rate),
        "a server that keeps up gets the planned rate ±5%: {rate:.1} req/s over {:.3} s",
        summary.elapsed_s
    );
    // Requests count in the second their outcome is known, so a scheduling stall of a few tens of
    // milliseconds on a busy machine moves some across a boundary: ±10% per second.
    for second in &summary.seconds[..3] {
        assert!(
            (180..=220).contains(&second.requests),
            "each second carries 200 ±10%: {second:?}"
        );
    }
    assert!(
        summary.late <= 30,
        "with 8 free connections almost nothing starts late: {}",
        summary.late
    );
    let seconds: u64 = summary.seconds.iter().map(|s| s.requests).sum();
    assert_eq!(seconds, summary.requests, "the per-second series adds up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_makes_requests_late_and_latency_counts_the_wait() {
    let slow = backend("v1").run().await;

    // One connection, 50 ms per request: capacity 20 req/s against a schedule of 40 req/s.
    let summary = run(plan(
        &format!("http://{}/slow?ms=50", slow.addr),
        40,
        Duration::from_secs(1),
        1,
    ))
    .await;

    assert_eq!(
        summary.requests, 40,
        "late requests are sent, never dropped"
    );
    assert_eq!(slow.hits(), 40);
    assert_eq!(summary.failed, 0);
    assert!(
        summary.late >= 35,
        "all but the first few must wait for the one connection: {} late",
        summary.late
    );
    let max = summary.latency.expect("responses").max_ms;
    assert!(
        max >= 800.0,
        "latency runs from the intended start, so the queue shows (no coordinated omission): \
         max {max} ms for a 50 ms service time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_a_connect_failure_on_every_scheduled_request() {
    let closed = closed_address().await;

    let summary = run(plan(
        &format!("http://{closed}/"),
        50,
        Duration::from_millis(500),
        4,
    ))
    .await;

    assert_eq!(summary.requests, 25, "each scheduled request tries again");
    assert_eq!(error(&summary, ErrorKind::Connect), 25);
    assert_eq!((summary.failed, summary.responses), (25, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_in_closed_loop_is_probed_not_spun_on() {
    let closed = closed_address().await;

    let summary = run(plan(
        &format!("http://{closed}/"),
        0,
        Duration::from_millis(500),
        2,
    ))
    .await;

    assert!(
        (2..=20).contains(&summary.requests),
        "two connections backing off 100 ms for 0.5 s: about 10 attempts, not thousands: {}",
        summary.requests
    );
    assert_eq!(error(&summary, ErrorKind::Connect), summary.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_mid_response_are_resets() {
    let dying = backend("v1").run().await;
    let (_trigger, stop) = shutdown::channel();
    // 5 requests, each held 3 s by the server, one per connection.
    let running = loadtest::start(
        plan(
            &format!("http://{}/slow?ms=3000", dying.addr),
            10,
            Duration::from_millis(500),
            5,
        ),
        stop,
    )
    .await
    .unwrap();
    wait_until(
        "all 5 requests are in flight",
        Duration::from_secs(5),
        || async { dying.in_flight() == 5 },
    )
    .await;

    dying.kill();
    let summary = running.finish().await.unwrap();

    assert_eq!(summary.requests, 5);
    assert_eq!(
        error(&summary, ErrorKind::Reset),
        5,
        "a pod that dies mid-response is a reset: {:?}",
        summary.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout() {
    let silent = backend("v1").run().await;
    let mut plan = plan(
        &format!("http://{}/slow?ms=10000", silent.addr),
        10,
        Duration::from_millis(500),
        5,
    );
    plan.timeout = Duration::from_millis(200);

    let summary = run(plan).await;

    assert_eq!(summary.requests, 5);
    assert_eq!(
        error(&summary, ErrorKind::Timeout),
        5,
        "{:?}",
        summary.failures
    );
    assert!(summary.elapsed_s < 2.0, "timeouts end the run promptly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_start_within_the_timeout_are_overdue_and_not_sent() {
    let silent = backend("v1").run().await;
    let mut plan = plan(
        &format!("http://{}/slow?ms=10000", silent.addr),
        20,
        Duration::from_secs(1),
        1,
    );
    plan.timeout = Duration::from_millis(200);

    let summary = run(plan).await;

    assert_eq!(
        summary.requests, 20,
        "every scheduled request is accounted for"
    );
    let (timeouts, overdue) = (
        error(&summary, ErrorKind::Timeout),
        error(&summary, ErrorKind::Overdue),
    );
    assert_eq!(timeouts + overdue, 20, "{:?}", summary.failures);
    assert!(
        overdue >= 10,
        "one stuck connection leaves most overdue: {overdue}"
    );
    assert_eq!(
        silent.hits() as u64,
        timeouts,
        "overdue requests are never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_a_failure_and_still_has_a_version() {
    let broken = backend("v3").pod("web-v3-0").run().await;
    broken.set_status(503);
    let mut plan = plan(
        &format!("http://{}/", broken.addr),
        50,
        Duration::from_millis(500),
        4,
    );
    plan.version_from = VersionFrom::parse("header:x-pod").unwrap();

    let summary = run(plan).await;

    assert_eq!(summary.failures.get(FailureKind::Status5xx), 25);
    assert_eq!(summary.failed, 25);
    assert_eq!(summary.statuses.get(&503), Some(&25));
    assert_eq!(summary.versions.len(), 1);
    assert_eq!(
        (
            summary.versions[0].name.as_str(),
            summary.versions[0].failed
        ),
        ("web-v3-0", 25)
    );
}

/// v1 and a v2 canary at 30% behind the real proxy.
async fn canary_behind_proxy(extra: &str) -> (Backend, Backend, RunningProxy) {
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&v1, &v2])
        .canary("v2", 30.0)
        .yaml(extra)
        .start()
        .await;
    (v1, v2, proxy)
}

/// Checks that the versions seen match what each backend served, exactly.
fn assert_versions_match(summary: &Summary, v1: &Backend, v2: &Backend) {
    let count = |name: &str| {
        summary
            .versions
            .iter()
            .find(|v| v.name == name)
            .map_or(0, |v| v.responses)
    };
    assert_eq!(
        (count("v1"), count("v2")),
        (v1.hits() as u64, v2.hits() as u64),
        "each response is attributed to the version that served it: {:?}",
        summary.versions
    );
    // 30% of 300: the binomial standard deviation is about 8; allow 5 of them.
    let canary = count("v2") as f64;
    assert!(
        (50.0..=130.0).contains(&canary),
        "about 30% to the canary: {canary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_come_from_the_proxys_version_header_by_default() {
    let (v1, v2, proxy) = canary_behind_proxy("expose_version_header: true").await;

    let summary = run(plan(&proxy.url("/"), 300, Duration::from_secs(1), 8)).await;

    assert_eq!(summary.requests, 300);
    assert_versions_match(&summary, &v1, &v2);
    let (first, last) = (&summary.versions[0], &summary.versions[1]);
    // Serving windows are whole seconds of the run; on a loaded machine the last responses of a
    // one-second run may land in second 1.
    for v in [first, last] {
        assert!(
            v.first_second <= v.last_second && v.last_second as f64 <= summary.elapsed_s,
            "{}'s window lies within the run ({} s): {v:?}",
            v.name,
            summary.elapsed_s
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_come_from_a_body_regex_over_http2() {
    let (v1, v2, proxy) = canary_behind_proxy("").await;
    let mut plan = plan(&proxy.url("/"), 300, Duration::from_secs(1), 8);
    plan.version_from = VersionFrom::parse(r"body-regex:This is (v\d+) running").unwrap();
    plan.protocol = loadtest::Protocol::Http2;

    let summary = run(plan).await;

    assert_eq!(summary.requests, 300);
    assert_eq!(summary.failed, 0, "{:?}", summary.failures);
    assert_versions_match(&summary, &v1, &v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_ends_the_run_early_with_its_marks() {
    let v1 = backend("v1").run().await;
    let (trigger, stop) = shutdown::channel();
    let running = loadtest::start(
        plan(
            &format!("http://{}/", v1.addr),
            100,
            Duration::from_secs(30),
            4,
        ),
        stop,
    )
    .await
    .unwrap();
    let marker = running.marker();
    let mut live = running.live();
    marker.mark("first phase");
    tokio::time::timeout(
        Duration::from_secs(10),
        live.wait_for(|l| l.last_second.is_some()),
    )
    .await
    .expect("a complete second is published within 10 s")
    .expect("the run is live");
    let live_second = live.borrow().last_second.clone().unwrap();
    marker.mark("second phase");

    trigger.fire();
    let summary = running.finish().await.unwrap();

    assert!(summary.stopped_early);
    assert!(summary.elapsed_s < 10.0, "stopped well before 30 s");
    assert_eq!(
        v1.hits() as u64,
        summary.requests,
        "in-flight requests finished"
    );
    assert_eq!(
        summary
            .marks
            .iter()
            .map(|m| m.label.as_str())
            .collect::<Vec<_>>(),
        ["first phase", "second phase"]
    );
    assert_eq!(
        summary.seconds[live_second.second as usize].requests, live_second.requests,
        "the live view of a complete second matches the summary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_1_only_when_failures_exceed_the_budget() {
    let v1 = backend("v1").run().await;
    let url = format!("http://{}/", v1.addr);
    let base = ["--rate", "40", "--duration", "250ms", "--connections", "2"];
    let with = |extra: &[&str]| {
        let mut a = args(&[url.as_str()]);
        a.extend(args(&base));
        a.extend(args(extra));
        a
    };

    let healthy = tidegate_loadtest(with(&[])).await;
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "no failure: exit 0. stderr: {}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let stdout = String::from_utf8_lossy(&healthy.stdout);
    assert!(
        stdout.contains("10 in") && stdout.contains("0 failed"),
        "{stdout}"
    );

    v1.set_status(500);
    let failing = tidegate_loadtest(with(&[])).await;
    assert_eq!(failing.status.code(), Some(1), "10 failures > 0 allowed");
    assert!(String::from_utf8_lossy(&failing.stderr).contains("10 requests failed"));
    let tolerated = tidegate_loadtest(with(&["--max-failures", "10"])).await;
    assert_eq!(tolerated.status.code(), Some(0), "10 failures ≤ 10 allowed");

    for bad in [
        ["--rate", "fast"],
        ["--duration", "10"],
        ["--version-from", "cookie:v"],
        ["--header", "novalue"],
    ] {
        let out = tidegate_loadtest(with(&bad)).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error");
    }
    let out = tidegate_loadtest(args(&["ftp://127.0.0.1:1/"])).await;
    assert_eq!(out.status.code(), Some(2), "ftp: a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_json_describe_the_run() {
    let (v1, v2, proxy) = canary_behind_proxy("").await;
    let dir = tempfile::tempdir().unwrap();
    let (html, json) = (dir.path().join("r.html"), dir.path().join("r.json"));

    let out = tidegate_loadtest(args(&[
        &proxy.url("/"),
        "--rate",
        "200",
        "--duration",
        "1500ms",
        "--version-from",
        r"body-regex:This is (v\d+)",
        "--mark",
        "1s:weight 50%",
        "--report",
        html.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = read_json(&json);
    let requests = data["requests"].as_u64().unwrap();
    assert_eq!(requests, 300);
    assert_eq!(requests, (v1.hits() + v2.hits()) as u64);
    let per_second: u64 = data["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, requests, "the series adds up to the total");
    let by_version: u64 = data["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["responses"].as_u64().unwrap())
        .sum();
    assert_eq!(by_version, requests);
    assert_eq!(data["failures"]["connect"], 0);
    assert_eq!(data["marks"][0]["label"], "weight 50%");

    let page = std::fs::read_to_string(&html).unwrap();
    for needle in [
        "<svg",
        "Responses per second by version",
        "Failures per second",
        "Latency per second",
        "weight 50%",
        &format!("<td>{requests}</td>"),
        &format!("<td>{}</td>", v2.hits()),
    ] {
        assert!(page.contains(needle), "the report shows {needle:?}");
    }
    assert_eq!(page.matches("<svg").count(), 5, "five charts");
    for external in ["src=\"http", "href=\"http", "url(http", "<script", "<link"] {
        assert!(
            !page.contains(external),
            "the report is self-contained: found {external:?}"
        );
    }
}

/// One request a [`recording_server`] received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    /// Path and query.
    path: String,
    /// `x-target`, when sent.
    tag: Option<String>,
    body: Vec<u8>,
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<Received>>>;

/// A loopback server that records every request's method, path, `x-target` header and body
/// bytes, answering 200.
async fn recording_server() -> (SocketAddr, Seen) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Default::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().to_string();
                            let tag = req
                                .headers()
                                .get("x-target")
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sink.lock().unwrap().push(Received {
                                method,
                                path,
                                tag,
                                body: body.to_vec(),
                            });
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_bodies_reach_the_server_byte_for_byte() {
    let (addr, seen) = recording_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    // Binary, with bytes that are not UTF-8 and a newline: sent exactly as in the file.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(&file, &bytes).unwrap();
    let url = format!("http://{addr}/items");
    let body_arg = format!("@{}", file.display());
    for http2 in [false, true] {
        seen.lock().unwrap().clear();
        let mut list = vec![
            url.as_str(),
            "--rate",
            "40",
            "--duration",
            "500ms",
            "--method",
            "PUT",
            "--body",
            body_arg.as_str(),
            "--quiet",
        ];
        if http2 {
            list.push("--http2");
        }
        let out = tidegate_loadtest(args(&list)).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let requests = seen.lock().unwrap().clone();
        assert_eq!(requests.len(), 20, "40 req/s for 500 ms (http2: {http2})");
        for Received { method, body, .. } in &requests {
            assert_eq!(method, "PUT");
            assert!(
                body == &bytes,
                "the file's bytes, byte for byte (http2: {http2})"
            );
        }
    }

    // A text body, and a POST.
    seen.lock().unwrap().clear();
    let out = tidegate_loadtest(args(&[
        &url,
        "--rate",
        "20",
        "--duration",
        "250ms",
        "--method",
        "POST",
        "--body",
        "{\"a\":1}",
        "--quiet",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0));
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 5);
    assert!(requests
        .iter()
        .all(|r| r.method == "POST" && r.body == b"{\"a\":1}"));

    for bad in [
        ["--method", "NOT A METHOD"],
        ["--method", "CONNECT"],
        ["--body", "@/no/such/file"],
    ] {
        let mut a = args(&[url.as_str()]);
        a.extend(args(&bad));
        let out = tidegate_loadtest(a).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error");
    }
}

/// The scheduler's own lateness must stay far below what it measures: at 1,000 req/s requests
/// start within a fraction of a millisecond of their time (tokio's timer alone fires up to a
/// millisecond late), and the report keeps service time (from the actual send) apart from the
/// latency counted from the intended start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_start_on_schedule_and_service_time_is_recorded_apart() {
    let v1 = backend("v1").run().await;
    let summary = run(plan(
        &format!("http://{}/", v1.addr),
        1000,
        Duration::from_secs(1),
        32,
    ))
    .await;
    assert_eq!(summary.requests, 1000);
    assert_eq!(summary.failed, 0);
    let lag = summary.start_lag.expect("on-time requests were measured");
    assert!(
        lag.p50_ms < 0.25,
        "median start error {:.3} ms at 1,000 req/s: {lag:?}",
        lag.p50_ms
    );
    let (latency, service) = (summary.latency.unwrap(), summary.service.unwrap());
    assert!(service.p50_ms > 0.0);
    assert!(
        service.p50_ms <= latency.p50_ms,
        "service {service:?} is part of latency {latency:?}"
    );
}

/// A loopback app that answers every request after `delay`: a slow release.
async fn slow_app(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(pod_ip().into(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"This is v2")),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

/// Stable (`v1`, fast) and a canary (`v2`) 30 ms slower, 30% to the canary, behind tidegate with
/// the version header on. The stable backend is returned to keep it alive.
async fn slow_canary_behind_proxy() -> (Backend, RunningProxy) {
    let stable = backend("v1").run().await;
    let canary = slow_app(Duration::from_millis(30)).await;
    let proxy = TestProxy::new()
        .endpoints(&[&stable])
        .endpoint_at(canary, "v2")
        .canary("v2", 30.0)
        .yaml("expose_version_header: true")
        .start()
        .await;
    (stable, proxy)
}

/// The reason to load-test a rollout: the canary's latency beside stable's. A canary 30 ms slower
/// than stable must show it in its own percentiles, and stable's must not be dragged up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_attributed_to_the_version_that_served() {
    let (_stable, proxy) = slow_canary_behind_proxy().await;
    let summary = run(plan(&proxy.url("/"), 200, Duration::from_secs(1), 16)).await;
    assert_eq!(summary.failed, 0);
    let latency = |name: &str| {
        summary
            .versions
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.latency)
            .unwrap_or_else(|| panic!("{name} has latency: {:?}", summary.versions))
    };
    let (v1, v2) = (latency("v1"), latency("v2"));
    assert!(v2.p50_ms >= 30.0, "the slow canary's median: {v2:?}");
    assert!(v1.p99_ms < 30.0, "stable's tail is its own: {v1:?}");
    assert!(v2.p99_ms > v1.p99_ms);
    assert!(
        v1.min_ms > 0.0 && v2.min_ms >= 30.0,
        "min latency: {v1:?} {v2:?}"
    );
    // Second by second too: every second the canary answered in, its p99 is its own 30 ms.
    let canary = summary
        .versions
        .iter()
        .position(|v| v.name == "v2")
        .unwrap();
    let stable = summary
        .versions
        .iter()
        .position(|v| v.name == "v1")
        .unwrap();
    let mut seconds_with_both = 0;
    for second in &summary.seconds {
        if let (Some(Some(v2)), Some(Some(v1))) = (
            second.p99_by_version.get(canary),
            second.p99_by_version.get(stable),
        ) {
            assert!(
                *v2 >= 30.0 && v1 < v2,
                "second {}: {v1} vs {v2}",
                second.second
            );
            seconds_with_both += 1;
        }
    }
    assert!(seconds_with_both >= 1, "{:?}", summary.seconds);
    // The distribution plot's points: percentiles rising to 100, latencies never falling.
    let d = &summary.versions[canary].distribution;
    assert_eq!(d.last().map(|p| p.0), Some(100.0));
    assert!(
        d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{d:?}"
    );
    let printed = summary.to_string();
    assert!(printed.contains("p99"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_has_one_row_per_request_with_its_timings() {
    let v1 = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("requests.csv");
    let out = tidegate_loadtest(args(&[
        &format!("http://{}/", v1.addr),
        "--rate",
        "100",
        "--duration",
        "500ms",
        "--quiet",
        "--csv",
        csv.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("intended_ms,started_ms,done_ms,latency_ms,service_ms,outcome,version")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 7, "{line}");
            assert_eq!(cells[5], "200", "{line}");
            cells[..5]
                .iter()
                .map(|c| c.parse::<f64>().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 50, "one row per request (100 req/s for 500 ms)");
    assert!(
        rows.iter().any(|r| r[1] - r[0] >= 0.001),
        "some start lag, so the row check below can tell it apart: {rows:?}"
    );
    assert_eq!(rows.len() as u64, v1.hits() as u64);
    let mut intended: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    intended.sort_by(f64::total_cmp);
    for (i, at) in intended.iter().enumerate() {
        assert!(
            (at - i as f64 * 10.0).abs() < 0.01,
            "request {i} intended at {at} ms"
        );
    }
    for r in &rows {
        let (intended, started, done, latency, service) = (r[0], r[1], r[2], r[3], r[4]);
        assert!(started >= intended - 0.01 && done >= started, "{r:?}");
        assert!((done - started - service).abs() < 0.01, "{r:?}");
        // 32 connections for 100 req/s: every request had a free connection waiting for it, so
        // its latency is its service time; the generator's own wake-up lag (started − intended)
        // is not charged to the server.
        assert!((latency - service).abs() < 0.01, "{r:?}");
    }
}

/// `--threshold` gates a pipeline: a run within every limit exits 0; one that crosses any exits 1
/// naming each crossed limit with what was measured; a malformed one is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_exit_1_naming_every_one_crossed() {
    let (_stable, proxy) = slow_canary_behind_proxy().await;
    let url = proxy.url("/");
    let run_with = |thresholds: &[&str], extra: &[&str]| {
        let mut a = args(&[
            url.as_str(),
            "--rate",
            "100",
            "--duration",
            "500ms",
            "--quiet",
        ]);
        for t in thresholds {
            a.extend(args(&["--threshold", t]));
        }
        a.extend(args(extra));
        tidegate_loadtest(a)
    };

    let within = run_with(&["failures<1%", "v1:p99<25ms", "v2:p50>=0ms"], &[]).await;
    // `>=` is not a threshold operator: a usage error, before any load.
    assert_eq!(within.status.code(), Some(2), "{within:?}");

    let within = run_with(&["failures<1%", "v1:p99<25ms", "max<5s"], &[]).await;
    assert_eq!(
        within.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&within.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let (html, json) = (dir.path().join("r.html"), dir.path().join("r.json"));
    let files = [
        "--report",
        html.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    let crossed = run_with(&["failures<1%", "v2:p50<10ms", "p99<5ms"], &files).await;
    assert_eq!(crossed.status.code(), Some(1));
    // The files are still written, and say which thresholds held.
    let data = read_json(&json);
    let verdicts: Vec<(&str, bool)> = data["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["threshold"].as_str().unwrap(),
                v["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("failures<1%", true),
            ("v2:p50<10ms", false),
            ("p99<5ms", false)
        ]
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("2 of 3 thresholds crossed"), "the headline");
    assert!(
        page.contains("<td>v2:p50&lt;10ms</td>")
            && page.contains("<td class=\"bad\">crossed</td>")
            && page.contains("<td class=\"good\">passed</td>"),
        "the thresholds table"
    );
    assert!(
        page.contains("v2:p50&lt;10ms CROSSED"),
        "drawn on the charts"
    );
    let stderr = String::from_utf8_lossy(&crossed.stderr);
    assert!(stderr.contains("v2:p50<10ms: measured"), "{stderr}");
    assert!(stderr.contains("p99<5ms: measured"), "{stderr}");
    assert!(
        !stderr.contains("failures<1%"),
        "a threshold held is not named: {stderr}"
    );
}

/// `--stages` ramps the open-loop rate linearly between targets: 0 → 400/s over 2 s, a second at
/// 400/s, down to 0 over 1 s. Each second's requests are the rate's integral over it (100, 300,
/// 400, 200), within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ramp_the_rate_second_by_second() {
    let v1 = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = tidegate_loadtest(args(&[
        &format!("http://{}/", v1.addr),
        "--stages",
        "2s:400,1s:400,1s:0",
        "--connections",
        "16",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0→400→400→0 req/s over 2s, 1s, 1s"),
        "{stdout}"
    );
    let data = read_json(&json);
    assert_eq!(data["requests"], 1000);
    assert_eq!(data["failed"], 0);
    assert_eq!(data["stages"][1]["target"], 400);
    let per_second: Vec<u64> = data["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .collect();
    for (second, want) in [100u64, 300, 400, 200].into_iter().enumerate() {
        let got = per_second[second];
        assert!(
            got.abs_diff(want) * 20 <= want,
            "second {second}: {got} requests, the ramp says {want} ({per_second:?})"
        );
    }

    // `--stages` replaces --rate and --duration; a ramp that starts nothing is refused.
    for bad in [
        &["--stages", "1s:10", "--rate", "5"][..],
        &["--stages", "10s:0"],
        &["--stages", "fast"],
    ] {
        let mut a = args(&[&format!("http://{}/", v1.addr)]);
        a.extend(args(bad));
        assert_eq!(tidegate_loadtest(a).await.status.code(), Some(2), "{bad:?}");
    }
}

/// Several URLs are sent in turn; a vegeta targets file gives each request its own method,
/// headers and body, and they reach the server byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_and_a_targets_file_are_sent_round_robin() {
    let (addr, seen) = recording_server().await;
    let out = tidegate_loadtest(args(&[
        &format!("http://{addr}/a"),
        &format!("http://{addr}/b?x=1"),
        "--method",
        "PATCH",
        "--rate",
        "40",
        "--duration",
        "500ms",
        "--quiet",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(requests.len(), 20);
    let to = |path: &str| requests.iter().filter(|r| r.path == path).count();
    assert_eq!((to("/a"), to("/b?x=1")), (10, 10), "{requests:?}");
    assert!(requests.iter().all(|r| r.method == "PATCH"));

    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..=255u8).rev().cycle().take(700).collect();
    let body_file = dir.path().join("new.bin");
    std::fs::write(&body_file, &body).unwrap();
    let targets = dir.path().join("targets.txt");
    std::fs::write(
        &targets,
        format!(
            "# vegeta's format\nGET http://{addr}/items\nX-Target: list\n\n\
             POST http://{addr}/items\nX-Target: create\nContent-Type: application/octet-stream\n\
             @{}\n\nDELETE http://{addr}/items/7\nX-Target: delete\n",
            body_file.display()
        ),
    )
    .unwrap();
    let out = tidegate_loadtest(args(&[
        "--targets",
        targets.to_str().unwrap(),
        "--rate",
        "60",
        "--duration",
        "500ms",
        "--quiet",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(requests.len(), 30);
    for (tag, method, path, want_body) in [
        ("list", "GET", "/items", &b""[..]),
        ("create", "POST", "/items", &body[..]),
        ("delete", "DELETE", "/items/7", &b""[..]),
    ] {
        let of_tag: Vec<_> = requests
            .iter()
            .filter(|r| r.tag.as_deref() == Some(tag))
            .collect();
        assert_eq!(of_tag.len(), 10, "{tag}: a third of the requests");
        for r in of_tag {
            assert_eq!((r.method.as_str(), r.path.as_str()), (method, path));
            assert!(r.body == want_body, "{tag}: the body byte for byte");
        }
    }

    // A target on another host and a broken file are usage errors, named, before any load.
    std::fs::write(
        &targets,
        format!("GET http://{addr}/\n\nGET http://127.0.0.1:1/\n"),
    )
    .unwrap();
    let out = tidegate_loadtest(args(&["--targets", targets.to_str().unwrap(), "--quiet"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{out:?}"
    );
    std::fs::write(&targets, format!("GET http://{addr}/\nno colon here\n")).unwrap();
    let out = tidegate_loadtest(args(&["--targets", targets.to_str().unwrap(), "--quiet"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("targets line 2"),
        "{out:?}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}
