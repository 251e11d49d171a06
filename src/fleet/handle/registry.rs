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
        self.run("revocation_check", async move {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async::<redis::Value>(&mut conn)
                .await
                .and_then(|reply| revocation_decision(reply, principal, token.is_some()))
        })
        .await
    }
}

/// What the `MGET` of [`Fleet::remote_revoked`] decides: its reply holds the token's marker
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
