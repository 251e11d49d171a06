//! Signed short-lived tickets.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    future::Ready,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{AuthError, Authenticator, Credential, Principal, Verified};
use crate::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a MAC made for tickets can never be confused with one made for
/// something else with the same key.
const DOMAIN: &[u8] = b"wsguard-ticket-v1\n";
/// Shortest accepted secret, in bytes.
const MIN_SECRET_LEN: usize = 32;
/// Longest key id, in characters.
const MAX_KEY_ID_LEN: usize = 32;
/// Default for [`TicketIssuer::ttl`].
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default for [`TicketVerifier::tickets_per_subject`].
const DEFAULT_PER_SUBJECT: NonZeroUsize = NonZeroUsize::new(64).unwrap();
/// The latest time a credential can expire, 9999-12-31T23:59:59Z, in seconds since the Unix
/// epoch: later dates (a ticket TTL of `Duration::MAX`, a JWT `exp` of `1e300`) saturate to
/// it, so that no date computation can overflow.
pub(crate) const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// The wall-clock time source of [`TicketIssuer`] and [`TicketVerifier`] (and of the JWT
/// authenticator and the revocation registry, which compare the same dates).
/// [`SystemClock`] by default; closures `Fn() -> SystemTime` implement it too, which is how
/// tests move time without sleeping.
///
/// Not to be confused with [`rate_limit::Clock`](crate::rate_limit::Clock), governor's
/// monotonic clock for the rate limits.
pub trait TicketClock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl TicketClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

impl<F> TicketClock for F
where
    F: Fn() -> SystemTime + Send + Sync + 'static,
{
    fn now(&self) -> SystemTime {
        self()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `secs` seconds after the Unix epoch, saturated at [`MAX_UNIX_SECS`].
pub(super) fn unix_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_UNIX_SECS))
}

/// An HMAC-SHA256 key with an id, for [`TicketIssuer`] and [`TicketVerifier`]. The id travels
/// in every ticket so a verifier holding several keys (during a rotation) knows which one to
/// check.
///
/// `Debug` shows the id only.
#[derive(Clone)]
pub struct TicketKey {
    id: Arc<str>,
    mac: HmacSha256,
}

impl TicketKey {
    /// A key named `id` (1 to 32 characters of `A-Z a-z 0-9 _ -`) with `secret`, which must
    /// be at least 32 bytes of random data (share it between the servers that issue and
    /// verify).
    pub fn new(id: impl AsRef<str>, secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let id = id.as_ref();
        let valid_id = !id.is_empty()
            && id.len() <= MAX_KEY_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id {
            return Err(ConfigError::InvalidKeyId { value: id.into() });
        }
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::WeakKey { len: secret.len() });
        }
        let mac = HmacSha256::new_from_slice(secret)
            .map_err(|_| ConfigError::WeakKey { len: secret.len() })?;
        Ok(Self { id: id.into(), mac })
    }

    /// A key named `id` with 32 fresh random bytes from the operating system. Suits a single
    /// server whose tickets need not survive a restart.
    pub fn generate(id: impl AsRef<str>) -> Result<Self, ConfigError> {
        let mut secret = [0u8; MIN_SECRET_LEN];
        getrandom::fill(&mut secret).map_err(|_| ConfigError::Random)?;
        Self::new(id, secret)
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn tag(&self, payload_b64: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(self.id.as_bytes());
        mac.update(b".");
        mac.update(payload_b64.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    exp: u64,
    /// Issue time in milliseconds since the epoch (absent in tickets of earlier versions).
    /// Milliseconds, so that a ticket issued just after a revocation is not taken for one
    /// issued before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_ms: Option<u64>,
    nonce: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    claims: Map<String, Value>,
}

/// A verified ticket: the identity that [`TicketVerifier`] stores in the request extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    subject: Arc<str>,
    expires_at: SystemTime,
    issued_at: Option<SystemTime>,
    key_id: Arc<str>,
    claims: Arc<Map<String, Value>>,
}

impl Ticket {
    /// The subject the ticket was issued to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the ticket expires.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When the ticket was issued (`None` for tickets of wsguard versions that did not record
    /// it).
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.issued_at
    }

    /// The [`Principal`] this ticket stands for: its subject, expiry and issue time, as the
    /// [`Authenticator`] impl gives it to later layers. For authenticators built around a
    /// verifier (say, one that only checks a one-time ticket without using it up).
    pub fn principal(&self) -> Principal {
        let principal = Principal::new(self.subject.clone(), Some(self.expires_at));
        match self.issued_at {
            Some(issued_at) => principal.with_issued_at(issued_at),
            None => principal,
        }
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The claim `name`, if the issuer added it.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// All the claims the issuer added.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
}

/// Issues tickets, typically in a login route after checking a password: the client presents
/// the ticket in the WebSocket handshake and a [`TicketVerifier`] checks it.
///
/// A ticket is `<key id>.<base64url payload>.<base64url HMAC-SHA256 tag>`: URL-safe, so it fits
/// a query parameter, a cookie or a `Sec-WebSocket-Protocol` entry. The payload (subject,
/// expiry, a random nonce and optional claims) is signed, not encrypted: do not put secrets in
/// it.
#[derive(Clone)]
pub struct TicketIssuer {
    key: TicketKey,
    ttl: Duration,
    clock: Arc<dyn TicketClock>,
}

impl TicketIssuer {
    /// An issuer signing with `key`.
    pub fn new(key: TicketKey) -> Self {
        Self {
            key,
            ttl: DEFAULT_TTL,
            clock: Arc::new(SystemClock),
        }
    }

    /// How long tickets stay valid (rounded down to whole seconds). Keep it short: a ticket
    /// only has to reach the handshake. A TTL reaching past the year 9999 (say
    /// `Duration::MAX`) saturates: the tickets expire at 9999-12-31T23:59:59Z. Replaces the
    /// previous value. Default: 60 seconds.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The time source. Replaces the previous one. Default: [`SystemClock`].
    #[must_use]
    pub fn clock(mut self, clock: impl TicketClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A ticket for `subject`.
    pub fn issue(&self, subject: impl AsRef<str>) -> String {
        self.issue_with_claims(subject, Map::new())
    }

    /// A ticket for `subject` carrying `claims` (readable by anyone holding the ticket, but
    /// not changeable).
    pub fn issue_with_claims(
        &self,
        subject: impl AsRef<str>,
        claims: Map<String, Value>,
    ) -> String {
        let now = self.clock.now();
        let payload = Payload {
            sub: subject.as_ref().to_owned(),
            exp: unix_secs(now)
                .saturating_add(self.ttl.as_secs())
                .min(MAX_UNIX_SECS),
            iat_ms: Some(
                now.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            nonce: URL_SAFE_NO_PAD.encode(self.nonce(now)),
            claims,
        };
        // Serialising strings, integers and a JSON map cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let payload_b64 = URL_SAFE_NO_PAD.encode(json);
        let tag = URL_SAFE_NO_PAD.encode(self.key.tag(&payload_b64));
        format!("{}.{payload_b64}.{tag}", self.key.id)
    }

    /// 16 unique bytes: random from the operating system, or (should that ever fail) a keyed
    /// hash of the time and a process-wide counter, which is unique all the same.
    fn nonce(&self, now: SystemTime) -> [u8; 16] {
        let mut nonce = [0u8; 16];
        if getrandom::fill(&mut nonce).is_err() {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let count = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let seed = format!("nonce:{nanos}:{count}");
            nonce.copy_from_slice(&self.key.tag(&seed)[..16]);
        }
        nonce
    }
}

impl fmt::Debug for TicketIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketIssuer")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Verifies tickets made by [`TicketIssuer`]: an [`Authenticator`] whose identity is the
/// [`Ticket`], and whose principal expires with the ticket.
///
/// Holds several keys for rotation: add the new key to every verifier, then switch the
/// issuers to it, then drop the old key once its last tickets have expired. Tags are
/// compared in constant time. A ticket signed by an unknown key, or with a wrong tag, is
/// [`AuthError::Invalid`]; a ticket past its expiry is [`AuthError::Expired`].
#[derive(Clone)]
pub struct TicketVerifier {
    keys: Arc<Vec<TicketKey>>,
    clock: Arc<dyn TicketClock>,
    per_subject: NonZeroUsize,
    replay: Option<Arc<ReplayCache>>,
}

impl TicketVerifier {
    /// A verifier accepting tickets signed with `key`.
    pub fn new(key: TicketKey) -> Self {
        Self {
            keys: Arc::new(vec![key]),
            clock: Arc::new(SystemClock),
            per_subject: DEFAULT_PER_SUBJECT,
            replay: None,
        }
    }

    /// Also accepts tickets signed with `key`. Adds to the keys; a key whose id is already
    /// present replaces that key.
    #[must_use]
    pub fn key(mut self, key: TicketKey) -> Self {
        let keys = Arc::make_mut(&mut self.keys);
        keys.retain(|k| k.id != key.id);
        keys.push(key);
        self
    }

    /// Makes every ticket single-use: the nonce of each accepted ticket is remembered until
    /// the ticket expires, and a second use is [`AuthError::Invalid`]. Expired nonces are
    /// purged first. At most `capacity` nonces are remembered, shared fairly between subjects
    /// so that no account can fill the cache and lock the others out:
    ///
    /// - a subject holding [`tickets_per_subject`](Self::tickets_per_subject) unexpired
    ///   tickets gets [`AuthError::TooManyTickets`] (`429` with `Retry-After`, event
    ///   `wsguard.auth.replay_subject_full`) until its oldest expires, while other subjects
    ///   still connect;
    /// - when the whole cache is full, the subject holding the most gives up its oldest
    ///   nonce to a subject holding at least two fewer (event
    ///   `wsguard.auth.replay_cache_rebalanced`); its tickets expiring at or before that one
    ///   may have been used and are refused from then on ([`AuthError::Invalid`]);
    /// - when every subject holds about as many, new tickets are refused (fail closed) with
    ///   [`AuthError::Invalid`] and a `wsguard.auth.replay_cache_full` warning: that takes
    ///   about `capacity` accounts, so size it above the number of tickets issued per TTL.
    ///
    /// The cache is shared by clones of this verifier (one process; several servers need
    /// sticky routing or a shared store). Replaces an earlier cache. Default: tickets may be
    /// used until they expire.
    #[must_use]
    pub fn one_time(mut self, capacity: NonZeroUsize) -> Self {
        self.replay = Some(Arc::new(ReplayCache::new(
            capacity.get(),
            self.per_subject.get(),
        )));
        self
    }

    /// The most unexpired one-time tickets of one subject the replay cache of
    /// [`one_time`](Self::one_time) remembers (capped at the cache's capacity); a subject
    /// past it is refused with [`AuthError::TooManyTickets`] until its oldest ticket expires.
    /// Replaces the previous value (and an existing cache, which starts empty). No effect
    /// without `one_time`. Default: 64.
    #[must_use]
    pub fn tickets_per_subject(mut self, max: NonZeroUsize) -> Self {
        self.per_subject = max;
        if let Some(replay) = &self.replay {
            self.replay = Some(Arc::new(ReplayCache::new(replay.capacity, max.get())));
        }
        self
    }

    /// The time source. Replaces the previous one. Default: [`SystemClock`].
    #[must_use]
    pub fn clock(mut self, clock: impl TicketClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Checks `token` and, for one-time tickets, uses it up.
    pub fn verify(&self, token: &str) -> Result<Ticket, AuthError> {
        self.check_ticket(token, true)
    }

    /// Checks `token` like [`verify`](Self::verify) but never uses it up: a one-time ticket
    /// that was already used is [`AuthError::Invalid`], an unused one stays usable. For a
    /// status or diagnostic route that must not burn the ticket the socket needs.
    pub fn check(&self, token: &str) -> Result<Ticket, AuthError> {
        self.check_ticket(token, false)
    }

    fn check_ticket(&self, token: &str, use_up: bool) -> Result<Ticket, AuthError> {
        let mut segments = token.split('.');
        let (Some(key_id), Some(payload_b64), Some(tag_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| AuthError::Malformed)?;
        if tag.len() != 32 || key_id.is_empty() || payload_b64.is_empty() {
            return Err(AuthError::Malformed);
        }
        // The key id is public: finding the key needs no constant time.
        let key = self
            .keys
            .iter()
            .find(|k| &*k.id == key_id)
            .ok_or(AuthError::Invalid)?;
        let expected = key.tag(payload_b64);
        if !bool::from(expected.as_slice().ct_eq(&tag)) {
            return Err(AuthError::Invalid);
        }
        // Authentic from here on: parse failures mean an incompatible issuer.
        let json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AuthError::Malformed)?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        let now = unix_secs(self.clock.now());
        if now >= payload.exp {
            return Err(AuthError::Expired);
        }
        let subject: Arc<str> = payload.sub.into();
        if let Some(replay) = &self.replay {
            if use_up {
                replay.use_once(&subject, &payload.nonce, payload.exp, now)?;
            } else if replay.contains(&subject, &payload.nonce, payload.exp, now) {
                return Err(AuthError::Invalid);
            }
        }
        Ok(Ticket {
            subject,
            expires_at: unix_time(payload.exp),
            issued_at: payload
                .iat_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
                .map(|at| at.min(self.clock.now())),
            key_id: key.id.clone(),
            claims: Arc::new(payload.claims),
        })
    }
}

impl Authenticator for TicketVerifier {
    type Identity = Ticket;
    type Future = Ready<Result<Verified<Ticket>, AuthError>>;

    fn authenticate(&self, _parts: &Parts, credential: Credential) -> Self::Future {
        std::future::ready(self.verify(credential.token()).map(|ticket| {
            let principal = ticket.principal();
            Verified::new(ticket, principal)
        }))
    }
}

impl fmt::Debug for TicketVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketVerifier")
            .field("keys", &self.keys)
            .field("tickets_per_subject", &self.per_subject)
            .field("one_time", &self.replay)
            .finish_non_exhaustive()
    }
}

/// The nonces of used one-time tickets, until they expire, by subject. Bounded by `capacity`
/// in all and by `per_subject` for each subject; when full, the subject holding the most
/// gives up its oldest nonce to a subject holding fewer (see [`TicketVerifier::one_time`]).
struct ReplayCache {
    capacity: usize,
    per_subject: usize,
    state: Mutex<ReplayState>,
}

#[derive(Default)]
struct ReplayState {
    /// What each subject holds. No subject without nonces.
    subjects: HashMap<Arc<str>, Held>,
    /// (expiry, subject, nonce) of every nonce, oldest first, for purging.
    by_expiry: BTreeSet<(u64, Arc<str>, String)>,
    /// (number of nonces, subject), for finding the subject holding the most.
    by_count: BTreeSet<(usize, Arc<str>)>,
}

#[derive(Default)]
struct Held {
    /// (expiry, nonce), oldest first.
    nonces: BTreeSet<(u64, String)>,
    /// The expiry of the latest nonce given up to another subject: this subject's tickets
    /// expiring at or before it may have been used and are refused. Always before the expiry
    /// of every nonce still held (the oldest is given up first, later tickets expiring
    /// earlier are refused), so it is gone by the time the last one is purged.
    floor: u64,
}

impl ReplayCache {
    fn new(capacity: usize, per_subject: usize) -> Self {
        Self {
            capacity,
            per_subject: per_subject.clamp(1, capacity.max(1)),
            state: Mutex::new(ReplayState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every mutation
        // below is completed before the next), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the ticket was used (or may have been: given up under pressure).
    fn contains(&self, subject: &str, nonce: &str, exp: u64, now: u64) -> bool {
        let mut state = self.lock();
        state.purge(now);
        state
            .subjects
            .get(subject)
            .is_some_and(|held| exp <= held.floor || held.nonces.contains(&(exp, nonce.to_owned())))
    }

    fn use_once(
        &self,
        subject: &Arc<str>,
        nonce: &str,
        exp: u64,
        now: u64,
    ) -> Result<(), AuthError> {
        let mut state = self.lock();
        state.purge(now);
        let held = state.subjects.get(subject);
        let count = held.map_or(0, |h| h.nonces.len());
        if held.is_some_and(|h| exp <= h.floor || h.nonces.contains(&(exp, nonce.to_owned()))) {
            return Err(AuthError::Invalid);
        }
        if let Some(held) = held.filter(|_| count >= self.per_subject) {
            let oldest = held.nonces.first().map_or(now, |(e, _)| *e);
            tracing::info!(
                name: "wsguard.auth.replay_subject_full",
                identity = &**subject,
                limit = self.per_subject,
                "one-time ticket refused: this subject has too many unexpired tickets in the replay cache"
            );
            return Err(AuthError::TooManyTickets {
                retry_after: Duration::from_secs(oldest.saturating_sub(now).max(1)),
            });
        }
        if state.by_expiry.len() >= self.capacity {
            // Fair shares: the subject holding the most gives up its oldest nonce, if that
            // leaves it holding at least as many as this one will.
            let largest = state
                .by_count
                .last()
                .filter(|(most, other)| *most >= 2 && *most > count + 1 && other != subject)
                .map(|(_, other)| other.clone());
            let Some(largest) = largest else {
                tracing::warn!(
                    name: "wsguard.auth.replay_cache_full",
                    identity = &**subject,
                    limit = self.capacity,
                    "one-time ticket refused: the replay cache is full of unexpired tickets"
                );
                return Err(AuthError::Invalid);
            };
            tracing::info!(
                name: "wsguard.auth.replay_cache_rebalanced",
                identity = &*largest,
                limit = self.capacity,
                "the replay cache is full: the subject holding the most gave up its oldest ticket"
            );
            state.give_up_oldest(&largest);
        }
        state.insert(subject, exp, nonce);
        Ok(())
    }

    /// The number of nonces, after checking that the three indexes agree.
    #[cfg(test)]
    fn len(&self) -> usize {
        let state = self.lock();
        let held: usize = state.subjects.values().map(|h| h.nonces.len()).sum();
        assert_eq!(held, state.by_expiry.len());
        assert_eq!(state.by_count.len(), state.subjects.len());
        for (count, subject) in &state.by_count {
            assert_eq!(state.subjects[subject].nonces.len(), *count);
        }
        assert!(state.subjects.values().all(|h| !h.nonces.is_empty()));
        for (exp, subject, nonce) in &state.by_expiry {
            assert!(
                state.subjects[subject]
                    .nonces
                    .contains(&(*exp, nonce.clone()))
            );
        }
        state.by_expiry.len()
    }
}

impl ReplayState {
    fn insert(&mut self, subject: &Arc<str>, exp: u64, nonce: &str) {
        let held = self.subjects.entry(subject.clone()).or_default();
        let before = held.nonces.len();
        held.nonces.insert((exp, nonce.to_owned()));
        let after = held.nonces.len();
        self.by_count.remove(&(before, subject.clone()));
        self.by_count.insert((after, subject.clone()));
        self.by_expiry
            .insert((exp, subject.clone(), nonce.to_owned()));
    }

    /// Removes one nonce of `subject`, and the subject once it holds none.
    fn remove(&mut self, subject: &Arc<str>, exp: u64, nonce: String) -> bool {
        let Some(held) = self.subjects.get_mut(subject) else {
            return false;
        };
        let before = held.nonces.len();
        let removed = held.nonces.remove(&(exp, nonce));
        let after = held.nonces.len();
        self.by_count.remove(&(before, subject.clone()));
        if after == 0 {
            self.subjects.remove(subject);
        } else {
            self.by_count.insert((after, subject.clone()));
        }
        removed
    }

    /// `subject` forgets its oldest nonce and refuses its tickets expiring at or before it.
    fn give_up_oldest(&mut self, subject: &Arc<str>) {
        let Some((exp, nonce)) = self
            .subjects
            .get(subject)
            .and_then(|held| held.nonces.first().cloned())
        else {
            return;
        };
        self.by_expiry
            .remove(&(exp, subject.clone(), nonce.clone()));
        self.remove(subject, exp, nonce);
        if let Some(held) = self.subjects.get_mut(subject) {
            held.floor = held.floor.max(exp);
        }
    }

    /// Forgets the nonces that expired at or before `now`.
    fn purge(&mut self, now: u64) {
        while let Some((exp, _, _)) = self.by_expiry.first() {
            if *exp > now {
                break;
            }
            let Some((exp, subject, nonce)) = self.by_expiry.pop_first() else {
                break;
            };
            self.remove(&subject, exp, nonce);
        }
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity)
            .field("per_subject", &self.per_subject)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl TicketVerifier {
    pub(super) fn replay_len(&self) -> Option<usize> {
        self.replay.as_ref().map(|r| r.len())
    }
}
