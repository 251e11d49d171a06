//! [`CloseSignal`]: closing a guarded socket from outside its task (revocation, drain).

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use super::{
    CloseCause,
    guarded::{CloseRequest, Shared},
};

#[derive(Default)]
struct SignalState {
    /// The close asked for, delivered to the socket once it is attached.
    requested: Option<CloseRequest>,
    socket: Option<Weak<Shared>>,
}

/// A handle that closes one guarded socket from anywhere: with `1008`
/// ([`CloseCause::Revoked`]) when its credential is revoked, or (used by
/// [`Drain`](super::Drain)) with `1001` when the server shuts down.
///
/// A layer in front of the handler puts a `CloseSignal` into the request extensions and
/// keeps a clone; [`GuardedUpgrade`](super::GuardedUpgrade) takes it and attaches it to the
/// socket. [`revoke`](Self::revoke) then closes the socket (if it is open), or makes it
/// close as soon as it opens (if the handshake is still in flight). Revoking a socket that
/// has ended does nothing. Clones control the same socket. `wsguard::fleet` uses it to close
/// sockets on every instance.
///
/// ```
/// use wsguard::socket::CloseSignal;
///
/// let signal = CloseSignal::new();
/// let for_the_request = signal.clone(); // request.extensions_mut().insert(for_the_request)
/// signal.revoke();
/// assert!(for_the_request.is_revoked());
/// ```
#[derive(Clone, Default)]
pub struct CloseSignal {
    state: Arc<Mutex<SignalState>>,
}

impl CloseSignal {
    /// A signal not attached to any socket yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the socket with `1008` and the reason `revoked`. Idempotent.
    pub fn revoke(&self) {
        self.close(CloseRequest::new(CloseCause::Revoked));
    }

    /// Whether [`revoke`](Self::revoke) was called.
    pub fn is_revoked(&self) -> bool {
        self.lock()
            .requested
            .as_ref()
            .is_some_and(|r| r.cause == CloseCause::Revoked)
    }

    /// Closes the socket as `request` says, now or as soon as it is attached. The first
    /// request wins.
    pub(crate) fn close(&self, request: CloseRequest) {
        let mut state = self.lock();
        if state.requested.is_none() {
            state.requested = Some(request);
        }
        let socket = state.socket.as_ref().and_then(Weak::upgrade);
        let requested = state.requested.clone();
        drop(state);
        if let (Some(shared), Some(request)) = (socket, requested) {
            shared.request_close(request);
        }
    }

    /// Connects the signal to a socket that just started.
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let mut state = self.lock();
        state.socket = Some(Arc::downgrade(shared));
        let requested = state.requested.clone();
        drop(state);
        if let Some(request) = requested {
            shared.request_close(request);
        }
    }
}

impl fmt::Debug for CloseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let revoked = state
            .requested
            .as_ref()
            .is_some_and(|r| r.cause == CloseCause::Revoked);
        f.debug_struct("CloseSignal")
            .field("revoked", &revoked)
            .field(
                "closing",
                &state.requested.as_ref().map(|r| r.cause.as_str()),
            )
            .field(
                "attached",
                &state.socket.as_ref().is_some_and(|w| w.strong_count() > 0),
            )
            .finish()
    }
}
