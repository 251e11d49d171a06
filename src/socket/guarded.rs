//! The application's side of a guarded socket: [`GuardedSocket`] and [`Sender`].

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
    time::SystemTime,
};

use axum::{
    Error,
    extract::ws::{CloseFrame, Message},
};
use futures_util::{Sink, Stream, stream::FusedStream};
use http::HeaderValue;

use super::{
    CloseCause, RefreshError, SendError, SocketStats,
    queue::{OutQueue, Pushed},
};
use crate::{auth::Principal, client_ip::ClientIp};

/// Who a socket belongs to, for log events.
#[derive(Debug)]
pub(crate) struct SocketInfo {
    pub(crate) client_ip: Option<ClientIp>,
    pub(crate) principal: Option<Principal>,
}

impl SocketInfo {
    pub(crate) fn ip_field(&self) -> Option<String> {
        self.client_ip.map(|ip| ip.0.to_string())
    }

    pub(crate) fn identity_field(&self) -> Option<&str> {
        self.principal.as_ref().map(Principal::subject)
    }
}

/// A close asked of the driver from outside it: the cause, and the reason text of the close
/// frame when it is not the cause's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) cause: CloseCause,
    pub(crate) reason: Option<String>,
}

impl CloseRequest {
    pub(crate) fn new(cause: CloseCause) -> Self {
        Self {
            cause,
            reason: None,
        }
    }
}

/// State shared by the driver, the [`GuardedSocket`] and its [`Sender`]s, behind one mutex
/// whose critical sections never block.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) info: SocketInfo,
}

pub(crate) struct State {
    pub(crate) inbound: VecDeque<Result<Message, Error>>,
    pub(crate) app_waker: Option<Waker>,
    pub(crate) driver_waker: Option<Waker>,
    /// The driver stopped reading because `inbound` was full.
    pub(crate) driver_wants_room: bool,
    pub(crate) outbound: OutQueue,
    /// No more messages will be accepted for sending (closing or closed).
    pub(crate) send_closed: bool,
    /// No more messages will be received: once `inbound` is drained, the stream ends.
    pub(crate) recv_closed: bool,
    /// Why the policy closed the socket, if it did.
    pub(crate) cause: Option<CloseCause>,
    /// A close requested from outside the driver (slow consumer, revocation, drain).
    pub(crate) close_request: Option<CloseRequest>,
    /// The [`GuardedSocket`] was dropped.
    pub(crate) app_gone: bool,
    /// A refreshed credential expiry for the driver (`Some(None)`: no expiry any more).
    pub(crate) refresh: Option<Option<SystemTime>>,
    pub(crate) stats: SocketStats,
}

impl Shared {
    pub(crate) fn new(info: SocketInfo, outbound: OutQueue) -> Self {
        Self {
            state: Mutex::new(State {
                inbound: VecDeque::new(),
                app_waker: None,
                driver_waker: None,
                driver_wants_room: false,
                outbound,
                send_closed: false,
                recv_closed: false,
                cause: None,
                close_request: None,
                app_gone: false,
                refresh: None,
                stats: SocketStats::default(),
            }),
            info,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the driver to close the socket, unless a close was asked for already: the one
    /// path by which anything outside the driver closes a socket.
    pub(crate) fn request_close(&self, request: CloseRequest) {
        let mut state = self.lock();
        if state.close_request.is_none() {
            state.close_request = Some(request);
        }
        let waker = state.driver_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the socket still accepts messages.
    pub(crate) fn is_open(&self) -> bool {
        !self.lock().send_closed
    }

    /// Queues a message from the application, applying the slow-consumer policy.
    pub(crate) fn enqueue(&self, key: Option<Arc<str>>, msg: Message) -> Result<(), SendError> {
        let mut state = self.lock();
        if state.send_closed {
            return Err(SendError::Closed { cause: state.cause });
        }
        if matches!(msg, Message::Close(_)) {
            state.send_closed = true;
            state.outbound.push_unbounded(msg);
        } else {
            match state.outbound.push(key, msg) {
                Pushed::Queued => {}
                Pushed::Conflated(n) => {
                    state.stats.conflated += n as u64;
                    crate::metrics::slow_consumer("conflated", n as u64);
                }
                Pushed::DroppedOldest(n) => {
                    state.stats.dropped_outgoing += n as u64;
                    crate::metrics::slow_consumer("dropped_oldest", n as u64);
                    let dropped = state.stats.dropped_outgoing;
                    if dropped.is_power_of_two() || dropped == n as u64 {
                        tracing::warn!(
                            name: "wsguard.socket.dropped",
                            target: "wsguard::socket",
                            cause = "slow_consumer",
                            client_ip = self.info.ip_field(),
                            identity = self.info.identity_field(),
                            limit = state.outbound.len(),
                            dropped,
                            "dropped the oldest queued messages for a slow consumer"
                        );
                    }
                }
                Pushed::Overflow => {
                    crate::metrics::slow_consumer("closed", 1);
                    state.send_closed = true;
                    state.cause = Some(CloseCause::SlowConsumer);
                    state.close_request = Some(CloseRequest::new(CloseCause::SlowConsumer));
                    let waker = state.driver_waker.take();
                    drop(state);
                    if let Some(w) = waker {
                        w.wake();
                    }
                    return Err(SendError::Closed {
                        cause: Some(CloseCause::SlowConsumer),
                    });
                }
            }
        }
        let waker = state.driver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// A policed WebSocket, handed to the callback of
/// [`GuardedUpgrade::on_upgrade`](super::GuardedUpgrade::on_upgrade).
///
/// It is a [`Stream`] of received messages and a [`Sink`] of messages to send, like axum's
/// `WebSocket`, with [`recv`](Self::recv) and [`send`](Self::send) for convenience. A driver
/// running next to the handler owns the real socket and enforces the policy; see the
/// [module docs](crate::socket).
///
/// - Receiving ends (`None`) when the peer closes, the connection fails or the policy closes
///   the socket; [`close_cause`](Self::close_cause) then says which limit was hit. Pongs that
///   answer the policy's heartbeat are not delivered; other pings and pongs are, as in axum.
/// - Sending never waits: the message joins the bounded send queue, or the slow-consumer
///   policy applies. [`Sender`] handles (from [`sender`](Self::sender)) send from other tasks,
///   and [`send_keyed`](Self::send_keyed) conflates by key under
///   [`SlowConsumer::Conflate`](super::SlowConsumer::Conflate).
/// - Dropping the `GuardedSocket` sends what is queued, then closes the socket with `1000`.
pub struct GuardedSocket {
    shared: Arc<Shared>,
    principal: Option<Principal>,
    protocol: Option<HeaderValue>,
    finished: bool,
}

impl fmt::Debug for GuardedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedSocket")
            .field("client_ip", &self.shared.info.client_ip)
            .field("principal", &self.principal)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl GuardedSocket {
    pub(crate) fn new(shared: Arc<Shared>, protocol: Option<HeaderValue>) -> Self {
        Self {
            principal: shared.info.principal.clone(),
            shared,
            protocol,
            finished: false,
        }
    }

    /// Receives the next message; `None` once the socket has ended.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        futures_util::StreamExt::next(self).await
    }

    /// Queues `msg` for sending. Never waits: when the send queue is full the slow-consumer
    /// policy applies. Fails once the socket is closing or closed.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.shared.enqueue(None, msg).map_err(Error::new)
    }

    /// Queues `msg` under `key`: under [`SlowConsumer::Conflate`](super::SlowConsumer::Conflate),
    /// once the queue is full, it replaces the newest still-queued message with the same key
    /// (the latest price per symbol); while there is room it is queued like any other. Under
    /// the other policies the key is ignored.
    pub fn send_keyed(&self, key: impl Into<Arc<str>>, msg: Message) -> Result<(), SendError> {
        self.shared.enqueue(Some(key.into()), msg)
    }

    /// A cloneable handle that queues messages on this socket from other tasks.
    pub fn sender(&self) -> Sender {
        Sender {
            shared: self.shared.clone(),
        }
    }

    /// The authenticated principal of the handshake, if the auth layer recorded one (updated
    /// by [`refresh_credential`](Self::refresh_credential)).
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The client address recorded by the client-IP layer, if any.
    pub fn client_ip(&self) -> Option<ClientIp> {
        self.shared.info.client_ip
    }

    /// The negotiated subprotocol, if any.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// Why the policy closed the socket, once it has.
    pub fn close_cause(&self) -> Option<CloseCause> {
        self.shared.lock().cause
    }

    /// Counters of this socket so far.
    pub fn stats(&self) -> SocketStats {
        let state = self.shared.lock();
        let mut stats = state.stats;
        stats.queued = state.outbound.len();
        stats
    }

    /// Accepts an in-band credential refresh that the application has verified: the socket's
    /// expiry deadline becomes `principal.expires_at()` (none if `None`).
    ///
    /// Fails if the socket has no principal or `principal` names another subject: a refresh
    /// may extend a credential, never switch identity.
    pub fn refresh_credential(&mut self, principal: Principal) -> Result<(), RefreshError> {
        let current = self.principal.as_ref().ok_or(RefreshError::NoPrincipal)?;
        if current.subject() != principal.subject() {
            return Err(RefreshError::SubjectMismatch);
        }
        let mut state = self.shared.lock();
        if state.send_closed && state.cause.is_some() {
            return Err(RefreshError::Closed);
        }
        state.refresh = Some(principal.expires_at());
        let waker = state.driver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        self.principal = Some(principal);
        Ok(())
    }

    /// Queues a close frame with `code` and `reason` after the messages already queued.
    pub fn close_with(&self, code: u16, reason: &'static str) -> Result<(), SendError> {
        self.shared.enqueue(
            None,
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        )
    }
}

impl Drop for GuardedSocket {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.app_gone = true;
        state.app_waker = None;
        let waker = state.driver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Stream for GuardedSocket {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let mut state = self.shared.lock();
        if let Some(item) = state.inbound.pop_front() {
            let waker = if state.driver_wants_room {
                state.driver_wants_room = false;
                state.driver_waker.take()
            } else {
                None
            };
            drop(state);
            if let Some(w) = waker {
                w.wake();
            }
            return Poll::Ready(Some(item));
        }
        if state.recv_closed {
            drop(state);
            self.finished = true;
            return Poll::Ready(None);
        }
        match &state.app_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.app_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl FusedStream for GuardedSocket {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl Sink<Message> for GuardedSocket {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let state = self.shared.lock();
        if state.send_closed {
            Poll::Ready(Err(Error::new(SendError::Closed { cause: state.cause })))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.shared.enqueue(None, item).map_err(Error::new)
    }

    /// Ready at once: a queued message belongs to the driver, which writes it as fast as the
    /// peer reads.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Closing twice, or after the socket ended, is not an error.
        let _ = self.shared.enqueue(None, Message::Close(None));
        Poll::Ready(Ok(()))
    }
}

/// A cloneable handle that queues messages on one [`GuardedSocket`] from any task.
///
/// Sending never waits; see [`GuardedSocket::send`]. A `Sender` does not keep the socket
/// open: once the `GuardedSocket` is dropped or the socket closes, sends fail.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("client_ip", &self.shared.info.client_ip)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Queues `msg`; see [`GuardedSocket::send`].
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        self.shared.enqueue(None, msg)
    }

    /// Queues `msg` under `key`; see [`GuardedSocket::send_keyed`].
    pub fn send_keyed(&self, key: impl Into<Arc<str>>, msg: Message) -> Result<(), SendError> {
        self.shared.enqueue(Some(key.into()), msg)
    }

    /// Whether the socket still accepts messages.
    pub fn is_open(&self) -> bool {
        self.shared.is_open()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// How many messages wait in the send queue.
    pub fn queued(&self) -> usize {
        self.shared.lock().outbound.len()
    }
}
