//! Driver tests against an in-memory socket, on tokio's paused clock.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use axum::{Error, extract::ws::Message};
use futures_util::{Sink, Stream};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{is_too_big, start};
use crate::test_support::nz;
use crate::{
    auth::Principal,
    rate_limit::ConnectionPermit,
    socket::{
        CloseCause, GuardedSocket, MessageRate, RateAction, RateScope, RefreshError, SendError,
        SlowConsumer, SocketPolicyLayer,
    },
};

#[derive(Default)]
struct Gate {
    blocked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        if !blocked && let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.blocked.load(Ordering::SeqCst) {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// The server end of an in-memory WebSocket; the writes can be blocked like a peer that
/// stopped reading.
struct FakeWs {
    incoming: mpsc::UnboundedReceiver<Result<Message, Error>>,
    outgoing: mpsc::UnboundedSender<Message>,
    gate: Arc<Gate>,
}

impl Stream for FakeWs {
    type Item = Result<Message, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for FakeWs {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.gate.poll(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        let _ = self.outgoing.send(item);
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.gate.poll(cx)
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
}

impl crate::socket::wire::RawConnection for FakeWs {
    fn poll_drain(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

struct Peer {
    send: Option<mpsc::UnboundedSender<Result<Message, Error>>>,
    recv: mpsc::UnboundedReceiver<Message>,
    gate: Arc<Gate>,
    driver: JoinHandle<()>,
}

impl Peer {
    fn send(&self, msg: Message) {
        if let Some(tx) = &self.send {
            let _ = tx.send(Ok(msg));
        }
    }

    fn text(&self, s: &str) {
        self.send(Message::text(s.to_owned()));
    }

    /// Reads what the server sent until its close frame, answering pings if `pong`.
    async fn until_close(&mut self, pong: bool) -> (Vec<Message>, Option<u16>) {
        let mut seen = Vec::new();
        while let Some(msg) = self.recv.recv().await {
            match msg {
                Message::Close(frame) => return (seen, frame.map(|f| f.code)),
                Message::Ping(p) if pong => self.send(Message::Pong(p)),
                other => seen.push(other),
            }
        }
        (seen, None)
    }
}

fn setup(layer: SocketPolicyLayer, principal: Option<Principal>) -> (GuardedSocket, Peer) {
    setup_with_permit(layer, principal, None)
}

fn setup_with_permit(
    layer: SocketPolicyLayer,
    principal: Option<Principal>,
    permit: Option<ConnectionPermit>,
) -> (GuardedSocket, Peer) {
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_server) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate::default());
    let ws = FakeWs {
        incoming,
        outgoing,
        gate: gate.clone(),
    };
    let (socket, driver) = start(ws, None, None, layer.policy(), permit, principal, None);
    let peer = Peer {
        send: Some(to_server),
        recv: from_server,
        gate,
        driver: tokio::spawn(driver),
    };
    (socket, peer)
}

fn quiet() -> SocketPolicyLayer {
    SocketPolicyLayer::new()
        .without_heartbeat()
        .message_rate(None)
        .byte_rate(None)
        .identity_message_rate(None)
        .identity_byte_rate(None)
}

fn text_of(msg: &Message) -> &str {
    msg.to_text().unwrap_or("")
}

#[tokio::test(start_paused = true)]
async fn echo_and_peer_close() {
    let (mut socket, mut peer) = setup(quiet(), None);
    peer.text("hello");
    let msg = socket.recv().await.unwrap().unwrap();
    assert_eq!(text_of(&msg), "hello");
    socket.send(msg).await.unwrap();
    assert_eq!(text_of(&peer.recv.recv().await.unwrap()), "hello");
    peer.send(Message::Close(None));
    assert!(matches!(
        socket.recv().await,
        Some(Ok(Message::Close(None)))
    ));
    peer.send = None;
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), None);
    assert!(socket.send(Message::text("late")).await.is_err());
    peer.driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn heartbeat_closes_a_silent_peer_and_spares_a_live_one() {
    let layer = || quiet().heartbeat(Duration::from_secs(10), Duration::from_secs(5));
    // A peer that answers every ping stays open across many intervals.
    let (socket, mut peer) = setup(layer(), None);
    let sender = socket.sender();
    let live = tokio::spawn(async move { peer.until_close(true).await });
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(sender.is_open(), "answered pings keep the socket open");
    assert_eq!(socket.close_cause(), None);
    drop(socket);
    let (_, code) = live.await.unwrap();
    assert_eq!(code, Some(1000), "dropping the socket closes normally");

    // A peer that never answers is closed with 1001.
    let (mut socket, mut peer) = setup(layer(), None);
    let (seen, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1001));
    assert!(
        matches!(seen.as_slice(), [Message::Ping(_)]),
        "one ping, then the close"
    );
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::HeartbeatTimeout));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pongs_are_not_delivered() {
    let (mut socket, mut peer) = setup(
        quiet().heartbeat(Duration::from_secs(1), Duration::from_secs(1)),
        None,
    );
    let Some(Message::Ping(payload)) = peer.recv.recv().await else {
        panic!("expected a ping");
    };
    peer.send(Message::Pong(payload));
    peer.send(Message::Pong(b"unsolicited".to_vec().into()));
    let msg = socket.recv().await.unwrap().unwrap();
    assert_eq!(msg, Message::Pong(b"unsolicited".to_vec().into()));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_only_data_messages() {
    let (mut socket, mut peer) = setup(quiet().idle_timeout(Duration::from_secs(30)), None);
    tokio::time::sleep(Duration::from_secs(20)).await;
    peer.text("still here");
    assert!(socket.recv().await.is_some());
    tokio::time::sleep(Duration::from_secs(20)).await;
    peer.send(Message::Ping(Vec::new().into()));
    assert!(matches!(socket.recv().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(
        socket.close_cause(),
        None,
        "40s in, 20s since the last message"
    );
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1001));
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::Idle));
}

#[tokio::test(start_paused = true)]
async fn credential_expiry_closes_with_1008_and_refresh_extends_it() {
    let expires = SystemTime::now() + Duration::from_secs(60);
    let (mut socket, mut peer) = setup(quiet(), Some(Principal::new("alice", Some(expires))));
    assert_eq!(
        socket.refresh_credential(Principal::new("mallory", None)),
        Err(RefreshError::SubjectMismatch)
    );
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1008));
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::CredentialExpired));

    let (mut socket, peer) = setup(quiet(), Some(Principal::new("bob", Some(expires))));
    tokio::time::sleep(Duration::from_secs(50)).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    socket
        .refresh_credential(Principal::new("bob", Some(later)))
        .unwrap();
    assert_eq!(
        socket.principal().and_then(Principal::expires_at),
        Some(later)
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    peer.text("after the first expiry");
    assert_eq!(
        text_of(&socket.recv().await.unwrap().unwrap()),
        "after the first expiry"
    );
    assert_eq!(socket.close_cause(), None);

    let (socket, _peer) = setup(quiet(), None);
    let mut socket = socket;
    assert_eq!(
        socket.refresh_credential(Principal::new("x", None)),
        Err(RefreshError::NoPrincipal)
    );
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_closes_with_1001() {
    let (mut socket, mut peer) = setup(
        quiet()
            .max_lifetime(Duration::from_secs(60))
            .lifetime_jitter(Duration::from_secs(10)),
        None,
    );
    let start = tokio::time::Instant::now();
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1001));
    let lived = start.elapsed();
    assert!(
        lived >= Duration::from_secs(50) && lived <= Duration::from_secs(60),
        "{lived:?}"
    );
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::LifetimeElapsed));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_actions() {
    struct Case {
        name: &'static str,
        action: RateAction,
        escalate: Option<u32>,
        delivered: usize,
        close: Option<u16>,
    }
    let cases = [
        Case {
            name: "drop and count",
            action: RateAction::Drop,
            escalate: None,
            delivered: 3,
            close: None,
        },
        Case {
            name: "close at once",
            action: RateAction::Close,
            escalate: None,
            delivered: 3,
            close: Some(1008),
        },
        Case {
            name: "drop, then escalate",
            action: RateAction::Drop,
            escalate: Some(4),
            delivered: 3,
            close: Some(1008),
        },
    ];
    for case in cases {
        let layer = quiet()
            .message_rate(MessageRate::new(nz(3), Duration::from_secs(3600)))
            .on_rate_exceeded(case.action)
            .escalate_after(case.escalate.and_then(std::num::NonZeroU32::new));
        let (mut socket, mut peer) = setup(layer, None);
        for i in 0..10 {
            peer.text(&format!("m{i}"));
        }
        peer.send(Message::Close(None));
        peer.send = None;
        let mut delivered = 0;
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_)) {
                delivered += 1;
            }
        }
        assert_eq!(delivered, case.delivered, "{}", case.name);
        let (_, code) = peer.until_close(false).await;
        match case.close {
            Some(code_expected) => {
                assert_eq!(code, Some(code_expected), "{}", case.name);
                assert_eq!(
                    socket.close_cause(),
                    Some(CloseCause::RateLimited(RateScope::SocketMessages)),
                    "{}",
                    case.name
                );
            }
            None => {
                assert_eq!(socket.close_cause(), None, "{}", case.name);
                assert_eq!(socket.stats().dropped_incoming, 7, "{}", case.name);
            }
        }
    }
}

async fn count(s: &mut GuardedSocket) -> usize {
    let mut n = 0;
    while let Some(Ok(m)) = s.recv().await {
        n += usize::from(matches!(m, Message::Text(_)));
    }
    n
}

#[tokio::test(start_paused = true)]
async fn identity_rate_spans_sockets() {
    let layer = quiet()
        .identity_message_rate(MessageRate::new(nz(4), Duration::from_secs(3600)))
        .escalate_after(None);
    let principal = || Some(Principal::new("carol", None));
    let (mut a, mut pa) = setup(layer.clone(), principal());
    let (mut b, mut pb) = setup(layer.clone(), principal());
    let (mut c, mut pc) = setup(layer.clone(), Some(Principal::new("dave", None)));
    assert_eq!(layer.policy().tracked_identities(), 2);
    for i in 0..3 {
        pa.text(&format!("a{i}"));
        pb.text(&format!("b{i}"));
        pc.text(&format!("c{i}"));
    }
    for p in [&mut pa, &mut pb, &mut pc] {
        p.send(Message::Close(None));
        p.send = None;
    }
    let carol = count(&mut a).await + count(&mut b).await;
    assert_eq!(carol, 4, "carol's two sockets share one budget of 4");
    assert_eq!(count(&mut c).await, 3, "dave has his own budget");
    assert_eq!(a.stats().dropped_incoming + b.stats().dropped_incoming, 2);
    drop((pa, pb, pc));
    drop((a, b, c));
    tokio::task::yield_now().await;
    for _ in 0..10 {
        if layer.policy().tracked_identities() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        layer.policy().tracked_identities(),
        0,
        "entries go with the sockets"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_message_closes_with_1009() {
    let (mut socket, mut peer) = setup(quiet(), None);
    let too_long =
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size: 100_000,
            max_size: 65_536,
        });
    assert!(is_too_big(&Error::new(too_long)));
    assert!(!is_too_big(&Error::new(std::io::Error::other("other"))));
    let too_long =
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size: 100_000,
            max_size: 65_536,
        });
    if let Some(tx) = &peer.send {
        let _ = tx.send(Err(Error::new(too_long)));
    }
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1009));
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::MessageTooBig));
}

#[tokio::test(start_paused = true)]
async fn other_read_errors_are_delivered_and_end_the_socket() {
    let (mut socket, peer) = setup(quiet(), None);
    if let Some(tx) = &peer.send {
        let _ = tx.send(Err(Error::new(std::io::Error::other("reset"))));
    }
    assert!(matches!(socket.recv().await, Some(Err(_))));
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), None);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_policies() {
    // Close: the send that overflows fails, the socket closes with 1013.
    let (mut socket, mut peer) = setup(
        quiet()
            .send_queue(nz(4), nz(1 << 20))
            .close_timeout(Duration::from_secs(1)),
        None,
    );
    peer.gate.set_blocked(true);
    let mut refused = None;
    for i in 0..100 {
        assert!(socket.stats().queued <= 4);
        if let Err(e) = socket.sender().send(Message::text(format!("{i}"))) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, err) = refused.expect("the queue overflowed");
    assert!(i <= 5, "refused at {i}");
    assert_eq!(
        err,
        SendError::Closed {
            cause: Some(CloseCause::SlowConsumer)
        }
    );
    assert!(socket.recv().await.is_none());
    assert_eq!(socket.close_cause(), Some(CloseCause::SlowConsumer));
    // The peer never reads: the driver gives up after the close timeout.
    peer.driver.await.unwrap();
    let mut codes = Vec::new();
    while let Ok(msg) = peer.recv.try_recv() {
        if let Message::Close(Some(f)) = msg {
            codes.push(f.code);
        }
    }
    assert!(codes.is_empty(), "a blocked peer got nothing");

    // Drop oldest: the queue stays bounded and the newest messages arrive.
    let (socket, mut peer) = setup(
        quiet()
            .send_queue(nz(4), nz(1 << 20))
            .slow_consumer(SlowConsumer::DropOldest),
        None,
    );
    peer.gate.set_blocked(true);
    tokio::task::yield_now().await;
    let sender = socket.sender();
    for i in 0..100 {
        sender.send(Message::text(format!("{i}"))).unwrap();
        assert!(sender.queued() <= 4);
    }
    assert!(socket.stats().dropped_outgoing >= 90);
    peer.gate.set_blocked(false);
    drop(socket);
    let (seen, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1000));
    let seen: Vec<_> = seen.iter().map(|m| text_of(m).to_owned()).collect();
    assert_eq!(seen.last().map(String::as_str), Some("99"));
    assert!(seen.len() <= 6, "{seen:?}");

    // Conflate: the latest value per key arrives.
    let (socket, peer) = setup(
        quiet()
            .send_queue(nz(4), nz(1 << 20))
            .slow_consumer(SlowConsumer::Conflate),
        None,
    );
    peer.gate.set_blocked(true);
    tokio::task::yield_now().await;
    for i in 0..100 {
        for key in ["btc", "eth", "sol"] {
            socket
                .send_keyed(key, Message::text(format!("{key} {i}")))
                .unwrap();
        }
        assert!(socket.stats().queued <= 4);
    }
    assert!(socket.stats().conflated >= 290);
    assert!(
        socket.send_keyed("ada", Message::text("ada 0")).is_ok(),
        "4th key fits"
    );
    assert!(
        socket.send_keyed("xrp", Message::text("xrp 0")).is_err(),
        "5th overflows"
    );
    assert_eq!(socket.close_cause(), Some(CloseCause::SlowConsumer));
}

#[tokio::test(start_paused = true)]
async fn conflation_delivers_the_latest_value_per_key() {
    let (socket, mut peer) = setup(
        quiet()
            .send_queue(nz(8), nz(1 << 20))
            .slow_consumer(SlowConsumer::Conflate),
        None,
    );
    peer.gate.set_blocked(true);
    tokio::task::yield_now().await;
    let sender = socket.sender();
    let pusher = tokio::spawn(async move {
        for i in 0..1000 {
            for key in ["btc", "eth"] {
                sender
                    .send_keyed(key, Message::text(format!("{key} {i}")))
                    .unwrap();
            }
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    pusher.await.unwrap();
    peer.gate.set_blocked(false);
    drop(socket);
    let (seen, _) = peer.until_close(false).await;
    let last = |key: &str| {
        seen.iter()
            .rev()
            .map(text_of)
            .find(|t| t.starts_with(key))
            .map(str::to_owned)
    };
    assert_eq!(last("btc").as_deref(), Some("btc 999"));
    assert_eq!(last("eth").as_deref(), Some("eth 999"));
    assert!(seen.len() < 2000);
}

#[tokio::test(start_paused = true)]
async fn an_application_that_does_not_read_drops_messages_not_deadlines() {
    let (mut socket, peer) = setup(
        quiet()
            .recv_queue(nz(2))
            .heartbeat(Duration::from_secs(10), Duration::from_secs(5)),
        None,
    );
    for i in 0..10 {
        peer.text(&format!("{i}"));
    }
    // The peer answers every ping; the application reads nothing for a minute.
    let mut peer = peer;
    let live = tokio::spawn(async move { peer.until_close(true).await });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(socket.close_cause(), None, "the pongs were read meanwhile");
    let stats = socket.stats();
    assert_eq!((stats.received, stats.dropped_unread), (2, 8));
    for expected in ["0", "1"] {
        let msg = socket.recv().await.unwrap().unwrap();
        assert_eq!(text_of(&msg), expected, "the queue keeps the oldest");
    }
    drop(socket);
    assert_eq!(live.await.unwrap().1, Some(1000));
}

#[tokio::test(start_paused = true)]
async fn an_application_that_does_not_read_is_still_guarded_by_the_heartbeat() {
    let (socket, mut peer) = setup(
        quiet()
            .recv_queue(nz(2))
            .heartbeat(Duration::from_secs(10), Duration::from_secs(5)),
        None,
    );
    for i in 0..10 {
        peer.text(&format!("{i}"));
    }
    // The peer never answers; the application never reads.
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1001));
    assert_eq!(socket.close_cause(), Some(CloseCause::HeartbeatTimeout));
}

#[tokio::test(start_paused = true)]
async fn only_the_pong_of_the_ping_written_counts() {
    let (mut socket, mut peer) = setup(
        quiet().heartbeat(Duration::from_secs(10), Duration::from_secs(5)),
        None,
    );
    // The first ping is written and answered.
    let Some(Message::Ping(first)) = peer.recv.recv().await else {
        panic!("expected a ping");
    };
    assert_eq!(first.len(), 16);
    assert_ne!(&first[..], &1u64.to_be_bytes()[..], "not a counter");
    peer.send(Message::Pong(first.clone()));
    // The peer stops reading before the second ping is written; it answers the first ping
    // again, and guesses the counter of old.
    tokio::task::yield_now().await;
    peer.gate.set_blocked(true);
    tokio::time::sleep(Duration::from_secs(11)).await;
    peer.send(Message::Pong(first.clone()));
    peer.send(Message::Pong(2u64.to_be_bytes().to_vec().into()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(socket.close_cause(), Some(CloseCause::HeartbeatTimeout));
    // The replayed and the guessed pong were ordinary frames, delivered as axum would.
    let mut pongs = 0;
    while let Some(Ok(msg)) = socket.recv().await {
        pongs += usize::from(matches!(msg, Message::Pong(_)));
    }
    assert_eq!(pongs, 2);
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_held_until_the_socket_ends() {
    struct Slot(Arc<AtomicBool>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let released = Arc::new(AtomicBool::new(false));
    let permit = ConnectionPermit::holding(Slot(released.clone()));
    let (socket, mut peer) = setup_with_permit(quiet(), None, Some(permit));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!released.load(Ordering::SeqCst));
    drop(socket);
    let (_, code) = peer.until_close(false).await;
    assert_eq!(code, Some(1000));
    peer.send(Message::Close(None));
    peer.driver.await.unwrap();
    assert!(released.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn application_close_flushes_the_queue_first() {
    let (mut socket, mut peer) = setup(quiet(), None);
    socket.send(Message::text("one")).await.unwrap();
    socket.send(Message::text("two")).await.unwrap();
    socket.close_with(4000, "bye").unwrap();
    assert!(socket.send(Message::text("three")).await.is_err());
    let (seen, code) = peer.until_close(false).await;
    assert_eq!(code, Some(4000));
    assert_eq!(seen.iter().map(text_of).collect::<Vec<_>>(), ["one", "two"]);
    peer.send(Message::Close(None));
    assert!(socket.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn close_signal_closes_with_1008_before_or_after_attaching() {
    struct Case {
        name: &'static str,
        revoke_before_attach: bool,
    }
    let cases = [
        Case {
            name: "revoked while open",
            revoke_before_attach: false,
        },
        Case {
            name: "revoked during the handshake",
            revoke_before_attach: true,
        },
    ];
    for case in cases {
        let signal = crate::socket::CloseSignal::new();
        if case.revoke_before_attach {
            signal.revoke();
        }
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_server) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate::default());
        let ws = FakeWs {
            incoming,
            outgoing,
            gate: gate.clone(),
        };
        let (mut socket, driver) = start(ws, None, None, quiet().policy(), None, None, None);
        signal.attach(driver.shared());
        let mut peer = Peer {
            send: Some(to_server),
            recv: from_server,
            gate,
            driver: tokio::spawn(driver),
        };
        peer.text("hello");
        if !case.revoke_before_attach {
            let msg = socket.recv().await.unwrap().unwrap();
            assert_eq!(text_of(&msg), "hello", "{}", case.name);
            signal.revoke();
        }
        let (_, code) = peer.until_close(false).await;
        assert_eq!(code, Some(1008), "{}", case.name);
        while socket.recv().await.is_some() {}
        assert_eq!(
            socket.close_cause(),
            Some(CloseCause::Revoked),
            "{}",
            case.name
        );
        assert!(signal.is_revoked());
    }
}
