//! The stock ticker over HTTP/2 with TLS: ALPN offers `h2`, the SETTINGS enable extended
//! CONNECT (RFC 8441), and the page's socket runs as one stream of an HTTP/2 connection,
//! guarded as over HTTP/1.1 (origin `403`, auth `401`, quota `429`), with the HTTP version of
//! every socket in the metrics. A real hyper HTTP/2 client over rustls on loopback.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/h2.rs"]
mod h2;

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use common::{Example, TempDir, start_example};
use futures_util::{SinkExt, StreamExt};
use h2::{H2Client, H2Socket, header_str};
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, pki_types::ServerName},
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// Open sockets allowed per client IP in these tests.
const PER_IP: usize = 3;

/// A ticker serving TLS with a self-signed certificate for `localhost`, and a client
/// configuration that trusts it.
struct Ticker {
    example: Example,
    roots: rustls::RootCertStore,
    _dir: TempDir,
}

async fn ticker() -> Ticker {
    let dir = TempDir::new("ticker-h2");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert_path, key_path, db) = (dir.file("cert.pem"), dir.file("key.pem"), dir.file("t.db"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let metrics_token = dir.file("metrics.token");
    std::fs::write(&metrics_token, METRICS_TOKEN).expect("write metrics token");
    let per_ip = PER_IP.to_string();
    let args = [
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--user",
        "alice:wonderland",
        "--tick-hz",
        "0",
        "--cert",
        &cert_path,
        "--key",
        &key_path,
        "--max-conns-per-ip",
        &per_ip,
        "--metrics-token-file",
        &metrics_token,
    ];
    let example = start_example("stock-ticker", &args).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test certificate");
    Ticker {
        example,
        roots,
        _dir: dir,
    }
}

impl Ticker {
    fn base(&self) -> String {
        format!("https://localhost:{}", self.example.addr.port())
    }

    /// A TLS connection offering only `alpn` (`h2` or `http/1.1`).
    async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.example.addr)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN");
        tls
    }

    /// An HTTP/2 connection negotiated by ALPN.
    async fn h2(&self) -> H2Client {
        let tls = self.tls(b"h2").await;
        H2Client::handshake(tls, &self.base()).await
    }
}

/// A request over `client` and its body as text.
/// The bearer token of `/metrics` (`--metrics-token-file`).
const METRICS_TOKEN: &str = "h2-test-metrics-token";

/// `GET /metrics` with its bearer token.
async fn scrape(client: &mut H2Client) -> (StatusCode, String) {
    let request = Request::builder()
        .uri(format!("{}/metrics", client.base()))
        .header(header::AUTHORIZATION, format!("Bearer {METRICS_TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let response = client.send(request).await;
    let status = response.status();
    let bytes = tokio::time::timeout(
        Duration::from_secs(10),
        axum::body::to_bytes(Body::new(response.into_body()), 1024 * 1024),
    )
    .await
    .expect("body in time")
    .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn call(
    client: &mut H2Client,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", client.base()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = client.send(request).await;
    let status = response.status();
    let bytes = tokio::time::timeout(
        Duration::from_secs(10),
        axum::body::to_bytes(Body::new(response.into_body()), 1024 * 1024),
    )
    .await
    .expect("body in time")
    .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// `POST /login` over HTTP/2: the ticket.
async fn login(client: &mut H2Client) -> String {
    let body = json!({ "username": "alice", "password": "wonderland" }).to_string();
    let (status, body) = call(client, Method::POST, "/login", &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    body["token"].as_str().expect("token").to_owned()
}

/// The page's handshake: its origin, and the ticket as a subprotocol entry.
async fn open(
    client: &mut H2Client,
    origin: &str,
    token: Option<&str>,
) -> Result<H2Socket, h2::Refused> {
    let protocols = match token {
        Some(token) => format!("ticker.v1, bearer.{token}"),
        None => "ticker.v1".to_owned(),
    };
    let headers = [
        ("origin", origin),
        ("sec-websocket-protocol", protocols.as_str()),
    ];
    let (ws, headers) = client.websocket("/ws", &headers).await?;
    assert_eq!(
        header_str(&headers, "sec-websocket-protocol"),
        Some("ticker.v1"),
        "only the real subprotocol is selected"
    );
    Ok(ws)
}

async fn next_json(ws: &mut H2Socket) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            match message.expect("no error") {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
        panic!("the socket ended")
    })
    .await
    .expect("a message in time")
}

/// The value of the metric line that starts with `name` (`None` if absent).
fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test]
async fn the_page_socket_runs_over_http2_with_tls_and_is_guarded_per_stream() {
    let ticker = ticker().await;
    let origin = ticker.base();
    let mut client = ticker.h2().await;
    let token = login(&mut client).await;

    // A socket as the page opens it, on a stream of the connection that logged in.
    let mut first = open(&mut client, &origin, Some(&token))
        .await
        .expect("upgraded over HTTP/2");
    assert_eq!(next_json(&mut first).await["type"], "snapshot");
    first
        .send(Message::text(r#"{"type":"subscribe","symbols":["AAPL"]}"#))
        .await
        .expect("send");
    let reply = next_json(&mut first).await;
    assert_eq!(reply["type"], "snapshot", "{reply}");
    assert_eq!(reply["prices"][0]["symbol"], "AAPL", "{reply}");

    // Refusals, each on another stream of the same connection.
    let refused = open(&mut client, "https://evil.example", Some(&token))
        .await
        .expect_err("cross-site origin");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let refused = open(&mut client, &origin, None)
        .await
        .expect_err("no ticket");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);

    // An HTTP/1.1 socket (ALPN http/1.1) from the same address shares the quota.
    let tls = ticker.tls(b"http/1.1").await;
    let mut request = format!("{}/ws", ticker.base().replace("https://", "wss://"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(&origin).expect("origin"),
    );
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    let (mut http1, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("wss over HTTP/1.1");
    assert_eq!(response.status(), 101);
    let snapshot = tokio::time::timeout(Duration::from_secs(10), http1.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    assert!(
        snapshot.to_text().is_ok_and(|t| t.contains("snapshot")),
        "{snapshot:?}"
    );

    // The quota counts sockets, not connections: the third fits, the fourth does not.
    let mut open_sockets = vec![first];
    for n in 2..PER_IP {
        let mut ws = open(&mut client, &origin, Some(&token))
            .await
            .unwrap_or_else(|r| panic!("socket {n}: {r:?}"));
        assert_eq!(next_json(&mut ws).await["type"], "snapshot");
        open_sockets.push(ws);
    }
    let refused = open(&mut client, &origin, Some(&token))
        .await
        .expect_err("over the per-IP quota");
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );

    // The metrics say which HTTP version carried each socket.
    let (status, metrics) = scrape(&mut client).await;
    assert_eq!(status, StatusCode::OK);
    let h2_sockets = (PER_IP - 1) as u64;
    assert_eq!(
        metric(
            &metrics,
            "ticker_sockets_opened_total{version=\"HTTP/2.0\"}"
        ),
        Some(h2_sockets),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "ticker_sockets_opened_total{version=\"HTTP/1.1\"}"
        ),
        Some(1),
        "{metrics}"
    );
    for cause in ["origin_not_allowed", "auth", "rate_limited"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("ticker_rejections_total{{cause=\"{cause}\"}}")
            ),
            Some(1),
            "{cause}: {metrics}"
        );
    }
    assert_eq!(
        metric(&metrics, "ticker_connections_open"),
        Some(PER_IP as u64),
        "{metrics}"
    );
}
