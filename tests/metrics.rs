//! Feature `metrics`: what the layers record through the `metrics` facade, read back through
//! `metrics_util`'s `DebuggingRecorder` installed for this test's thread, after a known
//! sequence over real sockets on loopback (a refused origin, a bad token, one echoed message, a
//! quota `429`, an oversized message closed with `1009`, a refusal answered by a hook).
#![cfg(feature = "metrics")]

mod common;

use common::{RawWs, nz};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{Router, response::Response, routing::any};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode, header};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};
use wsguard::{
    WsGuard,
    auth::StaticTokens,
    origin::OriginGuardLayer,
    rate_limit::ConnectionQuotaLayer,
    socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const ORIGIN: &str = "http://app.test";
const TOKEN: &str = "tok-alice";

async fn ws(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// The guard on `/ws` (origin, auth, a quota of one socket per identity, 64-byte messages)
/// and, on `/hooked`, an origin check whose hook answers `404`.
async fn serve() -> SocketAddr {
    let guard = WsGuard::new(StaticTokens::new().token(TOKEN, "alice", ()))
        .origin(
            OriginGuardLayer::new()
                .allow_origin(ORIGIN)
                .expect("origin"),
        )
        .quota(ConnectionQuotaLayer::new().per_identity(nz(1)))
        .socket_policy(SocketPolicyLayer::new().max_message_size(nz(64)));
    let hooked = OriginGuardLayer::new()
        .allow_origin(ORIGIN)
        .expect("origin")
        .on_rejection(|_: &wsguard::Rejection| StatusCode::NOT_FOUND);
    let app = Router::new()
        .route("/ws", any(ws))
        .layer(guard)
        .merge(Router::new().route("/hooked", any(ws)).layer(hooked));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

async fn connect(
    addr: SocketAddr,
    path: &str,
    origin: &str,
    token: &str,
) -> Result<Socket, StatusCode> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_str(origin).expect("origin"),
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    let connecting = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    );
    match connecting.await.expect("handshake in time") {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("handshake: {other}"),
    }
}

async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The values recorded so far. A `DebuggingRecorder` snapshot hands over what changed since
/// the last one (counters and gauges swap to zero), so the totals add every snapshot up; the
/// gauges here only go up and down, never `set`.
struct Recorded {
    snapshotter: Snapshotter,
    totals: BTreeMap<String, f64>,
}

impl Recorded {
    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => continue,
            };
            *self
                .totals
                .entry(format!("{}{{{}}}", key.name(), labels.join(",")))
                .or_default() += value;
        }
    }

    /// `name{labels}` (labels sorted, `k=v` joined by commas); 0 when never recorded.
    fn get(&self, series: &str) -> f64 {
        self.totals.get(series).copied().unwrap_or(0.0)
    }
}

#[tokio::test]
async fn refusals_sockets_closes_and_messages_are_recorded_with_fixed_labels() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded {
        snapshotter: recorder.snapshotter(),
        totals: BTreeMap::new(),
    };
    // This thread only: the current-thread runtime runs the server's tasks here too.
    let _local = metrics::set_default_local_recorder(&recorder);
    let addr = serve().await;

    assert_eq!(
        connect(addr, "/ws", "http://evil.test", TOKEN).await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        connect(addr, "/ws", ORIGIN, "not-the-token").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        connect(addr, "/hooked", "http://evil.test", TOKEN)
            .await
            .err(),
        Some(StatusCode::NOT_FOUND),
        "the hook's answer"
    );
    let mut socket = connect(addr, "/ws", ORIGIN, TOKEN).await.expect("socket");
    socket.send(Message::text("hello")).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("echo in time");
    assert_eq!(echoed.expect("open").expect("ok"), Message::text("hello"));
    recorded.refresh();
    assert_eq!(recorded.get("wsguard_sockets_open{}"), 1.0);
    assert_eq!(recorded.get("wsguard_quota_active{backend=local}"), 1.0);
    assert_eq!(
        connect(addr, "/ws", ORIGIN, TOKEN).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    socket
        .send(Message::text("x".repeat(100)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Size));

    // The socket's task ends shortly after its close: bounded wait for the gauges.
    for _ in 0..500 {
        recorded.refresh();
        if recorded.get("wsguard_sockets_open{}") == 0.0
            && recorded.get("wsguard_quota_active{backend=local}") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let expected = [
        (
            "wsguard_handshakes_total{cause=not_allowed,layer=origin,outcome=refused}",
            2.0,
        ),
        (
            "wsguard_handshakes_total{cause=invalid,layer=auth,outcome=refused}",
            1.0,
        ),
        (
            "wsguard_handshakes_total{cause=identity_quota,layer=rate_limit,outcome=refused}",
            1.0,
        ),
        ("wsguard_handshakes_total{outcome=accepted}", 1.0),
        ("wsguard_sockets_open{}", 0.0),
        ("wsguard_quota_active{backend=local}", 0.0),
        ("wsguard_socket_closes_total{cause=message_too_big}", 1.0),
        ("wsguard_messages_total{direction=in}", 1.0),
        ("wsguard_messages_total{direction=out}", 1.0),
        ("wsguard_bytes_total{direction=in}", 5.0),
        ("wsguard_bytes_total{direction=out}", 5.0),
    ];
    for (series, value) in expected {
        assert_eq!(
            recorded.get(series),
            value,
            "{series} in {:#?}",
            recorded.totals
        );
    }
    // Nothing else, and no label value from the request (address, token, identity, origin).
    let known: Vec<&str> = expected.iter().map(|(series, _)| *series).collect();
    for series in recorded.totals.keys() {
        assert!(
            known.contains(&series.as_str()),
            "unexpected series {series}"
        );
    }
}

/// Every socket's end is counted once, by what ended it first: the client's close frame, the
/// application returning, the connection dropped, the client breaking the protocol.
#[tokio::test]
async fn every_socket_end_is_counted_once_by_what_ended_it() {
    let recorder = DebuggingRecorder::new();
    let mut recorded = Recorded {
        snapshotter: recorder.snapshotter(),
        totals: BTreeMap::new(),
    };
    let _local = metrics::set_default_local_recorder(&recorder);
    let app = Router::new()
        .route("/ws", any(ws))
        .route(
            "/bye",
            any(|upgrade: GuardedUpgrade| async move { upgrade.on_upgrade(|_| async {}) }),
        )
        .layer(SocketPolicyLayer::new());
    let addr = common::serve_router(app).await;
    let url = |path: &str| format!("ws://{addr}{path}");

    let (mut peer, _) = tokio_tungstenite::connect_async(url("/ws"))
        .await
        .expect("socket");
    peer.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .expect("close");
    assert_eq!(close_code(&mut peer).await, Some(CloseCode::Normal));

    let (mut left, _) = tokio_tungstenite::connect_async(url("/bye"))
        .await
        .expect("socket");
    assert_eq!(close_code(&mut left).await, Some(CloseCode::Normal));

    drop(RawWs::connect(addr, "/ws", &[]).await);

    let mut broken = RawWs::connect(addr, "/ws", &[]).await;
    broken
        .send(true, 0x3, b"reserved opcode")
        .await
        .expect("send");
    assert_eq!(broken.close_code().await, Some(1002));

    for _ in 0..500 {
        recorded.refresh();
        if recorded.get("wsguard_handshakes_total{outcome=accepted}") == 4.0
            && recorded.get("wsguard_sockets_open{}") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorded.get("wsguard_sockets_open{}"), 0.0);
    for cause in ["peer", "application", "connection_lost", "protocol_error"] {
        let series = format!("wsguard_socket_closes_total{{cause={cause}}}");
        assert_eq!(
            recorded.get(&series),
            1.0,
            "{series} in {:#?}",
            recorded.totals
        );
    }
    let closes: f64 = recorded
        .totals
        .iter()
        .filter(|(series, _)| series.starts_with("wsguard_socket_closes_total"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(closes, 4.0, "one close a socket: {:#?}", recorded.totals);
}
