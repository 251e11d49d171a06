//! [`WsGuard`]: every layer of the crate in the documented order, one builder, one `Layer`.

use std::{
    fmt,
    num::NonZeroUsize,
    sync::{Arc, OnceLock},
};

use tower::{
    Layer,
    layer::util::{Identity as NoLayer, Stack},
};

#[cfg(feature = "redis")]
use crate::fleet::{Fleet, FleetQuotaLayer, FleetRateLimitLayer};
use crate::{
    ConfigError,
    auth::{Authenticator, HandshakeAuthLayer},
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    revoke::{RevocationLayer, Revocations},
    socket::SocketPolicyLayer,
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

#[cfg(feature = "redis")]
type RateStage = tower::util::Either<FleetRateLimitLayer, RateLimitLayer>;
#[cfg(not(feature = "redis"))]
type RateStage = RateLimitLayer;

#[cfg(feature = "redis")]
type QuotaStage = tower::util::Either<FleetQuotaLayer, ConnectionQuotaLayer>;
#[cfg(not(feature = "redis"))]
type QuotaStage = ConnectionQuotaLayer;

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
        Opt<QuotaStage>,
        Stack<
            Opt<RevocationLayer>,
            Stack<
                HandshakeAuthLayer<A>,
                Stack<
                    Opt<AuthThrottleLayer>,
                    Stack<Opt<RateStage>, Stack<ClientIpLayer, Stack<OriginGuardLayer, NoLayer>>>,
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
/// request → origin → client IP → rate → throttle → auth → revocation → quota → socket policy → handler
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
/// | revocation | on: the guard's own registry ([`revocation_registry`](WsGuard::revocation_registry)), the fleet's with [`fleet`](WsGuard::fleet) | [`revocations`](WsGuard::revocations) | [`without_revocation`](WsGuard::without_revocation) |
/// | quota | 16 sockets per client IP, 8 per identity | [`quota`](WsGuard::quota) | [`without_quota`](WsGuard::without_quota) |
/// | socket policy | [`SocketPolicyLayer::new`] (64 KiB messages, heartbeat, idle timeout, …) | [`socket_policy`](WsGuard::socket_policy) | never |
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
/// # Fleet mode
///
/// With feature `redis`, [`fleet`](WsGuard::fleet) moves the rate limit, the quota and the
/// revocation check to Redis (the fleet counterparts of the same settings), so the limits
/// hold across every instance; the throttle and the socket policy stay per instance.
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
    #[cfg(feature = "redis")]
    fleet: Option<Fleet>,
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
        Self::from_auth(HandshakeAuthLayer::new(authenticator))
    }

    fn from_auth(auth: HandshakeAuthLayer<A>) -> Self {
        Self {
            origin: OriginGuardLayer::new(),
            client_ip: ClientIpLayer::new(),
            rate: Part::Default,
            throttle: Part::Default,
            auth,
            revocation: Part::Default,
            quota: Part::Default,
            socket: Part::Default,
            #[cfg(feature = "redis")]
            fleet: None,
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
            #[cfg(feature = "redis")]
            fleet: self.fleet,
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

    fn rate_stage(&self, defaults: &Defaults) -> Option<RateStage> {
        let local = self.rate.resolve(&defaults.rate)?;
        #[cfg(feature = "redis")]
        let local = match &self.fleet {
            Some(fleet) => RateStage::Left(FleetRateLimitLayer::from_local(fleet, local)),
            None => RateStage::Right(local),
        };
        Some(local)
    }

    fn quota_stage(&self, defaults: &Defaults) -> Option<QuotaStage> {
        let local = self.quota.resolve(&defaults.quota)?;
        #[cfg(feature = "redis")]
        let local = match &self.fleet {
            Some(fleet) => QuotaStage::Left(FleetQuotaLayer::from_local(fleet, local)),
            None => QuotaStage::Right(local),
        };
        Some(local)
    }

    fn revocation_stage(&self, defaults: &Defaults) -> Option<RevocationLayer> {
        match &self.revocation {
            Part::Off => None,
            _ => Some(RevocationLayer::new(self.registry(defaults))),
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
        tower::ServiceBuilder::new()
            .layer(self.origin.clone())
            .layer(self.client_ip.clone())
            .option_layer(self.rate_stage(defaults))
            .option_layer(self.throttle.resolve(&defaults.throttle))
            .layer(self.auth.clone())
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
            #[cfg(feature = "redis")]
            fleet: self.fleet.clone(),
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
            .field("socket", &self.socket);
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
    use crate::auth::StaticTokens;

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

    #[test]
    fn debug_never_prints_the_credential() {
        let text = format!("{:?}", guard());
        assert!(text.contains("WsGuard"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
