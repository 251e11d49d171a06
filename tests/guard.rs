//! `WsGuard` over real sockets: the default guard refuses what each part is for (cross-site
//! origin, missing credential, DNS rebinding, floods, over-quota sockets, oversized
//! messages), `without_*` really switches a part off, and the misordered hand-made stacks
//! that used to build (an identity quota that counts nobody, a quota without a client IP)
//! cannot be written through it. With feature `redis`, `.fleet(&fleet)` shares the quota
//! between two app instances.

mod common;

use common::{echo, nz, serve_router};
use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    routing::{any, get},
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};
use wsguard::{
    WsGuard,
    auth::{HandshakeAuthLayer, StaticTokens},
    client_ip::ClientIpLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    revoke::Revocations,
    socket::SocketPolicyLayer,
};

const ORIGIN: &str = "https://app.example.com";
const HOST: &str = "api.example.com";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

fn tokens() -> StaticTokens<()> {
    StaticTokens::new()
        .token(ALICE, "alice", ())
        .token(BOB, "bob", ())
}

/// The smallest guard: the application's origin and host, an authenticator.
fn guard() -> WsGuard<StaticTokens<()>> {
    WsGuard::new(tokens())
        .allow_origin(ORIGIN)
        .and_then(|g| g.allow_host(HOST))
        .expect("valid origin and host")
}

async fn serve<A>(guard: WsGuard<A>) -> SocketAddr
where
    A: wsguard::auth::Authenticator,
{
    serve_router(Router::new().route("/ws", any(echo)).layer(guard)).await
}

/// The head of a raw handshake's response, and the connection (open if it upgraded).
struct Head {
    status: u16,
    head: String,
    body: String,
    /// Keeps an upgraded socket open until dropped.
    _stream: TcpStream,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A WebSocket handshake over raw TCP with `Host`, `Origin` (if any) and a bearer token (if
/// any) to `/ws`; reads the response head, and the body of a rejection.
async fn handshake(
    addr: SocketAddr,
    host: &str,
    origin: Option<&str>,
    token: Option<&str>,
) -> Head {
    handshake_to(addr, "/ws", host, origin, token).await
}

/// [`handshake`] on another path.
async fn handshake_to(
    addr: SocketAddr,
    path: &str,
    host: &str,
    origin: Option<&str>,
    token: Option<&str>,
) -> Head {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(origin) = origin {
        req.push_str(&format!("Origin: {origin}\r\n"));
    }
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head within 10 s")
            .unwrap();
        assert!(
            n == 1,
            "connection closed before the end of the head: {head:?}"
        );
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024, "response head too long");
    }
    let head = String::from_utf8(head).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let mut res = Head {
        status,
        head,
        body: String::new(),
        _stream: stream,
    };
    if status != 101 {
        let len: usize = res
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(16 * 1024);
        let mut body = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), res._stream.read_exact(&mut body))
            .await
            .expect("body within 10 s")
            .unwrap();
        res.body = String::from_utf8_lossy(&body).into_owned();
    }
    res
}

/// A legitimate browser handshake for `token`.
async fn good(addr: SocketAddr, token: &str) -> Head {
    handshake(addr, HOST, Some(ORIGIN), Some(token)).await
}

type Client = WebSocketStream<TcpStream>;

/// A tokio-tungstenite client through the guard.
async fn client(addr: SocketAddr, token: &str) -> Client {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    let headers = req.headers_mut();
    headers.insert("host", HOST.parse().unwrap());
    headers.insert("origin", ORIGIN.parse().unwrap());
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(res.status(), 101);
    ws
}

/// The close code the server sends, reading past anything else (bounded by a deadline).
async fn close_code(ws: &mut Client) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("close within 10 s")
}

#[tokio::test]
async fn default_guard_refuses_a_cross_site_origin() {
    let addr = serve(guard()).await;
    let res = handshake(addr, HOST, Some("https://evil.example"), Some(ALICE)).await;
    assert_eq!(res.status, 403, "{}", res.head);
}

#[tokio::test]
async fn default_guard_refuses_a_missing_or_bad_credential() {
    let addr = serve(guard()).await;
    let res = handshake(addr, HOST, Some(ORIGIN), None).await;
    assert_eq!(res.status, 401, "{}", res.head);
    assert!(res.header("www-authenticate").is_some(), "{}", res.head);
    let res = handshake(addr, HOST, Some(ORIGIN), Some("wrong-token")).await;
    assert_eq!(res.status, 401, "{}", res.head);
}

#[tokio::test]
async fn default_guard_refuses_a_dns_rebinding_host() {
    let addr = serve(guard()).await;
    // After rebinding, the page's origin and the Host are both the attacker's name.
    let res = handshake(
        addr,
        "rebind.attacker.example",
        Some("http://rebind.attacker.example"),
        Some(ALICE),
    )
    .await;
    assert_eq!(res.status, 403, "{}", res.head);
    let res = handshake(addr, "rebind.attacker.example", None, Some(ALICE)).await;
    assert_eq!(res.status, 403, "{}", res.head);
}

#[tokio::test]
async fn default_guard_upgrades_a_good_handshake_and_echoes() {
    let addr = serve(guard()).await;
    assert_eq!(good(addr, ALICE).await.status, 101);
    let mut ws = client(addr, ALICE).await;
    ws.send(Message::text("hello")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("hello"));
}

#[tokio::test]
async fn default_guard_caps_sockets_per_identity() {
    let addr = serve(guard()).await;
    let mut open = Vec::new();
    for n in 0..8 {
        let res = good(addr, ALICE).await;
        assert_eq!(res.status, 101, "socket {n}: {}", res.head);
        open.push(res);
    }
    let res = good(addr, ALICE).await;
    assert_eq!(res.status, 429, "{}", res.head);
    assert!(
        res.body.contains("too many open sockets for this user"),
        "{}",
        res.body
    );
    assert!(res.header("retry-after").is_some(), "{}", res.head);
    // Another identity from the same address still gets in (the per-IP cap is 16).
    assert_eq!(good(addr, BOB).await.status, 101);
}

/// `Router::layer` layers every route (and method) separately; the guard's default limits
/// are still one set of counters, so a second route is not a second quota.
#[tokio::test]
async fn default_limits_span_every_route_of_the_router() {
    let app = Router::new()
        .route("/ws", any(echo))
        .route("/ws2", get(echo))
        .layer(guard());
    let addr = serve_router(app).await;
    let mut open = Vec::new();
    for n in 0..8 {
        let path = if n % 2 == 0 { "/ws" } else { "/ws2" };
        let res = handshake_to(addr, path, HOST, Some(ORIGIN), Some(ALICE)).await;
        assert_eq!(res.status, 101, "socket {n}: {}", res.head);
        open.push(res);
    }
    for path in ["/ws", "/ws2"] {
        let res = handshake_to(addr, path, HOST, Some(ORIGIN), Some(ALICE)).await;
        assert_eq!(res.status, 429, "{path}: {}", res.head);
        assert!(
            res.body.contains("too many open sockets for this user"),
            "{}",
            res.body
        );
    }
}

#[tokio::test]
async fn default_guard_refuses_a_handshake_flood_with_retry_after() {
    let addr = serve(guard()).await;
    // 10 per second with a burst of 10: a tight loop of 50 exceeds it whatever the speed.
    let mut limited = None;
    for _ in 0..50 {
        let res = handshake(addr, HOST, Some(ORIGIN), Some(ALICE)).await;
        if res.body.contains("too many handshakes") {
            limited = Some(res);
            break;
        }
        drop(res);
    }
    let res = limited.expect("the default rate limit refused part of the flood");
    assert_eq!(res.status, 429, "{}", res.body);
    assert!(res.header("retry-after").is_some(), "{}", res.head);
}

#[tokio::test]
async fn default_guard_locks_out_a_credential_guesser() {
    let addr = serve(guard()).await;
    for n in 0..5 {
        let res = handshake(addr, HOST, Some(ORIGIN), Some(&format!("guess-{n}"))).await;
        assert_eq!(res.status, 401, "guess {n}: {}", res.head);
    }
    // Locked out: even the right token is refused now.
    let res = good(addr, ALICE).await;
    assert_eq!(res.status, 429, "{}", res.head);
    assert!(
        res.body.contains("too many failed authentications"),
        "{}",
        res.body
    );
    assert!(res.header("retry-after").is_some(), "{}", res.head);
}

#[tokio::test]
async fn default_guard_closes_an_oversized_message_with_1009() {
    let addr = serve(guard()).await;
    let mut ws = client(addr, ALICE).await;
    // The default policy allows 64 KiB messages.
    ws.send(Message::binary(vec![0u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn tuned_socket_policy_replaces_the_default() {
    let policy = SocketPolicyLayer::new().max_message_size(nz(16));
    let addr = serve(guard().socket_policy(policy)).await;
    let mut ws = client(addr, ALICE).await;
    ws.send(Message::text("0123456789abcdef!")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn without_rate_limit_switches_the_rate_limit_off() {
    let addr = serve(guard().without_rate_limit().without_quota()).await;
    for n in 0..40 {
        let res = good(addr, ALICE).await;
        assert_eq!(res.status, 101, "handshake {n}: {}", res.head);
    }
}

#[tokio::test]
async fn without_quota_switches_the_quota_off() {
    let rate = RateLimitLayer::new().per_second(nz(1000));
    let addr = serve(guard().rate_limit(rate).without_quota()).await;
    let mut open = Vec::new();
    for n in 0..20 {
        let res = good(addr, ALICE).await;
        assert_eq!(res.status, 101, "socket {n}: {}", res.head);
        open.push(res);
    }
}

#[tokio::test]
async fn without_throttle_switches_the_throttle_off() {
    let addr = serve(guard().without_throttle()).await;
    for n in 0..7 {
        let res = handshake(addr, HOST, Some(ORIGIN), Some(&format!("guess-{n}"))).await;
        assert_eq!(res.status, 401, "guess {n}: {}", res.head);
    }
    assert_eq!(good(addr, ALICE).await.status, 101);
}

#[tokio::test]
async fn tuned_throttle_replaces_the_default() {
    let throttle = AuthThrottleLayer::new().max_failures(nz(1));
    let addr = serve(guard().throttle(throttle)).await;
    let res = handshake(addr, HOST, Some(ORIGIN), Some("guess")).await;
    assert_eq!(res.status, 401, "{}", res.head);
    assert_eq!(good(addr, ALICE).await.status, 429);
}

#[tokio::test]
async fn revocations_refuse_the_handshake_and_close_the_live_socket() {
    let revocations = Revocations::new();
    let addr = serve(guard().revocations(revocations.clone())).await;
    let mut ws = client(addr, ALICE).await;
    // The socket is registered once its first message round-trips.
    ws.send(Message::text("ping")).await.unwrap();
    let _ = ws.next().await;
    assert_eq!(revocations.revoke_identity("alice").await.unwrap(), 1);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    let res = good(addr, ALICE).await;
    assert_eq!(res.status, 401, "{}", res.head);
    assert_eq!(good(addr, BOB).await.status, 101);
}

/// Revocation is on by default: the guard's own registry, reachable for a logout route.
#[tokio::test]
async fn the_default_guard_checks_its_own_revocation_registry() {
    let guard = guard();
    let registry = guard.revocation_registry();
    let addr = serve(guard).await;
    let mut ws = client(addr, ALICE).await;
    ws.send(Message::text("ping")).await.unwrap();
    let _ = ws.next().await;
    assert_eq!(registry.revoke_identity("alice").await.unwrap(), 1);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    assert_eq!(good(addr, ALICE).await.status, 401);
    assert_eq!(good(addr, BOB).await.status, 101);
}

#[tokio::test]
async fn without_revocation_switches_the_check_off() {
    let revocations = Revocations::new();
    let guard = guard()
        .revocations(revocations.clone())
        .without_revocation();
    let addr = serve(guard).await;
    revocations.revoke_identity("alice").await.unwrap();
    assert_eq!(good(addr, ALICE).await.status, 101);
}

// The misorderings a hand-made stack allows, and the same intent through `WsGuard`.

/// Hand-stacked, the identity quota placed after the auth layer in the `Router::layer`
/// chain runs *before* it: it never sees an identity, so the cap of 1 counts nobody.
#[tokio::test]
async fn hand_stacked_identity_quota_outside_auth_counts_nobody_but_wsguard_enforces_it() {
    let quota = ConnectionQuotaLayer::new().per_identity(nz(1));
    let misordered = Router::new()
        .route("/ws", any(echo))
        .layer(HandshakeAuthLayer::new(tokens()))
        .layer(quota.clone()) // runs before auth: no Principal yet
        .layer(ClientIpLayer::new());
    let addr = serve_router(misordered).await;
    let first = good(addr, ALICE).await;
    assert_eq!(first.status, 101);
    let second = good(addr, ALICE).await;
    assert_eq!(second.status, 101, "the misordered quota counts nobody");
    assert_eq!(quota.active_for_identity("alice"), 0);

    // The same intent through WsGuard: the quota always runs after auth.
    let quota = ConnectionQuotaLayer::new().per_identity(nz(1));
    let addr = serve(guard().quota(quota.clone())).await;
    let first = good(addr, ALICE).await;
    assert_eq!(first.status, 101);
    let second = good(addr, ALICE).await;
    assert_eq!(second.status, 429, "{}", second.head);
    assert!(second.body.contains("too many open sockets for this user"));
    assert_eq!(quota.active_for_identity("alice"), 1);
}

/// Hand-stacked, a per-IP quota without `ClientIpLayer` in front answers every handshake
/// with `500`; through `WsGuard` the client IP always comes first.
#[tokio::test]
async fn hand_stacked_quota_without_client_ip_is_a_500_but_wsguard_cannot_build_it() {
    // `ClientIpLayer` added first runs last: too late for the quota in front of it.
    let inverted = Router::new()
        .route("/ws", any(echo))
        .layer(ClientIpLayer::new())
        .layer(ConnectionQuotaLayer::new().per_ip(nz(1)));
    let addr = serve_router(inverted).await;
    let res = good(addr, ALICE).await;
    assert_eq!(res.status, 500, "{}", res.head);

    let quota = ConnectionQuotaLayer::new().per_ip(nz(1));
    let addr = serve(guard().quota(quota)).await;
    let first = good(addr, ALICE).await;
    assert_eq!(first.status, 101, "{}", first.head);
    let second = good(addr, BOB).await;
    assert_eq!(second.status, 429, "{}", second.head);
    assert!(
        second
            .body
            .contains("too many open sockets from this address")
    );
}

#[cfg(feature = "redis")]
mod fleet {
    use super::*;
    use wsguard::fleet::Fleet;

    fn redis_url() -> String {
        std::env::var("WSGUARD_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("WSGUARD_TEST_REDIS_URL names the test Redis (redis://127.0.0.1:<port>)")
    }

    fn fleet(prefix: &str) -> Fleet {
        Fleet::builder(redis_url())
            .prefix(prefix)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// Two instances, each with its own `Fleet` handle on one Redis: the per-identity cap of
    /// 1 spans them.
    #[tokio::test]
    async fn fleet_guard_shares_the_identity_quota_between_instances() {
        let prefix = format!("wsguard-test-guard-{}", std::process::id());
        let (a, b) = (fleet(&prefix), fleet(&prefix));
        let quota = ConnectionQuotaLayer::new().per_identity(nz(1));
        let addr_a = serve(guard().quota(quota.clone()).fleet(&a)).await;
        let addr_b = serve(guard().quota(quota).fleet(&b)).await;

        let first = good(addr_a, ALICE).await;
        assert_eq!(first.status, 101, "{}", first.head);
        let second = good(addr_b, ALICE).await;
        assert_eq!(second.status, 429, "{}", second.head);
        assert!(second.body.contains("too many open sockets for this user"));
        assert_eq!(good(addr_b, BOB).await.status, 101);
    }

    /// The rate limit handed to the guard is counted in Redis in fleet mode: one handshake
    /// per minute per client IP across both instances.
    #[tokio::test]
    async fn fleet_guard_shares_the_rate_limit_between_instances() {
        let prefix = format!("wsguard-test-guard-rate-{}", std::process::id());
        let (a, b) = (fleet(&prefix), fleet(&prefix));
        let rate = || RateLimitLayer::new().per_minute(nz(1)).burst(nz(1));
        let addr_a = serve(guard().rate_limit(rate()).fleet(&a)).await;
        let addr_b = serve(guard().rate_limit(rate()).fleet(&b)).await;
        assert_eq!(good(addr_a, ALICE).await.status, 101);
        let res = good(addr_b, BOB).await;
        assert_eq!(res.status, 429, "{}", res.head);
        assert!(res.body.contains("too many handshakes"), "{}", res.body);
        assert!(res.header("retry-after").is_some(), "{}", res.head);
    }

    /// In fleet mode the revocation check is on by default, with the fleet's registry.
    #[tokio::test]
    async fn fleet_guard_enforces_the_fleets_revocations_by_default() {
        let prefix = format!("wsguard-test-guard-revoke-{}", std::process::id());
        let (a, b) = (fleet(&prefix), fleet(&prefix));
        let addr_b = serve(guard().fleet(&b)).await;
        assert_eq!(good(addr_b, ALICE).await.status, 101);
        a.revocations().revoke_identity("alice").await.unwrap();
        let res = good(addr_b, ALICE).await;
        assert_eq!(res.status, 401, "{}", res.head);
    }
}
