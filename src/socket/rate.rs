//! Token buckets for the per-socket and per-identity message rates. Pure logic: every call
//! takes the current [`Instant`], so the tests drive a fake clock.

use std::{
    collections::HashMap,
    fmt,
    num::NonZeroU64,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::RateScope;

/// A sustained rate with a burst allowance, of messages, bytes or frames: the limits of
/// [`SocketPolicyLayer::message_rate`](super::SocketPolicyLayer::message_rate) and its
/// siblings.
///
/// `MessageRate::new(count, period)` allows `count` units per `period` on average and up to
/// `count` at once; [`MessageRate::with_burst`] changes the "at once" part. The argument
/// types carry the constraints, so building one cannot fail. See the
/// [module docs](crate::socket).
///
/// ```
/// use std::{num::NonZeroU64, time::Duration};
/// use wsguard::socket::MessageRate;
///
/// const PER_MINUTE: NonZeroU64 = NonZeroU64::new(120).unwrap();
/// const BURST: NonZeroU64 = NonZeroU64::new(10).unwrap();
///
/// let rate = MessageRate::new(PER_MINUTE, Duration::from_secs(60)).with_burst(BURST);
/// assert_eq!(rate.per_second_rate(), 2.0);
/// assert_eq!(rate.burst(), 10);
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct MessageRate {
    pub(crate) per_second: f64,
    pub(crate) burst: u64,
}

/// The shortest period of a [`MessageRate`]: one nanosecond, the finest a `Duration` holds.
const FINEST_PERIOD: Duration = Duration::from_nanos(1);

impl MessageRate {
    /// `count` units per `period` on average, with a burst of `count`.
    ///
    /// A zero `period` counts as one nanosecond, the finest rate a `Duration` can express
    /// (`count` units per nanosecond: in effect only the burst limits).
    #[must_use]
    pub fn new(count: NonZeroU64, period: Duration) -> Self {
        Self {
            per_second: count.get() as f64 / period.max(FINEST_PERIOD).as_secs_f64(),
            burst: count.get(),
        }
    }

    /// `count` units per second, with a burst of `count`.
    #[must_use]
    pub fn per_second(count: NonZeroU64) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// Replaces the burst: how many units may arrive at once after a quiet period.
    #[must_use]
    pub fn with_burst(mut self, burst: NonZeroU64) -> Self {
        self.burst = burst.get();
        self
    }

    /// The sustained rate, in units per second.
    pub fn per_second_rate(&self) -> f64 {
        self.per_second
    }

    /// The burst, in units.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

impl fmt::Debug for MessageRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRate")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

/// A classic token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit`, with its burst raised to at least `min_burst` (so a single
    /// allowed message always fits a byte bucket).
    pub(crate) fn new(limit: MessageRate, min_burst: u64, now: Instant) -> Self {
        let burst = limit.burst.max(min_burst) as f64;
        Self {
            per_second: limit.per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens if they are there; otherwise takes nothing and returns `false`.
    pub(crate) fn try_take(&mut self, cost: u64, now: Instant) -> bool {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
            self.last = now;
        }
        let cost = cost as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The message and byte buckets of one scope (a socket or an identity).
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Buckets {
    pub(crate) fn new(
        messages: Option<MessageRate>,
        bytes: Option<MessageRate>,
        min_byte_burst: u64,
        now: Instant,
    ) -> Self {
        Self {
            messages: messages.map(|l| TokenBucket::new(l, 1, now)),
            bytes: bytes.map(|l| TokenBucket::new(l, min_byte_burst, now)),
        }
    }

    fn is_empty(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    /// `Ok` if one message of `len` bytes fits both buckets; `Err(true)` when the message
    /// bucket refused, `Err(false)` when the byte bucket did.
    fn check(&mut self, len: u64, now: Instant) -> Result<(), bool> {
        if let Some(m) = &mut self.messages
            && !m.try_take(1, now)
        {
            return Err(true);
        }
        if let Some(b) = &mut self.bytes
            && !b.try_take(len, now)
        {
            return Err(false);
        }
        Ok(())
    }
}

/// How many live sockets an identity has, and their shared buckets.
type IdentityEntry = (usize, Arc<Mutex<Buckets>>);

/// The per-identity buckets shared by every socket of one subject, removed from the map when
/// the last such socket ends, so the map holds one entry per identity with a live socket.
#[derive(Default)]
pub(crate) struct IdentityRegistry {
    map: Mutex<HashMap<Arc<str>, IdentityEntry>>,
}

impl fmt::Debug for IdentityRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityRegistry")
            .field("identities", &self.len())
            .finish()
    }
}

impl IdentityRegistry {
    /// Registers one more socket of `subject`; the returned handle unregisters it on drop.
    pub(crate) fn join(
        self: &Arc<Self>,
        subject: Arc<str>,
        make: impl FnOnce() -> Buckets,
    ) -> IdentityHandle {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(subject.clone())
            .or_insert_with(|| (0, Arc::new(Mutex::new(make()))));
        entry.0 += 1;
        IdentityHandle {
            registry: self.clone(),
            subject,
            buckets: entry.1.clone(),
        }
    }

    /// How many identities currently have a live socket.
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One socket's membership in its identity's shared buckets.
pub(crate) struct IdentityHandle {
    registry: Arc<IdentityRegistry>,
    subject: Arc<str>,
    buckets: Arc<Mutex<Buckets>>,
}

impl fmt::Debug for IdentityHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityHandle").finish_non_exhaustive()
    }
}

impl Drop for IdentityHandle {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(&self.subject) {
            entry.0 -= 1;
            if entry.0 == 0 {
                map.remove(&self.subject);
            }
        }
    }
}

/// Everything one socket checks a received message against.
#[derive(Debug)]
pub(crate) struct RateGate {
    socket: Buckets,
    identity: Option<IdentityHandle>,
}

impl RateGate {
    pub(crate) fn new(socket: Buckets, identity: Option<IdentityHandle>) -> Self {
        Self { socket, identity }
    }

    /// Whether any limit applies (lets the driver skip reading the clock).
    pub(crate) fn is_active(&self) -> bool {
        !self.socket.is_empty() || self.identity.is_some()
    }

    /// Checks one received message of `len` bytes.
    pub(crate) fn check(&mut self, len: u64, now: Instant) -> Result<(), RateScope> {
        self.socket.check(len, now).map_err(|messages| {
            if messages {
                RateScope::SocketMessages
            } else {
                RateScope::SocketBytes
            }
        })?;
        if let Some(identity) = &self.identity {
            let mut buckets = identity
                .buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            buckets.check(len, now).map_err(|messages| {
                if messages {
                    RateScope::IdentityMessages
                } else {
                    RateScope::IdentityBytes
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::nz;

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constructors_cannot_fail_and_a_zero_period_is_the_finest() {
        struct Case {
            name: &'static str,
            rate: MessageRate,
            per_second: f64,
            burst: u64,
        }
        let cases = [
            Case {
                name: "per minute",
                rate: MessageRate::new(nz(120), Duration::from_secs(60)),
                per_second: 2.0,
                burst: 120,
            },
            Case {
                name: "per second with a burst",
                rate: MessageRate::per_second(nz(10)).with_burst(nz(3)),
                per_second: 10.0,
                burst: 3,
            },
            Case {
                name: "zero period counts as one nanosecond",
                rate: MessageRate::new(nz(1), Duration::ZERO),
                per_second: 1.0 / 1e-9,
                burst: 1,
            },
            Case {
                name: "the largest count per zero period stays finite",
                rate: MessageRate::new(nz(u64::MAX), Duration::ZERO),
                per_second: u64::MAX as f64 / 1e-9,
                burst: u64::MAX,
            },
        ];
        for case in cases {
            assert_eq!(
                case.rate.per_second_rate(),
                case.per_second,
                "{}",
                case.name
            );
            assert!(case.rate.per_second_rate().is_finite(), "{}", case.name);
            assert_eq!(case.rate.burst(), case.burst, "{}", case.name);
        }
    }

    #[test]
    fn a_zero_period_rate_still_limits_by_its_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(MessageRate::new(nz(2), Duration::ZERO), 1, t0);
        assert!(bucket.try_take(1, t0));
        assert!(bucket.try_take(1, t0));
        assert!(!bucket.try_take(1, t0), "the burst is spent at one instant");
        assert!(bucket.try_take(1, t0 + MS), "refilled right after");
    }

    #[test]
    fn bucket_allows_burst_then_refills_with_time() {
        let t0 = Instant::now();
        let limit = MessageRate::per_second(nz(10)).with_burst(nz(3));
        let mut bucket = TokenBucket::new(limit, 1, t0);
        struct Step {
            name: &'static str,
            at: Duration,
            allowed: bool,
        }
        let steps = [
            Step {
                name: "burst 1",
                at: Duration::ZERO,
                allowed: true,
            },
            Step {
                name: "burst 2",
                at: Duration::ZERO,
                allowed: true,
            },
            Step {
                name: "burst 3",
                at: Duration::ZERO,
                allowed: true,
            },
            Step {
                name: "burst exhausted",
                at: Duration::ZERO,
                allowed: false,
            },
            Step {
                name: "too early for a token",
                at: 50 * MS,
                allowed: false,
            },
            Step {
                name: "one token after 100ms",
                at: 100 * MS,
                allowed: true,
            },
            Step {
                name: "spent again",
                at: 100 * MS,
                allowed: false,
            },
            Step {
                name: "a long pause refills only the burst",
                at: 100 * SEC,
                allowed: true,
            },
            Step {
                name: "second of burst",
                at: 100 * SEC,
                allowed: true,
            },
            Step {
                name: "third of burst",
                at: 100 * SEC,
                allowed: true,
            },
            Step {
                name: "burst cap holds",
                at: 100 * SEC,
                allowed: false,
            },
        ];
        for step in steps {
            assert_eq!(
                bucket.try_take(1, t0 + step.at),
                step.allowed,
                "{}",
                step.name
            );
        }
    }

    #[test]
    fn clock_going_backwards_does_not_add_tokens() {
        let t0 = Instant::now() + SEC;
        let mut bucket = TokenBucket::new(MessageRate::per_second(nz(1)), 1, t0);
        assert!(bucket.try_take(1, t0));
        assert!(!bucket.try_take(1, t0 - SEC));
        assert!(!bucket.try_take(1, t0));
    }

    #[test]
    fn byte_bucket_burst_is_at_least_one_message() {
        let t0 = Instant::now();
        let limit = MessageRate::per_second(nz(10));
        let mut small = TokenBucket::new(limit, 1, t0);
        assert!(!small.try_take(100, t0), "100 bytes exceed a 10 byte burst");
        let mut raised = TokenBucket::new(limit, 100, t0);
        assert!(
            raised.try_take(100, t0),
            "burst raised to the max message size"
        );
        assert!(!raised.try_take(1, t0));
    }

    #[test]
    fn gate_reports_which_limit_refused() {
        let t0 = Instant::now();
        let registry = Arc::new(IdentityRegistry::default());
        let per_hour = |n| MessageRate::new(nz(n), Duration::from_secs(3600));
        let mut gate = RateGate::new(
            Buckets::new(Some(per_hour(3)), Some(per_hour(100)), 1, t0),
            Some(registry.join("alice".into(), || {
                Buckets::new(Some(per_hour(2)), None, 1, t0)
            })),
        );
        assert!(gate.is_active());
        assert_eq!(gate.check(10, t0), Ok(()));
        assert_eq!(gate.check(10, t0), Ok(()));
        assert_eq!(gate.check(10, t0), Err(RateScope::IdentityMessages));
        assert_eq!(gate.check(10, t0), Err(RateScope::SocketMessages));

        let mut bytes = RateGate::new(Buckets::new(None, Some(per_hour(15)), 1, t0), None);
        assert_eq!(bytes.check(10, t0), Ok(()));
        assert_eq!(bytes.check(10, t0), Err(RateScope::SocketBytes));
        let none = RateGate::new(Buckets::default(), None);
        assert!(!none.is_active());
    }

    #[test]
    fn identity_buckets_are_shared_and_removed_with_the_last_socket() {
        let t0 = Instant::now();
        let registry = Arc::new(IdentityRegistry::default());
        let limit = MessageRate::new(nz(3), Duration::from_secs(3600));
        let make = || Buckets::new(Some(limit), None, 1, t0);
        let mut a = RateGate::new(Buckets::default(), Some(registry.join("bob".into(), make)));
        let mut b = RateGate::new(Buckets::default(), Some(registry.join("bob".into(), make)));
        let mut other = RateGate::new(
            Buckets::default(),
            Some(registry.join("carol".into(), make)),
        );
        assert_eq!(registry.len(), 2);
        assert_eq!(a.check(1, t0), Ok(()));
        assert_eq!(b.check(1, t0), Ok(()));
        assert_eq!(a.check(1, t0), Ok(()));
        assert_eq!(b.check(1, t0), Err(RateScope::IdentityMessages));
        assert_eq!(
            other.check(1, t0),
            Ok(()),
            "another identity has its own budget"
        );
        drop(a);
        assert_eq!(registry.len(), 2, "bob still has a socket");
        drop(b);
        assert_eq!(
            registry.len(),
            1,
            "bob's entry is gone with his last socket"
        );
        drop(other);
        assert_eq!(registry.len(), 0);
        let mut fresh = RateGate::new(Buckets::default(), Some(registry.join("bob".into(), make)));
        assert_eq!(fresh.check(1, t0), Ok(()), "a new entry starts full");
    }
}
