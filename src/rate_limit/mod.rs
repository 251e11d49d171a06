//! Handshake rate limits, a brute-force throttle and concurrent-socket quotas.
//!
//! Three layers, each keyed by the real client (see [`client_ip`](crate::client_ip)):
//!
//! - [`RateLimitLayer`]: "n handshakes per second (or minute) with a burst of b", keyed by
//!   client IP (default), by identity, or globally. Over the limit: `429 Too Many Requests`
//!   with `Retry-After` (whole seconds, at least 1) and, optionally, `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining` and `X-RateLimit-After`. Built on [`governor`]'s GCRA; idle keys
//!   are pruned so a spray from a million addresses does not grow the process without bound.
//! - [`AuthThrottleLayer`]: after n failed authentications from one client within a window,
//!   that client's further handshakes get `429` **before** the authenticator runs. It counts
//!   the responses of the inner service that carry [`AuthError`](crate::auth::AuthError) in
//!   their extensions, which every `wsguard::auth` rejection does. A handshake in flight
//!   counts as a potential failure, so guesses sent at once do not all reach the
//!   authenticator. Its core, [`FailureThrottle`], is public for authentication done
//!   outside a layer (a Socket.IO connect handler, a login form), keyed the same way.
//! - [`ConnectionQuotaLayer`]: caps on concurrently open sockets per client IP, per identity
//!   and in total. A [`ConnectionPermit`] is taken at the handshake and travels in the
//!   request extensions to the upgraded socket, which holds it until it ends, however it
//!   ends (close, error, panic: the slot is released when the permit drops). Over a per-key
//!   cap: `429`; over the global cap: `503 Service Unavailable`.
//!
//! Every rejection is a response (the service error type is unchanged) with a short
//! plain-text body, the [`RateLimitError`] and the crate's [`Rejection`](crate::Rejection)
//! ([`Rejection::RateLimit`](crate::Rejection::RateLimit)) in its extensions, and a `tracing`
//! event: `wsguard.rate_limit.rejected`, `wsguard.rate_limit.auth_throttled` or
//! `wsguard.rate_limit.quota_exceeded` at `WARN` with the fields `cause`, `client_ip`,
//! `identity` (the principal's subject, when known) and `limit`. The response can be
//! replaced with `on_rejection` on each layer, a hook over the `Rejection` as on every
//! layer; the errors stay in the extensions and `Retry-After` is added when the hook's
//! response lacks it.
//!
//! # Order
//! ```text
//! request → origin → client IP → rate → auth throttle → auth → quota → socket policy → socket
//! ```
//! With axum's `Router::layer`, the layer added last runs first. The rate limiter and the
//! throttle need [`ClientIpLayer`](crate::client_ip::ClientIpLayer) in front of them: a
//! request without [`ClientIp`] is a configuration error answered `500` (with
//! [`RateLimitError::MissingClientIp`] and an error event `wsguard.rate_limit.missing_client_ip`),
//! never silently keyed by something else. Keying by identity or capping per identity
//! needs the auth layer in front (it inserts [`Principal`]); a request without a principal
//! is rate-limited by its client IP and not counted per identity.
//!
//! # Memory
//! The rate limiter keeps one small state per active key. Keys whose state is back to
//! "fresh" are removed every [`RateLimitLayer::prune_every`] requests (default 1024) and on
//! [`RateLimitLayer::prune`], which [`RateLimitLayer::spawn_pruner`] calls on a timer. The
//! throttle does the same with its failure counters. The quota layer removes a key as soon
//! as its last socket closes.
//!
//! # Settings
//! Counts are `NonZeroU32` (rates, bursts, failures) or `NonZeroUsize` (socket caps), so no
//! setter can fail. A rate finer than the limiter counts saturates: [`RateLimitLayer`] counts
//! at most one handshake per nanosecond, so `per_second` above a billion is a billion a
//! second. The throttle's window and lock-out are at least one second.
//!
//! # Clocks
//! The rate limiter and the throttle take their time from a [`governor`] clock:
//! [`Clock`], [`DefaultClock`] and [`FakeRelativeClock`] are governor's types, re-exported
//! on purpose so that tests can drive the limits with a fake clock (`.clock(..)` on each
//! layer) without depending on governor themselves. (The wall clock of tickets and JWTs is
//! another trait, [`TicketClock`](crate::auth::TicketClock).)
//!
//! # Example
//! ```
//! use std::{
//!     net::SocketAddr,
//!     num::{NonZeroU32, NonZeroUsize},
//! };
//! use axum::{Router, body::Body, extract::ConnectInfo, http::{Request, StatusCode}, routing::get};
//! use tower::ServiceExt;
//! use wsguard::{client_ip::ClientIpLayer, rate_limit::{ConnectionQuotaLayer, RateLimitLayer}};
//!
//! const SOCKETS_PER_IP: NonZeroUsize = NonZeroUsize::new(8).unwrap();
//! const SOCKETS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();
//! const PER_MINUTE: NonZeroU32 = NonZeroU32::new(1).unwrap();
//! const BURST: NonZeroU32 = NonZeroU32::new(2).unwrap();
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/ws", get(|| async { "upgrade here" }))
//!     .layer(ConnectionQuotaLayer::new().per_ip(SOCKETS_PER_IP).global(SOCKETS))
//!     .layer(RateLimitLayer::new().per_minute(PER_MINUTE).burst(BURST))
//!     .layer(ClientIpLayer::new()); // runs first
//!
//! let handshake = || -> Result<Request<Body>, http::Error> {
//!     let mut req = Request::get("/ws").body(Body::empty())?;
//!     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
//!     Ok(req)
//! };
//! assert_eq!(app.clone().oneshot(handshake()?).await?.status(), StatusCode::OK);
//! assert_eq!(app.clone().oneshot(handshake()?).await?.status(), StatusCode::OK);
//! // The burst of 2 is spent: the third handshake within the minute is refused.
//! let res = app.clone().oneshot(handshake()?).await?;
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert!(res.headers().contains_key("retry-after"));
//! # Ok(())
//! # }
//! ```
//!
//! # Deployment
//! Behind a proxy, configure [`ClientIpLayer`](crate::client_ip::ClientIpLayer)'s trusted
//! proxies, or every client shares the proxy's key. IPv6 clients are keyed by their /64 by
//! default ([`KeyPrefix`]). Counters live in this process: with several replicas each
//! enforces its own limits.

mod future;
pub(crate) mod layer;
mod permit;
pub(crate) mod quota;
mod service;
mod throttle;

use std::{fmt, net::IpAddr, time::Duration};

use http::{HeaderName, StatusCode};

pub use self::{
    future::ResponseFuture,
    layer::RateLimitLayer,
    permit::ConnectionPermit,
    quota::{ConnectionQuota, ConnectionQuotaLayer},
    service::RateLimit,
    throttle::{AuthAttempt, AuthThrottle, AuthThrottleLayer, FailureThrottle},
};
#[doc(no_inline)]
pub use crate::client_ip::{ClientIp, KeyPrefix};
/// governor's clocks, re-exported deliberately: the time source of [`RateLimitLayer`],
/// [`AuthThrottleLayer`] and [`FailureThrottle`] (`.clock(..)`), so that tests can use a
/// [`FakeRelativeClock`] without a direct governor dependency. See the
/// [module docs](self#clocks).
#[doc(no_inline)]
pub use governor::clock::{Clock, DefaultClock, FakeRelativeClock};

#[cfg(doc)]
use crate::auth::Principal;

/// `X-RateLimit-Limit`: the burst size of the limit that applies.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: handshakes left in the burst.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-After`: seconds until the next handshake is allowed (on rejections).
pub const X_RATELIMIT_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-after");

/// What a [`RateLimitLayer`] keys its limit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyBy {
    /// The client address ([`ClientIp`], masked by the [`KeyPrefix`]). Needs
    /// `ClientIpLayer` in front.
    #[default]
    ClientIp,
    /// The authenticated subject ([`Principal::subject`]); requests without a principal are
    /// keyed by client IP. Needs the auth layer in front.
    Identity,
    /// One limit shared by every request through the layer.
    Global,
}

/// Why a handshake was refused. Carried in the rejection response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The key's handshake rate is over its limit (`429`).
    TooManyHandshakes {
        /// The burst size of the limit.
        limit: u32,
        /// When the next handshake would be allowed.
        retry_after: Duration,
    },
    /// The client failed authentication too often and is locked out (`429`).
    TooManyFailedAuth {
        /// The number of failures that triggers the lock-out.
        limit: u32,
        /// When the lock-out ends.
        retry_after: Duration,
    },
    /// The client's failures and authentication attempts in flight together reach the
    /// brute-force limit: each attempt in flight may still fail, so no further credential is
    /// checked until one of them settles (`429`, `Retry-After: 1`).
    AuthAttemptsInFlight {
        /// The number of failures that triggers the lock-out.
        limit: u32,
        /// When to try again.
        retry_after: Duration,
    },
    /// The client address has too many open sockets (`429`).
    ClientIpQuota {
        /// The cap.
        limit: usize,
        /// The configured retry hint.
        retry_after: Duration,
    },
    /// The identity has too many open sockets (`429`).
    IdentityQuota {
        /// The cap.
        limit: usize,
        /// The configured retry hint.
        retry_after: Duration,
    },
    /// The server is at its global socket cap (`503`).
    GlobalQuota {
        /// The cap.
        limit: usize,
        /// The configured retry hint.
        retry_after: Duration,
    },
    /// No [`ClientIp`] in the request extensions: `ClientIpLayer` is missing in front of
    /// this layer. A configuration error (`500`).
    MissingClientIp,
}

impl RateLimitError {
    /// The status code of the default rejection response.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooManyHandshakes { .. }
            | Self::TooManyFailedAuth { .. }
            | Self::AuthAttemptsInFlight { .. }
            | Self::ClientIpQuota { .. }
            | Self::IdentityQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::GlobalQuota { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::MissingClientIp => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When the client may try again, if that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyHandshakes { retry_after, .. }
            | Self::TooManyFailedAuth { retry_after, .. }
            | Self::AuthAttemptsInFlight { retry_after, .. }
            | Self::ClientIpQuota { retry_after, .. }
            | Self::IdentityQuota { retry_after, .. }
            | Self::GlobalQuota { retry_after, .. } => Some(*retry_after),
            Self::MissingClientIp => None,
        }
    }

    /// A stable snake_case name of the cause, as used in the `cause` field of events.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::TooManyHandshakes { .. } => "too_many_handshakes",
            Self::TooManyFailedAuth { .. } => "too_many_failed_auth",
            Self::AuthAttemptsInFlight { .. } => "auth_attempts_in_flight",
            Self::ClientIpQuota { .. } => "client_ip_quota",
            Self::IdentityQuota { .. } => "identity_quota",
            Self::GlobalQuota { .. } => "global_quota",
            Self::MissingClientIp => "missing_client_ip",
        }
    }

    fn limit(&self) -> Option<u64> {
        match self {
            Self::TooManyHandshakes { limit, .. }
            | Self::TooManyFailedAuth { limit, .. }
            | Self::AuthAttemptsInFlight { limit, .. } => Some(u64::from(*limit)),
            Self::ClientIpQuota { limit, .. }
            | Self::IdentityQuota { limit, .. }
            | Self::GlobalQuota { limit, .. } => u64::try_from(*limit).ok(),
            Self::MissingClientIp => None,
        }
    }
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyHandshakes { .. } => f.write_str("too many handshakes, retry later"),
            Self::TooManyFailedAuth { .. } => {
                f.write_str("too many failed authentications, retry later")
            }
            Self::AuthAttemptsInFlight { .. } => {
                f.write_str("too many authentication attempts in progress, retry later")
            }
            Self::ClientIpQuota { .. } => f.write_str("too many open sockets from this address"),
            Self::IdentityQuota { .. } => f.write_str("too many open sockets for this user"),
            Self::GlobalQuota { .. } => f.write_str("server at socket capacity, retry later"),
            Self::MissingClientIp => f.write_str(
                "wsguard: no ClientIp in the request; add ClientIpLayer in front of the \
                 rate limit and quota layers",
            ),
        }
    }
}

impl std::error::Error for RateLimitError {}

pub(crate) use crate::rejection::{reject, retry_after_secs};

/// Emits the one event of an enforcement.
pub(crate) fn emit(error: &RateLimitError, client_ip: Option<IpAddr>, identity: Option<&str>) {
    let client_ip = client_ip.map(tracing::field::display);
    let cause = error.cause();
    let limit = error.limit();
    let retry_after_secs = error.retry_after().map(retry_after_secs);
    match error {
        RateLimitError::TooManyHandshakes { .. } => tracing::warn!(
            name: "wsguard.rate_limit.rejected",
            cause, client_ip, identity, limit, retry_after_secs,
            "handshake rate limit exceeded"
        ),
        RateLimitError::TooManyFailedAuth { .. } | RateLimitError::AuthAttemptsInFlight { .. } => {
            tracing::warn!(
                name: "wsguard.rate_limit.auth_throttled",
                cause, client_ip, identity, limit, retry_after_secs,
                "handshake refused: too many failed authentications"
            )
        }
        RateLimitError::ClientIpQuota { .. }
        | RateLimitError::IdentityQuota { .. }
        | RateLimitError::GlobalQuota { .. } => tracing::warn!(
            name: "wsguard.rate_limit.quota_exceeded",
            cause, client_ip, identity, limit, retry_after_secs,
            "concurrent socket quota exceeded"
        ),
        RateLimitError::MissingClientIp => tracing::error!(
            name: "wsguard.rate_limit.missing_client_ip",
            cause,
            "no ClientIp in the request extensions: add ClientIpLayer in front of this layer"
        ),
    }
}

#[cfg(test)]
mod tests;
