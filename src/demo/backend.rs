//! A tiny in-process HTTP app that answers like the tutorials' kubia app, one per demo "pod".

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Starts a backend on `127.0.0.1:0` answering `This is <version> running in pod <pod>`.
pub async fn spawn(
    version: &str,
    pod: &str,
    mut shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let body = Bytes::from(format!("This is {version} running in pod {pod}\n"));
    let version = HeaderValue::from_str(version).map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.wait() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (body, version) = (body.clone(), version.clone());
            let service = service_fn(move |_req| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert("x-app-version", version.clone());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(address)
}
