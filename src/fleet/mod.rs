//! Fleet mode: handshake rate limits, concurrent-socket quotas and revocation shared by every
//! instance of a service through Redis (feature `redis`).
//!
//! In-memory limits multiply by the instance count behind a load balancer: a per-user cap of
//! 1 on 10 instances allows 10 sockets, and a logout closes sockets on one instance only.
//! This module moves those decisions into Redis, each one an atomic Lua script:
//!
//! - Rate limit: [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) with the fleet as its
//!   backend ([`RateLimitLayer::fleet`](crate::rate_limit::RateLimitLayer::fleet)): the same
//!   builder and keys, counted as a GCRA (generic cell rate algorithm) in Redis: "n per
//!   second, burst b" holds for the whole fleet. Over the limit: `429` with `Retry-After`.
//! - Quota: [`ConnectionQuotaLayer`](crate::rate_limit::ConnectionQuotaLayer) with the fleet
//!   as its backend ([`ConnectionQuotaLayer::fleet`](crate::rate_limit::ConnectionQuotaLayer::fleet)):
//!   the caps per client IP, per identity and global as **leases**: each socket holds a
//!   lease with a TTL ([`FleetBuilder::lease_ttl`]), renewed every third of it while the
//!   socket lives and released when it closes. An instance that dies leaks nothing: its
//!   leases expire. Over a cap: `429` (`503` for the global cap).
//! - Revocation: [`RevocationLayer`] of [`crate::revoke`]
//!   with the fleet as its backend (`RevocationLayer::new(&fleet)`): the same registry and
//!   API as on one instance ([`Fleet::revocations`]), shared through Redis. A revocation
//!   ([`Fleet::revoke_identity`], [`Fleet::revoke_issued_before`], [`Fleet::revoke_token`])
//!   is applied on this instance, stored in Redis as one marker (a token's, or a subject's
//!   "issued before" time: constant work however many tokens the subject has) and published
//!   (pub/sub); every instance applies it to its own registry, closing the matching sockets
//!   with `1008` (through [`CloseSignal`](crate::socket::CloseSignal), which
//!   [`GuardedUpgrade`](crate::socket::GuardedUpgrade) attaches to the socket). Handshakes
//!   check this instance's registry, then the markers (one pipelined round trip), so revocations made
//!   before an instance started hold there too; revoked credentials get `401`.
//!
//! Switching from local to fleet limits is one call: [`WsGuard::fleet`](crate::WsGuard::fleet)
//! for the whole guard, or `.fleet(&fleet)` on a hand-stacked layer:
//!
//! ```text
//! WsGuard::new(authenticator).allow_origin(..)?.fleet(&fleet)     // rate, quota, revocation
//! RateLimitLayer::new().fleet(&fleet)                              // one layer
//! RevocationLayer::new(&fleet)
//! ```
//!
//! # When Redis is unreachable
//!
//! Every Redis round trip is bounded by [`FleetBuilder::timeout`] (250 ms by default), so a
//! handshake never hangs. Then the [`FailurePolicy`] applies:
//!
//! - [`FailurePolicy::FallBackToLocal`] (default): the same limits are enforced per instance
//!   (each fleet layer embeds the local layer), revoked-token checks are skipped, and the
//!   fleet logs `wsguard.fleet.unavailable` (warn) once;
//! - [`FailurePolicy::Refuse`]: handshakes get `503 Service Unavailable` with `Retry-After`,
//!   and [`FleetError::Unavailable`] and the crate's [`Rejection::Fleet`](crate::Rejection::Fleet)
//!   in the response extensions; the layer's `on_rejection` hook can replace the response.
//!
//! A revocation made while Redis is unreachable is in effect on the revoking instance at
//! once and fails with [`RevokeError::Unavailable`](crate::revoke::RevokeError::Unavailable)
//! ("not shared yet"); the fleet then shares it in the background, retrying with a growing
//! delay (up to 2 s) until Redis takes it, so it reaches every instance when Redis is back
//! (`wsguard.revoke.shared`). A command Redis received but did not answer in time may also
//! take effect then; sharing twice is harmless. At most 1 024 revocations wait at once, each
//! for at most the revocation TTL ([`FleetBuilder::revocation_ttl`]); one that cannot wait
//! stays on its instance (`wsguard.revoke.unshared`, warn).
//!
//! Recovery is automatic: the connection is remade on the next use, the first success logs
//! `wsguard.fleet.recovered`, the revocation listener resubscribes (and applies the markers
//! of its live sockets' tokens and subjects it missed), and live sockets
//! (including those admitted by the local fallback) re-create their leases at their next
//! renewal, so fleet limits count them again after a Redis restart.
//!
//! # Order
//! ```text
//! request → origin → client IP → rate → throttle → auth → revocation → quota → socket policy
//! ```
//! [`RevocationLayer`] needs the auth layer in front (it reads the
//! [`Principal`](crate::auth::Principal) and [`TokenFingerprint`](crate::auth::TokenFingerprint)
//! that [`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer) inserts) and the handler must
//! use [`GuardedUpgrade`](crate::socket::GuardedUpgrade), which holds the lease and the
//! revocation registration until the socket ends.
//!
//! # Example
//!
//! `no_run`: it needs a Redis server.
//!
//! ```no_run
//! use std::{
//!     num::{NonZeroU32, NonZeroUsize},
//!     time::Duration,
//! };
//! use axum::{Router, response::Response, routing::any};
//! use wsguard::{
//!     WsGuard,
//!     auth::{TicketKey, TicketVerifier},
//!     fleet::{FailurePolicy, Fleet},
//!     socket::GuardedUpgrade,
//! };
//!
//! async fn ws(up: GuardedUpgrade) -> Response {
//!     up.on_upgrade(|_socket| async {})
//! }
//!
//! const PER_IP: NonZeroUsize = NonZeroUsize::new(8).unwrap();
//! const PER_USER: NonZeroUsize = NonZeroUsize::new(4).unwrap();
//! const PER_SECOND: NonZeroU32 = NonZeroU32::new(5).unwrap();
//! const BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = Fleet::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .timeout(Duration::from_millis(200))
//!     .on_failure(FailurePolicy::FallBackToLocal)
//!     .lease_ttl(Duration::from_secs(30))
//!     .connect()
//!     .await?;
//! let key = TicketKey::new("k1", b"a secret shared by every instance")?;
//! let guard = WsGuard::new(TicketVerifier::new(key))
//!     .allow_origin("https://app.example.com")?
//!     .fleet(&fleet); // rate limit, quota and revocation through Redis
//! let app: Router = Router::new().route("/ws", any(ws)).layer(guard);
//!
//! // On logout, from any instance: every socket of "alice" closes with 1008.
//! fleet.revoke_identity("alice").await?;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Your own channels
//!
//! The mechanism of the revocation listener is public: [`Fleet::subscribe`] subscribes to a
//! channel of the application's for as long as the returned [`Subscription`] lives,
//! resubscribing by itself after a lost connection. Pub/sub only reaches the subscribers
//! connected at the time, so keep the state in Redis as well and catch up on every
//! [`SubscriptionEvent::Subscribed`], which comes first and again after each
//! resubscription; if catching up fails, [`Subscription::resubscribe`] asks for another
//! round. Publish and catch up with the application's own Redis connection: the fleet's
//! connection is its own, and no `redis` type is part of this crate's API.
//!
//! `no_run`: it needs a Redis server.
//!
//! ```no_run
//! use wsguard::fleet::{Fleet, SubscriptionEvent};
//!
//! # async fn catch_up() -> Result<(), std::io::Error> { Ok(()) }
//! # fn apply(_: &str) {}
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = Fleet::builder("redis://127.0.0.1:6379").prefix("myapp").connect().await?;
//! let mut prices = fleet.subscribe(fleet.key("prices")); // "myapp:prices"
//! tokio::spawn(async move {
//!     while let Some(event) = prices.recv().await {
//!         match event {
//!             // Read what changed while not subscribed (e.g. `HVALS myapp:latest`).
//!             SubscriptionEvent::Subscribed => {
//!                 if catch_up().await.is_err() {
//!                     prices.resubscribe();
//!                 }
//!             }
//!             SubscriptionEvent::Message(text) => apply(&text),
//!             _ => {}
//!         }
//!     }
//! });
//! # Ok(())
//! # }
//! ```
//!
//! # Redis
//!
//! One Redis (or a primary with replicas) shared by the instances. Keys, all with TTLs
//! (revocation markers: [`FleetBuilder::revocation_ttl`]):
//!
//! | key | what | script |
//! | --- | --- | --- |
//! | `<prefix>:rate:<name>:<key>` (`ip:<net>`, `id:<subject>`, `global`) | a rate limit's GCRA time | one key |
//! | `{<prefix>:quota:<name>}:ip:<net>`, `…:id:<subject>`, `…:global` | a quota's lease sets | all of a lease's sets in one call |
//! | `{<prefix>:quota:<name>}:released:<lease>` | a released lease's marker | with its sets |
//! | `<prefix>:revoked:<token fingerprint>` | a revoked token | one key |
//! | `<prefix>:revoked_sub:<subject>` | a subject's "issued before" cutoff | one key |
//!
//! and the pub/sub channel `<prefix>:revocations`. Every key a script touches is declared to
//! Redis, and the keys of one call share a hash tag (`{…}`, one Redis Cluster slot), so the
//! scripts run on a Redis Cluster node as they do on one Redis (tested on a cluster-mode
//! `redis-server`); a quota's keys share one slot, while rate limit keys and revocation
//! markers spread over the slots. The fleet's connection is a plain one, so a multi-node
//! cluster is not supported yet (a node answers `MOVED` for the keys of another). FLEET.md
//! in the repository has the layout, the Redis cost of a handshake and of a live socket,
//! and what one Redis sustains. Times come from the Redis server's clock, so instance
//! clock skew does not matter.
//!
//! # Events
//! `wsguard.fleet.unavailable` (warn) and `wsguard.fleet.recovered` (info) on availability
//! changes; `wsguard.fleet.fallback` (debug) for each handshake decided locally;
//! `wsguard.fleet.refused` (warn) for each `503`; rejections reuse
//! `wsguard.rate_limit.rejected` and `wsguard.rate_limit.quota_exceeded`; revocation logs the
//! events of [`crate::revoke`] (`wsguard.revoke.revoked`, `wsguard.revoke.closing` on each
//! instance that closes sockets, `wsguard.revoke.refused`), and a revocation Redis did not
//! take logs `wsguard.revoke.shared` (info) once the fleet has it, or
//! `wsguard.revoke.unshared` (warn, `reason`) if it stays on its instance; subscriptions log
//! `wsguard.fleet.listening` (debug, `channel`) on each subscription and
//! `wsguard.fleet.listener_error` (debug, `channel`, `error`) when they lose Redis. Tokens
//! are never logged (revocation events carry the first 8 hex digits of the token's SHA-256
//! at most).

mod handle;
pub(crate) mod quota;
pub(crate) mod rate;
mod scripts;
#[cfg(test)]
mod tests;

use std::fmt;

use axum::response::Response;
use http::StatusCode;

pub(crate) use self::handle::Unshared;
#[cfg(fuzzing)]
pub(crate) use self::handle::revocation_decision;
pub use self::handle::{Fleet, FleetBuilder, Subscription, SubscriptionEvent};
#[doc(no_inline)]
pub use crate::rate_limit::{KeyBy, RateLimitError};
/// The revocation layer of [`crate::revoke`], re-exported: `RevocationLayer::new(&fleet)`.
#[doc(no_inline)]
pub use crate::revoke::{Revocation, RevocationLayer};

/// What fleet layers do when Redis does not answer within the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Enforce the same limits per instance and let handshakes through the revocation check;
    /// log `wsguard.fleet.unavailable` once. The default: an outage of Redis degrades limits
    /// instead of the service.
    #[default]
    FallBackToLocal,
    /// Refuse handshakes with `503 Service Unavailable` until Redis answers again.
    Refuse,
}

impl FailurePolicy {
    /// `"fall_back_to_local"` or `"refuse"`, for log fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::FallBackToLocal => "fall_back_to_local",
            Self::Refuse => "refuse",
        }
    }
}

/// Errors of the fleet: Redis trouble. (Revoked credentials are
/// [`RevokeError::Revoked`](crate::revoke::RevokeError::Revoked).)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetError {
    /// The Redis URL could not be parsed.
    InvalidUrl(String),
    /// Redis did not answer within the timeout, or the connection failed (`503` under
    /// [`FailurePolicy::Refuse`]).
    Unavailable(String),
    /// Redis answered with an error, or with a reply outside the contract of a fleet script
    /// (a bug or a misconfigured server).
    Redis(String),
    /// [`FleetBuilder::build`] was called outside a tokio runtime.
    NoRuntime,
}

impl FleetError {
    /// The status code of a rejection response for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidUrl(_) | Self::Unavailable(_) | Self::Redis(_) | Self::NoRuntime => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable snake_case name, for log fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "invalid_url",
            Self::Unavailable(_) => "unavailable",
            Self::Redis(_) => "redis_error",
            Self::NoRuntime => "no_runtime",
        }
    }
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(e) => write!(f, "invalid Redis URL: {e}"),
            Self::Unavailable(e) => write!(f, "Redis is unavailable: {e}"),
            Self::Redis(e) => write!(f, "Redis error: {e}"),
            Self::NoRuntime => f.write_str("the fleet must be built inside a tokio runtime"),
        }
    }
}

impl std::error::Error for FleetError {}

/// Logs and answers a handshake refused because Redis is unreachable (policy `Refuse`):
/// `hook`'s response to [`Rejection::Fleet`](crate::Rejection::Fleet), or the default `503`
/// with `Retry-After` and a short plain-text body (no Redis details).
pub(crate) fn refuse_unavailable(
    hook: Option<&crate::rejection::OnRejection>,
    layer: &'static str,
    error: FleetError,
    client_ip: Option<std::net::IpAddr>,
) -> Response {
    tracing::warn!(
        name: "wsguard.fleet.refused",
        target: "wsguard::fleet",
        cause = error.as_str(),
        layer,
        client_ip = client_ip.map(tracing::field::display),
        "handshake refused: Redis is unavailable"
    );
    crate::rejection::reject(hook, error)
}

/// Logs a handshake decided by the local fallback.
pub(crate) fn note_fallback(layer: &'static str, client_ip: Option<std::net::IpAddr>) {
    crate::metrics::fleet_fallback(layer);
    tracing::debug!(
        name: "wsguard.fleet.fallback",
        target: "wsguard::fleet",
        layer,
        client_ip = client_ip.map(tracing::field::display),
        "Redis is unavailable: local limits decide"
    );
}

/// Where a [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) or
/// [`ConnectionQuotaLayer`](crate::rate_limit::ConnectionQuotaLayer) counts: this instance's
/// memory (no fleet), or a fleet's Redis under a name.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub(crate) fleet: Option<Fleet>,
    pub(crate) name: std::sync::Arc<str>,
}

impl Backend {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            fleet: None,
            name: name.into(),
        }
    }

    pub(crate) fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }
}
