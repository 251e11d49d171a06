//! [`FleetQuotaLayer`]: concurrent-socket caps as Redis leases with a TTL.

use std::{
    fmt,
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::response::Response;
use http::Request;
use tower::{Layer, Service};

use super::{
    FailurePolicy, Fleet, FleetError, ResponseFuture, handle::millis, note_fallback,
    refuse_unavailable, scripts,
};
use crate::{
    client_ip::KeyPrefix,
    rate_limit::{
        ConnectionPermit, ConnectionQuota, ConnectionQuotaLayer, RateLimitError, emit, reject,
    },
};

/// Layer that caps concurrently open sockets per client IP, per identity and in total across
/// every instance sharing a [`Fleet`]: the fleet counterpart of [`ConnectionQuotaLayer`],
/// with the same builder and rejections (`429`, `503` for the global cap). See the
/// [module docs](super).
///
/// Each admitted handshake takes a [`FleetLease`] in Redis (one member per capped set, with a
/// TTL of [`FleetBuilder::lease_ttl`](super::FleetBuilder::lease_ttl)) and carries it in the
/// request's [`ConnectionPermit`]; [`GuardedUpgrade`](crate::socket::GuardedUpgrade) keeps
/// the permit until the socket ends. While the lease lives it is renewed every third of the
/// TTL; when it drops it is released. If the instance dies, the lease expires.
///
/// While Redis is unreachable, under [`FailurePolicy::FallBackToLocal`], the embedded local
/// [`ConnectionQuotaLayer`] with the same caps decides, and the admitted socket still gets a
/// lease, which its renewals create in Redis once Redis is back.
#[derive(Clone)]
pub struct FleetQuotaLayer {
    fleet: Fleet,
    local: ConnectionQuotaLayer,
    per_ip: Option<NonZeroUsize>,
    per_identity: Option<NonZeroUsize>,
    global: Option<NonZeroUsize>,
    name: Arc<str>,
}

impl fmt::Debug for FleetQuotaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetQuotaLayer")
            .field("name", &self.name)
            .field("per_ip", &self.per_ip)
            .field("per_identity", &self.per_identity)
            .field("global", &self.global)
            .field("local", &self.local)
            .finish()
    }
}

impl FleetQuotaLayer {
    /// No caps (nothing is refused), keys /32 for IPv4 and /64 for IPv6, `Retry-After: 1`,
    /// named `"sockets"`: [`ConnectionQuotaLayer::new`]'s defaults.
    #[must_use]
    pub fn new(fleet: &Fleet) -> Self {
        Self {
            fleet: fleet.clone(),
            local: ConnectionQuotaLayer::new(),
            per_ip: None,
            per_identity: None,
            global: None,
            name: Arc::from("sockets"),
        }
    }

    /// The fleet counterpart of `local`: the same caps, keys and rejection, counted in Redis
    /// (`WsGuard::fleet` uses it so one `ConnectionQuotaLayer` configures both modes).
    pub(crate) fn from_local(fleet: &Fleet, local: ConnectionQuotaLayer) -> Self {
        Self {
            fleet: fleet.clone(),
            per_ip: local.per_ip,
            per_identity: local.per_identity,
            global: local.global,
            local,
            name: Arc::from("sockets"),
        }
    }

    /// At most `n` open sockets per client address across the fleet. Over it: `429`.
    /// Replaces; default: no cap.
    #[must_use]
    pub fn per_ip(mut self, n: NonZeroUsize) -> Self {
        self.local = self.local.per_ip(n);
        self.per_ip = Some(n);
        self
    }

    /// At most `n` open sockets per authenticated subject across the fleet. Over it: `429`.
    /// Replaces; default: no cap.
    #[must_use]
    pub fn per_identity(mut self, n: NonZeroUsize) -> Self {
        self.local = self.local.per_identity(n);
        self.per_identity = Some(n);
        self
    }

    /// At most `n` open sockets through this layer on all instances. Over it: `503`.
    /// Replaces; default: no cap.
    #[must_use]
    pub fn global(mut self, n: NonZeroUsize) -> Self {
        self.local = self.local.global(n);
        self.global = Some(n);
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.local = self.local.key_prefix(prefix);
        self
    }

    /// The `Retry-After` hint of quota rejections. Replaces; default 1 s.
    #[must_use]
    pub fn retry_after(mut self, wait: impl Into<Duration>) -> Self {
        self.local = self.local.retry_after(wait);
        self
    }

    /// The name of this quota in Redis (`<prefix>:quota:<name>:*`). Replaces; default
    /// `"sockets"`.
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the rejection response, as [`ConnectionQuotaLayer::on_rejection`]. Replaces.
    #[must_use]
    pub fn on_rejection<F>(mut self, f: F) -> Self
    where
        F: Fn(&RateLimitError) -> Response + Send + Sync + 'static,
    {
        self.local = self.local.on_rejection(f);
        self
    }

    /// The Redis set of leases for an identity.
    fn identity_key(&self, subject: &str) -> String {
        self.fleet.key(&format!("quota:{}:id:{subject}", self.name))
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        self.fleet.key(&format!(
            "quota:{}:ip:{}",
            self.name,
            self.local.prefix.key(ip)
        ))
    }

    fn global_key(&self) -> String {
        self.fleet.key(&format!("quota:{}:global", self.name))
    }

    /// Live leases (sockets) of `subject` on every instance.
    pub async fn active_for_identity(&self, subject: &str) -> Result<usize, FleetError> {
        self.count(self.identity_key(subject)).await
    }

    /// Live leases (sockets) of `ip`'s key on every instance.
    pub async fn active_for_ip(&self, ip: IpAddr) -> Result<usize, FleetError> {
        self.count(self.ip_key(ip)).await
    }

    /// Live leases under the global cap on every instance.
    pub async fn active(&self) -> Result<usize, FleetError> {
        self.count(self.global_key()).await
    }

    async fn count(&self, key: String) -> Result<usize, FleetError> {
        let mut conn = self.fleet.connection();
        self.fleet
            .run("quota_count", async move {
                scripts::COUNT
                    .key(key)
                    .arg("")
                    .invoke_async::<usize>(&mut conn)
                    .await
            })
            .await
    }

    /// The capped sets this handshake counts in, with their caps and the error for each.
    fn sets(
        &self,
        ip: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Vec<(String, usize, RateLimitError)> {
        let retry_after = self.local.retry_after;
        let mut sets = Vec::with_capacity(3);
        if let (Some(limit), Some(ip)) = (self.per_ip, ip) {
            let limit = limit.get();
            sets.push((
                self.ip_key(ip),
                limit,
                RateLimitError::ClientIpQuota { limit, retry_after },
            ));
        }
        if let (Some(limit), Some(subject)) = (self.per_identity, identity) {
            let limit = limit.get();
            sets.push((
                self.identity_key(subject),
                limit,
                RateLimitError::IdentityQuota { limit, retry_after },
            ));
        }
        if let Some(limit) = self.global {
            let limit = limit.get();
            sets.push((
                self.global_key(),
                limit,
                RateLimitError::GlobalQuota { limit, retry_after },
            ));
        }
        sets
    }
}

impl<S> Layer<S> for FleetQuotaLayer {
    type Service = FleetQuota<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetQuota {
            local: self.local.layer(inner),
            layer: self.clone(),
        }
    }
}

/// Middleware that caps concurrently open sockets fleet-wide. Made by [`FleetQuotaLayer`].
#[derive(Clone, Debug)]
pub struct FleetQuota<S> {
    local: ConnectionQuota<S>,
    layer: FleetQuotaLayer,
}

impl<S> FleetQuota<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.local.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.local.get_mut()
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.local.into_inner()
    }
}

impl<S, B> Service<Request<B>> for FleetQuota<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.local.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ip = crate::core::client_ip(req.extensions());
        let identity: Option<Arc<str>> = crate::core::identity(req.extensions()).map(Arc::from);
        if self.layer.per_ip.is_some() && ip.is_none() {
            let error = RateLimitError::MissingClientIp;
            emit(&error, None, identity.as_deref());
            let response = reject(self.layer.local.on_rejection.as_ref(), error);
            return ResponseFuture::rejected(response);
        }
        let sets = self.layer.sets(ip, identity.as_deref());
        let clone = self.local.clone();
        let mut local = std::mem::replace(&mut self.local, clone);
        let layer = self.layer.clone();
        ResponseFuture::new(async move {
            if sets.is_empty() {
                return local.get_mut().call(req).await;
            }
            let lease = FleetLease::new(&layer.fleet, sets.iter().map(|s| s.0.clone()).collect());
            match lease.acquire(&sets).await {
                Ok(None) => {
                    attach(&mut req, lease);
                    local.get_mut().call(req).await
                }
                Ok(Some(error)) => {
                    lease.forget();
                    emit(&error, ip, identity.as_deref());
                    Ok(reject(layer.local.on_rejection.as_ref(), error))
                }
                Err(error) => {
                    if layer.fleet.failure_policy() == FailurePolicy::Refuse {
                        // Dropped with a release: Redis may have taken it after the timeout.
                        drop(lease);
                        return Ok(refuse_unavailable("quota", error, ip));
                    }
                    note_fallback("quota", ip);
                    // Counted by its renewals once Redis is back.
                    attach(&mut req, lease);
                    local.call(req).await
                }
            }
        })
    }
}

fn attach<B>(req: &mut Request<B>, lease: FleetLease) {
    let permit = ConnectionPermit::holding(lease);
    crate::core::attach_permit(req.extensions_mut(), permit);
}

/// One socket's place in the fleet quota: a member, with an expiry, of each capped Redis set.
/// Renewed every third of the lease TTL while it lives, released when dropped. Held in the
/// [`ConnectionPermit`] of the request.
pub struct FleetLease {
    fleet: Fleet,
    keys: Arc<[String]>,
    id: Arc<str>,
    renewer: Option<tokio::task::AbortHandle>,
    release: bool,
}

impl fmt::Debug for FleetLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLease")
            .field("id", &self.id)
            .field("sets", &self.keys.len())
            .finish()
    }
}

impl FleetLease {
    fn new(fleet: &Fleet, keys: Vec<String>) -> Self {
        let mut id = [0u8; 16];
        // A lease id only has to be unique; without the OS's randomness, the time will do.
        if getrandom::fill(&mut id).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            id = nanos.to_le_bytes();
        }
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut lease = Self {
            fleet: fleet.clone(),
            keys: keys.into(),
            id: id.into(),
            renewer: None,
            release: true,
        };
        lease.renewer = Some(lease.spawn_renewer());
        lease
    }

    /// Takes the lease, or returns the error of the first full set.
    async fn acquire(
        &self,
        sets: &[(String, usize, RateLimitError)],
    ) -> Result<Option<RateLimitError>, FleetError> {
        let mut conn = self.fleet.connection();
        let mut invocation = scripts::ACQUIRE.prepare_invoke();
        for (key, _, _) in sets {
            invocation.key(key);
        }
        invocation
            .arg("")
            .arg(millis(self.fleet.lease_ttl()))
            .arg(&*self.id);
        for (_, limit, _) in sets {
            invocation.arg(*limit);
        }
        let full: usize = self
            .fleet
            .run("quota_acquire", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(full
            .checked_sub(1)
            .and_then(|i| sets.get(i))
            .map(|(_, _, error)| error.clone()))
    }

    /// Drops the lease without a release round trip (it was never taken).
    fn forget(mut self) {
        self.release = false;
    }

    fn spawn_renewer(&self) -> tokio::task::AbortHandle {
        let fleet = self.fleet.clone();
        let keys = Arc::clone(&self.keys);
        let id = Arc::clone(&self.id);
        let every = (fleet.lease_ttl() / 3).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let mut conn = fleet.connection();
                let mut invocation = scripts::RENEW.prepare_invoke();
                for key in keys.iter() {
                    invocation.key(key);
                }
                invocation
                    .arg("")
                    .arg(millis(fleet.lease_ttl()))
                    .arg(&*id)
                    .arg(fleet.key(&format!("released:{id}")));
                // A failure is logged by `run`; the next tick tries again.
                let _ = fleet
                    .run("quota_renew", async move {
                        invocation.invoke_async::<i64>(&mut conn).await
                    })
                    .await;
            }
        })
        .abort_handle()
    }
}

impl Drop for FleetLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if !self.release {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the lease expires after its TTL.
        };
        let fleet = self.fleet.clone();
        let keys = Arc::clone(&self.keys);
        let id = Arc::clone(&self.id);
        runtime.spawn(async move {
            let mut conn = fleet.connection();
            let mut invocation = scripts::RELEASE.prepare_invoke();
            for key in keys.iter() {
                invocation.key(key);
            }
            invocation
                .arg(&*id)
                .arg(fleet.key(&format!("released:{id}")))
                .arg(millis(fleet.lease_ttl()));
            let _ = fleet
                .run("quota_release", async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
        });
    }
}
