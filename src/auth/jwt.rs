//! JSON Web Tokens (feature `jwt`).

use std::{
    fmt,
    future::Ready,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use http::request::Parts;
pub use jsonwebtoken::{Algorithm, DecodingKey};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{AuthError, Authenticator, Credential, Principal, Verified};

/// Verifies JSON Web Tokens (HS256, RS256 or ES256); an [`Authenticator`] whose identity is
/// the token's claims deserialised as `C` (a [`serde_json::Value`] by default). Feature `jwt`.
///
/// The `sub` and `exp` claims are required; `exp` and `nbf` (when present) are checked with a
/// leeway, and `aud` and `iss` when configured. The principal's subject is `sub` and its
/// expiry `exp`. Only the configured algorithm is accepted, whatever the token's header says.
///
/// Keys: [`DecodingKey::from_secret`] for HS256; for RS256 [`DecodingKey::from_rsa_components`]
/// (a JWK's `n` and `e`) or [`DecodingKey::from_rsa_der`] (PKCS#1); for ES256
/// [`DecodingKey::from_ec_components`] (a JWK's `x` and `y`) or [`DecodingKey::from_ec_der`]
/// (the SEC1 point).
///
/// Expired tokens are [`AuthError::Expired`]; tokens that do not parse as a JWT are
/// [`AuthError::Malformed`]; everything else (signature, algorithm, audience, issuer, `nbf`,
/// missing claims, claims that do not fit `C`) is [`AuthError::Invalid`].
pub struct JwtAuthenticator<C = Value> {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    _claims: PhantomData<fn() -> C>,
}

impl<C> Clone for JwtAuthenticator<C> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            validation: self.validation.clone(),
            _claims: PhantomData,
        }
    }
}

impl<C> JwtAuthenticator<C>
where
    C: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Verifies tokens signed with `algorithm` and `key`.
    pub fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 60;
        validation.validate_aud = false;
        Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            _claims: PhantomData,
        }
    }

    /// HS256 with the shared `secret`.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        Self::new(Algorithm::HS256, DecodingKey::from_secret(secret.as_ref()))
    }

    /// RS256 with the public key `key`.
    pub fn rs256(key: DecodingKey) -> Self {
        Self::new(Algorithm::RS256, key)
    }

    /// ES256 (P-256) with the public key `key`.
    pub fn es256(key: DecodingKey) -> Self {
        Self::new(Algorithm::ES256, key)
    }

    /// Requires the `aud` claim to contain one of `audiences`. Adds to the accepted audiences.
    /// Default: `aud` is not checked.
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

    /// Clock skew allowed when checking `exp` and `nbf`, in whole seconds. Replaces the
    /// previous value. Default: 60 seconds.
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        Arc::make_mut(&mut self.validation).leeway = leeway.as_secs();
        self
    }

    /// Checks `token`; returns the claims and the principal.
    pub fn verify(&self, token: &str) -> Result<Verified<C>, AuthError> {
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
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
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        let mut principal = Principal::new(subject, expires_at);
        // `iat` (a NumericDate, possibly fractional) for revocation by issue time.
        if let Some(issued_at) = claims
            .get("iat")
            .and_then(Value::as_f64)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .and_then(|d| UNIX_EPOCH.checked_add(d))
        {
            principal = principal.with_issued_at(issued_at);
        }
        let identity = C::deserialize(&claims).map_err(|_| AuthError::Invalid)?;
        Ok(Verified::new(identity, principal))
    }
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
            .field("iss", &self.validation.iss)
            .field("leeway", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}
