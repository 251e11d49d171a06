//! [`Fleet`]: the shared Redis connection, its health, and revocation.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{FailurePolicy, FleetError, scripts};
use crate::{
    auth::{Principal, SystemClock, TokenFingerprint},
    rate_limit::ConfigError,
    revoke::{Local, Revocations, RevokeError},
};

/// Builds a [`Fleet`]; see [`Fleet::builder`].
#[must_use]
pub struct FleetBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    on_failure: FailurePolicy,
    lease_ttl: Duration,
    revocation_ttl: Duration,
}

impl fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("lease_ttl", &self.lease_ttl)
            .field("revocation_ttl", &self.revocation_ttl)
            .finish()
    }
}

/// The URL without a password, for `Debug`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl FleetBuilder {
    /// The prefix of every Redis key and channel the fleet uses. Default `"wsguard"`;
    /// replaces. Instances that share limits must share the prefix; unrelated services on
    /// one Redis must not.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one Redis round trip may take before the [`FailurePolicy`] applies, so a
    /// handshake never hangs on Redis. Default 250 ms; replaces.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("the Redis timeout"));
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// What handshakes get while Redis is unreachable. Default
    /// [`FailurePolicy::FallBackToLocal`]; replaces.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// How long a socket's quota lease lives without renewal. Live sockets renew theirs
    /// every third of it; the leases of an instance that dies expire after at most this
    /// long. Default 30 s (at least 30 ms); replaces.
    pub fn lease_ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        if ttl < Duration::from_millis(30) {
            return Err(ConfigError::ZeroDuration("the lease TTL (at least 30 ms)"));
        }
        self.lease_ttl = ttl;
        Ok(self)
    }

    /// How long a revocation is remembered: the TTL of its Redis marker, and the retention of
    /// each instance's registry (see [`crate::revoke`]). Make it at least your longest
    /// credential lifetime. Default 24 h; replaces.
    pub fn revocation_ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        if ttl < Duration::from_millis(1) {
            return Err(ConfigError::ZeroDuration("the revocation TTL"));
        }
        self.revocation_ttl = ttl;
        Ok(self)
    }

    /// Builds the fleet without waiting for Redis: the connection is made on first use and
    /// remade automatically after failures. Must be called inside a tokio runtime (it
    /// spawns the revocation listener, which ends when the last clone of the fleet drops);
    /// outside one it fails with [`FleetError::NoRuntime`].
    pub fn build(self) -> Result<Fleet, FleetError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FleetError::NoRuntime);
        }
        let client =
            Client::open(self.url.as_str()).map_err(|e| FleetError::InvalidUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| FleetError::InvalidUrl(e.to_string()))?;
        let local = Arc::new(Local::new(self.revocation_ttl, Arc::new(SystemClock)));
        let channel = format!("{}:revocations", self.prefix);
        let listener = tokio::spawn(listen(
            client,
            channel.clone(),
            self.prefix.clone(),
            Arc::clone(&local),
        ));
        Ok(Fleet {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                timeout: self.timeout,
                on_failure: self.on_failure,
                lease_ttl: self.lease_ttl,
                revocation_ttl: self.revocation_ttl,
                channel,
                available: AtomicBool::new(true),
                local,
                listener: listener.abort_handle(),
            }),
        })
    }

    /// [`build`](Self::build), then one round trip to Redis: fails with
    /// [`FleetError::Unavailable`] if Redis does not answer within the timeout.
    pub async fn connect(self) -> Result<Fleet, FleetError> {
        let fleet = self.build()?;
        fleet.ping().await?;
        Ok(fleet)
    }
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_failure: FailurePolicy,
    lease_ttl: Duration,
    revocation_ttl: Duration,
    channel: String,
    available: AtomicBool,
    local: Arc<Local>,
    listener: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A handle on the Redis that instances of a service share: the fleet layers
/// ([`FleetRateLimitLayer`](super::FleetRateLimitLayer),
/// [`FleetQuotaLayer`](super::FleetQuotaLayer), [`RevocationLayer`](super::RevocationLayer))
/// take one, and it revokes identities and tokens on every instance. Cheap to clone; clones
/// share the connection. See the [module docs](super).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("on_failure", &self.inner.on_failure)
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("revocation_ttl", &self.inner.revocation_ttl)
            .field("available", &self.is_available())
            .field("local_sockets", &self.local_sockets())
            .finish()
    }
}

impl Fleet {
    /// A builder for a fleet on the Redis at `url` (`redis://[:password@]host:port[/db]`),
    /// with the defaults: prefix `"wsguard"`, timeout 250 ms, fall back to local limits when
    /// Redis is unreachable, lease TTL 30 s, revocation TTL 24 h.
    pub fn builder(url: impl Into<String>) -> FleetBuilder {
        FleetBuilder {
            url: url.into(),
            prefix: "wsguard".to_owned(),
            timeout: Duration::from_millis(250),
            on_failure: FailurePolicy::default(),
            lease_ttl: Duration::from_secs(30),
            revocation_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Whether the last Redis round trip succeeded.
    pub fn is_available(&self) -> bool {
        self.inner.available.load(Ordering::Relaxed)
    }

    /// The policy applied while Redis is unreachable.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.on_failure
    }

    /// The quota lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// `<prefix>:<suffix>`: a key in the fleet's namespace, for the application's own data.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.prefix)
    }

    /// A clone of the reconnecting connection, for the application's own commands (the
    /// stock ticker publishes prices with it). Wrap calls in [`run`](Self::run) to get the
    /// fleet's timeout and health tracking.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Sockets on this instance that revocation can close.
    pub fn local_sockets(&self) -> usize {
        self.revocations().live_sockets()
    }

    /// One round trip to Redis (`PING`).
    pub async fn ping(&self) -> Result<(), FleetError> {
        let mut conn = self.connection();
        self.run("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// Runs one Redis operation with the fleet's timeout, tracking availability: the first
    /// failure logs `wsguard.fleet.unavailable` (warn), the first success after it
    /// `wsguard.fleet.recovered` (info).
    pub async fn run<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let result = match tokio::time::timeout(self.inner.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error() =>
            {
                Err(FleetError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => Err(FleetError::Redis(e.to_string())),
            Err(_) => Err(FleetError::Unavailable(format!(
                "no answer within {:?}",
                self.inner.timeout
            ))),
        };
        match &result {
            Ok(_) => {
                if !self.inner.available.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        name: "wsguard.fleet.recovered",
                        target: "wsguard::fleet",
                        operation = what,
                        "Redis is reachable again: fleet-wide limits apply"
                    );
                }
            }
            Err(FleetError::Unavailable(reason)) => {
                if self.inner.available.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        name: "wsguard.fleet.unavailable",
                        target: "wsguard::fleet",
                        operation = what,
                        reason = %reason,
                        policy = self.inner.on_failure.as_str(),
                        "Redis is unreachable"
                    );
                }
            }
            Err(e) => tracing::error!(
                name: "wsguard.fleet.redis_error",
                target: "wsguard::fleet",
                operation = what,
                error = %e,
                "Redis refused a fleet command"
            ),
        }
        result
    }

    /// The fleet's revocation registry: the API of [`Revocations`](crate::revoke::Revocations),
    /// shared through Redis. Revocations made through it (or through the methods below)
    /// close the matching sockets on every instance with `1008`; [`RevocationLayer`]
    /// (`RevocationLayer::new(&fleet)`) enforces it at the handshake.
    ///
    /// [`RevocationLayer`]: crate::revoke::RevocationLayer
    pub fn revocations(&self) -> Revocations {
        Revocations::shared(Arc::clone(&self.inner.local), self.clone())
    }

    /// Revokes every credential of `subject` issued up to now (and every one without an
    /// issue time), and closes the subject's sockets on every instance with `1008`: one
    /// Redis key and one message, however many tokens the subject has. Later handshakes
    /// with those credentials get `401`; credentials issued afterwards work. Returns the
    /// number of sockets closed on this instance. See
    /// [`Revocations::revoke_identity`](crate::revoke::Revocations::revoke_identity).
    pub async fn revoke_identity(&self, subject: &str) -> Result<usize, FleetError> {
        self.revocations()
            .revoke_identity(subject)
            .await
            .map_err(unshared)
    }

    /// Revokes every credential of `subject` issued before `before` on every instance; see
    /// [`Revocations::revoke_issued_before`](crate::revoke::Revocations::revoke_issued_before).
    pub async fn revoke_issued_before(
        &self,
        subject: &str,
        before: SystemTime,
    ) -> Result<usize, FleetError> {
        self.revocations()
            .revoke_issued_before(subject, before)
            .await
            .map_err(unshared)
    }

    /// Revokes one token: later handshakes with it get `401`, and the sockets opened with
    /// it close on every instance with `1008`. Returns the number of sockets closed on this
    /// instance.
    pub async fn revoke_token(&self, token: &str) -> Result<usize, FleetError> {
        self.revoke_fingerprint(TokenFingerprint::of(token)).await
    }

    /// [`revoke_token`](Self::revoke_token) by the token's fingerprint.
    pub async fn revoke_fingerprint(
        &self,
        fingerprint: TokenFingerprint,
    ) -> Result<usize, FleetError> {
        self.revocations()
            .revoke_fingerprint(fingerprint)
            .await
            .map_err(unshared)
    }

    /// Whether Redis holds a revocation of the token with this fingerprint.
    pub async fn is_revoked(&self, fingerprint: &TokenFingerprint) -> Result<bool, FleetError> {
        let mut conn = self.connection();
        let marker = self.key(&format!("revoked:{}", fingerprint.to_hex()));
        self.run("is_revoked", async move {
            redis::cmd("EXISTS")
                .arg(marker)
                .query_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    /// Stores and announces "credentials of `subject` issued before `before` are revoked".
    pub(crate) async fn share_revoke_before(
        &self,
        subject: &str,
        before: SystemTime,
    ) -> Result<(), FleetError> {
        let mut conn = self.connection();
        let marker = self.key(&format!("revoked_sub:{subject}"));
        let ttl = millis(self.inner.revocation_ttl);
        let channel = self.inner.channel.clone();
        let before = epoch_millis_ceil(before);
        let subject = subject.to_owned();
        self.run("revoke_before", async move {
            scripts::REVOKE_BEFORE
                .key(marker)
                .arg(before)
                .arg(ttl)
                .arg(channel)
                .arg(subject)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    /// Stores and announces the revocation of one token.
    pub(crate) async fn share_revoke_token(
        &self,
        fingerprint: &TokenFingerprint,
    ) -> Result<(), FleetError> {
        let mut conn = self.connection();
        let hex = fingerprint.to_hex();
        let marker = self.key(&format!("revoked:{hex}"));
        let ttl = millis(self.inner.revocation_ttl);
        let channel = self.inner.channel.clone();
        let message = format!("tok:{hex}");
        self.run("revoke_token", async move {
            scripts::REVOKE_TOKEN
                .key(marker)
                .arg(ttl)
                .arg(channel)
                .arg(message)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    /// Whether Redis holds a revocation of this credential: of its token, or of its
    /// subject's credentials issued before its issue time. One round trip (`MGET`).
    pub(crate) async fn remote_revoked(
        &self,
        principal: Option<&Principal>,
        token: Option<&TokenFingerprint>,
    ) -> Result<bool, FleetError> {
        let mut keys = Vec::with_capacity(2);
        if let Some(fp) = token {
            keys.push(self.key(&format!("revoked:{}", fp.to_hex())));
        }
        if let Some(p) = principal {
            keys.push(self.key(&format!("revoked_sub:{}", p.subject())));
        }
        if keys.is_empty() {
            return Ok(false);
        }
        let mut conn = self.connection();
        let values: Vec<Option<String>> = self
            .run("revocation_check", async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
            })
            .await?;
        let mut values = values.into_iter();
        if token.is_some() && values.next().flatten().is_some() {
            return Ok(true);
        }
        let cutoff = values.next().flatten().and_then(|v| v.parse::<u64>().ok());
        Ok(match (principal, cutoff) {
            (Some(p), Some(ms)) => p
                .issued_at()
                .is_none_or(|t| t < UNIX_EPOCH + Duration::from_millis(ms)),
            _ => false,
        })
    }
}

fn unshared(error: RevokeError) -> FleetError {
    match error {
        RevokeError::Unavailable(e) => FleetError::Unavailable(e),
        other => FleetError::Redis(other.to_string()),
    }
}

/// `t` in whole milliseconds since the epoch, rounded up (so that "before" stays strict).
fn epoch_millis_ceil(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl From<&Fleet> for Revocations {
    fn from(fleet: &Fleet) -> Self {
        fleet.revocations()
    }
}

impl From<Fleet> for Revocations {
    fn from(fleet: Fleet) -> Self {
        fleet.revocations()
    }
}

/// A fingerprint from its 64 hex digits.
fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Applies one revocation message to this instance's registry: `tok:<hex fingerprint>`,
/// `before:<ms since the epoch>:<subject>`, or (from earlier versions) `sub:<subject>`.
fn apply(local: &Local, message: &str) {
    if let Some(hex) = message.strip_prefix("tok:") {
        if let Some(fp) = parse_hex(hex) {
            local.revoke_token(fp);
        }
    } else if let Some(rest) = message.strip_prefix("before:") {
        if let Some((ms, subject)) = rest.split_once(':')
            && let Ok(ms) = ms.parse::<u64>()
            && !subject.is_empty()
            && let Some(before) = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
        {
            local.revoke_before(subject, before);
        }
    } else if let Some(subject) = message.strip_prefix("sub:")
        && !subject.is_empty()
    {
        local.revoke_before(subject, SystemTime::now());
    }
}

/// Listens for revocations for the life of the fleet, reconnecting with a capped backoff.
async fn listen(client: Client, channel: String, prefix: String, local: Arc<Local>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match subscribe_and_serve(&client, &channel, &prefix, &local).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => tracing::debug!(
                name: "wsguard.fleet.listener_error",
                target: "wsguard::fleet",
                error = %e,
                "revocation listener lost Redis; retrying"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn subscribe_and_serve(
    client: &Client,
    channel: &str,
    prefix: &str,
    local: &Local,
) -> RedisResult<()> {
    let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe(channel).await?;
    // Revocations published while this listener was not subscribed: close the sockets whose
    // token or subject carries a revocation marker.
    reconcile(client, prefix, local).await?;
    tracing::debug!(
        name: "wsguard.fleet.listening",
        target: "wsguard::fleet",
        "revocation listener subscribed"
    );
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    if let Ok(text) = msg.get_payload::<String>() {
                        apply(local, &text);
                    }
                }
                None => return Ok(()),
            },
            _ = ping.tick() => {
                // A half-open connection shows up here, not on the stream.
                match tokio::time::timeout(Duration::from_secs(2), sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

/// Applies the revocation markers of the live sockets' tokens and subjects (in chunks of
/// 256 keys per `MGET`).
async fn reconcile(client: &Client, prefix: &str, local: &Local) -> RedisResult<()> {
    let (subjects, tokens) = local.live_keys();
    if subjects.is_empty() && tokens.is_empty() {
        return Ok(());
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    for chunk in tokens.chunks(256) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|fp| format!("{prefix}:revoked:{}", hex(fp)))
            .collect();
        let marks: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (fp, mark) in chunk.iter().zip(marks) {
            if mark.is_some() {
                local.revoke_token(*fp);
            }
        }
    }
    for chunk in subjects.chunks(256) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|s| format!("{prefix}:revoked_sub:{s}"))
            .collect();
        let marks: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (subject, mark) in chunk.iter().zip(marks) {
            if let Some(ms) = mark.and_then(|m| m.parse::<u64>().ok())
                && let Some(before) = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
            {
                local.revoke_before(subject, before);
            }
        }
    }
    Ok(())
}

fn hex(fp: &[u8; 32]) -> String {
    use std::fmt::Write;
    fp.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        struct Case {
            url: &'static str,
            shown: &'static str,
        }
        let cases = [
            Case {
                url: "redis://:hunter2@127.0.0.1:6379/0",
                shown: "redis://<redacted>@127.0.0.1:6379/0",
            },
            Case {
                url: "redis://127.0.0.1:6379",
                shown: "redis://127.0.0.1:6379",
            },
        ];
        for case in cases {
            let debug = format!("{:?}", Fleet::builder(case.url));
            assert!(debug.contains(case.shown), "{debug}");
            assert!(!debug.contains("hunter2"));
        }
    }

    #[test]
    fn build_outside_a_runtime_is_an_error_not_a_panic() {
        let error = Fleet::builder("redis://127.0.0.1:1").build().map(drop);
        assert_eq!(error, Err(FleetError::NoRuntime));
        let error = Fleet::builder("not a url").build().map(drop);
        assert_eq!(error, Err(FleetError::NoRuntime));
    }

    #[tokio::test]
    async fn a_bad_url_is_refused() {
        let error = Fleet::builder("not a url").build().map(drop);
        assert!(matches!(error, Err(FleetError::InvalidUrl(_))), "{error:?}");
    }

    #[test]
    fn builder_refuses_bad_settings() {
        assert!(Fleet::builder("redis://x").timeout(Duration::ZERO).is_err());
        assert!(
            Fleet::builder("redis://x")
                .lease_ttl(Duration::from_millis(5))
                .is_err()
        );
        assert!(
            Fleet::builder("redis://x")
                .revocation_ttl(Duration::ZERO)
                .is_err()
        );
    }

    #[tokio::test]
    async fn revocation_messages_reach_the_matching_sockets_only() {
        use crate::auth::Principal;
        let r = crate::revoke::Revocations::new();
        let local = r.local();
        let fp = TokenFingerprint::of("t1");
        let (signals, _permits) = crate::revoke::test_register(
            local,
            &[
                (
                    Principal::new("alice", None)
                        .with_issued_at(UNIX_EPOCH + Duration::from_millis(5_000)),
                    "a1",
                ),
                (Principal::new("bob", None), "b1"),
                (
                    Principal::new("carol", None)
                        .with_issued_at(UNIX_EPOCH + Duration::from_secs(9_000)),
                    "t1",
                ),
            ],
        );
        let [alice, bob, carol] = &signals[..] else {
            panic!("three signals");
        };
        apply(local, "before:5001:alice");
        assert!(alice.is_revoked() && !bob.is_revoked() && !carol.is_revoked());
        apply(local, &format!("tok:{}", fp.to_hex()));
        assert!(carol.is_revoked() && !bob.is_revoked());
        for garbage in [
            "garbage",
            "sub:",
            "tok:zz",
            "before:x:bob",
            "before:1:",
            "tok:",
        ] {
            apply(local, garbage);
        }
        assert!(!bob.is_revoked());
        apply(local, "sub:bob");
        assert!(
            bob.is_revoked(),
            "the message of earlier versions still works"
        );
        assert_eq!(parse_hex(&fp.to_hex()), Some(*fp.as_bytes()));
        assert_eq!(hex(fp.as_bytes()), fp.to_hex());
        assert_eq!(
            epoch_millis_ceil(UNIX_EPOCH + Duration::from_micros(1_500)),
            2
        );
        assert_eq!(epoch_millis_ceil(UNIX_EPOCH + Duration::from_millis(7)), 7);
    }
}
