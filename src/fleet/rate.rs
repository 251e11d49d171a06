//! [`FleetRateLimitLayer`]: the handshake rate limit, shared through Redis.

use std::{
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::response::Response;
use http::Request;
use tower::{Layer, Service};

use super::{
    FailurePolicy, Fleet, FleetError, ResponseFuture, note_fallback, refuse_unavailable, scripts,
};
use crate::{
    client_ip::KeyPrefix,
    rate_limit::{KeyBy, RateLimit, RateLimitError, RateLimitLayer, emit, reject},
};

/// Layer that limits the handshake rate across every instance sharing a [`Fleet`]: the
/// fleet counterpart of [`RateLimitLayer`], with the same builder, keys and rejections
/// (`429` with `Retry-After` and [`RateLimitError::TooManyHandshakes`] in the extensions).
/// See the [module docs](super).
///
/// It embeds a local [`RateLimitLayer`] with the same settings, which decides while Redis is
/// unreachable under [`FailurePolicy::FallBackToLocal`]. `X-RateLimit-*` headers are not
/// sent. Clones share one limit; two layers on one fleet share counters only if they have the
/// same [`name`](Self::name).
#[derive(Clone)]
pub struct FleetRateLimitLayer {
    fleet: Fleet,
    local: RateLimitLayer,
    name: Arc<str>,
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl fmt::Debug for FleetRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimitLayer")
            .field("name", &self.name)
            .field("count", &self.count)
            .field("period", &self.period)
            .field("burst", &self.burst_size())
            .field("local", &self.local)
            .finish()
    }
}

impl FleetRateLimitLayer {
    /// 10 handshakes per second with a burst of 10 across the fleet, keyed by client IP, named
    /// `"handshake"`: [`RateLimitLayer::new`]'s defaults.
    #[must_use]
    pub fn new(fleet: &Fleet) -> Self {
        Self {
            fleet: fleet.clone(),
            local: RateLimitLayer::new(),
            name: Arc::from("handshake"),
            count: 10,
            period: Duration::from_secs(1),
            burst: None,
        }
    }

    /// The fleet counterpart of `local`: the same rate, burst, key and rejection, counted in
    /// Redis (`WsGuard::fleet` uses it so one `RateLimitLayer` configures both modes).
    pub(crate) fn from_local(fleet: &Fleet, local: RateLimitLayer) -> Self {
        Self {
            fleet: fleet.clone(),
            count: local.count.get(),
            period: local.period,
            burst: local.burst.map(NonZeroU32::get),
            local,
            name: Arc::from("handshake"),
        }
    }

    /// `n` handshakes per second per key, fleet-wide. Replaces. The finest rate counted in
    /// Redis is one handshake per microsecond: a higher `n` (above a million) counts as a
    /// million a second.
    #[must_use]
    pub fn per_second(self, n: NonZeroU32) -> Self {
        self.rate(n, Duration::from_secs(1))
    }

    /// `n` handshakes per minute per key, fleet-wide. Replaces.
    #[must_use]
    pub fn per_minute(self, n: NonZeroU32) -> Self {
        self.rate(n, Duration::from_secs(60))
    }

    fn rate(mut self, n: NonZeroU32, period: Duration) -> Self {
        self.local = if period == Duration::from_secs(1) {
            self.local.per_second(n)
        } else {
            self.local.per_minute(n)
        };
        self.count = n.get();
        self.period = period;
        self
    }

    /// Handshakes allowed at once after a quiet period. Replaces; default: the rate's `n`.
    #[must_use]
    pub fn burst(mut self, b: NonZeroU32) -> Self {
        self.local = self.local.burst(b);
        self.burst = Some(b.get());
        self
    }

    /// What the limit is keyed on. Replaces; default [`KeyBy::ClientIp`].
    #[must_use]
    pub fn key(mut self, key_by: KeyBy) -> Self {
        self.local = self.local.key(key_by);
        self
    }

    /// How client addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.local = self.local.key_prefix(prefix);
        self
    }

    /// The name of this limit in Redis (`<prefix>:rate:<name>:<key>`). Replaces; default
    /// `"handshake"`. Give each fleet rate limit of a service its own name.
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the rejection response, as [`RateLimitLayer::on_rejection`]. Replaces.
    #[must_use]
    pub fn on_rejection<F>(mut self, f: F) -> Self
    where
        F: Fn(&RateLimitError) -> Response + Send + Sync + 'static,
    {
        self.local = self.local.on_rejection(f);
        self
    }

    fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.count)
    }

    /// Asks Redis about one handshake under `key`: `Ok(Ok(remaining))` if allowed,
    /// `Ok(Err(wait))` if not.
    async fn check(&self, key: String) -> Result<Result<u64, Duration>, FleetError> {
        let interval_us = u64::try_from((self.period / self.count).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = self.burst_size();
        let mut conn = self.fleet.connection();
        let redis_key = self.fleet.key(&format!("rate:{}:{key}", self.name));
        let reply: (i64, i64) = self
            .fleet
            .run("rate_limit", async move {
                scripts::GCRA
                    .key(redis_key)
                    .arg(interval_us)
                    .arg(burst)
                    .arg("")
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match reply {
            (1, remaining) => Ok(remaining.max(0) as u64),
            (_, wait_us) => Err(Duration::from_micros(wait_us.max(0) as u64)),
        })
    }
}

impl<S> Layer<S> for FleetRateLimitLayer {
    type Service = FleetRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetRateLimit {
            local: self.local.layer(inner),
            layer: self.clone(),
        }
    }
}

/// Middleware that limits the handshake rate fleet-wide. Made by [`FleetRateLimitLayer`].
#[derive(Clone, Debug)]
pub struct FleetRateLimit<S> {
    local: RateLimit<S>,
    layer: FleetRateLimitLayer,
}

impl<S> FleetRateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.local.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.local.get_mut()
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.local.into_inner()
    }
}

impl<S, B> Service<Request<B>> for FleetRateLimit<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.local.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ip: Option<IpAddr> = crate::core::client_ip(req.extensions());
        let identity: Option<Arc<str>> = crate::core::identity(req.extensions()).map(Arc::from);
        let key = match (self.layer.local.key_by, &identity, ip) {
            (KeyBy::Global, _, _) => Some("global".to_owned()),
            (KeyBy::Identity, Some(subject), _) => Some(format!("id:{subject}")),
            (_, _, Some(ip)) => Some(format!("ip:{}", self.layer.local.prefix.key(ip))),
            (_, _, None) => None,
        };
        let Some(key) = key else {
            let error = RateLimitError::MissingClientIp;
            emit(&error, None, identity.as_deref());
            let response = reject(self.layer.local.on_rejection.as_ref(), error);
            return ResponseFuture::rejected(response);
        };
        // The service that was polled ready goes with the request; a clone stays.
        let clone = self.local.clone();
        let mut local = std::mem::replace(&mut self.local, clone);
        let layer = self.layer.clone();
        ResponseFuture::new(async move {
            match layer.check(key).await {
                Ok(Ok(_remaining)) => local.get_mut().call(req).await,
                Ok(Err(wait)) => {
                    let error = RateLimitError::TooManyHandshakes {
                        limit: layer.burst_size(),
                        retry_after: wait,
                    };
                    emit(&error, ip, identity.as_deref());
                    Ok(reject(layer.local.on_rejection.as_ref(), error))
                }
                Err(error) => match layer.fleet.failure_policy() {
                    FailurePolicy::Refuse => Ok(refuse_unavailable("rate_limit", error, ip)),
                    _ => {
                        note_fallback("rate_limit", ip);
                        local.call(req).await
                    }
                },
            }
        })
    }
}
