use std::task::{Context, Poll};

use axum::response::Response;
use http::Request;
use tower::Service;

use super::{OriginGuardLayer, ResponseFuture};

/// Checks the `Origin` of WebSocket handshakes before they reach the inner service.
///
/// Built by [`OriginGuardLayer`]; see the [module docs](crate::origin).
#[derive(Clone, Debug)]
pub struct OriginGuard<S> {
    inner: S,
    layer: OriginGuardLayer,
}

impl<S> OriginGuard<S> {
    /// Wraps `inner` with the rules of `layer`.
    pub fn new(inner: S, layer: OriginGuardLayer) -> Self {
        Self { inner, layer }
    }

    /// A layer with the default rules (same origin); configure it with its builder methods.
    pub fn layer() -> OriginGuardLayer {
        OriginGuardLayer::new()
    }

    crate::core::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OriginGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let config = &self.layer.config;
        match config.check(&parts) {
            Ok(()) => ResponseFuture::future(self.inner.call(Request::from_parts(parts, body))),
            Err(rejected) => {
                let host = parts
                    .headers
                    .get(http::header::HOST)
                    .map(|v| super::layer::sanitise(v.as_bytes()))
                    .unwrap_or_default();
                tracing::warn!(
                    name: "wsguard.origin.rejected",
                    target: "wsguard::origin",
                    reason = rejected.error.as_str(),
                    origin = rejected.origin.as_deref().unwrap_or(""),
                    host,
                    "handshake refused: {}",
                    rejected.error,
                );
                ResponseFuture::rejected(config.rejection(rejected.error))
            }
        }
    }
}
