use std::{fmt, sync::Arc};

use axum::response::IntoResponse;
use ipnet::IpNet;
use tower::Layer;

use super::{ClientIpService, ProxyHeader};
use crate::{ConfigError, Rejection, rejection::OnRejection};

/// Layer that resolves the real client address and stores it as
/// [`ClientIp`](super::ClientIp) in the request extensions. See the [module docs](super).
#[derive(Clone)]
pub struct ClientIpLayer {
    pub(crate) trusted: Arc<[IpNet]>,
    pub(crate) header: ProxyHeader,
    pub(crate) on_rejection: Option<OnRejection>,
}

impl ClientIpLayer {
    /// A layer that trusts no proxy (the client is the TCP peer) and, once proxies are
    /// trusted, reads `X-Forwarded-For`.
    #[must_use]
    pub fn new() -> Self {
        Self {
            trusted: Arc::from(Vec::new()),
            header: ProxyHeader::XForwardedFor,
            on_rejection: None,
        }
    }

    /// Trusts the proxy (or proxies) at `net`: an `IpNet` such as `10.0.0.0/8`, or a single
    /// address. Repeated calls add. Default: no trusted proxy.
    #[must_use]
    pub fn trusted_proxy(mut self, net: impl Into<IpNet>) -> Self {
        let mut list = self.trusted.to_vec();
        list.push(net.into());
        self.trusted = list.into();
        self
    }

    /// Like [`trusted_proxy`](Self::trusted_proxy), parsing `net` as a CIDR (`10.0.0.0/8`) or
    /// a single address (`192.0.2.1`, `2001:db8::1`). Repeated calls add.
    pub fn trusted_proxy_str(self, net: &str) -> Result<Self, ConfigError> {
        let net = net.trim();
        let parsed = net
            .parse::<IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| ConfigError::InvalidProxy {
                value: net.to_owned(),
            })?;
        Ok(self.trusted_proxy(parsed))
    }

    /// The header a trusted proxy's request is read from. Replaces; default
    /// [`ProxyHeader::XForwardedFor`]. Pick the one your outermost proxy sets: one that it
    /// passes through untouched is the client's own claim.
    #[must_use]
    pub fn proxy_header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// Builds the response for a request that cannot be served, a missing `ConnectInfo`
    /// (default `500`) or a trusted proxy's forwarding header without a usable client
    /// address (default `400`), from the [`Rejection`] (always [`Rejection::ClientIp`]
    /// here). Replaces the previous hook; default: none, which answers
    /// [`Rejection::into_response`] ([`ClientIpError::status`](super::ClientIpError::status)
    /// with a plain-text explanation). The [`ClientIpError`](super::ClientIpError) and the
    /// [`Rejection`] are put in the response extensions either way.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// Whether `ip` is in a trusted proxy network.
    pub(crate) fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

impl Default for ClientIpLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClientIpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIpLayer")
            .field("trusted", &self.trusted)
            .field("header", &self.header)
            .field("on_rejection", &self.on_rejection)
            .finish()
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService::new(inner, self.clone())
    }
}
