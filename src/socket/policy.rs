//! The resolved configuration shared by every socket of one layer.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use super::{MessageRate, RateAction, SlowConsumer, rate::IdentityRegistry, wire::WireLimits};

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) max_write_buffer_size: Option<usize>,
    pub(crate) message_rate: Option<MessageRate>,
    pub(crate) byte_rate: Option<MessageRate>,
    pub(crate) identity_message_rate: Option<MessageRate>,
    pub(crate) identity_byte_rate: Option<MessageRate>,
    pub(crate) rate_action: RateAction,
    pub(crate) escalate_after: Option<u32>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: Option<Duration>,
    pub(crate) send_queue_len: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) recv_queue_len: usize,
    pub(crate) recv_stall: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) frame_rate: MessageRate,
    pub(crate) max_fragments: u32,
    pub(crate) message_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            read_buffer_size: 1024,
            write_buffer_size: 4 * 1024,
            max_write_buffer_size: None,
            message_rate: Some(MessageRate {
                per_second: 50.0,
                burst: 100,
            }),
            byte_rate: Some(MessageRate {
                per_second: 512.0 * 1024.0,
                burst: 1024 * 1024,
            }),
            identity_message_rate: Some(MessageRate {
                per_second: 200.0,
                burst: 400,
            }),
            identity_byte_rate: Some(MessageRate {
                per_second: 2.0 * 1024.0 * 1024.0,
                burst: 4 * 1024 * 1024,
            }),
            rate_action: RateAction::Drop,
            escalate_after: Some(20),
            idle_timeout: None,
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(15),
            max_lifetime: None,
            lifetime_jitter: None,
            send_queue_len: 64,
            send_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumer::Close,
            recv_queue_len: 16,
            recv_stall: Duration::from_secs(1),
            close_timeout: Duration::from_secs(2),
            // A few times the message rate's burst: room for pongs and some fragmentation.
            frame_rate: MessageRate {
                per_second: 200.0,
                burst: 400,
            },
            max_fragments: 128,
            message_deadline: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The limits the wire adapter counts.
    pub(crate) fn wire(&self) -> WireLimits {
        WireLimits {
            frame_rate: self.frame_rate,
            max_fragments: self.max_fragments,
        }
    }

    /// The most a lingering close reads and drops once the protocol has given up on the
    /// connection: a message of the largest size in flight, and at least 1 MiB.
    pub(crate) fn drain_bytes(&self) -> u64 {
        (self.max_message_size as u64).max(1 << 20)
    }

    /// The lifetime of one socket: the maximum minus a random part of the jitter (by default a
    /// tenth of the maximum), so sockets opened together do not all close together.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        let max = self.max_lifetime?;
        let jitter = self.lifetime_jitter.unwrap_or(max / 10).min(max);
        let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Some(max);
        }
        let random = getrandom::u64().unwrap_or(0) % (nanos + 1);
        Some(max - Duration::from_nanos(random))
    }
}

pub(crate) struct PolicyInner {
    pub(crate) config: Config,
    pub(crate) identities: Arc<IdentityRegistry>,
}

/// The live-socket limits of a route, put in the request extensions by
/// [`SocketPolicyLayer`](super::SocketPolicyLayer) and applied by
/// [`GuardedUpgrade`](super::GuardedUpgrade). Cheap to clone.
///
/// Every `SocketPolicy` made by one layer (and its clones) shares the per-identity rate
/// state, so an identity's message rate spans all its sockets. See the
/// [module docs](crate::socket).
#[derive(Clone)]
pub struct SocketPolicy {
    pub(crate) inner: Arc<PolicyInner>,
}

impl SocketPolicy {
    pub(crate) fn new(config: Config, identities: Arc<IdentityRegistry>) -> Self {
        Self {
            inner: Arc::new(PolicyInner { config, identities }),
        }
    }

    /// The policy used when [`GuardedUpgrade`](super::GuardedUpgrade) finds no layer: the
    /// documented defaults, with one process-wide per-identity state.
    pub(crate) fn fallback() -> Self {
        static FALLBACK: OnceLock<SocketPolicy> = OnceLock::new();
        FALLBACK
            .get_or_init(|| Self::new(Config::default(), Arc::default()))
            .clone()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The largest message a peer may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.inner.config.max_message_size
    }

    /// How many identities currently have at least one live socket under this policy (the
    /// size of the per-identity rate state).
    pub fn tracked_identities(&self) -> usize {
        self.inner.identities.len()
    }
}

impl fmt::Debug for SocketPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketPolicy")
            .field("config", &self.inner.config)
            .field("tracked_identities", &self.tracked_identities())
            .finish()
    }
}
