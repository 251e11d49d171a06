//! JSON Web Tokens (feature `jwt`).

use std::{
    fmt,
    future::Ready,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::request::Parts;
pub use jsonwebtoken::{Algorithm, DecodingKey};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    AuthError, Authenticator, Credential, Principal, SystemClock, TicketClock, Verified,
    ticket::MAX_UNIX_SECS,
};

/// Default for [`JwtAuthenticator::leeway`].
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Verifies JSON Web Tokens (HS256, RS256 or ES256); an [`Authenticator`] whose identity is
/// the token's claims deserialised as `C` (a [`serde_json::Value`] by default). Feature `jwt`.
///
/// Built in two steps, so that the audience cannot be forgotten: a constructor
/// ([`hs256`](Self::hs256), [`rs256`](Self::rs256), [`es256`](Self::es256),
/// [`new`](Self::new)) gives a [`JwtAuthenticatorBuilder`], which is not an authenticator
/// until [`audience`](JwtAuthenticatorBuilder::audience) names this application (tokens an
/// issuer mints for its other applications are then refused) or
/// [`any_audience`](JwtAuthenticatorBuilder::any_audience) says explicitly that every
/// audience is fine:
///
/// ```
/// use wsguard::auth::JwtAuthenticator;
///
/// let auth = JwtAuthenticator::<serde_json::Value>::hs256(b"a shared secret of at least 32 bytes!!")
///     .audience(["chat"])
///     .issuer(["https://id.example.com"]);
/// # let _ = auth;
/// ```
///
/// The `sub` and `exp` claims are required; `exp` and `nbf` (when present) are checked with a
/// leeway, and `aud` and `iss` when configured. `exp` and `nbf` are NumericDates: integers or
/// fractions (what `time.time() + 3600` mints), negative ones are before 1970 and dates past
/// the year 9999 saturate there. The principal's subject is `sub` and its expiry `exp`, to
/// the fraction of a second. Only the configured algorithm is accepted, whatever the token's
/// header says.
///
/// Keys: [`DecodingKey::from_secret`] for HS256; for RS256 [`DecodingKey::from_rsa_components`]
/// (a JWK's `n` and `e`) or [`DecodingKey::from_rsa_der`] (PKCS#1); for ES256
/// [`DecodingKey::from_ec_components`] (a JWK's `x` and `y`) or [`DecodingKey::from_ec_der`]
/// (the SEC1 point).
///
/// ECDSA signatures are malleable: `(r, s)` and `(r, n-s)` both verify, and both are
/// accepted (many signers emit either). The token is named for revocation by its signed part
/// (see [`TokenFingerprint`](super::TokenFingerprint)), so the two encodings are one token.
///
/// Expired tokens are [`AuthError::Expired`]; tokens that do not parse as a JWT are
/// [`AuthError::Malformed`]; everything else (signature, algorithm, audience, issuer, `nbf`,
/// missing or non-numeric `exp`, missing claims, claims that do not fit `C`) is
/// [`AuthError::Invalid`].
pub struct JwtAuthenticator<C = Value> {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    leeway: Duration,
    clock: Arc<dyn TicketClock>,
    _claims: PhantomData<fn() -> C>,
}

/// A [`JwtAuthenticator`] that still needs its audience: call
/// [`audience`](Self::audience) or [`any_audience`](Self::any_audience). Made by
/// [`JwtAuthenticator::new`] and its siblings. Feature `jwt`.
///
/// It is not an [`Authenticator`], so forgetting the audience does not compile:
///
/// ```compile_fail,E0277
/// use wsguard::auth::{HandshakeAuthLayer, JwtAuthenticator};
///
/// let auth = JwtAuthenticator::<serde_json::Value>::hs256(b"a shared secret of at least 32 bytes!!");
/// let layer = HandshakeAuthLayer::new(auth); // error: not an Authenticator
/// ```
///
/// ```
/// use wsguard::auth::{HandshakeAuthLayer, JwtAuthenticator};
///
/// let auth = JwtAuthenticator::<serde_json::Value>::hs256(b"a shared secret of at least 32 bytes!!");
/// let layer = HandshakeAuthLayer::new(auth.audience(["chat"]));
/// # let _ = layer;
/// ```
#[must_use = "a JwtAuthenticatorBuilder verifies nothing: call audience() or any_audience()"]
pub struct JwtAuthenticatorBuilder<C = Value> {
    inner: JwtAuthenticator<C>,
}

impl<C> Clone for JwtAuthenticator<C> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            validation: self.validation.clone(),
            leeway: self.leeway,
            clock: self.clock.clone(),
            _claims: PhantomData,
        }
    }
}

impl<C> Clone for JwtAuthenticatorBuilder<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> JwtAuthenticator<C>
where
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Verifies tokens signed with `algorithm` and `key`, once the audience is set on the
    /// builder.
    // A builder, not `Self`: forgetting the audience must not compile.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(algorithm: Algorithm, key: DecodingKey) -> JwtAuthenticatorBuilder<C> {
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked here, not by jsonwebtoken, which rounds fractions and
        // cannot take every leeway.
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = true;
        JwtAuthenticatorBuilder {
            inner: Self {
                key: Arc::new(key),
                validation: Arc::new(validation),
                leeway: DEFAULT_LEEWAY,
                clock: Arc::new(SystemClock),
                _claims: PhantomData,
            },
        }
    }

    /// HS256 with the shared `secret`.
    pub fn hs256(secret: impl AsRef<[u8]>) -> JwtAuthenticatorBuilder<C> {
        Self::new(Algorithm::HS256, DecodingKey::from_secret(secret.as_ref()))
    }

    /// RS256 with the public key `key`.
    pub fn rs256(key: DecodingKey) -> JwtAuthenticatorBuilder<C> {
        Self::new(Algorithm::RS256, key)
    }

    /// ES256 (P-256) with the public key `key`.
    pub fn es256(key: DecodingKey) -> JwtAuthenticatorBuilder<C> {
        Self::new(Algorithm::ES256, key)
    }

    /// Requires the `aud` claim to contain one of `audiences`. Adds to the accepted audiences
    /// (and, after [`any_audience`](JwtAuthenticatorBuilder::any_audience), starts checking
    /// them). An empty list accepts no token.
    #[must_use]
    pub fn audience<T: ToString>(mut self, audiences: impl IntoIterator<Item = T>) -> Self {
        let validation = Arc::make_mut(&mut self.validation);
        let set = validation.aud.get_or_insert_with(Default::default);
        set.extend(audiences.into_iter().map(|a| a.to_string()));
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".to_owned());
        self
    }

    /// Requires the `iss` claim to be one of `issuers`. Adds to the accepted issuers.
    /// Default: `iss` is not checked.
    #[must_use]
    pub fn issuer<T: ToString>(mut self, issuers: impl IntoIterator<Item = T>) -> Self {
        let validation = Arc::make_mut(&mut self.validation);
        let set = validation.iss.get_or_insert_with(Default::default);
        set.extend(issuers.into_iter().map(|i| i.to_string()));
        validation.required_spec_claims.insert("iss".to_owned());
        self
    }

    /// Clock skew allowed when checking `exp` and `nbf`. Any value works: one too large to
    /// add to a date (say `Duration::MAX`) saturates, so `exp` and `nbf` never fail. Replaces
    /// the previous value. Default: 60 seconds.
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The time source for `exp` and `nbf`. Replaces the previous one. Default:
    /// [`SystemClock`].
    #[must_use]
    pub fn clock(mut self, clock: impl TicketClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Checks `token`; returns the claims and the principal.
    pub fn verify(&self, token: &str) -> Result<Verified<C>, AuthError> {
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthError::Malformed,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Invalid)?;
        let now = self.clock.now();
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(AuthError::Invalid)?;
        // Expired when `now >= exp + leeway`; a sum past what SystemTime holds never is.
        if expires_at
            .checked_add(self.leeway)
            .is_some_and(|deadline| now >= deadline)
        {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(AuthError::Invalid)?;
            if now.checked_add(self.leeway).is_some_and(|late| nbf > late) {
                return Err(AuthError::Invalid);
            }
        }
        let mut principal = Principal::new(subject, Some(expires_at));
        // `iat` (a NumericDate, possibly fractional) for revocation by issue time. A token
        // cannot have been issued after it is presented, so a future `iat` counts as now.
        if let Some(issued_at) = claims
            .get("iat")
            .and_then(Value::as_f64)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .and_then(|d| UNIX_EPOCH.checked_add(d))
        {
            principal = principal.with_issued_at(issued_at.min(now));
        }
        let identity = C::deserialize(&claims).map_err(|_| AuthError::Invalid)?;
        Ok(Verified::new(identity, principal))
    }
}

impl<C> JwtAuthenticatorBuilder<C>
where
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Requires the `aud` claim to contain one of `audiences` (this application's names):
    /// a token without `aud`, or minted for another application of the same issuer, is
    /// [`AuthError::Invalid`]. Later calls on the authenticator add audiences.
    pub fn audience<T: ToString>(
        self,
        audiences: impl IntoIterator<Item = T>,
    ) -> JwtAuthenticator<C> {
        self.inner.audience(audiences)
    }

    /// Accepts tokens whatever their `aud` (or without one). Only right when the issuer
    /// mints tokens for this one application: otherwise a token for any of its applications
    /// opens this one.
    pub fn any_audience(self) -> JwtAuthenticator<C> {
        let mut inner = self.inner;
        let validation = Arc::make_mut(&mut inner.validation);
        validation.validate_aud = false;
        validation.aud = None;
        validation.required_spec_claims.remove("aud");
        inner
    }

    /// [`JwtAuthenticator::issuer`], before the audience is set.
    pub fn issuer<T: ToString>(self, issuers: impl IntoIterator<Item = T>) -> Self {
        Self {
            inner: self.inner.issuer(issuers),
        }
    }

    /// [`JwtAuthenticator::leeway`], before the audience is set.
    pub fn leeway(self, leeway: Duration) -> Self {
        Self {
            inner: self.inner.leeway(leeway),
        }
    }

    /// [`JwtAuthenticator::clock`], before the audience is set.
    pub fn clock(self, clock: impl TicketClock) -> Self {
        Self {
            inner: self.inner.clock(clock),
        }
    }
}

/// A NumericDate claim (RFC 7519: seconds since the epoch, a JSON number, maybe fractional)
/// as a time: negative dates are the epoch, dates past the year 9999 saturate there. `None`
/// for a value that is not a number.
pub(super) fn numeric_date(value: &Value) -> Option<SystemTime> {
    let secs = value.as_f64()?;
    if secs.is_nan() {
        return None;
    }
    let secs = secs.clamp(0.0, MAX_UNIX_SECS as f64);
    // In range and finite, so this cannot fail; saturate anyway.
    let since = Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
    Some(UNIX_EPOCH.checked_add(since).unwrap_or(UNIX_EPOCH))
}

impl<C> Authenticator for JwtAuthenticator<C>
where
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Identity = C;
    type Future = Ready<Result<Verified<C>, AuthError>>;

    fn authenticate(&self, _parts: &Parts, credential: Credential) -> Self::Future {
        std::future::ready(self.verify(credential.token()))
    }
}

impl<C> fmt::Debug for JwtAuthenticator<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("aud", &self.validation.aud)
            .field("any_audience", &!self.validation.validate_aud)
            .field("iss", &self.validation.iss)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl<C> fmt::Debug for JwtAuthenticatorBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticatorBuilder")
            .field("algorithms", &self.inner.validation.algorithms)
            .field("iss", &self.inner.validation.iss)
            .field("leeway", &self.inner.leeway)
            .finish_non_exhaustive()
    }
}
