//! Real gRPC peers (Debian's grpcio, tests/grpc/fixture.py): a server process per backend that
//! names its version in every answer, and a client process that runs bounded calls and reports one
//! JSON summary. Both speak h2c, as a gRPC client and server do without TLS.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::support;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/fixture.py");
/// Debian's interpreter, which sees `python3-grpcio`; a pyenv `python3` on PATH would not.
const PYTHON: &str = "/usr/bin/python3";
const INSTALL: &str = "the gRPC fixture needs Debian's python3-grpcio for /usr/bin/python3 \
    (`bash tests/deps.sh` installs it)";
/// The client's own default bound on a run (`--max-seconds`).
const CLIENT_MAX_SECONDS: f64 = 30.0;

/// A grpcio server process serving `tidegate.test.Echo` on one loopback address; killed on drop.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub version: String,
    child: Child,
    stderr: File,
}

impl GrpcServer {
    /// A server on a pod address of its own and a free port.
    pub async fn start(version: &str, code: Option<&str>) -> GrpcServer {
        let port = std::net::TcpListener::bind((support::pod_ip(), 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        Self::start_at(port, version, code).await
    }

    /// A server on a fixed address (a restarted pod keeps its IP and port). With `code`, every
    /// call fails with that `grpc.StatusCode` name.
    pub async fn start_at(addr: SocketAddr, version: &str, code: Option<&str>) -> GrpcServer {
        let stderr = tempfile::tempfile().unwrap();
        let mut command = Command::new(PYTHON);
        command
            .args([SCRIPT, "server", "--listen", &addr.to_string()])
            .args(["--version", version]);
        if let Some(code) = code {
            command.args(["--code", code]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {PYTHON}: {e}; {INSTALL}"));
        // The reader drains stdout until the process exits, so it never blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = GrpcServer {
            addr,
            version: version.to_owned(),
            child,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = format!("READY {addr}");
        loop {
            match rx.try_recv() {
                Ok(line) if line == ready => return server,
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = server.child.wait();
                    panic!("gRPC server {addr} exited: {}; {INSTALL}", server.stderr());
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                panic!("gRPC server {addr} not ready in 10 s: {}", server.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        let mut file = &self.stderr;
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
        text
    }

    /// SIGTERM, as the kubelet sends: GOAWAY, no new calls, in-flight calls may finish.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process exited (with status 0) within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's JSON summary of one run.
#[derive(Debug, Clone, Deserialize)]
pub struct CallSummary {
    pub calls: u64,
    pub ok: u64,
    /// Failed calls by status code name (`UNAVAILABLE`, ...).
    #[serde(default)]
    pub codes: BTreeMap<String, u64>,
    /// The first five distinct error details.
    #[serde(default)]
    pub details: Vec<String>,
    /// Successful calls by the `x-version` the server sent.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// The rest is about the first call only.
    #[serde(default)]
    pub messages: Vec<String>,
    #[serde(default)]
    pub initial_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub trailing_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub set_cookie: Option<String>,
    pub elapsed_s: f64,
}

fn client_command(target: SocketAddr, call: &str, args: &[&str]) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .args([SCRIPT, "client", "--target", &target.to_string()])
        .args(["--call", call])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// How long to wait for a client: its own `--max-seconds` bound plus time to start and report.
fn client_limit(args: &[&str]) -> Duration {
    let max = args
        .iter()
        .position(|a| *a == "--max-seconds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<f64>().expect("--max-seconds is a number"))
        .unwrap_or(CLIENT_MAX_SECONDS);
    Duration::from_secs_f64(max) + Duration::from_secs(20)
}

/// Waits for a client process and parses its summary, killing it if it overstays `limit`.
async fn collect(child: Child, limit: Duration, what: String) -> CallSummary {
    let pid = child.id().to_string();
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let Ok(output) = waited else {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("{what} did not finish within {limit:?}");
    };
    let output = output.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}): {stderr}; {INSTALL}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: {e}: stdout {stdout:?}, stderr {stderr}"))
}

/// Runs the client (`--count`, `--concurrency`, `--metadata k=v ...`, `--deadline-ms`,
/// `--payload`, `--max-seconds` in `args`) against `target` and returns its summary.
pub async fn call(target: SocketAddr, call: &str, args: &[&str]) -> CallSummary {
    let mut command = client_command(target, call, args);
    let what = format!("{command:?}");
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}; {INSTALL}"));
    collect(child, client_limit(args), what).await
}

/// A client calling until `finish` (or its `--max-seconds`, 30 s unless given).
pub struct LoadHandle {
    child: Option<Child>,
    until_file: PathBuf,
    limit: Duration,
    what: String,
}

/// Starts a client that keeps calling `target` until [`LoadHandle::finish`] creates `until_file`.
pub fn start_load(target: SocketAddr, call: &str, args: &[&str], until_file: &Path) -> LoadHandle {
    let _ = std::fs::remove_file(until_file);
    let mut command = client_command(target, call, args);
    command.arg("--until-file").arg(until_file);
    // Its stderr goes to a file: nobody reads a pipe while the load runs.
    command.stderr(tempfile::tempfile().unwrap());
    let what = format!("{command:?}");
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}; {INSTALL}"));
    LoadHandle {
        child: Some(child),
        until_file: until_file.to_owned(),
        limit: client_limit(args),
        what,
    }
}

impl LoadHandle {
    /// Stops the load (calls in flight complete) and returns its summary.
    pub async fn finish(mut self) -> CallSummary {
        File::create(&self.until_file).unwrap();
        let child = self.child.take().unwrap();
        collect(child, self.limit, self.what.clone()).await
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const ECHO: [&str; 3] = ["--metadata", "x-echo-a=1", "x-echo-trailer=t"];

#[tokio::test]
async fn fixture_round_trip_direct() {
    let server = GrpcServer::start("v1", None).await;
    let expected: [(&str, &[&str]); 4] = [
        ("unary", &["v1:ping"]),
        ("server_stream", &["v1:1", "v1:2", "v1:3"]),
        ("client_stream", &["v1:3:abc"]),
        ("bidi", &["v1:a", "v1:b", "v1:c"]),
    ];
    for (kind, messages) in expected {
        let summary = call(server.addr, kind, &ECHO).await;
        assert_eq!((summary.calls, summary.ok), (1, 1), "{kind}: {summary:?}");
        assert_eq!(summary.messages, messages, "{kind}");
        assert_eq!(
            summary.versions,
            BTreeMap::from([("v1".into(), 1)]),
            "{kind}"
        );
        let initial = &summary.initial_metadata;
        assert_eq!(initial.get("x-version").map(String::as_str), Some("v1"));
        assert_eq!(initial.get("x-echo-a").map(String::as_str), Some("1"));
        let trailing = &summary.trailing_metadata;
        assert_eq!(
            trailing.get("x-trailer-version").map(String::as_str),
            Some("v1")
        );
        assert_eq!(
            trailing.get("x-echo-trailer").map(String::as_str),
            Some("t")
        );
        assert_eq!(summary.set_cookie, None);
    }
    let many = call(
        server.addr,
        "unary",
        &["--count", "20", "--concurrency", "4"],
    )
    .await;
    assert_eq!((many.calls, many.ok), (20, 20), "{many:?}");

    let failing = GrpcServer::start("v2", Some("NOT_FOUND")).await;
    for kind in ["unary", "bidi"] {
        let summary = call(failing.addr, kind, &["--count", "3"]).await;
        assert_eq!(summary.ok, 0, "{kind}: {summary:?}");
        assert_eq!(summary.codes, BTreeMap::from([("NOT_FOUND".into(), 3)]));
        assert_eq!(summary.details, ["v2 says NOT_FOUND"]);
        assert!(summary.versions.is_empty());
    }
}
