//! The echo example (`cargo run -p echo`) serves and guards as the README says: a real
//! process on a loopback port, a tokio-tungstenite client.

#[path = "../../../tests/common/mod.rs"]
mod common;

use http::StatusCode;

use common::echo_handshake as connect;

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
