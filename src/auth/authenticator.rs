use std::{fmt, future::Future};

use http::request::Parts;

use super::{AuthError, Credential, Principal, TokenFingerprint};

/// Decides who a credential belongs to. See the [module docs](super).
///
/// Implemented for closures `Fn(&Parts, Credential) -> Fut` where `Fut` resolves to
/// `Result<Verified<I>, AuthError>` (annotate the closure's arguments:
/// `|parts: &Parts, credential: Credential| async move { .. }`), and by [`StaticTokens`],
/// [`TicketVerifier`] and, with the `jwt` feature, `JwtAuthenticator`.
///
/// Return [`AuthError::Invalid`] both for an unknown user and for a wrong secret, so the
/// answer does not reveal which users exist; [`AuthError::Expired`] for a credential that was
/// valid once; [`AuthError::Malformed`] for one that cannot be parsed.
///
/// [`StaticTokens`]: super::StaticTokens
/// [`TicketVerifier`]: super::TicketVerifier
pub trait Authenticator: Clone + Send + Sync + 'static {
    /// The application's identity type, inserted in the request extensions and read by the
    /// [`Identity`](super::Identity) extractor.
    type Identity: Clone + Send + Sync + 'static;
    /// The future [`authenticate`](Authenticator::authenticate) returns.
    type Future: Future<Output = Result<Verified<Self::Identity>, AuthError>> + Send + 'static;

    /// Verifies `credential`, found in the handshake whose head is `parts`.
    fn authenticate(&self, parts: &Parts, credential: Credential) -> Self::Future;
}

impl<F, Fut, I> Authenticator for F
where
    F: Fn(&Parts, Credential) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Verified<I>, AuthError>> + Send + 'static,
    I: Clone + Send + Sync + 'static,
{
    type Identity = I;
    type Future = Fut;

    fn authenticate(&self, parts: &Parts, credential: Credential) -> Fut {
        self(parts, credential)
    }
}

/// A successful authentication: the application's identity and the [`Principal`] (subject
/// and expiry) that the quota and socket-policy layers read, and optionally the token's
/// [`TokenFingerprint`].
#[derive(Clone)]
pub struct Verified<I> {
    identity: I,
    principal: Principal,
    fingerprint: Option<TokenFingerprint>,
}

impl<I> Verified<I> {
    /// `identity`, authenticated as `principal`.
    pub fn new(identity: I, principal: Principal) -> Self {
        Self {
            identity,
            principal,
            fingerprint: None,
        }
    }

    /// Names the token for revocation and replay by `fingerprint` instead of
    /// [`TokenFingerprint::of`] the presented token, e.g. for a token format whose encoding can
    /// change without changing what it grants. [`HandshakeAuthLayer`](super::HandshakeAuthLayer)
    /// puts this fingerprint into the request extensions. Revoke such tokens by this
    /// fingerprint (`revoke_fingerprint`), not by the token string. Replaces the previous
    /// value. Default: none, the layer uses [`TokenFingerprint::of`].
    #[must_use]
    pub fn with_fingerprint(mut self, fingerprint: TokenFingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// The fingerprint set with [`with_fingerprint`](Self::with_fingerprint), if any.
    pub fn fingerprint(&self) -> Option<&TokenFingerprint> {
        self.fingerprint.as_ref()
    }

    /// The application's identity.
    pub fn identity(&self) -> &I {
        &self.identity
    }

    /// The subject and expiry of the credential.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The identity and the principal.
    pub fn into_parts(self) -> (I, Principal) {
        (self.identity, self.principal)
    }
}

impl<I> fmt::Debug for Verified<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The identity type is the application's and may hold secrets: print only its name.
        f.debug_struct("Verified")
            .field("identity", &std::any::type_name::<I>())
            .field("principal", &self.principal)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}
