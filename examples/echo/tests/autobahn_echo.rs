//! The echo servers of `scripts/autobahn` (`cargo run -p echo --bin autobahn-echo`) are what the
//! conformance run takes them for: `bare` echoes on a bare axum route, `guarded` echoes only
//! behind the guard, with the token in the query. A real process on a loopback port.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Sends one text message to `ws://ADDR{path}` and returns what comes back.
async fn echo(addr: std::net::SocketAddr, path: &str) -> Message {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("handshake");
    socket.send(Message::text("hello")).await.expect("send");
    tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("no error")
}

#[tokio::test]
async fn bare_echoes() {
    let server = common::start_example(
        "autobahn-echo",
        &["--server", "bare", "--addr", "127.0.0.1:0"],
    )
    .await;
    let host = server.addr.to_string();
    let (status, _) = common::raw_handshake(server.addr, "/ws", &host, None).await;
    assert_eq!(status, 101);
    assert_eq!(echo(server.addr, "/ws").await, Message::text("hello"));
}

#[tokio::test]
async fn guarded_echoes_only_with_the_token() {
    let args = [
        "--server",
        "guarded",
        "--addr",
        "127.0.0.1:0",
        "--token",
        "t0ken",
    ];
    let server = common::start_example("autobahn-echo", &args).await;
    let host = server.addr.to_string();
    struct Case {
        name: &'static str,
        path: &'static str,
        status: u16,
    }
    let cases = [
        Case {
            name: "no token",
            path: "/ws",
            status: 401,
        },
        Case {
            name: "wrong token",
            path: "/ws?access_token=other",
            status: 401,
        },
        Case {
            name: "the token",
            path: "/ws?access_token=t0ken",
            status: 101,
        },
    ];
    for case in cases {
        let (status, _) = common::raw_handshake(server.addr, case.path, &host, None).await;
        assert_eq!(status, case.status, "{}", case.name);
    }
    assert_eq!(
        echo(server.addr, "/ws?access_token=t0ken").await,
        Message::text("hello")
    );
}
