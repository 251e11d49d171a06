use std::{
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use axum::{body::Body, extract::ConnectInfo, response::Response};
use http::{HeaderMap, Request, StatusCode, header};
use tower::Service;

use super::{
    ClientIp, ClientIpError, ClientIpLayer, ProxyHeader, ResponseFuture,
    parse::{self, Hop},
};

/// Middleware that stores the real client address as [`ClientIp`] in the request extensions.
/// Made by [`ClientIpLayer`]; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct ClientIpService<S> {
    inner: S,
    config: ClientIpLayer,
}

impl<S> ClientIpService<S> {
    pub(crate) fn new(inner: S, config: ClientIpLayer) -> Self {
        Self { inner, config }
    }

    /// A [`ClientIpLayer`] with default settings.
    pub fn layer() -> ClientIpLayer {
        ClientIpLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl ClientIpLayer {
    /// The client address of a request from `peer` carrying `headers`: `peer` itself unless
    /// it is a trusted proxy, else the rightmost untrusted hop of the configured header.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = self.header.name();
        let mut values = Vec::new();
        for value in headers.get_all(&name) {
            match value.to_str() {
                Ok(v) => values.push(v),
                Err(_) => {
                    tracing::debug!(
                        name: "wsguard.client_ip.header_unusable",
                        header = %name,
                        peer = %peer,
                        "forwarding header is not visible ASCII; using the peer address"
                    );
                    return peer;
                }
            }
        }
        let hops = match self.header {
            ProxyHeader::XForwardedFor => parse::x_forwarded_for(values),
            ProxyHeader::Forwarded => parse::forwarded(values),
            ProxyHeader::XRealIp => {
                // A single address; several header lines are ambiguous.
                match values.as_slice() {
                    [one] => vec![parse::parse_addr(one)],
                    [] => Vec::new(),
                    _ => vec![Hop::Unusable],
                }
            }
        };
        let mut leftmost_trusted = None;
        for hop in hops.iter().rev() {
            match hop {
                Hop::Ip(ip) => {
                    let ip = ip.to_canonical();
                    if !self.is_trusted(ip) {
                        return ip;
                    }
                    leftmost_trusted = Some(ip);
                }
                Hop::Unusable => {
                    tracing::debug!(
                        name: "wsguard.client_ip.header_unusable",
                        header = %name,
                        peer = %peer,
                        "forwarding header has an unreadable hop; using the peer address"
                    );
                    return peer;
                }
            }
        }
        // Every hop is a trusted proxy (or there is no header): the leftmost one is the
        // furthest address we know.
        leftmost_trusted.unwrap_or(peer)
    }

    fn reject(&self, error: ClientIpError) -> Response {
        let mut response = match &self.on_rejection {
            Some(f) => f(&error),
            None => {
                let mut r = Response::new(Body::from(format!("{error}\n")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
        };
        response.extensions_mut().insert(error);
        response
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for ClientIpService<S>
where
    S: Service<Request<ReqBody>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
        else {
            tracing::error!(
                name: "wsguard.client_ip.missing_connect_info",
                cause = "missing_connect_info",
                "no ConnectInfo<SocketAddr> in the request: serve the app with \
                 into_make_service_with_connect_info::<SocketAddr>()"
            );
            return ResponseFuture::rejected(self.config.reject(ClientIpError::MissingConnectInfo));
        };
        let ip = self.config.resolve(peer.ip(), req.headers());
        req.extensions_mut().insert(ClientIp(ip));
        ResponseFuture::future(self.inner.call(req))
    }
}
