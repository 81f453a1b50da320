//! A tiny in-process HTTP app that answers like the tutorials' kubia app, one per demo "pod".
//! Stopping it is abrupt, like a container killed without a preStop hook: open connections are
//! dropped mid-exchange.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Starts a pod's server answering `This is <version> running in pod <pod>`, on its own loopback
/// address `127.0.1.<ip>` where the system allows it (Linux routes all of 127/8), else on
/// 127.0.0.1. Serves until `shutdown`, then drops every connection at once.
pub async fn spawn(
    version: &str,
    pod: &str,
    ip: u8,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let own = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, ip)), 0);
    let listener = match TcpListener::bind(own).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
    };
    let address = listener.local_addr()?;
    let body = Bytes::from(format!("This is {version} running in pod {pod}\n"));
    let version = HeaderValue::from_str(version).map_err(std::io::Error::other)?;
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.wait() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (body, version) = (body.clone(), version.clone());
            let service = service_fn(move |_req| {
                let mut response = Response::new(Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert("x-app-version", version.clone());
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let connection =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    // The process is gone: the socket closes under whatever was in flight.
                    _ = stop.wait() => {}
                }
            });
        }
    });
    Ok(address)
}
