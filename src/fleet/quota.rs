//! The fleet backend of [`ConnectionQuotaLayer`]: concurrent-socket caps as Redis leases
//! with a TTL.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use axum::response::Response;
use http::Request;
use redis::{RedisResult, Value};
use tower::Service;

use super::{
    FailurePolicy, Fleet, FleetError, handle::millis, note_fallback, refuse_unavailable, scripts,
};
use crate::rate_limit::{
    ConnectionPermit, ConnectionQuota, ConnectionQuotaLayer, RateLimitError, emit, reject,
};

impl ConnectionQuotaLayer {
    /// Counts the sockets in `fleet`'s Redis, so the caps hold for every instance sharing it.
    /// Replaces; default: this instance's memory.
    ///
    /// Each admitted handshake takes a lease in Redis (one member per capped set, with a TTL
    /// of [`FleetBuilder::lease_ttl`](super::FleetBuilder::lease_ttl)) and carries it in the
    /// request's [`ConnectionPermit`]; [`GuardedUpgrade`](crate::socket::GuardedUpgrade)
    /// keeps the permit until the socket ends. While the lease lives it is renewed every
    /// third of the TTL; when it drops it is released; if the instance dies, it expires.
    /// While Redis is unreachable the fleet's [`FailurePolicy`] decides: this instance's
    /// counts with the same caps (the socket still gets a lease, which its renewals create
    /// in Redis once Redis is back), or `503`. See the [fleet docs](crate::fleet).
    #[must_use]
    pub fn fleet(mut self, fleet: &Fleet) -> Self {
        self.backend.fleet = Some(fleet.clone());
        self
    }

    /// The name of these caps in Redis (`{<prefix>:quota:<name>}:…`, one hash tag: all of a
    /// quota's keys are in one Redis Cluster slot), with a
    /// [`fleet`](Self::fleet) backend. Replaces; default `"sockets"`. Give each fleet quota
    /// of a service its own name: two quotas with one name share counts.
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.backend.name = name.into();
        self
    }

    /// Live sockets of `subject` on every instance, with a [`fleet`](Self::fleet) backend;
    /// on this instance ([`active_for_identity`](Self::active_for_identity)) without.
    pub async fn fleet_active_for_identity(&self, subject: &str) -> Result<usize, FleetError> {
        match self.backend.fleet() {
            Some(fleet) => count(fleet, self.identity_key(fleet, subject)).await,
            None => Ok(self.active_for_identity(subject)),
        }
    }

    /// Live sockets of `ip`'s key on every instance, with a [`fleet`](Self::fleet) backend;
    /// on this instance ([`active_for_ip`](Self::active_for_ip)) without.
    pub async fn fleet_active_for_ip(&self, ip: IpAddr) -> Result<usize, FleetError> {
        match self.backend.fleet() {
            Some(fleet) => count(fleet, self.ip_key(fleet, ip)).await,
            None => Ok(self.active_for_ip(ip)),
        }
    }

    /// Live sockets under the global cap on every instance, with a [`fleet`](Self::fleet)
    /// backend; on this instance ([`active`](Self::active)) without.
    pub async fn fleet_active(&self) -> Result<usize, FleetError> {
        match self.backend.fleet() {
            Some(fleet) => count(fleet, self.global_key(fleet)).await,
            None => Ok(self.active()),
        }
    }

    /// The hash tag of every key of this quota, `{<prefix>:quota:<name>}`: the sets of one
    /// lease (per IP, per identity, global) and its release marker share a Redis Cluster
    /// slot, since one script touches them together.
    fn tag(&self, fleet: &Fleet) -> String {
        fleet.slot_tag(&format!("quota:{}", self.backend.name))
    }

    fn identity_key(&self, fleet: &Fleet, subject: &str) -> String {
        format!("{}:id:{subject}", self.tag(fleet))
    }

    fn ip_key(&self, fleet: &Fleet, ip: IpAddr) -> String {
        format!("{}:ip:{}", self.tag(fleet), self.prefix.key(ip))
    }

    fn global_key(&self, fleet: &Fleet) -> String {
        format!("{}:global", self.tag(fleet))
    }

    /// The capped sets this handshake counts in, with their caps and the error for each.
    fn sets(
        &self,
        fleet: &Fleet,
        ip: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Vec<(String, usize, RateLimitError)> {
        let retry_after = self.retry_after;
        let mut sets = Vec::with_capacity(3);
        if let (Some(limit), Some(ip)) = (self.per_ip, ip) {
            let limit = limit.get();
            sets.push((
                self.ip_key(fleet, ip),
                limit,
                RateLimitError::ClientIpQuota { limit, retry_after },
            ));
        }
        if let (Some(limit), Some(subject)) = (self.per_identity, identity) {
            let limit = limit.get();
            sets.push((
                self.identity_key(fleet, subject),
                limit,
                RateLimitError::IdentityQuota { limit, retry_after },
            ));
        }
        if let Some(limit) = self.global {
            let limit = limit.get();
            sets.push((
                self.global_key(fleet),
                limit,
                RateLimitError::GlobalQuota { limit, retry_after },
            ));
        }
        sets
    }
}

async fn count(fleet: &Fleet, key: String) -> Result<usize, FleetError> {
    let mut conn = fleet.connection();
    fleet
        .run("quota_count", async move {
            scripts::COUNT
                .key(key)
                .arg("")
                .invoke_async::<usize>(&mut conn)
                .await
        })
        .await
}

/// The fleet path of [`ConnectionQuota`]: takes the lease in Redis, then calls `svc`'s inner
/// service (which was polled ready), rejects, or under the fallback policy lets this
/// instance's counts decide.
pub(crate) async fn admit<S, ReqBody, ResBody>(
    mut svc: ConnectionQuota<S>,
    fleet: Fleet,
    mut req: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    let layer = &svc.layer;
    let ip = crate::core::client_ip(req.extensions());
    let identity: Option<Arc<str>> = crate::core::identity(req.extensions()).map(Arc::from);
    if layer.per_ip.is_some() && ip.is_none() {
        let error = RateLimitError::MissingClientIp;
        emit(&error, None, identity.as_deref());
        return Ok(crate::core::convert_body(reject(
            layer.on_rejection.as_ref(),
            error,
        )));
    }
    let sets = layer.sets(&fleet, ip, identity.as_deref());
    if sets.is_empty() {
        return svc.inner.call(req).await;
    }
    let lease = FleetLease::new(
        &fleet,
        &layer.tag(&fleet),
        sets.iter().map(|s| s.0.clone()).collect(),
    );
    match lease.acquire(&sets).await {
        Ok(None) => {
            attach(&mut req, lease);
            svc.inner.call(req).await
        }
        Ok(Some(error)) => {
            lease.forget();
            emit(&error, ip, identity.as_deref());
            Ok(crate::core::convert_body(reject(
                layer.on_rejection.as_ref(),
                error,
            )))
        }
        Err(error) => {
            if fleet.failure_policy() == FailurePolicy::Refuse {
                // Dropped with a release: Redis may have taken it after the timeout.
                drop(lease);
                return Ok(crate::core::convert_body(refuse_unavailable(
                    layer.on_rejection.as_ref(),
                    "quota",
                    error,
                    ip,
                )));
            }
            note_fallback("quota", ip);
            // Counted by its renewals once Redis is back.
            attach(&mut req, lease);
            svc.admit_local(req).await
        }
    }
}

fn attach<B>(req: &mut Request<B>, lease: FleetLease) {
    let releases = lease.fleet.releases().clone();
    let mut permit = ConnectionPermit::holding((lease, crate::metrics::QuotaHeld::new("fleet")));
    // A drain waits for the release this permit's drop starts.
    permit.note_release(releases);
    crate::core::attach_permit(req.extensions_mut(), permit);
}

/// What a reply of [`scripts::ACQUIRE`] decides for `sets`: `0` takes the lease (`None`),
/// `i` in `1..=sets.len()` is the error of the `i`-th set, which is full. Any other reply is
/// an error, never an admission.
pub(crate) fn acquire_decision(
    reply: Value,
    sets: &[(String, usize, RateLimitError)],
) -> RedisResult<Option<RateLimitError>> {
    match scripts::int_reply(&reply) {
        Some(0) => Ok(None),
        full => full
            .and_then(|full| usize::try_from(full).ok())
            .and_then(|i| sets.get(i.checked_sub(1)?))
            .map(|(_, _, error)| Some(error.clone()))
            .ok_or_else(|| scripts::unexpected_reply("quota_acquire", &reply)),
    }
}

/// One socket's place in the fleet quota: a member, with an expiry, of each capped Redis set.
/// Renewed every third of the lease TTL while it lives, released when dropped. Held in the
/// [`ConnectionPermit`] of the request.
pub(crate) struct FleetLease {
    fleet: Fleet,
    /// The release marker, then the capped sets: the `KEYS` of renewals and the release,
    /// all of one hash tag.
    keys: Arc<[String]>,
    id: Arc<str>,
    renewer: Option<tokio::task::AbortHandle>,
    release: bool,
}

impl fmt::Debug for FleetLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLease")
            .field("id", &self.id)
            .field("sets", &self.keys.len().saturating_sub(1))
            .finish()
    }
}

impl FleetLease {
    /// A lease in the capped sets `sets`, all of the hash tag `tag`.
    fn new(fleet: &Fleet, tag: &str, sets: Vec<String>) -> Self {
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
        let mut keys = Vec::with_capacity(sets.len() + 1);
        keys.push(format!("{tag}:released:{id}"));
        keys.extend(sets);
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
        self.fleet
            .run("quota_acquire", async move {
                invocation
                    .invoke_async::<Value>(&mut conn)
                    .await
                    .and_then(|reply| acquire_decision(reply, sets))
            })
            .await
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
                invocation.arg("").arg(millis(fleet.lease_ttl())).arg(&*id);
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
        // Counted from now, so a drain that saw this socket end also sees its release.
        let running = fleet.releases().start();
        runtime.spawn(async move {
            let _running = running;
            let mut conn = fleet.connection();
            let mut invocation = scripts::RELEASE.prepare_invoke();
            for key in keys.iter() {
                invocation.key(key);
            }
            invocation.arg(&*id).arg(millis(fleet.lease_ttl()));
            let _ = fleet
                .run("quota_release", async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
        });
    }
}
