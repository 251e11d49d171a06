use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::response::Response;
use http::Request;
use pin_project_lite::pin_project;
use tower::Service;

use super::{Authenticator, SourceKind, layer::Config, rejection::reject};

pin_project! {
    /// Response future of [`HandshakeAuth`](super::HandshakeAuth).
    pub struct ResponseFuture<S, A, B>
    where
        S: Service<Request<B>>,
        A: Authenticator,
    {
        #[pin]
        kind: Kind<S, A, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, A, B>
    where
        S: Service<Request<B>>,
        A: Authenticator,
    {
        Authenticate {
            #[pin]
            fut: A::Future,
            inner: Option<S>,
            request: Option<Request<B>>,
            config: Arc<Config>,
            source: SourceKind,
        },
        Future {
            #[pin]
            fut: S::Future,
        },
        Rejected {
            response: Option<S::Response>,
        },
    }
}

impl<S, A, B> ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
    A: Authenticator,
{
    pub(super) fn rejected<ResBody>(response: Response) -> Self
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        ResBody: Default + 'static,
    {
        Self {
            kind: Kind::Rejected {
                response: Some(crate::core::convert_body(response)),
            },
        }
    }

    pub(super) fn authenticating(
        fut: A::Future,
        inner: S,
        request: Request<B>,
        config: Arc<Config>,
        source: SourceKind,
    ) -> Self {
        Self {
            kind: Kind::Authenticate {
                fut,
                inner: Some(inner),
                request: Some(request),
                config,
                source,
            },
        }
    }
}

impl<S, A, B, ResBody> Future for ResponseFuture<S, A, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    A: Authenticator,
    ResBody: Default + 'static,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            match kind.as_mut().project() {
                KindProj::Authenticate {
                    fut,
                    inner,
                    request,
                    config,
                    source,
                } => {
                    let outcome = ready!(fut.poll(cx));
                    let (Some(mut request), Some(mut inner)) = (request.take(), inner.take())
                    else {
                        panic!("ResponseFuture polled after completion");
                    };
                    match outcome {
                        Ok(verified) => {
                            if let Some(fingerprint) = verified.fingerprint() {
                                request.extensions_mut().insert(*fingerprint);
                            }
                            let (identity, principal) = verified.into_parts();
                            tracing::debug!(
                                name: "wsguard.auth.accepted",
                                subject = principal.subject(),
                                source = source.as_str(),
                                "handshake authenticated"
                            );
                            request.extensions_mut().insert(identity);
                            request.extensions_mut().insert(principal);
                            let fut = inner.call(request);
                            kind.set(Kind::Future { fut });
                        }
                        Err(err) => {
                            let response = reject(config, err, Some(*source), request.extensions());
                            kind.set(Kind::Rejected { response: None });
                            return Poll::Ready(Ok(crate::core::convert_body(response)));
                        }
                    }
                }
                KindProj::Future { fut } => return fut.poll(cx),
                KindProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, A, B> fmt::Debug for ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
    A: Authenticator,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Authenticate { .. } => "authenticating",
            Kind::Future { .. } => "inner",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
