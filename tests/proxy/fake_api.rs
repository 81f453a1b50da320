//! A fake Kubernetes API server that speaks the real wire protocol, for pointing the real kube-rs
//! client (and `kube::runtime::watcher`) at it.
//!
//! Plain HTTP/1.1 on an ephemeral 127.0.0.1 port. It serves list, watch and get for the namespaced
//! kinds tidegate reads (Pods, EndpointSlices, ReplicaSets, Deployments, Services; Events are
//! created) from an in-memory store with
//! one global resourceVersion counter and a replayable event history, like etcd behind an
//! apiserver. Tests change the store directly ([`FakeApi::apply`], [`FakeApi::delete`]) and inject
//! the faults a real control plane produces: dropped watch connections, compacted history (410
//! Gone), an apiserver that is down (connection refused) and one that accepts but never answers.
//!
//! Protocol details that clients depend on and that this fake reproduces:
//! - lists carry `metadata.resourceVersion` (the current global rv) and `apiVersion`/`kind` on
//!   every item; metadata-only requests (`Accept: ...;as=PartialObjectMetadataList` /
//!   `as=PartialObjectMetadata`) get `meta.k8s.io/v1` `PartialObjectMetadata` objects;
//! - watches stream one JSON event per line, one chunk per event, replaying every change after the
//!   requested rv and then following live changes; deleted objects carry the deletion's rv;
//! - an update that takes an object out of a watch's label selector reaches that watch as DELETED
//!   (and one that brings it in as ADDED), as the apiserver's watch cache does;
//! - `rv` unset or `"0"` starts with synthetic ADDED events for the current objects;
//!   `sendInitialEvents=true` adds the `k8s.io/initial-events-end` BOOKMARK after them;
//! - bookmarks (when `allowWatchBookmarks=true`) about once a second and on
//!   [`FakeApi::bookmark_all`]; a watch ends cleanly (terminating chunk) after `timeoutSeconds`;
//! - a watch from an rv older than the compaction point gets a single `ERROR` event carrying a
//!   410 `Expired` Status, then a clean end (or, with [`FakeApi::set_gone_as_http_status`], an HTTP
//!   410 response).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// How often watches that allow bookmarks get one, unprompted.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// A watch without `timeoutSeconds` ends after this long (a real apiserver picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

// ---------------------------------------------------------------------------------------------
// Kinds

/// One served resource type.
#[derive(Debug)]
pub struct KindInfo {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
}

const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Pod",
        api_version: "v1",
        plural: "pods",
    },
    KindInfo {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
    },
    KindInfo {
        kind: "ReplicaSet",
        api_version: "apps/v1",
        plural: "replicasets",
    },
    KindInfo {
        kind: "Deployment",
        api_version: "apps/v1",
        plural: "deployments",
    },
    KindInfo {
        kind: "Event",
        api_version: "v1",
        plural: "events",
    },
    KindInfo {
        kind: "Service",
        api_version: "v1",
        plural: "services",
    },
];

fn kind_info(kind: &str) -> &'static KindInfo {
    KINDS.iter().find(|k| k.kind == kind).unwrap_or_else(|| {
        panic!(
            "the fake apiserver does not serve kind {kind:?}; it serves {:?}",
            KINDS.iter().map(|k| k.kind).collect::<Vec<_>>()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Store

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of the event history.
#[derive(Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    namespace: String,
    change: ChangeType,
    /// The new state; for deletions the last state, stamped with the deletion's rv.
    object: Value,
    /// The state before (modifications and deletions only).
    previous: Option<Value>,
}

type Key = (&'static str, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change with rv greater than `history_start`, in rv order.
    history: Vec<Change>,
    /// Watches may resume from any rv >= this; older ones get 410 Expired.
    history_start: u64,
    /// The highest rv whose change was forgotten: an open watch that had not yet sent it expires.
    forgotten_up_to: u64,
    next_uid: u64,
}

/// A request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as sent (query still percent-encoded).
    pub uri: String,
    pub headers: http::HeaderMap,
    /// The client's address: requests with the same peer came over the same connection.
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// `"GET /apis/...?query"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }

    /// The decoded value of query parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        parse_query(query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

struct Inner {
    addr: SocketAddr,
    store: Mutex<Store>,
    /// The current rv, published after every change; watch streams wake on it.
    changed: watch::Sender<u64>,
    /// Bumped by `drop_watches`.
    drops: watch::Sender<u64>,
    /// Bumped by `bookmark_all`.
    bookmarks: watch::Sender<u64>,
    hang: watch::Sender<bool>,
    /// True while stopped: the accept loop and every connection end.
    shutdown: watch::Sender<bool>,
    connections: watch::Sender<usize>,
    open_watches: watch::Sender<usize>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    gone_as_http: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    request_count: watch::Sender<usize>,
    bookmark_interval_ms: AtomicU64,
}

/// Stops the server when the last handle to it is dropped (tasks hold `Inner`, not this).
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// A running fake apiserver. Clones share it; it shuts down when the last clone is dropped.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl FakeApi {
    /// Binds 127.0.0.1 on an ephemeral port and serves in the background.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            addr,
            store: Mutex::new(Store::default()),
            changed: watch::Sender::new(0),
            drops: watch::Sender::new(0),
            bookmarks: watch::Sender::new(0),
            hang: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            connections: watch::Sender::new(0),
            open_watches: watch::Sender::new(0),
            accept_task: Mutex::new(None),
            gone_as_http: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            request_count: watch::Sender::new(0),
            bookmark_interval_ms: AtomicU64::new(BOOKMARK_INTERVAL.as_millis() as u64),
        });
        let task = tokio::spawn(accept_loop(inner.clone(), listener));
        *inner.accept_task.lock().unwrap() = Some(task);
        FakeApi {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Writes `dir/kubeconfig`: one cluster at [`url`](Self::url), namespace `default`, a user
    /// with a dummy bearer token, and the context selected. Returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.write_kubeconfig_in(dir, "default")
    }

    /// [`write_kubeconfig`](Self::write_kubeconfig) whose context selects `namespace`.
    pub fn write_kubeconfig_in(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user:\n    token: fake-token\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// Creates or replaces the object with this `kind`, `metadata.namespace` (default `default`)
    /// and `metadata.name`, emitting ADDED or MODIFIED. Fills in `apiVersion`, `metadata.uid`,
    /// `metadata.creationTimestamp` (kept from the previous state when replacing) and
    /// `metadata.generation` (kept as given, else from the previous state, else 1), and sets
    /// `metadata.resourceVersion`. Returns the new resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        apply_object(&self.inner, object)
    }
}

/// [`FakeApi::apply`], shared with the `POST` (create) handler.
fn apply_object(inner: &Arc<Inner>, mut object: Value) -> u64 {
    {
        let kind = object["kind"]
            .as_str()
            .expect("apply: the object has no kind")
            .to_owned();
        let info = kind_info(&kind);
        object["apiVersion"] = json!(info.api_version);
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("apply: the object has no metadata");
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .expect("apply: the object has no metadata.name")
            .to_owned();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        meta.insert("namespace".into(), json!(namespace));

        let rv = {
            let mut store = inner.store.lock().unwrap();
            store.rv += 1;
            let rv = store.rv;
            let key: Key = (info.kind, namespace.clone(), name);
            let previous = store.objects.get(&key).cloned();
            let old_meta = previous.as_ref().map(|p| &p["metadata"]);
            let inherited = |field: &str| {
                old_meta
                    .and_then(|m| m.get(field))
                    .filter(|v| !v.is_null())
                    .cloned()
            };
            if meta.get("uid").is_none_or(Value::is_null) {
                let uid = inherited("uid").unwrap_or_else(|| {
                    store.next_uid += 1;
                    json!(format!("f4ce0000-0000-4000-8000-{:012x}", store.next_uid))
                });
                meta.insert("uid".into(), uid);
            }
            if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                let created =
                    inherited("creationTimestamp").unwrap_or_else(|| json!(now_rfc3339()));
                meta.insert("creationTimestamp".into(), created);
            }
            if meta.get("generation").is_none_or(Value::is_null) {
                meta.insert(
                    "generation".into(),
                    inherited("generation").unwrap_or(json!(1)),
                );
            }
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            store.objects.insert(key, object.clone());
            store.history.push(Change {
                rv,
                kind: info.kind,
                namespace,
                change: if previous.is_some() {
                    ChangeType::Modified
                } else {
                    ChangeType::Added
                },
                object,
                previous,
            });
            rv
        };
        inner.changed.send_replace(rv);
        rv
    }
}

impl FakeApi {
    /// Deletes an object, emitting DELETED with its last state (stamped with the deletion's rv).
    /// Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let info = kind_info(kind);
        let rv = {
            let mut store = self.inner.store.lock().unwrap();
            let key: Key = (info.kind, namespace.to_owned(), name.to_owned());
            let Some(previous) = store.objects.remove(&key) else {
                return false;
            };
            store.rv += 1;
            let rv = store.rv;
            let mut object = previous.clone();
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            store.history.push(Change {
                rv,
                kind: info.kind,
                namespace: namespace.to_owned(),
                change: ChangeType::Deleted,
                object,
                previous: Some(previous),
            });
            rv
        };
        self.inner.changed.send_replace(rv);
        true
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let info = kind_info(kind);
        let store = self.inner.store.lock().unwrap();
        store
            .objects
            .get(&(info.kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `kind`, in any namespace.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let info = kind_info(kind);
        let store = self.inner.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == info.kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().unwrap().rv
    }

    // -- faults ---------------------------------------------------------------------------------

    /// Abruptly ends every open watch stream: its connection is closed mid-stream, without the
    /// terminating chunk, as when an apiserver or a load balancer in front of it goes away.
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|n| *n += 1);
    }

    /// Forgets the event history, as etcd compaction does while the rest of the cluster keeps
    /// writing: the global rv advances by one (an unrelated write) and becomes the compaction
    /// point. A watch from any older rv, which every client holds at this moment, gets 410
    /// Expired; a fresh list returns the new rv, from which watching works again. Open watches
    /// carry on unless they had not yet sent a forgotten event.
    pub fn compact(&self) {
        let rv = {
            let mut store = self.inner.store.lock().unwrap();
            store.rv += 1;
            store.history_start = store.rv;
            if let Some(last) = store.history.last() {
                store.forgotten_up_to = last.rv;
            }
            store.history.clear();
            store.rv
        };
        self.inner.changed.send_replace(rv);
    }

    /// When true, watches from a compacted rv get an HTTP `410 Gone` response with a Status body
    /// instead of a 200 response carrying one ERROR event.
    pub fn set_gone_as_http_status(&self, yes: bool) {
        self.inner.gone_as_http.store(yes, Ordering::SeqCst);
    }

    /// Closes the listener and every connection; new connections are refused until
    /// [`restart`](Self::restart). Returns once the port is closed and every connection is gone.
    pub async fn stop(&self) {
        self.inner.shutdown.send_replace(true);
        let task = self.inner.accept_task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut connections = self.inner.connections.subscribe();
        let _ = connections.wait_for(|n| *n == 0).await;
    }

    /// Listens again on the same port with the same state and history (stopping first if
    /// running).
    pub async fn restart(&self) {
        self.stop().await;
        let listener = crate::support::bind_again(self.inner.addr).await;
        self.inner.shutdown.send_replace(false);
        let task = tokio::spawn(accept_loop(self.inner.clone(), listener));
        *self.inner.accept_task.lock().unwrap() = Some(task);
    }

    /// While true, connections are accepted and requests read, but nothing is answered: new
    /// requests are held open, and open watch streams go silent (no events, no bookmarks). When
    /// turned off, held requests are answered and watch streams catch up.
    pub fn hang(&self, yes: bool) {
        self.inner.hang.send_replace(yes);
    }

    /// Sends a BOOKMARK at the current rv on every open watch that allows bookmarks.
    pub fn bookmark_all(&self) {
        self.inner.bookmarks.send_modify(|n| *n += 1);
    }

    /// How often watches get unprompted bookmarks (default 1 s); `None` turns them off.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        let ms = every.map_or(0, |d| d.as_millis().max(1) as u64);
        self.inner.bookmark_interval_ms.store(ms, Ordering::SeqCst);
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        *self.inner.open_watches.borrow()
    }

    /// Waits until `condition` holds for the number of open watch streams; panics after `limit`.
    pub async fn wait_open_watches(&self, limit: Duration, condition: impl Fn(usize) -> bool) {
        let mut rx = self.inner.open_watches.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|n| condition(*n))).await;
        assert!(
            waited.is_ok(),
            "timed out after {limit:?} waiting on open watches (now {}); requests: {:#?}",
            self.open_watches(),
            self.requests()
        );
    }

    /// Every request so far, as `"GET /path?query"` (query as sent, percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(RecordedRequest::line)
            .collect()
    }

    /// Every request so far, with headers.
    pub fn recorded_requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Waits for a request (already received or still to come) for which `matches` holds and
    /// returns it; panics naming `what` after `limit`.
    pub async fn wait_request(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        self.wait_request_after(0, what, limit, matches).await
    }

    /// Like [`wait_request`](Self::wait_request), among the requests after the first `skip`
    /// (take `skip` from [`recorded_requests`](Self::recorded_requests)`().len()`).
    pub async fn wait_request_after(
        &self,
        skip: usize,
        what: &str,
        limit: Duration,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        let mut count = self.inner.request_count.subscribe();
        let find = || {
            self.inner
                .requests
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|r| matches(r))
                .cloned()
        };
        let search = async {
            loop {
                count.borrow_and_update();
                if let Some(found) = find() {
                    return found;
                }
                if count.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(limit, search).await {
            Ok(found) => found,
            Err(_) => panic!(
                "timed out after {limit:?} waiting for a request: {what}; requests: {:#?}",
                self.requests()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Object builders, for brevity in tests

/// A minimal object of `kind` with the given labels.
pub fn object(kind: &str, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": kind_info(kind).api_version,
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
    })
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct SliceEndpoint {
    pub ip: String,
    pub ready: bool,
    pub pod: Option<String>,
    /// Its pod is shutting down: `ready: false`, `serving` as `ready` was, `terminating: true`.
    pub terminating: bool,
}

impl SliceEndpoint {
    pub fn new(ip: impl ToString, ready: bool) -> Self {
        SliceEndpoint {
            ip: ip.to_string(),
            ready,
            pod: None,
            terminating: false,
        }
    }

    pub fn pod(mut self, name: &str) -> Self {
        self.pod = Some(name.to_owned());
        self
    }

    /// Its pod is being deleted: no longer `ready`, still `serving` if it was ready (a pod passing
    /// its readiness probe through its grace period), `terminating`.
    pub fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }
}

/// An IPv4 EndpointSlice of `service` (label `kubernetes.io/service-name`) with one TCP port.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[SliceEndpoint],
) -> Value {
    endpoint_slice_with_app_protocol(namespace, name, service, port, None, endpoints)
}

/// [`endpoint_slice`] whose port carries `appProtocol` (e.g. `kubernetes.io/h2c`) when given.
pub fn endpoint_slice_with_app_protocol(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    app_protocol: Option<&str>,
    endpoints: &[SliceEndpoint],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let ready = e.ready && !e.terminating;
            let conditions =
                json!({ "ready": ready, "serving": e.ready, "terminating": e.terminating });
            let mut v = json!({ "addresses": [e.ip], "conditions": conditions });
            if let Some(pod) = &e.pod {
                v["targetRef"] = json!({ "kind": "Pod", "namespace": namespace, "name": pod });
            }
            v
        })
        .collect();
    let mut slice = object(
        "EndpointSlice",
        namespace,
        name,
        &[
            ("kubernetes.io/service-name", service),
            (
                "endpointslice.kubernetes.io/managed-by",
                "endpointslice-controller.k8s.io",
            ),
        ],
    );
    slice["addressType"] = json!("IPv4");
    slice["endpoints"] = json!(endpoints);
    let mut slice_port = json!({ "name": "http", "port": port, "protocol": "TCP" });
    if let Some(app_protocol) = app_protocol {
        slice_port["appProtocol"] = json!(app_protocol);
    }
    slice["ports"] = json!([slice_port]);
    slice
}

// ---------------------------------------------------------------------------------------------
// Serving

struct Counted(watch::Sender<usize>);

impl Counted {
    fn new(counter: &watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (stream, peer) = stream;
        let counted = Counted::new(&inner.connections);
        let mut shutdown = inner.shutdown.subscribe();
        let served = inner.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let service = service_fn(move |req| handle(served.clone(), peer, req));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection future closes the socket, mid-response or not.
            tokio::select! {
                _ = connection => {}
                _ = shutdown.wait_for(|stopped| *stopped) => {}
            }
        });
    }
}

async fn handle(
    inner: Arc<Inner>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let uri = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    inner.requests.lock().unwrap().push(RecordedRequest {
        method: req.method().to_string(),
        uri,
        headers: req.headers().clone(),
        peer,
    });
    inner.request_count.send_modify(|n| *n += 1);

    let mut hang = inner.hang.subscribe();
    let _ = hang.wait_for(|hung| !*hung).await;

    if req.method() == http::Method::POST {
        return Ok(create(&inner, req).await.unwrap_or_else(|e| *e));
    }
    Ok(respond(&inner, &req).unwrap_or_else(|e| *e))
}

/// `POST` to a collection: creates the object (honouring `metadata.generateName`), 201.
async fn create(inner: &Arc<Inner>, req: Request<Incoming>) -> Answer {
    let bad = |message: String| {
        Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            message,
        ))
    };
    let route = Route::parse(req.uri().path())
        .filter(|r| r.name.is_none())
        .ok_or_else(|| bad("POST goes to a collection".into()))?;
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the body: {e}")))?
        .to_bytes();
    let mut object: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    object["kind"] = json!(route.kind.kind);
    if let Some(ns) = &route.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        let prefix = object["metadata"]["generateName"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let n = inner.store.lock().unwrap().rv + 1;
        object["metadata"]["name"] = json!(format!("{prefix}{n:05}"));
    }
    let (kind, namespace, name) = (
        route.kind.kind,
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    apply_object(inner, object);
    let stored = inner
        .store
        .lock()
        .unwrap()
        .objects
        .get(&(kind, namespace, name))
        .cloned();
    Ok(json_response(
        StatusCode::CREATED,
        &stored.unwrap_or(Value::Null),
    ))
}

/// A response, or an error response.
type Answer = Result<Response<ResponseBody>, Box<Response<ResponseBody>>>;

fn respond(inner: &Arc<Inner>, req: &Request<Incoming>) -> Answer {
    let path = req.uri().path();
    if path == "/version" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-fake",
                "platform": "linux/amd64",
            }),
        ));
    }
    let Some(route) = Route::parse(path) else {
        return Err(Box::new(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        )));
    };
    if req.method() != http::Method::GET {
        return Err(Box::new(status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the fake apiserver only serves GET (got {}); change objects with FakeApi::apply",
                req.method()
            ),
        )));
    }
    let params: BTreeMap<String, String> = parse_query(req.uri().query().unwrap_or(""))
        .into_iter()
        .collect();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let bad = |message: String| {
        Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            message,
        ))
    };
    let filter = Filter {
        kind: route.kind,
        namespace: route.namespace.clone(),
        labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| bad(format!("unable to parse requirement: {e}")))?,
        fields: FieldSelector::parse(
            route.kind,
            params.get("fieldSelector").map_or("", String::as_str),
        )
        .map_err(bad)?,
        metadata_only,
    };

    if let Some(name) = &route.name {
        let namespace = route.namespace.clone().unwrap_or_default();
        let store = inner.store.lock().unwrap();
        return match store
            .objects
            .get(&(route.kind.kind, namespace, name.clone()))
        {
            Some(obj) => Ok(json_response(StatusCode::OK, &filter.render(obj))),
            None => Err(Box::new(not_found(route.kind, name))),
        };
    }

    if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
        return start_watch(inner, filter, &params);
    }

    // A list. `limit` and `continue` are ignored: everything comes in one page.
    let store = inner.store.lock().unwrap();
    if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
        let rv = parse_rv(params.get("resourceVersion"))
            .map_err(bad)?
            .unwrap_or(0);
        if rv < store.history_start {
            return Err(Box::new(expired(rv, store.rv)));
        }
    }
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((kind, _, _), obj)| *kind == route.kind.kind && filter.matches(obj))
        .map(|(_, obj)| filter.render(obj))
        .collect();
    let (api_version, kind) = if metadata_only {
        ("meta.k8s.io/v1", "PartialObjectMetadataList".to_owned())
    } else {
        (route.kind.api_version, format!("{}List", route.kind.kind))
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": { "resourceVersion": store.rv.to_string() },
            "items": items,
        }),
    ))
}

fn start_watch(inner: &Arc<Inner>, filter: Filter, params: &BTreeMap<String, String>) -> Answer {
    let bad = |message: String| {
        Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            message,
        ))
    };
    let requested = parse_rv(params.get("resourceVersion")).map_err(bad)?;
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = params.get("sendInitialEvents").map(String::as_str) == Some("true");
    if initial_events && !bookmarks {
        return Err(bad(
            "sendInitialEvents requires setting allowWatchBookmarks to true".into(),
        ));
    }
    let timeout = match params.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| bad(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };

    let mut stream = WatchStream {
        inner: inner.clone(),
        filter,
        last_rv: 0,
        pending: VecDeque::new(),
        finish_after_pending: false,
        done: false,
        deadline: Instant::now() + timeout,
        bookmarks,
        next_bookmark: None,
        changed: inner.changed.subscribe(),
        drops: inner.drops.subscribe(),
        bookmark_requests: inner.bookmarks.subscribe(),
        hang: inner.hang.subscribe(),
        counted: None,
    };
    {
        let store = inner.store.lock().unwrap();
        match requested {
            // Unset or "0", or a streaming list: the current objects as ADDED first.
            None | Some(0) => stream.send_current(&store, initial_events),
            Some(_) if initial_events => stream.send_current(&store, true),
            Some(rv) if rv < store.history_start => {
                if inner.gone_as_http.load(Ordering::SeqCst) {
                    return Err(Box::new(expired(rv, store.rv)));
                }
                let line = event_line("ERROR", &expired_status(rv, store.rv));
                return Ok(watch_response(futures::stream::iter([Ok(Frame::data(
                    line,
                ))])));
            }
            Some(rv) => stream.last_rv = rv.min(store.rv),
        }
    }
    stream.counted = Some(Counted::new(&inner.open_watches));
    stream.schedule_bookmark();
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let frame = stream.next_frame().await?;
        Some((frame, stream))
    });
    Ok(watch_response(body))
}

fn watch_response<S>(events: S) -> Response<ResponseBody>
where
    S: futures::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(events).boxed_unsync())
        .unwrap()
}

/// One open watch: replays history after `last_rv`, then follows changes.
struct WatchStream {
    inner: Arc<Inner>,
    filter: Filter,
    /// Every change up to this rv has been considered (queued or filtered out).
    last_rv: u64,
    pending: VecDeque<Bytes>,
    /// End cleanly once `pending` is sent (after an ERROR event).
    finish_after_pending: bool,
    done: bool,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Option<Instant>,
    changed: watch::Receiver<u64>,
    drops: watch::Receiver<u64>,
    bookmark_requests: watch::Receiver<u64>,
    hang: watch::Receiver<bool>,
    /// Counts this stream in `open_watches` while it exists.
    counted: Option<Counted>,
}

impl WatchStream {
    fn send_current(&mut self, store: &Store, initial_events_end: bool) {
        for ((kind, _, _), obj) in &store.objects {
            if *kind == self.filter.kind.kind && self.filter.matches(obj) {
                self.pending
                    .push_back(event_line("ADDED", &self.filter.render(obj)));
            }
        }
        self.last_rv = store.rv;
        if initial_events_end {
            self.pending.push_back(self.bookmark(true));
        }
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let (api_version, kind) = if self.filter.metadata_only {
            ("meta.k8s.io/v1", "PartialObjectMetadata")
        } else {
            (self.filter.kind.api_version, self.filter.kind.kind)
        };
        let mut metadata = json!({ "resourceVersion": self.last_rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        event_line(
            "BOOKMARK",
            &json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }),
        )
    }

    fn schedule_bookmark(&mut self) {
        let ms = self.inner.bookmark_interval_ms.load(Ordering::SeqCst);
        self.next_bookmark =
            (self.bookmarks && ms > 0).then(|| Instant::now() + Duration::from_millis(ms));
    }

    /// Queues every matching change after `last_rv`.
    fn catch_up(&mut self) {
        self.changed.borrow_and_update();
        let store = self.inner.store.lock().unwrap();
        if self.last_rv < store.forgotten_up_to {
            // This watch fell behind a compaction, as an etcd watcher can.
            self.pending
                .push_back(event_line("ERROR", &expired_status(self.last_rv, store.rv)));
            self.finish_after_pending = true;
            return;
        }
        let from = store.history.partition_point(|c| c.rv <= self.last_rv);
        for change in &store.history[from..] {
            if let Some((event, obj)) = self.filter.translate(change) {
                self.pending.push_back(event_line(event, &obj));
            }
        }
        self.last_rv = self.last_rv.max(store.rv);
    }

    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if self.done {
                return None;
            }
            if *self.hang.borrow_and_update() {
                tokio::select! {
                    _ = self.hang.changed() => {}
                    _ = self.drops.changed() => return self.abort(),
                }
                continue;
            }
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(Frame::data(line)));
            }
            if self.finish_after_pending || Instant::now() >= self.deadline {
                self.done = true;
                return None;
            }
            self.catch_up();
            if !self.pending.is_empty() {
                continue;
            }
            let bookmark_at = self.next_bookmark;
            tokio::select! {
                biased;
                _ = self.drops.changed() => return self.abort(),
                _ = self.hang.changed() => {}
                _ = self.changed.changed() => {}
                _ = self.bookmark_requests.changed() => {
                    self.bookmark_requests.borrow_and_update();
                    if self.bookmarks {
                        self.catch_up();
                        if !self.finish_after_pending {
                            self.pending.push_back(self.bookmark(false));
                        }
                    }
                }
                _ = sleep_until_some(bookmark_at) => {
                    self.catch_up();
                    if !self.finish_after_pending {
                        self.pending.push_back(self.bookmark(false));
                    }
                    self.schedule_bookmark();
                }
                _ = tokio::time::sleep_until(self.deadline) => {}
            }
        }
    }

    /// Ends the response with an error: hyper closes the connection without the last chunk.
    fn abort(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.done = true;
        Some(Err("watch dropped by the fake apiserver".into()))
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Routing, selectors, rendering

struct Route {
    kind: &'static KindInfo,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    /// `/api/v1[/namespaces/{ns}]/{plural}[/{name}]` or
    /// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}]`.
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return None,
        };
        let kind = KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.plural == plural)?;
        Some(Route {
            kind,
            namespace: namespace.map(percent_decode),
            name: name.map(percent_decode),
        })
    }
}

/// What one request asked for: which objects, and in which shape.
struct Filter {
    kind: &'static KindInfo,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    metadata_only: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let in_namespace = match &self.namespace {
            Some(ns) => obj["metadata"]["namespace"].as_str() == Some(ns.as_str()),
            None => true,
        };
        in_namespace && self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn render(&self, obj: &Value) -> Value {
        if self.metadata_only {
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": obj["metadata"],
            })
        } else {
            obj.clone()
        }
    }

    /// What a watch with this filter sees of a change, as the apiserver's watch cache decides it:
    /// an update that leaves the selection is a DELETED of the previous state (at the new rv),
    /// one that enters it is an ADDED.
    fn translate(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.kind != self.kind.kind {
            return None;
        }
        if let Some(ns) = &self.namespace {
            if *ns != change.namespace {
                return None;
            }
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let (event, obj) = match change.change {
            ChangeType::Added => ("ADDED", now.then(|| change.object.clone())?),
            ChangeType::Deleted => ("DELETED", before.then(|| change.object.clone())?),
            ChangeType::Modified => match (before, now) {
                (true, true) => ("MODIFIED", change.object.clone()),
                (false, true) => ("ADDED", change.object.clone()),
                (true, false) => {
                    let mut last = change.previous.clone().unwrap();
                    last["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                    ("DELETED", last)
                }
                (false, false) => return None,
            },
        };
        Some((event, self.render(&obj)))
    }
}

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`; comma = AND.
#[derive(Debug, Default)]
struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(label_key(key)?)
            } else if let Some((key, values)) = term.split_once(" notin ") {
                Requirement::NotIn(label_key(key)?, value_set(values)?)
            } else if let Some((key, values)) = term.split_once(" in ") {
                Requirement::In(label_key(key)?, value_set(values)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(label_key(key)?, label_value(value)?)
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(label_key(key)?, label_value(value)?)
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(label_key(key)?, label_value(value)?)
            } else {
                Requirement::Exists(label_key(term)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

fn value_set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized value set, got {values:?}"))?;
    inner.split(',').map(label_value).collect()
}

/// A field selector: `path=v`, `path==v`, `path!=v`, comma = AND, over the fields a real
/// apiserver supports for these kinds.
#[derive(Debug, Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(kind: &KindInfo, text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = field.trim();
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || (kind.kind == "Pod"
                    && matches!(
                        field,
                        "spec.nodeName"
                            | "spec.restartPolicy"
                            | "spec.schedulerName"
                            | "spec.serviceAccountName"
                            | "status.phase"
                            | "status.podIP"
                            | "status.nominatedNodeName"
                    ));
            if !supported {
                return Err(format!(
                    "field label not supported: {field} (for {})",
                    kind.plural
                ));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = obj.pointer(&pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

fn parse_rv(text: Option<&String>) -> Result<Option<u64>, String> {
    match text.map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid resourceVersion {s:?}")),
    }
}

/// Splits a query string into decoded pairs (`+` is a space, `%XX` a byte).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": event, "object": object })).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|e: Infallible| match e {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn status_json(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn status_response(code: StatusCode, reason: &str, message: String) -> Response<ResponseBody> {
    json_response(code, &status_json(code, reason, message))
}

fn not_found(kind: &KindInfo, name: &str) -> Response<ResponseBody> {
    let mut status = status_json(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural),
    );
    status["details"] = json!({ "name": name, "kind": kind.plural });
    json_response(StatusCode::NOT_FOUND, &status)
}

fn expired_status(rv: u64, current: u64) -> Value {
    status_json(
        StatusCode::GONE,
        "Expired",
        format!("too old resource version: {rv} ({current})"),
    )
}

fn expired(rv: u64, current: u64) -> Response<ResponseBody> {
    json_response(StatusCode::GONE, &expired_status(rv, current))
}

/// Now as RFC 3339 UTC with second precision, the shape of `metadata.creationTimestamp`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
