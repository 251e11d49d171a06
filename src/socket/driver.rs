//! The per-socket driver: owns the real socket and multiplexes reads, the send queue and
//! the timers, enforcing the policy. It runs in the upgrade task next to the handler.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use axum::{
    Error,
    extract::ws::{CloseFrame, Message},
};
use futures_util::{Sink, Stream};
use http::HeaderValue;
use tokio::time::{Instant, Sleep};

use super::{
    CloseCause, RateAction,
    guarded::{GuardedSocket, Shared, SocketInfo},
    policy::{Config, SocketPolicy},
    queue::{OutQueue, message_len},
    rate::{Buckets, RateGate},
    wire::{RawConnection, WireReport},
};
use crate::{auth::Principal, client_ip::ClientIp, rate_limit::ConnectionPermit};

/// How many messages one poll handles in each direction before yielding to the runtime.
const BUDGET: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Closing,
    Done,
}

/// What a read pass ended on.
enum Flow {
    /// Nothing more to read now; a waker is registered.
    Wait,
    /// The budget ran out with more to read.
    Yield,
    /// The phase changed.
    Changed,
}

/// The bytes of a heartbeat ping: random, so a peer that does not read cannot answer it.
type PingPayload = [u8; 16];

pub(crate) struct Driver<W> {
    ws: W,
    /// What the wire adapter under the socket counted, if there is one.
    wire: Option<Arc<WireReport>>,
    shared: Arc<Shared>,
    policy: SocketPolicy,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    rate: RateGate,
    violations: u32,
    idle_at: Option<Instant>,
    next_ping: Option<Instant>,
    pong_due: Option<Instant>,
    /// The payload of the heartbeat ping waiting in `pending`, not yet written.
    ping_unwritten: Option<PingPayload>,
    /// The payload of the last heartbeat ping written: only a pong with it counts.
    ping_written: Option<PingPayload>,
    expiry_at: Option<Instant>,
    lifetime_at: Option<Instant>,
    close_deadline: Option<Instant>,
    /// A control frame (heartbeat ping or policy close) that goes before the queue.
    pending: Option<Message>,
    /// Free slots in the inbound queue known without locking.
    room: usize,
    /// Since when the inbound queue has been full: reading pauses until `recv_stall` after
    /// it, then reads on and drops what nobody takes.
    full_since: Option<Instant>,
    /// The queue stayed full past `recv_stall`: messages that do not fit are dropped until
    /// the application takes one.
    dropping: bool,
    unflushed: bool,
    /// The peer's close frame was read: tungstenite has answered it (or holds the answer until
    /// the next flush) and takes no close of ours after it.
    peer_closed: bool,
    /// A ping was read since the last flush: tungstenite may still hold the pong it owes,
    /// which it writes after the next frame it is given.
    pong_owed: bool,
    app_close_queued: bool,
    /// The socket's stream has ended (closing phase).
    read_ended: bool,
    /// The protocol refused the peer's input: it cannot be read any more, so a lingering
    /// close drains the connection below it.
    ws_failed: bool,
    /// The drain below the protocol is over.
    drained: bool,
    /// The peer broke the protocol: the close code to send once the application has taken
    /// what came before (and queued its answers), and the latest time to send it.
    failed: Option<(u16, Instant)>,
    /// What ended the socket first, counted once in `wsguard_socket_closes_total`.
    ended: Option<Ended>,
    _permit: Option<ConnectionPermit>,
    metrics: crate::metrics::SocketMetrics,
}

/// What ended a socket first.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// A policy close, counted by its cause when it begins.
    Policy,
    /// The peer, the application or the connection: counted when the socket is done.
    By(&'static str),
}

/// Builds the application's socket and the driver that serves it.
pub(crate) fn start<W>(
    ws: W,
    wire: Option<Arc<WireReport>>,
    protocol: Option<HeaderValue>,
    policy: SocketPolicy,
    permit: Option<ConnectionPermit>,
    principal: Option<Principal>,
    client_ip: Option<ClientIp>,
) -> (GuardedSocket, Driver<W>) {
    let now = Instant::now();
    let cfg = policy.config();
    let min_byte_burst = cfg.max_message_size as u64;
    let identity = match &principal {
        Some(p) if cfg.identity_message_rate.is_some() || cfg.identity_byte_rate.is_some() => {
            Some(policy.inner.identities.join(Arc::from(p.subject()), || {
                Buckets::new(
                    cfg.identity_message_rate,
                    cfg.identity_byte_rate,
                    min_byte_burst,
                    now,
                )
            }))
        }
        _ => None,
    };
    let rate = RateGate::new(
        Buckets::new(cfg.message_rate, cfg.byte_rate, min_byte_burst, now),
        identity,
    );
    let expiry_at = principal
        .as_ref()
        .and_then(Principal::expires_at)
        .and_then(instant_for);
    let shared = Arc::new(Shared::new(
        SocketInfo {
            client_ip,
            principal,
        },
        OutQueue::new(cfg.send_queue_len, cfg.send_queue_bytes, cfg.slow_consumer),
    ));
    let driver = Driver {
        ws,
        wire,
        shared: shared.clone(),
        phase: Phase::Open,
        sleep: Box::pin(tokio::time::sleep_until(far_future(now))),
        rate,
        violations: 0,
        idle_at: cfg.idle_timeout.and_then(|d| now.checked_add(d)),
        next_ping: cfg.ping_interval.and_then(|d| now.checked_add(d)),
        pong_due: None,
        ping_unwritten: None,
        ping_written: None,
        expiry_at,
        lifetime_at: cfg.lifetime().and_then(|d| now.checked_add(d)),
        close_deadline: None,
        pending: None,
        room: cfg.recv_queue_len.max(1),
        full_since: None,
        dropping: false,
        unflushed: false,
        pong_owed: false,
        peer_closed: false,
        app_close_queued: false,
        read_ended: false,
        ws_failed: false,
        drained: false,
        failed: None,
        ended: None,
        _permit: permit,
        metrics: crate::metrics::SocketMetrics::new(),
        policy,
    };
    (GuardedSocket::new(shared, protocol), driver)
}

impl<W> Driver<W> {
    /// The state shared with the socket, for attaching a close signal.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365)
}

/// The monotonic deadline for a wall-clock time; `None` if unrepresentably far.
fn instant_for(at: SystemTime) -> Option<Instant> {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(left) => now.checked_add(left),
        Err(_) => Some(now),
    }
}

/// Whether a read error is tungstenite's size limit (message or frame too long).
pub(crate) fn is_too_big(err: &Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|err| matches!(err, tungstenite::Error::Capacity(_)))
}

/// The close code for a read error that breaks the protocol (`1002`, or `1007` for invalid
/// UTF-8); `None` for the others (size limits, a broken connection).
fn protocol_close_code(err: &Error) -> Option<u16> {
    let err = std::error::Error::source(err)?.downcast_ref::<tungstenite::Error>()?;
    match err {
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(1002),
        tungstenite::Error::Utf8(_) => Some(1007),
        _ => None,
    }
}

/// 16 unpredictable bytes for a heartbeat ping.
fn ping_payload() -> PingPayload {
    let mut payload = [0u8; 16];
    if getrandom::fill(&mut payload).is_err() {
        // No OS randomness (never seen on supported platforms): std's per-process random
        // SipHash keys still make the payload unguessable from outside.
        use std::hash::{BuildHasher, Hasher};
        for half in payload.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    payload
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl<W> Driver<W>
where
    W: Stream<Item = Result<Message, Error>> + Sink<Message, Error = Error> + Unpin,
{
    fn cfg(&self) -> &Config {
        self.policy.config()
    }

    /// Registers the waker and takes the application's requests.
    fn sync_commands(&mut self, cx: &mut Context<'_>, now: Instant) {
        let mut state = self.shared.lock();
        match &state.driver_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.driver_waker = Some(cx.waker().clone()),
        }
        if let Some(expiry) = state.refresh.take() {
            self.expiry_at = expiry.and_then(instant_for);
        }
        let close = state.close_request.take();
        if state.app_gone && !self.app_close_queued {
            self.app_close_queued = true;
            state.inbound.clear();
            if self.phase == Phase::Open && !state.send_closed {
                state.send_closed = true;
                self.ended.get_or_insert(Ended::By("application"));
                state
                    .outbound
                    .push_unbounded(Message::Close(Some(CloseFrame {
                        code: self.failed.map_or(1000, |(code, _)| code),
                        reason: "".into(),
                    })));
            }
        }
        drop(state);
        if let Some(request) = close
            && self.phase == Phase::Open
        {
            self.begin_close_with(request.cause, request.reason, now);
        }
    }

    /// The policy close due at `now`, if any; schedules a heartbeat ping when one is due.
    fn due(&mut self, now: Instant) -> Option<CloseCause> {
        if self.expiry_at.is_some_and(|t| t <= now) {
            return Some(CloseCause::CredentialExpired);
        }
        if self.lifetime_at.is_some_and(|t| t <= now) {
            return Some(CloseCause::LifetimeElapsed);
        }
        if let Some(cause) = self.violation() {
            return Some(cause);
        }
        if let Some(wire) = &self.wire
            && self.message_due(wire).is_some_and(|t| t <= now)
        {
            return Some(CloseCause::MessageDeadline);
        }
        if self.pong_due.is_some_and(|t| t <= now) {
            return Some(CloseCause::HeartbeatTimeout);
        }
        if self.idle_at.is_some_and(|t| t <= now) {
            return Some(CloseCause::Idle);
        }
        if self.pong_due.is_none()
            && self.next_ping.is_some_and(|t| t <= now)
            && let Some(interval) = self.cfg().ping_interval
        {
            let payload = ping_payload();
            self.ping_unwritten = Some(payload);
            // An older ping's pong no longer counts.
            self.ping_written = None;
            self.pending = Some(Message::Ping(payload.to_vec().into()));
            // The deadline runs from when the ping is due, not written: a peer that
            // stops reading cannot postpone it by blocking the write.
            self.pong_due = now.checked_add(self.cfg().pong_timeout);
            self.next_ping = now.checked_add(interval);
        }
        None
    }

    /// When a pause for a full inbound queue ends, while one lasts.
    fn stall_ends(&self) -> Option<Instant> {
        self.full_since
            .and_then(|t| t.checked_add(self.cfg().recv_stall))
    }

    /// Whether reading waits for the application to take a message: the inbound queue is
    /// full and has been for less than `recv_stall`. Past that, reading goes on and
    /// [`deliver`](Self::deliver) drops what does not fit.
    fn wait_for_room(&mut self, now: Instant) -> bool {
        if self.room > 0 {
            return false;
        }
        let cap = self.cfg().recv_queue_len.max(1);
        let mut state = self.shared.lock();
        let room = cap.saturating_sub(state.inbound.len());
        if room > 0 {
            drop(state);
            self.room = room;
            self.full_since = None;
            self.dropping = false;
            return false;
        }
        if self.dropping {
            return false;
        }
        let since = *self.full_since.get_or_insert(now);
        if since
            .checked_add(self.cfg().recv_stall)
            .is_some_and(|end| now < end)
        {
            state.driver_wants_room = true;
            return true;
        }
        self.full_since = None;
        self.dropping = true;
        false
    }

    /// The limit the peer broke on the wire, if it did.
    fn violation(&self) -> Option<CloseCause> {
        self.wire.as_ref().and_then(|wire| wire.violation())
    }

    /// When the message in progress on the wire must be finished.
    fn message_due(&self, wire: &WireReport) -> Option<Instant> {
        wire.started()
            .and_then(|t| t.checked_add(self.cfg().message_deadline))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = min_opt(self.expiry_at, self.lifetime_at);
        if self.pong_due.is_none() {
            next = min_opt(next, self.next_ping);
        }
        next = min_opt(next, self.pong_due);
        next = min_opt(next, self.idle_at);
        if let Some(wire) = &self.wire {
            next = min_opt(next, self.message_due(wire));
        }
        next = min_opt(next, self.stall_ends());
        next = min_opt(next, self.failed.map(|(_, at)| at));
        if self.phase == Phase::Closing {
            next = self.close_deadline;
        }
        next
    }

    /// Arms the timer for the next deadline; `true` if it has already passed.
    fn arm(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(next) = self.next_deadline() else {
            return false;
        };
        // Lazy re-arming: a deadline that moved later (the idle timer on every message)
        // does not touch the timer wheel; the early wake-up re-arms it.
        if next < self.sleep.deadline() || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(next);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }

    fn begin_close(&mut self, cause: CloseCause, now: Instant) {
        self.begin_close_with(cause, None, now);
    }

    /// Closes with `cause`'s code and `reason`, or the cause's own reason.
    fn begin_close_with(&mut self, cause: CloseCause, reason: Option<String>, now: Instant) {
        if self.peer_closed {
            // The peer closed first, and tungstenite's answer is the close frame: no policy
            // close follows it (tungstenite would refuse ours, and the error would drop the
            // connection with the answer unsent), whatever the peer sent after its close.
            // The closing phase flushes the answer and lingers as usual.
            self.unflushed = true;
            self.enter_closing(now);
            return;
        }
        let code = cause.close_code();
        if self.ended.is_none() {
            self.ended = Some(Ended::Policy);
            crate::metrics::socket_closed(cause.as_str());
        }
        if cause == CloseCause::Shutdown {
            // One event per socket would flood the logs at every shutdown; the drain reports
            // its counts in one `wsguard.socket.drained` event.
            tracing::debug!(
                name: "wsguard.socket.closed",
                target: "wsguard::socket",
                cause = cause.as_str(),
                client_ip = self.shared.info.ip_field(),
                identity = self.shared.info.identity_field(),
                limit = %cause.limit(self.cfg()),
                close_code = code,
                "closed a socket: the server is shutting down"
            );
        } else {
            tracing::info!(
                name: "wsguard.socket.closed",
                target: "wsguard::socket",
                cause = cause.as_str(),
                client_ip = self.shared.info.ip_field(),
                identity = self.shared.info.identity_field(),
                limit = %cause.limit(self.cfg()),
                close_code = code,
                "closed a socket that broke the socket policy"
            );
        }
        let mut state = self.shared.lock();
        state.cause = Some(cause);
        state.send_closed = true;
        state.recv_closed = true;
        state.outbound.clear();
        let waker = state.app_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        let reason = match reason {
            Some(reason) => reason.into(),
            None => cause.reason().into(),
        };
        self.pending = Some(Message::Close(Some(CloseFrame { code, reason })));
        self.enter_closing(now);
    }

    fn enter_closing(&mut self, now: Instant) {
        self.phase = Phase::Closing;
        self.close_deadline = Some(now.checked_add(self.cfg().close_timeout).unwrap_or(now));
        let mut state = self.shared.lock();
        state.send_closed = true;
        state.recv_closed = true;
        let waker = state.app_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Notes what ended the socket, unless something did before.
    fn ended_by(&mut self, by: &'static str) {
        self.ended.get_or_insert(Ended::By(by));
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        match self.ended {
            Some(Ended::Policy) => {}
            Some(Ended::By(by)) => crate::metrics::socket_closed(by),
            None => crate::metrics::socket_closed("connection_lost"),
        }
        let mut state = self.shared.lock();
        state.send_closed = true;
        state.recv_closed = true;
        state.outbound.clear();
        let waker = state.app_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// After a protocol error: queues the close frame behind the application's messages once
    /// it has taken everything received before the error (or is gone, or took too long).
    fn close_after_failure(&mut self, now: Instant) {
        let Some((code, by)) = self.failed else {
            return;
        };
        let mut state = self.shared.lock();
        if state.send_closed {
            // The application (or its going away) already queued a close.
            return;
        }
        if state.inbound.is_empty() || state.app_gone || by <= now {
            state.send_closed = true;
            state.recv_closed = true;
            state
                .outbound
                .push_unbounded(Message::Close(Some(CloseFrame {
                    code,
                    reason: "".into(),
                })));
        } else {
            // Woken when the application takes a message.
            state.driver_wants_room = true;
        }
    }

    /// Shuts the write side down once, at the end of a lingering close.
    fn shut_write(&mut self, cx: &mut Context<'_>) -> Poll<()>
    where
        W: RawConnection,
    {
        self.ws.poll_shutdown(cx)
    }

    /// Writes the pending control frame, then (while open) the send queue, and flushes.
    fn write(&mut self, cx: &mut Context<'_>, now: Instant) -> Result<bool, Error> {
        let mut budget = BUDGET;
        let mut more = false;
        loop {
            if self.pending.is_none() && self.phase != Phase::Open {
                break;
            }
            if budget == 0 {
                more = true;
                break;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            // A pong tungstenite still owes would go out behind the close frame: out with it
            // first, so that the close is the last frame.
            if self.pong_owed && self.close_is_next() {
                match Pin::new(&mut self.ws).poll_flush(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Ready(Ok(())) => self.pong_owed = false,
                }
            }
            let (msg, ours) = match self.pending.take() {
                Some(msg) => (msg, true),
                None => {
                    let mut state = self.shared.lock();
                    match state.outbound.pop() {
                        Some(msg) => {
                            self.metrics.message_out(&msg);
                            state.stats.sent += 1;
                            (msg, false)
                        }
                        None => break,
                    }
                }
            };
            let is_close = matches!(msg, Message::Close(_));
            let heartbeat = match &msg {
                Message::Ping(_) if ours => self.ping_unwritten.take(),
                _ => None,
            };
            Pin::new(&mut self.ws).start_send(msg)?;
            if heartbeat.is_some() {
                self.ping_written = heartbeat;
            }
            self.unflushed = true;
            budget -= 1;
            if is_close && self.phase == Phase::Open {
                if !ours {
                    self.ended_by("application");
                }
                self.enter_closing(now);
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.pong_owed = false;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(more)
    }

    fn read(&mut self, cx: &mut Context<'_>, now: Instant) -> Flow {
        let mut budget = BUDGET;
        loop {
            if budget == 0 {
                return Flow::Yield;
            }
            if self.failed.is_some() || self.wait_for_room(now) {
                return Flow::Wait;
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Flow::Wait,
                Poll::Ready(None) => {
                    self.ended_by("connection_lost");
                    self.finish();
                    return Flow::Changed;
                }
                Poll::Ready(Some(Err(err))) => {
                    self.ws_failed = true;
                    if let Some(cause) = self.violation() {
                        self.begin_close(cause, now);
                    } else if is_too_big(&err) {
                        self.begin_close(CloseCause::MessageTooBig, now);
                    } else if let Some(code) = protocol_close_code(&err) {
                        // Strict: what the application answers to the messages before the
                        // error goes out before the close.
                        self.ended_by("protocol_error");
                        self.deliver(Err(err));
                        let by = now.checked_add(self.cfg().close_timeout).unwrap_or(now);
                        self.failed = Some((code, by));
                    } else {
                        self.ended_by("connection_lost");
                        self.deliver(Err(err));
                        self.finish();
                    }
                    return Flow::Changed;
                }
                Poll::Ready(Some(Ok(msg))) => {
                    budget -= 1;
                    let close = matches!(msg, Message::Close(_));
                    self.on_message(msg, now);
                    if close {
                        // Answer the peer's close at once, even if reading pauses here.
                        match Pin::new(&mut self.ws).poll_flush(cx) {
                            Poll::Ready(_) => self.pong_owed = false,
                            Poll::Pending => self.unflushed = true,
                        }
                    }
                    if self.phase != Phase::Open {
                        return Flow::Changed;
                    }
                }
            }
        }
    }

    /// Whether the next frame [`write`](Self::write) sends is a close frame.
    fn close_is_next(&self) -> bool {
        match &self.pending {
            Some(msg) => matches!(msg, Message::Close(_)),
            None => self.shared.lock().outbound.front_is_close(),
        }
    }

    fn on_message(&mut self, msg: Message, now: Instant) {
        if matches!(msg, Message::Ping(_)) {
            // tungstenite queued the pong (whatever becomes of the ping here).
            self.pong_owed = true;
        }
        match &msg {
            // Only the pong of the ping last written answers the heartbeat; any other pong
            // (a guess by a peer that does not read) is an ordinary frame.
            Message::Pong(payload)
                if self.pong_due.is_some()
                    && self
                        .ping_written
                        .is_some_and(|ping| payload[..] == ping[..]) =>
            {
                self.pong_due = None;
                self.ping_written = None;
                return;
            }
            Message::Close(_) => {
                // The peer is closing; tungstenite answers. Deliver it as axum does.
                self.peer_closed = true;
                self.ended_by("peer");
                self.shared.lock().send_closed = true;
                self.deliver(Ok(msg));
                return;
            }
            _ => {}
        }
        if self.rate.is_active()
            && let Err(scope) = self.rate.check(message_len(&msg) as u64, now)
        {
            let cause = CloseCause::RateLimited(scope);
            self.violations = self.violations.saturating_add(1);
            let escalate = self
                .cfg()
                .escalate_after
                .is_some_and(|n| self.violations >= n);
            if self.cfg().rate_action == RateAction::Close || escalate {
                self.begin_close(cause, now);
            } else {
                let mut state = self.shared.lock();
                state.stats.dropped_incoming += 1;
                let dropped = state.stats.dropped_incoming;
                drop(state);
                crate::metrics::dropped(cause.as_str(), 1);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        name: "wsguard.socket.dropped",
                        target: "wsguard::socket",
                        cause = cause.as_str(),
                        client_ip = self.shared.info.ip_field(),
                        identity = self.shared.info.identity_field(),
                        limit = %cause.limit(self.cfg()),
                        dropped,
                        "dropped messages over the socket's rate limit"
                    );
                }
            }
            return;
        }
        if matches!(msg, Message::Text(_) | Message::Binary(_))
            && let Some(idle) = self.cfg().idle_timeout
        {
            self.idle_at = now.checked_add(idle);
        }
        self.metrics.message_in(&msg);
        self.deliver(Ok(msg));
    }

    fn deliver(&mut self, item: Result<Message, Error>) {
        let mut state = self.shared.lock();
        if state.app_gone {
            return;
        }
        // A queue that stays full past `recv_stall` does not stop reading (the heartbeat, idle
        // and wire limits must hold whatever the application does): messages nobody reads
        // are dropped and counted. A close or an error, which end the stream, always get
        // through.
        let ends = matches!(item, Ok(Message::Close(_)) | Err(_));
        if !ends && state.inbound.len() >= self.cfg().recv_queue_len.max(1) {
            state.stats.dropped_unread += 1;
            let dropped = state.stats.dropped_unread;
            drop(state);
            crate::metrics::dropped("receive_queue_full", 1);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    name: "wsguard.socket.dropped",
                    target: "wsguard::socket",
                    cause = "receive_queue_full",
                    client_ip = self.shared.info.ip_field(),
                    identity = self.shared.info.identity_field(),
                    limit = self.cfg().recv_queue_len,
                    dropped,
                    "dropped received messages the application is not reading"
                );
            }
            return;
        }
        state.inbound.push_back(item);
        state.stats.received += 1;
        self.room = self.room.saturating_sub(1);
        let waker = state.app_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<W> Future for Driver<W>
where
    W: Stream<Item = Result<Message, Error>> + Sink<Message, Error = Error> + RawConnection + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.phase == Phase::Done {
            return Poll::Ready(());
        }
        this.sync_commands(cx, Instant::now());
        // Bounded: every turn either changes the phase or sees an elapsed timer.
        for _ in 0..8 {
            let now = Instant::now();
            match this.phase {
                Phase::Done => return Poll::Ready(()),
                Phase::Open => {
                    if let Some(cause) = this.due(now) {
                        this.begin_close(cause, now);
                        continue;
                    }
                    this.close_after_failure(now);
                    let more_to_write = match this.write(cx, now) {
                        Ok(more) => more,
                        Err(_) => {
                            this.finish();
                            continue;
                        }
                    };
                    if this.phase != Phase::Open {
                        continue;
                    }
                    match this.read(cx, now) {
                        Flow::Changed => continue,
                        Flow::Yield => {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Flow::Wait => {}
                    }
                    if more_to_write {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if !this.arm(cx) {
                        return Poll::Pending;
                    }
                }
                Phase::Closing => {
                    if this.close_deadline.is_some_and(|t| t <= now) {
                        // Out of time: the write side is shut (if that is immediate) and the
                        // connection dropped, whatever the peer still sends.
                        let _ = this.shut_write(cx);
                        this.finish();
                        continue;
                    }
                    if this.write(cx, now).is_err() {
                        this.finish();
                        continue;
                    }
                    // The lingering close: read until the peer's close (or end of stream),
                    // discarding data, so the connection is not reset with unread bytes
                    // while our close frame is in flight.
                    if this.violation().is_some() {
                        // The wire passes nothing up after a violation: the drain below the
                        // protocol is all the reading left.
                        this.read_ended = true;
                        this.ws_failed = true;
                    }
                    let mut budget = BUDGET;
                    while !this.read_ended {
                        match Pin::new(&mut this.ws).poll_next(cx) {
                            Poll::Ready(None) => this.read_ended = true,
                            Poll::Ready(Some(Err(_))) => {
                                this.read_ended = true;
                                this.ws_failed = true;
                            }
                            Poll::Ready(Some(Ok(_))) => {
                                budget -= 1;
                                if budget == 0 {
                                    cx.waker().wake_by_ref();
                                    return Poll::Pending;
                                }
                            }
                            Poll::Pending => break,
                        }
                    }
                    // The protocol refused the input (an oversized message, a broken
                    // frame) and cannot be read any more: drain below it.
                    if this.read_ended
                        && this.ws_failed
                        && !this.drained
                        && this.ws.poll_drain(cx).is_ready()
                    {
                        this.drained = true;
                    }
                    // Done once nothing more comes in and our close frame is out: the write
                    // side is shut (TCP FIN) before the connection is dropped.
                    if this.read_ended
                        && (this.drained || !this.ws_failed)
                        && this.pending.is_none()
                        && !this.unflushed
                        && this.shut_write(cx).is_ready()
                    {
                        this.finish();
                        continue;
                    }
                    if !this.arm(cx) {
                        return Poll::Pending;
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
