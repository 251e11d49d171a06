//! A WebSocket echo server behind wsguard's origin guard.
//!
//! Run it with `cargo run -p echo` and open <http://127.0.0.1:8000> in a browser, or
//! connect a WebSocket client to `ws://127.0.0.1:8000/ws`. Handshakes whose `Origin` is not
//! `http://127.0.0.1:PORT` or `http://localhost:PORT` (the port it listens on) or one given
//! with `--allow-origin` are refused with `403 Forbidden`; clients that send no `Origin`
//! (non-browser clients) are allowed unless `--require-origin` is given.
//!
//! Options: `--addr 127.0.0.1:8000`, `--allow-origin URL` (repeatable), `--require-origin`.
//! Log level: `RUST_LOG=wsguard=debug`.

use std::net::SocketAddr;

use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::{Html, Response},
    routing::get,
};
use clap::Parser;
use wsguard::origin::OriginGuardLayer;

#[derive(Debug, Parser)]
#[command(about = "WebSocket echo server behind wsguard's origin guard")]
struct Args {
    /// Address to listen on (use port 0 for any free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Another origin allowed to open sockets, e.g. https://app.example.com (repeatable).
    #[arg(long = "allow-origin", value_name = "URL")]
    allow_origins: Vec<String>,
    /// Refuse handshakes that carry no Origin header (non-browser clients).
    #[arg(long)]
    require_origin: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wsguard=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    let guard = OriginGuardLayer::new()
        .allow_origin(format!("http://127.0.0.1:{}", addr.port()))?
        .allow_origin(format!("http://localhost:{}", addr.port()))?
        .allow_origins(&args.allow_origins)?
        .require_origin(args.require_origin);
    tracing::info!(?guard, "origin guard");

    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/ws", get(ws))
        .layer(guard);

    println!("echo server listening on http://{addr} (WebSocket at ws://{addr}/ws)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>wsguard echo</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #log { border: 1px solid #ccc; border-radius: 6px; padding: .5rem; min-height: 8rem; white-space: pre-wrap; }
  .sys { color: #777; }
</style>
<h1>wsguard echo</h1>
<p>This page's origin is allowed, so its socket is accepted. The same page served from any
other origin would get <code>403 Forbidden</code> at the handshake.</p>
<form id="f"><input id="msg" placeholder="say something" autofocus> <button>Send</button></form>
<div id="log"></div>
<script>
  const log = (text, cls) => {
    const line = document.createElement("div");
    line.textContent = text;
    if (cls) line.className = cls;
    document.getElementById("log").append(line);
  };
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => log("connected", "sys");
  ws.onclose = (e) => log(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`, "sys");
  ws.onmessage = (e) => log("echo: " + e.data);
  document.getElementById("f").onsubmit = (e) => {
    e.preventDefault();
    const input = document.getElementById("msg");
    if (input.value && ws.readyState === WebSocket.OPEN) ws.send(input.value);
    input.value = "";
  };
</script>
</html>
"#;
