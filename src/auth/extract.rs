use std::fmt;

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{StatusCode, request::Parts};

/// Extracts the identity that [`HandshakeAuthLayer`](super::HandshakeAuthLayer) stored in the
/// request extensions: the authenticator's `Identity` type, or [`Principal`](super::Principal)
/// (subject and expiry), which every authenticator stores too.
///
/// When the identity is missing the route is not behind the layer (or the type parameter does
/// not match the authenticator's identity): the extractor refuses the request with
/// [`MissingIdentity`], a `401` naming the misconfiguration, and logs an error, so a
/// misconfigured route fails closed and never runs unauthenticated. Use
/// `Option<Identity<I>>` for routes where authentication is optional.
///
/// See the [module docs](super) for an example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity<I>(pub I);

impl<S, I> FromRequestParts<S> for Identity<I>
where
    S: Send + Sync,
    I: Clone + Send + Sync + 'static,
{
    type Rejection = MissingIdentity;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<I>() {
            Some(identity) => Ok(Identity(identity.clone())),
            None => {
                let type_name = std::any::type_name::<I>();
                tracing::error!(
                    name: "wsguard.auth.missing_layer",
                    identity_type = type_name,
                    path = parts.uri.path(),
                    "Identity extractor used without HandshakeAuthLayer (or with another identity type)"
                );
                Err(MissingIdentity { type_name })
            }
        }
    }
}

impl<S, I> OptionalFromRequestParts<S> for Identity<I>
where
    S: Send + Sync,
    I: Clone + Send + Sync + 'static,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<I>().cloned().map(Identity))
    }
}

/// Rejection of the [`Identity`] extractor: the route is not behind
/// [`HandshakeAuthLayer`](super::HandshakeAuthLayer), or the extractor asks for another type
/// than the authenticator's identity. Answers `401 Unauthorized` (never letting the request
/// through unauthenticated) with a body naming the misconfiguration.
///
/// It carries no [`AuthError`](super::AuthError): the client did nothing wrong, so the rate
/// limiter must not count it as a failed authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingIdentity {
    type_name: &'static str,
}

impl MissingIdentity {
    /// The identity type that was asked for.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Display for MissingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no authenticated identity of type {}: is HandshakeAuthLayer applied to this route?",
            self.type_name
        )
    }
}

impl std::error::Error for MissingIdentity {}

impl IntoResponse for MissingIdentity {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            "authentication is not configured for this route (server misconfiguration)\n",
        )
            .into_response()
    }
}
