//! Revocation on a single instance, over real sockets on loopback: logging out closes the
//! matching live sockets with 1008 and refuses the credential at the next handshake, while
//! every other socket stays open.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use axum::{Router, response::Response, routing::any};
use common::{Socket, close_code};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode,
};
use wsguard::{
    auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
    revoke::{RevocationLayer, Revocations},
    socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
};

async fn echo(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// An echo server behind ticket auth and `revocations`.
async fn serve(key: TicketKey, revocations: Revocations) -> SocketAddr {
    let app = Router::new()
        .route("/ws", any(echo))
        .layer(SocketPolicyLayer::new())
        .layer(RevocationLayer::new(revocations))
        .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)));
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

/// Opens `/ws` with `token`: the socket, or the status of the refusal.
async fn connect(addr: SocketAddr, token: &str) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("handshake: {other}"),
    }
}

async fn open(addr: SocketAddr, token: &str) -> Socket {
    match connect(addr, token).await {
        Ok(socket) => socket,
        Err(status) => panic!("handshake refused with {status}"),
    }
}

/// The socket still echoes.
async fn assert_open(socket: &mut Socket, what: &str) {
    socket
        .send(Message::text("ping?"))
        .await
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no echo in time"))
            .unwrap_or_else(|| panic!("{what}: closed"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        match message {
            Message::Text(text) if text.as_str() == "ping?" => return,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{what}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn revoke_identity_closes_that_subjects_sockets_with_1008_and_refuses_its_tokens() {
    let key = TicketKey::generate("k1").unwrap();
    let issuer = TicketIssuer::new(key.clone());
    let revocations = Revocations::new();
    let addr = serve(key, revocations.clone()).await;
    let (alice_1, alice_2, bob) = (
        issuer.issue("alice"),
        issuer.issue("alice"),
        issuer.issue("bob"),
    );
    let mut a1 = open(addr, &alice_1).await;
    let mut a2 = open(addr, &alice_2).await;
    let mut b = open(addr, &bob).await;
    for socket in [&mut a1, &mut a2, &mut b] {
        assert_open(socket, "before").await;
    }
    assert_eq!(revocations.live_sockets(), 3);

    assert_eq!(revocations.revoke_identity("alice").await.unwrap(), 2);
    assert_eq!(close_code(&mut a1).await, Some(CloseCode::Policy));
    assert_eq!(close_code(&mut a2).await, Some(CloseCode::Policy));
    assert_open(&mut b, "bob's socket").await;
    assert_eq!(connect(addr, &alice_1).await.err(), Some(401));
    assert_eq!(connect(addr, &alice_2).await.err(), Some(401));
    // A ticket issued after the logout works.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let mut fresh = open(addr, &issuer.issue("alice")).await;
    assert_open(&mut fresh, "alice's new ticket").await;
    assert_open(&mut b, "bob's socket, still").await;
}

#[tokio::test]
async fn revoke_token_closes_only_the_sockets_of_that_token() {
    let key = TicketKey::generate("k1").unwrap();
    let issuer = TicketIssuer::new(key.clone());
    let revocations = Revocations::new();
    let addr = serve(key, revocations.clone()).await;
    let (phone, laptop) = (issuer.issue("alice"), issuer.issue("alice"));
    let mut p1 = open(addr, &phone).await;
    let mut p2 = open(addr, &phone).await;
    let mut l = open(addr, &laptop).await;
    for socket in [&mut p1, &mut p2, &mut l] {
        assert_open(socket, "before").await;
    }

    assert_eq!(revocations.revoke_token(&phone).await.unwrap(), 2);
    assert_eq!(close_code(&mut p1).await, Some(CloseCode::Policy));
    assert_eq!(close_code(&mut p2).await, Some(CloseCode::Policy));
    assert_open(&mut l, "the other token's socket").await;
    assert_eq!(connect(addr, &phone).await.err(), Some(401));
    let mut again = open(addr, &laptop).await;
    assert_open(&mut again, "the other token, again").await;
}

#[tokio::test]
async fn revoke_issued_before_closes_and_refuses_older_tickets_only() {
    let key = TicketKey::generate("k1").unwrap();
    let now = SystemTime::now();
    let issued_at = |t: SystemTime| {
        TicketIssuer::new(key.clone())
            .ttl(Duration::from_secs(3600))
            .clock(move || t)
    };
    let revocations = Revocations::new();
    let addr = serve(key.clone(), revocations.clone()).await;
    let old = issued_at(now - Duration::from_secs(60)).issue("alice");
    let new = issued_at(now - Duration::from_secs(10)).issue("alice");
    let other = issued_at(now - Duration::from_secs(60)).issue("bob");
    let mut o = open(addr, &old).await;
    let mut n = open(addr, &new).await;
    let mut b = open(addr, &other).await;
    for socket in [&mut o, &mut n, &mut b] {
        assert_open(socket, "before").await;
    }

    // The password changed 30 s ago.
    let changed = now - Duration::from_secs(30);
    assert_eq!(
        revocations
            .revoke_issued_before("alice", changed)
            .await
            .unwrap(),
        1
    );
    assert_eq!(close_code(&mut o).await, Some(CloseCode::Policy));
    assert_open(&mut n, "issued after the change").await;
    assert_open(&mut b, "another subject").await;
    assert_eq!(connect(addr, &old).await.err(), Some(401));
    let mut again = open(addr, &new).await;
    assert_open(&mut again, "issued after the change, again").await;
}

#[tokio::test]
async fn a_refusal_is_401_with_a_bearer_challenge() {
    let key = TicketKey::generate("k1").unwrap();
    let ticket = TicketIssuer::new(key.clone()).issue("alice");
    let revocations = Revocations::new();
    let addr = serve(key, revocations.clone()).await;
    revocations.revoke_token(&ticket).await.unwrap();
    let res = common::http(
        addr,
        "GET",
        "/ws",
        &[
            ("Authorization", &format!("Bearer {ticket}")),
            ("Connection", "upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert!(res.body.contains("revoked"), "{}", res.body);
}

#[test]
fn tickets_carry_their_issue_time_to_the_principal() {
    use wsguard::auth::{Authenticator, Credential, SourceKind};
    let key = TicketKey::generate("k1").unwrap();
    // Millisecond precision: a ticket issued just after a revocation is not older than it.
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
    let now = move || at;
    let ticket = TicketIssuer::new(key.clone()).clock(now).issue("alice");
    let verifier = TicketVerifier::new(key).clock(move || at + Duration::from_secs(1));
    assert_eq!(verifier.verify(&ticket).unwrap().issued_at(), Some(at));
    let parts = http::Request::new(()).into_parts().0;
    let verified = std::future::Future::poll(
        std::pin::pin!(
            verifier.authenticate(&parts, Credential::new(ticket, SourceKind::Authorization))
        ),
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    );
    let std::task::Poll::Ready(Ok(verified)) = verified else {
        panic!("the ticket verifies at once");
    };
    assert_eq!(verified.principal().issued_at(), Some(at));
}

#[cfg(feature = "jwt")]
#[test]
fn jwt_iat_becomes_the_issue_time_and_bad_values_do_not_panic() {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use wsguard::auth::JwtAuthenticator;
    const SECRET: &[u8] = b"a shared secret of at least 32 bytes!!";
    struct Case {
        name: &'static str,
        iat: Option<serde_json::Value>,
        issued_at: Option<SystemTime>,
    }
    let epoch = SystemTime::UNIX_EPOCH;
    let cases = [
        Case {
            name: "integer",
            iat: Some(json!(1_700_000_000u64)),
            issued_at: Some(epoch + Duration::from_secs(1_700_000_000)),
        },
        Case {
            name: "fractional",
            iat: Some(json!(1_700_000_000.5)),
            issued_at: Some(epoch + Duration::from_millis(1_700_000_000_500)),
        },
        Case {
            name: "absent",
            iat: None,
            issued_at: None,
        },
        Case {
            name: "huge",
            iat: Some(json!(1e300)),
            issued_at: None,
        },
        Case {
            name: "negative",
            iat: Some(json!(-5)),
            issued_at: None,
        },
    ];
    let exp = SystemTime::now().duration_since(epoch).unwrap().as_secs() + 3600;
    let auth = JwtAuthenticator::<serde_json::Value>::hs256(SECRET).audience(["app"]);
    for case in cases {
        let mut claims = json!({ "sub": "alice", "exp": exp, "aud": "app" });
        if let Some(iat) = case.iat {
            claims["iat"] = iat;
        }
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let verified = auth
            .verify(&token)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            verified.principal().issued_at(),
            case.issued_at,
            "{}",
            case.name
        );
    }
}
