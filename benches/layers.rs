//! Micro-benchmarks (criterion):
//! - the per-handshake cost of each layer (origin, client IP, rate limit, throttle, ticket
//!   auth, quota, socket policy) and of the whole stack, through `oneshot` against a bare
//!   service (a router answers a handshake it cannot upgrade with `426`, after the layers);
//! - the per-message cost of `GuardedSocket`'s checks: an echo round trip over an in-memory
//!   connection (hyper server, tokio-tungstenite client), guarded against bare axum.
//!
//! Run: `cargo bench --bench layers` (about two minutes); a filter narrows it, as in
//! `cargo bench --bench layers -- message`.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`.

use std::{
    convert::Infallible,
    hint::black_box,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{
        ConnectInfo,
        ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade},
    },
    response::Response,
    routing::any,
};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio_tungstenite::tungstenite::Message;
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard::{
    auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
    client_ip::{ClientIpLayer, ProxyHeader},
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    socket::{GuardedSocket, GuardedUpgrade, MessageRate, SocketPolicyLayer},
};

const ORIGIN: &str = "https://app.example.com";
/// Socket message and byte rates that no benchmark can reach.
const HIGH_RATE: NonZeroU64 = NonZeroU64::new(1_000_000_000_000_000).unwrap();
/// Handshake rates and socket caps that no benchmark can reach.
const MANY: NonZeroU32 = NonZeroU32::new(1_000_000).unwrap();
const MANY_SOCKETS: NonZeroUsize = NonZeroUsize::new(1_000_000).unwrap();
const BILLION: NonZeroU32 = NonZeroU32::new(1_000_000_000).unwrap();
const THOUSAND_SOCKETS: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();

fn request(with_xff: bool) -> Request<Body> {
    handshake(with_xff, None)
}

/// A WebSocket handshake from a trusted proxy's peer address, with `Origin` and optionally a
/// bearer token.
fn handshake(with_xff: bool, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::get("/ws")
        .header("host", "app.example.com")
        .header("origin", ORIGIN)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if with_xff {
        builder = builder.header("x-forwarded-for", "203.0.113.9, 10.0.0.2");
    }
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let mut req = builder.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40000))));
    req
}

async fn bare(_req: Request<Body>) -> Result<Response, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn bench_one<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S, xff: bool)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let svc = svc.clone();
            async move { black_box(svc.oneshot(request(xff)).await.unwrap()) }
        })
    });
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let client_ip = || {
        ClientIpLayer::new()
            .trusted_proxy_str("10.0.0.0/8")
            .unwrap()
            .proxy_header(ProxyHeader::XForwardedFor)
    };
    // Limits high enough that nothing is refused: this measures the bookkeeping.
    let rate = || {
        RateLimitLayer::new()
            .per_second(BILLION)
            .burst(NonZeroU32::MAX)
    };
    let quota = || {
        ConnectionQuotaLayer::new()
            .per_ip(THOUSAND_SOCKETS)
            .global(MANY_SOCKETS)
    };

    bench_one(c, &rt, "bare", service_fn(bare), false);
    bench_one(
        c,
        &rt,
        "bare (request with X-Forwarded-For)",
        service_fn(bare),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip (peer only)",
        client_ip().layer(service_fn(bare)),
        false,
    );
    bench_one(
        c,
        &rt,
        "client_ip (trusted proxy, X-Forwarded-For)",
        client_ip().layer(service_fn(bare)),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate",
        client_ip().layer(rate().layer(service_fn(bare))),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate + quota",
        client_ip().layer(rate().layer(quota().layer(service_fn(bare)))),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate + throttle + quota",
        client_ip()
            .layer(rate().layer(AuthThrottleLayer::new().layer(quota().layer(service_fn(bare))))),
        true,
    );

    // The remaining layers alone.
    let origin = OriginGuardLayer::new().allow_origin(ORIGIN).unwrap();
    bench_one(
        c,
        &rt,
        "origin (exact allowed origin)",
        origin.layer(service_fn(bare)),
        false,
    );
    let pattern = OriginGuardLayer::new()
        .allow_origin_pattern("https://*.example.com")
        .unwrap()
        .allow_origin("https://other.example.net")
        .unwrap();
    bench_one(
        c,
        &rt,
        "origin (wildcard pattern, not matched exactly)",
        pattern.layer(service_fn(bare)),
        false,
    );
    bench_one(
        c,
        &rt,
        "socket policy (inserts the policy)",
        SocketPolicyLayer::new().layer(service_fn(bare)),
        false,
    );
    let key = TicketKey::new("k1", [7u8; 32]).unwrap();
    let ticket = TicketIssuer::new(key.clone())
        .ttl(Duration::from_secs(3600))
        .issue("alice");
    let auth = HandshakeAuthLayer::new(TicketVerifier::new(key.clone()));
    let auth_svc = auth.layer(service_fn(bare));
    c.bench_function("auth (ticket in Authorization: Bearer)", |b| {
        b.to_async(&rt).iter(|| {
            let svc = auth_svc.clone();
            let req = handshake(false, Some(&ticket));
            async move {
                let res = svc.oneshot(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                black_box(res)
            }
        })
    });

    // Whole routers: a bare axum route and the full stack, both answering 426 after the
    // layers because `oneshot` cannot upgrade.
    let bare_router = Router::new().route("/ws", any(bare_upgrade));
    let guarded_router = guarded_router(key);
    for (name, router) in [
        ("router: bare axum WebSocketUpgrade", bare_router),
        ("router: full wsguard stack", guarded_router),
    ] {
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let svc = router.clone();
                let req = handshake(true, Some(&ticket));
                async move {
                    let res = svc.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
                    black_box(res)
                }
            })
        });
    }
}

async fn bare_upgrade(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, AxumMessage::Binary(_)) && socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

async fn guarded_upgrade(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, AxumMessage::Binary(_)) && socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

/// A socket policy with the default limits except the message, byte and frame rates, raised so a
/// benchmark loop does not hit them (their bookkeeping still runs on every message).
fn high_rate_policy() -> SocketPolicyLayer {
    // 10^15 a second: 10^9 bytes a second is within reach of an in-memory echo of 16 KiB
    // messages, and a message over the limit is dropped (no echo).
    let high = MessageRate::per_second(HIGH_RATE).with_burst(HIGH_RATE);
    SocketPolicyLayer::new()
        .message_rate(high)
        .byte_rate(high)
        .identity_message_rate(high)
        .identity_byte_rate(high)
        .frame_rate(high)
}

/// The whole stack in the documented order, limits high enough not to fire.
fn guarded_router(key: TicketKey) -> Router {
    Router::new()
        .route("/ws", any(guarded_upgrade))
        .layer(high_rate_policy())
        .layer(
            ConnectionQuotaLayer::new()
                .per_ip(MANY_SOCKETS)
                .per_identity(MANY_SOCKETS),
        )
        .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)))
        .layer(AuthThrottleLayer::new())
        .layer(RateLimitLayer::new().per_second(MANY).burst(MANY))
        .layer(
            ClientIpLayer::new()
                .trusted_proxy_str("10.0.0.0/8")
                .unwrap()
                .proxy_header(ProxyHeader::XForwardedFor),
        )
        .layer(OriginGuardLayer::new().allow_origin(ORIGIN).unwrap())
}

/// A WebSocket to `app` over an in-memory connection served by hyper.
async fn in_memory_socket(
    app: Router,
) -> tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream> {
    let (client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let service = TowerToHyperService::new(app);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades()
            .await;
    });
    let (ws, _) = tokio_tungstenite::client_async("ws://localhost/ws", client)
        .await
        .unwrap();
    ws
}

/// Per-message cost of the `GuardedSocket` checks (size, rates, queue, driver): an echo
/// round trip of a small and a 16 KiB message, guarded and bare.
fn messages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for size in [20usize, 16 * 1024] {
        for (name, app) in [
            ("bare", Router::new().route("/ws", any(bare_upgrade))),
            (
                "guarded",
                Router::new()
                    .route("/ws", any(guarded_upgrade))
                    .layer(high_rate_policy()),
            ),
        ] {
            let mut ws = rt.block_on(in_memory_socket(app));
            let payload = bytes::Bytes::from(vec![0x5a_u8; size]);
            c.bench_function(&format!("message echo {size} B: {name}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            ws.send(Message::Binary(payload.clone())).await.unwrap();
                            // Heartbeat pings may come in between; tungstenite answers them.
                            loop {
                                match ws.next().await {
                                    Some(Ok(Message::Binary(echo))) => {
                                        assert_eq!(echo.len(), size);
                                        break;
                                    }
                                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                                    other => panic!("expected the echo, got {other:?}"),
                                }
                            }
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = layers, messages
}
criterion_main!(benches);
