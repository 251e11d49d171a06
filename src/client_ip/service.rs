use std::{
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use axum::{extract::ConnectInfo, response::Response};
use http::{HeaderMap, HeaderValue, Request};
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

    crate::core::define_inner_service_accessors!();
}

impl ClientIpLayer {
    /// The client address of a request from `peer` carrying `headers`: `peer` itself unless
    /// it is a trusted proxy; else the chain of the configured header walked from the right,
    /// skipping trusted proxies, and the first other address is the client. Without the
    /// header (or with only trusted hops in it) the leftmost trusted hop is the client: the
    /// request was made by a proxy itself.
    ///
    /// # Errors
    ///
    /// [`ClientIpError::NoUsableAddress`] when, walking from the right, an entry that cannot
    /// be read as an address (`unknown`, an obfuscated identifier, garbage) comes before any
    /// untrusted address. That entry was written by a trusted proxy (client bytes cannot
    /// reach it: see the [module docs](super)), so whatever is left of it was vouched for by
    /// nobody we trust; keying the request by the proxy's own address instead would put
    /// every such client into one shared bucket.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, ClientIpError> {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let name = self.header.name();
        let values = headers.get_all(&name).iter().map(HeaderValue::as_bytes);
        let hops = match self.header {
            ProxyHeader::XForwardedFor => parse::x_forwarded_for(values),
            ProxyHeader::Forwarded => parse::forwarded(values),
            ProxyHeader::XRealIp => {
                // A single address; several header lines are ambiguous.
                let values: Vec<&[u8]> = values.collect();
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
                        return Ok(ip);
                    }
                    leftmost_trusted = Some(ip);
                }
                Hop::Unusable => return Err(ClientIpError::NoUsableAddress),
            }
        }
        // Every hop is a trusted proxy (or there is no header): the leftmost one is the
        // furthest address we know.
        Ok(leftmost_trusted.unwrap_or(peer))
    }

    fn reject(&self, error: ClientIpError) -> Response {
        crate::rejection::reject(self.on_rejection.as_ref(), error)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientIpService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

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
        let ip = match self.config.resolve(peer.ip(), req.headers()) {
            Ok(ip) => ip,
            Err(error) => {
                tracing::warn!(
                    name: "wsguard.client_ip.unresolvable",
                    cause = error.as_str(),
                    header = %self.config.header.name(),
                    peer = %peer.ip(),
                    "request refused: no usable client address in the forwarding header"
                );
                return ResponseFuture::rejected(self.config.reject(error));
            }
        };
        req.extensions_mut().insert(ClientIp(ip));
        ResponseFuture::future(self.inner.call(req))
    }
}
