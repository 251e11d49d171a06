use std::{fmt, num::NonZeroUsize, sync::Arc};

use axum::response::IntoResponse;
use tower::Layer;

use super::{Authenticator, CredentialSource, HandshakeAuth};
use crate::{Rejection, rejection::OnRejection};

/// Default for [`HandshakeAuthLayer::max_credential_len`]: 8 KiB.
const DEFAULT_MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Authenticates WebSocket handshakes with an [`Authenticator`]; makes [`HandshakeAuth`]. See
/// the [module docs](super).
#[derive(Clone)]
pub struct HandshakeAuthLayer<A> {
    authenticator: A,
    config: Config,
}

/// The settings shared by every service the layer makes.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) sources: Vec<CredentialSource>,
    pub(super) max_credential_len: usize,
    pub(super) on_rejection: Option<OnRejection>,
}

impl<A: Authenticator> HandshakeAuthLayer<A> {
    /// A layer that asks `authenticator` about the credential found in the
    /// `Authorization: Bearer` header (see [`sources`](Self::sources)).
    pub fn new(authenticator: A) -> Self {
        Self {
            authenticator,
            config: Config {
                sources: vec![CredentialSource::authorization()],
                max_credential_len: DEFAULT_MAX_CREDENTIAL_LEN,
                on_rejection: None,
            },
        }
    }

    /// Where to look for the credential, in order; the first source that carries one decides.
    /// Replaces the previous list. Default: [`CredentialSource::authorization`] only.
    ///
    /// An empty list accepts no handshake.
    #[must_use]
    pub fn sources(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        self.config.sources = sources.into_iter().collect();
        self
    }

    /// The longest credential accepted, in bytes; longer ones are refused as malformed before
    /// the authenticator sees them. Replaces the previous value. Default: 8192.
    #[must_use]
    pub fn max_credential_len(mut self, len: NonZeroUsize) -> Self {
        self.config.max_credential_len = len.get();
        self
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &A {
        &self.authenticator
    }
}

impl<A> HandshakeAuthLayer<A> {
    /// Builds the rejection response from the [`Rejection`] (always [`Rejection::Auth`]
    /// here) instead of the default, which is [`Rejection::into_response`]
    /// (`401`/`400` with `WWW-Authenticate`, `429` with `Retry-After`, a plain-text body; see
    /// the [module docs](super#rejections)). The [`AuthError`](super::AuthError) and the
    /// [`Rejection`] are still added to the response's extensions afterwards, and
    /// `Retry-After` when the response lacks it and the error has a wait
    /// ([`AuthError::TooManyTickets`](super::AuthError::TooManyTickets));
    /// `WWW-Authenticate` is not added (the hook may answer with another status). Replaces
    /// the previous hook. Default: none.
    #[must_use]
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.config.on_rejection = Some(OnRejection::new(f));
        self
    }
}

impl<S, A: Authenticator> Layer<S> for HandshakeAuthLayer<A> {
    type Service = HandshakeAuth<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        HandshakeAuth::from_parts(
            inner,
            self.authenticator.clone(),
            Arc::new(self.config.clone()),
        )
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("sources", &self.sources)
            .field("max_credential_len", &self.max_credential_len)
            .field("on_rejection", &self.on_rejection)
            .finish()
    }
}

impl<A> fmt::Debug for HandshakeAuthLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeAuthLayer")
            .field("authenticator", &std::any::type_name::<A>())
            .field("sources", &self.config.sources)
            .field("max_credential_len", &self.config.max_credential_len)
            .field("on_rejection", &self.config.on_rejection)
            .finish()
    }
}
