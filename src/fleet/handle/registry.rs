//! The fleet's revocation registry: revocations shared through Redis.

use super::*;

impl Fleet {
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

    /// Stores and announces `revocation`. If Redis does not take it, it is shared again in
    /// the background until Redis does (or until the revocation TTL has passed), so a
    /// revocation made during an outage reaches the fleet when Redis is back.
    pub(crate) async fn share(&self, revocation: Unshared) -> Result<(), FleetError> {
        let result = self.share_once(&revocation).await;
        if matches!(result, Err(FleetError::Unavailable(_))) {
            self.share_later(revocation);
        }
        result
    }

    async fn share_once(&self, revocation: &Unshared) -> Result<(), FleetError> {
        match revocation {
            Unshared::Before { subject, before } => {
                self.share_revoke_before(subject, *before).await
            }
            Unshared::Token(fingerprint) => self.share_revoke_token(fingerprint).await,
        }
    }

    /// Retries sharing `revocation`, with a growing delay, while the fleet lives. At most
    /// [`MAX_UNSHARED`] wait at once; past that one stays on this instance (logged).
    fn share_later(&self, revocation: Unshared) {
        let inner = &self.inner;
        if inner.unshared.fetch_add(1, Ordering::Relaxed) >= MAX_UNSHARED {
            inner.unshared.fetch_sub(1, Ordering::Relaxed);
            revocation.log_unshared("too_many_waiting");
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let give_up = tokio::time::Instant::now() + inner.revocation_ttl;
        let mut delay = inner.timeout;
        inner.runtime.spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                // The fleet is gone: nothing on this instance counts on it any more.
                let Some(inner) = weak.upgrade() else { return };
                let fleet = Fleet { inner };
                let result = fleet.share_once(&revocation).await;
                let gave_up = match &result {
                    Ok(()) => None,
                    Err(FleetError::Unavailable(_)) if tokio::time::Instant::now() < give_up => {
                        delay = (delay * 2).min(MAX_SHARE_DELAY);
                        continue;
                    }
                    Err(FleetError::Unavailable(_)) => Some("expired"),
                    Err(_) => Some("redis_error"),
                };
                fleet.inner.unshared.fetch_sub(1, Ordering::Relaxed);
                match gave_up {
                    None => revocation.log_shared(),
                    Some(cause) => revocation.log_unshared(cause),
                }
                return;
            }
        });
    }

    /// Stores and announces "credentials of `subject` issued before `before` are revoked".
    async fn share_revoke_before(
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
    async fn share_revoke_token(&self, fingerprint: &TokenFingerprint) -> Result<(), FleetError> {
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
    /// subject's credentials issued before its issue time. One round trip: a pipeline of
    /// one `GET` per marker (not one `MGET`: the markers are in different Redis Cluster
    /// slots).
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
        self.run("revocation_check", async move {
            get_each(&keys)
                .query_async::<redis::Value>(&mut conn)
                .await
                .and_then(|reply| revocation_decision(reply, principal, token.is_some()))
        })
        .await
    }
}

/// One `GET` per key, pipelined: one round trip on one Redis, and valid in a cluster, where
/// an `MGET` of keys in different slots is refused (`CROSSSLOT`).
pub(super) fn get_each(keys: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.get(key);
    }
    pipe
}

/// Revocations Redis did not take that are shared again in the background, at most.
const MAX_UNSHARED: usize = 1024;
/// The longest wait between two tries at sharing a revocation.
const MAX_SHARE_DELAY: Duration = Duration::from_secs(2);

/// A revocation applied on this instance, for the fleet.
#[derive(Debug)]
pub(crate) enum Unshared {
    /// Credentials of `subject` issued before `before`.
    Before { subject: String, before: SystemTime },
    /// One token.
    Token(TokenFingerprint),
}

impl Unshared {
    /// The log fields: cause, identity, and the token's first 8 hex digits.
    fn fields(&self) -> (&'static str, Option<&str>, Option<String>) {
        match self {
            Self::Before { subject, .. } => ("issued_before", Some(subject), None),
            Self::Token(fingerprint) => ("token", None, Some(fingerprint.to_hex()[..8].into())),
        }
    }

    fn log_shared(&self) {
        let (cause, identity, token) = self.fields();
        tracing::info!(
            name: "wsguard.revoke.shared",
            target: "wsguard::revoke",
            cause,
            identity,
            token = token.as_deref(),
            "a revocation Redis had not taken reached the fleet"
        );
    }

    fn log_unshared(&self, reason: &'static str) {
        let (cause, identity, token) = self.fields();
        tracing::warn!(
            name: "wsguard.revoke.unshared",
            target: "wsguard::revoke",
            cause,
            identity,
            token = token.as_deref(),
            reason,
            "a revocation stays on this instance: it was not shared with the fleet"
        );
    }
}

/// What the `GET`s of [`Fleet::remote_revoked`] decide: their replies hold the token's marker
/// (when `token`) and then the subject's cutoff (when `principal`), each a string or nil.
/// A token marker revokes; a cutoff revokes the credentials issued before it and those
/// without an issue time. A cutoff that cannot be read (not digits, or past what the clock
/// holds) still stands for a revocation, of unknown extent: it revokes. Any other reply is
/// an error.
pub(crate) fn revocation_decision(
    reply: redis::Value,
    principal: Option<&Principal>,
    token: bool,
) -> RedisResult<bool> {
    use redis::Value;
    let unexpected = || scripts::unexpected_reply("revocation_check", &reply);
    let Value::Array(items) = &reply else {
        return Err(unexpected());
    };
    if items.len() != usize::from(token) + usize::from(principal.is_some()) {
        return Err(unexpected());
    }
    let marker = |value: &Value| match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes.clone())),
        _ => Err(unexpected()),
    };
    let mut items = items.iter();
    if token && items.next().map(marker).transpose()?.flatten().is_some() {
        return Ok(true);
    }
    let (Some(principal), Some(cutoff)) = (principal, items.next()) else {
        return Ok(false);
    };
    let Some(cutoff) = marker(cutoff)? else {
        return Ok(false);
    };
    let cutoff = std::str::from_utf8(&cutoff)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
    Ok(match cutoff {
        Some(cutoff) => principal.issued_at().is_none_or(|t| t < cutoff),
        None => true,
    })
}

fn unshared(error: RevokeError) -> FleetError {
    match error {
        RevokeError::Unavailable(e) => FleetError::Unavailable(e),
        other => FleetError::Redis(other.to_string()),
    }
}

/// `t` in whole milliseconds since the epoch, rounded up (so that "before" stays strict),
/// and saturated at the last millisecond of the year 9999, as every date in the crate: the
/// scripts hold it in a Lua number, exact only up to 2^53, and a later cutoff (say 2^64 ms)
/// came back as digits no instance could read, which revoked nothing there. Credentials are
/// never issued after now, so the saturated cutoff still covers all of them.
pub(super) fn epoch_millis_ceil(t: SystemTime) -> u64 {
    const MAX_MS: u64 = crate::auth::MAX_UNIX_SECS * 1000 + 999;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let ms = if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    };
    ms.min(MAX_MS)
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
