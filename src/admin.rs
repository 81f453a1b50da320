//! The admin API on its own listener (loopback by default): health, readiness, metrics and a JSON
//! view of the current snapshot. Read-only for now; mutating calls will require the configured token.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{EndpointState, Role, Snapshot, Snapshots, Split};

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    snapshots: Snapshots,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    let admin = Arc::new(Admin { snapshots, metrics });
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
                async move { Ok::<_, Infallible>(admin.route(&req)) }
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

struct Admin {
    snapshots: Snapshots,
    metrics: Arc<Metrics>,
}

impl Admin {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.snapshots.load().generation() > 0 {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no endpoint set loaded yet\n",
                    )
                }
            }
            "/metrics" => {
                let mut response = Response::new(Full::from(self.metrics.encode()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/endpoints" => {
                let snapshot = self.snapshots.load();
                let view = EndpointsView::of(&snapshot);
                let json = serde_json::to_vec_pretty(&view).expect("the view serializes");
                let mut response = Response::new(Full::from(json));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /endpoints\n",
            ),
        }
    }
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
    idle_connections: usize,
}

impl<'a> EndpointsView<'a> {
    fn of(snapshot: &'a Snapshot) -> Self {
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
                    idle_connections: l.endpoint.pool().idle(),
                })
                .collect(),
        }
    }
}
