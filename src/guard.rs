//! [`WsGuard`]: every layer of the crate in the documented order, one builder, one `Layer`.

use std::{
    fmt,
    num::NonZeroUsize,
    sync::{Arc, OnceLock},
};

use axum::response::IntoResponse;
use tower::{
    Layer,
    layer::util::{Identity as NoLayer, Stack},
};

#[cfg(feature = "redis")]
use crate::fleet::Fleet;
use crate::{
    ConfigError, Rejection,
    auth::{Authenticator, HandshakeAuthLayer},
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    rejection::OnRejection,
    revoke::{RevocationLayer, Revocations},
    socket::{Drain, DrainLayer, SocketPolicyLayer},
};

/// Default open sockets per client IP network ([`KeyPrefix::DEFAULT`](crate::client_ip::KeyPrefix::DEFAULT)).
const DEFAULT_SOCKETS_PER_IP: NonZeroUsize = NonZeroUsize::new(16).unwrap();
/// Default open sockets per authenticated identity.
const DEFAULT_SOCKETS_PER_IDENTITY: NonZeroUsize = NonZeroUsize::new(8).unwrap();

/// One tunable part: its secure default (built in `layer()`), a layer handed in, or off.
#[derive(Clone, Debug)]
enum Part<L> {
    Default,
    Custom(L),
    Off,
}

impl<L: Clone> Part<L> {
    /// The layer to use, `None` when off; `default` when not set.
    fn resolve(&self, default: &L) -> Option<L> {
        match self {
            Part::Default => Some(default.clone()),
            Part::Custom(layer) => Some(layer.clone()),
            Part::Off => None,
        }
    }
}

/// `$layer` with the guard's rejection hook `$hook` (an `Option<&OnRejection>`) as its
/// `on_rejection`, when the guard has one.
macro_rules! hooked {
    ($layer:expr, $hook:expr) => {{
        let layer = $layer;
        match $hook {
            Some(hook) => {
                let hook: OnRejection = hook.clone();
                layer.on_rejection(move |rejection: &Rejection| hook.call(rejection))
            }
            None => layer,
        }
    }};
}

/// The default layers, made by the first `layer()` call of a guard (or of one of its clones)
/// and shared by the later ones: axum's `Router::layer` calls `layer()` once per route and
/// method, and one guard must stay one set of counters across them.
#[derive(Clone, Debug)]
struct Defaults {
    rate: RateLimitLayer,
    throttle: AuthThrottleLayer,
    quota: ConnectionQuotaLayer,
    socket: SocketPolicyLayer,
    revocations: Revocations,
}

impl Defaults {
    fn new() -> Self {
        let mut quota = ConnectionQuotaLayer::new();
        quota.per_ip = Some(DEFAULT_SOCKETS_PER_IP);
        quota.per_identity = Some(DEFAULT_SOCKETS_PER_IDENTITY);
        Self {
            rate: RateLimitLayer::new(),
            throttle: AuthThrottleLayer::new(),
            quota,
            socket: SocketPolicyLayer::new(),
            revocations: Revocations::new(),
        }
    }
}

/// A part that may be off (`ServiceBuilder::option_layer`'s type).
type Opt<L> = tower::util::Either<L, NoLayer>;

/// The stack, innermost first (`Stack<Inner, Outer>`): the request meets the origin guard
/// first and the socket policy last.
type Layers<A> = Stack<
    SocketPolicyLayer,
    Stack<
        Opt<ConnectionQuotaLayer>,
        Stack<
            Opt<RevocationLayer>,
            Stack<
                HandshakeAuthLayer<A>,
                Stack<
                    Opt<AuthThrottleLayer>,
                    Stack<
                        Opt<RateLimitLayer>,
                        Stack<
                            ClientIpLayer,
                            Stack<OriginGuardLayer, Stack<Opt<DrainLayer>, NoLayer>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// Every wsguard layer in the documented order, each at a secure default: the front door of
/// the crate. `WsGuard` is itself a [`Layer`]: `Router::new().route("/ws", any(ws)).layer(guard)`.
/// Setters replace the part they name unless their doc says they add.
///
/// ```text
/// request → (drain) → origin → client IP → rate → throttle → auth → revocation → quota → socket policy → handler
/// ```
///
/// Hand-stacking the per-concern layers works, but `Router::layer` runs the layer added last
/// first, and a stack in the wrong order builds and runs: a [`ConnectionQuotaLayer`] with a
/// per-identity cap placed in front of the auth layer never sees an identity and counts
/// nobody; one in front of [`ClientIpLayer`] answers every handshake with `500`. `WsGuard`
/// owns the order, so those mistakes cannot be written. Every part starts at a secure
/// default, can be replaced by a tuned per-concern layer (`.rate_limit(RateLimitLayer::..)`),
/// and is switched off only by an explicit `without_*` call.
///
/// | part | default | tune | switch off |
/// |------|---------|------|------------|
/// | origin | same-origin only ([`OriginGuardLayer::new`]) | [`allow_origin`](WsGuard::allow_origin), [`allow_host`](WsGuard::allow_host), [`origin`](WsGuard::origin) | never |
/// | client IP | the peer address, no trusted proxy | [`client_ip`](WsGuard::client_ip) | never |
/// | rate | 10 handshakes/s, burst 10, per client IP | [`rate_limit`](WsGuard::rate_limit) | [`without_rate_limit`](WsGuard::without_rate_limit) |
/// | throttle | 60 s lockout after 5 failed credentials in 60 s | [`throttle`](WsGuard::throttle) | [`without_throttle`](WsGuard::without_throttle) |
/// | auth | the authenticator given to [`new`](WsGuard::new) | [`auth`](WsGuard::auth) | never |
#[cfg_attr(
    feature = "redis",
    doc = "| revocation | on: the guard's own registry ([`revocation_registry`](WsGuard::revocation_registry)), the fleet's with [`fleet`](WsGuard::fleet) | [`revocations`](WsGuard::revocations) | [`without_revocation`](WsGuard::without_revocation) |"
)]
#[cfg_attr(
    not(feature = "redis"),
    doc = "| revocation | on: the guard's own registry ([`revocation_registry`](WsGuard::revocation_registry)), the fleet's with `fleet` (feature `redis`) | [`revocations`](WsGuard::revocations) | [`without_revocation`](WsGuard::without_revocation) |"
)]
/// | quota | 16 sockets per client IP, 8 per identity | [`quota`](WsGuard::quota) | [`without_quota`](WsGuard::without_quota) |
/// | socket policy | [`SocketPolicyLayer::new`] (64 KiB messages, heartbeat, idle timeout, …) | [`socket_policy`](WsGuard::socket_policy) | never |
/// | drain | off: no graceful shutdown | [`drain`](WsGuard::drain) with a [`Drain`] handle | off unless given |
///
/// The handler takes [`GuardedUpgrade`](crate::socket::GuardedUpgrade) (it carries the
/// socket policy, the quota permit and the revocation signal onto the socket), and the server
/// must provide the peer address (`into_make_service_with_connect_info::<SocketAddr>()`).
///
/// # Example
///
/// ```
/// use std::net::SocketAddr;
/// use axum::{Router, body::Body, extract::ConnectInfo, response::Response, routing::any};
/// use http::{Request, StatusCode};
/// use tower::ServiceExt;
/// use wsguard::{WsGuard, auth::StaticTokens, socket::GuardedUpgrade};
///
/// async fn ws(upgrade: GuardedUpgrade) -> Response {
///     upgrade.on_upgrade(|_socket| async {})
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = WsGuard::new(StaticTokens::new().token("s3cret-token", "alice", ()))
///     .allow_origin("https://app.example.com")?
///     .allow_host("api.example.com")?;
/// let app = Router::new().route("/ws", any(ws)).layer(guard);
///
/// let handshake = |origin: &str, token: Option<&str>| {
///     let mut req = Request::get("/ws")
///         .header("host", "api.example.com")
///         .header("origin", origin)
///         .header("connection", "upgrade")
///         .header("upgrade", "websocket")
///         .header("sec-websocket-version", "13")
///         .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
///     if let Some(token) = token {
///         req = req.header("authorization", format!("Bearer {token}"));
///     }
///     let mut req = req.body(Body::empty())?;
///     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 50000))));
///     Ok::<_, http::Error>(req)
/// };
/// let res = app.clone().oneshot(handshake("https://evil.example", None)?).await?;
/// assert_eq!(res.status(), StatusCode::FORBIDDEN);
/// let res = app.clone().oneshot(handshake("https://app.example.com", None)?).await?;
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// // Through every layer; `oneshot` cannot upgrade, so axum answers 426 instead of 101.
/// let res = app.oneshot(handshake("https://app.example.com", Some("s3cret-token"))?).await?;
/// assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
/// # Ok(())
/// # }
/// ```
///
/// # No guard without authentication
///
/// [`WsGuard::new`] takes the authenticator: the identity quota, the revocation check and the
/// per-identity socket rates all key on the authenticated identity, so a guard without one
/// would quietly switch them off. A public (anonymous) route stacks the layers it needs by
/// hand ([`OriginGuardLayer`], [`ClientIpLayer`], [`RateLimitLayer`],
/// [`ConnectionQuotaLayer::per_ip`], [`SocketPolicyLayer`]).
///
/// # Misconfigurations that do not compile
///
/// What a hand-made stack gets wrong at run time is a type error here. Without a
/// [`ClientIpLayer`] in front, the per-IP rate limit and quota answer every handshake with
/// `500` (`RateLimitError::MissingClientIp`); a guard always resolves the client address
/// first, and has no way to leave it out:
///
/// ```compile_fail
/// # use wsguard::{WsGuard, auth::StaticTokens};
/// let guard = WsGuard::new(StaticTokens::new().token("t", "alice", ())).without_client_ip();
/// ```
///
/// Without an authenticator in front, the identity quota and revocation check see nobody; a
/// guard cannot be made without one:
///
/// ```compile_fail
/// # use wsguard::WsGuard;
/// let guard = WsGuard::new();
/// ```
///
/// `tests/guard.rs` runs both hand-made stacks against a real server (`500`, and an identity
/// cap that counts nobody) beside the same intent through `WsGuard` (`429`).
///
/// # Shared state
///
/// Building a `WsGuard` creates no limiter, counter or task. The default rate limit,
/// throttle, quota and socket registry are created by the first [`Layer::layer`] call and
/// shared by every later one, of this guard and of its clones: axum's `Router::layer` calls
/// `layer()` for every route (and method), and they all count against one set of limits, as
/// with a per-concern layer, whose clones share its counters. A layer handed in
/// (`.rate_limit(layer)`, `.quota(layer)`, ...) keeps its own counters. For separate limits
/// on two routers, build two guards.
///
/// # Rejections
///
/// Every part refuses with its own status (`403` origin, `401` auth, `429` rate, ...), a short
/// plain-text body, and the typed cause and the crate's [`Rejection`] in the response
/// extensions. [`on_rejection`](WsGuard::on_rejection) replaces the response of all of them
/// with one hook over the [`Rejection`]:
///
/// ```
/// use axum::{Json, response::IntoResponse};
/// use http::StatusCode;
/// use wsguard::{Rejection, WsGuard, auth::StaticTokens};
///
/// let guard = WsGuard::new(StaticTokens::new().token("s3cret-token", "alice", ()))
///     .on_rejection(|rejection: &Rejection| {
///         let body = serde_json::json!({ "error": rejection.to_string() });
///         (rejection.status(), Json(body)).into_response()
///     });
/// # let _ = guard;
/// ```
///
/// # Fleet mode
///
#[cfg_attr(
    feature = "redis",
    doc = "With feature `redis`, [`fleet`](WsGuard::fleet) moves the rate limit, the quota and the
revocation check to Redis (the same layers and settings with the fleet as their backend:
[`RateLimitLayer::fleet`], [`ConnectionQuotaLayer::fleet`]), so the limits hold across
every instance; the throttle and the socket policy stay per instance."
)]
#[cfg_attr(
    not(feature = "redis"),
    doc = "With feature `redis`, `WsGuard::fleet` moves the rate limit, the quota and the
revocation check to Redis (the same layers with the fleet as their backend), so the limits
hold across every instance; the throttle and the socket policy stay per instance."
)]
#[must_use]
pub struct WsGuard<A> {
    origin: OriginGuardLayer,
    client_ip: ClientIpLayer,
    rate: Part<RateLimitLayer>,
    throttle: Part<AuthThrottleLayer>,
    auth: HandshakeAuthLayer<A>,
    revocation: Part<Revocations>,
    quota: Part<ConnectionQuotaLayer>,
    socket: Part<SocketPolicyLayer>,
    drain: Option<Drain>,
    #[cfg(feature = "redis")]
    fleet: Option<Fleet>,
    /// Set on every part by `layer()`, when set.
    on_rejection: Option<OnRejection>,
    /// Empty until the first `layer()` call.
    defaults: Arc<OnceLock<Defaults>>,
}

impl<A: Authenticator> WsGuard<A> {
    /// A guard that authenticates every handshake with `authenticator` (from the
    /// `Authorization: Bearer` header and the other default
    /// [`CredentialSource`](crate::auth::CredentialSource)s), with every other part at its
    /// default (see [`WsGuard`]). Allow the application's origins and hosts
    /// before use: by default only same-origin handshakes and handshakes without `Origin`
    /// pass.
    pub fn new(authenticator: A) -> Self {
        Self::with_auth(HandshakeAuthLayer::new(authenticator))
    }

    /// A guard whose auth part is `auth`, a [`HandshakeAuthLayer`] with its own settings
    /// (credential sources, length cap): [`new`](WsGuard::new) for a tuned auth layer.
    pub fn with_auth(auth: HandshakeAuthLayer<A>) -> Self {
        Self {
            origin: OriginGuardLayer::new(),
            client_ip: ClientIpLayer::new(),
            rate: Part::Default,
            throttle: Part::Default,
            auth,
            revocation: Part::Default,
            quota: Part::Default,
            socket: Part::Default,
            drain: None,
            #[cfg(feature = "redis")]
            fleet: None,
            on_rejection: None,
            defaults: Arc::default(),
        }
    }
}

impl<A> WsGuard<A> {
    /// Adds an allowed origin, as [`OriginGuardLayer::allow_origin`]. Repeated calls add.
    /// Default: none (same-origin only).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidOrigin`] when `origin` is not a valid `scheme://host[:port]`.
    pub fn allow_origin(mut self, origin: impl AsRef<str>) -> Result<Self, ConfigError> {
        self.origin = self.origin.allow_origin(origin)?;
        Ok(self)
    }

    /// Adds allowed origins, as [`OriginGuardLayer::allow_origins`]. Repeated calls add.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidOrigin`] on the first invalid origin.
    pub fn allow_origins<I>(mut self, origins: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.origin = self.origin.allow_origins(origins)?;
        Ok(self)
    }

    /// Adds an allowed origin pattern (`https://*.example.com`), as
    /// [`OriginGuardLayer::allow_origin_pattern`]. Repeated calls add.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidPattern`] or [`ConfigError::PatternTooBroad`] when `pattern`
    /// is not a valid pattern.
    pub fn allow_origin_pattern(mut self, pattern: impl AsRef<str>) -> Result<Self, ConfigError> {
        self.origin = self.origin.allow_origin_pattern(pattern)?;
        Ok(self)
    }

    /// Adds an allowed `Host` (the DNS-rebinding defence), as
    /// [`OriginGuardLayer::allow_host`]. Repeated calls add. Default: none (any host).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidHost`] when `host` is not `host[:port]` or `.domain[:port]`.
    pub fn allow_host(mut self, host: impl AsRef<str>) -> Result<Self, ConfigError> {
        self.origin = self.origin.allow_host(host)?;
        Ok(self)
    }

    /// Adds allowed hosts, as [`OriginGuardLayer::allow_hosts`]. Repeated calls add.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidHost`] on the first invalid host.
    pub fn allow_hosts<I>(mut self, hosts: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.origin = self.origin.allow_hosts(hosts)?;
        Ok(self)
    }

    /// The whole origin guard, for its other settings (TLS, predicates, rejection). Replaces
    /// the origins and hosts allowed so far. Default: [`OriginGuardLayer::new`].
    pub fn origin(mut self, origin: OriginGuardLayer) -> Self {
        self.origin = origin;
        self
    }

    /// How the client address is found (trusted proxies, header). Replaces; default
    /// [`ClientIpLayer::new`]: the peer address, no proxy trusted.
    pub fn client_ip(mut self, client_ip: ClientIpLayer) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// The handshake rate limit. Replaces; default [`RateLimitLayer::new`] (10 per second,
    /// burst 10, per client IP). In fleet mode the same settings are counted in Redis.
    pub fn rate_limit(mut self, rate_limit: RateLimitLayer) -> Self {
        self.rate = Part::Custom(rate_limit);
        self
    }

    /// No handshake rate limit. Undone by [`rate_limit`](Self::rate_limit).
    pub fn without_rate_limit(mut self) -> Self {
        self.rate = Part::Off;
        self
    }

    /// The brute-force throttle on failed credentials. Replaces; default
    /// [`AuthThrottleLayer::new`] (60 s lockout after 5 failures within 60 s, per client IP).
    pub fn throttle(mut self, throttle: AuthThrottleLayer) -> Self {
        self.throttle = Part::Custom(throttle);
        self
    }

    /// No brute-force throttle. Undone by [`throttle`](Self::throttle).
    pub fn without_throttle(mut self) -> Self {
        self.throttle = Part::Off;
        self
    }

    /// The handshake authentication layer, for its other settings (credential sources,
    /// length cap, rejection); it may carry another authenticator. Replaces the one given to
    /// [`new`](WsGuard::new).
    pub fn auth<B: Authenticator>(self, auth: HandshakeAuthLayer<B>) -> WsGuard<B> {
        WsGuard {
            origin: self.origin,
            client_ip: self.client_ip,
            rate: self.rate,
            throttle: self.throttle,
            auth,
            revocation: self.revocation,
            quota: self.quota,
            socket: self.socket,
            drain: self.drain,
            #[cfg(feature = "redis")]
            fleet: self.fleet,
            on_rejection: self.on_rejection,
            defaults: self.defaults,
        }
    }

    /// Enforces `revocations` (a [`Revocations`], or a `&Fleet`): revoked credentials get
    /// `401` and their live sockets close with `1008`. Replaces; default: the guard's own
    /// registry (see [`revocation_registry`](Self::revocation_registry)), or the fleet's in
    /// fleet mode.
    pub fn revocations(mut self, revocations: impl Into<Revocations>) -> Self {
        self.revocation = Part::Custom(revocations.into());
        self
    }

    /// No revocation check, also in fleet mode. Undone by [`revocations`](Self::revocations).
    pub fn without_revocation(mut self) -> Self {
        self.revocation = Part::Off;
        self
    }

    /// The concurrent-socket quota. Replaces; default 16 open sockets per client IP network
    /// and 8 per identity, no global cap. In fleet mode the same caps are counted in Redis.
    pub fn quota(mut self, quota: ConnectionQuotaLayer) -> Self {
        self.quota = Part::Custom(quota);
        self
    }

    /// No socket quota. Undone by [`quota`](Self::quota).
    pub fn without_quota(mut self) -> Self {
        self.quota = Part::Off;
        self
    }

    /// The live-socket policy. Replaces; default [`SocketPolicyLayer::new`] (64 KiB
    /// messages, heartbeat, idle timeout, …). It cannot be switched off: without it
    /// [`GuardedUpgrade`](crate::socket::GuardedUpgrade) falls back to the defaults anyway.
    pub fn socket_policy(mut self, policy: SocketPolicyLayer) -> Self {
        self.socket = Part::Custom(policy);
        self
    }

    /// Graceful shutdown: handshakes are registered with `drain`, so that
    /// [`Drain::shutdown`] refuses new ones with `503` and closes every guarded socket with
    /// `1001` (see the [socket docs](crate::socket#graceful-drain)). The check runs first,
    /// before the origin guard: a refusal while shutting down costs nothing, not even a
    /// one-time token. Replaces the drain of an earlier call; default: none.
    pub fn drain(mut self, drain: &Drain) -> Self {
        self.drain = Some(drain.clone());
        self
    }

    /// Fleet mode: the rate limit, the quota and (unless switched off or replaced) the
    /// revocation check are shared with every instance on `fleet`, through Redis. The
    /// settings stay those of [`rate_limit`](Self::rate_limit) and [`quota`](Self::quota).
    /// Replaces the fleet of an earlier call; default: this instance only.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet(mut self, fleet: &Fleet) -> Self {
        self.fleet = Some(fleet.clone());
        self
    }

    /// Builds the rejection response of every part (origin, client IP, rate limit,
    /// throttle, auth, revocation, quota, and in fleet mode the `503` of the fleet's
    /// `FailurePolicy::Refuse`) from the [`Rejection`] instead of the default, which is
    /// [`Rejection::into_response`]. Replaces the guard's previous hook, and the hook of
    /// every part, the default ones and the ones handed in (`.rate_limit(..)`,
    /// `.origin(..)`, before or after this call) alike: the hook matches on the
    /// [`Rejection`] variant to treat one part differently. Default: none, every part keeps
    /// its own hook, if it has one.
    ///
    /// Whatever the hook returns, the typed cause and the [`Rejection`] are put in the
    /// response extensions, and `Retry-After` is added when the response lacks it and the
    /// cause knows the wait ([`Rejection::retry_after`]); `WWW-Authenticate` is not added (a
    /// hook may answer with another status: start from `rejection.clone().into_response()`
    /// to keep every default header).
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// The rate limit, on the guard's fleet unless it has a fleet backend of its own.
    fn rate_stage(&self, defaults: &Defaults) -> Option<RateLimitLayer> {
        let layer = self.rate.resolve(&defaults.rate)?;
        let layer = hooked!(layer, self.on_rejection.as_ref());
        #[cfg(feature = "redis")]
        let layer = match &self.fleet {
            Some(fleet) if layer.backend.fleet().is_none() => layer.fleet(fleet),
            _ => layer,
        };
        Some(layer)
    }

    /// The quota, on the guard's fleet unless it has a fleet backend of its own.
    fn quota_stage(&self, defaults: &Defaults) -> Option<ConnectionQuotaLayer> {
        let layer = self.quota.resolve(&defaults.quota)?;
        let layer = hooked!(layer, self.on_rejection.as_ref());
        #[cfg(feature = "redis")]
        let layer = match &self.fleet {
            Some(fleet) if layer.backend.fleet().is_none() => layer.fleet(fleet),
            _ => layer,
        };
        Some(layer)
    }

    fn revocation_stage(&self, defaults: &Defaults) -> Option<RevocationLayer> {
        match &self.revocation {
            Part::Off => None,
            _ => Some(hooked!(
                RevocationLayer::new(self.registry(defaults)),
                self.on_rejection.as_ref()
            )),
        }
    }

    /// The registry the revocation check uses: the one handed in, the fleet's, or the
    /// guard's own.
    fn registry(&self, defaults: &Defaults) -> Revocations {
        match &self.revocation {
            Part::Custom(revocations) => revocations.clone(),
            #[cfg(feature = "redis")]
            _ if self.fleet.is_some() => self
                .fleet
                .as_ref()
                .map_or_else(|| defaults.revocations.clone(), Fleet::revocations),
            _ => defaults.revocations.clone(),
        }
    }

    /// The revocation registry this guard checks, for the application's logout and
    /// password-change routes: [`Revocations::revoke_identity`] and friends refuse the
    /// credentials from then on and close their live sockets with `1008`. It is the one
    /// handed to [`revocations`](Self::revocations), the fleet's in fleet mode, or else the
    /// guard's own, made on first use and shared by every clone and route of this guard.
    /// With [`without_revocation`](Self::without_revocation) nothing checks it.
    pub fn revocation_registry(&self) -> Revocations {
        self.registry(self.defaults.get_or_init(Defaults::new))
    }

    fn layers(&self) -> Layers<A>
    where
        A: Clone,
    {
        let defaults = self.defaults.get_or_init(Defaults::new);
        let hook = self.on_rejection.as_ref();
        let origin = hooked!(self.origin.clone(), hook);
        let client_ip = hooked!(self.client_ip.clone(), hook);
        let throttle = (self.throttle.resolve(&defaults.throttle)).map(|l| hooked!(l, hook));
        let auth = hooked!(self.auth.clone(), hook);
        let drain = self
            .drain
            .as_ref()
            .map(|d| hooked!(DrainLayer::new(d), hook));
        tower::ServiceBuilder::new()
            .option_layer(drain)
            .layer(origin)
            .layer(client_ip)
            .option_layer(self.rate_stage(defaults))
            .option_layer(throttle)
            .layer(auth)
            .option_layer(self.revocation_stage(defaults))
            .option_layer(self.quota_stage(defaults))
            .layer(
                self.socket
                    .resolve(&defaults.socket)
                    .unwrap_or_else(|| defaults.socket.clone()),
            )
            .into_inner()
    }
}

impl<A: Clone> Clone for WsGuard<A> {
    fn clone(&self) -> Self {
        Self {
            origin: self.origin.clone(),
            client_ip: self.client_ip.clone(),
            rate: self.rate.clone(),
            throttle: self.throttle.clone(),
            auth: self.auth.clone(),
            revocation: self.revocation.clone(),
            quota: self.quota.clone(),
            socket: self.socket.clone(),
            drain: self.drain.clone(),
            #[cfg(feature = "redis")]
            fleet: self.fleet.clone(),
            on_rejection: self.on_rejection.clone(),
            defaults: Arc::clone(&self.defaults),
        }
    }
}

impl<A> fmt::Debug for WsGuard<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WsGuard");
        d.field("origin", &self.origin)
            .field("client_ip", &self.client_ip)
            .field("rate", &self.rate)
            .field("throttle", &self.throttle)
            .field("auth", &self.auth)
            .field("revocation", &self.revocation)
            .field("quota", &self.quota)
            .field("socket", &self.socket)
            .field("drain", &self.drain)
            .field("on_rejection", &self.on_rejection);
        #[cfg(feature = "redis")]
        d.field("fleet", &self.fleet.as_ref().map(Fleet::prefix));
        d.finish()
    }
}

impl<S, A> Layer<S> for WsGuard<A>
where
    A: Clone,
    Layers<A>: Layer<S>,
{
    type Service = <Layers<A> as Layer<S>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        self.layers().layer(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::StaticTokens, revoke::RevokeError};

    fn guard() -> WsGuard<StaticTokens<()>> {
        WsGuard::new(StaticTokens::new().token("s3cret-token", "alice", ()))
            .allow_origin("https://app.example.com")
            .unwrap()
    }

    #[test]
    fn building_and_cloning_create_no_state_and_layer_creates_it_once() {
        let guard = guard();
        let clone = guard.clone().without_rate_limit();
        assert!(guard.defaults.get().is_none());
        assert!(clone.defaults.get().is_none());
        let _service = guard.layer(tower::service_fn(
            |_: http::Request<axum::body::Body>| async {
                Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                    axum::body::Body::empty(),
                ))
            },
        ));
        // The clone sees the state the first `layer()` made, and uses it.
        let made = guard.defaults.get().map(std::ptr::from_ref);
        assert!(made.is_some());
        assert_eq!(clone.defaults.get().map(std::ptr::from_ref), made);
    }

    #[test]
    fn setters_reject_unparsable_values_with_the_crate_error() {
        struct Case {
            name: &'static str,
            result: Result<WsGuard<StaticTokens<()>>, ConfigError>,
            expected: fn(&ConfigError) -> bool,
        }
        let cases = [
            Case {
                name: "origin with a path",
                result: guard().allow_origin("https://app.example.com/path"),
                expected: |e| matches!(e, ConfigError::InvalidOrigin { .. }),
            },
            Case {
                name: "host with a scheme",
                result: guard().allow_host("https://api.example.com"),
                expected: |e| matches!(e, ConfigError::InvalidHost { .. }),
            },
            Case {
                name: "pattern without a wildcard label",
                result: guard().allow_origin_pattern("https://*x.example.com"),
                expected: |e| matches!(e, ConfigError::InvalidPattern { .. }),
            },
            Case {
                name: "pattern over a public suffix",
                result: guard().allow_origin_pattern("https://*.com"),
                expected: |e| matches!(e, ConfigError::PatternTooBroad { .. }),
            },
        ];
        for case in cases {
            match case.result {
                Err(e) if (case.expected)(&e) => {}
                other => panic!("{}: {:?}", case.name, other.map(|_| ())),
            }
        }
    }

    /// One hook on the guard answers for every part: it sees each refusal as its
    /// [`Rejection`] variant, and the response keeps the typed cause and the `Rejection`.
    #[tokio::test]
    async fn one_hook_on_the_guard_sees_every_part_s_rejection() {
        use std::{
            net::SocketAddr,
            sync::{Arc, Mutex, PoisonError},
        };

        use axum::{body::Body, extract::ConnectInfo, response::Response};
        use http::{Request, StatusCode, header};
        use tower::ServiceExt;

        use crate::{auth::AuthError, origin::OriginError, rate_limit::RateLimitError};

        let seen: Arc<Mutex<Vec<Rejection>>> = Arc::default();
        let record = Arc::clone(&seen);
        let guard = guard().on_rejection(move |rejection: &Rejection| {
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(rejection.clone());
            (StatusCode::IM_A_TEAPOT, "refused")
        });
        let registry = guard.revocation_registry();
        let svc = guard.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let handshake = |origin: &str, token: Option<&str>| {
            crate::test_support::handshake(origin, token, [203, 0, 113, 7], Body::empty())
        };
        let call = |req| {
            let svc = svc.clone();
            async move { svc.oneshot(req).await.unwrap_or_else(|e| match e {}) }
        };

        struct Case {
            name: &'static str,
            origin: &'static str,
            token: Option<&'static str>,
            status: StatusCode,
            rejection: Option<fn(&Rejection) -> bool>,
        }
        let bad = Some("guess");
        let good = Some("s3cret-token");
        let failed_auth: fn(&Rejection) -> bool =
            |r| matches!(r, Rejection::Auth(AuthError::Invalid));
        let cases = [
            Case {
                name: "cross-site origin",
                origin: "https://evil.example",
                token: good,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(|r| matches!(r, Rejection::Origin(OriginError::NotAllowed))),
            },
            Case {
                name: "no credential",
                origin: "https://app.example.com",
                token: None,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(|r| matches!(r, Rejection::Auth(AuthError::Missing))),
            },
            Case {
                name: "accepted",
                origin: "https://app.example.com",
                token: good,
                status: StatusCode::OK,
                rejection: None,
            },
            // Four more failures reach the default throttle's 5 …
            Case {
                name: "failure 2",
                origin: "https://app.example.com",
                token: bad,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(failed_auth),
            },
            Case {
                name: "failure 3",
                origin: "https://app.example.com",
                token: bad,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(failed_auth),
            },
            Case {
                name: "failure 4",
                origin: "https://app.example.com",
                token: bad,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(failed_auth),
            },
            Case {
                name: "failure 5",
                origin: "https://app.example.com",
                token: bad,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(failed_auth),
            },
            // … and the client is locked out before the authenticator runs.
            Case {
                name: "locked out",
                origin: "https://app.example.com",
                token: good,
                status: StatusCode::IM_A_TEAPOT,
                rejection: Some(|r| {
                    matches!(
                        r,
                        Rejection::RateLimit(RateLimitError::TooManyFailedAuth { .. })
                    )
                }),
            },
        ];
        let mut expected = Vec::new();
        for case in &cases {
            let res = call(handshake(case.origin, case.token)).await;
            assert_eq!(res.status(), case.status, "{}", case.name);
            let carried = res.extensions().get::<Rejection>();
            match case.rejection {
                None => assert!(carried.is_none(), "{}", case.name),
                Some(is) => {
                    let Some(rejection) = carried else {
                        panic!("{}: no Rejection in the extensions", case.name);
                    };
                    assert!(is(rejection), "{}: {rejection:?}", case.name);
                    let typed = match rejection {
                        Rejection::Origin(e) => res.extensions().get::<OriginError>() == Some(e),
                        Rejection::Auth(e) => res.extensions().get::<AuthError>() == Some(e),
                        Rejection::RateLimit(e) => {
                            res.extensions().get::<RateLimitError>() == Some(e)
                        }
                        _ => false,
                    };
                    assert!(typed, "{}: the typed cause is in the extensions", case.name);
                    assert_eq!(
                        res.headers().contains_key(header::RETRY_AFTER),
                        rejection.retry_after().is_some(),
                        "{}",
                        case.name
                    );
                    expected.push(rejection.clone());
                }
            }
        }

        // The revocation check answers through the same hook (from another address: the
        // first one is locked out).
        let revoked = registry.revoke_identity("alice").await;
        assert!(revoked.is_ok());
        let mut req = handshake("https://app.example.com", good);
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 8], 50000))));
        let res = call(req).await;
        assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
        let carried = res.extensions().get::<Rejection>().cloned();
        assert!(
            matches!(carried, Some(Rejection::Revoke(RevokeError::Revoked))),
            "{carried:?}"
        );
        expected.extend(carried);

        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(seen, expected, "the hook saw each rejection once, in order");
    }

    /// A part handed in keeps its own hook, until the guard's hook replaces it.
    #[tokio::test]
    async fn the_guard_s_hook_replaces_the_hook_of_a_part_handed_in() {
        use axum::{body::Body, response::Response};
        use http::{Request, StatusCode};
        use tower::ServiceExt;

        let origin = OriginGuardLayer::new()
            .allow_origin("https://app.example.com")
            .unwrap_or_default()
            .on_rejection(|_: &Rejection| StatusCode::NOT_FOUND);
        let request = || {
            Request::get("/ws")
                .header("host", "api.example.com")
                .header("origin", "https://evil.example")
                .header("upgrade", "websocket")
                .body(Body::empty())
                .unwrap_or_default()
        };
        let inner = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        struct Case {
            name: &'static str,
            guard: WsGuard<StaticTokens<()>>,
            status: StatusCode,
        }
        let cases = [
            Case {
                name: "the part's own hook",
                guard: guard().origin(origin.clone()),
                status: StatusCode::NOT_FOUND,
            },
            Case {
                name: "the guard's hook, set before",
                guard: guard()
                    .on_rejection(|_: &Rejection| StatusCode::IM_A_TEAPOT)
                    .origin(origin.clone()),
                status: StatusCode::IM_A_TEAPOT,
            },
            Case {
                name: "the guard's hook, set after",
                guard: guard()
                    .origin(origin)
                    .on_rejection(|_: &Rejection| StatusCode::IM_A_TEAPOT),
                status: StatusCode::IM_A_TEAPOT,
            },
        ];
        for case in cases {
            let res = case
                .guard
                .layer(inner)
                .oneshot(request())
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(res.status(), case.status, "{}", case.name);
            assert_eq!(
                res.extensions().get::<Rejection>(),
                Some(&Rejection::Origin(crate::origin::OriginError::NotAllowed)),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn debug_never_prints_the_credential() {
        let text = format!("{:?}", guard());
        assert!(text.contains("WsGuard"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
