//! [`Fleet`]: the shared Redis connection, its health, and revocation: the handle here, its
//! builder in `builder`, the revocation registry in `registry`, pub/sub subscriptions in
//! `subscription`, and the revocation listener (a subscription) in `listener`.

mod builder;
mod listener;
mod registry;
mod subscription;

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

pub(crate) use self::registry::Unshared;
#[cfg(any(test, fuzzing))]
pub(crate) use self::registry::revocation_decision;
pub use self::{
    builder::FleetBuilder,
    subscription::{Subscription, SubscriptionEvent},
};
use super::{FailurePolicy, FleetError, scripts};
use crate::{
    auth::{Principal, SystemClock, TokenFingerprint},
    revoke::{Local, Revocations, RevokeError},
};

struct Inner {
    conn: ConnectionManager,
    /// For the pub/sub connections of [`Fleet::subscribe`].
    client: Client,
    /// Where subscriptions run: the runtime the fleet was built in.
    runtime: tokio::runtime::Handle,
    prefix: String,
    timeout: Duration,
    on_failure: FailurePolicy,
    lease_ttl: Duration,
    revocation_ttl: Duration,
    channel: String,
    available: AtomicBool,
    local: Arc<Local>,
    listener: tokio::task::AbortHandle,
    /// The lease releases running now, for a drain to wait on.
    releases: crate::core::InFlight,
    /// Revocations Redis did not take that are being shared again.
    unshared: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A handle on the Redis that instances of a service share: the backend of
/// [`WsGuard::fleet`](crate::WsGuard::fleet),
/// [`RateLimitLayer::fleet`](crate::rate_limit::RateLimitLayer::fleet),
/// [`ConnectionQuotaLayer::fleet`](crate::rate_limit::ConnectionQuotaLayer::fleet) and
/// [`RevocationLayer::new`](super::RevocationLayer::new), and it revokes identities and
/// tokens on every instance. Cheap to clone; clones
/// share the connection. See the [module docs](super).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("on_failure", &self.inner.on_failure)
            .field("lease_ttl", &self.inner.lease_ttl)
            .field("revocation_ttl", &self.inner.revocation_ttl)
            .field("available", &self.is_available())
            .field("local_sockets", &self.local_sockets())
            .finish()
    }
}

impl Fleet {
    /// Whether the last Redis round trip succeeded.
    pub fn is_available(&self) -> bool {
        self.inner.available.load(Ordering::Relaxed)
    }

    /// The policy applied while Redis is unreachable.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.on_failure
    }

    /// The quota lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// `<prefix>:<suffix>`: a key in the fleet's namespace, for the application's own data.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.prefix)
    }

    /// `{<prefix>:<group>}`: the hash tag of a group of keys that one script touches
    /// together, so that they share a Redis Cluster slot (see FLEET.md). The keys are this
    /// tag, `:` and a suffix. The tag opens the key, so nothing in the suffix (a subject
    /// with braces, say) can move a key out of its group's slot.
    pub(crate) fn slot_tag(&self, group: &str) -> String {
        format!("{{{}:{group}}}", self.inner.prefix)
    }

    /// A clone of the reconnecting connection, for the fleet's own commands. Wrap calls in
    /// [`run`](Self::run) to get the fleet's timeout and health tracking.
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Counts the quota lease releases running now.
    pub(crate) fn releases(&self) -> &crate::core::InFlight {
        &self.inner.releases
    }

    /// Subscribes to the Redis pub/sub `channel` (name it in the fleet's namespace with
    /// [`key`](Self::key)) for as long as the returned [`Subscription`] lives: its events are
    /// [`SubscriptionEvent::Subscribed`] (first, and again after every lost connection:
    /// catch up then with what you keep in Redis) and the channel's messages, in order. The
    /// subscription has its own connection and resubscribes by itself; it does not keep the
    /// fleet alive. The fleet's revocation listener is such a subscription. See the
    /// [module docs](super#your-own-channels).
    ///
    /// Publish with your own Redis connection (`PUBLISH`, or from a script that also stores
    /// what catching up reads).
    #[must_use = "the subscription ends when it is dropped"]
    pub fn subscribe(&self, channel: impl Into<String>) -> Subscription {
        Subscription::spawn(
            &self.inner.runtime,
            self.inner.client.clone(),
            channel.into(),
        )
    }

    /// Sockets on this instance that revocation can close.
    pub fn local_sockets(&self) -> usize {
        self.revocations().live_sockets()
    }

    /// One round trip to Redis (`PING`).
    pub async fn ping(&self) -> Result<(), FleetError> {
        let mut conn = self.connection();
        self.run("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// Runs one Redis operation with the fleet's timeout, tracking availability: the first
    /// failure logs `wsguard.fleet.unavailable` (warn), the first success after it
    /// `wsguard.fleet.recovered` (info).
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let result = match tokio::time::timeout(self.inner.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error() =>
            {
                Err(FleetError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => Err(FleetError::Redis(e.to_string())),
            Err(_) => Err(FleetError::Unavailable(format!(
                "no answer within {:?}",
                self.inner.timeout
            ))),
        };
        match &result {
            Ok(_) => crate::metrics::fleet_available(true),
            Err(e) => {
                crate::metrics::fleet_available(!matches!(e, FleetError::Unavailable(_)));
                crate::metrics::fleet_error(what, e);
            }
        }
        match &result {
            Ok(_) => {
                if !self.inner.available.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        name: "wsguard.fleet.recovered",
                        target: "wsguard::fleet",
                        operation = what,
                        "Redis is reachable again: fleet-wide limits apply"
                    );
                }
            }
            Err(FleetError::Unavailable(reason)) => {
                if self.inner.available.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        name: "wsguard.fleet.unavailable",
                        target: "wsguard::fleet",
                        operation = what,
                        reason = %reason,
                        policy = self.inner.on_failure.as_str(),
                        "Redis is unreachable"
                    );
                }
            }
            Err(e) => tracing::error!(
                name: "wsguard.fleet.redis_error",
                target: "wsguard::fleet",
                operation = what,
                error = %e,
                "Redis refused a fleet command"
            ),
        }
        result
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
