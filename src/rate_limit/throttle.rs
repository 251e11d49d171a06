use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::response::Response;
use governor::clock::{Clock, DefaultClock, Reference};
use http::Request;
use ipnet::IpNet;
use tower::{Layer, Service};

use super::{
    ClientIp, ConfigError, KeyPrefix, RateLimitError, RejectFn, ResponseFuture,
    future::{After, FailureSink},
    reject,
};

/// Failure counter of one client.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When the current counting window started (time since the throttle's start).
    window_start: Duration,
    failures: u32,
    /// Until when the client is locked out.
    blocked_until: Option<Duration>,
}

struct ThrottleShared<C: Clock> {
    clock: C,
    start: C::Instant,
    max_failures: NonZeroU32,
    window: Duration,
    block_for: Duration,
    entries: Mutex<HashMap<IpNet, Entry>>,
    requests: AtomicU64,
}

impl<C: Clock> ThrottleShared<C> {
    fn new(clock: C, max_failures: NonZeroU32, window: Duration, block_for: Duration) -> Self {
        Self {
            start: clock.now(),
            clock,
            max_failures,
            window,
            block_for,
            entries: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Duration {
        self.clock.now().duration_since(self.start).into()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remaining lock-out of `key`, if it is locked out.
    fn blocked(&self, key: &IpNet) -> Option<Duration> {
        let now = self.now();
        let until = self.entries().get(key)?.blocked_until?;
        until.checked_sub(now).filter(|d| !d.is_zero())
    }

    fn prune(&self) {
        let now = self.now();
        let window = self.window;
        let mut entries = self.entries();
        entries.retain(|_, e| {
            e.blocked_until.is_some_and(|until| until > now)
                || now.saturating_sub(e.window_start) < window
        });
        entries.shrink_to_fit();
    }
}

impl<C> FailureSink for ThrottleShared<C>
where
    C: Clock + Send + Sync,
    C::Instant: Send + Sync,
{
    fn record_failure(&self, key: IpNet, ip: IpAddr) {
        let now = self.now();
        let mut entries = self.entries();
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if entry.blocked_until.is_some_and(|until| until <= now) {
            entry.blocked_until = None;
        }
        if now.saturating_sub(entry.window_start) >= self.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.max_failures.get() {
            entry.blocked_until = Some(now + self.block_for);
            entry.window_start = now;
            entry.failures = 0;
            drop(entries);
            tracing::info!(
                name: "wsguard.rate_limit.auth_lockout",
                cause = "too_many_failed_auth",
                client_ip = %ip,
                limit = self.max_failures.get(),
                block_secs = self.block_for.as_secs(),
                "client locked out after repeated failed authentications"
            );
        }
    }
}

/// Layer that locks a client out after repeated failed authentications. Place it **in front
/// of** the auth layer: it refuses a locked-out client's handshakes with `429` before the
/// authenticator runs, and counts the inner responses that carry
/// [`AuthError`](crate::auth::AuthError). Keyed by [`ClientIp`] (needs `ClientIpLayer` in
/// front). See the [module docs](super).
///
/// A client is locked out for [`block_for`](Self::block_for) once it has failed
/// [`max_failures`](Self::max_failures) times within one [`window`](Self::window) (a fixed
/// window starting at its first counted failure). A success does not reset the count.
/// Clones share one set of counters.
pub struct AuthThrottleLayer<C: Clock = DefaultClock> {
    shared: Arc<ThrottleShared<C>>,
    prefix: KeyPrefix,
    prune_every: u64,
    on_rejection: Option<RejectFn>,
}

const DEFAULT_MAX_FAILURES: NonZeroU32 = NonZeroU32::new(5).unwrap();
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl AuthThrottleLayer<DefaultClock> {
    /// Lock out for 60 s after 5 failures within 60 s, keyed by client IP (/32 for IPv4, /64
    /// for IPv6), idle counters pruned every 1024 requests.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shared: Arc::new(ThrottleShared::new(
                DefaultClock::default(),
                DEFAULT_MAX_FAILURES,
                DEFAULT_WINDOW,
                DEFAULT_WINDOW,
            )),
            prefix: KeyPrefix::DEFAULT,
            prune_every: 1024,
            on_rejection: None,
        }
    }
}

impl Default for AuthThrottleLayer<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> AuthThrottleLayer<C> {
    fn with(
        self,
        clock: C,
        max_failures: NonZeroU32,
        window: Duration,
        block_for: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(ThrottleShared::new(clock, max_failures, window, block_for)),
            ..self
        }
    }

    /// How many failures within the window lock a client out. Replaces; default 5. Fails if
    /// `n` is 0. Resets the counters.
    pub fn max_failures(self, n: u32) -> Result<Self, ConfigError> {
        let n = NonZeroU32::new(n).ok_or(ConfigError::Zero("max_failures"))?;
        let s = Arc::clone(&self.shared);
        Ok(self.with(s.clock.clone(), n, s.window, s.block_for))
    }

    /// The window failures are counted in. Replaces; default 60 s. Fails if zero. Resets the
    /// counters.
    pub fn window(self, window: impl Into<Duration>) -> Result<Self, ConfigError> {
        let window = window.into();
        if window.is_zero() {
            return Err(ConfigError::ZeroDuration("window"));
        }
        let s = Arc::clone(&self.shared);
        Ok(self.with(s.clock.clone(), s.max_failures, window, s.block_for))
    }

    /// How long a lock-out lasts. Replaces; default 60 s. Fails if zero. Resets the counters.
    pub fn block_for(self, block_for: impl Into<Duration>) -> Result<Self, ConfigError> {
        let block_for = block_for.into();
        if block_for.is_zero() {
            return Err(ConfigError::ZeroDuration("block_for"));
        }
        let s = Arc::clone(&self.shared);
        Ok(self.with(s.clock.clone(), s.max_failures, s.window, block_for))
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Prunes expired counters every `n` handshakes (`0` turns this off). Replaces; default
    /// 1024.
    #[must_use]
    pub fn prune_every(mut self, n: u64) -> Self {
        self.prune_every = n;
        self
    }

    /// Builds the rejection response. Replaces; default `429`, plain text, `Retry-After`.
    /// `Retry-After` is added if missing and the [`RateLimitError`] is always put in the
    /// extensions.
    #[must_use]
    pub fn on_rejection<F>(mut self, f: F) -> Self
    where
        F: Fn(&RateLimitError) -> Response + Send + Sync + 'static,
    {
        self.on_rejection = Some(Arc::new(f));
        self
    }

    /// Replaces the clock (tests use [`FakeRelativeClock`](super::FakeRelativeClock)).
    /// Resets the counters.
    #[must_use]
    pub fn clock<C2: Clock + Clone>(self, clock: C2) -> AuthThrottleLayer<C2> {
        AuthThrottleLayer {
            shared: Arc::new(ThrottleShared::new(
                clock,
                self.shared.max_failures,
                self.shared.window,
                self.shared.block_for,
            )),
            prefix: self.prefix,
            prune_every: self.prune_every,
            on_rejection: self.on_rejection,
        }
    }

    /// Removes the counters whose window and lock-out have both ended.
    pub fn prune(&self) {
        self.shared.prune();
    }

    /// The number of clients with a live counter or lock-out.
    pub fn tracked_keys(&self) -> usize {
        self.shared.entries().len()
    }
}

impl<C: Clock> Clone for AuthThrottleLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            prefix: self.prefix,
            prune_every: self.prune_every,
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for AuthThrottleLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthThrottleLayer")
            .field("max_failures", &self.shared.max_failures)
            .field("window", &self.shared.window)
            .field("block_for", &self.shared.block_for)
            .field("prefix", &self.prefix)
            .field("prune_every", &self.prune_every)
            .field("on_rejection", &self.on_rejection.as_ref().map(|_| ".."))
            .finish()
    }
}

impl<S, C: Clock> Layer<S> for AuthThrottleLayer<C> {
    type Service = AuthThrottle<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthThrottle {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that locks out clients after repeated failed authentications. Made by
/// [`AuthThrottleLayer`]; see the [module docs](super).
pub struct AuthThrottle<S, C: Clock = DefaultClock> {
    inner: S,
    layer: AuthThrottleLayer<C>,
}

impl<S> AuthThrottle<S> {
    /// An [`AuthThrottleLayer`] with default settings.
    pub fn layer() -> AuthThrottleLayer {
        AuthThrottleLayer::new()
    }
}

impl<S, C: Clock> AuthThrottle<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clock> Clone for AuthThrottle<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C: Clock> fmt::Debug for AuthThrottle<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthThrottle")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C, ReqBody> Service<Request<ReqBody>> for AuthThrottle<S, C>
where
    S: Service<Request<ReqBody>, Response = Response>,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>().copied() else {
            let error = RateLimitError::MissingClientIp;
            super::emit(&error, None, None);
            return ResponseFuture::rejected(reject(layer.on_rejection.as_ref(), error));
        };
        let shared = &layer.shared;
        let seen = shared
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if layer.prune_every != 0 && seen.is_multiple_of(layer.prune_every) {
            shared.prune();
        }
        let key = layer.prefix.key(ip);
        if let Some(wait) = shared.blocked(&key) {
            let error = RateLimitError::TooManyFailedAuth {
                limit: shared.max_failures.get(),
                retry_after: wait,
            };
            super::emit(&error, Some(ip), None);
            return ResponseFuture::rejected(reject(layer.on_rejection.as_ref(), error));
        }
        let sink: Arc<dyn FailureSink> = Arc::clone(shared) as Arc<dyn FailureSink>;
        ResponseFuture::future(
            self.inner.call(req),
            After::CountAuthFailure { sink, key, ip },
        )
    }
}
