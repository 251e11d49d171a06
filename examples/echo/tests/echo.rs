//! The echo example (`cargo run -p echo`) serves and guards as the README says: a real
//! process on a loopback port, a tokio-tungstenite client.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// Connects with the given Origin (or none) and returns the HTTP status of the handshake
/// answer, after checking that an accepted socket echoes.
async fn connect(addr: SocketAddr, origin: Option<&str>) -> StatusCode {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("client request");
    if let Some(origin) = origin {
        request.headers_mut().insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("origin value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, response)) => {
            socket.send(Message::text("hello")).await.expect("send");
            let reply = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            assert_eq!(
                reply
                    .expect("echo in time")
                    .expect("a message")
                    .expect("no error"),
                Message::text("hello")
            );
            socket.close(None).await.expect("close");
            response.status()
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            assert!(
                String::from_utf8_lossy(body).starts_with("forbidden: "),
                "plain-text reason, got {body:?}"
            );
            response.status()
        }
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

/// `cargo run -p echo` serves and answers as the README says.
#[tokio::test]
async fn echo_example_serves_and_guards() {
    let example = common::start_example("echo", &["--addr", "127.0.0.1:0"]).await;
    let addr = example.addr;
    let own = format!("http://localhost:{}", addr.port());
    assert_eq!(
        connect(addr, Some(&own)).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        connect(addr, Some("http://evil.test")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(connect(addr, None).await, StatusCode::SWITCHING_PROTOCOLS);
}
