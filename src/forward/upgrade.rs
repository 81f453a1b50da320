//! HTTP/1.1 protocol upgrades (WebSocket and the like) passed through: the `Upgrade` handshake
//! goes to the endpoint, and after its `101` the two connections are spliced until either side
//! closes. The tunnel stays on the endpoint that accepted it and counts as in flight there.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::snapshot::InFlight;

use super::body::{self, ResponseBody};

/// The client's side of an upgrade it asked for.
pub(super) struct ClientUpgrade {
    protocol: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Takes the upgrade a request asks for (`Connection: upgrade` plus `Upgrade: <protocol>` on
/// HTTP/1.1), if any. Must run before the request's headers are rewritten.
pub(super) fn requested<B>(req: &mut Request<B>) -> Option<ClientUpgrade> {
    // Most requests carry no `Upgrade`: one lookup and out.
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| ClientUpgrade {
        protocol,
        on_upgrade: hyper::upgrade::on(req),
    })
}

impl ClientUpgrade {
    /// Puts back the two hop-by-hop headers the endpoint needs to see the upgrade request.
    pub(super) fn restore_request_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// Answers the client with the endpoint's `101` and splices both connections in the
    /// background. `open` keeps shutdown's drain waiting for the tunnel.
    pub(super) fn tunnel(
        self,
        mut upstream: Response<Incoming>,
        in_flight: InFlight,
        open: mpsc::Sender<()>,
    ) -> Response<ResponseBody> {
        let upstream_upgrade = hyper::upgrade::on(&mut upstream);
        let mut response = Response::new(body::local(""));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = upstream.headers().clone();
        response
            .headers_mut()
            .append(header::VIA, HeaderValue::from_static("1.1 tidegate"));
        let client_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let _busy = (in_flight, open);
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, endpoint)) => {
                    let (mut client, mut endpoint) = (TokioIo::new(client), TokioIo::new(endpoint));
                    if let Err(error) =
                        tokio::io::copy_bidirectional(&mut client, &mut endpoint).await
                    {
                        tracing::debug!(%error, "upgraded connection ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
            }
        });
        response
    }
}
