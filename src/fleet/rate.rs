//! The fleet backend of [`RateLimitLayer`]: the handshake rate limit as a GCRA in Redis.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::response::Response;
use http::{HeaderValue, Request};
use redis::{RedisResult, Value};
use tower::Service;

use super::{FailurePolicy, Fleet, FleetError, note_fallback, refuse_unavailable, scripts};
use crate::rate_limit::{
    Clock, RateLimit, RateLimitLayer, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, layer::RateKey,
};

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// Counts the handshakes in `fleet`'s Redis, so the rate holds for every instance
    /// sharing it, as a GCRA (generic cell rate algorithm) in one atomic script. Replaces;
    /// default: this instance's memory. Keys, rejections and `X-RateLimit-*` headers are
    /// the same. While Redis is unreachable the fleet's [`FailurePolicy`] decides: this
    /// instance's limiter with the same settings, or `503`. See the [fleet docs](crate::fleet).
    #[must_use]
    pub fn fleet(mut self, fleet: &Fleet) -> Self {
        self.backend.fleet = Some(fleet.clone());
        self
    }

    /// The name of this limit in Redis (`<prefix>:rate:<name>:<key>`), with a
    /// [`fleet`](Self::fleet) backend. Replaces; default `"handshake"`. Give each fleet
    /// rate limit of a service its own name: two limits with one name share counters.
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.backend.name = name.into();
        self
    }

    fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.count).get()
    }

    /// Asks Redis about one handshake under `key`: `Ok(Ok(remaining))` if allowed,
    /// `Ok(Err(wait))` if not.
    async fn fleet_check(
        &self,
        fleet: &Fleet,
        key: &RateKey,
    ) -> Result<Result<u64, Duration>, FleetError> {
        let interval_us = u64::try_from((self.period / self.count.get()).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = self.burst_size();
        let mut conn = fleet.connection();
        let redis_key = fleet.key(&format!("rate:{}:{}", self.backend.name, fleet_key(key)));
        fleet
            .run("rate_limit", async move {
                scripts::GCRA
                    .key(redis_key)
                    .arg(interval_us)
                    .arg(burst)
                    .arg("")
                    .invoke_async::<Value>(&mut conn)
                    .await
                    .and_then(gcra_decision)
            })
            .await
    }
}

/// What a reply of [`scripts::GCRA`] decides: `{1, remaining}` allows (`Ok(remaining)`),
/// `{0, wait_us}` refuses (`Err(wait)`); a negative count is taken as 0. Any other reply is
/// an error.
pub(crate) fn gcra_decision(reply: Value) -> RedisResult<Result<u64, Duration>> {
    let pair = match &reply {
        Value::Array(items) => match items.as_slice() {
            [allowed, n] => scripts::int_reply(allowed).zip(scripts::int_reply(n)),
            _ => None,
        },
        _ => None,
    };
    let decision = match pair {
        Some((1, remaining)) => Ok(u64::try_from(remaining).unwrap_or(0)),
        Some((0, wait_us)) => Err(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0))),
        _ => return Err(scripts::unexpected_reply("rate_limit", &reply)),
    };
    Ok(decision)
}

/// The key's part of the Redis key.
fn fleet_key(key: &RateKey) -> String {
    match key {
        RateKey::Global => "global".to_owned(),
        RateKey::Identity(subject) => format!("id:{subject}"),
        RateKey::Ip(net) => format!("ip:{net}"),
    }
}

/// The fleet path of [`RateLimit`]: one Redis round trip, then `svc`'s inner service (which
/// was polled ready), a `429`, or under the fallback policy the local limiter.
pub(crate) async fn check<S, C, ReqBody, ResBody>(
    mut svc: RateLimit<S, C>,
    fleet: Fleet,
    key: RateKey,
    ip: Option<IpAddr>,
    identity: Option<Arc<str>>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
    C: Clock + Clone,
{
    match svc.layer.fleet_check(&fleet, &key).await {
        Ok(Ok(remaining)) => {
            let mut response = svc.inner.call(req).await?;
            if svc.layer.headers {
                let headers = response.headers_mut();
                headers.insert(X_RATELIMIT_LIMIT, svc.layer.burst_size().into());
                headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
            }
            Ok(response)
        }
        Ok(Err(wait)) => {
            let limit = svc.layer.burst_size();
            let response = svc.layer.too_many(limit, wait, ip, identity.as_deref());
            Ok(crate::core::convert_body(response))
        }
        Err(error) => match fleet.failure_policy() {
            FailurePolicy::Refuse => Ok(crate::core::convert_body(refuse_unavailable(
                svc.layer.on_rejection.as_ref(),
                "rate_limit",
                error,
                ip,
            ))),
            _ => {
                note_fallback("rate_limit", ip);
                svc.check_local(req, &key, ip, identity.as_deref()).await
            }
        },
    }
}
