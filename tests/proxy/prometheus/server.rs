//! The tools: finding `prometheus` and `promtool` (a missing one fails the test), running
//! promtool checks, and a real Prometheus process on loopback that is killed when dropped.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// How to get the tools; a missing one fails the test rather than skipping it.
const INSTALL: &str = "install Debian's `prometheus` package, which ships `prometheus` and \
    `promtool` (`apt-get install --no-install-recommends prometheus`; .ci/run does this)";

/// `name` on PATH; a missing tool fails the test, saying how to install it.
pub(super) fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: {INSTALL}"))
}

/// Runs `tool args files` with `stdin`, asserting that it succeeds.
pub(super) async fn check(tool: &Path, args: &[&str], files: &[&Path], stdin: &str) {
    let mut command = Command::new(tool);
    command.args(args).args(files);
    let line = format!("{command:?}");
    let stdin = stdin.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "`{tool:?} {args:?} {files:?}` must pass:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A real Prometheus on a loopback port, killed when dropped.
pub(super) struct Prometheus {
    child: RefCell<Child>,
    base: String,
    log: PathBuf,
    client: HttpClient,
}

impl Prometheus {
    pub(super) async fn start(binary: &Path, config: &Path, dir: &Path) -> Self {
        // A free port on this test process's own loopback address.
        let addr = std::net::TcpListener::bind((pod_ip(), 0))
            .and_then(|l| l.local_addr())
            .unwrap();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}; {INSTALL}", binary.display()));
        let prom = Self {
            child: RefCell::new(child),
            base: format!("http://{addr}"),
            log,
            client: client(),
        };
        wait_until("Prometheus is ready", Duration::from_secs(20), || async {
            if let Ok(Some(status)) = prom.child.borrow_mut().try_wait() {
                panic!("Prometheus exited ({status}):\n{}", prom.log());
            }
            let url = format!("{}/-/ready", prom.base);
            matches!(send(&prom.client, get_request(&url)).await, Ok((s, _, _)) if s == 200)
        })
        .await;
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `data` of a successful API answer.
    async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let url = format!("{}{path_and_query}", self.base);
        let (status, _, body) = send(&self.client, get_request(&url)).await?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("HTTP {status}: {body}")),
        }
    }

    /// The series an instant query returns (a scalar counts as one).
    pub(super) async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        Ok(match data["resultType"].as_str() {
            Some("scalar") => vec![data["result"].clone()],
            _ => data["result"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// Waits until both scrape jobs have at least 5 successful scrapes and every recording rule
    /// has output: enough for the 10s and 1m rate windows.
    pub(super) async fn wait_for_data(&self) {
        wait_until(
            "both jobs have 5 successful scrapes and the recording rules have output",
            Duration::from_secs(30),
            || async {
                let scraped = self.query("sum_over_time(up[1m]) >= 5").await;
                let recorded = self
                    .query(r#"count by (__name__) ({__name__=~".+:tidegate_.+"})"#)
                    .await;
                matches!((scraped, recorded), (Ok(s), Ok(r)) if s.len() == 2 && r.len() >= 4)
            },
        )
        .await
    }

    /// Every rule Prometheus loaded, as `(name, rule JSON)`.
    pub(super) async fn rules(&self) -> Vec<(String, Value)> {
        let data = self.api("/api/v1/rules").await.expect("GET /api/v1/rules");
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r))
            .collect()
    }

    pub(super) async fn wait_for_alert(&self, alert: &str) {
        wait_until(
            &format!("{alert} is pending or firing"),
            Duration::from_secs(20),
            || async {
                self.rules().await.iter().any(|(name, rule)| {
                    name == alert && rule["state"].as_str().is_some_and(|s| s != "inactive")
                })
            },
        )
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
