use std::{fmt, sync::Arc};

use crate::core::InFlight;

/// Quota slots held for the life of one upgraded socket, stored in the request extensions by
/// the quota layer ([`ConnectionQuotaLayer`](super::ConnectionQuotaLayer)). The slots are
/// released when the last clone is dropped, so the socket (or the handler) must keep it
/// alive: `wsguard::socket::GuardedUpgrade` takes it for you; a plain axum handler takes
/// `Extension<ConnectionPermit>` and moves it into its `on_upgrade` closure.
#[derive(Clone, Default)]
pub struct ConnectionPermit {
    held: Vec<Arc<dyn Send + Sync>>,
    /// What giving the slots back starts (a fleet lease's release), for a drain to wait on.
    in_flight: Vec<InFlight>,
}

impl ConnectionPermit {
    /// Adds `other`'s slots to this permit (several quota layers may stack).
    pub fn merge(&mut self, other: ConnectionPermit) {
        self.held.extend(other.held);
        for in_flight in other.in_flight {
            self.note_release(in_flight);
        }
    }

    /// Says that dropping the slots starts work counted by `in_flight`, which a
    /// [`Drain`](crate::socket::Drain) waits for before it returns.
    pub(crate) fn note_release(&mut self, in_flight: InFlight) {
        if !self.in_flight.iter().any(|known| known.same(&in_flight)) {
            self.in_flight.push(in_flight);
        }
    }

    /// The work that dropping the slots starts.
    pub(crate) fn releases(&self) -> &[InFlight] {
        &self.in_flight
    }

    /// A permit holding `slot` until the permit is dropped.
    pub fn holding(slot: impl Send + Sync + 'static) -> Self {
        Self {
            held: vec![Arc::new(slot)],
            in_flight: Vec::new(),
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
