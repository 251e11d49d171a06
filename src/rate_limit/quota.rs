use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::response::{IntoResponse, Response};
use http::Request;
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::{Rejection, core::LazyState, rejection::OnRejection};

use super::{ConnectionPermit, KeyPrefix, RateLimitError, ResponseFuture, future::After, reject};

#[derive(Default)]
struct Counts {
    by_ip: HashMap<IpNet, usize>,
    by_identity: HashMap<Arc<str>, usize>,
    global: usize,
}

#[derive(Default)]
struct QuotaShared {
    counts: Mutex<Counts>,
}

impl QuotaShared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One socket's place in the counts, given back on drop.
struct Slot {
    shared: Arc<QuotaShared>,
    ip: Option<IpNet>,
    identity: Option<Arc<str>>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.shared.counts();
        counts.global = counts.global.saturating_sub(1);
        if let Some(ip) = &self.ip {
            decrement(&mut counts.by_ip, ip);
        }
        if let Some(identity) = &self.identity {
            decrement(&mut counts.by_identity, identity);
        }
    }
}

/// Layer that caps concurrently open sockets per client IP, per identity and in total. See
/// the [module docs](super).
///
/// Each admitted handshake gets a [`ConnectionPermit`] in its request extensions (merged into
/// one already there); the slots count until the last clone of the permit drops, so the
/// upgraded socket must own it (`Extension<ConnectionPermit>` moved into `on_upgrade`, or
/// `wsguard::socket`'s extractor). A handshake that is not upgraded drops it with the request.
///
/// The per-IP cap needs [`ClientIp`](super::ClientIp) (`ClientIpLayer` in front; a request without it is a
/// `500` configuration error). The per-identity cap needs the auth layer in front; requests
/// without a [`Principal`](crate::auth::Principal) are not counted per identity.
///
/// A layer is configuration: the counts are created when the layer first makes a service
/// (or first admits a socket), then shared by every service made from this layer and its
/// clones, so one layer on an axum `Router` caps a client across all its routes. The caps
/// are read at each handshake: a setter changes the caps of that copy only, and the counts
/// stay shared with the copies it was cloned from.
#[derive(Clone)]
pub struct ConnectionQuotaLayer {
    state: LazyState<Arc<QuotaShared>>,
    pub(crate) per_ip: Option<NonZeroUsize>,
    pub(crate) per_identity: Option<NonZeroUsize>,
    pub(crate) global: Option<NonZeroUsize>,
    pub(crate) prefix: KeyPrefix,
    pub(crate) retry_after: Duration,
    pub(crate) on_rejection: Option<OnRejection>,
    /// Where the sockets count: in memory, or as leases in a fleet's Redis.
    #[cfg(feature = "redis")]
    pub(crate) backend: crate::fleet::Backend,
}

impl ConnectionQuotaLayer {
    /// No caps (sockets are counted, nothing is refused), keys /32 for IPv4 and /64 for IPv6,
    /// `Retry-After: 1`.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: LazyState::new(),
            per_ip: None,
            per_identity: None,
            global: None,
            prefix: KeyPrefix::DEFAULT,
            retry_after: Duration::from_secs(1),
            on_rejection: None,
            #[cfg(feature = "redis")]
            backend: crate::fleet::Backend::new("sockets"),
        }
    }

    /// At most `n` open sockets per client address (per [`KeyPrefix`] network). Over it:
    /// `429`. Replaces; default: no cap.
    #[must_use]
    pub fn per_ip(mut self, n: NonZeroUsize) -> Self {
        self.per_ip = Some(n);
        self
    }

    /// At most `n` open sockets per authenticated subject. Over it: `429`. Replaces; default:
    /// no cap.
    #[must_use]
    pub fn per_identity(mut self, n: NonZeroUsize) -> Self {
        self.per_identity = Some(n);
        self
    }

    /// At most `n` open sockets through this layer in total. Over it: `503`. Replaces;
    /// default: no cap.
    #[must_use]
    pub fn global(mut self, n: NonZeroUsize) -> Self {
        self.global = Some(n);
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The `Retry-After` hint of quota rejections (rounded up to whole seconds, at least 1).
    /// Replaces; default 1 s.
    #[must_use]
    pub fn retry_after(mut self, wait: impl Into<Duration>) -> Self {
        self.retry_after = wait.into();
        self
    }

    /// Builds the rejection response from the [`Rejection`] (always
    /// [`Rejection::RateLimit`] here). Replaces the previous hook; default: none, which
    /// answers [`Rejection::into_response`] (`429` or `503`, plain text, `Retry-After`).
    /// `Retry-After` is added if the hook's response lacks it, and the [`RateLimitError`]
    /// and the [`Rejection`] are always put in the extensions.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// The counts, created on first use.
    fn shared(&self) -> &Arc<QuotaShared> {
        self.state.get_or_init(Arc::default)
    }

    /// Reads the counts; 0 for everything before the layer has made a service.
    fn read(&self, f: impl FnOnce(&Counts) -> usize) -> usize {
        self.state.get().map_or(0, |shared| f(&shared.counts()))
    }

    /// Sockets currently holding a slot, in total.
    pub fn active(&self) -> usize {
        self.read(|counts| counts.global)
    }

    /// Sockets currently holding a slot for `ip`'s key (counted only with a per-IP cap).
    pub fn active_for_ip(&self, ip: IpAddr) -> usize {
        let key = self.prefix.key(ip);
        self.read(|counts| counts.by_ip.get(&key).copied().unwrap_or(0))
    }

    /// Sockets currently holding a slot for `subject` (counted only with a per-identity cap).
    pub fn active_for_identity(&self, subject: &str) -> usize {
        self.read(|counts| counts.by_identity.get(subject).copied().unwrap_or(0))
    }

    /// The number of per-IP and per-identity entries held (keys with at least one socket).
    pub fn tracked_keys(&self) -> usize {
        self.read(|counts| counts.by_ip.len() + counts.by_identity.len())
    }

    /// Takes a slot for a socket from `ip` (when known) and `identity`, or says which cap is
    /// reached.
    fn acquire(
        &self,
        ip: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Result<ConnectionPermit, RateLimitError> {
        let ip_key = match (self.per_ip, ip) {
            (Some(_), Some(ip)) => Some(self.prefix.key(ip)),
            (Some(_), None) => return Err(RateLimitError::MissingClientIp),
            (None, _) => None,
        };
        let identity: Option<Arc<str>> = match (self.per_identity, identity) {
            (Some(_), Some(subject)) => Some(Arc::from(subject)),
            _ => None,
        };
        let retry_after = self.retry_after;
        let shared = self.shared();
        let mut counts = shared.counts();
        if let (Some(cap), Some(key)) = (self.per_ip, &ip_key)
            && counts.by_ip.get(key).copied().unwrap_or(0) >= cap.get()
        {
            return Err(RateLimitError::ClientIpQuota {
                limit: cap.get(),
                retry_after,
            });
        }
        if let (Some(cap), Some(subject)) = (self.per_identity, &identity)
            && counts.by_identity.get(subject).copied().unwrap_or(0) >= cap.get()
        {
            return Err(RateLimitError::IdentityQuota {
                limit: cap.get(),
                retry_after,
            });
        }
        if let Some(cap) = self.global
            && counts.global >= cap.get()
        {
            return Err(RateLimitError::GlobalQuota {
                limit: cap.get(),
                retry_after,
            });
        }
        counts.global += 1;
        if let Some(key) = ip_key {
            *counts.by_ip.entry(key).or_insert(0) += 1;
        }
        if let Some(subject) = &identity {
            *counts.by_identity.entry(Arc::clone(subject)).or_insert(0) += 1;
        }
        drop(counts);
        let slot = Slot {
            shared: Arc::clone(shared),
            ip: ip_key,
            identity,
        };
        Ok(ConnectionPermit::holding((
            slot,
            crate::metrics::QuotaHeld::new("local"),
        )))
    }
}

impl Default for ConnectionQuotaLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConnectionQuotaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("ConnectionQuotaLayer");
        f.field("per_ip", &self.per_ip)
            .field("per_identity", &self.per_identity)
            .field("global", &self.global)
            .field("prefix", &self.prefix)
            .field("retry_after", &self.retry_after)
            .field("active", &self.active())
            .field("on_rejection", &self.on_rejection);
        #[cfg(feature = "redis")]
        f.field("backend", &self.backend);
        f.finish()
    }
}

impl<S> Layer<S> for ConnectionQuotaLayer {
    type Service = ConnectionQuota<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared();
        ConnectionQuota {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that caps concurrently open sockets. Made by [`ConnectionQuotaLayer`]; see
/// the [module docs](super).
#[derive(Clone, Debug)]
pub struct ConnectionQuota<S> {
    pub(crate) inner: S,
    pub(crate) layer: ConnectionQuotaLayer,
}

impl<S> ConnectionQuota<S> {
    /// A [`ConnectionQuotaLayer`] with default settings.
    pub fn layer() -> ConnectionQuotaLayer {
        ConnectionQuotaLayer::new()
    }

    crate::core::define_inner_service_accessors!();

    /// Takes this instance's slot for the socket and calls the inner service, or rejects.
    pub(crate) fn admit_local<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Default + 'static,
    {
        let ip = crate::core::client_ip(req.extensions());
        let identity = crate::core::identity(req.extensions());
        match self.layer.acquire(ip, identity) {
            Ok(permit) => {
                crate::core::attach_permit(req.extensions_mut(), permit);
                ResponseFuture::future(self.inner.call(req), After::Nothing)
            }
            Err(error) => {
                super::emit(&error, ip, identity);
                ResponseFuture::rejected(reject(self.layer.on_rejection.as_ref(), error))
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConnectionQuota<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        #[cfg(feature = "redis")]
        if let Some(fleet) = self.layer.backend.fleet() {
            let fleet = fleet.clone();
            // The service that was polled ready goes with the request; a clone stays.
            let clone = self.clone();
            let ready = std::mem::replace(self, clone);
            return ResponseFuture::boxed(crate::fleet::quota::admit(ready, fleet, req));
        }
        self.admit_local(req)
    }
}
