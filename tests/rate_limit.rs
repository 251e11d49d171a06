//! Loopback integration: handshake rate limits and the brute-force throttle in front of an
//! authenticator, with real WebSocket handshakes.

mod common;

use common::{nz, serve_router};
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
                .per_minute(nz(1))
                .burst(nz(3))
                .rate_limit_headers(true),
        )
        .layer(ClientIpLayer::new());
    let addr = serve_router(app).await;
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
                .max_failures(nz(3))
                .window(Duration::from_secs(600))
                .block_for(Duration::from_secs(600)),
        )
        .layer(ClientIpLayer::new());
    let addr = serve_router(app).await;

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
    let addr = serve_router(app).await;
    assert_eq!(handshake(addr, "").await.0, 500);
}

/// Issue 13, point 9: the throttle used to check the lock-out before the request and count
/// the failure after the response, so guesses sent at once all reached the authenticator.
/// Here the authenticator holds every request until released: at most `max_failures`
/// guesses may be in its hands at once; the others are refused with `429` + `Retry-After`.
#[tokio::test]
async fn concurrent_guesses_do_not_all_reach_the_authenticator() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::sync::{Notify, Semaphore};

    const MAX_FAILURES: u32 = 3;
    const GUESSES: usize = 20;
    let arrived = Arc::new(AtomicUsize::new(0));
    let arrival = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let auth = {
        let (arrived, arrival, gate) = (arrived.clone(), arrival.clone(), gate.clone());
        middleware::from_fn(move |req: Request, next: Next| {
            let (arrived, arrival, gate) = (arrived.clone(), arrival.clone(), gate.clone());
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                arrival.notify_one();
                // Held until the test releases the authenticator.
                let _permit = gate.acquire().await;
                fake_auth(req, next).await
            }
        })
    };
    let app = Router::new()
        .route("/ws", get(ws))
        .layer(auth)
        .layer(
            AuthThrottleLayer::new()
                .max_failures(nz(MAX_FAILURES))
                .block_for(Duration::from_secs(600)),
        )
        .layer(ClientIpLayer::new());
    let addr = serve_router(app).await;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..GUESSES {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let _ = done_tx.send(handshake(addr, "?token=bad").await);
        });
    }
    // Wait until every guess is either answered (refused without the authenticator) or held
    // by the authenticator; no timing involved.
    let mut answered = Vec::new();
    while answered.len() + arrived.load(Ordering::SeqCst) < GUESSES {
        tokio::select! {
            Some(result) = done_rx.recv() => answered.push(result),
            () = arrival.notified() => {}
        }
    }
    let reached = arrived.load(Ordering::SeqCst);
    assert!(
        reached <= MAX_FAILURES as usize,
        "{reached} concurrent guesses reached the authenticator (max_failures {MAX_FAILURES})"
    );
    for (status, retry_after) in &answered {
        assert_eq!(*status, 429);
        let secs: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(secs >= 1, "{secs}");
    }
    gate.add_permits(GUESSES);
    while answered.len() < GUESSES {
        answered.push(done_rx.recv().await.expect("every guess is answered"));
    }
    let failed = answered.iter().filter(|(status, _)| *status == 401).count();
    assert_eq!(failed, reached);
    // The held guesses were all failures: the client is locked out now.
    let (status, retry_after) = handshake(addr, "?token=good").await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
}

/// Issue 13, point 8: `block_for(Duration::MAX)` used to panic at the first lock-out
/// (`now + block_for` overflowed). It saturates: the client is locked out "forever".
#[tokio::test]
async fn block_for_duration_max_saturates() {
    let app = Router::new()
        .route("/ws", get(ws))
        .layer(middleware::from_fn(fake_auth))
        .layer(
            AuthThrottleLayer::new()
                .max_failures(nz(1))
                .window(Duration::MAX)
                .block_for(Duration::MAX),
        )
        .layer(ClientIpLayer::new());
    let addr = serve_router(app).await;
    assert_eq!(handshake(addr, "?token=bad").await.0, 401);
    let (status, retry_after) = handshake(addr, "?token=good").await;
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(secs > 1_000_000_000, "{secs}");
}
