//! Handshake authentication.

use std::{fmt, sync::Arc, time::SystemTime};

/// Who an authenticated handshake belongs to, stored in the request extensions next to the
/// application's own identity type. Later layers (quotas, socket policy) key on
/// [`Principal::subject`] and close the socket at [`Principal::expires_at`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    subject: Arc<str>,
    expires_at: Option<SystemTime>,
}

impl Principal {
    /// A principal for `subject` whose credential expires at `expires_at`, if ever.
    pub fn new(subject: impl Into<Arc<str>>, expires_at: Option<SystemTime>) -> Self {
        Self {
            subject: subject.into(),
            expires_at,
        }
    }

    /// The stable subject (user id) this credential was issued to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the credential stops being valid, if it has an expiry.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// Why a handshake failed authentication. Carried in the extensions of every rejection
/// response, which is how the rate limiter counts failures per client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was found in any configured source.
    Missing,
    /// The credential was present but not well formed.
    Malformed,
    /// The credential was well formed but not valid.
    Invalid,
    /// The credential was valid once but has expired.
    Expired,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing credential",
            Self::Malformed => "malformed credential",
            Self::Invalid => "invalid credential",
            Self::Expired => "expired credential",
        })
    }
}

impl std::error::Error for AuthError {}
