//! Every layer together, in the documented order, over real sockets on loopback: the modules
//! agree on what travels between them (client IP, principal, permit, expiry).

mod common;

use common::nz;
use std::{net::SocketAddr, time::Duration};

use axum::{Router, response::Response, routing::any};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};
use wsguard::{
    auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    socket::{GuardedSocket, GuardedUpgrade, SocketPolicyLayer},
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const ORIGIN: &str = "http://app.test";

async fn ws(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

async fn serve(key: TicketKey) -> SocketAddr {
    let app = Router::new()
        .route("/ws", any(ws))
        .layer(SocketPolicyLayer::new().max_message_size(nz(1024)))
        .layer(ConnectionQuotaLayer::new().per_identity(nz(2)))
        .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)))
        .layer(AuthThrottleLayer::new().max_failures(nz(3)))
        .layer(RateLimitLayer::new().per_second(nz(1000)).burst(nz(1000)))
        .layer(ClientIpLayer::new())
        .layer(
            OriginGuardLayer::new()
                .allow_origin(ORIGIN)
                .expect("origin"),
        );
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

async fn connect(addr: SocketAddr, origin: &str, token: &str) -> Result<Socket, StatusCode> {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(origin).expect("origin"),
    );
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("handshake: {other}"),
    }
}

async fn echo(socket: &mut Socket) {
    socket.send(Message::text("ping?")).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("in time");
    assert_eq!(reply.expect("open").expect("ok"), Message::text("ping?"));
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

#[tokio::test]
async fn every_layer_in_order() {
    let key = TicketKey::generate("k1").expect("key");
    let issuer = TicketIssuer::new(key.clone());
    let addr = serve(key).await;
    let alice = issuer.issue("alice");

    // Origin is checked first, whatever the token.
    assert_eq!(
        connect(addr, "http://evil.test", &alice).await.err(),
        Some(StatusCode::FORBIDDEN)
    );

    // Authenticated sockets echo; the identity quota holds while they live.
    let mut first = connect(addr, ORIGIN, &alice).await.expect("first socket");
    let mut second = connect(addr, ORIGIN, &alice).await.expect("second socket");
    echo(&mut first).await;
    echo(&mut second).await;
    assert_eq!(
        connect(addr, ORIGIN, &alice).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    // Another identity is not affected.
    let mut bob = connect(addr, ORIGIN, &issuer.issue("bob"))
        .await
        .expect("bob");
    echo(&mut bob).await;

    // The socket policy is applied: an oversized message closes with 1009 and frees the slot.
    first
        .send(Message::text("x".repeat(4096)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut first).await, Some(CloseCode::Size));
    let mut third = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match connect(addr, ORIGIN, &alice).await {
                Ok(socket) => return socket,
                Err(StatusCode::TOO_MANY_REQUESTS) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
    })
    .await
    .expect("the slot comes back once the socket has ended");
    echo(&mut third).await;

    // Failed authentications are counted per client IP and throttled before auth runs.
    let forged = TicketIssuer::new(TicketKey::generate("k1").expect("key")).issue("alice");
    assert_eq!(
        connect(addr, ORIGIN, "garbage").await.err(),
        Some(StatusCode::BAD_REQUEST)
    );
    for _ in 0..2 {
        assert_eq!(
            connect(addr, ORIGIN, &forged).await.err(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
    assert_eq!(
        connect(addr, ORIGIN, &issuer.issue("carol")).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
}

#[tokio::test]
async fn an_expiring_ticket_closes_its_socket_with_1008() {
    let key = TicketKey::generate("k1").expect("key");
    let issuer = TicketIssuer::new(key.clone()).ttl(Duration::from_secs(1));
    let addr = serve(key).await;
    let mut socket = connect(addr, ORIGIN, &issuer.issue("alice"))
        .await
        .expect("socket");
    echo(&mut socket).await;
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
}
