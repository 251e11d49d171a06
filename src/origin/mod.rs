//! Origin checks for WebSocket handshakes: the defence against cross-site WebSocket
//! hijacking.
//!
//! Browsers apply no CORS to a WebSocket upgrade: any page on any site can open a socket to
//! your server, and the browser attaches the visitor's cookies. What the browser does do is
//! send the page's origin in the `Origin` header of the handshake, which a page cannot forge.
//! [`OriginGuardLayer`] checks it before the upgrade and answers `403 Forbidden` to origins
//! that are not allowed.
//!
//! # What is allowed
//!
//! - **Same origin** (the default when nothing else is configured): the `Origin` must name
//!   the request's own host and port (from the `Host` header, or the URI's authority on
//!   HTTP/2). The scheme is compared when the request carries one (HTTP/2, absolute-form
//!   URIs) or the guard is told the server is TLS-only ([`OriginGuardLayer::tls`]); on
//!   plain HTTP/1.1 the server cannot know whether a TLS proxy sits in front, so `http`
//!   and `https` are both accepted there, with the port compared in either case. Because
//!   it trusts `Host`, a domain name counts only when it is an allowed host (see
//!   [Allowed hosts](#allowed-hosts)).
//! - **Exact origins** ([`OriginGuardLayer::allow_origin`]): compared after canonicalisation
//!   (RFC 6454: lowercase scheme and host, default port elided, no trailing slash, IDN hosts
//!   in punycode), so `HTTPS://Example.COM:443/` and `https://example.com` are the same.
//! - **Subdomain wildcards** ([`OriginGuardLayer::allow_origin_pattern`]): `https://*.example.com`
//!   matches `https://a.example.com` and `https://a.b.example.com`, never `https://example.com`
//!   itself, `https://evilexample.com` or `https://example.com.evil.net`; scheme and port must
//!   match exactly. Patterns that would cover a public suffix (`https://*.com`,
//!   `https://*.co.uk`, `https://*.github.io`) or everything (`*`) are refused when the layer
//!   is built.
//! - **A predicate** ([`OriginGuardLayer::allow_if`]): any closure over the parsed [`Origin`]
//!   and the request parts.
//! - **Any origin** ([`OriginGuardLayer::dangerously_allow_any_origin`]): turns the check off
//!   for origins that parse; malformed and `null` origins are still refused.
//!
//! The alternatives add up: an origin is allowed when any configured one allows it. Once
//! anything is configured, same-origin applies only if [`OriginGuardLayer::allow_same_origin`]
//! is called too.
//!
//! # Allowed hosts
//!
//! `Host` is written by the browser from the page's own address, so same-origin is only
//! as good as the server's idea of its own names. With **DNS rebinding** an attacker serves
//! a page from `http://attacker.example:8000`, then re-points `attacker.example` at your
//! server's address: the page's handshake carries `Host: attacker.example:8000` and
//! `Origin: http://attacker.example:8000`, which look same-origin. (Cookies for your site are
//! not sent, but anything that trusts network position is exposed: a development server on
//! `127.0.0.1`, an intranet service.)
//!
//! [`OriginGuardLayer::allow_host`] lists the names the server answers to, like Django's
//! `ALLOWED_HOSTS`. Once any is listed, every checked handshake must carry an allowed
//! `Host`, whatever rule decides its origin, else `403` ([`OriginError::HostNotAllowed`]).
//! Without allowed hosts the same-origin rule trusts only hosts that DNS cannot rebind: IP
//! literals (`127.0.0.1:8000`, `[::1]:8000`) and `localhost` with the names below it; a
//! domain `Host` is refused with [`OriginError::HostNotAllowed`]. So local development
//! works unconfigured, and a deployment under a domain name says which names are its own.
//! (Before issue 13 any `Host` was trusted.) Explicit origin lists do not depend on `Host`
//! and need no allowed hosts, though listing them is still a good idea.
//!
//! # TLS
//!
//! A handshake is known to arrive over TLS when the guard is told so
//! ([`OriginGuardLayer::tls`]: the server, or every proxy in front of it, only speaks TLS) or
//! when its request URI says `https` (HTTP/2). Such a handshake refuses `http://` origins,
//! even listed ones ([`OriginError::InsecureOrigin`]): a page served over plain http can be
//! rewritten by anybody on the network path. `X-Forwarded-Proto` is not read, as a client
//! can send it; tell the guard instead.
//!
//! # Always refused
//!
//! `Origin: null` (sandboxed frames, `file:` pages, some redirects: no site to trust),
//! malformed values (anything but `scheme://host[:port]` in visible ASCII, which is all a
//! browser ever sends: whitespace, userinfo, paths, percent escapes and non-ASCII bytes are
//! refused rather than repaired) and requests with more than one `Origin` header.
//!
//! # A missing `Origin`
//!
//! Browsers always send `Origin` on a WebSocket handshake, so a handshake without one comes
//! from a non-browser client (a CLI, a server, a mobile app), which no cross-site page can
//! control. Such clients are allowed by default, because the origin check defends browsers'
//! ambient credentials and is no authentication; use [`OriginGuardLayer::require_origin`] to
//! refuse them.
//!
//! # Which requests are checked
//!
//! By default only WebSocket handshakes (an `Upgrade: websocket` request, or an HTTP/2
//! `CONNECT`) are checked and other requests pass through untouched.
//! [`OriginGuardLayer::check_all_requests`] checks every request that carries an `Origin`
//! header, for transports such as Socket.IO's long-polling that carry the same session over
//! plain HTTP.
//!
//! # Rejections
//!
//! `403 Forbidden` with a short plain-text reason that never echoes the header, the
//! [`OriginError`] in the response extensions, and one `tracing` event named
//! `wsguard.origin.rejected` with the fields `reason`, `origin` (canonical, or escaped and
//! truncated when malformed) and `host` (the `Host` header, escaped and truncated).
//! [`OriginGuardLayer::on_rejection`] replaces the response; its hook takes the crate's
//! [`Rejection`](crate::Rejection) ([`Rejection::Origin`](crate::Rejection::Origin)), as every
//! layer's does, and the [`OriginError`] and the `Rejection` are in the extensions whatever
//! it returns.
//!
//! # Example
//!
//! ```
//! use axum::{Router, body::Body, extract::ws::WebSocketUpgrade, response::Response, routing::get};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use wsguard::origin::OriginGuardLayer;
//!
//! async fn ws(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade.on_upgrade(|_socket| async {})
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = OriginGuardLayer::new()
//!     .allow_origin("https://app.example.com")?
//!     .allow_origin_pattern("https://*.example.org")?;
//! let app = Router::new().route("/ws", get(ws)).layer(guard);
//!
//! let handshake = |origin: &'static str| {
//!     Request::get("/ws")
//!         .header("host", "api.example.com")
//!         .header("origin", origin)
//!         .header("connection", "upgrade")
//!         .header("upgrade", "websocket")
//!         .header("sec-websocket-version", "13")
//!         .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!         .body(Body::empty())
//! };
//!
//! // A cross-site page is refused before the upgrade.
//! let res = app.clone().oneshot(handshake("https://evil.example.net")?).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//!
//! // An allowed origin reaches the handler. (`oneshot` has no connection to upgrade, so
//! // axum answers 426; over a real connection this is a 101.)
//! let res = app.clone().oneshot(handshake("https://eu.example.org")?).await?;
//! assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
//! # Ok(())
//! # }
//! ```
//!
//! # Deployment
//!
//! Reverse proxies forward `Origin` unchanged, but many rewrite `Host` (nginx sends
//! `proxy_pass`'s host unless told `proxy_set_header Host $host`), which breaks same-origin
//! checks and allowed hosts: configure explicit origins behind such a proxy, and allow the
//! host the proxy sends. A TLS-terminating proxy makes the server see plain HTTP while
//! browsers send `https://` origins; list the `https://` origins and set
//! [`OriginGuardLayer::tls`] when the server is reachable only through it.

use std::fmt;

use http::request::Parts;

mod layer;
mod matcher;
mod service;

pub use self::{layer::OriginGuardLayer, matcher::Origin, service::OriginGuard};
pub use crate::core::ResponseFuture;

/// Why a handshake's `Origin` was refused. Carried in the extensions of the rejection
/// response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginError {
    /// No `Origin` header, and [`OriginGuardLayer::require_origin`] is on.
    Missing,
    /// More than one `Origin` header.
    Multiple,
    /// `Origin: null`.
    Null,
    /// The value is not `scheme://host[:port]` in visible ASCII.
    Malformed,
    /// A well-formed origin that no configured rule allows.
    NotAllowed,
    /// The `Host` (or URI authority) is not an allowed host
    /// ([`OriginGuardLayer::allow_host`]), or, for the same-origin rule without allowed
    /// hosts, a domain name, which DNS rebinding could point at this server.
    HostNotAllowed,
    /// An `http://` origin on a handshake known to arrive over TLS
    /// ([`OriginGuardLayer::tls`]).
    InsecureOrigin,
}

impl OriginError {
    /// A stable, lowercase name for logs and metrics, e.g. `not_allowed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Multiple => "multiple",
            Self::Null => "null",
            Self::Malformed => "malformed",
            Self::NotAllowed => "not_allowed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::InsecureOrigin => "insecure_origin",
        }
    }
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing Origin header",
            Self::Multiple => "more than one Origin header",
            Self::Null => "null origin is not allowed",
            Self::Malformed => "malformed Origin header",
            Self::NotAllowed => "origin not allowed",
            Self::HostNotAllowed => "host not allowed (see allowed hosts)",
            Self::InsecureOrigin => "http origin not allowed over TLS",
        })
    }
}

impl std::error::Error for OriginError {}

/// A custom rule for [`OriginGuardLayer::allow_if`]: allows the origin when it returns `true`.
///
/// Implemented for closures `Fn(&Origin, &Parts) -> bool`.
pub trait OriginPredicate: Send + Sync + 'static {
    /// Whether `origin` may open a socket with this request.
    fn allow(&self, origin: &Origin, parts: &Parts) -> bool;
}

impl<F> OriginPredicate for F
where
    F: Fn(&Origin, &Parts) -> bool + Send + Sync + 'static,
{
    fn allow(&self, origin: &Origin, parts: &Parts) -> bool {
        self(origin, parts)
    }
}

#[cfg(test)]
mod tests;
