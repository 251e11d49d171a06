//! Loopback integration: concurrent-socket quotas hold a slot for the life of an upgraded
//! socket and give it back however the socket ends.

mod common;

use common::nz;
use std::{net::SocketAddr, time::Duration};

use axum::{
    Extension, Router,
    extract::{
        Query,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
    routing::get,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Error as WsError},
};
use wsguard::{
    client_ip::ClientIpLayer,
    rate_limit::{ConnectionPermit, ConnectionQuotaLayer},
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Owns the permit for the socket's life; on drop it releases the permit first, then says
/// how the socket ended, so the test knows the slot is back without sleeping.
struct Held {
    permit: ConnectionPermit,
    ended: mpsc::UnboundedSender<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.permit));
        let _ = self.ended.send(());
    }
}

#[derive(serde::Deserialize)]
struct Mode {
    panic: Option<bool>,
}

async fn ws(
    upgrade: WebSocketUpgrade,
    Extension(permit): Extension<ConnectionPermit>,
    Extension(ended): Extension<mpsc::UnboundedSender<()>>,
    Query(mode): Query<Mode>,
) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        let held = Held { permit, ended };
        if mode.panic == Some(true) {
            panic!("socket handler panics (expected by the test)");
        }
        run(socket).await;
        drop(held);
    })
}

async fn run(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Close(_) => break,
            Message::Text(t) if socket.send(Message::Text(t.clone())).await.is_err() => break,
            _ => {}
        }
    }
}

async fn serve(quota: ConnectionQuotaLayer) -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/ws", get(ws))
        .layer(quota)
        .layer(ClientIpLayer::new())
        .layer(Extension(tx));
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
    (addr, rx)
}

async fn open(addr: SocketAddr, query: &str) -> Result<Client, WsError> {
    let (mut client, response) = connect_async(format!("ws://{addr}/ws{query}")).await?;
    assert_eq!(response.status(), 101);
    if query.is_empty() {
        // Prove the socket is live.
        client.send(tungstenite::Message::text("ping")).await?;
        let echoed = client.next().await.expect("an echo")?;
        assert_eq!(echoed, tungstenite::Message::text("ping"));
    }
    Ok(client)
}

fn refused_status(result: Result<Client, WsError>) -> (u16, Option<String>) {
    match result {
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the socket opened"),
    }
}

/// Waits for one socket to end (bounded: a hang fails the test instead of blocking it).
async fn ended(rx: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the socket ended")
        .expect("channel open");
}

#[tokio::test]
async fn per_ip_quota_is_held_for_the_socket_life_and_released_however_it_ends() {
    const QUOTA: usize = 3;
    let quota = ConnectionQuotaLayer::new().per_ip(nz(QUOTA));
    let (addr, mut ended_rx) = serve(quota.clone()).await;

    let mut open_sockets = Vec::new();
    for _ in 0..QUOTA {
        open_sockets.push(open(addr, "").await.unwrap());
    }
    assert_eq!(quota.active(), QUOTA);
    // quota + 1: refused before the upgrade.
    assert_eq!(
        refused_status(open(addr, "").await),
        (429, Some("1".into()))
    );
    assert_eq!(quota.active(), QUOTA);

    // Normal close: the slot comes back and a new socket is accepted.
    let mut first = open_sockets.remove(0);
    first.close(None).await.unwrap();
    ended(&mut ended_rx).await;
    assert_eq!(quota.active(), QUOTA - 1);
    open_sockets.push(open(addr, "").await.unwrap());
    assert_eq!(refused_status(open(addr, "").await).0, 429);

    // Abnormal close: the client drops the TCP connection without a close frame.
    drop(open_sockets.remove(0));
    ended(&mut ended_rx).await;
    assert_eq!(quota.active(), QUOTA - 1);
    open_sockets.push(open(addr, "").await.unwrap());
    assert_eq!(refused_status(open(addr, "").await).0, 429);

    // The socket handler panics: the slot is released while the task unwinds.
    drop(open_sockets.remove(0));
    ended(&mut ended_rx).await;
    let panicking = open(addr, "?panic=true").await.unwrap();
    ended(&mut ended_rx).await;
    assert_eq!(quota.active(), QUOTA - 1);
    drop(panicking);
    open_sockets.push(open(addr, "").await.unwrap());
    assert_eq!(quota.active(), QUOTA);
    assert_eq!(refused_status(open(addr, "").await).0, 429);

    // Everything closed: nothing held, no key left behind.
    for mut socket in open_sockets.drain(..) {
        socket.close(None).await.unwrap();
    }
    for _ in 0..QUOTA {
        ended(&mut ended_rx).await;
    }
    assert_eq!(quota.active(), 0);
    assert_eq!(quota.tracked_keys(), 0);
}

#[tokio::test]
async fn global_quota_answers_503() {
    let quota = ConnectionQuotaLayer::new().global(nz(2));
    let (addr, mut ended_rx) = serve(quota.clone()).await;
    let a = open(addr, "").await.unwrap();
    let _b = open(addr, "").await.unwrap();
    assert_eq!(
        refused_status(open(addr, "").await),
        (503, Some("1".into()))
    );
    drop(a);
    ended(&mut ended_rx).await;
    let _c = open(addr, "").await.unwrap();
    assert_eq!(quota.active(), 2);
}
