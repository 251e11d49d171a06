//! A command-line client for the stock ticker: logs in, opens the guarded WebSocket with the
//! token as a `bearer.<token>` subprotocol entry next to `ticker.v1`, and prints live prices.
//!
//! Run the server (`cargo run --release -p stock-ticker`), then:
//! `cargo run -p stock-ticker --bin ticker-client -- --user demo --password demo [--symbols AAPL,MSFT]`.
//! `--count N` stops after N price updates. Against a server started with `--tls --cert C
//! --key K`, add `--tls --ca C` (and name the server as its certificate does, e.g.
//! `--server localhost:8000`).
//!
//! Output on stdout, one line each: `snapshot SYMBOL PRICE #SEQ` for the prices the server
//! sends on connect and in answer to a subscription, `subscribed SYMBOL,..` once a
//! `--symbols` subscription is in effect, and `price SYMBOL PRICE #SEQ` per pushed change.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

type Error = Box<dyn std::error::Error>;

#[derive(Debug, Parser)]
#[command(about = "Print live prices from the wsguard stock ticker")]
struct Args {
    /// Server address, HOST:PORT.
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
    /// Speak https/wss.
    #[arg(long, requires = "ca")]
    tls: bool,
    /// PEM certificate(s) to trust for --tls (e.g. the server's self-signed certificate).
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// A byte stream to the server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    server: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Client {
    fn new(args: &Args) -> Result<Self, Error> {
        let tls = match (&args.tls, &args.ca) {
            (true, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)? {
                    roots.add(cert?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let host = host_of(&args.server);
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("--server {}: {e}", args.server))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(Self {
            server: args.server.clone(),
            tls,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Error> {
        let tcp = TcpStream::connect(&self.server).await?;
        Ok(match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        })
    }

    /// `POST /login` over one HTTP/1.1 connection; returns the token.
    async fn login(&self, user: &str, password: &str) -> Result<String, Error> {
        let body = json!({ "username": user, "password": password }).to_string();
        let mut stream = self.connect().await?;
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.server,
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
}

fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn print_price(kind: &str, p: &Value) {
    println!(
        "{kind} {} {:.2} #{}",
        p["symbol"].as_str().unwrap_or("?"),
        p["price"].as_f64().unwrap_or(f64::NAN),
        p["seq"]
    );
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let client = Client::new(&args)?;
    let token = client.login(&args.user, &args.password).await?;

    let scheme = if args.tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/ws", args.server);
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&format!("ticker.v1, bearer.{token}"))?,
    );
    let stream = client.connect().await?;
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
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
        "connected to {url} (protocol {})",
        protocol.unwrap_or("none")
    );

    // With --symbols: after the first snapshot, unsubscribe from the others and subscribe to
    // these; the server answers the subscription with a snapshot, which confirms it.
    let mut pending_subscription = !args.symbols.is_empty();
    let mut subscription_sent = false;
    let mut seen = 0u64;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text)?;
                match message["type"].as_str() {
                    Some("snapshot") => {
                        let prices = message["prices"].as_array().cloned().unwrap_or_default();
                        for p in &prices {
                            print_price("snapshot", p);
                        }
                        if pending_subscription && !subscription_sent {
                            let others: Vec<&str> = prices
                                .iter()
                                .filter_map(|p| p["symbol"].as_str())
                                .filter(|s| !args.symbols.iter().any(|w| w == s))
                                .collect();
                            let unsubscribe = json!({ "type": "unsubscribe", "symbols": others });
                            socket.send(Message::text(unsubscribe.to_string())).await?;
                            let subscribe = json!({ "type": "subscribe", "symbols": args.symbols });
                            socket.send(Message::text(subscribe.to_string())).await?;
                            subscription_sent = true;
                        } else if pending_subscription {
                            pending_subscription = false;
                            println!("subscribed {}", args.symbols.join(","));
                        }
                    }
                    Some("price") => {
                        print_price("price", &message);
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
