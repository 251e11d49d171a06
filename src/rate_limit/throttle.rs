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

use crate::{Rejection, core::LazyState, rejection::OnRejection};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock, Reference};
use http::Request;
use ipnet::IpNet;
use tower::{Layer, Service};

use super::{ClientIp, KeyPrefix, RateLimitError, ResponseFuture, future::After, reject};

/// Failure counter of one client.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When the current counting window started (time since the throttle's start).
    window_start: Duration,
    failures: u32,
    /// Attempts begun and not yet settled; each may still turn out a failure.
    in_flight: u32,
    /// Until when the client is locked out.
    blocked_until: Option<Duration>,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.failures == 0 && self.in_flight == 0 && self.blocked_until.is_none()
    }
}

/// How long a client is asked to wait while its budget is taken by attempts in flight: they
/// settle within one authentication.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

struct ThrottleShared<C: Clock> {
    clock: Arc<C>,
    start: C::Instant,
    max_failures: NonZeroU32,
    window: Duration,
    block_for: Duration,
    entries: Mutex<HashMap<IpNet, Entry>>,
    requests: AtomicU64,
    keys: crate::metrics::TrackedKeys,
}

impl<C: Clock> ThrottleShared<C> {
    fn new(clock: Arc<C>, max_failures: NonZeroU32, window: Duration, block_for: Duration) -> Self {
        Self {
            start: clock.now(),
            clock,
            max_failures,
            window,
            block_for,
            entries: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            keys: crate::metrics::TrackedKeys::new("throttle"),
        }
    }

    fn now(&self) -> Duration {
        self.clock.now().duration_since(self.start).into()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves one attempt for `key`, or says why not.
    fn begin(&self, key: IpNet) -> Result<(), RateLimitError> {
        let now = self.now();
        let limit = self.max_failures.get();
        let mut entries = self.entries();
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            in_flight: 0,
            blocked_until: None,
        });
        match entry.blocked_until {
            Some(until) if until > now => {
                return Err(RateLimitError::TooManyFailedAuth {
                    limit,
                    retry_after: until - now,
                });
            }
            Some(_) => entry.blocked_until = None,
            None => {}
        }
        if now.saturating_sub(entry.window_start) >= self.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        // Every attempt in flight may still fail: together with the failures on the books
        // they must stay below the limit, or N guesses sent at once would all be checked.
        if entry.failures.saturating_add(entry.in_flight) >= limit {
            return Err(RateLimitError::AuthAttemptsInFlight {
                limit,
                retry_after: IN_FLIGHT_RETRY,
            });
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// Settles one attempt of `key` begun with [`begin`](Self::begin).
    fn settle(&self, key: IpNet, ip: IpAddr, failed: bool) {
        let now = self.now();
        let mut entries = self.entries();
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            in_flight: 1,
            blocked_until: None,
        });
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if !failed {
            // A success (or an abandoned attempt) leaves no trace: a spray of good
            // handshakes from many addresses does not grow the table.
            if entry.is_idle() {
                entries.remove(&key);
            }
            return;
        }
        if entry.blocked_until.is_some_and(|until| until <= now) {
            entry.blocked_until = None;
        }
        if now.saturating_sub(entry.window_start) >= self.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.max_failures.get() {
            // Saturates: `block_for(Duration::MAX)` locks out for good, it does not panic.
            entry.blocked_until = Some(now.saturating_add(self.block_for));
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

    fn prune(&self) {
        let now = self.now();
        let window = self.window;
        let mut entries = self.entries();
        entries.retain(|_, e| {
            e.in_flight > 0
                || e.blocked_until.is_some_and(|until| until > now)
                || now.saturating_sub(e.window_start) < window
        });
        entries.shrink_to_fit();
        let held = entries.len();
        drop(entries);
        self.keys.report(held);
    }
}

/// Settles attempts; implemented by the throttle's state for every clock, so that
/// [`AuthAttempt`] need not carry the clock type.
trait Settle: Send + Sync {
    fn settle(&self, key: IpNet, ip: IpAddr, failed: bool);
}

impl<C> Settle for ThrottleShared<C>
where
    C: Clock + Send + Sync,
    C::Instant: Send + Sync,
{
    fn settle(&self, key: IpNet, ip: IpAddr, failed: bool) {
        ThrottleShared::settle(self, key, ip, failed);
    }
}

/// The brute-force throttle on its own, for authentication that happens outside a tower
/// layer (a Socket.IO connect handler, a login form, a custom protocol). It is the core of
/// [`AuthThrottleLayer`] and keys clients the same way: the client IP masked by a
/// [`KeyPrefix`] (by default the address for IPv4 and its /64 for IPv6, so one IPv6 client
/// cannot rotate through fresh budgets). See the [module docs](super).
///
/// Call [`begin`](Self::begin) before checking a credential, then settle the returned
/// [`AuthAttempt`] with [`failed`](AuthAttempt::failed) or
/// [`succeeded`](AuthAttempt::succeeded). An attempt in flight counts as a potential
/// failure: at most `max_failures` attempts of one client are checked at once, so guesses
/// sent together cannot all get through. A client is locked out for
/// [`block_for`](Self::block_for) once it has failed [`max_failures`](Self::max_failures)
/// times within one [`window`](Self::window) (a fixed window starting at its first counted
/// failure). A success gives its slot back and does not reset the count.
///
/// This is the explicit handle to shared state: the counters are created on its first use
/// and shared by every clone, so a login route can [`begin`](Self::begin) attempts against
/// the same counters as an [`AuthThrottleLayer`] built `from` a clone. Its setters configure
/// and give that copy new counters.
///
/// ```
/// use std::{net::IpAddr, num::NonZeroU32};
/// use wsguard::rate_limit::{FailureThrottle, RateLimitError};
///
/// const MAX_FAILURES: NonZeroU32 = NonZeroU32::new(2).unwrap();
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let throttle = FailureThrottle::new().max_failures(MAX_FAILURES);
/// let a: IpAddr = "2001:db8::1".parse()?;
/// let b: IpAddr = "2001:db8::2".parse()?; // the same /64
/// throttle.begin(a)?.failed();
/// throttle.begin(b)?.failed();
/// // The /64 is locked out: no credential of it is checked any more.
/// assert!(matches!(
///     throttle.begin(a),
///     Err(RateLimitError::TooManyFailedAuth { limit: 2, .. })
/// ));
/// # Ok(())
/// # }
/// ```
pub struct FailureThrottle<C: Clock = DefaultClock> {
    state: LazyState<Arc<ThrottleShared<C>>>,
    clock: Arc<C>,
    max_failures: NonZeroU32,
    window: Duration,
    block_for: Duration,
    prefix: KeyPrefix,
}

const DEFAULT_MAX_FAILURES: NonZeroU32 = NonZeroU32::new(5).unwrap();
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// The shortest window and lock-out of a throttle: one second, the resolution of
/// `Retry-After`. Shorter values, zero included, are raised to it, so that no setting turns
/// the throttle off.
const MIN_THROTTLE_DURATION: Duration = Duration::from_secs(1);

impl FailureThrottle<DefaultClock> {
    /// Lock out for 60 s after 5 failures within 60 s, keyed by client IP (/32 for IPv4, /64
    /// for IPv6).
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: LazyState::new(),
            clock: Arc::new(DefaultClock::default()),
            max_failures: DEFAULT_MAX_FAILURES,
            window: DEFAULT_WINDOW,
            block_for: DEFAULT_WINDOW,
            prefix: KeyPrefix::DEFAULT,
        }
    }
}

impl Default for FailureThrottle<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> FailureThrottle<C> {
    /// How many failures within the window lock a client out. Replaces; default 5. Gives
    /// this copy new counters.
    #[must_use]
    pub fn max_failures(mut self, n: NonZeroU32) -> Self {
        self.max_failures = n;
        self.state.reset();
        self
    }

    /// The window failures are counted in. Replaces; default 60 s. Any length from one
    /// second is accepted (`Duration::MAX`: failures are never forgotten); a shorter one,
    /// zero included, counts as one second, so no value switches the throttle off. Gives
    /// this copy new counters.
    #[must_use]
    pub fn window(mut self, window: impl Into<Duration>) -> Self {
        self.window = window.into().max(MIN_THROTTLE_DURATION);
        self.state.reset();
        self
    }

    /// How long a lock-out lasts. Replaces; default 60 s. Any length from one second is
    /// accepted: the end of a lock-out saturates, so `Duration::MAX` locks out for the life
    /// of the process. A shorter one, zero included, counts as one second (what
    /// `Retry-After` says at the least), so no value switches the throttle off. Gives this
    /// copy new counters.
    #[must_use]
    pub fn block_for(mut self, block_for: impl Into<Duration>) -> Self {
        self.block_for = block_for.into().max(MIN_THROTTLE_DURATION);
        self.state.reset();
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Replaces the clock (tests use [`FakeRelativeClock`](super::FakeRelativeClock)).
    /// Gives this copy new counters.
    #[must_use]
    pub fn clock<C2: Clock + Clone>(self, clock: C2) -> FailureThrottle<C2> {
        FailureThrottle {
            state: LazyState::new(),
            clock: Arc::new(clock),
            max_failures: self.max_failures,
            window: self.window,
            block_for: self.block_for,
            prefix: self.prefix,
        }
    }
}

impl<C: Clock> FailureThrottle<C> {
    /// The counters, created on first use and shared by every clone.
    fn shared(&self) -> &Arc<ThrottleShared<C>> {
        self.state.get_or_init(|| {
            Arc::new(ThrottleShared::new(
                Arc::clone(&self.clock),
                self.max_failures,
                self.window,
                self.block_for,
            ))
        })
    }

    /// The key `ip` is counted under: `ip` masked by the [`KeyPrefix`].
    pub fn key(&self, ip: IpAddr) -> IpNet {
        self.prefix.key(ip)
    }

    /// Removes the counters whose window and lock-out have both ended.
    pub fn prune(&self) {
        if let Some(shared) = self.state.get() {
            shared.prune();
        }
    }

    /// The number of clients with a live counter, lock-out or attempt in flight.
    pub fn tracked_keys(&self) -> usize {
        self.state.get().map_or(0, |shared| shared.entries().len())
    }
}

impl<C> FailureThrottle<C>
where
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Begins an authentication attempt of the client at `ip`, before its credential is
    /// checked. Refused with [`RateLimitError::TooManyFailedAuth`] while the client is
    /// locked out, and with [`RateLimitError::AuthAttemptsInFlight`] while its failures and
    /// attempts in flight together reach `max_failures`; either way the credential must not
    /// be checked, and the refusal emits the event `wsguard.rate_limit.auth_throttled`.
    ///
    /// The returned attempt holds one slot until it is settled; dropping it unsettled gives
    /// the slot back without counting a failure.
    pub fn begin(&self, ip: IpAddr) -> Result<AuthAttempt, RateLimitError> {
        let ip = ip.to_canonical();
        let key = self.prefix.key(ip);
        match self.shared().begin(key) {
            Ok(()) => Ok(AuthAttempt {
                sink: Some(Arc::clone(self.shared()) as Arc<dyn Settle>),
                key,
                ip,
            }),
            Err(error) => {
                super::emit(&error, Some(ip), None);
                Err(error)
            }
        }
    }
}

impl<C: Clock> Clone for FailureThrottle<C> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            clock: Arc::clone(&self.clock),
            max_failures: self.max_failures,
            window: self.window,
            block_for: self.block_for,
            prefix: self.prefix,
        }
    }
}

impl<C: Clock> fmt::Debug for FailureThrottle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("block_for", &self.block_for)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// One authentication attempt begun with [`FailureThrottle::begin`]. Settle it with
/// [`failed`](Self::failed) or [`succeeded`](Self::succeeded); dropping it unsettled (the
/// client went away before an answer) gives its slot back without counting a failure.
#[must_use = "an attempt holds one of the client's slots until it is settled or dropped"]
pub struct AuthAttempt {
    sink: Option<Arc<dyn Settle>>,
    key: IpNet,
    ip: IpAddr,
}

impl AuthAttempt {
    /// The credential was wrong: counts one failure (and locks the client out at the limit).
    pub fn failed(mut self) {
        if let Some(sink) = self.sink.take() {
            sink.settle(self.key, self.ip, true);
        }
    }

    /// The credential was right: gives the slot back. The failure count is not reset.
    pub fn succeeded(mut self) {
        if let Some(sink) = self.sink.take() {
            sink.settle(self.key, self.ip, false);
        }
    }

    /// The key this attempt is counted under.
    pub fn key(&self) -> IpNet {
        self.key
    }
}

impl Drop for AuthAttempt {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.settle(self.key, self.ip, false);
        }
    }
}

impl fmt::Debug for AuthAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthAttempt")
            .field("key", &self.key)
            .field("settled", &self.sink.is_none())
            .finish()
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
/// window starting at its first counted failure). A handshake in flight counts as a
/// potential failure until its response is known, so at most `max_failures` handshakes of
/// one client reach the authenticator at once; the others get `429` with `Retry-After: 1`
/// ([`RateLimitError::AuthAttemptsInFlight`]). A success gives its slot back and does not
/// reset the count.
///
/// A layer is configuration: its counters, a [`FailureThrottle`] ([`throttle`](Self::throttle)),
/// are created when it first makes a service (or when [`throttle`](Self::throttle) is first
/// called), then shared by every service made from this layer and its clones, so one layer
/// on an axum `Router` counts a client's failures across all its routes. To share counters
/// with code outside the layer, build the layer from a throttle:
/// `AuthThrottleLayer::from(throttle.clone())`. A setter called afterwards gives that copy
/// new counters of its own.
pub struct AuthThrottleLayer<C: Clock = DefaultClock> {
    throttle: FailureThrottle<C>,
    prune_every: u64,
    on_rejection: Option<OnRejection>,
}

impl AuthThrottleLayer<DefaultClock> {
    /// Lock out for 60 s after 5 failures within 60 s, keyed by client IP (/32 for IPv4, /64
    /// for IPv6), idle counters pruned every 1024 requests.
    #[must_use]
    pub fn new() -> Self {
        FailureThrottle::new().into()
    }
}

impl Default for AuthThrottleLayer<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> From<FailureThrottle<C>> for AuthThrottleLayer<C> {
    /// A layer counting into `throttle` (shared with its other users), idle counters pruned
    /// every 1024 requests, the default rejection.
    fn from(throttle: FailureThrottle<C>) -> Self {
        Self {
            throttle,
            prune_every: 1024,
            on_rejection: None,
        }
    }
}

impl<C: Clock + Clone> AuthThrottleLayer<C> {
    /// How many failures within the window lock a client out. Replaces; default 5. Gives
    /// this copy new counters.
    #[must_use]
    pub fn max_failures(mut self, n: NonZeroU32) -> Self {
        self.throttle = self.throttle.max_failures(n);
        self
    }

    /// The window failures are counted in. Replaces; default 60 s. A window shorter than one
    /// second, zero included, counts as one second (see [`FailureThrottle::window`]). Gives
    /// this copy new counters.
    #[must_use]
    pub fn window(mut self, window: impl Into<Duration>) -> Self {
        self.throttle = self.throttle.window(window);
        self
    }

    /// How long a lock-out lasts. Replaces; default 60 s. Any length from one second is
    /// accepted and saturates (`Duration::MAX` locks out for the life of the process); a
    /// shorter one, zero included, counts as one second. Gives this copy new counters.
    #[must_use]
    pub fn block_for(mut self, block_for: impl Into<Duration>) -> Self {
        self.throttle = self.throttle.block_for(block_for);
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.throttle = self.throttle.key_prefix(prefix);
        self
    }

    /// Prunes expired counters every `n` handshakes (`0` turns this off). Replaces; default
    /// 1024.
    #[must_use]
    pub fn prune_every(mut self, n: u64) -> Self {
        self.prune_every = n;
        self
    }

    /// Builds the rejection response from the [`Rejection`] (always
    /// [`Rejection::RateLimit`] here). Replaces the previous hook; default: none, which
    /// answers [`Rejection::into_response`] (`429`, plain text, `Retry-After`). `Retry-After`
    /// is added if the hook's response lacks it, and the [`RateLimitError`] and the
    /// [`Rejection`] are always put in the extensions.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// Replaces the clock (tests use [`FakeRelativeClock`](super::FakeRelativeClock)).
    /// Gives this copy new counters.
    #[must_use]
    pub fn clock<C2: Clock + Clone>(self, clock: C2) -> AuthThrottleLayer<C2> {
        AuthThrottleLayer {
            throttle: self.throttle.clock(clock),
            prune_every: self.prune_every,
            on_rejection: self.on_rejection,
        }
    }
}

impl<C: Clock> AuthThrottleLayer<C> {
    /// The counters this layer (and its clones) share, for checks made outside the layer.
    pub fn throttle(&self) -> FailureThrottle<C> {
        self.throttle.clone()
    }

    /// Removes the counters whose window and lock-out have both ended.
    pub fn prune(&self) {
        self.throttle.prune();
    }

    /// The number of clients with a live counter, lock-out or handshake in flight.
    pub fn tracked_keys(&self) -> usize {
        self.throttle.tracked_keys()
    }
}

impl<C: Clock> Clone for AuthThrottleLayer<C> {
    fn clone(&self) -> Self {
        Self {
            throttle: self.throttle.clone(),
            prune_every: self.prune_every,
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for AuthThrottleLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthThrottleLayer")
            .field("throttle", &self.throttle)
            .field("prune_every", &self.prune_every)
            .field("on_rejection", &self.on_rejection)
            .finish()
    }
}

impl<S, C: Clock> Layer<S> for AuthThrottleLayer<C> {
    type Service = AuthThrottle<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        self.throttle.shared();
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
    crate::core::define_inner_service_accessors!();
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

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for AuthThrottle<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
    ResBody: Default + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

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
        let shared = layer.throttle.shared();
        let seen = shared
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if layer.prune_every != 0 && seen.is_multiple_of(layer.prune_every) {
            shared.prune();
        }
        match layer.throttle.begin(ip) {
            Ok(attempt) => ResponseFuture::future(
                self.inner.call(req),
                After::CountAuthFailure {
                    attempt: Some(attempt),
                },
            ),
            Err(error) => ResponseFuture::rejected(reject(layer.on_rejection.as_ref(), error)),
        }
    }
}
