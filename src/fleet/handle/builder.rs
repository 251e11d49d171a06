//! [`FleetBuilder`]: the fleet's settings, checked when they are set, and the connection.

use super::{listener::listen, subscription::Subscription, *};

/// The shortest Redis timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The shortest quota lease: renewed every third of it, which leaves 10 ms for a round trip.
const MIN_LEASE_TTL: Duration = Duration::from_millis(30);
/// The shortest revocation TTL, the shortest retention of a revocation registry.
const MIN_REVOCATION_TTL: Duration = Duration::from_secs(1);

/// Builds a [`Fleet`]; see [`Fleet::builder`].
#[must_use]
pub struct FleetBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    on_failure: FailurePolicy,
    lease_ttl: Duration,
    revocation_ttl: Duration,
}

impl fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("lease_ttl", &self.lease_ttl)
            .field("revocation_ttl", &self.revocation_ttl)
            .finish()
    }
}

/// The URL without a password, for `Debug`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl FleetBuilder {
    /// The prefix of every Redis key and channel the fleet uses. Default `"wsguard"`;
    /// replaces. Instances that share limits must share the prefix; unrelated services on
    /// one Redis must not.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one Redis round trip may take before the [`FailurePolicy`] applies, so a
    /// handshake never hangs on Redis. Default 250 ms; replaces. A timeout shorter than
    /// 1 ms, zero included, counts as 1 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(MIN_TIMEOUT);
        self
    }

    /// What handshakes get while Redis is unreachable. Default
    /// [`FailurePolicy::FallBackToLocal`]; replaces.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// How long a socket's quota lease lives without renewal. Live sockets renew theirs
    /// every third of it; the leases of an instance that dies expire after at most this
    /// long. Default 30 s; replaces. A TTL shorter than 30 ms, zero included, counts as
    /// 30 ms, so that a renewal always has time to reach Redis.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(MIN_LEASE_TTL);
        self
    }

    /// How long a revocation is remembered: the TTL of its Redis marker, and the retention of
    /// each instance's registry (see [`crate::revoke`]). Make it at least your longest
    /// credential lifetime. Default 24 h; replaces. A TTL shorter than 1 s, zero included,
    /// counts as 1 s (the shortest retention of a registry): a revocation is never forgotten
    /// at once.
    pub fn revocation_ttl(mut self, ttl: Duration) -> Self {
        self.revocation_ttl = ttl.max(MIN_REVOCATION_TTL);
        self
    }

    /// Builds the fleet without waiting for Redis: the connection is made on first use and
    /// remade automatically after failures. Must be called inside a tokio runtime (it
    /// spawns the revocation listener, which ends when the last clone of the fleet drops);
    /// outside one it fails with [`FleetError::NoRuntime`].
    pub fn build(self) -> Result<Fleet, FleetError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(FleetError::NoRuntime);
        };
        let client =
            Client::open(self.url.as_str()).map_err(|e| FleetError::InvalidUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| FleetError::InvalidUrl(e.to_string()))?;
        let local = Arc::new(Local::new(self.revocation_ttl, Arc::new(SystemClock)));
        let channel = format!("{}:revocations", self.prefix);
        let revocations = Subscription::spawn(&runtime, client.clone(), channel.as_str());
        let listener = runtime.spawn(listen(
            revocations,
            client.clone(),
            self.prefix.clone(),
            Arc::clone(&local),
        ));
        Ok(Fleet {
            inner: Arc::new(Inner {
                conn,
                client,
                runtime,
                prefix: self.prefix,
                timeout: self.timeout,
                on_failure: self.on_failure,
                lease_ttl: self.lease_ttl,
                revocation_ttl: self.revocation_ttl,
                channel,
                available: AtomicBool::new(true),
                local,
                listener: listener.abort_handle(),
                releases: crate::core::InFlight::default(),
                unshared: AtomicUsize::new(0),
            }),
        })
    }

    /// [`build`](Self::build), then one round trip to Redis: fails with
    /// [`FleetError::Unavailable`] if Redis does not answer within the timeout.
    pub async fn connect(self) -> Result<Fleet, FleetError> {
        let fleet = self.build()?;
        fleet.ping().await?;
        Ok(fleet)
    }
}

impl Fleet {
    /// A builder for a fleet on the Redis at `url` (`redis://[:password@]host:port[/db]`),
    /// with the defaults: prefix `"wsguard"`, timeout 250 ms, fall back to local limits when
    /// Redis is unreachable, lease TTL 30 s, revocation TTL 24 h.
    pub fn builder(url: impl Into<String>) -> FleetBuilder {
        FleetBuilder {
            url: url.into(),
            prefix: "wsguard".to_owned(),
            timeout: Duration::from_millis(250),
            on_failure: FailurePolicy::default(),
            lease_ttl: Duration::from_secs(30),
            revocation_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        struct Case {
            url: &'static str,
            shown: &'static str,
        }
        let cases = [
            Case {
                url: "redis://:hunter2@127.0.0.1:6379/0",
                shown: "redis://<redacted>@127.0.0.1:6379/0",
            },
            Case {
                url: "redis://127.0.0.1:6379",
                shown: "redis://127.0.0.1:6379",
            },
        ];
        for case in cases {
            let debug = format!("{:?}", Fleet::builder(case.url));
            assert!(debug.contains(case.shown), "{debug}");
            assert!(!debug.contains("hunter2"));
        }
    }

    #[test]
    fn build_outside_a_runtime_is_an_error_not_a_panic() {
        let error = Fleet::builder("redis://127.0.0.1:1").build().map(drop);
        assert_eq!(error, Err(FleetError::NoRuntime));
        let error = Fleet::builder("not a url").build().map(drop);
        assert_eq!(error, Err(FleetError::NoRuntime));
    }

    #[tokio::test]
    async fn a_bad_url_is_refused() {
        let error = Fleet::builder("not a url").build().map(drop);
        assert!(matches!(error, Err(FleetError::InvalidUrl(_))), "{error:?}");
    }

    #[test]
    fn durations_below_the_minimum_are_raised_to_it() {
        struct Case {
            name: &'static str,
            builder: FleetBuilder,
            read: fn(&FleetBuilder) -> Duration,
            expected: Duration,
        }
        let b = || Fleet::builder("redis://x");
        let cases = [
            Case {
                name: "zero timeout is 1 ms",
                builder: b().timeout(Duration::ZERO),
                read: |b| b.timeout,
                expected: Duration::from_millis(1),
            },
            Case {
                name: "a longer timeout is kept",
                builder: b().timeout(Duration::from_millis(200)),
                read: |b| b.timeout,
                expected: Duration::from_millis(200),
            },
            Case {
                name: "zero lease TTL is 30 ms",
                builder: b().lease_ttl(Duration::ZERO),
                read: |b| b.lease_ttl,
                expected: Duration::from_millis(30),
            },
            Case {
                name: "5 ms lease TTL is 30 ms",
                builder: b().lease_ttl(Duration::from_millis(5)),
                read: |b| b.lease_ttl,
                expected: Duration::from_millis(30),
            },
            Case {
                name: "a longer lease TTL is kept",
                builder: b().lease_ttl(Duration::from_secs(10)),
                read: |b| b.lease_ttl,
                expected: Duration::from_secs(10),
            },
            Case {
                name: "zero revocation TTL is 1 s",
                builder: b().revocation_ttl(Duration::ZERO),
                read: |b| b.revocation_ttl,
                expected: Duration::from_secs(1),
            },
            Case {
                name: "the longest revocation TTL is kept",
                builder: b().revocation_ttl(Duration::MAX),
                read: |b| b.revocation_ttl,
                expected: Duration::MAX,
            },
        ];
        for case in cases {
            assert_eq!((case.read)(&case.builder), case.expected, "{}", case.name);
        }
    }
}
