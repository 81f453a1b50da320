//! Real parts for the integration tests: loopback backends that answer like the tutorials' apps, the
//! real `tidegate` binary with a config file, an HTTP client, and a bounded load generator.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, ClientBody>;

/// Every backend gets a loopback address of its own, as every pod has its own IP.
pub fn pod_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let second = 100 + (std::process::id() % 100) as u8;
    Ipv4Addr::new(127, second, (n / 250) as u8, (n % 250 + 1) as u8)
}

// ---------------------------------------------------------------------------------------------
// Backends

pub struct BackendBuilder {
    version: String,
    pod: Option<String>,
    port: u16,
    ip: Option<std::net::IpAddr>,
}

pub fn backend(version: &str) -> BackendBuilder {
    BackendBuilder {
        version: version.to_owned(),
        pod: None,
        port: 0,
        ip: None,
    }
}

#[derive(Default)]
struct BackendState {
    /// When not 0, every response gets this status (a broken release).
    status: std::sync::atomic::AtomicU16,
    first_hit: Mutex<Option<Instant>>,
    last_hit: Mutex<Option<Instant>>,
    hits: AtomicUsize,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// A loopback HTTP/1.1 app. `GET /` answers `This is <version> running in pod <pod>`;
/// `/slow?ms=N` answers after N ms; `POST /upload` streams the body and answers its length and hash.
pub struct Backend {
    pub addr: SocketAddr,
    pub version: String,
    pub pod: String,
    state: Arc<BackendState>,
    stop: watch::Sender<u8>,
}

impl BackendBuilder {
    pub fn pod(mut self, name: &str) -> Self {
        self.pod = Some(name.to_owned());
        self
    }

    /// Listen on this port (pods of one Service share a port, each on its own IP).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Listen on this address (a restarted container keeps its pod's IP).
    pub fn ip(mut self, ip: std::net::IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub async fn run(self) -> Backend {
        let ip = self.ip.unwrap_or_else(|| pod_ip().into());
        let listener = bind_again(SocketAddr::new(ip, self.port)).await;
        let addr = listener.local_addr().unwrap();
        let pod = self
            .pod
            .unwrap_or_else(|| format!("{}-{}", self.version, addr.ip()));
        let state = Arc::new(BackendState::default());
        let (stop, stopped) = watch::channel(RUNNING);
        let body = Bytes::from(format!("This is {} running in pod {pod}\n", self.version));
        tokio::spawn(accept_loop(
            listener,
            state.clone(),
            stopped,
            body,
            pod.clone(),
        ));
        Backend {
            addr,
            version: self.version,
            pod,
            state,
            stop,
        }
    }
}

/// A backend's life: serving, draining after SIGTERM (no new connections, in-flight requests
/// finish, idle connections close), or killed (everything cut off).
const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const KILLED: u8 = 2;

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BackendState>,
    mut stopped: watch::Receiver<u8>,
    body: Bytes,
    pod: String,
) {
    loop {
        let stream = tokio::select! {
            _ = stopped.wait_for(|s| *s != RUNNING) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (state, body, pod) = (state.clone(), body.clone(), pod.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |req| answer(req, state.clone(), body.clone(), pod.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopped.wait_for(|s| *s != RUNNING) => {}
            }
            // A killed pod's connections vanish mid-flight: dropping the future closes the socket.
            if *stopped.borrow() == KILLED {
                return;
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection => {}
                _ = stopped.wait_for(|s| *s == KILLED) => {}
            }
        });
    }
}

async fn answer(
    mut req: Request<Incoming>,
    state: Arc<BackendState>,
    body: Bytes,
    pod: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        // A tiny upgraded protocol: every chunk comes back prefixed with the pod's name.
        state.hits.fetch_add(1, Ordering::SeqCst);
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = upgraded.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let reply = [pod.as_bytes(), b":", &buf[..n]].concat();
                if io.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(response);
    }
    let now = Instant::now();
    state.first_hit.lock().unwrap().get_or_insert(now);
    *state.last_hit.lock().unwrap() = Some(now);
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    *state.last_headers.lock().unwrap() = Some(req.headers().clone());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut response = match path.as_str() {
        "/slow" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::new(body))
        }
        "/upload" => {
            let mut incoming = req.into_body();
            let mut hash = Fnv::new();
            let mut len = 0u64;
            while let Some(frame) = incoming.frame().await {
                if let Ok(Ok(data)) = frame.map(|f| f.into_data()) {
                    len += data.len() as u64;
                    hash.update(&data);
                }
            }
            Response::new(Full::new(Bytes::from(format!(
                "bytes={len} hash={:x}",
                hash.0
            ))))
        }
        _ => Response::new(Full::new(body)),
    };
    let forced = state.status.load(Ordering::SeqCst);
    if forced != 0 {
        *response.status_mut() = StatusCode::from_u16(forced).unwrap();
    }
    response.headers_mut().insert("x-pod", pod.parse().unwrap());
    response
        .headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

impl Backend {
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// From now on, answer every request with `status` (0: back to normal).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// When the first request arrived, if any did.
    /// When the most recent request arrived.
    pub fn last_hit(&self) -> Option<Instant> {
        *self.state.last_hit.lock().unwrap()
    }

    pub fn first_hit(&self) -> Option<Instant> {
        *self.state.first_hit.lock().unwrap()
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The headers of the last request this backend received.
    pub fn last_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .unwrap()
            .clone()
            .expect("backend saw a request")
    }

    /// The pod dies: its listener closes and every open connection is dropped mid-flight.
    pub fn kill(&self) {
        self.stop.send_replace(KILLED);
    }

    /// SIGTERM for a server that shuts down gracefully: it stops accepting (new connections are
    /// refused), closes idle keep-alive connections, and exits once in-flight requests finish.
    pub fn sigterm(&self) {
        self.stop.send_if_modified(|s| {
            let running = *s == RUNNING;
            if running {
                *s = DRAINING;
            }
            running
        });
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// FNV-1a, to check that a streamed body arrived byte for byte.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy under test: the real binary

/// Where the rendered config takes the admin token from.
#[derive(Clone, Default)]
enum AdminToken {
    #[default]
    None,
    Inline(String),
    /// These contents, written to `admin-token` beside the config (`admin.token_file`).
    File(String),
}

/// Describes a config; renders YAML with ephemeral loopback ports for the proxy and admin API.
#[derive(Clone, Default)]
pub struct TestProxy {
    /// A whole `discovery:` block replacing the static endpoint list.
    discovery: Option<String>,
    endpoints: Vec<(SocketAddr, String, bool)>,
    /// Static endpoints that get `protocol: h2c`.
    h2c: Vec<SocketAddr>,
    canary: Option<(String, f64)>,
    admin_token: AdminToken,
    /// The admin API on every interface (`0.0.0.0`) instead of loopback.
    admin_on_all_interfaces: bool,
    extra: Vec<String>,
    launch: Launch,
}

/// How the proxy process is started.
#[derive(Clone, Copy, Default)]
struct Launch {
    /// Run under `taskset -c 0`, as in a one-CPU container.
    one_core: bool,
    /// Start with these soft and hard open-files limits (`ulimit -n`).
    open_files: Option<(u64, u64)>,
    /// `TOKIO_WORKER_THREADS`, as the shipped manifests set it from the pod's CPU request.
    worker_threads: Option<&'static str>,
    /// stdout is a pipe that nobody reads (a stalled log consumer); else /dev/null.
    stdout_unread: bool,
}

impl TestProxy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready endpoints.
    pub fn endpoints(mut self, backends: &[&Backend]) -> Self {
        for b in backends {
            self.endpoints.push((b.addr, b.version.clone(), true));
        }
        self
    }

    /// An endpoint that is listed but not ready.
    pub fn not_ready(mut self, backend: &Backend) -> Self {
        self.endpoints
            .push((backend.addr, backend.version.clone(), false));
        self
    }

    /// An endpoint at an arbitrary address (for example, one where nothing listens).
    pub fn endpoint_at(mut self, addr: SocketAddr, version: &str) -> Self {
        self.endpoints.push((addr, version.to_owned(), true));
        self
    }

    /// An endpoint at an arbitrary address that is listed but not ready.
    pub fn not_ready_at(mut self, addr: SocketAddr, version: &str) -> Self {
        self.endpoints.push((addr, version.to_owned(), false));
        self
    }

    /// An endpoint that speaks HTTP/2 with prior knowledge (`protocol: h2c`).
    pub fn h2c_endpoint_at(mut self, addr: SocketAddr, version: &str) -> Self {
        self.h2c.push(addr);
        self.endpoint_at(addr, version)
    }

    /// Kubernetes discovery through `kubeconfig`, with extra keys (e.g. `deployment: web`).
    pub fn kubernetes(mut self, kubeconfig: &std::path::Path, service: &str, extra: &str) -> Self {
        self.discovery = Some(format!(
            "discovery:\n  kubernetes:\n    kubeconfig: {}\n    service: {service}\n    port: http\n{}",
            kubeconfig.display(),
            extra
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("    {}\n", l.trim()))
                .collect::<String>()
        ));
        self
    }

    /// The bearer token mutating admin calls need.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = AdminToken::Inline(token.to_owned());
        self
    }

    /// `admin.listen: 0.0.0.0:0`, as in a pod whose probes come from the node. Tests still reach
    /// it through 127.0.0.1.
    pub fn admin_on_all_interfaces(mut self) -> Self {
        self.admin_on_all_interfaces = true;
        self
    }

    /// The bearer token, kept in a file beside the config (`admin.token_file`).
    pub fn admin_token_file(mut self, contents: &str) -> Self {
        self.admin_token = AdminToken::File(contents.to_owned());
        self
    }

    pub fn canary(mut self, version: &str, weight: f64) -> Self {
        self.canary = Some((version.to_owned(), weight));
        self
    }

    /// Extra top-level YAML, e.g. `timeouts: { request: 300ms }`.
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra.push(extra.to_owned());
        self
    }

    pub fn render(&self) -> String {
        let token = match &self.admin_token {
            AdminToken::None => "token: null".to_owned(),
            AdminToken::Inline(token) => format!("token: {token}"),
            AdminToken::File(_) => "token_file: admin-token".to_owned(),
        };
        let admin_ip = if self.admin_on_all_interfaces {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut y = format!("listen: 127.0.0.1:0\nadmin: {{ listen: {admin_ip}:0, {token} }}\n");
        y.push_str("reload: { interval: 50ms }\n");
        match &self.discovery {
            Some(discovery) => y.push_str(discovery),
            None => {
                y.push_str("discovery:\n  static:\n");
                if self.endpoints.is_empty() {
                    y.push_str("    allow_empty: true\n");
                }
                y.push_str("    endpoints:\n");
                if self.endpoints.is_empty() {
                    y.push_str("      []\n");
                }
                for (addr, version, ready) in &self.endpoints {
                    let protocol = if self.h2c.contains(addr) {
                        ", protocol: h2c"
                    } else {
                        ""
                    };
                    y.push_str(&format!(
                        "      - {{ address: \"{addr}\", version: {version}, ready: {ready}{protocol} }}\n"
                    ));
                }
            }
        }
        if let Some((version, weight)) = &self.canary {
            y.push_str(&format!(
                "canary: {{ version: {version}, weight: {weight} }}\n"
            ));
        }
        let has_timeouts = self.extra.iter().any(|e| e.starts_with("timeouts"));
        if !has_timeouts {
            y.push_str("timeouts: { connect: 1s, request: 10s, header_read: 5s, drain: 10s }\n");
        }
        for e in &self.extra {
            y.push_str(e);
            y.push('\n');
        }
        y
    }

    /// Runs the proxy pinned to one CPU.
    pub fn on_one_core(mut self) -> Self {
        self.launch.one_core = true;
        self
    }

    /// Starts the proxy with its stdout a pipe that is never read: once the pipe's buffer is
    /// full, every write to stdout blocks.
    pub fn stdout_unread(mut self) -> Self {
        self.launch.stdout_unread = true;
        self
    }

    /// Starts the proxy with `TOKIO_WORKER_THREADS` set to `value`.
    pub fn worker_threads(mut self, value: &'static str) -> Self {
        self.launch.worker_threads = Some(value);
        self
    }

    /// Starts the proxy with these soft and hard open-files limits.
    pub fn open_files(mut self, soft: u64, hard: u64) -> Self {
        self.launch.open_files = Some((soft, hard));
        self
    }

    pub async fn start(self) -> RunningProxy {
        let launch = self.launch;
        let (dir, config) = self.write();
        RunningProxy::launch(dir, config, launch)
            .await
            .ready()
            .await
    }

    /// Starts without waiting for `/readyz` (for tests of readiness itself).
    pub async fn start_unready(self) -> RunningProxy {
        let launch = self.launch;
        let (dir, config) = self.write();
        RunningProxy::launch(dir, config, launch).await
    }

    fn write(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tidegate.yaml");
        std::fs::write(&config, self.render()).unwrap();
        if let AdminToken::File(contents) = &self.admin_token {
            std::fs::write(dir.path().join("admin-token"), contents).unwrap();
        }
        (dir, config)
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tidegate")
}

pub struct RunningProxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    client: HttpClient,
}

impl RunningProxy {
    /// Starts `tidegate proxy --config <config>` and waits until it is ready.
    pub async fn spawn(dir: tempfile::TempDir, config: PathBuf) -> Self {
        Self::launch(dir, config, Launch::default())
            .await
            .ready()
            .await
    }

    /// Waits until the admin API reports ready.
    async fn ready(self) -> Self {
        let proxy = self;
        proxy
            .wait_until(
                "the admin API reports ready",
                Duration::from_secs(10),
                || async {
                    proxy
                        .admin_get("/readyz")
                        .await
                        .map(|(s, _)| s == StatusCode::OK)
                        .unwrap_or(false)
                },
            )
            .await;
        proxy
    }

    /// Starts `tidegate proxy --config <config>` and waits for its listeners.
    async fn launch(dir: tempfile::TempDir, config: PathBuf, launch: Launch) -> Self {
        let mut argv = vec![binary().to_owned()];
        if launch.one_core {
            argv.splice(0..0, ["taskset", "-c", "0"].map(String::from));
        }
        if let Some((soft, hard)) = launch.open_files {
            let limits = format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$@\"");
            argv.splice(
                0..0,
                ["sh".to_owned(), "-c".to_owned(), limits, "sh".to_owned()],
            );
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if let Some(value) = launch.worker_threads {
            command.env("TOKIO_WORKER_THREADS", value);
        }
        let mut child = command
            .args(["--log-format", "json", "proxy", "--config"])
            .arg(&config)
            // `TIDEGATE_TEST_RUST_LOG=info,tidegate=debug,h2=debug` when investigating a failure.
            .env(
                "RUST_LOG",
                std::env::var("TIDEGATE_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(if launch.stdout_unread {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tidegate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (addr, mut admin) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "tidegate did not report its listeners; logs: {:?}",
                    logs.lock().unwrap()
                )
            });
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "tidegate proxy started" {
                let field = |k: &str| v[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
                break (field("listen"), field("admin"));
            }
        };
        // Listening on every interface is reached through loopback.
        if admin.ip().is_unspecified() {
            admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Self {
            child,
            dir,
            config,
            addr,
            admin,
            logs,
            client: client(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// `GET path` through the proxy.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, HeaderMap, String), String> {
        send(&self.client, get_request(&self.url(path))).await
    }

    pub async fn admin_get(&self, path: &str) -> Result<(StatusCode, String), String> {
        let url = format!("http://{}{path}", self.admin);
        send(&self.client, get_request(&url))
            .await
            .map(|(s, _, b)| (s, b))
    }

    /// The value of one exact series line in `/metrics` (e.g. `tidegate_retries_total{reason="connect"}`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await.ok()?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until one `/metrics` series has `value`, failing the test after `limit`.
    pub async fn wait_metric(&self, series: &str, value: f64, limit: Duration) {
        let what = format!("{series} is {value}");
        wait_until(&what, limit, || async {
            self.metric(series).await == Some(value)
        })
        .await
    }

    pub async fn endpoints_json(&self) -> serde_json::Value {
        let (_, body) = self.admin_get("/endpoints").await.expect("GET /endpoints");
        serde_json::from_str(&body).expect("/endpoints is JSON")
    }

    /// Requests (and tunnels) in flight, summed over all endpoints (from `GET /endpoints`).
    pub async fn in_flight(&self) -> u64 {
        self.endpoints_json().await["endpoints"]
            .as_array()
            .expect("an endpoints array")
            .iter()
            .map(|e| e["in_flight"].as_u64().expect("in_flight is a count"))
            .sum()
    }

    pub async fn generation(&self) -> u64 {
        self.endpoints_json().await["generation"].as_u64().unwrap()
    }

    /// Replaces the config file the way an editor does: write a new file, rename it over the old.
    pub fn rewrite_config(&self, config: &TestProxy) {
        let tmp = self.dir.path().join(".tidegate.yaml.swp");
        std::fs::write(&tmp, config.render()).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.dir.path().join(".tidegate.yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Peak resident memory of the proxy process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM:")
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS:")
    }

    /// A `/proc/PID/status` memory line (`VmRSS:`, `VmHWM:`), in KiB.
    fn memory_kib(&self, line: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends SIGTERM, as Kubernetes does when a pod is deleted.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tidegate did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `condition` every 20 ms until it holds, failing the test after `limit`.
    pub async fn wait_until<F, Fut>(&self, what: &str, limit: Duration, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        wait_until(what, limit, condition).await
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Binds `addr`, retrying for up to 5 s: a just-stopped server on the same address (a killed pod,
/// a restarted API server) may hold the port for a moment.
pub async fn bind_again(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot listen on {addr} again: {e}"),
        }
    }
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Client and load

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One HTTP/2 connection to `addr`, held by hand (a pooled client would hide a closed one by
/// reconnecting, and always names the authority it connects to).
pub async fn h2_connection<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

pub fn empty() -> ClientBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

pub fn full(body: &str) -> ClientBody {
    Full::new(Bytes::from(body.to_owned()))
        .map_err(|e| match e {})
        .boxed()
}

pub fn get_request(url: &str) -> Request<ClientBody> {
    Request::get(url).body(empty()).unwrap()
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &HttpClient,
    req: Request<ClientBody>,
) -> Result<(StatusCode, HeaderMap, String), String> {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "no response within 30s".to_owned())?
        .map_err(|e| format!("request failed: {e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    /// Every non-2xx status or transport error, described.
    pub failures: Vec<String>,
    /// Successful responses by body (which pod answered).
    pub by_body: BTreeMap<String, usize>,
}

impl LoadReport {
    pub fn total(&self) -> usize {
        self.ok + self.failures.len()
    }

    /// Successful responses whose body contains `needle`.
    pub fn count_containing(&self, needle: &str) -> usize {
        self.by_body
            .iter()
            .filter(|(b, _)| b.contains(needle))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Load running in the background until stopped, `max_requests` are sent or `max_time` passes.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<LoadReport>>,
}

pub fn start_load(url: &str, concurrency: usize, max_requests: usize, max_time: Duration) -> Load {
    start_load_with(url, concurrency, max_requests, max_time, |url, _| {
        get_request(url)
    })
}

/// [`start_load`] sending the requests `make` builds (from the URL and the request's number).
pub fn start_load_with(
    url: &str,
    concurrency: usize,
    max_requests: usize,
    max_time: Duration,
    make: fn(&str, usize) -> Request<ClientBody>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + max_time;
    let client = client();
    let workers = (0..concurrency)
        .map(|_| {
            let (stop, sent, client, url) =
                (stop.clone(), sent.clone(), client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                loop {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    if stop.load(Ordering::SeqCst)
                        || Instant::now() >= deadline
                        || n >= max_requests
                    {
                        break;
                    }
                    match send(&client, make(&url, n)).await {
                        Ok((status, _, body)) if status.is_success() => {
                            report.ok += 1;
                            *report.by_body.entry(body).or_default() += 1;
                        }
                        Ok((status, headers, body)) => report.failures.push(format!(
                            "{status} {:?} {}",
                            headers.get("x-tidegate-error"),
                            body.trim()
                        )),
                        Err(e) => report.failures.push(e),
                    }
                }
                report
            })
        })
        .collect();
    Load {
        stop,
        sent,
        workers,
    }
}

impl Load {
    /// Waits until `n` more requests have started, failing the test after 20 s.
    pub async fn run_for(&self, n: usize, what: &str) {
        let from = self.sent();
        wait_until(
            &format!("{n} more requests flow {what}"),
            Duration::from_secs(20),
            || async { self.sent() >= from + n },
        )
        .await
    }

    /// Requests started so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops the load and merges the workers' reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }

    /// Waits for the load to end by its own bounds.
    pub async fn finish(self) -> LoadReport {
        let mut total = LoadReport::default();
        for worker in self.workers {
            let r = worker.await.unwrap();
            total.ok += r.ok;
            total.failures.extend(r.failures);
            for (body, n) in r.by_body {
                *total.by_body.entry(body).or_default() += n;
            }
        }
        total
    }
}

/// Steady load through `proxy` (bounded: at most 500,000 requests or 60 s), once it flows.
pub async fn steady_load(proxy: &RunningProxy, concurrency: usize) -> Load {
    let load = start_load(
        &proxy.url("/"),
        concurrency,
        500_000,
        Duration::from_secs(60),
    );
    load.run_for(100, "before the scenario").await;
    load
}

/// Half GETs, half POSTs with a small body: a POST that was sent is never resent elsewhere (it may
/// have been processed), so a request cut off by a dying pod is a failure the client sees.
pub fn get_or_post(url: &str, n: usize) -> Request<ClientBody> {
    if n.is_multiple_of(2) {
        return get_request(url);
    }
    // `url` is the proxy's root, ending in `/`.
    Request::post(format!("{url}upload"))
        .body(full("an order"))
        .unwrap()
}

/// Steady mixed load through `proxy` (bounded: 150 s, 2,000,000 requests), once it flows.
pub async fn mixed_load(proxy: &RunningProxy) -> Load {
    let load = start_load_with(
        &proxy.url("/"),
        8,
        2_000_000,
        Duration::from_secs(150),
        get_or_post,
    );
    load.run_for(100, "before the scenario").await;
    load
}

/// Sends `total` GETs with `concurrency` workers and reports what came back.
pub async fn run_load(url: &str, concurrency: usize, total: usize) -> LoadReport {
    start_load(url, concurrency, total, Duration::from_secs(60))
        .finish()
        .await
}

/// A request body of `len` bytes generated chunk by chunk, never held in memory whole.
pub struct Generated {
    left: usize,
    chunk: Bytes,
}

impl Generated {
    pub fn new(len: usize) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
        Self {
            left: len,
            chunk: Bytes::from(chunk),
        }
    }

    /// The FNV hash of the bytes this body will produce.
    pub fn expected_hash(len: usize) -> u64 {
        let mut g = Generated::new(len);
        let mut h = Fnv::new();
        while g.left > 0 {
            let n = g.left.min(g.chunk.len());
            h.update(&g.chunk[..n]);
            g.left -= n;
        }
        h.0
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// Sends `request` on a fresh connection to `addr` and reads until the proxy closes it, failing
/// the test if that takes over 5 s (a broken request must never hang a connection).
pub async fn raw_round_trip(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "no end of the answer to {:?}",
        String::from_utf8_lossy(request)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads one response with a `content-length` body off a raw connection: (its head, lower-cased;
/// its body).
pub async fn read_response(socket: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response head: {data:?}");
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    while data.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        data.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
    (head, body)
}
