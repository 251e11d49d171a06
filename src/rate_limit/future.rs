use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::response::Response;
use ipnet::IpNet;
use pin_project_lite::pin_project;

use crate::auth::AuthError;

/// Counts a failed authentication for a client (implemented by the throttle's state).
pub(crate) trait FailureSink: Send + Sync {
    fn record_failure(&self, key: IpNet, ip: IpAddr);
}

/// What to do with the inner service's response.
pub(crate) enum After {
    Nothing,
    RateHeaders {
        limit: u32,
        remaining: u32,
    },
    CountAuthFailure {
        sink: Arc<dyn FailureSink>,
        key: IpNet,
        ip: IpAddr,
    },
}

pin_project! {
    /// Response future of the middleware in [`rate_limit`](super).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Future { #[pin] future: F, after: After },
        Rejected { response: Option<Response> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn future(future: F, after: After) -> Self {
        Self {
            kind: Kind::Future { future, after },
        }
    }

    pub(crate) fn rejected(response: Response) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future, after } => {
                let mut response = ready!(future.poll(cx))?;
                match after {
                    After::Nothing => {}
                    After::RateHeaders { limit, remaining } => {
                        let headers = response.headers_mut();
                        headers.insert(super::X_RATELIMIT_LIMIT, (*limit).into());
                        headers.insert(super::X_RATELIMIT_REMAINING, (*remaining).into());
                    }
                    After::CountAuthFailure { sink, key, ip } => {
                        if response.extensions().get::<AuthError>().is_some() {
                            sink.record_failure(*key, *ip);
                        }
                    }
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
