//! `WsGuard` over HTTP/2 WebSockets (RFC 8441): a real hyper HTTP/2 client on loopback opens
//! sockets as extended `CONNECT` streams, many on one TCP connection, through the whole
//! guard. Each part refuses what it is for (origin `403`, credential `401`, rate and quota
//! `429`, policy closes), and the quotas and rate limits count every stream, not every
//! connection.

mod common;
#[path = "common/h2.rs"]
mod h2;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo, response::Response, routing::any};
use futures_util::{SinkExt, StreamExt};
use h2::{H2Client, H2Socket, header_str};
use http::{StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use tower::ServiceExt;
use wsguard::{
    WsGuard,
    auth::{CredentialSource, HandshakeAuthLayer, StaticTokens},
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
};

use common::nz;

const ORIGIN: &str = "https://app.example.com";
const HOST: &str = "api.example.com";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn tokens() -> StaticTokens<()> {
    StaticTokens::new()
        .token(ALICE, "alice", ())
        .token(BOB, "bob", ())
}

/// The application's origin and host; the token as a bearer header, a `bearer.` subprotocol
/// entry, a `token` query parameter or a `session` cookie.
fn guard() -> WsGuard<StaticTokens<()>> {
    let sources = [
        CredentialSource::authorization(),
        CredentialSource::subprotocol("bearer.").expect("valid prefix"),
        CredentialSource::query("token").expect("valid name"),
        CredentialSource::cookie("session").expect("valid name"),
    ];
    WsGuard::with_auth(HandshakeAuthLayer::new(tokens()).sources(sources))
        .allow_origin(ORIGIN)
        .and_then(|g| g.allow_host(HOST))
        .expect("valid origin and host")
}

/// Says which HTTP version carried the handshake, then echoes.
async fn echo(version: Version, upgrade: GuardedUpgrade) -> Response {
    upgrade
        .protocols(["chat.v1"])
        .on_upgrade(move |mut socket: GuardedSocket| async move {
            if socket
                .send(axum::extract::ws::Message::text(format!("{version:?}")))
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(message)) = socket.recv().await {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        })
}

/// Serves `guard` on `/ws` as the stock ticker does: hyper's automatic HTTP/1.1 or HTTP/2
/// server with extended `CONNECT` enabled, the peer address as `ConnectInfo`.
async fn serve<A>(guard: WsGuard<A>) -> SocketAddr
where
    A: wsguard::auth::Authenticator,
{
    let app = Router::new().route("/ws", any(echo)).layer(guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let app = app.clone();
            tokio::spawn(async move {
                let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(req)
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> H2Client {
    H2Client::h2c(addr, HOST).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A browser's handshake headers: this origin and a bearer token.
async fn open(client: &mut H2Client, token: &str) -> Result<H2Socket, h2::Refused> {
    let auth = bearer(token);
    let headers = [("origin", ORIGIN), ("authorization", auth.as_str())];
    client.websocket("/ws", &headers).await.map(|(ws, _)| ws)
}

/// The next text message, skipping control frames; fails after 10 s.
async fn next_text(ws: &mut H2Socket) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            match message.expect("no error") {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
        panic!("the socket ended")
    })
    .await
    .expect("a message in time")
}

/// The close code the server sends, reading past anything else (bounded by a deadline).
async fn close_code(ws: &mut H2Socket) -> Option<CloseCode> {
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

/// Starts the closing handshake with `1000`; the server echoes the code.
async fn close_normally(ws: &mut H2Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.send(Message::Close(Some(frame))).await.expect("close");
}

/// Waits (bounded) until `quota` holds `n` sockets for loopback: slots come back when the
/// server has seen the stream end, a moment after the client let go.
async fn wait_for_active(quota: &ConnectionQuotaLayer, n: usize) {
    for _ in 0..2000 {
        if quota.active_for_ip(LOOPBACK) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the quota holds {} sockets, not {n}",
        quota.active_for_ip(LOOPBACK)
    );
}

#[tokio::test]
async fn sockets_run_over_streams_of_one_http2_connection_and_echo() {
    let addr = serve(guard()).await;
    let mut client = connect(addr).await;
    let mut first = open(&mut client, ALICE).await.expect("first socket");
    let mut second = open(&mut client, BOB).await.expect("second socket");
    assert_eq!(next_text(&mut first).await, "HTTP/2.0");
    assert_eq!(next_text(&mut second).await, "HTTP/2.0");
    // The two sockets share the TCP connection and stay apart.
    second.send(Message::text("to second")).await.expect("send");
    first.send(Message::text("to first")).await.expect("send");
    assert_eq!(next_text(&mut first).await, "to first");
    assert_eq!(next_text(&mut second).await, "to second");
    // One socket ending leaves the other, and the connection, open.
    close_normally(&mut first).await;
    assert_eq!(close_code(&mut first).await, Some(CloseCode::Normal));
    second
        .send(Message::text("still here"))
        .await
        .expect("send");
    assert_eq!(next_text(&mut second).await, "still here");
    let mut third = open(&mut client, ALICE)
        .await
        .expect("a socket after one ended");
    assert_eq!(next_text(&mut third).await, "HTTP/2.0");
}

#[tokio::test]
async fn a_cross_site_origin_or_a_rebound_authority_is_refused_with_403() {
    let addr = serve(guard()).await;
    let mut client = connect(addr).await;
    let auth = bearer(ALICE);
    let refused = client
        .websocket(
            "/ws",
            &[
                ("origin", "https://evil.example"),
                ("authorization", auth.as_str()),
            ],
        )
        .await
        .expect_err("refused");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);

    // DNS rebinding: the `:authority` (there is no `Host` in HTTP/2) is the attacker's name.
    let mut rebound = H2Client::h2c(addr, "rebind.attacker.example").await;
    let refused = rebound
        .websocket(
            "/ws",
            &[
                ("origin", "http://rebind.attacker.example"),
                ("authorization", auth.as_str()),
            ],
        )
        .await
        .expect_err("refused");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    // The connection still serves the good handshake.
    assert!(open(&mut client, ALICE).await.is_ok());
}

#[tokio::test]
async fn a_missing_or_wrong_credential_is_refused_with_401_and_the_subprotocol_token_works() {
    let addr = serve(guard()).await;
    let mut client = connect(addr).await;
    let refused = client
        .websocket("/ws", &[("origin", ORIGIN)])
        .await
        .expect_err("refused");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(
        refused.headers.contains_key("www-authenticate"),
        "{:?}",
        refused.headers
    );
    let refused = open(&mut client, "wrong-token").await.expect_err("refused");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);

    // What a browser sends: the token as a `Sec-WebSocket-Protocol` entry. Only the real
    // subprotocol is selected; the token is never echoed back.
    let protocols = format!("chat.v1, bearer.{ALICE}");
    let (mut ws, headers) = client
        .websocket(
            "/ws",
            &[("origin", ORIGIN), ("sec-websocket-protocol", &protocols)],
        )
        .await
        .expect("upgraded with the subprotocol token");
    assert_eq!(
        header_str(&headers, "sec-websocket-protocol"),
        Some("chat.v1")
    );
    assert_eq!(next_text(&mut ws).await, "HTTP/2.0");
}

/// The query and cookie sources read an HTTP/2 request as an HTTP/1.1 one: the `:path`
/// query, and cookies split over several `cookie` fields (as HTTP/2 clients may send them,
/// RFC 9113 §8.2.3).
#[tokio::test]
async fn query_and_split_cookie_credentials_work_over_http2() {
    let addr = serve(guard()).await;
    let mut client = connect(addr).await;
    let path = format!("/ws?room=1&token={ALICE}");
    let (mut ws, _) = client
        .websocket(&path, &[("origin", ORIGIN)])
        .await
        .expect("the query token");
    assert_eq!(next_text(&mut ws).await, "HTTP/2.0");
    let session = format!("session={BOB}");
    let (mut ws, _) = client
        .websocket(
            "/ws",
            &[
                ("origin", ORIGIN),
                ("cookie", "theme=dark"),
                ("cookie", &session),
            ],
        )
        .await
        .expect("the cookie in the second field");
    assert_eq!(next_text(&mut ws).await, "HTTP/2.0");
    let refused = client
        .websocket("/ws?token=wrong-token", &[("origin", ORIGIN)])
        .await
        .expect_err("a wrong query token");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
}

#[tokio::test]
async fn the_quota_counts_every_stream_of_one_connection() {
    const PER_IP: usize = 3;
    let quota = ConnectionQuotaLayer::new().per_ip(nz(PER_IP as u64));
    let addr = serve(guard().without_rate_limit().quota(quota.clone())).await;
    let mut client = connect(addr).await;
    let mut open_sockets = Vec::new();
    for n in 0..PER_IP {
        let token = if n % 2 == 0 { ALICE } else { BOB };
        let mut ws = open(&mut client, token)
            .await
            .unwrap_or_else(|r| panic!("socket {n}: {r:?}"));
        assert_eq!(next_text(&mut ws).await, "HTTP/2.0");
        open_sockets.push(ws);
    }
    // One TCP connection, three sockets held.
    assert_eq!(quota.active_for_ip(LOOPBACK), PER_IP);
    let refused = open(&mut client, BOB).await.expect_err("over the quota");
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    assert!(
        refused.body.contains("too many open sockets"),
        "{}",
        refused.body
    );

    // Ending one stream gives its slot back; the others keep theirs.
    let mut ended = open_sockets.pop().expect("a socket");
    close_normally(&mut ended).await;
    assert_eq!(close_code(&mut ended).await, Some(CloseCode::Normal));
    drop(ended);
    wait_for_active(&quota, PER_IP - 1).await;
    let mut again = open(&mut client, BOB).await.expect("a slot came back");
    assert_eq!(next_text(&mut again).await, "HTTP/2.0");
    open_sockets.push(again);
    assert_eq!(quota.active_for_ip(LOOPBACK), PER_IP);

    // A dropped stream (no close frame: the client resets it) gives its slot back too.
    drop(open_sockets.pop());
    wait_for_active(&quota, PER_IP - 1).await;

    // Dropping the TCP connection ends every socket on it.
    drop(client);
    wait_for_active(&quota, 0).await;
    for mut ws in open_sockets {
        assert_eq!(
            close_code(&mut ws).await,
            None,
            "no close frame: the connection is gone"
        );
    }
}

#[tokio::test]
async fn the_handshake_rate_counts_every_stream_of_one_connection() {
    let rate = RateLimitLayer::new().per_minute(nz(1)).burst(nz(2));
    let addr = serve(guard().rate_limit(rate)).await;
    let mut client = connect(addr).await;
    let _first = open(&mut client, ALICE).await.expect("first handshake");
    let _second = open(&mut client, ALICE).await.expect("second handshake");
    let refused = open(&mut client, ALICE).await.expect_err("over the rate");
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("too many handshakes"),
        "{}",
        refused.body
    );
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    // A new connection from the same address is the same client.
    let mut other = connect(addr).await;
    let refused = open(&mut other, BOB).await.expect_err("same client");
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failed_credentials_on_streams_of_one_connection_lock_the_client_out() {
    let throttle = AuthThrottleLayer::new().max_failures(nz(2));
    let addr = serve(guard().throttle(throttle)).await;
    let mut client = connect(addr).await;
    for n in 0..2 {
        let refused = open(&mut client, &format!("guess-{n}"))
            .await
            .expect_err("a guess");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "guess {n}");
    }
    let refused = open(&mut client, ALICE).await.expect_err("locked out");
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("too many failed authentications"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn a_policy_close_reaches_the_client_and_spares_the_other_streams() {
    let policy = SocketPolicyLayer::new().max_message_size(nz(1024));
    let addr = serve(guard().socket_policy(policy)).await;
    let mut client = connect(addr).await;
    let mut offender = open(&mut client, ALICE).await.expect("socket");
    let mut bystander = open(&mut client, ALICE).await.expect("socket");
    assert_eq!(next_text(&mut offender).await, "HTTP/2.0");
    assert_eq!(next_text(&mut bystander).await, "HTTP/2.0");
    offender
        .send(Message::binary(vec![0u8; 2048]))
        .await
        .expect("send");
    assert_eq!(close_code(&mut offender).await, Some(CloseCode::Size));
    bystander.send(Message::text("fine")).await.expect("send");
    assert_eq!(next_text(&mut bystander).await, "fine");
}

#[tokio::test]
async fn revoking_the_identity_closes_its_http2_socket_with_1008() {
    let guard = guard();
    let registry = guard.revocation_registry();
    let addr = serve(guard).await;
    let mut client = connect(addr).await;
    let mut alice = open(&mut client, ALICE).await.expect("socket");
    let mut bob = open(&mut client, BOB).await.expect("socket");
    assert_eq!(next_text(&mut alice).await, "HTTP/2.0");
    assert_eq!(next_text(&mut bob).await, "HTTP/2.0");
    assert_eq!(registry.revoke_identity("alice").await.ok(), Some(1));
    assert_eq!(close_code(&mut alice).await, Some(CloseCode::Policy));
    let refused = open(&mut client, ALICE).await.expect_err("revoked");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    bob.send(Message::text("bob stays")).await.expect("send");
    assert_eq!(next_text(&mut bob).await, "bob stays");
}

/// An extended `CONNECT` for another protocol (`:protocol` is not `websocket`) passes the
/// guard like a handshake, but is not upgraded as a WebSocket.
#[tokio::test]
async fn an_extended_connect_for_another_protocol_is_not_a_websocket() {
    let addr = serve(guard()).await;
    let mut client = connect(addr).await;
    let auth = bearer(ALICE);
    let headers = [("origin", ORIGIN), ("authorization", auth.as_str())];
    let request = client.connect_request("/ws", "connect-udp", &headers);
    let response = client.send(request).await;
    assert!(
        response.status().is_client_error(),
        "answered {}",
        response.status()
    );
    // And the guard checks it as a handshake: a forged origin is a 403.
    let request = client.connect_request(
        "/ws",
        "connect-udp",
        &[("origin", "https://evil.example"), ("authorization", &auth)],
    );
    assert_eq!(client.send(request).await.status(), StatusCode::FORBIDDEN);
}
