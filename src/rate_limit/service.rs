use std::{
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use http::{HeaderValue, Request};
use tower::Service;

use super::{
    KeyBy, RateLimitError, RateLimitLayer, ResponseFuture, X_RATELIMIT_AFTER, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING,
    future::After,
    layer::{RateKey, prune},
    reject, retry_after_secs,
};

/// Middleware that limits the handshake rate. Made by [`RateLimitLayer`]; see the
/// [module docs](super).
pub struct RateLimit<S, C: Clock = DefaultClock> {
    pub(crate) inner: S,
    pub(crate) layer: RateLimitLayer<C>,
}

impl<S, C: Clock + Clone> RateLimit<S, C> {
    pub(crate) fn new(inner: S, layer: RateLimitLayer<C>) -> Self {
        Self { inner, layer }
    }

    crate::core::define_inner_service_accessors!();
}

impl<S> RateLimit<S> {
    /// A [`RateLimitLayer`] with default settings.
    pub fn layer() -> RateLimitLayer {
        RateLimitLayer::new()
    }
}

impl<S: Clone, C: Clock + Clone> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C: Clock> std::fmt::Debug for RateLimit<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    C: Clock + Clone + Send + Sync + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let ip: Option<IpAddr> = crate::core::client_ip(req.extensions());
        let identity: Option<Arc<str>> = crate::core::identity(req.extensions()).map(Arc::from);
        let key = match (layer.key_by, &identity, ip) {
            (KeyBy::Global, _, _) => Some(RateKey::Global),
            (KeyBy::Identity, Some(subject), _) => Some(RateKey::Identity(Arc::clone(subject))),
            (_, _, Some(ip)) => Some(RateKey::Ip(layer.prefix.key(ip))),
            (_, _, None) => None,
        };
        let Some(key) = key else {
            let error = RateLimitError::MissingClientIp;
            super::emit(&error, None, identity.as_deref());
            return ResponseFuture::rejected(reject(layer.on_rejection.as_ref(), error));
        };
        #[cfg(feature = "redis")]
        if let Some(fleet) = layer.backend.fleet() {
            let fleet = fleet.clone();
            // The service that was polled ready goes with the request; a clone stays.
            let clone = self.clone();
            let ready = std::mem::replace(self, clone);
            return ResponseFuture::boxed(crate::fleet::rate::check(
                ready, fleet, key, ip, identity, req,
            ));
        }
        self.check_local(req, &key, ip, identity.as_deref())
    }
}

impl<S, C: Clock + Clone> RateLimit<S, C> {
    /// Counts the handshake in this instance's limiter and calls the inner service or
    /// rejects.
    pub(crate) fn check_local<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        key: &RateKey,
        ip: Option<IpAddr>,
        identity: Option<&str>,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Default + 'static,
    {
        let layer = &self.layer;
        let shared = layer.shared();
        let seen = shared
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if layer.prune_every != 0 && seen.is_multiple_of(layer.prune_every) {
            prune(shared);
        }

        match shared.limiter.check_key(key) {
            Ok(snapshot) => {
                let after = if layer.headers {
                    After::RateHeaders {
                        limit: snapshot.quota().burst_size().get(),
                        remaining: snapshot.remaining_burst_capacity(),
                    }
                } else {
                    After::Nothing
                };
                ResponseFuture::future(self.inner.call(req), after)
            }
            Err(not_until) => {
                let limit = not_until.quota().burst_size().get();
                let wait = not_until.wait_time_from(shared.limiter.clock().now());
                ResponseFuture::rejected(self.layer.too_many(limit, wait, ip, identity))
            }
        }
    }
}

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// The `429` of a key over its limit of `limit`, free again after `wait`.
    pub(crate) fn too_many(
        &self,
        limit: u32,
        wait: std::time::Duration,
        ip: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Response {
        let error = RateLimitError::TooManyHandshakes {
            limit,
            retry_after: wait,
        };
        super::emit(&error, ip, identity);
        let mut response = reject(self.on_rejection.as_ref(), error);
        if self.headers {
            let headers = response.headers_mut();
            headers.insert(X_RATELIMIT_LIMIT, limit.into());
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(0u32));
            headers.insert(X_RATELIMIT_AFTER, retry_after_secs(wait).into());
        }
        response
    }
}
