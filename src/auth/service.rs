use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use axum::response::Response;
use http::Request;
use tower::Service;

use super::{
    Authenticator, HandshakeAuthLayer, ResponseFuture, TokenFingerprint,
    credential::take_credential, layer::Config, rejection::reject,
};

/// Authenticates WebSocket handshakes before they reach the inner service; made by
/// [`HandshakeAuthLayer`]. See the [module docs](super).
#[derive(Clone)]
pub struct HandshakeAuth<S, A> {
    inner: S,
    authenticator: A,
    config: Arc<Config>,
}

impl<S, A: Authenticator> HandshakeAuth<S, A> {
    /// Wraps `inner`, authenticating with `authenticator` and the default settings of
    /// [`HandshakeAuthLayer::new`].
    pub fn new(inner: S, authenticator: A) -> Self {
        tower::Layer::layer(&HandshakeAuthLayer::new(authenticator), inner)
    }

    /// A [`HandshakeAuthLayer`] authenticating with `authenticator`.
    pub fn layer(authenticator: A) -> HandshakeAuthLayer<A> {
        HandshakeAuthLayer::new(authenticator)
    }
}

impl<S, A> HandshakeAuth<S, A> {
    pub(super) fn from_parts(inner: S, authenticator: A, config: Arc<Config>) -> Self {
        Self {
            inner,
            authenticator,
            config,
        }
    }

    crate::core::define_inner_service_accessors!();
}

impl<S, A, B, ResBody> Service<Request<B>> for HandshakeAuth<S, A>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    A: Authenticator,
    ResBody: Default + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, A, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        match take_credential(
            &mut parts,
            &self.config.sources,
            self.config.max_credential_len,
        ) {
            Err((err, source)) => {
                ResponseFuture::rejected(reject(&self.config, err, source, &parts.extensions))
            }
            Ok(credential) => {
                let source = credential.source();
                parts
                    .extensions
                    .insert(TokenFingerprint::of(credential.token()));
                let fut = self.authenticator.authenticate(&parts, credential);
                // The service that was polled ready goes with the request; a clone stays.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::authenticating(
                    fut,
                    inner,
                    Request::from_parts(parts, body),
                    self.config.clone(),
                    source,
                )
            }
        }
    }
}

impl<S: fmt::Debug, A> fmt::Debug for HandshakeAuth<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeAuth")
            .field("inner", &self.inner)
            .field("authenticator", &std::any::type_name::<A>())
            .field("config", &self.config)
            .finish()
    }
}
