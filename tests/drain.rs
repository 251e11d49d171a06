//! Graceful drain over real sockets: a [`Drain`] handle given to the guard closes every guarded
//! socket with `1001` and a reconnect hint, refuses new handshakes with `503`, forces what
//! does not end by the deadline, and gives the quota slots back; it also plugs into axum's
//! `with_graceful_shutdown`, which on its own does not wait for upgraded sockets.

mod common;

use common::{RawWs, echo, nz, serve_router};
use std::{collections::HashSet, net::SocketAddr, time::Duration};

use axum::{
    Router,
    routing::{any, get},
};
use futures_util::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    time::timeout,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};
use wsguard::{
    WsGuard,
    auth::StaticTokens,
    rate_limit::ConnectionQuotaLayer,
    socket::{
        CloseCause, Drain, DrainOptions, GuardedSocket, GuardedUpgrade, SocketPolicyLayer,
        parse_reconnect_hint,
    },
};

/// A guard against hangs, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "alice-token-0123456789";

type Client = WebSocketStream<TcpStream>;

/// A guard with a per-IP quota the test can read, every socket registered with `drain`.
fn guard(drain: &Drain, quota: &ConnectionQuotaLayer) -> WsGuard<StaticTokens<()>> {
    WsGuard::new(StaticTokens::new().token(TOKEN, "alice", ()))
        .without_rate_limit()
        .quota(quota.clone())
        .socket_policy(SocketPolicyLayer::new().without_heartbeat())
        .drain(drain)
}

fn quota() -> ConnectionQuotaLayer {
    ConnectionQuotaLayer::new().per_ip(nz(1000))
}

async fn client(addr: SocketAddr, path: &str) -> Client {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(res.status(), 101);
    ws
}

/// Reads until the server's close frame: its code and reason (`None`: no close frame).
async fn close_frame(ws: &mut Client) -> Option<(u16, String)> {
    timeout(LIMIT, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the server closed in time")
}

#[tokio::test]
async fn every_guarded_socket_gets_1001_with_its_own_reconnect_hint() {
    const N: usize = 20;
    let drain = Drain::new();
    let quota = quota();
    let app = Router::new()
        .route("/ws", any(echo))
        .layer(guard(&drain, &quota));
    let addr = serve_router(app).await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(client(addr, "/ws").await);
    }
    assert_eq!(drain.live(), N, "every upgraded socket is registered");
    assert_eq!(quota.active(), N);
    assert!(!drain.is_draining());

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { close_frame(&mut ws).await }))
        .collect();
    let options = DrainOptions::new(LIMIT)
        .reconnect_hint(Duration::from_millis(500), Duration::from_millis(1000));
    let report = timeout(LIMIT, drain.shutdown(options))
        .await
        .expect("the drain ends");
    assert_eq!((report.closed, report.forced), (N, 0), "{report:?}");
    assert!(drain.is_draining());
    assert_eq!(drain.live(), 0);
    assert_eq!(quota.active(), 0, "every quota slot is back");

    let mut hints = HashSet::new();
    for reader in readers {
        let (code, reason) = reader.await.unwrap().expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
        assert!(reason.starts_with("server shutting down"), "{reason}");
        let hint = parse_reconnect_hint(&reason).expect("a reconnect hint");
        assert!(
            (Duration::from_millis(500)..=Duration::from_millis(1500)).contains(&hint),
            "{reason}"
        );
        hints.insert(hint);
    }
    assert!(
        hints.len() > 1,
        "each socket gets its own jitter: {hints:?}"
    );
}

#[tokio::test]
async fn a_socket_closed_by_the_drain_knows_why() {
    let drain = Drain::new();
    let (tx, rx) = oneshot::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let route = any(move |up: GuardedUpgrade| {
        let tx = tx.lock().unwrap().take();
        async move {
            up.on_upgrade(move |mut socket: GuardedSocket| async move {
                while socket.recv().await.is_some() {}
                if let Some(tx) = tx {
                    let _ = tx.send(socket.close_cause());
                }
            })
        }
    });
    let addr = serve_router(
        Router::new()
            .route("/ws", route)
            .layer(guard(&drain, &quota())),
    )
    .await;
    let mut ws = client(addr, "/ws").await;
    let reader = tokio::spawn(async move { close_frame(&mut ws).await });
    let report = drain.shutdown(LIMIT).await;
    assert_eq!((report.closed, report.forced), (1, 0));
    let (code, reason) = reader.await.unwrap().expect("a close frame");
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert_eq!(parse_reconnect_hint(&reason), None, "no hint unless asked");
    let cause = timeout(LIMIT, rx).await.unwrap().unwrap();
    assert_eq!(cause, Some(CloseCause::Shutdown));
    assert_eq!(CloseCause::Shutdown.close_code(), 1001);
}

/// The status and the text (head and body) of a raw HTTP/1.1 request's response; a
/// handshake asks to upgrade. The body is read by its `Content-Length`.
async fn raw_request(addr: SocketAddr, path: &str, handshake: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n");
    if handshake {
        req.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed early: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        }
    };
    timeout(LIMIT, read).await.expect("answered in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn a_handshake_while_draining_gets_503_with_retry_after_and_other_requests_pass() {
    let drain = Drain::new();
    let app = Router::new()
        .route("/ws", any(echo))
        .route("/healthz", get(|| async { "ok" }))
        .layer(guard(&drain, &quota()));
    let addr = serve_router(app).await;
    // Before the drain, a handshake passes.
    let mut ws = client(addr, "/ws").await;
    let reader = tokio::spawn(async move { close_frame(&mut ws).await });

    let report = drain
        .shutdown(DrainOptions::new(LIMIT).retry_after(Duration::from_secs(3)))
        .await;
    assert_eq!((report.closed, report.forced), (1, 0), "{report:?}");
    assert_eq!(reader.await.unwrap().map(|(code, _)| code), Some(1001));
    let (status, text) = raw_request(addr, "/ws", true).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nretry-after: 3\r\n"),
        "{text}"
    );
    assert!(text.contains("shutting down"), "{text}");
    // Only handshakes are refused: the other routes under the guard still answer.
    let (status, text) = raw_request(addr, "/healthz", false).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn the_guard_s_hook_answers_for_the_drain_too() {
    let drain = Drain::new();
    let guard = guard(&drain, &quota())
        .on_rejection(|rejection: &wsguard::Rejection| (rejection.status(), "custom refusal"));
    let addr = serve_router(Router::new().route("/ws", any(echo)).layer(guard)).await;
    drain.shutdown(LIMIT).await;
    let (status, text) = raw_request(addr, "/ws", true).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.ends_with("custom refusal"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_deadline_forces_the_sockets_that_did_not_end_and_frees_their_slots() {
    let drain = Drain::new();
    let quota = quota();
    let guard = WsGuard::new(StaticTokens::new().token(TOKEN, "alice", ()))
        .without_rate_limit()
        .quota(quota.clone())
        // A peer that never answers the close holds its socket for 30 s on its own.
        .socket_policy(
            SocketPolicyLayer::new()
                .without_heartbeat()
                .close_timeout(Duration::from_secs(30)),
        )
        .drain(&drain);
    // A handler that never lets go of its socket.
    let stuck = any(|up: GuardedUpgrade| async move {
        up.on_upgrade(|socket: GuardedSocket| async move {
            let _held = socket;
            std::future::pending::<()>().await;
        })
    });
    let app = Router::new()
        .route("/ws", any(echo))
        .route("/stuck", stuck)
        .layer(guard);
    let addr = serve_router(app).await;
    let mut polite = client(addr, "/ws").await;
    let mut stuck_handler = client(addr, "/stuck").await;
    let auth = format!("Bearer {TOKEN}");
    let mut deaf = RawWs::connect(addr, "/ws", &[("Authorization", &auth)]).await;
    assert_eq!((drain.live(), quota.active()), (3, 3));

    let polite = tokio::spawn(async move { close_frame(&mut polite).await });
    let stuck_handler = tokio::spawn(async move { close_frame(&mut stuck_handler).await });
    let report = timeout(
        LIMIT,
        drain.shutdown(DrainOptions::new(Duration::from_millis(300))),
    )
    .await
    .expect("the deadline ends the drain");
    assert_eq!(
        (report.closed, report.forced),
        (1, 2),
        "the deaf peer and the stuck handler are forced: {report:?}"
    );
    assert_eq!(drain.live(), 0);
    assert_eq!(quota.active(), 0, "forced sockets give their slots back");
    for reader in [polite, stuck_handler] {
        let (code, _) = reader.await.unwrap().expect("a close frame");
        assert_eq!(code, 1001);
    }
    // The deaf peer got its 1001 before the connection was dropped.
    assert_eq!(deaf.close_code().await, Some(1001));
}

#[tokio::test]
async fn a_handshake_in_flight_when_the_drain_starts_is_waited_for_and_closed() {
    let drain = Drain::new();
    let (report_tx, report_rx) = oneshot::channel();
    let report_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(report_tx)));
    let handle = drain.clone();
    // The drain starts after this handshake passed the guard and before it is upgraded.
    let route = any(move |up: GuardedUpgrade| {
        let handle = handle.clone();
        let report_tx = report_tx.lock().unwrap().take();
        async move {
            let shutdown = tokio::spawn(handle.shutdown(LIMIT));
            handle.started().await;
            tokio::spawn(async move {
                if let (Some(tx), Ok(report)) = (report_tx, shutdown.await) {
                    let _ = tx.send(report);
                }
            });
            up.on_upgrade(|mut socket: GuardedSocket| async move {
                while socket.recv().await.is_some() {}
            })
        }
    });
    let addr = serve_router(
        Router::new()
            .route("/ws", route)
            .layer(guard(&drain, &quota())),
    )
    .await;
    let mut ws = client(addr, "/ws").await;
    let (code, _) = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(code, 1001);
    let report = timeout(LIMIT, report_rx).await.unwrap().unwrap();
    assert_eq!((report.closed, report.forced), (1, 0), "{report:?}");
}

#[tokio::test]
async fn axum_serve_with_graceful_shutdown_returns_once_every_socket_is_closed() {
    let drain = Drain::new();
    let quota = quota();
    let app = Router::new()
        .route("/ws", any(echo))
        .layer(guard(&drain, &quota));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = drain.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
            handle.shutdown(LIMIT).await;
        })
        .await
    });
    let mut a = client(addr, "/ws").await;
    let mut b = client(addr, "/ws").await;
    let readers = [
        tokio::spawn(async move { close_frame(&mut a).await }),
        tokio::spawn(async move { close_frame(&mut b).await }),
    ];
    stop_tx.send(()).unwrap();
    timeout(LIMIT, server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert_eq!(quota.active(), 0, "no socket outlives the server");
    for reader in readers {
        let (code, _) = reader.await.unwrap().expect("a close frame");
        assert_eq!(code, 1001);
    }
}
