//! The origin guard over real sockets on loopback: allowed origins upgrade and echo, forged
//! origins get 403 and no upgrade, clients without Origin follow the configured policy.

mod common;

use std::net::SocketAddr;

use axum::{
    Router,
    extract::ws::{Message as AxumMessage, WebSocketUpgrade},
    response::Response,
    routing::get,
};
use http::StatusCode;
use wsguard::origin::OriginGuardLayer;

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let AxumMessage::Text(_) = message
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

async fn serve(guard: OriginGuardLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/ws", get(ws)).layer(guard);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

use common::echo_handshake as connect;

#[tokio::test]
async fn allowed_origin_upgrades_and_echoes() {
    let guard = OriginGuardLayer::new()
        .allow_origin("http://app.test:8000")
        .expect("valid");
    let addr = serve(guard).await;
    assert_eq!(
        connect(addr, Some("http://app.test:8000")).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

#[tokio::test]
async fn forged_origin_is_refused_before_the_upgrade() {
    let guard = OriginGuardLayer::new()
        .allow_origin("http://app.test:8000")
        .expect("valid");
    let addr = serve(guard).await;
    for forged in [
        "http://evil.test:8000",
        "https://app.test:8000",
        "http://app.test:8001",
        "null",
    ] {
        assert_eq!(
            connect(addr, Some(forged)).await,
            StatusCode::FORBIDDEN,
            "{forged}"
        );
    }
    // The server still serves well-behaved clients afterwards.
    assert_eq!(
        connect(addr, Some("http://app.test:8000")).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

#[tokio::test]
async fn same_origin_by_default() {
    let addr = serve(OriginGuardLayer::new()).await;
    // tungstenite sends `Host: 127.0.0.1:PORT`.
    let own = format!("http://127.0.0.1:{}", addr.port());
    assert_eq!(
        connect(addr, Some(&own)).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        connect(addr, Some("http://127.0.0.1:1")).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn missing_origin_follows_the_policy() {
    let lenient = serve(
        OriginGuardLayer::new()
            .allow_origin("http://app.test")
            .expect("valid"),
    )
    .await;
    assert_eq!(
        connect(lenient, None).await,
        StatusCode::SWITCHING_PROTOCOLS
    );

    let strict = serve(
        OriginGuardLayer::new()
            .allow_origin("http://app.test")
            .expect("valid")
            .require_origin(true),
    )
    .await;
    assert_eq!(connect(strict, None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        connect(strict, Some("http://app.test")).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

/// Issue 13, point 11: DNS rebinding. A page on `http://attacker.example:PORT` whose name
/// the attacker re-points at this server's address sends `Host: attacker.example:PORT` and
/// `Origin: http://attacker.example:PORT`; the same-origin default used to call that same
/// origin. It is refused with `403` naming the host; the server's own address still works.
#[tokio::test]
async fn dns_rebinding_is_refused_by_the_same_origin_default() {
    let addr = serve(OriginGuardLayer::new()).await;
    let port = addr.port();
    let attacker = format!("attacker.example:{port}");
    let (status, body) =
        common::raw_handshake(addr, "/ws", &attacker, Some(&format!("http://{attacker}"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host not allowed"), "{body}");

    let own = format!("127.0.0.1:{port}");
    let (status, _) =
        common::raw_handshake(addr, "/ws", &own, Some(&format!("http://{own}"))).await;
    assert_eq!(status, 101);

    // Once the host is allowed, a domain works for the same origin.
    let addr = serve(
        OriginGuardLayer::new()
            .allow_host("app.test")
            .expect("valid host"),
    )
    .await;
    let host = format!("app.test:{}", addr.port());
    let (status, _) =
        common::raw_handshake(addr, "/ws", &host, Some(&format!("http://{host}"))).await;
    assert_eq!(status, 101);
    let attacker = format!("attacker.example:{}", addr.port());
    let (status, body) = common::raw_handshake(addr, "/ws", &attacker, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host not allowed"), "{body}");
}
