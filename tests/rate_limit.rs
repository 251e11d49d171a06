//! Loopback integration: handshake rate limits and the brute-force throttle in front of an
//! authenticator, with real WebSocket handshakes.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Request, ws::WebSocketUpgrade},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio_tungstenite::{connect_async, tungstenite::Error as WsError};
use wsguard::{
    auth::AuthError,
    client_ip::ClientIpLayer,
    rate_limit::{AuthThrottleLayer, RateLimitLayer},
};

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|_socket| async {})
}

/// A stand-in authenticator with the contract of `wsguard::auth`: a rejection is a `401` that
/// carries the `AuthError` in its extensions.
async fn fake_auth(req: Request, next: Next) -> Response {
    if req.uri().query() == Some("token=good") {
        next.run(req).await
    } else {
        let mut res = (StatusCode::UNAUTHORIZED, "invalid credential").into_response();
        res.extensions_mut().insert(AuthError::Invalid);
        res
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// The handshake's status and `Retry-After`.
async fn handshake(addr: SocketAddr, query: &str) -> (u16, Option<String>) {
    match connect_async(format!("ws://{addr}/ws{query}")).await {
        Ok((_socket, response)) => (response.status().as_u16(), None),
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

#[tokio::test]
async fn handshake_rate_is_limited_per_client() {
    let app = Router::new()
        .route("/ws", get(ws))
        .layer(
            RateLimitLayer::new()
                .per_minute(1)
                .and_then(|l| l.burst(3))
                .unwrap()
                .rate_limit_headers(true),
        )
        .layer(ClientIpLayer::new());
    let addr = serve(app).await;
    for _ in 0..3 {
        assert_eq!(handshake(addr, "").await, (101, None));
    }
    let (status, retry_after) = handshake(addr, "").await;
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
}

#[tokio::test]
async fn failed_authentications_lock_the_client_out_before_auth_runs() {
    let app = Router::new()
        .route("/ws", get(ws))
        .layer(middleware::from_fn(fake_auth))
        .layer(
            AuthThrottleLayer::new()
                .max_failures(3)
                .and_then(|l| l.window(Duration::from_secs(600)))
                .and_then(|l| l.block_for(Duration::from_secs(600)))
                .unwrap(),
        )
        .layer(ClientIpLayer::new());
    let addr = serve(app).await;

    assert_eq!(handshake(addr, "?token=good").await, (101, None));
    for _ in 0..3 {
        assert_eq!(handshake(addr, "?token=bad").await.0, 401);
    }
    // Locked out: even a good credential is not looked at.
    let (status, retry_after) = handshake(addr, "?token=good").await;
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=600).contains(&secs), "{secs}");
}

#[tokio::test]
async fn rate_limit_without_client_ip_layer_is_a_clear_500() {
    let app = Router::new()
        .route("/ws", get(|| async { Body::empty() }))
        .layer(RateLimitLayer::new());
    let addr = serve(app).await;
    assert_eq!(handshake(addr, "").await.0, 500);
}
