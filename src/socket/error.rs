//! Close causes, policy choices and error types of the socket policy.

use std::fmt;

use super::policy::Config;

/// Which rate limit a peer exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateScope {
    /// Messages per second on this socket.
    SocketMessages,
    /// Bytes per second on this socket.
    SocketBytes,
    /// Messages per second across all sockets of the identity.
    IdentityMessages,
    /// Bytes per second across all sockets of the identity.
    IdentityBytes,
}

/// Why the policy closed a socket. Each cause has a fixed close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCause {
    /// A message or frame exceeded the maximum size: `1009`.
    MessageTooBig,
    /// A rate limit was exceeded (with [`RateAction::Close`], or after the escalation
    /// threshold of dropped messages): `1008`.
    RateLimited(RateScope),
    /// No message arrived within the idle timeout: `1001`.
    Idle,
    /// A heartbeat ping went unanswered: `1001`.
    HeartbeatTimeout,
    /// The credential recorded by the authenticator expired: `1008`.
    CredentialExpired,
    /// The socket reached its maximum lifetime: `1001`.
    LifetimeElapsed,
    /// The peer read too slowly and the send queue overflowed: `1013`.
    SlowConsumer,
    /// The socket's credential or identity was revoked through a
    /// [`CloseSignal`](super::CloseSignal): `1008`.
    Revoked,
    /// The peer sent frames (data, continuation or control, counted on the wire) faster than
    /// the frame rate allows: `1008`.
    FrameRate,
    /// One message came in more fragments than allowed: `1008`.
    TooManyFragments,
    /// A message (or frame) was started and not finished within the message deadline: `1008`.
    MessageDeadline,
    /// The server is shutting down: a [`Drain`](super::Drain) closed the socket: `1001`,
    /// with a reconnect hint in the reason if the drain gives one.
    Shutdown,
}

impl CloseCause {
    /// The WebSocket close code sent to the peer.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::MessageTooBig => 1009,
            Self::RateLimited(_)
            | Self::CredentialExpired
            | Self::Revoked
            | Self::FrameRate
            | Self::TooManyFragments
            | Self::MessageDeadline => 1008,
            Self::Idle | Self::HeartbeatTimeout | Self::LifetimeElapsed | Self::Shutdown => 1001,
            Self::SlowConsumer => 1013,
        }
    }

    /// A stable snake_case name, used as the `cause` field of log events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MessageTooBig => "message_too_big",
            Self::RateLimited(RateScope::SocketMessages) => "socket_message_rate",
            Self::RateLimited(RateScope::SocketBytes) => "socket_byte_rate",
            Self::RateLimited(RateScope::IdentityMessages) => "identity_message_rate",
            Self::RateLimited(RateScope::IdentityBytes) => "identity_byte_rate",
            Self::Idle => "idle",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::CredentialExpired => "credential_expired",
            Self::LifetimeElapsed => "lifetime",
            Self::SlowConsumer => "slow_consumer",
            Self::Revoked => "revoked",
            Self::FrameRate => "frame_rate",
            Self::TooManyFragments => "fragments",
            Self::MessageDeadline => "message_deadline",
            Self::Shutdown => "shutdown",
        }
    }

    /// The short reason text of the close frame.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::MessageTooBig => "message too big",
            Self::RateLimited(_) => "rate limit exceeded",
            Self::Idle => "idle timeout",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::CredentialExpired => "credential expired",
            Self::LifetimeElapsed => "maximum lifetime reached",
            Self::SlowConsumer => "reading too slowly",
            Self::Revoked => "revoked",
            Self::FrameRate => "frame rate exceeded",
            Self::TooManyFragments => "too many fragments",
            Self::MessageDeadline => "message not finished in time",
            Self::Shutdown => super::drain::SHUTDOWN_REASON,
        }
    }

    /// The configured limit that was hit, for the `limit` field of log events.
    pub(crate) fn limit(&self, cfg: &Config) -> String {
        let rate = |r: Option<super::MessageRate>, unit: &str| match r {
            Some(r) => format!("{} {unit}/s burst {}", r.per_second, r.burst),
            None => "none".to_owned(),
        };
        match self {
            Self::MessageTooBig => format!("{} bytes", cfg.max_message_size),
            Self::RateLimited(RateScope::SocketMessages) => rate(cfg.message_rate, "msg"),
            Self::RateLimited(RateScope::SocketBytes) => rate(cfg.byte_rate, "bytes"),
            Self::RateLimited(RateScope::IdentityMessages) => {
                rate(cfg.identity_message_rate, "msg")
            }
            Self::RateLimited(RateScope::IdentityBytes) => rate(cfg.identity_byte_rate, "bytes"),
            Self::Idle => format!("{:?}", cfg.idle_timeout.unwrap_or_default()),
            Self::HeartbeatTimeout => format!("{:?}", cfg.pong_timeout),
            Self::CredentialExpired => "credential expiry".to_owned(),
            Self::LifetimeElapsed => format!("{:?}", cfg.max_lifetime.unwrap_or_default()),
            Self::Revoked => "revocation".to_owned(),
            Self::FrameRate => rate(Some(cfg.frame_rate), "frames"),
            Self::TooManyFragments => format!("{} fragments", cfg.max_fragments),
            Self::MessageDeadline => format!("{:?}", cfg.message_deadline),
            Self::Shutdown => "drain".to_owned(),
            Self::SlowConsumer => format!(
                "{} messages / {} bytes queued",
                cfg.send_queue_len, cfg.send_queue_bytes
            ),
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// What happens to a received message over a rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RateAction {
    /// Drop the message and count it (see [`SocketStats`]); the socket stays open until the
    /// escalation threshold, if any, is reached. The default.
    #[default]
    Drop,
    /// Close the socket with `1008`.
    Close,
}

/// What happens when the send queue is full because the peer reads too slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close the socket with `1013` (try again later) and fail the send. The default.
    #[default]
    Close,
    /// Drop the oldest queued messages to make room, counting them.
    DropOldest,
    /// Keep the latest message per key once the consumer falls behind. While the queue has
    /// room every message is queued, so a reader that keeps up sees each one. When it is full,
    /// a message sent with [`send_keyed`](super::GuardedSocket::send_keyed) replaces the
    /// newest queued message with the same key, and queued messages superseded by a newer one
    /// of their key are dropped to make room for others. If the queue is still full (more
    /// distinct keys than it holds), close with `1013`: size the queue for the number of keys.
    Conflate,
}

/// Counters of one socket, from [`GuardedSocket::stats`](super::GuardedSocket::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// Messages delivered to the application.
    pub received: u64,
    /// Received messages dropped by a rate limit.
    pub dropped_incoming: u64,
    /// Received messages dropped because the receive queue was full: the application was not
    /// calling [`recv`](super::GuardedSocket::recv) (a push-only handler) or fell behind.
    pub dropped_unread: u64,
    /// Queued messages dropped by [`SlowConsumer::DropOldest`].
    pub dropped_outgoing: u64,
    /// Queued messages superseded by a newer one with the same key (dropped or replaced).
    pub conflated: u64,
    /// Messages handed to the socket.
    pub sent: u64,
    /// Messages waiting in the send queue now.
    pub queued: usize,
}

/// Why a message could not be queued for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closing or closed; `cause` says which limit closed it, if the policy did.
    Closed {
        /// The policy's close cause, if any.
        cause: Option<CloseCause>,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { cause: Some(cause) } => write!(f, "socket closed: {cause}"),
            Self::Closed { cause: None } => f.write_str("socket closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why [`GuardedSocket::refresh_credential`](super::GuardedSocket::refresh_credential)
/// refused a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshError {
    /// The socket has no principal to refresh.
    NoPrincipal,
    /// The new credential names another subject.
    SubjectMismatch,
    /// The policy already closed the socket.
    Closed,
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoPrincipal => "socket has no principal",
            Self::SubjectMismatch => "refreshed credential names another subject",
            Self::Closed => "socket already closed",
        })
    }
}

impl std::error::Error for RefreshError {}
