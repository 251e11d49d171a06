//! The two echo servers that `scripts/autobahn` runs the Autobahn test suite against: one on a
//! bare axum route (`WebSocketUpgrade` with axum's defaults), one behind the whole wsguard
//! stack (`WsGuard` at its defaults, the socket policy included), so that both are measured in
//! one run and the guarded one can be held to "no more non-strict than bare axum".
//!
//! Run it with `cargo run -p echo --bin autobahn-echo -- --server guarded` and point the
//! suite's `fuzzingclient` at `ws://127.0.0.1:9002/ws?access_token=autobahn`
//! (`--server bare`: `ws://127.0.0.1:9001/ws`). It prints `listening on http://ADDR (WebSocket
//! at ws://ADDR/ws)` once it accepts connections.
//!
//! Options: `--server bare|guarded`, `--addr 127.0.0.1:PORT` (default port 9001 bare, 9002
//! guarded; port 0 for any free port), `--token TOKEN` (the guarded server's one static
//! token, taken from the `access_token` query parameter; default `autobahn`).
//!
//! The guarded stack differs from `WsGuard`'s defaults in two places only, both about the
//! handshake: the token comes from the query string (the suite cannot send headers), and the
//! handshake rate is raised, as the suite opens a few hundred sockets one after the other from
//! one address. The origin check, quota and every limit of the socket policy keep their
//! defaults. Log level: `RUST_LOG=wsguard=debug`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    num::NonZeroU32,
};

use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
    routing::any,
};
use clap::{Parser, ValueEnum};
use wsguard::{
    WsGuard,
    auth::{CredentialSource, HandshakeAuthLayer, StaticTokens},
    rate_limit::RateLimitLayer,
    socket::{GuardedSocket, GuardedUpgrade},
};

/// Handshakes a second (and burst) the guarded server accepts per client IP: far above the
/// suite's pace, so that the rate limit never answers a case with `429`.
const HANDSHAKES: NonZeroU32 = NonZeroU32::new(10_000).unwrap();

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Server {
    /// Echo on a bare axum route.
    Bare,
    /// Echo behind `WsGuard`.
    Guarded,
}

#[derive(Debug, Parser)]
#[command(about = "Echo servers for the Autobahn test suite: bare axum and wsguard")]
struct Args {
    /// Which echo server to run.
    #[arg(long, value_enum)]
    server: Server,
    /// Address to listen on (default 127.0.0.1:9001 bare, 127.0.0.1:9002 guarded).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The guarded server's token, read from the `access_token` query parameter.
    #[arg(long, default_value = "autobahn")]
    token: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let router = match args.server {
        Server::Bare => Router::new().route("/ws", any(bare)),
        Server::Guarded => {
            let tokens = StaticTokens::new().token(args.token, "autobahn", ());
            let auth =
                HandshakeAuthLayer::new(tokens).sources([CredentialSource::query("access_token")?]);
            let guard = WsGuard::with_auth(auth).rate_limit(
                RateLimitLayer::new()
                    .per_second(HANDSHAKES)
                    .burst(HANDSHAKES),
            );
            Router::new().route("/ws", any(guarded)).layer(guard)
        }
    };
    let addr = args.addr.unwrap_or_else(|| {
        let port = match args.server {
            Server::Bare => 9001,
            Server::Guarded => 9002,
        };
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr} (WebSocket at ws://{addr}/ws)");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

async fn bare(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

async fn guarded(upgrade: GuardedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: GuardedSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    })
}
