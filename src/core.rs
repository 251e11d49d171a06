//! What every middleware module would otherwise repeat: the response future, the plain-text
//! rejection, the inner-service accessors, permit attachment and identity lookup.
//!
//! Crate-private; the futures are public only through each module's `ResponseFuture`
//! re-export, because they appear in `Service::Future`.

use std::{
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use http::{Extensions, HeaderValue, StatusCode, header};
use pin_project_lite::pin_project;

use crate::{auth::Principal, client_ip::ClientIp, rate_limit::ConnectionPermit};

pin_project! {
    /// Response future of a handshake middleware: the inner service's future, or a rejection
    /// decided before the inner service was called.
    ///
    /// `B` is the response body, axum's [`Body`] by default.
    pub struct ResponseFuture<F, B = Body> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Future { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// Runs `future`, the inner service's.
    pub(crate) fn future(future: F) -> Self {
        Self {
            kind: Kind::Future { future },
        }
    }

    /// Answers `response` without calling the inner service.
    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future } => future.poll(cx),
            KindProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.kind {
            Kind::Future { .. } => "Future",
            Kind::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &state)
            .finish()
    }
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send + 'static>>;

/// Response future of a middleware that awaits something of its own (a Redis round trip)
/// before it calls the inner service.
pub struct BoxResponseFuture<E> {
    inner: BoxFuture<E>,
}

impl<E> BoxResponseFuture<E> {
    pub(crate) fn new(fut: impl Future<Output = Result<Response, E>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(fut),
        }
    }

    /// Answers `response` without calling the inner service.
    pub(crate) fn rejected(response: Response) -> Self
    where
        E: Send + 'static,
    {
        Self::new(std::future::ready(Ok(response)))
    }
}

impl<E> Future for BoxResponseFuture<E> {
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<E> fmt::Debug for BoxResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A short `text/plain` response with `status`: the body of every default rejection.
pub(crate) fn plain_text(status: StatusCode, text: impl Into<Body>) -> Response {
    let mut response = Response::new(text.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The rejection for `error`: the user's `on_rejection` hook if there is one, else
/// `default`; either way `error` ends up in the response extensions, for outer layers,
/// handlers of the response and tests to read the typed cause.
pub(crate) fn reject_with<T, H>(
    error: T,
    hook: Option<H>,
    default: impl FnOnce(&T) -> Response,
) -> Response
where
    T: Clone + Send + Sync + 'static,
    H: FnOnce(&T) -> Response,
{
    let mut response = match hook {
        Some(hook) => hook(&error),
        None => default(&error),
    };
    response.extensions_mut().insert(error);
    response
}

/// Adds `permit` to the [`ConnectionPermit`] in `extensions` (several layers may each hold
/// slots for the same socket), or inserts it.
pub(crate) fn attach_permit(extensions: &mut Extensions, permit: ConnectionPermit) {
    match extensions.get_mut::<ConnectionPermit>() {
        Some(existing) => existing.merge(permit),
        None => {
            extensions.insert(permit);
        }
    }
}

/// The client address that [`ClientIpLayer`](crate::client_ip::ClientIpLayer) stored, if any.
pub(crate) fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ClientIp>().map(|ip| ip.0)
}

/// The authenticated principal that the auth layer stored, if any.
pub(crate) fn principal(extensions: &Extensions) -> Option<&Principal> {
    extensions.get::<Principal>()
}

/// The authenticated identity's subject, if any.
pub(crate) fn identity(extensions: &Extensions) -> Option<&str> {
    principal(extensions).map(Principal::subject)
}

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service is the field
/// `inner` (tower-http's `define_inner_service_accessors!`).
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the middleware, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use define_inner_service_accessors;
