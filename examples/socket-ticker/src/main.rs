//! A price ticker that pushes to every client through a guarded socket, conflating by
//! symbol so a slow client gets the latest price per symbol instead of a growing backlog.
//!
//! Run with `cargo run -p socket-ticker`, then connect with any WebSocket client,
//! e.g. `websocat ws://127.0.0.1:3000/ws`.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};

use axum::{Router, extract::ws::Message, response::Response, routing::any};
use wsguard::socket::{
    GuardedSocket, GuardedUpgrade, MessageRate, SlowConsumer, SocketPolicyLayer,
};

const SYMBOLS: [&str; 3] = ["BTC", "ETH", "SOL"];
/// The largest message a client may send, in bytes.
const MAX_MESSAGE: NonZeroUsize = NonZeroUsize::new(4 * 1024).unwrap();
/// Messages a client may send: 5 a second, 10 at once.
const CLIENT_RATE: NonZeroU64 = NonZeroU64::new(5).unwrap();
const CLIENT_BURST: NonZeroU64 = NonZeroU64::new(10).unwrap();
/// The send queue: one price per symbol (conflated), at most 64 KiB.
const QUEUE_MESSAGES: NonZeroUsize = NonZeroUsize::new(SYMBOLS.len()).unwrap();
const QUEUE_BYTES: NonZeroUsize = NonZeroUsize::new(64 * 1024).unwrap();

async fn ws(up: GuardedUpgrade) -> Response {
    up.on_upgrade(ticker)
}

async fn ticker(mut socket: GuardedSocket) {
    // A `Sender` pushes from another task while this one reads.
    let sender = socket.sender();
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for n in 0u64.. {
            tick.tick().await;
            for (i, symbol) in SYMBOLS.iter().enumerate() {
                let price = 100 + (n * (i as u64 + 7)) % 50;
                let msg = Message::text(format!("{{\"symbol\":\"{symbol}\",\"price\":{price}}}"));
                if sender.send_keyed(*symbol, msg).is_err() {
                    return;
                }
            }
        }
    });
    // Read (and drop) what the client sends until it goes away or breaks the policy.
    while let Some(Ok(_)) = socket.recv().await {}
    if let Some(cause) = socket.close_cause() {
        eprintln!("closed by policy: {cause} ({})", cause.close_code());
    }
    pusher.abort();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("wsguard=debug")
        .init();
    let policy = SocketPolicyLayer::new()
        .max_message_size(MAX_MESSAGE)
        .message_rate(MessageRate::per_second(CLIENT_RATE).with_burst(CLIENT_BURST))
        .heartbeat(Duration::from_secs(20), Duration::from_secs(10))
        .send_queue(QUEUE_MESSAGES, QUEUE_BYTES)
        .slow_consumer(SlowConsumer::Conflate);
    let app = Router::new().route("/ws", any(ws)).layer(policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("ticker on ws://{}/ws", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
