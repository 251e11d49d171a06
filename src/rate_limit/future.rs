use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{body::Body, response::Response};
use pin_project_lite::pin_project;

use super::throttle::AuthAttempt;
use crate::auth::AuthError;

/// What to do with the inner service's response.
pub(crate) enum After {
    Nothing,
    RateHeaders {
        limit: u32,
        remaining: u32,
    },
    /// Settles the brute-force throttle's attempt: a failure when the response carries an
    /// `AuthError`, else the slot is given back. Dropped unsettled (the future is dropped or
    /// the inner service fails), the slot is given back too.
    CountAuthFailure {
        attempt: Option<AuthAttempt>,
    },
}

pin_project! {
    /// Response future of the middleware in [`rate_limit`](super): the shared handshake
    /// future plus what to do with the inner service's response or, with a
    /// [fleet](crate::fleet) backend, the Redis round trip and then the inner service.
    ///
    /// `B` is the response body, axum's [`Body`] by default.
    pub struct ResponseFuture<F: Future, B = Body> {
        #[pin]
        kind: Kind<F, B>,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F: Future, B> {
        Local {
            #[pin]
            inner: crate::core::ResponseFuture<F, B>,
            after: After,
        },
        // Only made with the `redis` feature.
        Boxed { future: BoxFuture<F::Output> },
    }
}

impl<F: Future, B> ResponseFuture<F, B> {
    pub(crate) fn future(future: F, after: After) -> Self {
        Self {
            kind: Kind::Local {
                inner: crate::core::ResponseFuture::future(future),
                after,
            },
        }
    }

    pub(crate) fn rejected(response: Response) -> Self
    where
        B: Default + 'static,
    {
        Self {
            kind: Kind::Local {
                inner: crate::core::ResponseFuture::rejected(response),
                after: After::Nothing,
            },
        }
    }

    /// A future of its own (the fleet backend's Redis round trip, then the inner service).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn boxed(future: impl Future<Output = F::Output> + Send + 'static) -> Self {
        Self {
            kind: Kind::Boxed {
                future: Box::pin(future),
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
        let (inner, after) = match self.project().kind.project() {
            KindProj::Boxed { future } => return future.as_mut().poll(cx),
            KindProj::Local { inner, after } => (inner, after),
        };
        let mut response = ready!(inner.poll(cx))?;
        match after {
            After::Nothing => {}
            After::RateHeaders { limit, remaining } => {
                let headers = response.headers_mut();
                headers.insert(super::X_RATELIMIT_LIMIT, (*limit).into());
                headers.insert(super::X_RATELIMIT_REMAINING, (*remaining).into());
            }
            After::CountAuthFailure { attempt } => {
                if let Some(attempt) = attempt.take() {
                    if response.extensions().get::<AuthError>().is_some() {
                        attempt.failed();
                    } else {
                        attempt.succeeded();
                    }
                }
            }
        }
        Poll::Ready(Ok(response))
    }
}

impl<F: Future, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
