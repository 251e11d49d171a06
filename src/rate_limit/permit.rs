use std::{fmt, sync::Arc};

/// Quota slots held for the life of one upgraded socket, stored in the request extensions by
/// the quota layer ([`ConnectionQuotaLayer`](super::ConnectionQuotaLayer)). The slots are
/// released when the last clone is dropped, so the socket (or the handler) must keep it
/// alive: `wsguard::socket::GuardedUpgrade` takes it for you; a plain axum handler takes
/// `Extension<ConnectionPermit>` and moves it into its `on_upgrade` closure.
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

    /// How many slots this permit holds.
    pub fn slots(&self) -> usize {
        self.held.len()
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("slots", &self.held.len())
            .finish()
    }
}
