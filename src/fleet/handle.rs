//! [`Fleet`]: the shared Redis connection, its health, and revocation.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{FailurePolicy, FleetError, scripts};
use crate::{auth::TokenFingerprint, rate_limit::ConfigError, socket::CloseSignal};

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

    /// How long a revoked token stays refused, and how long a subject's tokens are
    /// remembered for [`Fleet::revoke_identity`]. Make it at least your longest credential
    /// lifetime. Default 24 h; replaces.
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
        let registry = Arc::new(Mutex::new(Registry::default()));
        let channel = format!("{}:revocations", self.prefix);
        let listener = tokio::spawn(listen(
            client,
            channel.clone(),
            format!("{}:revoked:", self.prefix),
            Arc::clone(&registry),
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
                registry,
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
    registry: Arc<Mutex<Registry>>,
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
        let registry = self.inner.registry_lock();
        registry
            .by_subject
            .values()
            .map(HashMap::len)
            .sum::<usize>()
            + registry.anonymous
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

    /// Revokes every token seen for `subject` at a handshake (within the revocation TTL)
    /// and closes the subject's sockets on every instance with `1008`. Returns how many
    /// tokens were revoked. Later handshakes with those tokens get `401`; new tokens issued
    /// to the subject afterwards work.
    ///
    /// A token the fleet never saw at a handshake (issued but not yet used) is not known
    /// here: revoke it with [`revoke_token`](Self::revoke_token) (a logout route has the
    /// caller's token at hand), or keep credential lifetimes short.
    pub async fn revoke_identity(&self, subject: &str) -> Result<usize, FleetError> {
        let mut conn = self.connection();
        let tokens_key = self.key(&format!("tokens:{subject}"));
        let marker_prefix = self.key("revoked:");
        let ttl = millis(self.inner.revocation_ttl);
        let channel = self.inner.channel.clone();
        let message = format!("sub:{subject}");
        let n = self
            .run("revoke_identity", async move {
                scripts::REVOKE_SUBJECT
                    .key(tokens_key)
                    .arg(marker_prefix)
                    .arg(ttl)
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<usize>(&mut conn)
                    .await
            })
            .await?;
        tracing::info!(
            name: "wsguard.fleet.revoked",
            target: "wsguard::fleet",
            identity = subject,
            tokens = n,
            "revoked an identity on every instance"
        );
        Ok(n)
    }

    /// Revokes one token: later handshakes with it get `401`, and the sockets opened with
    /// it close on every instance with `1008`.
    pub async fn revoke_token(&self, token: &str) -> Result<(), FleetError> {
        self.revoke_fingerprint(TokenFingerprint::of(token)).await
    }

    /// [`revoke_token`](Self::revoke_token) by the token's fingerprint.
    pub async fn revoke_fingerprint(
        &self,
        fingerprint: TokenFingerprint,
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
        .await?;
        tracing::info!(
            name: "wsguard.fleet.revoked",
            target: "wsguard::fleet",
            token = %&hex[..8],
            "revoked a token on every instance"
        );
        Ok(())
    }

    /// Whether the token with this fingerprint is revoked.
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

    pub(crate) fn revocation_ttl(&self) -> Duration {
        self.inner.revocation_ttl
    }

    /// Registers a socket-to-be so revocations reach it; unregistered when the returned
    /// guard drops.
    pub(crate) fn register(
        &self,
        subject: Option<Arc<str>>,
        token: Option<TokenFingerprint>,
        signal: CloseSignal,
    ) -> Registration {
        let mut registry = self.inner.registry_lock();
        registry.next += 1;
        let id = registry.next;
        match &subject {
            Some(s) => {
                registry
                    .by_subject
                    .entry(Arc::clone(s))
                    .or_default()
                    .insert(id, signal.clone());
            }
            None => registry.anonymous += 1,
        }
        let token = token.map(|fp| fp.to_hex());
        if let Some(hex) = &token {
            registry
                .by_token
                .entry(hex.clone())
                .or_default()
                .insert(id, signal);
        }
        Registration {
            registry: Arc::clone(&self.inner.registry),
            id,
            subject,
            token,
        }
    }
}

impl Inner {
    fn registry_lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The live sockets of this instance that revocation can reach.
#[derive(Default)]
struct Registry {
    next: u64,
    anonymous: usize,
    by_subject: HashMap<Arc<str>, HashMap<u64, CloseSignal>>,
    by_token: HashMap<String, HashMap<u64, CloseSignal>>,
}

/// Keeps a socket reachable by revocation until dropped.
pub(crate) struct Registration {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    subject: Option<Arc<str>>,
    token: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        match &self.subject {
            Some(s) => {
                if let Some(map) = registry.by_subject.get_mut(s) {
                    map.remove(&self.id);
                    if map.is_empty() {
                        registry.by_subject.remove(s);
                    }
                }
            }
            None => registry.anonymous = registry.anonymous.saturating_sub(1),
        }
        if let Some(fp) = &self.token
            && let Some(map) = registry.by_token.get_mut(fp)
        {
            map.remove(&self.id);
            if map.is_empty() {
                registry.by_token.remove(fp);
            }
        }
    }
}

/// Applies one revocation message: `sub:<subject>` or `tok:<hex fingerprint>`.
fn apply(registry: &Mutex<Registry>, message: &str) {
    let signals: Vec<CloseSignal> = {
        let registry = lock(registry);
        if let Some(subject) = message.strip_prefix("sub:") {
            registry
                .by_subject
                .get(subject)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        } else if let Some(hex) = message.strip_prefix("tok:") {
            registry
                .by_token
                .get(hex)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    if !signals.is_empty() {
        tracing::info!(
            name: "wsguard.fleet.closing_revoked",
            target: "wsguard::fleet",
            sockets = signals.len(),
            "closing revoked sockets on this instance"
        );
    }
    for signal in signals {
        signal.revoke();
    }
}

/// Listens for revocations for the life of the fleet, reconnecting with a capped backoff.
async fn listen(
    client: Client,
    channel: String,
    marker_prefix: String,
    registry: Arc<Mutex<Registry>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match subscribe_and_serve(&client, &channel, &marker_prefix, &registry).await {
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
    marker_prefix: &str,
    registry: &Mutex<Registry>,
) -> RedisResult<()> {
    let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe(channel).await?;
    // Revocations published while this listener was not subscribed: close the sockets whose
    // tokens are marked revoked (an identity revocation marks every token seen for it).
    reconcile(client, marker_prefix, registry).await?;
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
                        apply(registry, &text);
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

/// Closes the local sockets whose tokens carry a revocation marker.
async fn reconcile(
    client: &Client,
    marker_prefix: &str,
    registry: &Mutex<Registry>,
) -> RedisResult<()> {
    let tokens: Vec<String> = lock(registry).by_token.keys().cloned().collect();
    if tokens.is_empty() {
        return Ok(());
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    for chunk in tokens.chunks(256) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|hex| format!("{marker_prefix}{hex}"))
            .collect();
        let marks: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (hex, mark) in chunk.iter().zip(marks) {
            if mark.is_some() {
                apply(registry, &format!("tok:{hex}"));
            }
        }
    }
    Ok(())
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

    #[test]
    fn revocation_messages_reach_the_registered_signals_only() {
        let registry = Mutex::new(Registry::default());
        let (alice, bob, token) = (CloseSignal::new(), CloseSignal::new(), CloseSignal::new());
        let fp = TokenFingerprint::of("t1");
        {
            let mut r = lock(&registry);
            r.by_subject
                .entry(Arc::from("alice"))
                .or_default()
                .insert(1, alice.clone());
            r.by_subject
                .entry(Arc::from("bob"))
                .or_default()
                .insert(2, bob.clone());
            r.by_token
                .entry(fp.to_hex())
                .or_default()
                .insert(3, token.clone());
        }
        apply(&registry, "sub:alice");
        assert!(alice.is_revoked() && !bob.is_revoked() && !token.is_revoked());
        apply(&registry, &format!("tok:{}", fp.to_hex()));
        assert!(token.is_revoked() && !bob.is_revoked());
        apply(&registry, "garbage");
        apply(&registry, "sub:");
        assert!(!bob.is_revoked());
    }
}
