//! Handshake rate limits and concurrent-socket quotas.

use std::{fmt, sync::Arc};

/// Quota slots held for the life of one upgraded socket, stored in the request extensions by
/// the quota layer. The slots are released when the last clone is dropped, so the socket (or
/// the handler) must keep it alive: `wsguard::socket::GuardedUpgrade` takes it for you.
#[derive(Clone, Default)]
pub struct ConnectionPermit {
    held: Vec<Arc<dyn Send + Sync>>,
}

impl ConnectionPermit {
    /// Adds `other`'s slots to this permit (several quota layers may stack).
    pub fn merge(&mut self, other: ConnectionPermit) {
        self.held.extend(other.held);
    }

    /// A permit holding `slot` until the permit is dropped.
    pub fn holding(slot: impl Send + Sync + 'static) -> Self {
        Self {
            held: vec![Arc::new(slot)],
        }
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("slots", &self.held.len())
            .finish()
    }
}
