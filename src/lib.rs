//! # wsguard
//!
//! Tower middleware that makes any axum WebSocket route safe to put on the internet.
//!
//! A WebSocket handshake is an HTTP request, so it can be guarded by tower layers before the
//! upgrade happens. wsguard supplies those layers, one per concern, and they compose in one
//! order that keeps the data path easy to see:
//!
//! ```text
//! request → origin → client IP → rate → throttle → auth → revocation → quota → socket policy → guarded socket
//! ```
//!
//! - [`origin`]: refuses cross-site WebSocket hijacking by checking the `Origin` header.
//! - [`client_ip`]: the real client address behind trusted proxies, for every later layer to
//!   key on.
//! - [`rate_limit`]: handshake rate limits, a brute-force throttle, and concurrent-socket
//!   quotas per client IP, identity and globally.
//! - [`auth`]: verifies who connects before the upgrade (bearer header, subprotocol, query or
//!   cookie; static tokens, signed tickets, JWT) and hands the identity to the handler.
//! - [`revoke`]: log out: a revocation registry that refuses revoked credentials at the
//!   handshake and closes their live sockets with `1008` (by identity, by token, or "issued
//!   before" a time), on one instance or, in fleet mode, on all.
//! - [`socket`]: limits on the live socket (message size, rates per socket and per identity,
//!   idle, heartbeat, credential expiry, lifetime, send backpressure) through
//!   [`SocketPolicyLayer`](socket::SocketPolicyLayer) and the
//!   [`GuardedUpgrade`](socket::GuardedUpgrade) extractor.
//! - `fleet` (feature `redis`): the rate limits and quotas shared by every instance of a
//!   service through Redis, and revocation that closes sockets on every instance.
//!
//! # One guard
//!
//! [`WsGuard`] assembles every layer in that order, each limit at a secure default, and is
//! one [`Layer`](tower::Layer): `WsGuard::new(authenticator).allow_origin(..)?` and
//! `Router::layer(guard)`. Each part is tuned by handing it the per-concern layer
//! (`.quota(ConnectionQuotaLayer::new()..)`) or switched off explicitly (`.without_quota()`),
//! and `.fleet(&fleet)` (feature `redis`) shares the limits and revocation through Redis.
//! See the [`WsGuard`] docs.
//!
//! # The whole stack, by hand
//!
//! The per-concern layers stay public for custom stacks. With axum's `Router::layer`, the layer added last runs first, so the stack is written from
//! the socket outwards:
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, response::Response, routing::any};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use wsguard::{
//!     auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
//!     client_ip::ClientIpLayer,
//!     origin::OriginGuardLayer,
//!     rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
//!     socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
//! };
//!
//! async fn ws(upgrade: GuardedUpgrade) -> Response {
//!     upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
//!         while let Some(Ok(message)) = socket.recv().await {
//!             if socket.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = TicketKey::generate("k1")?;
//! let issuer = TicketIssuer::new(key.clone()); // for the login route
//! let app = Router::new()
//!     .route("/ws", any(ws))
//!     .layer(SocketPolicyLayer::new().max_message_size(16 * 1024)?) // socket policy
//!     .layer(ConnectionQuotaLayer::new().per_ip(8)?.per_identity(4)?) // quota
//!     .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)))   // auth
//!     .layer(AuthThrottleLayer::new().max_failures(5)?)           // brute force
//!     .layer(RateLimitLayer::new().per_second(5)?.burst(10)?)     // rate
//!     .layer(ClientIpLayer::new())                                // client IP
//!     .layer(OriginGuardLayer::new().allow_origin("https://app.example.com")?); // origin
//!
//! let handshake = |token: Option<String>| {
//!     let mut req = Request::get("/ws")
//!         .header("host", "api.example.com")
//!         .header("origin", "https://app.example.com")
//!         .header("connection", "upgrade")
//!         .header("upgrade", "websocket")
//!         .header("sec-websocket-version", "13")
//!         .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
//!     if let Some(token) = token {
//!         req = req.header("authorization", format!("Bearer {token}"));
//!     }
//!     let mut req = req.body(Body::empty())?;
//!     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 50000))));
//!     Ok::<_, http::Error>(req)
//! };
//! let res = app.clone().oneshot(handshake(None)?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! // Through every layer; `oneshot` cannot upgrade, so axum answers 426 instead of 101.
//! let res = app.clone().oneshot(handshake(Some(issuer.issue("alice")))?).await?;
//! assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
//! # Ok(())
//! # }
//! ```
//!
//! # Rejections
//!
//! Every rejection is an ordinary HTTP response with a precise status code, a short plain-text
//! body and the typed error in the response extensions, so the layers never change the
//! service's error type. One type names them all: [`Rejection`], an enum with one variant per
//! layer wrapping that layer's cause ([`origin::OriginError`], [`auth::AuthError`], ...),
//! which is in the extensions of every rejection too. Every layer, and [`WsGuard`] for all of
//! them at once, takes the same hook, `on_rejection(|rejection: &Rejection| ..)`, returning
//! anything that implements [`IntoResponse`](axum::response::IntoResponse);
//! `rejection.clone().into_response()` is the default response.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod auth;
pub mod client_ip;
mod core;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
mod guard;
pub mod origin;
pub mod rate_limit;
mod rejection;
pub mod revoke;
pub mod socket;

pub use guard::WsGuard;
pub use rejection::Rejection;

/// A setting of [`WsGuard`] (or of one of the per-concern layers it wraps) that could not be
/// parsed. Each variant wraps the error of the module that parsed it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// An origin or host, see [`origin::ConfigError`].
    Origin(origin::ConfigError),
    /// A trusted proxy or header, see [`client_ip::ConfigError`].
    ClientIp(client_ip::ConfigError),
    /// A rate, quota or throttle setting, see [`rate_limit::ConfigError`].
    RateLimit(rate_limit::ConfigError),
    /// An authentication setting, see [`auth::ConfigError`].
    Auth(auth::ConfigError),
    /// A socket policy setting, see [`socket::ConfigError`].
    Socket(socket::ConfigError),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Origin(e) => write!(f, "origin: {e}"),
            Self::ClientIp(e) => write!(f, "client ip: {e}"),
            Self::RateLimit(e) => write!(f, "rate limit: {e}"),
            Self::Auth(e) => write!(f, "auth: {e}"),
            Self::Socket(e) => write!(f, "socket policy: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Origin(e) => Some(e),
            Self::ClientIp(e) => Some(e),
            Self::RateLimit(e) => Some(e),
            Self::Auth(e) => Some(e),
            Self::Socket(e) => Some(e),
        }
    }
}

macro_rules! config_error_from {
    ($($module:ident => $variant:ident),* $(,)?) => {$(
        impl From<$module::ConfigError> for ConfigError {
            fn from(e: $module::ConfigError) -> Self {
                Self::$variant(e)
            }
        }
    )*};
}

config_error_from!(
    origin => Origin,
    client_ip => ClientIp,
    rate_limit => RateLimit,
    auth => Auth,
    socket => Socket,
);

#[cfg(test)]
mod test_support;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
