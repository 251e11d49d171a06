use std::{
    fmt,
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::Duration,
};

use tower::Layer;

use super::{
    MessageRate, RateAction, SlowConsumer, SocketPolicyService,
    policy::{Config, SocketPolicy},
    rate::IdentityRegistry,
};

/// Puts a [`SocketPolicy`] into the request extensions, for
/// [`GuardedUpgrade`](super::GuardedUpgrade) to apply to the upgraded socket.
///
/// Every setter replaces the previous value and documents its default; the defaults are
/// meant to be safe on the internet. See the [module docs](crate::socket).
///
/// A layer is configuration: the per-identity rate state is created when the layer first
/// makes a service, then shared by every service made from this layer and its clones, so an
/// identity's rate spans all the routes of one layer.
#[derive(Clone)]
#[must_use]
pub struct SocketPolicyLayer {
    config: Config,
    identities: crate::core::LazyState<Arc<IdentityRegistry>>,
}

impl Default for SocketPolicyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SocketPolicyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketPolicyLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The shortest timeout or interval of the policy: one millisecond. Shorter values, zero
/// included, are raised to it: a zero would close every socket at once or ping without
/// pause, and no setting may switch a limit off by accident.
const MIN_DURATION: Duration = Duration::from_millis(1);

impl SocketPolicyLayer {
    /// A layer with the documented defaults.
    pub fn new() -> Self {
        Self {
            config: Config::default(),
            identities: crate::core::LazyState::new(),
        }
    }

    /// The largest message a peer may send, in bytes; a bigger one closes the socket with
    /// `1009`. Default 64 KiB (axum's is 64 MiB).
    pub fn max_message_size(mut self, bytes: NonZeroUsize) -> Self {
        self.config.max_message_size = bytes.get();
        self
    }

    /// The largest frame a peer may send, in bytes; a bigger one closes the socket with
    /// `1009`. Default 64 KiB (browsers send a message as one frame).
    pub fn max_frame_size(mut self, bytes: NonZeroUsize) -> Self {
        self.config.max_frame_size = bytes.get();
        self
    }

    /// tungstenite's read buffer of each socket, in bytes: the most the protocol takes in one
    /// step. Default 1 KiB (tungstenite's is 128 KiB). It is kept (and zero-filled) for the
    /// socket's whole life, so it is most of an idle socket's memory; it does not limit
    /// speed, since the connection itself is read in 64 KiB steps into buffers lent from a
    /// per-thread pool only while data flows (see the [module docs](super)). A value of
    /// 64 KiB or more reads the connection into it directly.
    pub fn read_buffer_size(mut self, bytes: NonZeroUsize) -> Self {
        self.config.read_buffer_size = bytes.get();
        self
    }

    /// How many bytes the socket buffers before writing to the connection. Default 4 KiB
    /// (tungstenite's is 128 KiB); `0` writes every message at once.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.write_buffer_size = bytes;
        self
    }

    /// tungstenite's hard cap on its write buffer (see axum's
    /// `WebSocketUpgrade::max_write_buffer_size`). Default: unchanged (unlimited), which is
    /// safe because the driver waits for the buffer to drain before writing more; memory is
    /// bounded by the send queue.
    pub fn max_write_buffer_size(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.config.max_write_buffer_size = bytes.into();
        self
    }

    /// Messages per socket (every frame counts, pings included). Default 50 a second with a
    /// burst of 100; `None` disables.
    pub fn message_rate(mut self, limit: impl Into<Option<MessageRate>>) -> Self {
        self.config.message_rate = limit.into();
        self
    }

    /// Payload bytes per socket. Default 512 KiB a second with a burst of 1 MiB; `None`
    /// disables. The burst is raised to at least the max message size.
    pub fn byte_rate(mut self, limit: impl Into<Option<MessageRate>>) -> Self {
        self.config.byte_rate = limit.into();
        self
    }

    /// Messages per identity ([`Principal::subject`](crate::auth::Principal::subject)) across
    /// all its sockets. Default 200 a second with a burst of 400; `None` disables. Sockets
    /// without a principal are limited per socket only.
    pub fn identity_message_rate(mut self, limit: impl Into<Option<MessageRate>>) -> Self {
        self.config.identity_message_rate = limit.into();
        self
    }

    /// Payload bytes per identity across all its sockets. Default 2 MiB a second with a
    /// burst of 4 MiB; `None` disables.
    pub fn identity_byte_rate(mut self, limit: impl Into<Option<MessageRate>>) -> Self {
        self.config.identity_byte_rate = limit.into();
        self
    }

    /// What happens to a message over a rate limit. Default [`RateAction::Drop`].
    pub fn on_rate_exceeded(mut self, action: RateAction) -> Self {
        self.config.rate_action = action;
        self
    }

    /// Under [`RateAction::Drop`], close with `1008` at the `violations`-th message over a
    /// rate limit on one socket (the earlier ones are dropped and counted). Default 20;
    /// `None` never escalates.
    pub fn escalate_after(mut self, violations: impl Into<Option<NonZeroU32>>) -> Self {
        self.config.escalate_after = violations.into().map(NonZeroU32::get);
        self
    }

    /// Close with `1001` when no text or binary message arrived for this long (pings and
    /// pongs do not count: the heartbeat covers liveness). Default `None`: push-only feeds
    /// are common and the heartbeat already closes dead peers. A timeout shorter than 1 ms,
    /// zero included, counts as 1 ms.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout = timeout.into().map(|d| d.max(MIN_DURATION));
        self
    }

    /// Send a ping every `interval`, and close with `1001` if no pong answers within
    /// `timeout`. Default every 30 s, within 15 s. Either shorter than 1 ms, zero included,
    /// counts as 1 ms (a zero interval would ping without pause).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.ping_interval = Some(interval.max(MIN_DURATION));
        self.config.pong_timeout = timeout.max(MIN_DURATION);
        self
    }

    /// Sends no heartbeat pings.
    pub fn without_heartbeat(mut self) -> Self {
        self.config.ping_interval = None;
        self
    }

    /// Close with `1001` after at most this long, minus a random jitter (see
    /// [`lifetime_jitter`](Self::lifetime_jitter)) so a fleet's clients do not reconnect
    /// at once. Default `None`. A lifetime shorter than 1 ms, zero included, counts as 1 ms.
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.config.max_lifetime = lifetime.into().map(|d| d.max(MIN_DURATION));
        self
    }

    /// The random part taken off [`max_lifetime`](Self::max_lifetime), uniformly between
    /// zero and `jitter`. Default a tenth of the lifetime.
    pub fn lifetime_jitter(mut self, jitter: Duration) -> Self {
        self.config.lifetime_jitter = Some(jitter);
        self
    }

    /// The send queue of each socket: at most `messages` messages and `bytes` payload bytes
    /// (one message is always accepted into an empty queue). Default 64 messages, 1 MiB.
    pub fn send_queue(mut self, messages: NonZeroUsize, bytes: NonZeroUsize) -> Self {
        self.config.send_queue_len = messages.get();
        self.config.send_queue_bytes = bytes.get();
        self
    }

    /// What happens when the send queue is full. Default [`SlowConsumer::Close`].
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// How many received messages wait for the application. When the queue is full the
    /// socket stops reading, so TCP pushes back on the peer, for at most
    /// [`recv_stall`](Self::recv_stall); if the application still takes nothing (the handler
    /// is push-only and never calls `recv`, or is stuck), the socket reads on, so that
    /// heartbeat, idle and wire limits still hold, and drops further messages, counting them
    /// in [`SocketStats::dropped_unread`](super::SocketStats::dropped_unread), until the
    /// application takes one. A close from the peer is always delivered. Default 16.
    pub fn recv_queue(mut self, messages: NonZeroUsize) -> Self {
        self.config.recv_queue_len = messages.get();
        self
    }

    /// How long a full receive queue may stop reading before the socket reads on and drops
    /// what nobody takes (see [`recv_queue`](Self::recv_queue)). A handler that is only
    /// briefly slow loses nothing; one that takes nothing for longer cannot switch off the
    /// heartbeat and the other limits. Keep it well below the pong timeout, since a pong
    /// waiting behind unread messages is not seen until reading resumes. Default 1 s;
    /// `Duration::ZERO` drops at once. Replaces the previous value.
    pub fn recv_stall(mut self, stall: Duration) -> Self {
        self.config.recv_stall = stall;
        self
    }

    /// Frames per socket, counted on the wire as they arrive: data, continuation and control
    /// frames alike, so a peer cannot stay under the message rate by splitting messages into
    /// many (even empty) fragments. Over the limit, the socket is closed with `1008`. Default
    /// 200 a second with a burst of 400, a few times the default message rate: raise it
    /// together with [`message_rate`](Self::message_rate). Replaces the previous value.
    pub fn frame_rate(mut self, limit: MessageRate) -> Self {
        self.config.frame_rate = limit;
        self
    }

    /// The most frames one message may come in (Node's `ws` calls it `maxFragments`); one
    /// more closes the socket with `1008`. Browsers send a message as one frame, and clients
    /// that fragment use kilobyte-sized frames. Default 128. Replaces the previous value.
    pub fn max_fragments(mut self, fragments: NonZeroU32) -> Self {
        self.config.max_fragments = fragments.get();
        self
    }

    /// How long a message may take once its first byte arrived (any frame, including a
    /// control frame, counts from its first byte to its last); an unfinished message after
    /// that closes the socket with `1008`. Catches a message trickled in forever, which no
    /// size or rate limit sees. Default 10 s: a 64 KiB message needs 6.5 KB/s. Replaces the
    /// previous value.
    pub fn message_deadline(mut self, deadline: Duration) -> Self {
        self.config.message_deadline = deadline;
        self
    }

    /// How long a closing socket waits for the peer's close frame before dropping the
    /// connection. Default 2 s. A timeout shorter than 1 ms, zero included, counts as 1 ms.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout.max(MIN_DURATION);
        self
    }

    /// The policy this layer inserts, for use without the layer (for example in a
    /// `axum::Extension`).
    pub fn policy(&self) -> SocketPolicy {
        SocketPolicy::new(
            self.config.clone(),
            Arc::clone(self.identities.get_or_init(Arc::default)),
        )
    }
}

impl<S> Layer<S> for SocketPolicyLayer {
    type Service = SocketPolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SocketPolicyService::new(inner, self.policy())
    }
}
