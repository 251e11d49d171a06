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
//!   [`GuardedUpgrade`](socket::GuardedUpgrade) extractor, and the graceful
//!   [`Drain`](socket::Drain) of every socket at shutdown.
//! - `governor` (feature `tower-governor`): proxy-safe `KeyExtractor`s for tower_governor,
//!   keyed by the trusted client IP or the authenticated identity.
//! - `fleet` (feature `redis`): the rate limits and quotas shared by every instance of a
//!   service through Redis, and revocation that closes sockets on every instance.
//! - Feature `metrics`: every layer's counters and gauges through the `metrics` facade (see
//!   [Metrics](#metrics)).
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
//! use std::{
//!     net::SocketAddr,
//!     num::{NonZeroU32, NonZeroUsize},
//! };
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
//! // Counts are `NonZero*`: a zero limit does not compile, and these setters cannot fail.
//! const MAX_MESSAGE: NonZeroUsize = NonZeroUsize::new(16 * 1024).unwrap();
//! const SOCKETS_PER_IP: NonZeroUsize = NonZeroUsize::new(8).unwrap();
//! const SOCKETS_PER_USER: NonZeroUsize = NonZeroUsize::new(4).unwrap();
//! const MAX_FAILURES: NonZeroU32 = NonZeroU32::new(5).unwrap();
//! const PER_SECOND: NonZeroU32 = NonZeroU32::new(5).unwrap();
//! const BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = TicketKey::generate("k1")?;
//! let issuer = TicketIssuer::new(key.clone()); // for the login route
//! let app = Router::new()
//!     .route("/ws", any(ws))
//!     .layer(SocketPolicyLayer::new().max_message_size(MAX_MESSAGE)) // socket policy
//!     .layer(ConnectionQuotaLayer::new().per_ip(SOCKETS_PER_IP).per_identity(SOCKETS_PER_USER)) // quota
//!     .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)))      // auth
//!     .layer(AuthThrottleLayer::new().max_failures(MAX_FAILURES))    // brute force
//!     .layer(RateLimitLayer::new().per_second(PER_SECOND).burst(BURST)) // rate
//!     .layer(ClientIpLayer::new())                                   // client IP
//!     .layer(OriginGuardLayer::new().allow_origin("https://app.example.com")?); // origin, parsed
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
//! # HTTP/2
//!
//! The whole guard works the same over HTTP/2 WebSockets (RFC 8441): the handshake is an
//! extended `CONNECT` with `:protocol websocket` instead of an `Upgrade` header, and the
//! socket is one stream of a connection that can carry many. The origin guard treats every
//! `CONNECT` as a handshake and takes the host from `:authority`; the credential sources
//! (including the `Sec-WebSocket-Protocol` entry browsers use) read the same headers; the
//! rate limit counts each stream's handshake and the quotas each stream's socket, so
//! multiplexing many sockets over one TCP connection gains a client nothing. The socket
//! policy, revocation and close codes apply to each stream on its own, and ending one stream
//! frees its quota slot while the connection's other sockets go on.
//! [`GuardedUpgrade`](socket::GuardedUpgrade) answers `200` and upgrades only
//! `:protocol websocket`.
//!
//! The server has to enable extended `CONNECT`: `axum::serve` does with axum's `http2`
//! feature; a hyper server does with `hyper_util::server::conn::auto::Builder`'s
//! `.http2().enable_connect_protocol()`. Browsers use it for a page's socket over TLS (ALPN
//! `h2`) when the page's connection to the server is already HTTP/2; otherwise they open an
//! HTTP/1.1 upgrade, which the guard checks the same way. `tests/http2.rs` runs the guard
//! against a real HTTP/2 client.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, response::Response, routing::any};
//! use http::{Method, Request, StatusCode, Version};
//! use tower::ServiceExt;
//! use wsguard::{WsGuard, auth::StaticTokens, socket::GuardedUpgrade};
//!
//! async fn ws(upgrade: GuardedUpgrade) -> Response {
//!     upgrade.on_upgrade(|_socket| async {})
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = WsGuard::new(StaticTokens::new().token("s3cret-token", "alice", ()))
//!     .allow_origin("https://app.example.com")?
//!     .allow_host("api.example.com")?;
//! // `any`: an HTTP/2 handshake is a `CONNECT`, not a `GET`.
//! let app = Router::new().route("/ws", any(ws)).layer(guard);
//!
//! // What hyper's HTTP/2 server hands the app for an extended `CONNECT`.
//! let handshake = |origin: &str| {
//!     let mut req = Request::builder()
//!         .method(Method::CONNECT)
//!         .version(Version::HTTP_2)
//!         .uri("https://api.example.com/ws")
//!         .extension(hyper::ext::Protocol::from_static("websocket"))
//!         .header("origin", origin)
//!         .header("sec-websocket-version", "13")
//!         .header("authorization", "Bearer s3cret-token")
//!         .body(Body::empty())?;
//!     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 50000))));
//!     Ok::<_, http::Error>(req)
//! };
//! let res = app.clone().oneshot(handshake("https://evil.example")?).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! // Through every layer; `oneshot` has no connection to upgrade, so the extractor answers 426.
//! let res = app.oneshot(handshake("https://app.example.com")?).await?;
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
//!
//! # Metrics
//!
//! With the feature `metrics`, every layer records through the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter works
//! (`metrics-exporter-prometheus`, for one; the stock ticker example serves it on
//! `/metrics`). Without a recorder installed the calls do nothing; without the feature they are
//! not compiled in. The names are stable; every label takes one of a fixed, small set of
//! values (never an address, identity, token, origin or message content):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `wsguard_handshakes_total` | counter | `outcome="accepted"` | handshakes answered with an upgrade (`101`, or `200` for HTTP/2) |
//! | `wsguard_handshakes_total` | counter | `outcome="refused"`, `layer`, `cause` | requests a layer refused, with or without an `on_rejection` hook: `layer` is `origin`, `client_ip`, `rate_limit`, `auth`, `revoke`, `drain` or `fleet`; `cause` is the cause's `as_str()` ([`origin::OriginError::as_str`], [`auth::AuthError::as_str`], [`revoke::RevokeError::as_str`], [`client_ip::ClientIpError::as_str`], `FleetError::as_str`, `draining`), for `rate_limit` one of `too_many_handshakes`, `too_many_failed_auth`, `auth_attempts_in_flight`, `client_ip_quota`, `identity_quota`, `global_quota`, `missing_client_ip` |
//! | `wsguard_sockets_open` | gauge | | guarded sockets open now |
//! | `wsguard_socket_closes_total` | counter | `cause` | guarded sockets that ended, once each, by what ended them first: a close by the policy, a close signal or a drain ([`socket::CloseCause::as_str`]); `peer` (the client's close frame); `application` (the application closed or dropped the socket); `protocol_error` (the client broke the protocol: closed `1002`/`1007`); `connection_lost` (the connection ended without a close frame) |
//! | `wsguard_messages_total` | counter | `direction="in"\|"out"` | text and binary messages handed to the application / written to the peer |
//! | `wsguard_bytes_total` | counter | `direction="in"\|"out"` | their payload bytes |
//! | `wsguard_dropped_messages_total` | counter | `cause` | received messages dropped: over a rate limit with `RateAction::Drop` (the rate scope's cause, e.g. `socket_message_rate`) or `receive_queue_full` |
//! | `wsguard_slow_consumer_actions_total` | counter | `action="conflated"\|"dropped_oldest"\|"closed"` | the slow-consumer policy: queued messages replaced or dropped, sockets closed |
//! | `wsguard_quota_active` | gauge | `backend="local"\|"fleet"` | socket quota slots held now |
//! | `wsguard_rate_limit_keys` | gauge | `layer="rate_limit"\|"throttle"` | keys (client IPs or prefixes, identities) the in-memory handshake rate limits and brute-force throttles hold, summed over every limiter, as of each one's last prune (every [`prune_every`](rate_limit::RateLimitLayer::prune_every) requests, or [`spawn_pruner`](rate_limit::RateLimitLayer::spawn_pruner)'s timer) |
//! | `wsguard_fleet_errors_total` | counter | `op`, `error` | fleet Redis commands that failed: `op` one of `rate_limit`, `quota_count`, `quota_acquire`, `quota_renew`, `quota_release`, `is_revoked`, `revocation_check`, `revoke_token`, `revoke_before`, `ping`; `error` `unavailable` or `redis_error` |
//! | `wsguard_fleet_fallbacks_total` | counter | `layer="rate_limit"\|"quota"\|"revocation"` | handshakes decided locally while Redis was unreachable |
//! | `wsguard_fleet_available` | gauge | | `1` when the last fleet command reached Redis, `0` when it did not |
//!
//! The per-message counters are registered once per socket and then incremented through
//! their handles (an atomic add each); install the recorder before serving.
//!
//! # Configuration
//!
//! Only settings that parse a value can fail, all with the one [`ConfigError`]: origins,
//! hosts, trusted proxies, [`KeyPrefix`](client_ip::KeyPrefix) lengths, credential source
//! names and ticket keys. Every other setter takes a type that carries its constraint
//! (`NonZeroU32`, `NonZeroUsize`, `Duration`, an enum) and returns the builder, never
//! panicking: a `Duration` too short to make sense (zero, say) is raised to a documented
//! minimum, and a rate finer than a limiter can count saturates to the finest it can.
//!
//! # Features
//!
//! Every feature is off by default and only adds to the API; on docs.rs every gated item
//! says which feature it needs.
//!
//! | Feature | What it adds |
//! |---|---|
//! | `jwt` | [`auth::JwtAuthenticator`]: JSON Web Token verification (HS256, RS256, ES256; audience required) |
//! | `redis` | `fleet`: rate limits, quotas and revocation shared by every instance through Redis, and [`WsGuard::fleet`] |
//! | `tower-governor` | `governor`: proxy-safe `KeyExtractor`s for tower_governor ([`ClientIpKey`](governor::ClientIpKey), [`IdentityKey`](governor::IdentityKey)) |
//! | `metrics` | every enforcement also records a counter through the `metrics` facade |
//! | `full` | all of the above |
//!
//! # Examples
//!
//! Runnable programs are workspace crates under `examples/` in the repository, each with a
//! header saying how to run it and its integration tests beside it:
//!
//! - `examples/stock-ticker` (`cargo run -p stock-ticker`): the whole guard in a real
//!   service: accounts, login tickets passed as a `Sec-WebSocket-Protocol` entry, quotas, a
//!   socket policy, revocation, graceful drain, HTTP/2 over TLS and fleet mode (`--features
//!   redis`), behind the tower-http layers an HTTP service wants (trace with credentials
//!   redacted, body limit, timeout, security headers).
//! - `examples/heroes` (`cargo run -p heroes`): Socket.IO (socketioxide) behind the origin
//!   guard, client IP, handshake rate limit and connection quota.
//! - `examples/echo` (`cargo run -p echo`): the origin guard alone; the Autobahn conformance
//!   run uses it.
//! - `examples/socket-ticker` (`cargo run -p socket-ticker`): the socket policy's send queue
//!   and conflation for slow consumers.
// `doc_cfg` (nightly, docs.rs): every feature-gated item says which feature it needs. Since
// Rust 1.92 it also derives those notes from `#[cfg]` (the former `doc_auto_cfg`).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod client_ip;
mod core;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "tower-governor")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-governor")))]
pub mod governor;
mod guard;
mod metrics;
pub mod origin;
pub mod rate_limit;
mod rejection;
pub mod revoke;
pub mod socket;

pub use guard::WsGuard;
pub use rejection::Rejection;

/// A configuration value that could not be parsed: an origin, a host, a trusted proxy, a key
/// prefix, a credential source name or a ticket key. The one configuration error of the
/// crate: every setter that parses returns it, and every other setter cannot fail (its
/// argument's type carries the constraint, such as [`NonZeroU32`](std::num::NonZeroU32) or
/// [`Duration`](std::time::Duration)).
///
/// ```
/// use wsguard::{ConfigError, origin::OriginGuardLayer};
///
/// let err = OriginGuardLayer::new().allow_origin("app.example.com").unwrap_err();
/// assert!(matches!(err, ConfigError::InvalidOrigin { .. }));
/// assert_eq!(
///     err.to_string(),
///     "invalid origin \"app.example.com\": expected scheme://host[:port]",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An exact origin that is not `scheme://host[:port]`
    /// ([`OriginGuardLayer::allow_origin`](origin::OriginGuardLayer::allow_origin)).
    InvalidOrigin {
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A wildcard pattern that is not `scheme://*.domain[:port]`
    /// ([`OriginGuardLayer::allow_origin_pattern`](origin::OriginGuardLayer::allow_origin_pattern)).
    InvalidPattern {
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An allowed host that is not `host[:port]` or `.domain[:port]`
    /// ([`OriginGuardLayer::allow_host`](origin::OriginGuardLayer::allow_host)).
    InvalidHost {
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A wildcard that would allow a whole public suffix (`https://*.com`,
    /// `https://*.co.uk`) or everything (`*`): sites that anybody can register.
    PatternTooBroad {
        /// The value as configured.
        value: String,
    },
    /// A prefix length longer than the address ([`KeyPrefix::new`](client_ip::KeyPrefix::new)).
    PrefixTooLong {
        /// The length given.
        len: u8,
        /// The address length in bits.
        max: u8,
    },
    /// A trusted proxy that is not an address or a CIDR network
    /// ([`ClientIpLayer::trusted_proxy_str`](client_ip::ClientIpLayer::trusted_proxy_str)).
    InvalidProxy {
        /// The value as configured.
        value: String,
    },
    /// A subprotocol prefix, query parameter or cookie name that cannot work
    /// ([`CredentialSource`](auth::CredentialSource)).
    InvalidSourceName {
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A ticket key id that is empty, too long or not `[A-Za-z0-9_-]`
    /// ([`TicketKey::new`](auth::TicketKey::new)).
    InvalidKeyId {
        /// The value as configured.
        value: String,
    },
    /// A ticket key secret shorter than 32 bytes ([`TicketKey::new`](auth::TicketKey::new)).
    WeakKey {
        /// The length that was given, in bytes.
        len: usize,
    },
    /// The operating system's random number generator failed
    /// ([`TicketKey::generate`](auth::TicketKey::generate)).
    Random,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidOrigin { value, reason } => {
                write!(f, "invalid origin {value:?}: {reason}")
            }
            Self::InvalidPattern { value, reason } => {
                write!(f, "invalid origin pattern {value:?}: {reason}")
            }
            Self::InvalidHost { value, reason } => {
                write!(f, "invalid allowed host {value:?}: {reason}")
            }
            Self::PatternTooBroad { value } => write!(
                f,
                "origin pattern {value:?} covers a public suffix or everything, so anybody could \
                 register a matching site; use a domain you own, e.g. https://*.example.com \
                 (or dangerously_allow_any_origin if you really mean any)"
            ),
            Self::PrefixTooLong { len, max } => {
                write!(
                    f,
                    "prefix length /{len} is longer than the address (/{max})"
                )
            }
            Self::InvalidProxy { value } => {
                write!(f, "trusted proxy {value:?} is not an address or a CIDR")
            }
            Self::InvalidSourceName { value, reason } => {
                write!(f, "invalid credential source name {value:?}: {reason}")
            }
            Self::InvalidKeyId { value } => write!(
                f,
                "invalid ticket key id {value:?}: use 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'"
            ),
            Self::WeakKey { len } => write!(
                f,
                "ticket key secret is {len} bytes; use at least 32 random bytes (TicketKey::generate)"
            ),
            Self::Random => f.write_str("the operating system's random number generator failed"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parser_reports_its_variant_with_a_precise_message() {
        struct Case {
            name: &'static str,
            result: Result<(), ConfigError>,
            variant: fn(&ConfigError) -> bool,
            message: &'static str,
        }
        let origins = origin::OriginGuardLayer::new;
        let cases = [
            Case {
                name: "origin without a scheme",
                result: origins().allow_origin("app.example.com").map(drop),
                variant: |e| matches!(e, ConfigError::InvalidOrigin { .. }),
                message: "invalid origin \"app.example.com\": expected scheme://host[:port]",
            },
            Case {
                name: "pattern with a partial wildcard label",
                result: origins()
                    .allow_origin_pattern("https://*x.example.com")
                    .map(drop),
                variant: |e| matches!(e, ConfigError::InvalidPattern { .. }),
                message: "invalid origin pattern \"https://*x.example.com\": ",
            },
            Case {
                name: "host with a scheme",
                result: origins().allow_host("https://api.example.com").map(drop),
                variant: |e| matches!(e, ConfigError::InvalidHost { .. }),
                message: "invalid allowed host \"https://api.example.com\": ",
            },
            Case {
                name: "pattern over a public suffix",
                result: origins().allow_origin_pattern("https://*.com").map(drop),
                variant: |e| matches!(e, ConfigError::PatternTooBroad { .. }),
                message: "origin pattern \"https://*.com\" covers a public suffix or everything",
            },
            Case {
                name: "IPv4 prefix over 32 bits",
                result: client_ip::KeyPrefix::new(33, 64).map(drop),
                variant: |e| matches!(e, ConfigError::PrefixTooLong { len: 33, max: 32 }),
                message: "prefix length /33 is longer than the address (/32)",
            },
            Case {
                name: "proxy that is no CIDR",
                result: client_ip::ClientIpLayer::new()
                    .trusted_proxy_str("10.0.0.0/33")
                    .map(drop),
                variant: |e| matches!(e, ConfigError::InvalidProxy { value } if value == "10.0.0.0/33"),
                message: "trusted proxy \"10.0.0.0/33\" is not an address or a CIDR",
            },
            Case {
                name: "empty query parameter name",
                result: auth::CredentialSource::query("").map(drop),
                variant: |e| matches!(e, ConfigError::InvalidSourceName { .. }),
                message: "invalid credential source name \"\": ",
            },
            Case {
                name: "key id with a space",
                result: auth::TicketKey::new("has space", [0; 32]).map(drop),
                variant: |e| matches!(e, ConfigError::InvalidKeyId { .. }),
                message: "invalid ticket key id \"has space\": use 1 to 32 characters of A-Z, a-z, \
                          0-9, '_' and '-'",
            },
            Case {
                name: "short secret",
                result: auth::TicketKey::new("k1", [0; 31]).map(drop),
                variant: |e| matches!(e, ConfigError::WeakKey { len: 31 }),
                message: "ticket key secret is 31 bytes; use at least 32 random bytes \
                          (TicketKey::generate)",
            },
            Case {
                name: "random source",
                result: Err(ConfigError::Random),
                variant: |e| matches!(e, ConfigError::Random),
                message: "the operating system's random number generator failed",
            },
        ];
        for case in cases {
            let err = case.result.expect_err(case.name);
            assert!((case.variant)(&err), "{}: {err:?}", case.name);
            let text = err.to_string();
            assert!(text.starts_with(case.message), "{}: {text}", case.name);
            let source = (&err as &dyn std::error::Error).source();
            assert!(source.is_none(), "{}", case.name);
        }
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
