//! A command-line client for the stock ticker: logs in, opens the guarded WebSocket with the
//! token as a `bearer.<token>` subprotocol entry next to `ticker.v1`, and prints live prices.
//!
//! Run the server (`cargo run --release --example stock_ticker`), then:
//! `cargo run --example ticker_client -- --user demo --password demo [--symbols AAPL,MSFT]`.
//! Speaks plain http/ws (point it at a server without `--tls`). `--count N` stops after N
//! price updates.

use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(Debug, Parser)]
#[command(about = "Print live prices from the wsguard stock ticker")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    server: String,
    /// User name.
    #[arg(long, default_value = "demo")]
    user: String,
    /// Password.
    #[arg(long, default_value = "demo")]
    password: String,
    /// Only these symbols (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    symbols: Vec<String>,
    /// Stop after this many price updates (0: run until the server closes).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

/// `POST /login` over one HTTP/1.1 connection; returns the token.
async fn login(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let body = json!({ "username": args.user, "password": args.password }).to_string();
    let mut stream = tokio::net::TcpStream::connect(&args.server).await?;
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        args.server,
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    let reply: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    if status != "200" {
        let error = reply["error"].as_str().unwrap_or("no reason given");
        return Err(format!("login refused ({status}): {error}").into());
    }
    Ok(reply["token"]
        .as_str()
        .ok_or("no token in the login reply")?
        .to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let token = login(&args).await?;

    let mut request = format!("ws://{}/ws", args.server).into_client_request()?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&format!("ticker.v1, bearer.{token}"))?,
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(res) => {
                format!("handshake refused: {}", res.status())
            }
            other => format!("handshake failed: {other}"),
        })?;
    let protocol = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    eprintln!(
        "connected to ws://{}/ws (protocol {})",
        args.server,
        protocol.unwrap_or("none")
    );

    let mut seen = 0u64;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text)?;
                match message["type"].as_str() {
                    Some("snapshot") => {
                        if !args.symbols.is_empty() {
                            let all: Vec<&str> = message["prices"]
                                .as_array()
                                .map(|p| p.iter().filter_map(|p| p["symbol"].as_str()).collect())
                                .unwrap_or_default();
                            let unsubscribe = json!({ "type": "unsubscribe", "symbols": all });
                            socket.send(Message::text(unsubscribe.to_string())).await?;
                            let subscribe = json!({ "type": "subscribe", "symbols": args.symbols });
                            socket.send(Message::text(subscribe.to_string())).await?;
                        }
                        for p in message["prices"].as_array().into_iter().flatten() {
                            if args.symbols.is_empty()
                                || args.symbols.iter().any(|s| p["symbol"] == s.as_str())
                            {
                                println!(
                                    "{:<6} {:>10.2}  (#{})",
                                    p["symbol"].as_str().unwrap_or("?"),
                                    p["price"].as_f64().unwrap_or(f64::NAN),
                                    p["seq"]
                                );
                            }
                        }
                    }
                    Some("price") => {
                        println!(
                            "{:<6} {:>10.2}  (#{})",
                            message["symbol"].as_str().unwrap_or("?"),
                            message["price"].as_f64().unwrap_or(f64::NAN),
                            message["seq"]
                        );
                        seen += 1;
                        if args.count > 0 && seen >= args.count {
                            socket.close(None).await?;
                            return Ok(());
                        }
                    }
                    Some("error") => eprintln!("server: {}", message["error"]),
                    _ => {}
                }
            }
            Message::Close(frame) => {
                match frame {
                    Some(f) => {
                        eprintln!("closed by the server: {} {}", u16::from(f.code), f.reason)
                    }
                    None => eprintln!("closed by the server"),
                }
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
