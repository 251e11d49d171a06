//! [`CloseSignal`]: closing a guarded socket from outside its task (revocation).

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use super::{CloseCause, guarded::Shared};

#[derive(Default)]
struct SignalState {
    revoked: bool,
    socket: Option<Weak<Shared>>,
}

/// A handle that closes one guarded socket with `1008` ([`CloseCause::Revoked`]) from
/// anywhere, for example when its credential is revoked.
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
        let mut state = self.lock();
        state.revoked = true;
        let socket = state.socket.as_ref().and_then(Weak::upgrade);
        drop(state);
        if let Some(shared) = socket {
            request_close(&shared);
        }
    }

    /// Whether [`revoke`](Self::revoke) was called.
    pub fn is_revoked(&self) -> bool {
        self.lock().revoked
    }

    /// Connects the signal to a socket that just started.
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let mut state = self.lock();
        state.socket = Some(Arc::downgrade(shared));
        let revoked = state.revoked;
        drop(state);
        if revoked {
            request_close(shared);
        }
    }
}

fn request_close(shared: &Shared) {
    let mut state = shared.lock();
    if state.close_request.is_none() {
        state.close_request = Some(CloseCause::Revoked);
    }
    let waker = state.driver_waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl fmt::Debug for CloseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("CloseSignal")
            .field("revoked", &state.revoked)
            .field(
                "attached",
                &state.socket.as_ref().is_some_and(|w| w.strong_count() > 0),
            )
            .finish()
    }
}
