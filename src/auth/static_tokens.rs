use std::{fmt, future::Ready, sync::Arc};

use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Authenticator, Credential, Principal, Verified};

/// A fixed set of tokens, each mapped to a subject and an identity: service accounts,
/// internal tools, tests. See the [module docs](super).
///
/// The presented token is compared with every configured token in constant time (both are
/// hashed with SHA-256 first, so neither the length nor the position of a match leaks), and
/// an unknown token gets [`AuthError::Invalid`]. The principal has no expiry.
#[derive(Clone)]
pub struct StaticTokens<I> {
    entries: Arc<Vec<Entry<I>>>,
}

#[derive(Clone)]
struct Entry<I> {
    digest: [u8; 32],
    subject: Arc<str>,
    identity: I,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl<I: Clone + Send + Sync + 'static> StaticTokens<I> {
    /// An empty set, which accepts nothing.
    pub fn new() -> Self {
        Self {
            entries: Arc::new(Vec::new()),
        }
    }

    /// Accepts `token` as `subject` with `identity`. Adds to the set; a token configured twice
    /// is matched by its first entry.
    #[must_use]
    pub fn token(
        mut self,
        token: impl AsRef<str>,
        subject: impl Into<Arc<str>>,
        identity: I,
    ) -> Self {
        Arc::make_mut(&mut self.entries).push(Entry {
            digest: digest(token.as_ref().as_bytes()),
            subject: subject.into(),
            identity,
        });
        self
    }

    /// The number of configured tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `token` up in constant time.
    pub fn verify(&self, token: &str) -> Result<Verified<I>, AuthError> {
        let presented = digest(token.as_bytes());
        let mut found: Option<&Entry<I>> = None;
        // Visit every entry whatever matches, so the time does not depend on the position.
        for entry in self.entries.iter() {
            let matches: bool = entry.digest.ct_eq(&presented).into();
            if matches && found.is_none() {
                found = Some(entry);
            }
        }
        found
            .map(|e| Verified::new(e.identity.clone(), Principal::new(e.subject.clone(), None)))
            .ok_or(AuthError::Invalid)
    }
}

impl<I: Clone + Send + Sync + 'static> Default for StaticTokens<I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I: Clone + Send + Sync + 'static> Authenticator for StaticTokens<I> {
    type Identity = I;
    type Future = Ready<Result<Verified<I>, AuthError>>;

    fn authenticate(&self, _parts: &Parts, credential: Credential) -> Self::Future {
        std::future::ready(self.verify(credential.token()))
    }
}

impl<I> fmt::Debug for StaticTokens<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field(
                "subjects",
                &self.entries.iter().map(|e| &*e.subject).collect::<Vec<_>>(),
            )
            .finish()
    }
}
