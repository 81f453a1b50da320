//! The admin API on its own listener (loopback by default): health, readiness, metrics and a JSON
//! view of the current snapshot, and the canary weight override. Mutating calls need the configured
//! token when one is set, and are refused when none is set on a listener reachable beyond loopback:
//! an open admin API would let anyone who can reach it move every request to the canary.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::canary::CanaryStatus;
use crate::control::Command;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{EndpointState, Role, Snapshot, Snapshots, Split, Weight};

/// Serves the admin API until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Admin, mut shutdown: Shutdown) {
    let admin = Arc::new(admin);
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(req).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.wait() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// What the admin API reads and whom it asks to change things.
pub struct Admin {
    pub snapshots: Snapshots,
    pub metrics: Arc<Metrics>,
    pub canary: watch::Receiver<CanaryStatus>,
    pub commands: mpsc::Sender<Command>,
    /// Who may make mutating calls.
    pub guard: Guard,
    /// Endpoints come from the config's static list: an empty one can only answer 503, so the
    /// instance is not ready then (a Kubernetes Service may legitimately have no endpoints for a
    /// while; the instance is ready once it has synced).
    pub static_discovery: bool,
}

/// Who may make mutating admin calls.
#[derive(Clone, Debug, PartialEq)]
pub enum Guard {
    /// Anyone who reaches the listener: it is on loopback and no token is configured.
    Loopback,
    /// Callers presenting `Authorization: Bearer <token>`.
    Token(Arc<str>),
    /// Nobody: the listener is reachable beyond loopback and no token is configured.
    Refused,
}

impl Guard {
    /// The guard for an admin API listening on `listen` with `token`.
    pub fn new(listen: std::net::SocketAddr, token: Option<Arc<str>>) -> Self {
        match token {
            Some(token) => Guard::Token(token),
            None if listen.ip().is_loopback() => Guard::Loopback,
            None => Guard::Refused,
        }
    }
}

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(
        "mutating admin calls are off: admin.listen is reachable beyond loopback and neither \
         admin.token nor admin.token_file is set"
    )]
    Refused,
    #[error("{0}")]
    BadRequest(String),
    #[error("the control loop is not running")]
    Unavailable,
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Refused => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 4096;

impl Admin {
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/canary" && (req.method() == Method::PUT || req.method() == Method::DELETE) {
            return match self.change_canary(req).await {
                Ok(status) => json(&status),
                Err(error) => {
                    let mut response = Response::new(Full::from(format!("{error}\n")));
                    *response.status_mut() = error.status();
                    if matches!(error, AdminError::Unauthorized) {
                        response
                            .headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    }
                    response
                }
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let snapshot = self.snapshots.load();
                if snapshot.generation() == 0 {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no endpoint set loaded yet\n",
                    )
                } else if self.static_discovery && snapshot.listed().is_empty() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the static endpoint list is empty: every request is answered 503\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                self.record_ejections();
                self.record_load();
                let mut response = Response::new(Full::from(self.metrics.encode()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/endpoints" => {
                let snapshot = self.snapshots.load();
                json(&EndpointsView::of(&snapshot))
            }
            "/canary" => json(&*self.canary.borrow()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /endpoints /canary\n",
            ),
        }
    }

    fn record_ejections(&self) {
        let snapshot = self.snapshots.load();
        let now = crate::snapshot::health::now_ms(std::time::Instant::now());
        let mut rows: Vec<(&str, &str, i64)> = Vec::new();
        for l in snapshot.listed() {
            let key = (l.endpoint.version().as_str(), l.role.as_str());
            let ejected = i64::from(l.endpoint.health().ejected_at(now));
            match rows.iter_mut().find(|r| (r.0, r.1) == key) {
                Some(row) => row.2 += ejected,
                None => rows.push((key.0, key.1, ejected)),
            }
        }
        self.metrics.set_ejected_counts(rows);
    }

    /// Requests in flight and open upstream connections, summed over the snapshot's endpoints
    /// (counted here, at scrape time, so that the request path writes no shared gauge).
    fn record_load(&self) {
        let snapshot = self.snapshots.load();
        let (mut in_flight, mut connections) = (0, 0);
        for l in snapshot.listed() {
            in_flight += l.endpoint.in_flight();
            let pool = l.endpoint.pool();
            connections += pool.h1_connections() + pool.h2_connections();
        }
        self.metrics.set_load(in_flight, connections);
    }

    /// `PUT /canary {"weight": N}` sets this instance's override; `DELETE /canary` clears it.
    async fn change_canary(&self, req: Request<Incoming>) -> Result<CanaryStatus, AdminError> {
        self.authorize(req.headers())?;
        let weight = if req.method() == Method::DELETE {
            None
        } else {
            let body = Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| AdminError::BadRequest(format!("cannot read the body: {e}")))?
                .to_bytes();
            Some(parse_weight_body(&body)?)
        };
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SetCanaryWeight(weight, reply))
            .await
            .map_err(|_| AdminError::Unavailable)?;
        answer.await.map_err(|_| AdminError::Unavailable)
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), AdminError> {
        let token = match &self.guard {
            Guard::Loopback => return Ok(()),
            Guard::Refused => return Err(AdminError::Refused),
            Guard::Token(token) => token,
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AdminError::Unauthorized)?;
        if constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(AdminError::Unauthorized)
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `{"weight": N}` with N a percentage from 0 to 100.
fn parse_weight_body(body: &[u8]) -> Result<Weight, AdminError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        weight: f64,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        AdminError::BadRequest(format!("expected a JSON body like {{\"weight\": 25}}: {e}"))
    })?;
    Weight::new(body.weight).ok_or_else(|| {
        AdminError::BadRequest(format!(
            "weight must be a percentage from 0 to 100, got {}",
            body.weight
        ))
    })
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).expect("admin views serialize");
    let mut response = Response::new(Full::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `GET /endpoints`: the current snapshot as JSON.
#[derive(Serialize)]
struct EndpointsView<'a> {
    generation: u64,
    canary: CanaryView<'a>,
    versions: Vec<VersionView<'a>>,
    endpoints: Vec<EndpointView<'a>>,
}

#[derive(Serialize)]
struct CanaryView<'a> {
    version: Option<&'a str>,
    /// `weighted` (the canary gets `weight` percent) or `by_endpoint_count` (like a Service).
    split: &'static str,
    weight: Option<f64>,
}

#[derive(Serialize)]
struct VersionView<'a> {
    version: &'a str,
    /// The container image tag, when discovery knows it.
    image: Option<&'a str>,
    role: &'static str,
    ready: usize,
    total: usize,
}

#[derive(Serialize)]
struct EndpointView<'a> {
    address: String,
    name: Option<&'a str>,
    version: &'a str,
    image: Option<&'a str>,
    role: &'static str,
    state: &'static str,
    in_flight: usize,
    /// `http1` or `h2c`.
    protocol: &'static str,
    /// Idle HTTP/1.1 keep-alive connections.
    idle_connections: usize,
    /// Open HTTP/2 connections (shared by every request).
    http2_connections: usize,
    /// Left out after consecutive failures (passive health).
    ejected: bool,
    /// The active health check verdict (true when checks are off).
    healthy: bool,
}

impl<'a> EndpointsView<'a> {
    fn of(snapshot: &'a Snapshot) -> Self {
        let now = crate::snapshot::health::now_ms(std::time::Instant::now());
        let (split, weight) = match snapshot.split() {
            Split::Weighted(w) => ("weighted", Some(w.percent())),
            Split::ByEndpointCount => ("by_endpoint_count", None),
        };
        let mut versions: Vec<VersionView<'a>> = Vec::new();
        for l in snapshot.listed() {
            let version = l.endpoint.version().as_str();
            let ready = usize::from(l.state == EndpointState::Ready);
            match versions
                .iter_mut()
                .find(|v| v.version == version && v.role == l.role.as_str())
            {
                Some(v) => {
                    v.ready += ready;
                    v.total += 1;
                }
                None => versions.push(VersionView {
                    version,
                    image: l.endpoint.image(),
                    role: l.role.as_str(),
                    ready,
                    total: 1,
                }),
            }
        }
        versions.sort_by_key(|v| (v.role == Role::Stable.as_str(), v.version));
        Self {
            generation: snapshot.generation(),
            canary: CanaryView {
                version: snapshot.canary_version().map(|v| v.as_str()),
                split,
                weight,
            },
            versions,
            endpoints: snapshot
                .listed()
                .iter()
                .map(|l| EndpointView {
                    address: l.endpoint.address().to_string(),
                    name: l.endpoint.name(),
                    version: l.endpoint.version().as_str(),
                    image: l.endpoint.image(),
                    role: l.role.as_str(),
                    state: l.state.as_str(),
                    in_flight: l.endpoint.in_flight(),
                    protocol: l.endpoint.pool().protocol().as_str(),
                    idle_connections: l.endpoint.pool().idle(),
                    http2_connections: l.endpoint.pool().h2_connections(),
                    ejected: l.endpoint.health().ejected_at(now),
                    healthy: l.endpoint.health().checked_healthy(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bodies_are_validated() {
        assert_eq!(
            parse_weight_body(br#"{"weight": 25}"#).unwrap().percent(),
            25.0
        );
        assert_eq!(
            parse_weight_body(br#"{"weight": 0.5}"#).unwrap().percent(),
            0.5
        );
        for bad in [
            &br#"{"weight": 120}"#[..],
            br#"{"weight": -1}"#,
            b"25",
            br#"{"wieght": 1}"#,
            b"",
        ] {
            assert!(
                matches!(parse_weight_body(bad), Err(AdminError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn without_a_token_only_a_loopback_listener_allows_mutating_calls() {
        let at = |addr: &str| addr.parse().unwrap();
        assert_eq!(Guard::new(at("127.0.0.1:9901"), None), Guard::Loopback);
        assert_eq!(Guard::new(at("[::1]:9901"), None), Guard::Loopback);
        assert_eq!(Guard::new(at("0.0.0.0:9901"), None), Guard::Refused);
        assert_eq!(Guard::new(at("10.0.0.7:9901"), None), Guard::Refused);
        let token: Arc<str> = Arc::from("t");
        assert_eq!(
            Guard::new(at("0.0.0.0:9901"), Some(token.clone())),
            Guard::Token(token)
        );
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-longer"));
    }
}
