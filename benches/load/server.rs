//! The servers the harness measures, each run in its own child process (the harness starts
//! itself again with `--serve KIND`), so their memory can be read from `/proc` and their CPU
//! is not mixed with the load generator's.

use std::{
    error::Error,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
    routing::{any, post},
    serve::ListenerExt,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use wsguard::{
    auth::{HandshakeAuthLayer, TicketIssuer, TicketKey, TicketVerifier},
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    socket::{GuardedSocket, GuardedUpgrade, MessageRate, SocketPolicyLayer},
};

/// The `Origin` the load generator sends, and the one the guarded server allows.
pub(crate) const ORIGIN: &str = "http://bench.wsguard.test";

/// Which server a child process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Echo on a bare axum route (`WebSocketUpgrade` with axum's defaults).
    Bare,
    /// Echo behind the whole wsguard stack; limits high enough not to fire.
    Guarded,
    /// Echo behind the whole wsguard stack with the default socket policy (memory scenario).
    GuardedDefaults,
    /// A naive axum broadcast: every socket serialises each update and flushes it alone;
    /// `POST /prices` publishes.
    Naive,
}

/// Runs the server until the process is killed. Prints `ticket TOKEN` (guarded kinds) and
/// then `listening on http://ADDR` on stdout.
pub(crate) fn run(kind: Kind, read_buffer: Option<usize>) -> Result<(), Box<dyn Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(kind, read_buffer))
}

async fn serve(kind: Kind, read_buffer: Option<usize>) -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = match kind {
        Kind::Bare => Router::new().route("/ws", any(bare_ws)),
        Kind::Guarded | Kind::GuardedDefaults => {
            let key = TicketKey::generate("bench")?;
            let ticket = TicketIssuer::new(key.clone())
                .ttl(Duration::from_secs(24 * 3600))
                .issue("bench-user");
            println!("ticket {ticket}");
            guarded(key, kind == Kind::GuardedDefaults, read_buffer)?
        }
        Kind::Naive => {
            let (tx, _) = broadcast::channel(4096);
            let state = Naive {
                tx,
                seq: Arc::default(),
            };
            Router::new()
                .route("/ws", any(naive_ws))
                .route("/prices", post(naive_price))
                .with_state(state)
        }
    };
    println!("listening on http://{addr}");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The full stack in the documented order. Handshake limits are far above what the load
/// generator can reach; with `defaults` the socket policy is `SocketPolicyLayer::new()`,
/// otherwise only its message, byte and frame rates are raised (the echo load would hit them);
/// `read_buffer` replaces the read buffer size.
fn guarded(
    key: TicketKey,
    defaults: bool,
    read_buffer: Option<usize>,
) -> Result<Router, Box<dyn Error>> {
    // 10^15 a second: out of reach (10^9 bytes a second is not, for 16 KiB echoes).
    const HIGH: NonZeroU64 = NonZeroU64::new(1_000_000_000_000_000).unwrap();
    // Handshake rates and socket caps out of reach.
    const MANY: NonZeroU32 = NonZeroU32::new(1_000_000).unwrap();
    const MANY_SOCKETS: NonZeroUsize = NonZeroUsize::new(1_000_000).unwrap();
    let mut policy = if defaults {
        SocketPolicyLayer::new()
    } else {
        let high = MessageRate::per_second(HIGH).with_burst(HIGH);
        SocketPolicyLayer::new()
            .message_rate(high)
            .byte_rate(high)
            .identity_message_rate(high)
            .identity_byte_rate(high)
            .frame_rate(high)
    };
    if let Some(bytes) = read_buffer {
        policy = policy.read_buffer_size(NonZeroUsize::try_from(bytes)?);
    }
    Ok(Router::new()
        .route("/ws", any(guarded_ws))
        .layer(policy)
        .layer(
            ConnectionQuotaLayer::new()
                .per_ip(MANY_SOCKETS)
                .per_identity(MANY_SOCKETS)
                .global(MANY_SOCKETS),
        )
        .layer(HandshakeAuthLayer::new(TicketVerifier::new(key)))
        .layer(AuthThrottleLayer::new())
        .layer(RateLimitLayer::new().per_second(MANY).burst(MANY))
        .layer(ClientIpLayer::new())
        .layer(OriginGuardLayer::new().allow_origin(ORIGIN)?))
}

async fn bare_ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_))
                && socket.send(msg).await.is_err()
            {
                break;
            }
        }
    })
}

async fn guarded_ws(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_))
                && socket.send(msg).await.is_err()
            {
                break;
            }
        }
    })
}

/// One price update, as the stock ticker sends it.
#[derive(Clone, Debug, Serialize)]
struct Tick {
    r#type: &'static str,
    symbol: &'static str,
    price: f64,
    seq: u64,
    ts: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The symbols the stock ticker seeds its database with.
pub(crate) const SYMBOLS: [&str; 8] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "SAP", "ASML",
];

#[derive(Deserialize)]
struct NewPrice {
    symbol: String,
    price: f64,
}

/// `POST /prices` as on the stock ticker (without the database): publishes one update.
async fn naive_price(State(state): State<Naive>, body: Bytes) -> StatusCode {
    let Ok(new) = serde_json::from_slice::<NewPrice>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(symbol) = SYMBOLS.iter().find(|s| **s == new.symbol) else {
        return StatusCode::BAD_REQUEST;
    };
    let _ = state.tx.send(Tick {
        r#type: "price",
        symbol,
        price: new.price,
        seq: state.seq.fetch_add(1, Relaxed) + 1,
        ts: now_ms(),
    });
    StatusCode::OK
}

#[derive(Clone)]
struct Naive {
    tx: broadcast::Sender<Tick>,
    seq: Arc<AtomicU64>,
}

/// The naive broadcast: serialise per socket, one `send` (write and flush) per message.
async fn naive_ws(State(state): State<Naive>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        let mut rx = state.tx.subscribe();
        loop {
            tokio::select! {
                tick = rx.recv() => match tick {
                    Ok(tick) => {
                        let Ok(json) = serde_json::to_string(&tick) else { break };
                        if socket.send(Message::text(json)).await.is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
    })
}
