//! Revocation: log a user out, or revoke one token, and close the matching live sockets with
//! `1008`, on one instance or (feature `redis`) on every instance of a fleet.
//!
//! A [`Revocations`] registry remembers what was revoked and which live sockets each
//! credential opened. [`RevocationLayer`], placed after the auth layer, refuses revoked
//! credentials at the handshake and attaches a [`CloseSignal`] to every socket it admits, so
//! that a later revocation closes it:
//!
//! - [`Revocations::revoke_identity`]: every credential of a subject issued up to now (log out
//!   everywhere); credentials issued afterwards work;
//! - [`Revocations::revoke_issued_before`]: every credential of a subject issued before a time
//!   (a password change at that time);
//! - [`Revocations::revoke_token`] / [`Revocations::revoke_fingerprint`]: one token (log out
//!   this device).
//!
//! "Issued before" needs the credential's issue time, [`Principal::issued_at`]: tickets carry
//! one (tickets issued by wsguard before this version do not), JWTs carry `iat`. **A
//! credential without an issue time counts as issued before any time** (fail closed): after
//! `revoke_identity("svc")`, a static token of `svc` is refused until the revocation is
//! forgotten (the [retention](RevocationsBuilder::retention)).
//!
//! # Rejections
//!
//! A revoked credential gets `401 Unauthorized` with `WWW-Authenticate: Bearer
//! error="invalid_token"`, a short plain-text body, and [`RevokeError::Revoked`] and the
//! crate's [`Rejection`] ([`Rejection::Revoke`]) in the response extensions: like an expired
//! credential, the client must sign in again. [`RevocationLayer::on_rejection`] replaces the
//! response with a hook over the `Rejection`, as on every layer. A live socket whose
//! credential is revoked closes with `1008` (policy violation, reason `revoked`).
//!
//! # Memory
//!
//! A revoked token is remembered until it would have expired anyway (its
//! [`Principal::expires_at`], when a socket opened with it told the registry, plus five
//! minutes for verifier leeway and clock skew) or for the retention (default 24 hours),
//! whichever is sooner; a subject's "issued before" time for
//! the retention. Expired entries are purged on every use of the registry. Make the
//! retention at least your longest credential lifetime: a token revoked without a known
//! expiry works again after it.
//!
//! # Fleet mode
//!
//! With feature `redis`, `Fleet::revocations` gives a registry with the same API that shares
//! revocations through Redis: each revocation is applied here at once, stored in Redis (one
//! key per token or subject, with the retention as TTL) and published; every instance applies
//! what it receives to its own registry. The handshake check then also consults Redis, for
//! revocations made before this instance started. See `wsguard::fleet`.
//!
//! # Order
//! ```text
//! request → origin → client IP → rate → auth → revocation → quota → socket policy
//! ```
//!
//! # Example
//!
//! ```
//! use axum::{Router, body::Body, response::Response, routing::any};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use wsguard::{
//!     auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
//!     revoke::{RevocationLayer, Revocations},
//!     socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
//! };
//!
//! async fn ws(upgrade: GuardedUpgrade) -> Response {
//!     upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
//!         while let Some(Ok(message)) = socket.recv().await {
//!             if socket.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = TicketKey::generate("k1")?;
//! let issuer = TicketIssuer::new(key.clone());
//! let revocations = Revocations::new(); // keep a clone for the logout route
//! let app = Router::new()
//!     .route("/ws", any(ws))
//!     .layer(SocketPolicyLayer::new())
//!     .layer(RevocationLayer::new(revocations.clone()))
//!     .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)));
//!
//! let handshake = |token: &str| {
//!     Request::get("/ws")
//!         .header("connection", "upgrade")
//!         .header("upgrade", "websocket")
//!         .header("sec-websocket-version", "13")
//!         .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!         .header("authorization", format!("Bearer {token}"))
//!         .body(Body::empty())
//! };
//! let ticket = issuer.issue("alice");
//! // `oneshot` cannot upgrade: 426 means the request passed the layers.
//! let res = app.clone().oneshot(handshake(&ticket)?).await?;
//! assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
//!
//! revocations.revoke_identity("alice").await?; // log out: open sockets close with 1008
//! let res = app.clone().oneshot(handshake(&ticket)?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Events
//! `wsguard.revoke.revoked` (info) per revocation; `wsguard.revoke.closing` (info) when a
//! revocation closes live sockets here (`sockets`, `cause`); `wsguard.revoke.refused` (warn)
//! per refused credential (`cause`, `client_ip`, `identity`, `status`). Tokens are never
//! logged (at most the first 8 hex digits of their fingerprint).

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use tower::{Layer, Service};

use crate::{
    Rejection,
    auth::{Principal, SystemClock, TicketClock, TokenFingerprint},
    rate_limit::ConnectionPermit,
    rejection::OnRejection,
    socket::CloseSignal,
};

/// Default for [`RevocationsBuilder::retention`].
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Shortest retention.
const MIN_RETENTION: Duration = Duration::from_secs(1);
/// How long after its expiry a revoked token is still remembered: verifiers accept a token a
/// little past its expiry (JWT leeway, clock skew).
const EXPIRY_GRACE: Duration = Duration::from_secs(300);

/// Why a credential was refused, or why a revocation did not reach the whole fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeError {
    /// The credential was revoked (`401` at a handshake).
    Revoked,
    /// Fleet mode: Redis did not take the revocation in time (it is in effect on this
    /// instance, and reaches the others once Redis answers: the fleet shares it again in the
    /// background), or, for [`Revocations::check`] under the fleet's `Refuse` policy, could
    /// not be asked.
    Unavailable(String),
}

impl RevokeError {
    /// A stable snake_case name, for log fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The status of a response refusing a request for this error: `401` or `503`.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Revoked => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for RevokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Revoked => f.write_str("credential revoked"),
            Self::Unavailable(e) => write!(f, "the revocation store is unavailable: {e}"),
        }
    }
}

impl std::error::Error for RevokeError {}

impl axum::response::IntoResponse for RevokeError {
    /// The response of [`Rejection::Revoke`]: `401` with `WWW-Authenticate: Bearer
    /// error="invalid_token"` or `503` with `Retry-After: 1`, a short plain-text body, and the
    /// error and the [`Rejection`] in the extensions.
    fn into_response(self) -> Response {
        Rejection::from(self).into_response()
    }
}

/// Builds a [`Revocations`] registry; see [`Revocations::builder`].
#[must_use]
pub struct RevocationsBuilder {
    retention: Duration,
    clock: Arc<dyn TicketClock>,
}

impl fmt::Debug for RevocationsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationsBuilder")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl RevocationsBuilder {
    /// How long a revocation is remembered at most: a revoked token until it expires or for
    /// this long, whichever is sooner; a subject's "issued before" time for this long. Make
    /// it at least your longest credential lifetime. Default 24 hours; at least one second
    /// (shorter values are raised to it); replaces.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(MIN_RETENTION);
        self
    }

    /// The time source for revocation times and purging. Default [`SystemClock`]; closures
    /// `Fn() -> SystemTime` work too (tests move time without sleeping); replaces.
    pub fn clock(mut self, clock: impl TicketClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The registry (local to this process).
    pub fn build(self) -> Revocations {
        Revocations {
            local: Arc::new(Local::new(self.retention, self.clock)),
            #[cfg(feature = "redis")]
            fleet: None,
        }
    }
}

/// A revocation registry: what was revoked, and the live sockets a revocation must close.
/// Cheap to clone; clones share the registry. Give one clone to [`RevocationLayer`] and keep
/// one for the logout route. See the [module docs](self).
#[derive(Clone)]
pub struct Revocations {
    local: Arc<Local>,
    #[cfg(feature = "redis")]
    fleet: Option<crate::fleet::Fleet>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Revocations");
        d.field("retention", &self.local.retention)
            .field("remembered", &self.remembered())
            .field("live_sockets", &self.live_sockets());
        #[cfg(feature = "redis")]
        d.field("fleet", &self.fleet.as_ref().map(|f| f.prefix().to_owned()));
        d.finish()
    }
}

impl Revocations {
    /// A registry local to this process with the defaults: retention 24 hours, the system
    /// clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a local registry.
    pub fn builder() -> RevocationsBuilder {
        RevocationsBuilder {
            retention: DEFAULT_RETENTION,
            clock: Arc::new(SystemClock),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn shared(local: Arc<Local>, fleet: crate::fleet::Fleet) -> Self {
        Self {
            local,
            fleet: Some(fleet),
        }
    }

    /// Revokes every credential of `subject` issued up to now (and every one without an
    /// issue time), and closes the sockets they opened with `1008`: log out everywhere.
    /// Credentials issued afterwards work. Returns the number of sockets closed on this
    /// instance.
    ///
    /// In fleet mode, fails with [`RevokeError::Unavailable`] if Redis did not take it in
    /// time: it is in effect on this instance, and the fleet shares it in the background
    /// once Redis answers (see the [fleet docs](crate::fleet#when-redis-is-unreachable)).
    pub async fn revoke_identity(&self, subject: &str) -> Result<usize, RevokeError> {
        let now = self.local.clock.now();
        self.revoke_issued_before(subject, now).await
    }

    /// Revokes every credential of `subject` issued before `before` (and every one without
    /// an issue time: fail closed), for example when the password changed at `before`, and
    /// closes the sockets they opened with `1008`. Returns the number of sockets closed on
    /// this instance. Repeated calls keep the latest time.
    ///
    /// In fleet mode, fails with [`RevokeError::Unavailable`] if Redis did not take it in
    /// time: it is in effect on this instance, and the fleet shares it in the background
    /// once Redis answers (see the [fleet docs](crate::fleet#when-redis-is-unreachable)).
    pub async fn revoke_issued_before(
        &self,
        subject: &str,
        before: SystemTime,
    ) -> Result<usize, RevokeError> {
        let closed = self.local.revoke_before(subject, before);
        tracing::info!(
            name: "wsguard.revoke.revoked",
            target: "wsguard::revoke",
            cause = "issued_before",
            identity = subject,
            sockets = closed,
            "revoked the credentials of an identity"
        );
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            fleet
                .share(crate::fleet::Unshared::Before {
                    subject: subject.to_owned(),
                    before,
                })
                .await
                .map_err(|e| RevokeError::Unavailable(e.to_string()))?;
        }
        Ok(closed)
    }

    /// Revokes one token and closes the sockets it opened with `1008`: log out this device.
    /// Returns the number of sockets closed on this instance.
    ///
    /// In fleet mode, fails with [`RevokeError::Unavailable`] if Redis did not take it in
    /// time: it is in effect on this instance, and the fleet shares it in the background
    /// once Redis answers (see the [fleet docs](crate::fleet#when-redis-is-unreachable)).
    pub async fn revoke_token(&self, token: &str) -> Result<usize, RevokeError> {
        self.revoke_fingerprint(TokenFingerprint::of(token)).await
    }

    /// [`revoke_token`](Self::revoke_token) by the token's fingerprint (what
    /// [`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer) puts in the request
    /// extensions).
    pub async fn revoke_fingerprint(
        &self,
        fingerprint: TokenFingerprint,
    ) -> Result<usize, RevokeError> {
        let closed = self.local.revoke_token(*fingerprint.as_bytes());
        tracing::info!(
            name: "wsguard.revoke.revoked",
            target: "wsguard::revoke",
            cause = "token",
            token = %&fingerprint.to_hex()[..8],
            sockets = closed,
            "revoked a token"
        );
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            fleet
                .share(crate::fleet::Unshared::Token(fingerprint))
                .await
                .map_err(|e| RevokeError::Unavailable(e.to_string()))?;
        }
        Ok(closed)
    }

    /// Whether this registry holds a revocation of `principal`'s credential (by subject and
    /// issue time) or of the token `token`. Local only: in fleet mode, revocations made
    /// before this instance started are known to Redis only; use [`check`](Self::check).
    pub fn is_revoked(&self, principal: &Principal, token: Option<&TokenFingerprint>) -> bool {
        let mut state = self.local.lock();
        let now = self.local.clock.now();
        state.purge(now);
        state.revoked(Some(principal), token.map(|t| t.as_bytes()))
    }

    /// Refuses a revoked credential outside a WebSocket handshake (an HTTP route that takes
    /// the same tokens): `Err(`[`RevokeError::Revoked`]`)` if `principal`'s credential or the
    /// token is revoked. In fleet mode Redis is asked too; when it does not answer, the
    /// fleet's failure policy decides (fall back to this registry, or
    /// [`RevokeError::Unavailable`]).
    pub async fn check(
        &self,
        principal: &Principal,
        token: Option<&TokenFingerprint>,
    ) -> Result<(), RevokeError> {
        if self.is_revoked(principal, token) {
            return Err(RevokeError::Revoked);
        }
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            return match fleet.remote_revoked(Some(principal), token).await {
                Ok(true) => Err(RevokeError::Revoked),
                Ok(false) => Ok(()),
                Err(e) if fleet.failure_policy() == crate::fleet::FailurePolicy::Refuse => {
                    Err(RevokeError::Unavailable(e.to_string()))
                }
                Err(_) => Ok(()),
            };
        }
        Ok(())
    }

    /// The live sockets registered with this registry on this instance (the ones a
    /// revocation can close).
    pub fn live_sockets(&self) -> usize {
        let state = self.local.lock();
        state
            .live_by_subject
            .values()
            .map(HashMap::len)
            .sum::<usize>()
            + state.anonymous
    }

    /// How many revocations (tokens and subjects) are remembered, after purging the expired
    /// ones.
    pub fn remembered(&self) -> usize {
        let mut state = self.local.lock();
        state.purge(self.local.clock.now());
        state.tokens.len() + state.subjects.len()
    }

    /// The retention: how long a revocation is remembered at most.
    pub fn retention(&self) -> Duration {
        self.local.retention
    }

    #[cfg(all(test, feature = "redis"))]
    pub(crate) fn local(&self) -> &Arc<Local> {
        &self.local
    }
}

/// `now + d`, saturating instead of overflowing.
fn later(now: SystemTime, d: Duration) -> SystemTime {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

type Fp = [u8; 32];

/// One live socket as a revocation sees it.
#[derive(Clone)]
struct Live {
    signal: CloseSignal,
    issued_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
}

struct Cutoff {
    before: SystemTime,
    forget_at: SystemTime,
}

#[derive(Default)]
struct State {
    /// Revoked tokens and when to forget them.
    tokens: HashMap<Fp, SystemTime>,
    token_queue: BTreeSet<(SystemTime, Fp)>,
    /// Per subject: credentials issued before `before` are revoked.
    subjects: HashMap<Arc<str>, Cutoff>,
    subject_queue: BTreeSet<(SystemTime, Arc<str>)>,
    next: u64,
    anonymous: usize,
    live_by_subject: HashMap<Arc<str>, HashMap<u64, Live>>,
    live_by_token: HashMap<Fp, HashMap<u64, Live>>,
}

impl State {
    fn purge(&mut self, now: SystemTime) {
        while let Some((at, _)) = self.token_queue.first() {
            if *at > now {
                break;
            }
            if let Some((at, fp)) = self.token_queue.pop_first()
                && self.tokens.get(&fp) == Some(&at)
            {
                self.tokens.remove(&fp);
            }
        }
        while let Some((at, _)) = self.subject_queue.first() {
            if *at > now {
                break;
            }
            if let Some((at, subject)) = self.subject_queue.pop_first()
                && self
                    .subjects
                    .get(&subject)
                    .is_some_and(|c| c.forget_at == at)
            {
                self.subjects.remove(&subject);
            }
        }
    }

    fn revoked(&self, principal: Option<&Principal>, token: Option<&Fp>) -> bool {
        if let Some(fp) = token
            && self.tokens.contains_key(fp)
        {
            return true;
        }
        principal.is_some_and(|p| {
            self.subjects
                .get(p.subject())
                .is_some_and(|c| issued_before(p.issued_at(), c.before))
        })
    }
}

/// Fail closed: a credential without an issue time was issued before any time.
fn issued_before(issued_at: Option<SystemTime>, before: SystemTime) -> bool {
    issued_at.is_none_or(|t| t < before)
}

/// The state behind [`Revocations`], shared with the fleet's listener.
pub(crate) struct Local {
    retention: Duration,
    clock: Arc<dyn TicketClock>,
    state: Arc<Mutex<State>>,
}

impl Local {
    pub(crate) fn new(retention: Duration, clock: Arc<dyn TicketClock>) -> Self {
        Self {
            retention: retention.max(MIN_RETENTION),
            clock,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Records the revocation of a token and closes its sockets; returns how many.
    pub(crate) fn revoke_token(&self, fp: Fp) -> usize {
        let now = self.clock.now();
        let signals: Vec<CloseSignal> = {
            let mut state = self.lock();
            state.purge(now);
            let live: Vec<Live> = state
                .live_by_token
                .get(&fp)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            // Remembered until the token expires (when its sockets said), at most the
            // retention.
            let mut forget_at = later(now, self.retention);
            if !live.is_empty() && live.iter().all(|l| l.expires_at.is_some()) {
                let expiry = live.iter().filter_map(|l| l.expires_at).max();
                if let Some(expiry) = expiry {
                    forget_at = forget_at.min(later(expiry, EXPIRY_GRACE).max(now));
                }
            }
            if let Some(old) = state.tokens.get(&fp).copied() {
                if old >= forget_at {
                    forget_at = old;
                } else {
                    state.token_queue.remove(&(old, fp));
                }
            }
            if forget_at > now {
                state.tokens.insert(fp, forget_at);
                state.token_queue.insert((forget_at, fp));
            }
            live.into_iter().map(|l| l.signal).collect()
        };
        close(signals, "token")
    }

    /// Records "issued before `before`" for `subject` and closes the matching sockets.
    pub(crate) fn revoke_before(&self, subject: &str, before: SystemTime) -> usize {
        let now = self.clock.now();
        let subject: Arc<str> = Arc::from(subject);
        let signals: Vec<CloseSignal> = {
            let mut state = self.lock();
            state.purge(now);
            let forget_at = later(now, self.retention);
            let mut before = before;
            if let Some(old) = state.subjects.remove(&subject) {
                before = before.max(old.before);
                state
                    .subject_queue
                    .remove(&(old.forget_at, subject.clone()));
            }
            state
                .subjects
                .insert(subject.clone(), Cutoff { before, forget_at });
            state.subject_queue.insert((forget_at, subject.clone()));
            state
                .live_by_subject
                .get(&subject)
                .map(|m| {
                    m.values()
                        .filter(|l| issued_before(l.issued_at, before))
                        .map(|l| l.signal.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        close(signals, "issued_before")
    }

    /// The subjects and tokens of the live sockets, for reconciling after missed messages.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn live_keys(&self) -> (Vec<Arc<str>>, Vec<Fp>) {
        let state = self.lock();
        (
            state.live_by_subject.keys().cloned().collect(),
            state.live_by_token.keys().copied().collect(),
        )
    }

    /// Registers a socket-to-be and checks it against the revocations, atomically: a
    /// revocation either sees the socket (and closes it) or is seen here.
    fn register(
        &self,
        principal: Option<&Principal>,
        token: Option<Fp>,
        signal: CloseSignal,
    ) -> (Registration, bool) {
        let now = self.clock.now();
        let mut state = self.lock();
        state.purge(now);
        let revoked = state.revoked(principal, token.as_ref());
        state.next += 1;
        let id = state.next;
        let live = Live {
            signal,
            issued_at: principal.and_then(Principal::issued_at),
            expires_at: principal.and_then(Principal::expires_at),
        };
        let subject: Option<Arc<str>> = principal.map(|p| Arc::from(p.subject()));
        match &subject {
            Some(s) => {
                state
                    .live_by_subject
                    .entry(s.clone())
                    .or_default()
                    .insert(id, live.clone());
            }
            None => state.anonymous += 1,
        }
        if let Some(fp) = token {
            state.live_by_token.entry(fp).or_default().insert(id, live);
        }
        let registration = Registration {
            state: Arc::clone(&self.state),
            id,
            subject,
            token,
        };
        (registration, revoked)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every mutation completes before the next statement, so a poisoned lock is consistent.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn close(signals: Vec<CloseSignal>, cause: &'static str) -> usize {
    let n = signals.len();
    if n > 0 {
        tracing::info!(
            name: "wsguard.revoke.closing",
            target: "wsguard::revoke",
            cause,
            sockets = n,
            close_code = 1008,
            "closing revoked sockets on this instance"
        );
    }
    for signal in signals {
        signal.revoke();
    }
    n
}

/// Keeps a socket reachable by revocation until dropped.
struct Registration {
    state: Arc<Mutex<State>>,
    id: u64,
    subject: Option<Arc<str>>,
    token: Option<Fp>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        match &self.subject {
            Some(s) => {
                if let Some(map) = state.live_by_subject.get_mut(s) {
                    map.remove(&self.id);
                    if map.is_empty() {
                        state.live_by_subject.remove(s);
                    }
                }
            }
            None => state.anonymous = state.anonymous.saturating_sub(1),
        }
        if let Some(fp) = &self.token
            && let Some(map) = state.live_by_token.get_mut(fp)
        {
            map.remove(&self.id);
            if map.is_empty() {
                state.live_by_token.remove(fp);
            }
        }
    }
}

/// Layer that refuses revoked credentials at the handshake (`401`, [`RevokeError::Revoked`]
/// in the extensions) and registers every admitted socket with a [`Revocations`] registry,
/// so that a later revocation closes it with `1008`. See the [module docs](self).
///
/// Place it after the auth layer: it reads the [`Principal`] and [`TokenFingerprint`] that
/// [`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer) inserts; requests without either
/// pass unchanged. It puts a [`CloseSignal`] into the request extensions, which
/// [`GuardedUpgrade`](crate::socket::GuardedUpgrade) attaches to the socket, and holds the
/// registration in the request's [`ConnectionPermit`] until the socket ends.
///
/// In fleet mode (`RevocationLayer::new(&fleet)`), the check also asks Redis; while Redis is
/// unreachable the fleet's failure policy applies (fall back to this instance's registry, or
/// `503`).
#[derive(Clone, Debug)]
pub struct RevocationLayer {
    revocations: Revocations,
    on_rejection: Option<OnRejection>,
}

impl RevocationLayer {
    /// A layer enforcing `revocations` (a [`Revocations`], or in fleet mode a `&Fleet`).
    #[must_use]
    pub fn new(revocations: impl Into<Revocations>) -> Self {
        Self {
            revocations: revocations.into(),
            on_rejection: None,
        }
    }

    /// Builds the rejection response from the [`Rejection`]: [`Rejection::Revoke`] for a
    /// revoked credential and, in fleet mode under the `Refuse` policy, `Rejection::Fleet`
    /// when Redis cannot be asked. Replaces the previous hook; default: none, which answers
    /// [`Rejection::into_response`] (`401` with `WWW-Authenticate`, or `503` with
    /// `Retry-After`). The [`RevokeError`] (or `FleetError`) and the [`Rejection`] are put in
    /// the extensions of whatever `f` returns, and `Retry-After` when it lacks one on a
    /// `503` cause; `WWW-Authenticate` is not added.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }

    /// The registry this layer enforces.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

impl<S> Layer<S> for RevocationLayer {
    type Service = Revocation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Revocation {
            inner,
            revocations: self.revocations.clone(),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

/// Middleware that enforces revocation. Made by [`RevocationLayer`].
#[derive(Clone, Debug)]
pub struct Revocation<S> {
    inner: S,
    revocations: Revocations,
    on_rejection: Option<OnRejection>,
}

impl<S> Revocation<S> {
    crate::core::define_inner_service_accessors!();
}

fn refuse(hook: Option<&OnRejection>, ip: Option<IpAddr>, identity: Option<&str>) -> Response {
    tracing::warn!(
        name: "wsguard.revoke.refused",
        target: "wsguard::revoke",
        cause = "revoked",
        client_ip = ip.map(tracing::field::display),
        identity,
        status = 401,
        "handshake refused: the credential was revoked"
    );
    crate::rejection::reject(hook, RevokeError::Revoked)
}

fn admit<B>(req: &mut Request<B>, signal: CloseSignal, registration: Registration) {
    req.extensions_mut().insert(signal);
    let permit = ConnectionPermit::holding(registration);
    crate::core::attach_permit(req.extensions_mut(), permit);
}

impl<S, B, ResBody> Service<Request<B>> for Revocation<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ip: Option<IpAddr> = crate::core::client_ip(req.extensions());
        let principal = crate::core::principal(req.extensions()).cloned();
        let token = req.extensions().get::<TokenFingerprint>().copied();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if principal.is_none() && token.is_none() {
            return ResponseFuture::new(inner.call(req));
        }
        let signal = CloseSignal::new();
        let (registration, revoked) = self.revocations.local.register(
            principal.as_ref(),
            token.map(|t| *t.as_bytes()),
            signal.clone(),
        );
        let identity = principal.as_ref().map(|p| p.subject().to_owned());
        if revoked {
            drop(registration);
            let response = refuse(self.on_rejection.as_ref(), ip, identity.as_deref());
            return ResponseFuture::rejected(response);
        }
        #[cfg(feature = "redis")]
        if let Some(fleet) = self.revocations.fleet.clone() {
            let hook = self.on_rejection.clone();
            return ResponseFuture::new(async move {
                match fleet
                    .remote_revoked(principal.as_ref(), token.as_ref())
                    .await
                {
                    Ok(false) => {}
                    Ok(true) => {
                        let response = refuse(hook.as_ref(), ip, identity.as_deref());
                        return Ok(crate::core::convert_body(response));
                    }
                    Err(error) => {
                        if fleet.failure_policy() == crate::fleet::FailurePolicy::Refuse {
                            let response = crate::fleet::refuse_unavailable(
                                hook.as_ref(),
                                "revocation",
                                error,
                                ip,
                            );
                            return Ok(crate::core::convert_body(response));
                        }
                        crate::fleet::note_fallback("revocation", ip);
                    }
                }
                admit(&mut req, signal, registration);
                inner.call(req).await
            });
        }
        admit(&mut req, signal, registration);
        ResponseFuture::new(inner.call(req))
    }
}

/// Response future of [`Revocation`].
pub use crate::core::BoxResponseFuture as ResponseFuture;

/// Registers a socket per `(principal, token)` with `local`; the signals, and the permits
/// that keep them registered.
#[cfg(all(test, feature = "redis"))]
pub(crate) fn test_register(
    local: &Local,
    entries: &[(Principal, &str)],
) -> (Vec<CloseSignal>, Vec<ConnectionPermit>) {
    entries
        .iter()
        .map(|(principal, token)| {
            let signal = CloseSignal::new();
            let (registration, _) = local.register(
                Some(principal),
                Some(*TokenFingerprint::of(token).as_bytes()),
                signal.clone(),
            );
            (signal, ConnectionPermit::holding(registration))
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::UNIX_EPOCH,
    };

    use super::*;

    /// A clock the test moves by hand, in seconds since the epoch.
    fn manual_clock() -> (Arc<AtomicU64>, impl TicketClock) {
        let secs = Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let secs = Arc::clone(&secs);
            move || UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst))
        };
        (secs, clock)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn who_is_revoked() {
        struct Case {
            name: &'static str,
            principal: Principal,
            token: &'static str,
            revoked: bool,
        }
        let (_, clock) = manual_clock();
        let r = Revocations::builder().clock(clock).build();
        r.revoke_issued_before("alice", at(1_000)).await.unwrap();
        r.revoke_token("bob-1").await.unwrap();
        let cases = [
            Case {
                name: "issued before the cutoff",
                principal: Principal::new("alice", None).with_issued_at(at(999)),
                token: "a1",
                revoked: true,
            },
            Case {
                name: "issued at the cutoff",
                principal: Principal::new("alice", None).with_issued_at(at(1_000)),
                token: "a2",
                revoked: false,
            },
            Case {
                name: "issued after the cutoff",
                principal: Principal::new("alice", None).with_issued_at(at(1_001)),
                token: "a3",
                revoked: false,
            },
            Case {
                name: "no issue time: fail closed",
                principal: Principal::new("alice", None),
                token: "a4",
                revoked: true,
            },
            Case {
                name: "another subject",
                principal: Principal::new("carol", None),
                token: "c1",
                revoked: false,
            },
            Case {
                name: "the revoked token",
                principal: Principal::new("bob", None).with_issued_at(at(5_000)),
                token: "bob-1",
                revoked: true,
            },
            Case {
                name: "bob's other token",
                principal: Principal::new("bob", None),
                token: "bob-2",
                revoked: false,
            },
        ];
        for case in cases {
            let fp = TokenFingerprint::of(case.token);
            assert_eq!(
                r.is_revoked(&case.principal, Some(&fp)),
                case.revoked,
                "{}",
                case.name
            );
            assert_eq!(
                r.check(&case.principal, Some(&fp)).await.is_err(),
                case.revoked,
                "{}",
                case.name
            );
        }
        // A later, earlier cutoff does not move the cutoff back.
        r.revoke_issued_before("alice", at(10)).await.unwrap();
        let p = Principal::new("alice", None).with_issued_at(at(999));
        assert!(r.is_revoked(&p, None));
    }

    #[tokio::test]
    async fn revocations_are_forgotten_after_expiry_or_retention() {
        let (secs, clock) = manual_clock();
        let now = 1_000_000;
        let r = Revocations::builder()
            .clock(clock)
            .retention(Duration::from_secs(3600))
            .build();
        // A token whose live socket says it expires in 60 s: remembered 60 s and the grace.
        let signal = CloseSignal::new();
        let short = Principal::new("dave", Some(at(now + 60))).with_issued_at(at(now));
        let (registration, revoked) = r.local.register(
            Some(&short),
            Some(*TokenFingerprint::of("short").as_bytes()),
            signal.clone(),
        );
        assert!(!revoked);
        assert_eq!(r.revoke_token("short").await.unwrap(), 1);
        assert!(signal.is_revoked());
        drop(registration);
        // Without a known expiry: the retention. And a subject cutoff: the retention.
        for i in 0..1000 {
            r.revoke_token(&format!("unknown-{i}")).await.unwrap();
        }
        r.revoke_identity("erin").await.unwrap();
        assert_eq!(r.remembered(), 1002);
        assert_eq!(r.live_sockets(), 0);

        secs.store(now + 60 + 299, Ordering::SeqCst);
        assert_eq!(r.remembered(), 1002, "within the grace after its expiry");
        secs.store(now + 60 + 300, Ordering::SeqCst);
        assert_eq!(r.remembered(), 1001, "the short token is forgotten");
        assert!(!r.is_revoked(&short, Some(&TokenFingerprint::of("short"))));
        secs.store(now + 3599, Ordering::SeqCst);
        assert_eq!(r.remembered(), 1001);
        secs.store(now + 3600, Ordering::SeqCst);
        assert_eq!(
            r.remembered(),
            0,
            "everything is purged after the retention"
        );
        let state = r.local.lock();
        assert!(state.token_queue.is_empty() && state.subject_queue.is_empty());
    }

    #[tokio::test]
    async fn revoking_again_extends_and_never_shortens() {
        let (secs, clock) = manual_clock();
        let now = 1_000_000;
        let r = Revocations::builder()
            .clock(clock)
            .retention(Duration::from_secs(100))
            .build();
        r.revoke_token("t").await.unwrap();
        r.revoke_identity("s").await.unwrap();
        secs.store(now + 50, Ordering::SeqCst);
        r.revoke_token("t").await.unwrap();
        r.revoke_identity("s").await.unwrap();
        secs.store(now + 120, Ordering::SeqCst);
        assert_eq!(r.remembered(), 2);
        let p = Principal::new("s", None).with_issued_at(at(now + 10));
        assert!(r.is_revoked(&p, Some(&TokenFingerprint::of("t"))));
        secs.store(now + 150, Ordering::SeqCst);
        assert_eq!(r.remembered(), 0);
        let state = r.local.lock();
        assert!(state.token_queue.is_empty() && state.subject_queue.is_empty());
    }

    #[test]
    fn settings_saturate() {
        let r = Revocations::builder().retention(Duration::ZERO).build();
        assert_eq!(r.retention(), MIN_RETENTION);
        let r = Revocations::builder().retention(Duration::MAX).build();
        assert_eq!(r.retention(), Duration::MAX);
        assert!(later(SystemTime::now(), Duration::MAX) > SystemTime::now());
        let debug = format!("{r:?}");
        assert!(debug.contains("Revocations"), "{debug}");
    }

    #[tokio::test]
    async fn a_revoked_credential_is_refused_with_401_and_the_error() {
        use tower::ServiceExt;
        let r = Revocations::new();
        let svc =
            RevocationLayer::new(r.clone()).layer(tower::service_fn(|_req: Request<Body>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            }));
        let request = |token: &str| {
            let mut req = Request::get("/ws").body(Body::empty()).unwrap();
            req.extensions_mut().insert(Principal::new("alice", None));
            req.extensions_mut().insert(TokenFingerprint::of(token));
            req
        };
        let res = svc.clone().oneshot(request("t1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        r.revoke_token("t1").await.unwrap();
        let capture = crate::test_support::capture();
        let res = svc.clone().oneshot(request("t1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let events = capture.events();
        let refused: Vec<_> = events
            .iter()
            .filter(|(name, _)| name == "wsguard.revoke.refused")
            .collect();
        assert_eq!(refused.len(), 1, "{events:?}");
        assert!(refused[0].1.contains("identity=\"alice\""), "{events:?}");
        assert!(!refused[0].1.contains(&TokenFingerprint::of("t1").to_hex()));
        drop(capture);
        assert_eq!(
            res.extensions().get::<RevokeError>(),
            Some(&RevokeError::Revoked)
        );
        assert!(res.headers().contains_key(http::header::WWW_AUTHENTICATE));
        let res = svc.oneshot(request("t2")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(r.live_sockets(), 0, "registrations end with the request");
    }
}
