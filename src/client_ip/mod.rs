//! The real client address of a request.
//!
//! Limits are only as good as their key. [`ClientIpLayer`] works out the address of the
//! client behind a request once, and stores it as [`ClientIp`] in the request extensions for
//! every later layer ([`rate_limit`](crate::rate_limit)) and handler
//! (`Extension<ClientIp>`).
//!
//! The address starts from the TCP peer (axum's `ConnectInfo<SocketAddr>`). Only when that
//! peer is one of your **trusted proxies** is a forwarding header read, and then the chain is
//! walked from the right: the first address that is not itself a trusted proxy is the client.
//! Everything left of it was written by the client and is ignored, so a client cannot forge
//! its address by sending `X-Forwarded-For: 1.2.3.4` (tower_governor's `SmartIpKeyExtractor`
//! takes the leftmost entry, which any client controls). Headers from untrusted peers are
//! ignored.
//!
//! Bytes the client wrote cannot spoil the entry a proxy appended: the header is read as raw
//! bytes, element by element, so a non-ASCII byte makes only its own element unreadable,
//! and `Forwarded`'s quotes are paired from the right, so an unterminated quote on the left
//! swallows only what is left of it. When the walk meets an entry that is not an address
//! (garbage, `for=unknown`, an obfuscated identifier) before any untrusted address, that
//! entry was written by a trusted proxy, and nothing left of it is vouched for: the request
//! is refused with `400 Bad Request` ([`ClientIpError::NoUsableAddress`], event
//! `wsguard.client_ip.unresolvable`) rather than keyed by the proxy's own address, which
//! would put every such client into one shared bucket. (Until issue 13 such a request fell
//! back to the proxy's address.) A trusted proxy's request without the header is keyed by
//! the proxy itself. Nothing here panics.
//!
//! IPv4-mapped IPv6 peers (`::ffff:192.0.2.1`, what a dual-stack listener reports) are
//! converted to plain IPv4 first.
//!
//! # Keys and IPv6
//! One IPv6 client usually owns a whole /64, so keying limits by the full address lets it
//! rotate through 2^64 keys. [`KeyPrefix`] (default /32 for IPv4, /64 for IPv6) masks the
//! address into the network used as a key; the rate limiter and the quota layer take one in
//! their builders.
//!
//! # Configuration error
//! The peer address comes from `ConnectInfo`, which axum inserts only when the app is served
//! with `into_make_service_with_connect_info::<SocketAddr>()`. Without it the layer cannot
//! work: every request is answered `500 Internal Server Error` with a body that says so, an
//! error event `wsguard.client_ip.missing_connect_info` is emitted, and the
//! [`ClientIpError::MissingConnectInfo`] error is in the response extensions, with the crate's
//! [`Rejection`](crate::Rejection) ([`Rejection::ClientIp`](crate::Rejection::ClientIp)), as
//! in every rejection of this layer. It never panics. [`ClientIpLayer::on_rejection`] replaces
//! the response, with a hook over the `Rejection` as on every layer.
//!
//! # Deployment
//! Behind a reverse proxy the TCP peer is the proxy. List the proxies' addresses (or
//! networks) with [`ClientIpLayer::trusted_proxy`], and pick the one header that your
//! outermost proxy **overwrites or appends to** with [`ClientIpLayer::proxy_header`]
//! (default `X-Forwarded-For`). Only one header is honoured on purpose: a header that your
//! proxy passes through untouched is written entirely by the client.
//!
//! # Example
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, http::{Request, StatusCode}, routing::get, Extension};
//! use tower::ServiceExt;
//! use wsguard::client_ip::{ClientIp, ClientIpLayer, ProxyHeader};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/ws", get(|Extension(ClientIp(ip)): Extension<ClientIp>| async move { ip.to_string() }))
//!     .layer(
//!         ClientIpLayer::new()
//!             .trusted_proxy("10.0.0.0/8".parse::<ipnet::IpNet>()?)
//!             .proxy_header(ProxyHeader::XForwardedFor),
//!     );
//!
//! // A request relayed by a trusted proxy: the rightmost untrusted hop is the client.
//! let mut req = Request::get("/ws")
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")
//!     .body(Body::empty())?;
//! req.extensions_mut().insert(ConnectInfo("10.0.0.1:40000".parse::<SocketAddr>()?));
//! let res = app.clone().oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(res.into_body(), 64).await?;
//! assert_eq!(&body[..], b"203.0.113.9");
//!
//! // Served without `into_make_service_with_connect_info`: a clear 500, not a panic.
//! let res = app.oneshot(Request::get("/ws").body(Body::empty())?).await?;
//! assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! # Ok(())
//! # }
//! ```

mod layer;
pub(crate) mod parse;
mod service;

use std::{fmt, net::IpAddr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::ConfigError;

pub use self::{layer::ClientIpLayer, service::ClientIpService};
pub use crate::core::ResponseFuture;
/// The network type of client keys ([`KeyPrefix::key`]) and trusted proxies
/// ([`ClientIpLayer::trusted_proxy`]), re-exported from the `ipnet` crate.
pub use ipnet::IpNet;

/// The client address that every later layer and handler keys on, stored in the request
/// extensions by [`ClientIpLayer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The network this address is keyed under: the address masked to `prefix`'s length
    /// (by default the /64 of an IPv6 address and the single IPv4 address).
    pub fn key(&self, prefix: KeyPrefix) -> IpNet {
        prefix.key(self.0)
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The prefix lengths used to turn a client address into a limit key. See the
/// [module docs](self#keys-and-ipv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyPrefix {
    v4: u8,
    v6: u8,
}

impl KeyPrefix {
    /// /32 for IPv4 (one address) and /64 for IPv6 (one subnet, what one client usually has).
    pub const DEFAULT: Self = Self { v4: 32, v6: 64 };

    /// Key IPv4 addresses by their `/v4` network and IPv6 addresses by their `/v6` network.
    /// Fails if `v4 > 32` or `v6 > 128`.
    pub fn new(v4: u8, v6: u8) -> Result<Self, ConfigError> {
        if v4 > 32 {
            return Err(ConfigError::PrefixTooLong { len: v4, max: 32 });
        }
        if v6 > 128 {
            return Err(ConfigError::PrefixTooLong { len: v6, max: 128 });
        }
        Ok(Self { v4, v6 })
    }

    /// The IPv4 prefix length.
    pub fn v4(&self) -> u8 {
        self.v4
    }

    /// The IPv6 prefix length.
    pub fn v6(&self) -> u8 {
        self.v6
    }

    /// The network `ip` is keyed under. IPv4-mapped IPv6 addresses are keyed as IPv4.
    pub fn key(&self, ip: IpAddr) -> IpNet {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Ipv4Net::new(v4, self.v4)
                .map(|n| IpNet::V4(n.trunc()))
                .unwrap_or(IpNet::V4(Ipv4Net::from(v4))),
            IpAddr::V6(v6) => Ipv6Net::new(v6, self.v6)
                .map(|n| IpNet::V6(n.trunc()))
                .unwrap_or(IpNet::V6(Ipv6Net::from(v6))),
        }
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which forwarding header a trusted proxy's request is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the de-facto standard).
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
    /// `X-Real-IP: client` (nginx's single-address header; the chain has one hop).
    XRealIp,
}

impl ProxyHeader {
    /// The header's name.
    pub fn name(&self) -> http::HeaderName {
        match self {
            Self::XForwardedFor => http::HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => http::header::FORWARDED,
            Self::XRealIp => http::HeaderName::from_static("x-real-ip"),
        }
    }
}

/// Why a request has no client address. Carried in the response extensions of the
/// rejection (`500` for a configuration error, `400` for an unusable forwarding chain).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientIpError {
    /// The request has no `ConnectInfo<SocketAddr>`: the app was not served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. A configuration error (`500`).
    MissingConnectInfo,
    /// The request comes from a trusted proxy, but walking its forwarding header from the
    /// right meets an entry that is not an address (`unknown`, an obfuscated identifier,
    /// garbage) before any untrusted address (`400`). See [`ClientIpLayer::resolve`].
    NoUsableAddress,
}

impl ClientIpError {
    /// The status code of the default rejection response.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::MissingConnectInfo => http::StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoUsableAddress => http::StatusCode::BAD_REQUEST,
        }
    }

    /// A stable snake_case name of the cause, as used in the `cause` field of events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingConnectInfo => "missing_connect_info",
            Self::NoUsableAddress => "no_usable_address",
        }
    }
}

impl fmt::Display for ClientIpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingConnectInfo => f.write_str(
                "wsguard: the peer address is missing; serve the app with \
                 into_make_service_with_connect_info::<SocketAddr>()",
            ),
            Self::NoUsableAddress => f.write_str(
                "no usable client address in the forwarding header (forwarded, \
                 x-forwarded-for or x-real-ip) of a trusted proxy",
            ),
        }
    }
}

impl std::error::Error for ClientIpError {}

#[cfg(test)]
mod tests;
