//! The crate's metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): one small function or handle per emit point, each compiled to nothing without
//! the feature. The names, types and labels are documented in the crate docs (`# Metrics`);
//! every label value is one of a fixed set of `&'static str` (never an address, identity,
//! token or message content).
//!
//! The per-message counters are registered once per socket ([`SocketMetrics`]) and then
//! incremented through their handles: an atomic add, no lookup and no lock per message.

#![cfg_attr(not(feature = "metrics"), allow(dead_code, unused_imports))]

use axum::extract::ws::Message;

#[cfg(feature = "redis")]
use crate::fleet::FleetError;
use crate::{Rejection, rate_limit::RateLimitError};

pub(crate) const HANDSHAKES: &str = "wsguard_handshakes_total";
pub(crate) const SOCKETS_OPEN: &str = "wsguard_sockets_open";
pub(crate) const SOCKET_CLOSES: &str = "wsguard_socket_closes_total";
pub(crate) const MESSAGES: &str = "wsguard_messages_total";
pub(crate) const BYTES: &str = "wsguard_bytes_total";
pub(crate) const DROPPED: &str = "wsguard_dropped_messages_total";
pub(crate) const SLOW_CONSUMER: &str = "wsguard_slow_consumer_actions_total";
pub(crate) const QUOTA_ACTIVE: &str = "wsguard_quota_active";
pub(crate) const RATE_LIMIT_KEYS: &str = "wsguard_rate_limit_keys";
#[cfg(feature = "redis")]
pub(crate) const FLEET_ERRORS: &str = "wsguard_fleet_errors_total";
#[cfg(feature = "redis")]
pub(crate) const FLEET_FALLBACKS: &str = "wsguard_fleet_fallbacks_total";
#[cfg(feature = "redis")]
pub(crate) const FLEET_AVAILABLE: &str = "wsguard_fleet_available";

/// The `layer` and `cause` labels of a refusal.
pub(crate) fn rejection_labels(rejection: &Rejection) -> (&'static str, &'static str) {
    match rejection {
        Rejection::Origin(e) => ("origin", e.as_str()),
        Rejection::ClientIp(e) => ("client_ip", e.as_str()),
        Rejection::RateLimit(e) => {
            let cause = match e {
                RateLimitError::TooManyHandshakes { .. } => "too_many_handshakes",
                RateLimitError::TooManyFailedAuth { .. } => "too_many_failed_auth",
                RateLimitError::AuthAttemptsInFlight { .. } => "auth_attempts_in_flight",
                RateLimitError::ClientIpQuota { .. } => "client_ip_quota",
                RateLimitError::IdentityQuota { .. } => "identity_quota",
                RateLimitError::GlobalQuota { .. } => "global_quota",
                RateLimitError::MissingClientIp => "missing_client_ip",
            };
            ("rate_limit", cause)
        }
        Rejection::Auth(e) => ("auth", e.as_str()),
        Rejection::Revoke(e) => ("revoke", e.as_str()),
        Rejection::Drain(_) => ("drain", "draining"),
        #[cfg(feature = "redis")]
        Rejection::Fleet(e) => ("fleet", e.as_str()),
    }
}

/// A request refused by a layer: `wsguard_handshakes_total{outcome="refused", layer, cause}`.
#[inline]
pub(crate) fn handshake_refused(rejection: &Rejection) {
    #[cfg(feature = "metrics")]
    {
        let (layer, cause) = rejection_labels(rejection);
        metrics::counter!(HANDSHAKES, "outcome" => "refused", "layer" => layer, "cause" => cause)
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = rejection;
}

/// A handshake answered with an upgrade: `wsguard_handshakes_total{outcome="accepted"}`.
#[inline]
pub(crate) fn handshake_accepted() {
    #[cfg(feature = "metrics")]
    metrics::counter!(HANDSHAKES, "outcome" => "accepted").increment(1);
}

/// A guarded socket ended: `wsguard_socket_closes_total{cause}`, counted once per socket by
/// what ended it first: a policy close's [`crate::socket::CloseCause::as_str`] (a drain or a close signal
/// included), or `peer`, `application`, `protocol_error`, `connection_lost`.
#[inline]
pub(crate) fn socket_closed(cause: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(SOCKET_CLOSES, "cause" => cause).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = cause;
}

/// Received messages dropped: `wsguard_dropped_messages_total{cause}`, `cause` a rate scope
/// ([`CloseCause::as_str`]) or `receive_queue_full`; outgoing ones dropped for a slow
/// consumer count as `slow_consumer`.
#[inline]
pub(crate) fn dropped(cause: &'static str, count: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(DROPPED, "cause" => cause).increment(count);
    #[cfg(not(feature = "metrics"))]
    let _ = (cause, count);
}

/// A slow-consumer action on the send queue: `wsguard_slow_consumer_actions_total{action}`
/// with `action` `conflated`, `dropped_oldest` (messages) or `closed` (sockets).
#[inline]
pub(crate) fn slow_consumer(action: &'static str, count: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(SLOW_CONSUMER, "action" => action).increment(count);
    #[cfg(not(feature = "metrics"))]
    let _ = (action, count);
}

/// A fleet command that failed: `wsguard_fleet_errors_total{op, error}`.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_error(op: &'static str, error: &FleetError) {
    #[cfg(feature = "metrics")]
    metrics::counter!(FLEET_ERRORS, "op" => op, "error" => error.as_str()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (op, error);
}

/// Whether Redis answered the last fleet command: `wsguard_fleet_available` 1 or 0.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_available(available: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(FLEET_AVAILABLE).set(if available { 1.0 } else { 0.0 });
    #[cfg(not(feature = "metrics"))]
    let _ = available;
}

/// A handshake decided by the local fallback: `wsguard_fleet_fallbacks_total{layer}`.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_fallback(layer: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(FLEET_FALLBACKS, "layer" => layer).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = layer;
}

/// One quota slot held (`wsguard_quota_active{backend}` up by one) until dropped.
#[derive(Debug)]
pub(crate) struct QuotaHeld {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl QuotaHeld {
    /// `backend`: `local` or `fleet`.
    pub(crate) fn new(backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let gauge = metrics::gauge!(QUOTA_ACTIVE, "backend" => backend);
            gauge.increment(1.0);
            Self { gauge }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = backend;
            Self {}
        }
    }
}

impl Drop for QuotaHeld {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

/// The keys one limiter holds, reported at each prune: `wsguard_rate_limit_keys{layer}` moves
/// by the change since this limiter's last report, so the gauge is the sum over every
/// limiter with that label; a dropped limiter takes its keys back out.
#[derive(Debug)]
pub(crate) struct TrackedKeys {
    /// `rate_limit` or `throttle`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    layer: &'static str,
    #[cfg(feature = "metrics")]
    reported: std::sync::atomic::AtomicUsize,
}

impl TrackedKeys {
    pub(crate) fn new(layer: &'static str) -> Self {
        Self {
            layer,
            #[cfg(feature = "metrics")]
            reported: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// `keys` are held now.
    #[inline]
    pub(crate) fn report(&self, keys: usize) {
        #[cfg(feature = "metrics")]
        {
            let before = self
                .reported
                .swap(keys, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!(RATE_LIMIT_KEYS, "layer" => self.layer)
                .increment(keys as f64 - before as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = keys;
    }
}

impl Drop for TrackedKeys {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        {
            let reported = *self.reported.get_mut();
            if reported > 0 {
                metrics::gauge!(RATE_LIMIT_KEYS, "layer" => self.layer).decrement(reported as f64);
            }
        }
    }
}

/// One socket's handles: `wsguard_sockets_open` up by one while it lives, and the
/// message and byte counters, registered once.
pub(crate) struct SocketMetrics {
    #[cfg(feature = "metrics")]
    handles: Handles,
}

#[cfg(feature = "metrics")]
struct Handles {
    open: metrics::Gauge,
    messages_in: metrics::Counter,
    messages_out: metrics::Counter,
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
}

impl SocketMetrics {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            let open = metrics::gauge!(SOCKETS_OPEN);
            open.increment(1.0);
            Self {
                handles: Handles {
                    open,
                    messages_in: metrics::counter!(MESSAGES, "direction" => "in"),
                    messages_out: metrics::counter!(MESSAGES, "direction" => "out"),
                    bytes_in: metrics::counter!(BYTES, "direction" => "in"),
                    bytes_out: metrics::counter!(BYTES, "direction" => "out"),
                },
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// A message from the peer handed to the application (text and binary only).
    #[inline]
    pub(crate) fn message_in(&self, msg: &Message) {
        #[cfg(feature = "metrics")]
        if let Some(len) = data_len(msg) {
            self.handles.messages_in.increment(1);
            self.handles.bytes_in.increment(len);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = msg;
    }

    /// A message of the application written to the peer (text and binary only).
    #[inline]
    pub(crate) fn message_out(&self, msg: &Message) {
        #[cfg(feature = "metrics")]
        if let Some(len) = data_len(msg) {
            self.handles.messages_out.increment(1);
            self.handles.bytes_out.increment(len);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = msg;
    }
}

#[cfg(feature = "metrics")]
fn data_len(msg: &Message) -> Option<u64> {
    match msg {
        Message::Text(text) => Some(text.len() as u64),
        Message::Binary(bytes) => Some(bytes.len() as u64),
        _ => None,
    }
}

impl Drop for SocketMetrics {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.handles.open.decrement(1.0);
    }
}
