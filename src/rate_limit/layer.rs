use std::{
    fmt,
    hash::Hash,
    num::NonZeroU32,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use axum::response::IntoResponse;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use ipnet::IpNet;
use tower::Layer;

use crate::core::LazyState;

use super::{KeyBy, KeyPrefix, RateLimit};
use crate::{Rejection, rejection::OnRejection};

/// The key a handshake is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    Ip(IpNet),
    Identity(Arc<str>),
    Global,
}

pub(crate) type Limiter<C> =
    RateLimiter<RateKey, DefaultKeyedStateStore<RateKey>, C, StateInformationMiddleware>;

pub(crate) struct RateShared<C: Clock> {
    pub(crate) limiter: Limiter<C>,
    pub(crate) requests: AtomicU64,
    pub(crate) keys: crate::metrics::TrackedKeys,
}

/// Layer that limits the handshake rate per client IP, per identity or globally. See the
/// [module docs](super).
///
/// A layer is configuration: the counters are created when the layer first makes a service
/// (or first counts a request), and are then shared by every service made from this layer
/// and its clones, so one layer on an axum `Router` limits a key across all its routes. A
/// setter called afterwards gives that copy new counters of its own. `C` is the clock, [`DefaultClock`] unless replaced with
/// [`clock`](Self::clock) (tests use [`FakeRelativeClock`](super::FakeRelativeClock)).
pub struct RateLimitLayer<C: Clock = DefaultClock> {
    state: LazyState<RateShared<C>>,
    clock: C,
    pub(crate) count: NonZeroU32,
    pub(crate) period: Duration,
    pub(crate) burst: Option<NonZeroU32>,
    pub(crate) key_by: KeyBy,
    pub(crate) prefix: KeyPrefix,
    pub(crate) headers: bool,
    pub(crate) prune_every: u64,
    pub(crate) on_rejection: Option<OnRejection>,
    /// Where the limit counts: in memory, or in a fleet's Redis.
    #[cfg(feature = "redis")]
    pub(crate) backend: crate::fleet::Backend,
}

const DEFAULT_PER_SECOND: NonZeroU32 = NonZeroU32::new(10).unwrap();

impl RateLimitLayer<DefaultClock> {
    /// 10 handshakes per second with a burst of 10, keyed by client IP (/32 for IPv4, /64
    /// for IPv6), no `X-RateLimit-*` headers, idle keys pruned every 1024 requests.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: LazyState::new(),
            clock: DefaultClock::default(),
            count: DEFAULT_PER_SECOND,
            period: Duration::from_secs(1),
            burst: None,
            key_by: KeyBy::ClientIp,
            prefix: KeyPrefix::DEFAULT,
            headers: false,
            prune_every: 1024,
            on_rejection: None,
            #[cfg(feature = "redis")]
            backend: crate::fleet::Backend::new("handshake"),
        }
    }
}

impl Default for RateLimitLayer<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

/// The finest interval governor can count: one nanosecond between two handshakes, a
/// billion a second.
const FINEST_INTERVAL: Duration = Duration::from_nanos(1);

/// The governor quota for `count` per `period`. A rate so high that the interval between two
/// handshakes rounds to zero saturates to [`FINEST_INTERVAL`].
pub(super) fn quota(count: NonZeroU32, period: Duration, burst: Option<NonZeroU32>) -> Quota {
    let interval = (period / count.get()).max(FINEST_INTERVAL);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(count))
        .allow_burst(burst.unwrap_or(count))
}

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// The counters, created on first use.
    pub(crate) fn shared(&self) -> &RateShared<C> {
        self.state.get_or_init(|| RateShared {
            limiter: RateLimiter::new(
                quota(self.count, self.period, self.burst),
                DefaultKeyedStateStore::default(),
                self.clock.clone(),
            ),
            requests: AtomicU64::new(0),
            keys: crate::metrics::TrackedKeys::new("rate_limit"),
        })
    }

    fn rate(mut self, n: NonZeroU32, period: Duration) -> Self {
        self.count = n;
        self.period = period;
        self.state.reset();
        self
    }

    /// Allows `n` handshakes per second per key, evenly replenished (one every `1/n` s).
    /// Replaces the rate; default 10 per second. The burst defaults to `n` unless set with
    /// [`burst`](Self::burst). Gives this copy new counters.
    ///
    /// The finest rate is one handshake per nanosecond: a higher `n` (above a billion)
    /// counts as a billion a second.
    #[must_use]
    pub fn per_second(self, n: NonZeroU32) -> Self {
        self.rate(n, Duration::from_secs(1))
    }

    /// Allows `n` handshakes per minute per key, evenly replenished (one every `60/n` s).
    /// Replaces the rate; default 10 per second. The burst defaults to `n` unless set with
    /// [`burst`](Self::burst). Gives this copy new counters.
    #[must_use]
    pub fn per_minute(self, n: NonZeroU32) -> Self {
        self.rate(n, Duration::from_secs(60))
    }

    /// How many handshakes a key may make at once before the rate applies. Replaces;
    /// default: the rate's `n` (10). Gives this copy new counters.
    #[must_use]
    pub fn burst(mut self, b: NonZeroU32) -> Self {
        self.burst = Some(b);
        self.state.reset();
        self
    }

    /// What the limit is keyed on. Replaces; default [`KeyBy::ClientIp`].
    #[must_use]
    pub fn key(mut self, key_by: KeyBy) -> Self {
        self.key_by = key_by;
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`]
    /// (/32 for IPv4, /64 for IPv6).
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Whether to add `X-RateLimit-Limit` and `X-RateLimit-Remaining` to passed responses
    /// and those plus `X-RateLimit-After` to rejections. Replaces; default `false`.
    #[must_use]
    pub fn rate_limit_headers(mut self, enabled: bool) -> Self {
        self.headers = enabled;
        self
    }

    /// Prunes idle keys every `n` handshakes through the layer (`0` turns this off; use
    /// [`spawn_pruner`](Self::spawn_pruner) or [`prune`](Self::prune) then). Replaces;
    /// default 1024.
    #[must_use]
    pub fn prune_every(mut self, n: u64) -> Self {
        self.prune_every = n;
        self
    }

    /// Builds the rejection response from the [`Rejection`] (always
    /// [`Rejection::RateLimit`] here). Replaces the previous hook; default: none, which
    /// answers [`Rejection::into_response`] (the error's status, a plain-text body and
    /// `Retry-After`). `Retry-After` is added if the hook's response lacks it, the
    /// `X-RateLimit-*` headers when [`rate_limit_headers`](Self::rate_limit_headers) is on,
    /// and the [`RateLimitError`](super::RateLimitError) and the [`Rejection`] are always
    /// put in the extensions.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// Replaces the clock, e.g. with a
    /// [`FakeRelativeClock`](super::FakeRelativeClock) in tests. Gives this copy new counters.
    #[must_use]
    pub fn clock<C2: Clock + Clone>(self, clock: C2) -> RateLimitLayer<C2> {
        RateLimitLayer {
            state: LazyState::new(),
            clock,
            count: self.count,
            period: self.period,
            burst: self.burst,
            key_by: self.key_by,
            prefix: self.prefix,
            headers: self.headers,
            prune_every: self.prune_every,
            on_rejection: self.on_rejection,
            #[cfg(feature = "redis")]
            backend: self.backend,
        }
    }

    /// Removes the keys whose state is back to fresh (no handshake within the time the
    /// burst takes to refill) and releases the freed memory.
    pub fn prune(&self) {
        if let Some(shared) = self.state.get() {
            prune(shared);
        }
    }

    /// The number of keys currently held (an estimate while requests are in flight); 0
    /// before the layer has made a service.
    pub fn tracked_keys(&self) -> usize {
        self.state.get().map_or(0, |shared| shared.limiter.len())
    }
}

pub(crate) fn prune<C: Clock>(shared: &RateShared<C>) {
    let before = shared.limiter.len();
    shared.limiter.retain_recent();
    shared.limiter.shrink_to_fit();
    let after = shared.limiter.len();
    shared.keys.report(after);
    tracing::debug!(
        name: "wsguard.rate_limit.pruned",
        before,
        after,
        "pruned idle rate-limit keys"
    );
}

impl<C> RateLimitLayer<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Spawns a tokio task that calls [`prune`](Self::prune) every `every`. The task ends by
    /// itself once the layer and every service made from it are dropped (or when the
    /// returned handle is aborted). Must be called inside a tokio runtime.
    pub fn spawn_pruner(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = self.state.downgrade();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                match weak.upgrade() {
                    Some(slot) => {
                        if let Some(shared) = slot.get() {
                            prune(shared);
                        }
                    }
                    None => break,
                }
            }
        })
    }
}

impl<C: Clock + Clone> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            clock: self.clock.clone(),
            count: self.count,
            period: self.period,
            burst: self.burst,
            key_by: self.key_by,
            prefix: self.prefix,
            headers: self.headers,
            prune_every: self.prune_every,
            on_rejection: self.on_rejection.clone(),
            #[cfg(feature = "redis")]
            backend: self.backend.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("RateLimitLayer");
        f.field("count", &self.count)
            .field("period", &self.period)
            .field("burst", &self.burst.unwrap_or(self.count))
            .field("key_by", &self.key_by)
            .field("prefix", &self.prefix)
            .field("headers", &self.headers)
            .field("prune_every", &self.prune_every)
            .field(
                "tracked_keys",
                &self.state.get().map_or(0, |shared| shared.limiter.len()),
            )
            .field("on_rejection", &self.on_rejection);
        #[cfg(feature = "redis")]
        f.field("backend", &self.backend);
        f.finish()
    }
}

impl<S, C: Clock + Clone> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared();
        RateLimit::new(inner, self.clone())
    }
}
