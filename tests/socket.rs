//! Loopback tests of the socket policy: a real axum server on 127.0.0.1:0 and
//! tokio-tungstenite clients, one test per limit; wire-level attacks with hand-made frames
//! on raw TCP ([`common::RawWs`]).

mod common;

use common::nz;
use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, ws::Message as AxMessage, ws::WebSocketUpgrade},
    middleware::{self, Next},
    response::Response,
    routing::{any, post},
};
use common::{RawWs, opcode};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
    time::timeout,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;
use wsguard::{
    auth::Principal,
    client_ip::ClientIp,
    rate_limit::ConnectionPermit,
    socket::{
        CloseCause, FanOut, GuardedSocket, GuardedUpgrade, MessageRate, RateAction, SlowConsumer,
        SocketPolicyLayer, SocketStats,
    },
};

/// A guard against hangs, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(10);

type Client = WebSocketStream<TcpStream>;

async fn serve(app: Router) -> SocketAddr {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), app)
}

fn serve_on(listener: TcpListener, app: Router) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A listener whose accepted sockets have a small send buffer, so a non-reading client
/// blocks the server after a few KiB.
fn small_buffer_listener() -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(16).unwrap()
}

async fn connect(addr: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    client
}

/// Reads until the server's close frame; returns the data messages and the close code.
async fn until_close(client: &mut Client) -> (Vec<String>, Option<u16>) {
    let mut seen = Vec::new();
    let read = async {
        while let Some(msg) = client.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(Message::Text(t)) => seen.push(t.as_str().to_owned()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let code = timeout(LIMIT, read)
        .await
        .expect("the server closed in time");
    (seen, code)
}

/// What the handler saw when its socket ended.
#[derive(Debug)]
struct Ended {
    cause: Option<CloseCause>,
    stats: SocketStats,
}

/// An echo route under `layer`; each socket reports how it ended on the channel.
fn echo_app(layer: SocketPolicyLayer) -> (Router, mpsc::UnboundedReceiver<Ended>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ws",
            any(move |up: GuardedUpgrade| {
                let tx = tx.clone();
                async move {
                    up.on_upgrade(move |mut socket: GuardedSocket| async move {
                        while let Some(Ok(msg)) = socket.recv().await {
                            if matches!(msg, AxMessage::Text(_)) && socket.send(msg).await.is_err()
                            {
                                break;
                            }
                        }
                        let _ = tx.send(Ended {
                            cause: socket.close_cause(),
                            stats: socket.stats(),
                        });
                    })
                }
            }),
        )
        .layer(layer);
    (app, rx)
}

fn quiet() -> SocketPolicyLayer {
    SocketPolicyLayer::new()
        .without_heartbeat()
        .message_rate(None)
        .byte_rate(None)
        .identity_message_rate(None)
        .identity_byte_rate(None)
}

async fn ended(rx: &mut mpsc::UnboundedReceiver<Ended>) -> Ended {
    timeout(LIMIT, rx.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn oversized_message_gets_1009() {
    let (app, mut rx) = echo_app(quiet().max_message_size(nz(1024)));
    let mut client = connect(serve(app).await).await;
    client.send(Message::text("small")).await.unwrap();
    client.send(Message::text("x".repeat(2048))).await.unwrap();
    let (seen, code) = until_close(&mut client).await;
    assert_eq!(seen, ["small"]);
    assert_eq!(code, Some(1009));
    assert_eq!(ended(&mut rx).await.cause, Some(CloseCause::MessageTooBig));
}

#[tokio::test]
async fn oversized_frame_gets_1009() {
    let (app, mut rx) = echo_app(quiet().max_frame_size(nz(512)));
    let mut client = connect(serve(app).await).await;
    client.send(Message::binary(vec![7u8; 1000])).await.unwrap();
    let (_, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1009));
    assert_eq!(ended(&mut rx).await.cause, Some(CloseCause::MessageTooBig));
}

#[tokio::test]
async fn flood_is_dropped_and_counted() {
    let layer = quiet()
        .message_rate(MessageRate::new(nz(5), Duration::from_secs(3600)))
        .escalate_after(None);
    let (app, mut rx) = echo_app(layer);
    let mut client = connect(serve(app).await).await;
    for i in 0..50 {
        client.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let msg = timeout(LIMIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(msg.into_text().unwrap().as_str().to_owned());
    }
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
    client.close(None).await.unwrap();
    let (late, _) = until_close(&mut client).await;
    assert_eq!(
        late,
        Vec::<String>::new(),
        "nothing beyond the burst got through"
    );
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, None, "the socket stayed open");
    assert_eq!(end.stats.dropped_incoming, 45);
}

#[tokio::test]
async fn flood_is_closed_with_1008() {
    struct Case {
        name: &'static str,
        layer: SocketPolicyLayer,
    }
    let rate = || MessageRate::new(nz(5), Duration::from_secs(3600));
    let cases = [
        Case {
            name: "close at once",
            layer: quiet()
                .message_rate(rate())
                .on_rate_exceeded(RateAction::Close),
        },
        Case {
            name: "escalate after three drops",
            layer: quiet()
                .message_rate(rate())
                .escalate_after(nz::<NonZeroU32>(3)),
        },
        Case {
            name: "byte rate",
            layer: quiet()
                .max_message_size(nz(100))
                .byte_rate(MessageRate::new(nz(300), Duration::from_secs(3600)))
                .on_rate_exceeded(RateAction::Close),
        },
    ];
    for case in cases {
        let (app, mut rx) = echo_app(case.layer);
        let mut client = connect(serve(app).await).await;
        for i in 0..50 {
            // The server may close while we are still sending.
            if client
                .feed(Message::text(format!("{i:0>100}")))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = client.flush().await;
        let (seen, code) = until_close(&mut client).await;
        assert_eq!(code, Some(1008), "{}", case.name);
        assert!(seen.len() <= 5, "{}: {}", case.name, seen.len());
        assert!(
            matches!(ended(&mut rx).await.cause, Some(CloseCause::RateLimited(_))),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn identity_rate_spans_sockets() {
    let layer = quiet()
        .identity_message_rate(MessageRate::new(nz(4), Duration::from_secs(3600)))
        .escalate_after(None);
    let (app, mut rx) = echo_app(layer);
    let app = app.layer(middleware::from_fn(
        |mut req: Request, next: Next| async move {
            req.extensions_mut().insert(Principal::new("erin", None));
            next.run(req).await
        },
    ));
    let addr = serve(app).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    for i in 0..3 {
        a.send(Message::text(format!("a{i}"))).await.unwrap();
        b.send(Message::text(format!("b{i}"))).await.unwrap();
    }
    // Four of the six share the identity's budget; read them from whichever socket.
    let mut echoed = 0;
    while echoed < 4 {
        let msg = timeout(LIMIT, async {
            tokio::select! {
                m = a.next() => m,
                m = b.next() => m,
            }
        })
        .await
        .unwrap();
        assert!(matches!(msg, Some(Ok(Message::Text(_)))), "{msg:?}");
        echoed += 1;
    }
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    let (late_a, _) = until_close(&mut a).await;
    let (late_b, _) = until_close(&mut b).await;
    assert!(
        late_a.is_empty() && late_b.is_empty(),
        "{late_a:?} {late_b:?}"
    );
    let dropped =
        ended(&mut rx).await.stats.dropped_incoming + ended(&mut rx).await.stats.dropped_incoming;
    assert_eq!(dropped, 2);
}

#[tokio::test]
async fn idle_socket_is_closed() {
    let (app, mut rx) = echo_app(quiet().idle_timeout(Duration::from_millis(50)));
    let mut client = connect(serve(app).await).await;
    let (_, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1001));
    assert_eq!(ended(&mut rx).await.cause, Some(CloseCause::Idle));
}

#[tokio::test]
async fn unanswered_pings_close_the_socket() {
    let (app, mut rx) =
        echo_app(quiet().heartbeat(Duration::from_millis(30), Duration::from_millis(30)));
    // The client never polls, so tungstenite never answers the pings.
    let mut client = connect(serve(app).await).await;
    assert_eq!(
        ended(&mut rx).await.cause,
        Some(CloseCause::HeartbeatTimeout)
    );
    let (_, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1001));
}

#[tokio::test]
async fn answered_pings_keep_the_socket_open() {
    let (app, mut rx) = echo_app(quiet().heartbeat(Duration::from_millis(10), LIMIT / 2));
    let mut client = connect(serve(app).await).await;
    // Read (and so answer) several pings.
    let mut pings = 0;
    while pings < 5 {
        match timeout(LIMIT, client.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    client.send(Message::text("still open")).await.unwrap();
    client.close(None).await.unwrap();
    let (seen, _) = until_close(&mut client).await;
    assert_eq!(seen, ["still open"]);
    assert_eq!(ended(&mut rx).await.cause, None);
}

fn with_principal(app: Router, expires_in: Duration) -> Router {
    app.layer(middleware::from_fn(
        move |mut req: Request, next: Next| async move {
            req.extensions_mut().insert(Principal::new(
                "frank",
                Some(SystemTime::now() + expires_in),
            ));
            req.extensions_mut().insert(ClientIp([127, 0, 0, 1].into()));
            next.run(req).await
        },
    ))
}

#[tokio::test]
async fn expired_credential_gets_1008() {
    let (app, mut rx) = echo_app(quiet());
    let app = with_principal(app, Duration::from_millis(100));
    let mut client = connect(serve(app).await).await;
    let (_, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1008));
    assert_eq!(
        ended(&mut rx).await.cause,
        Some(CloseCause::CredentialExpired)
    );
}

#[tokio::test]
async fn in_band_refresh_extends_the_credential() {
    let app = Router::new()
        .route(
            "/ws",
            any(|up: GuardedUpgrade| async move {
                up.on_upgrade(|mut socket: GuardedSocket| async move {
                    let Some(Ok(AxMessage::Text(_))) = socket.recv().await else {
                        return;
                    };
                    // The application verified the refresh token it was sent.
                    let first = socket.principal().and_then(Principal::expires_at);
                    let fresh = Principal::new("frank", Some(SystemTime::now() + LIMIT));
                    if socket.refresh_credential(fresh).is_err() {
                        return;
                    }
                    // Outlive the first expiry, then prove the socket is still open.
                    if let Some(first) = first {
                        let left = first.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(left + Duration::from_millis(50)).await;
                    }
                    let who = format!(
                        "{} {:?}",
                        socket.principal().map(Principal::subject).unwrap_or("-"),
                        socket.client_ip().map(|ip| ip.0)
                    );
                    let _ = socket.send(AxMessage::text(who)).await;
                    while socket.recv().await.is_some() {}
                })
            }),
        )
        .layer(quiet());
    // Long enough for the refresh to arrive first on a loaded machine.
    let app = with_principal(app, Duration::from_millis(500));
    let mut client = connect(serve(app).await).await;
    client.send(Message::text("refresh")).await.unwrap();
    let msg = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::text("frank Some(127.0.0.1)"));
    client.close(None).await.unwrap();
    let (_, code) = until_close(&mut client).await;
    assert_ne!(code, Some(1008));
}

/// A server pushing to a client that does not read, under each slow-consumer policy.
fn pusher_app(
    layer: SocketPolicyLayer,
    keyed: bool,
) -> (Router, mpsc::UnboundedReceiver<(Ended, usize, bool)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ws",
            any(move |up: GuardedUpgrade| {
                let tx = tx.clone();
                async move {
                    up.on_upgrade(move |mut socket: GuardedSocket| async move {
                        let mut max_queued = 0;
                        let mut refused = false;
                        for i in 0..3000 {
                            let key = ["btc", "eth"][i % 2];
                            let msg = AxMessage::text(format!("{key} {i:0>200}"));
                            let sent = if keyed {
                                socket.send_keyed(key, msg).map_err(axum::Error::new)
                            } else {
                                socket.send(msg).await
                            };
                            if sent.is_err() {
                                refused = true;
                                break;
                            }
                            max_queued = max_queued.max(socket.stats().queued);
                            if i % 64 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                        let end = Ended {
                            cause: socket.close_cause(),
                            stats: socket.stats(),
                        };
                        let _ = tx.send((end, max_queued, refused));
                        // Closes after the queue drains (or the policy closed already).
                        drop(socket);
                    })
                }
            }),
        )
        .layer(layer);
    (app, rx)
}

fn pushing(policy: SlowConsumer) -> SocketPolicyLayer {
    quiet()
        .write_buffer_size(0)
        .send_queue(nz(16), nz(1 << 20))
        .slow_consumer(policy)
        .close_timeout(LIMIT)
}

#[tokio::test]
async fn slow_consumer_is_closed_with_1013() {
    let (app, mut rx) = pusher_app(pushing(SlowConsumer::Close), false);
    let mut client = connect(serve_on(small_buffer_listener(), app)).await;
    let (end, max_queued, refused) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert!(refused, "the queue overflowed");
    assert!(max_queued <= 16);
    assert_eq!(end.cause, Some(CloseCause::SlowConsumer));
    let (seen, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1013));
    assert!(seen.len() < 3000);
}

#[tokio::test]
async fn slow_consumer_drops_oldest() {
    let (app, mut rx) = pusher_app(pushing(SlowConsumer::DropOldest), false);
    let mut client = connect(serve_on(small_buffer_listener(), app)).await;
    let (end, max_queued, refused) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert!(!refused);
    assert!(max_queued <= 16);
    assert!(end.stats.dropped_outgoing > 0);
    let (seen, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1000));
    assert_eq!(seen.len() as u64 + end.stats.dropped_outgoing, 3000);
    assert!(
        seen.last().unwrap().ends_with("2999"),
        "the newest message arrives"
    );
}

#[tokio::test]
async fn slow_consumer_conflates_by_key() {
    let (app, mut rx) = pusher_app(pushing(SlowConsumer::Conflate), true);
    let mut client = connect(serve_on(small_buffer_listener(), app)).await;
    let (end, max_queued, refused) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert!(!refused, "two keys always fit");
    assert!(max_queued <= 16, "bounded by the send queue");
    assert!(end.stats.conflated > 0);
    let (seen, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1000));
    assert!(seen.len() < 3000);
    let last = |key: &str| seen.iter().rev().find(|m| m.starts_with(key)).cloned();
    assert!(last("btc").unwrap().ends_with("2998"), "latest btc");
    assert!(last("eth").unwrap().ends_with("2999"), "latest eth");
}

#[tokio::test]
async fn connection_permit_is_held_until_the_socket_ends() {
    struct Slot(Arc<AtomicBool>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let (app, mut rx) = echo_app(quiet());
    let app = app.layer(middleware::from_fn(move |mut req: Request, next: Next| {
        let flag = flag.clone();
        async move {
            req.extensions_mut()
                .insert(ConnectionPermit::holding(Slot(flag)));
            next.run(req).await
        }
    }));
    let mut client = connect(serve(app).await).await;
    client.send(Message::text("ping")).await.unwrap();
    let echo = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("ping"));
    assert!(
        !released.load(Ordering::SeqCst),
        "the slot is held while the socket lives, though the handshake response is long gone"
    );
    client.close(None).await.unwrap();
    until_close(&mut client).await;
    ended(&mut rx).await;
    for _ in 0..500 {
        if released.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        released.load(Ordering::SeqCst),
        "the slot is released with the socket"
    );
}

#[tokio::test]
async fn plain_axum_upgrade_still_works_under_the_layer() {
    let app = Router::new()
        .route(
            "/ws",
            any(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, AxMessage::Text(_)) && socket.send(msg).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
        .layer(SocketPolicyLayer::new());
    let mut client = connect(serve(app).await).await;
    client.send(Message::text("plain")).await.unwrap();
    let echo = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("plain"));
}

#[tokio::test]
async fn guarded_upgrade_without_the_layer_uses_defaults() {
    let app = Router::new().route(
        "/ws",
        any(|up: GuardedUpgrade| async move {
            let limit = up.policy().max_message_size();
            up.on_upgrade(move |mut socket: GuardedSocket| async move {
                let _ = socket.send(AxMessage::text(limit.to_string())).await;
                while socket.recv().await.is_some() {}
            })
        }),
    );
    let mut client = connect(serve(app).await).await;
    let msg = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::text("65536"));
    client
        .send(Message::binary(vec![0u8; 70_000]))
        .await
        .unwrap();
    let (_, code) = until_close(&mut client).await;
    assert_eq!(code, Some(1009), "the default 64 KiB limit applies");
}

#[tokio::test]
async fn non_websocket_requests_pass_and_bodies_are_limited_elsewhere() {
    struct Case {
        name: &'static str,
        request: http::Request<Body>,
        status: StatusCode,
    }
    let app = Router::new()
        .route(
            "/ws",
            any(|up: GuardedUpgrade| async move { up.on_upgrade(|_| async {}) }),
        )
        .layer(SocketPolicyLayer::new())
        .merge(
            Router::new()
                .route(
                    "/upload",
                    post(|body: String| async move { body.len().to_string() }),
                )
                .layer(RequestBodyLimitLayer::new(1024)),
        );
    let cases = [
        Case {
            name: "a handshake passes the layer (oneshot cannot upgrade)",
            request: http::Request::get("/ws")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .body(Body::empty())
                .unwrap(),
            status: StatusCode::UPGRADE_REQUIRED,
        },
        Case {
            name: "a plain GET is refused by axum's extractor",
            request: http::Request::get("/ws").body(Body::empty()).unwrap(),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            name: "body within the limit",
            request: http::Request::post("/upload")
                .body(Body::from("hello"))
                .unwrap(),
            status: StatusCode::OK,
        },
        Case {
            name: "body over the limit",
            request: http::Request::post("/upload")
                .body(Body::from(vec![b'x'; 2048]))
                .unwrap(),
            status: StatusCode::PAYLOAD_TOO_LARGE,
        },
    ];
    for case in cases {
        let response: Response = app.clone().oneshot(case.request).await.unwrap();
        assert_eq!(response.status(), case.status, "{}", case.name);
    }
}

#[tokio::test]
async fn subprotocols_are_negotiated() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = Router::new()
        .route(
            "/ws",
            any(|up: GuardedUpgrade| async move {
                up.protocols(["graphql-ws", "chat"]).on_upgrade(
                    |mut socket: GuardedSocket| async move {
                        let chosen = socket
                            .protocol()
                            .and_then(|p| p.to_str().ok())
                            .unwrap_or("none")
                            .to_owned();
                        let _ = socket.send(AxMessage::text(chosen)).await;
                        while socket.recv().await.is_some() {}
                    },
                )
            }),
        )
        .layer(quiet());
    let addr = serve(app).await;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut client, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    let msg = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::text("chat"));
}

// ---------------------------------------------------------------------------------------------
// Counted on the wire: frames, fragments and the time a message takes.

async fn raw(addr: SocketAddr) -> RawWs {
    RawWs::connect(addr, "/ws", &[]).await
}

#[tokio::test]
async fn endless_empty_continuations_are_closed_with_1008() {
    let (app, mut rx) = echo_app(quiet());
    let addr = serve(app).await;
    let mut attacker = raw(addr).await;
    let mut sent = 0;
    if attacker.send(false, opcode::TEXT, b"{").await.is_ok() {
        // Empty fragments: the message never grows, never completes, is never counted.
        while sent < 20_000
            && attacker
                .send(false, opcode::CONTINUATION, b"")
                .await
                .is_ok()
        {
            sent += 1;
        }
    }
    assert_eq!(
        attacker.close_code().await,
        Some(1008),
        "after {sent} fragments"
    );
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, Some(CloseCause::TooManyFragments));
    assert_eq!(end.stats.received, 0);
    // The server still serves others.
    let mut client = connect(addr).await;
    client.send(Message::text("hi")).await.unwrap();
    let echo = timeout(LIMIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("hi"));
}

#[tokio::test]
async fn fragment_flood_is_closed_with_1008_before_the_size_limit() {
    let (app, mut rx) = echo_app(quiet());
    let mut attacker = raw(serve(app).await).await;
    // One byte a fragment: 4 KiB is far below the 64 KiB message limit.
    let mut ok = attacker.send(false, opcode::BINARY, b"x").await.is_ok();
    for _ in 0..4096 {
        if !ok {
            break;
        }
        ok = attacker
            .send(false, opcode::CONTINUATION, b"x")
            .await
            .is_ok();
    }
    assert_eq!(attacker.close_code().await, Some(1008));
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, Some(CloseCause::TooManyFragments));
    assert_eq!(end.stats.received, 0);
}

#[tokio::test]
async fn the_fragment_limit_is_configurable() {
    let limit = std::num::NonZeroU32::new(4).unwrap();
    let (app, mut rx) = echo_app(quiet().max_fragments(limit));
    let mut client = raw(serve(app).await).await;
    // Four fragments make a message; five do not.
    for (i, fin) in [false, false, false, true].into_iter().enumerate() {
        let op = if i == 0 {
            opcode::TEXT
        } else {
            opcode::CONTINUATION
        };
        client.send(fin, op, b"ab").await.unwrap();
    }
    let (_, op, payload) = timeout(LIMIT, client.next_frame()).await.unwrap().unwrap();
    assert_eq!((op, payload.as_slice()), (opcode::TEXT, &b"abababab"[..]));
    for i in 0..5 {
        let op = if i == 0 {
            opcode::TEXT
        } else {
            opcode::CONTINUATION
        };
        let _ = client.send(false, op, b"ab").await;
    }
    assert_eq!(client.close_code().await, Some(1008));
    assert_eq!(
        ended(&mut rx).await.cause,
        Some(CloseCause::TooManyFragments)
    );
}

/// Found by the `socket` fuzz target: frames passed up before a violation, then the peer's
/// close frame in the same read, made the server end the connection without its close frame.
#[tokio::test]
async fn a_close_frame_right_behind_a_fragment_violation_still_gets_the_close_frame() {
    let limit = std::num::NonZeroU32::new(2).unwrap();
    // The same with a well-formed close and with a broken one (not final, RSV bits set).
    for close_b0 in [0x80 | opcode::CLOSE, 0x70 | opcode::CLOSE] {
        let (app, mut rx) = echo_app(quiet().max_fragments(limit));
        let mut client = raw(serve(app).await).await;
        // One write: a whole message (passed up), three fragments (one too many), a close.
        let mut bytes = client.frame(true, opcode::TEXT, b"ok");
        bytes.extend(client.frame(false, opcode::TEXT, b"a"));
        bytes.extend(client.frame(false, opcode::CONTINUATION, b"b"));
        bytes.extend(client.frame(false, opcode::CONTINUATION, b"c"));
        let mut close = client.frame(true, opcode::CLOSE, &1000u16.to_be_bytes());
        close[0] = close_b0;
        bytes.extend(close);
        client.stream.write_all(&bytes).await.unwrap();
        assert_eq!(
            client.close_code().await,
            Some(1008),
            "close byte {close_b0:#x}"
        );
        assert_eq!(
            ended(&mut rx).await.cause,
            Some(CloseCause::TooManyFragments)
        );
    }
}

/// Found by the `socket` fuzz target: a message and the peer's close that fill the receive
/// queue, then a wire violation (too many fragments) in the same read. The policy close that
/// followed could not be sent after the peer's close (tungstenite takes no second close), and
/// the connection was dropped with tungstenite's answer to the peer's close still unsent.
#[tokio::test]
async fn a_wire_violation_right_behind_the_peers_close_still_gets_the_close_answer() {
    let limit = std::num::NonZeroU32::new(2).unwrap();
    let (app, mut rx) = echo_app(quiet().max_fragments(limit).recv_queue(nz(2)));
    let mut client = raw(serve(app).await).await;
    let mut bytes = client.frame(true, opcode::TEXT, b"ok");
    bytes.extend(client.frame(true, opcode::CLOSE, &1000u16.to_be_bytes()));
    bytes.extend(client.frame(false, opcode::TEXT, b"a"));
    bytes.extend(client.frame(false, opcode::CONTINUATION, b"b"));
    bytes.extend(client.frame(false, opcode::CONTINUATION, b"c"));
    client.stream.write_all(&bytes).await.unwrap();
    // tungstenite's answer: the peer's own code.
    assert_eq!(client.close_code().await, Some(1000));
    // The peer closed first: no policy close, whatever came after its close frame.
    assert_eq!(ended(&mut rx).await.cause, None);
}

/// Found by the `socket` fuzz target: when the receive queue filled up on pings and a wire
/// violation followed in the same read, the pong owed to the last ping was still queued in
/// tungstenite and went out after the 1008 close frame, so the close was not the server's
/// last frame.
#[tokio::test]
async fn a_pong_owed_at_a_policy_close_goes_out_before_the_close_frame() {
    let limit = std::num::NonZeroU32::new(2).unwrap();
    let (app, mut rx) = echo_app(quiet().max_fragments(limit).recv_queue(nz(2)));
    let mut client = raw(serve(app).await).await;
    // One write: pings that fill the receive queue, then three fragments (one too many).
    let mut bytes = Vec::new();
    for i in 0..4u8 {
        bytes.extend(client.frame(true, opcode::PING, &[i]));
    }
    bytes.extend(client.frame(false, opcode::TEXT, b"a"));
    bytes.extend(client.frame(false, opcode::CONTINUATION, b"b"));
    bytes.extend(client.frame(false, opcode::CONTINUATION, b"c"));
    client.stream.write_all(&bytes).await.unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = timeout(LIMIT, client.next_frame()).await.unwrap() {
        if frame.1 == opcode::CLOSE {
            // Answer it, so the server ends the connection; read on to the end.
            let close = client.frame(true, opcode::CLOSE, &1000u16.to_be_bytes());
            let _ = client.stream.write_all(&close).await;
        }
        frames.push(frame);
    }
    let ops: Vec<u8> = frames.iter().map(|(_, op, _)| *op).collect();
    assert_eq!(ops.last(), Some(&opcode::CLOSE), "frames: {ops:?}");
    assert_eq!(ops.iter().filter(|op| **op == opcode::CLOSE).count(), 1);
    assert_eq!(frames.last().unwrap().2[..2], 1008u16.to_be_bytes());
    // The pongs answer the pings read before the violation, in order (what came after the
    // first full queue is never read).
    let pongs: Vec<u8> = frames
        .iter()
        .filter(|(_, op, _)| *op == opcode::PONG)
        .flat_map(|(_, _, payload)| payload.clone())
        .collect();
    assert!(
        !pongs.is_empty() && [0, 1, 2, 3].starts_with(&pongs),
        "pongs {pongs:?}"
    );
    assert_eq!(
        ended(&mut rx).await.cause,
        Some(CloseCause::TooManyFragments)
    );
}

#[tokio::test]
async fn frame_flood_of_tiny_messages_is_closed_with_1008() {
    // No message or byte rate: only the frame rate stands in the way.
    let (app, mut rx) = echo_app(quiet());
    let mut attacker = raw(serve(app).await).await;
    let mut frames = Vec::new();
    for _ in 0..5000 {
        frames.extend(attacker.frame(true, opcode::BINARY, b""));
    }
    let _ = attacker.stream.write_all(&frames).await;
    assert_eq!(attacker.close_code().await, Some(1008));
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, Some(CloseCause::FrameRate));
    assert!(end.stats.received < 5000, "{}", end.stats.received);
}

#[tokio::test]
async fn a_message_that_never_completes_is_closed_at_its_deadline() {
    struct Case {
        name: &'static str,
        /// The bytes that start the message, then an empty fragment every 20 ms if `trickle`.
        start: fn(&mut RawWs) -> Vec<u8>,
        trickle: bool,
    }
    let cases = [
        Case {
            name: "empty fragments now and then, within every rate and the fragment limit",
            start: |ws| ws.frame(false, opcode::TEXT, b"never "),
            trickle: true,
        },
        Case {
            name: "a first fragment, then silence",
            start: |ws| ws.frame(false, opcode::BINARY, b"never"),
            trickle: false,
        },
        Case {
            name: "half a frame header, then silence",
            start: |ws| ws.frame(true, opcode::TEXT, b"hello")[..1].to_vec(),
            trickle: false,
        },
        Case {
            name: "a frame whose payload never all arrives",
            start: |ws| {
                let frame = ws.frame(true, opcode::BINARY, &[9u8; 100]);
                frame[..frame.len() - 1].to_vec()
            },
            trickle: false,
        },
    ];
    for case in cases {
        let layer = quiet().message_deadline(Duration::from_millis(300));
        let (app, mut rx) = echo_app(layer);
        let mut attacker = raw(serve(app).await).await;
        let start = (case.start)(&mut attacker);
        attacker.stream.write_all(&start).await.unwrap();
        let code = timeout(LIMIT, async {
            loop {
                if case.trickle
                    && attacker
                        .send(false, opcode::CONTINUATION, b"")
                        .await
                        .is_err()
                {
                    break attacker.close_code().await;
                }
                if let Ok(frame) = timeout(Duration::from_millis(20), attacker.next_frame()).await {
                    match frame {
                        Some((_, opcode::CLOSE, payload)) => {
                            break payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        }
                        Some(_) => {}
                        None => break None,
                    }
                }
            }
        })
        .await
        .expect("closed in time");
        assert_eq!(code, Some(1008), "{}", case.name);
        let end = ended(&mut rx).await;
        assert_eq!(
            end.cause,
            Some(CloseCause::MessageDeadline),
            "{}",
            case.name
        );
        assert_eq!(end.stats.received, 0, "{}", case.name);
    }
}

#[tokio::test]
async fn slow_but_finished_messages_are_not_cut_off() {
    let (app, mut rx) = echo_app(quiet().message_deadline(LIMIT));
    let mut client = raw(serve(app).await).await;
    // Five fragments over a quarter of a second, then the next message.
    for (i, fin) in [false, false, false, false, true].into_iter().enumerate() {
        let op = if i == 0 {
            opcode::TEXT
        } else {
            opcode::CONTINUATION
        };
        client.send(fin, op, b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, op, payload) = timeout(LIMIT, client.next_frame()).await.unwrap().unwrap();
    assert_eq!((op, payload.as_slice()), (opcode::TEXT, &b"xxxxx"[..]));
    client
        .send(true, opcode::CLOSE, &1000u16.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(client.close_code().await, Some(1000));
    assert_eq!(ended(&mut rx).await.cause, None);
}

// ---------------------------------------------------------------------------------------------
// Heartbeat pings cannot be answered blindly.

#[tokio::test]
async fn blind_pongs_do_not_answer_the_heartbeat() {
    let (app, mut rx) = echo_app(
        quiet()
            .heartbeat(Duration::from_millis(100), Duration::from_millis(100))
            .close_timeout(LIMIT),
    );
    let addr = serve(app).await;
    let mut blind = raw(addr).await;
    // Never reads; answers the n-th ping with `n` as a big-endian u64, as if it had read it,
    // until the server gives up on it (or long after it should have).
    let start = tokio::time::Instant::now();
    let mut end = None;
    while end.is_none() && start.elapsed() < LIMIT / 2 {
        let n = (start.elapsed().as_millis() / 100) as u64;
        for guess in n.saturating_sub(1)..=n + 1 {
            let _ = blind.send(true, opcode::PONG, &guess.to_be_bytes()).await;
        }
        end = timeout(Duration::from_millis(20), rx.recv())
            .await
            .ok()
            .flatten();
    }
    let end = end.expect("the blind client kept the socket open");
    assert_eq!(end.cause, Some(CloseCause::HeartbeatTimeout));
    assert_eq!(blind.close_code().await, Some(1001));
}

#[tokio::test]
async fn echoing_the_real_ping_keeps_the_socket_open() {
    let (app, mut rx) =
        echo_app(quiet().heartbeat(Duration::from_millis(20), Duration::from_millis(200)));
    let mut peer = raw(serve(app).await).await;
    let mut payloads = Vec::new();
    while payloads.len() < 10 {
        let (_, op, payload) = timeout(LIMIT, peer.next_frame()).await.unwrap().unwrap();
        assert_eq!(op, opcode::PING, "{payload:?}");
        peer.send(true, opcode::PONG, &payload).await.unwrap();
        payloads.push(payload);
    }
    peer.send(true, opcode::TEXT, b"still open").await.unwrap();
    loop {
        let (_, op, payload) = timeout(LIMIT, peer.next_frame()).await.unwrap().unwrap();
        if op == opcode::TEXT {
            assert_eq!(payload, b"still open");
            break;
        }
        assert_eq!(op, opcode::PING);
        peer.send(true, opcode::PONG, &payload).await.unwrap();
    }
    peer.send(true, opcode::CLOSE, &1000u16.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(ended(&mut rx).await.cause, None);
    let counters: Vec<Vec<u8>> = (1..=10u64).map(|n| n.to_be_bytes().to_vec()).collect();
    assert_ne!(payloads, counters, "the pings are not a counter");
}

// ---------------------------------------------------------------------------------------------
// A handler that never calls `recv()`.

/// A push-only route: the handler pushes a tick every 10 ms and never receives.
fn push_only_app(layer: SocketPolicyLayer) -> (Router, mpsc::UnboundedReceiver<Ended>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ws",
            any(move |up: GuardedUpgrade| {
                let tx = tx.clone();
                async move {
                    up.on_upgrade(move |socket: GuardedSocket| async move {
                        let sender = socket.sender();
                        let mut i = 0u64;
                        while sender.send(AxMessage::text(format!("tick {i}"))).is_ok() {
                            i += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let _ = tx.send(Ended {
                            cause: socket.close_cause(),
                            stats: socket.stats(),
                        });
                    })
                }
            }),
        )
        .layer(layer);
    (app, rx)
}

#[tokio::test]
async fn push_only_handler_still_enforces_the_heartbeat() {
    let (app, mut rx) = push_only_app(
        quiet()
            .heartbeat(Duration::from_millis(50), Duration::from_millis(50))
            .close_timeout(LIMIT),
    );
    let mut talker = raw(serve(app).await).await;
    // More data than the receive queue holds, and no pong, ever.
    for i in 0..100 {
        talker
            .send(true, opcode::TEXT, format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(talker.close_code().await, Some(1001));
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, Some(CloseCause::HeartbeatTimeout));
    // The queue held 16; reading paused (the default `recv_stall` of 1 s outlasts the
    // heartbeat) and the deadline fired all the same.
    assert_eq!(end.stats.received, 16, "{:?}", end.stats);
}

#[tokio::test]
async fn push_only_handler_reads_on_and_drops_after_the_stall() {
    let (app, mut rx) = push_only_app(
        quiet()
            .heartbeat(Duration::from_millis(300), Duration::from_millis(300))
            .recv_stall(Duration::from_millis(20))
            .close_timeout(LIMIT),
    );
    let mut talker = raw(serve(app).await).await;
    for i in 0..100 {
        talker
            .send(true, opcode::TEXT, format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(talker.close_code().await, Some(1001));
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, Some(CloseCause::HeartbeatTimeout));
    // The queue held 16; after the stall the rest were read (so a close could be seen) and
    // dropped.
    assert_eq!(end.stats.received + end.stats.dropped_unread, 100);
    assert_eq!(end.stats.dropped_unread, 84, "{:?}", end.stats);
}

/// A handler that is only briefly slow loses nothing: a full receive queue stops reading
/// (TCP pushes back on the peer) until the application catches up.
#[tokio::test]
async fn a_briefly_slow_handler_loses_no_message() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ws",
            any(move |up: GuardedUpgrade| {
                let tx = tx.clone();
                async move {
                    up.on_upgrade(move |mut socket: GuardedSocket| async move {
                        // Busy elsewhere while the peer sends more than the queue holds.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut texts = 0;
                        while let Some(Ok(msg)) = socket.recv().await {
                            if matches!(msg, AxMessage::Text(_)) {
                                texts += 1;
                            }
                        }
                        let _ = tx.send((texts, socket.stats()));
                    })
                }
            }),
        )
        .layer(quiet());
    let mut client = connect(serve(app).await).await;
    for i in 0..50 {
        client
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
    }
    client.close(None).await.unwrap();
    let _ = until_close(&mut client).await;
    let (texts, stats) = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(texts, 50, "{stats:?}");
    assert_eq!(stats.dropped_unread, 0, "{stats:?}");
}

#[tokio::test]
async fn push_only_handler_keeps_pushing_to_a_well_behaved_client() {
    let (app, mut rx) = push_only_app(
        quiet()
            .heartbeat(Duration::from_millis(20), Duration::from_millis(200))
            // Well below the pong timeout, as documented: the pongs behind the unread
            // messages are read in time.
            .recv_stall(Duration::from_millis(20)),
    );
    let mut client = connect(serve(app).await).await;
    // Application-level messages nobody reads, more than the receive queue holds.
    for i in 0..50 {
        client
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
    }
    // Reading answers the pings; the pushes keep coming for many heartbeat intervals.
    let mut ticks = 0;
    while ticks < 60 {
        match timeout(LIMIT, client.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => ticks += 1,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client.close(None).await.unwrap();
    let (_, _) = until_close(&mut client).await;
    let end = ended(&mut rx).await;
    assert_eq!(end.cause, None);
    // Sixteen wait in the receive queue (and the close, which always gets through); the other
    // 34 were dropped and counted.
    assert_eq!((end.stats.received, end.stats.dropped_unread), (17, 34));
}

// ---------------------------------------------------------------------------------------------
// Closing: the close code is delivered, after the answers already queued.

/// A raw client with a small receive window, as a slow client has: what the server sends
/// waits in the server's kernel, where a reset would discard it.
async fn raw_slow_reader(addr: SocketAddr) -> RawWs {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    RawWs::upgrade(stream, addr, "/ws", &[]).await
}

#[tokio::test]
async fn the_close_code_survives_data_sent_after_an_oversized_message() {
    let (app, mut rx) = echo_app(quiet().max_message_size(nz(1024)).close_timeout(LIMIT));
    let addr = serve(app).await;
    let mut client = raw_slow_reader(addr).await;
    // Echoes on their way (more than the client's window), then the oversized message, then
    // far more than the server reads before it gives up on the message.
    let mut bytes = Vec::new();
    for i in 0..20 {
        bytes.extend(client.frame(true, opcode::TEXT, format!("{i:0>500}").as_bytes()));
    }
    bytes.extend(client.frame(true, opcode::TEXT, &[b'x'; 2048]));
    while bytes.len() < 512 * 1024 {
        bytes.extend(client.frame(true, opcode::BINARY, &[0x5a; 16 * 1024]));
    }
    // Without the lingering close the server resets the connection: the write may fail, what
    // counts is the close code.
    let _ = timeout(LIMIT, client.stream.write_all(&bytes)).await;
    assert_eq!(client.close_code().await, Some(1009));
    assert_eq!(ended(&mut rx).await.cause, Some(CloseCause::MessageTooBig));
    // The client answers the close; the server then shuts its side: an orderly end of the
    // stream (FIN), not a reset.
    let reply = client.frame(true, opcode::CLOSE, &1009u16.to_be_bytes());
    let _ = client.stream.write_all(&reply).await;
    let mut rest = [0u8; 64];
    let end = timeout(
        LIMIT,
        tokio::io::AsyncReadExt::read(&mut client.stream, &mut rest),
    )
    .await
    .expect("the server ended the stream in time");
    assert!(matches!(end, Ok(0)), "{end:?}");
}

#[tokio::test]
async fn answers_to_messages_before_a_protocol_error_go_out_before_the_close() {
    struct Case {
        name: &'static str,
        /// The offending frame: `(fin, first header byte's opcode and RSV bits, payload)`.
        bad: (bool, u8, &'static [u8]),
        code: u16,
    }
    let cases = [
        Case {
            name: "reserved data opcode",
            bad: (true, 0x3, b"x"),
            code: 1002,
        },
        Case {
            name: "reserved control opcode",
            bad: (true, 0xB, b""),
            code: 1002,
        },
        Case {
            name: "continuation without a message",
            bad: (true, opcode::CONTINUATION, b"x"),
            code: 1002,
        },
        Case {
            name: "non-zero reserved bits",
            bad: (true, 0x40 | opcode::TEXT, b"x"),
            code: 1002,
        },
        Case {
            name: "fragmented ping",
            bad: (false, opcode::PING, b""),
            code: 1002,
        },
        Case {
            name: "invalid UTF-8 in a text message",
            bad: (true, opcode::TEXT, &[0xce, 0xba, 0xff]),
            code: 1007,
        },
    ];
    for case in cases {
        let (app, _rx) = echo_app(quiet().close_timeout(LIMIT));
        let mut client = raw(serve(app).await).await;
        let (fin, op, payload) = case.bad;
        // A valid message and the offending frame in one write: the server reads both at once.
        let mut bytes = client.frame(true, opcode::TEXT, b"hello");
        bytes.extend(client.frame(fin, op, payload));
        client.stream.write_all(&bytes).await.unwrap();
        let echo = timeout(LIMIT, client.next_frame()).await.unwrap();
        assert_eq!(
            echo,
            Some((true, opcode::TEXT, b"hello".to_vec())),
            "{}: the echo first",
            case.name
        );
        assert_eq!(client.close_code().await, Some(case.code), "{}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------
// FanOut: publish once to the subscribers of a key, under each socket's policy.

/// A route whose sockets obey `sub KEY` / `unsub KEY` (answered `ok KEY`) on `fanout`; each
/// socket reports how it ended.
fn fanout_app(
    layer: SocketPolicyLayer,
    fanout: FanOut<String>,
) -> (Router, mpsc::UnboundedReceiver<Ended>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ws",
            any(move |up: GuardedUpgrade| {
                let (tx, fanout) = (tx.clone(), fanout.clone());
                async move {
                    up.on_upgrade(move |mut socket: GuardedSocket| async move {
                        let sender = socket.sender();
                        while let Some(Ok(AxMessage::Text(text))) = socket.recv().await {
                            match text.as_str().split_once(' ') {
                                Some(("sub", key)) => {
                                    fanout.subscribe(key.to_owned(), &sender);
                                }
                                Some(("unsub", key)) => {
                                    fanout.unsubscribe(key, &sender);
                                }
                                _ => continue,
                            }
                            let _ = sender.send(AxMessage::text(format!("ok {text}")));
                        }
                        let _ = tx.send(Ended {
                            cause: socket.close_cause(),
                            stats: socket.stats(),
                        });
                    })
                }
            }),
        )
        .layer(layer);
    (app, rx)
}

async fn next_text(client: &mut Client) -> String {
    loop {
        match timeout(LIMIT, client.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

async fn command(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    assert_eq!(next_text(client).await, format!("ok {text}"));
}

#[tokio::test]
async fn fan_out_reaches_the_subscribers_of_a_key_only() {
    let fanout = FanOut::<String>::new();
    let (app, _rx) = fanout_app(quiet(), fanout.clone());
    let addr = serve(app).await;
    let (mut a, mut b) = (connect(addr).await, connect(addr).await);
    command(&mut a, "sub prices").await;
    command(&mut b, "sub news").await;
    command(&mut b, "sub news").await; // once per key
    assert_eq!(fanout.subscribers("prices"), 1);
    assert_eq!(fanout.subscribers("news"), 1);

    let published = fanout.publish("prices", AxMessage::text("p1"));
    assert_eq!((published.queued, published.ended), (1, 0));
    assert_eq!(
        fanout
            .publish_keyed("news", "n", AxMessage::text("n1"))
            .queued,
        1
    );
    assert_eq!(fanout.publish("nobody", AxMessage::text("x")).queued, 0);
    assert_eq!(next_text(&mut a).await, "p1");
    assert_eq!(next_text(&mut b).await, "n1");

    // Unsubscribed: `a` gets nothing more on `prices`, and the key's next message is the
    // one after its resubscription.
    command(&mut a, "unsub prices").await;
    assert_eq!(fanout.publish("prices", AxMessage::text("p2")).queued, 0);
    command(&mut a, "sub prices").await;
    fanout.publish("prices", AxMessage::text("p3"));
    assert_eq!(next_text(&mut a).await, "p3");
}

#[tokio::test]
async fn fan_out_subscriptions_end_with_the_socket() {
    let fanout = FanOut::<String>::new();
    let (app, mut rx) = fanout_app(quiet(), fanout.clone());
    let addr = serve(app).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    command(&mut a, "sub prices").await;
    command(&mut b, "sub prices").await;
    a.close(None).await.unwrap();
    ended(&mut rx).await;
    let published = fanout.publish("prices", AxMessage::text("p1"));
    assert_eq!((published.queued, published.ended), (1, 1));
    assert_eq!(fanout.subscribers("prices"), 1, "pruned at the publish");
    assert_eq!(next_text(&mut b).await, "p1");
}

/// Subscribes a client that then stops reading (small windows both ways), and publishes
/// 3000 messages on two conflation keys without ever waiting.
async fn publish_to_a_stalled_client(policy: SlowConsumer) -> (Ended, Vec<String>, Option<u16>) {
    let fanout = FanOut::<String>::new();
    let (app, mut rx) = fanout_app(pushing(policy), fanout.clone());
    let mut client = connect(serve_on(small_buffer_listener(), app)).await;
    command(&mut client, "sub prices").await;
    let mut ended_at_publish = 0;
    for i in 0..3000 {
        let key = ["btc", "eth"][i % 2];
        let msg = AxMessage::text(format!("{key} {i:0>200}"));
        ended_at_publish += fanout.publish_keyed("prices", key, msg).ended;
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    if policy == SlowConsumer::Close {
        assert_eq!(ended_at_publish, 1, "the closed socket is removed once");
        assert_eq!(fanout.subscribers("prices"), 0);
    } else {
        assert_eq!(ended_at_publish, 0);
    }
    // Unsubscribing ends the pushes; the handler ends when the client closes.
    let (seen, code) = if policy == SlowConsumer::Close {
        until_close(&mut client).await
    } else {
        // Drain what is queued, then close from the client.
        let mut seen = Vec::new();
        client.send(Message::text("unsub prices")).await.unwrap();
        loop {
            let text = next_text(&mut client).await;
            if text == "ok unsub prices" {
                break;
            }
            seen.push(text);
        }
        client.close(None).await.unwrap();
        (seen, None)
    };
    (ended(&mut rx).await, seen, code)
}

#[tokio::test]
async fn fan_out_closes_a_slow_consumer_with_1013_without_waiting_on_it() {
    let (end, seen, code) = publish_to_a_stalled_client(SlowConsumer::Close).await;
    assert_eq!(end.cause, Some(CloseCause::SlowConsumer));
    assert_eq!(code, Some(1013));
    assert!(seen.len() < 3000);
}

#[tokio::test]
async fn fan_out_conflates_by_key_for_a_slow_consumer() {
    let (end, seen, _) = publish_to_a_stalled_client(SlowConsumer::Conflate).await;
    assert!(end.stats.conflated > 0);
    assert!(seen.len() < 3000);
    let last = |key: &str| seen.iter().rev().find(|m| m.starts_with(key)).cloned();
    assert!(last("btc").unwrap().ends_with("2998"), "latest btc");
    assert!(last("eth").unwrap().ends_with("2999"), "latest eth");
}
