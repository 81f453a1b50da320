//! The command line as users and Kubernetes drive it: `validate`, bad configs, SIGTERM.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Runs the binary with `args` followed by `path`.
fn tidegate<const N: usize>(args: [&str; N], path: &std::path::Path) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_a_good_file_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        TestProxy::new()
            .endpoint_at("127.0.0.2:8080".parse().unwrap(), "v1")
            .canary("v2", 10.0)
            .render(),
    )
    .unwrap();

    let out = tidegate(["validate", "--config"], &path);

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
    assert!(
        stdout.contains("1 endpoints (1 ready)") && stdout.contains("canary v2 at 10%"),
        "{stdout}"
    );
}

#[test]
fn invalid_config_exits_2_naming_the_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = TestProxy::new()
        .endpoint_at("127.0.0.2:8080".parse().unwrap(), "v1")
        .render()
        .replace("127.0.0.2:8080", "127.0.0.2");
    let line = text.lines().position(|l| l.contains("127.0.0.2")).unwrap() + 1;
    std::fs::write(&path, text).unwrap();

    for command in ["validate", "proxy"] {
        let out = tidegate([command, "--config"], &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`{command}` must exit 2 on a bad config: {stderr}"
        );
        assert!(
            stderr.contains("discovery.static.endpoints[0].address"),
            "must name the field: {stderr}"
        );
        assert!(
            stderr.contains(&format!("line {line}")),
            "must name line {line}: {stderr}"
        );
    }

    std::fs::write(
        &path,
        "discovery: { static: { endpoints: [], allow_empty: true } }\nlisten: 127.0.0.1:1\nlisten_backlog: 5\n",
    )
    .unwrap();
    let out = tidegate(["validate", "--config"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("unknown field `listen_backlog`") && stderr.contains("line 3"),
        "{stderr}"
    );

    let out = Command::new(binary())
        .args(["validate", "--config", "/nonexistent/tidegate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_an_in_flight_slow_request() {
    let app = backend("v1").run().await;
    // Long drain and head deadlines: the exit below must come from the drain closing the client's
    // idle keep-alive connection at once, not from either timeout.
    let mut proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 60s, drain: 60s }")
        .start()
        .await;
    let url = proxy.url("/slow?ms=1500");
    let client = proxy.client().clone();
    let slow = tokio::spawn(async move { send(&client, get_request(&url)).await });
    wait_until(
        "the slow request reaches the backend",
        Duration::from_secs(10),
        || async { app.in_flight() == 1 },
    )
    .await;

    proxy.terminate();

    let (status, _, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request must complete");
    assert_eq!(status, 200);
    assert!(body.starts_with("This is v1"), "{body}");
    let exit = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "SIGTERM must end in a clean exit");
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "after shutdown nothing may accept connections"
    );
}

/// A one-CPU container (here `taskset`) gets tidegate's single-threaded runtime; everything beside
/// the requests (config reload, the admin API, the drain) must keep working on that one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_core_the_proxy_runs_single_threaded_and_still_reloads_and_drains() {
    let v1 = backend("v1").run().await;
    let v2 = backend("v2").run().await;
    let mut proxy = TestProxy::new()
        .endpoints(&[&v1])
        .on_one_core()
        .start()
        .await;
    assert_eq!(runtime_of(&proxy), ("single-threaded".to_owned(), 1));

    let load = start_load(&proxy.url("/"), 4, 20_000, Duration::from_secs(30));
    load.run_for(200, "to v1").await;
    proxy.rewrite_config(&TestProxy::new().endpoints(&[&v2]));
    wait_until("load reaches v2", Duration::from_secs(10), || async {
        v2.hits() > 200
    })
    .await;
    let report = load.stop().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        proxy
            .metric(r#"tidegate_config_reloads_total{result="success"}"#)
            .await,
        Some(1.0)
    );

    proxy.terminate();
    let exit = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0));
}

/// The start line's `runtime` and `workers` fields.
fn runtime_of(proxy: &RunningProxy) -> (String, u64) {
    let started = proxy
        .logs()
        .into_iter()
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            (v["message"] == "tidegate proxy started").then(|| v.clone())
        })
        .expect("the start line");
    (
        started["runtime"].as_str().unwrap_or_default().to_owned(),
        started["workers"].as_u64().unwrap_or_default(),
    )
}

/// `deploy/` sets no CPU limit and sizes the runtime from the pod's CPU request through
/// `TOKIO_WORKER_THREADS`: 1 must pick the single-threaded runtime (as one core does), any other
/// count that many workers, whatever the machine's core count; a bad value is a usage error.
#[tokio::test]
async fn tokio_worker_threads_sizes_the_runtime_and_one_means_single_threaded() {
    let v1 = backend("v1").run().await;
    for (value, runtime, workers) in [("1", "single-threaded", 1), ("3", "multi-threaded", 3)] {
        let proxy = TestProxy::new()
            .endpoints(&[&v1])
            .worker_threads(value)
            .start()
            .await;
        assert_eq!(
            runtime_of(&proxy),
            (runtime.to_owned(), workers),
            "TOKIO_WORKER_THREADS={value}"
        );
        let (status, _, _) = proxy.get("/").await.unwrap();
        assert_eq!(status, 200);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, TestProxy::new().endpoints(&[&v1]).render()).unwrap();
    for bad in ["0", "two", ""] {
        let out = Command::new(binary())
            .args(["proxy", "--config"])
            .arg(&path)
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS must be a whole number"),
            "{bad:?}: {stderr}"
        );
    }
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = tidegate(["validate", "--config"], &path);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "the examples in config/ must be checked");
}

#[test]
fn an_unreadable_kubeconfig_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k8s.yaml");
    let missing = dir.path().join("no-such-kubeconfig");
    let config = TestProxy::new().kubernetes(&missing, "web", "").render();
    std::fs::write(&path, config).unwrap();

    let out = tidegate(["proxy", "--config"], &path);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a runtime failure, not a config error: {stderr}"
    );
    assert!(
        stderr.contains("cannot read kubeconfig") && stderr.contains("no-such-kubeconfig"),
        "{stderr}"
    );
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_terminal_colour_codes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, TestProxy::new().render()).unwrap();
    // Text is the default format: what `kubectl logs` shows when nobody chose JSON.
    let mut child = Command::new(binary())
        .args(["proxy", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let started = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains("tidegate proxy started") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let started = started.expect("the start line");
    assert!(!started.contains('\u{1b}'), "{started:?}");
    assert!(started.contains(" INFO "), "{started:?}");
}

/// `tidegate validate` as an operator meets each footgun: exit 2 with the problem in the config's
/// words and its line, never the parser's jargon.
#[test]
fn validate_names_each_footgun_and_its_line() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "discovery:\n  static:\n    endpoints: []\n",
            "the static endpoint list is empty",
            "line 2",
        ),
        (
            "discovery:\n  static:\n    endpoints:\n      - { address: \"web:8080\", version: v1 }\n",
            "is not an IP address and port, such as 10.0.0.5:8080",
            "line 4",
        ),
        (
            "discovery:\n  static:\n    endpoints:\n      - { address: \"127.0.0.2:80\", version: v1 }\n      - { address: \"127.0.0.3:80\", version: v1 }\n      - { address: \"127.0.0.2:80\", version: v2 }\n",
            "endpoint 2 repeats the address 127.0.0.2:80 of endpoint 0",
            "line 6",
        ),
        (
            "discovery:\n  static: { endpoints: [ { address: \"127.0.0.2:80\", version: v1 } ] }\n  kubernetes: { service: web }\n",
            "name exactly one source, `static` or `kubernetes`",
            "line 2",
        ),
        (
            "listen: 127.0.0.1:8080\nlisten: 127.0.0.1:8081\ndiscovery: { static: { endpoints: [ { address: \"127.0.0.2:80\", version: v1 } ] } }\n",
            "`listen` is set twice",
            "line 2",
        ),
        (
            "discovery: { static: { endpoints: [ { address: \"127.0.0.2:80\", version: v1 }\nretries: { connect_attempts: 2 }\n",
            "a `[` opened at line 1",
            "line 1",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    for (text, problem, line) in cases {
        std::fs::write(&path, text).unwrap();
        let out = tidegate(["validate", "--config"], &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{stderr}");
        assert!(stderr.contains(problem), "{problem:?} in {stderr}");
        assert!(stderr.contains(line), "{line:?} in {stderr}");
        assert!(
            !stderr.contains("expected map with a single key")
                && !stderr.contains("duplicate field"),
            "{stderr}"
        );
    }
}

#[test]
fn a_canary_version_no_endpoint_has_is_a_warning_in_validate_and_in_the_log() {
    let v1 = backend_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        TestProxy::new()
            .endpoint_at(v1, "v1")
            .canary("v9", 10.0)
            .render(),
    )
    .unwrap();
    let out = tidegate(["validate", "--config"], &path);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: canary.version v9 matches no endpoint"),
        "{stderr}"
    );
}

/// A loopback address for a config that is only validated.
fn backend_addr() -> std::net::SocketAddr {
    "127.0.0.2:8080".parse().unwrap()
}

#[tokio::test]
async fn the_canary_warning_is_logged_at_start_and_reload() {
    let v1 = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&v1])
        .canary("v9", 10.0)
        .start()
        .await;
    let warned = |proxy: &RunningProxy| {
        proxy
            .logs()
            .iter()
            .filter(|l| l.contains("canary.version v9 matches no endpoint"))
            .count()
    };
    assert_eq!(warned(&proxy), 1, "at start");
    proxy.rewrite_config(&TestProxy::new().endpoints(&[&v1]).canary("v9", 20.0));
    proxy
        .wait_until("warned again on reload", Duration::from_secs(10), || {
            std::future::ready(warned(&proxy) >= 2)
        })
        .await;
}

#[tokio::test]
async fn environment_variables_set_the_config_and_the_log_format() {
    let v1 = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(&path, TestProxy::new().endpoints(&[&v1]).render()).unwrap();
    let out = Command::new(binary())
        .arg("validate")
        .env("TIDEGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let help = Command::new(binary())
        .args(["proxy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("TIDEGATE_CONFIG"), "{help}");
    assert!(help.contains("TIDEGATE_LOG_FORMAT"), "{help}");

    let mut child = Command::new(binary())
        .arg("proxy")
        .env("TIDEGATE_CONFIG", &path)
        .env("TIDEGATE_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().next()
    });
    let line = first.join().unwrap().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    // Flat: the event's fields beside the level, as log pipelines index them.
    assert!(v.get("fields").is_none(), "{line}");
    assert_eq!(v["message"], "tidegate proxy started", "{line}");
}
