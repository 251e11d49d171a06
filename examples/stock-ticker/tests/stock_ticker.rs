//! The stock ticker's contract, tested against the real example program on loopback.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::{net::SocketAddr, time::Duration};

use common::{Example, Socket, TempDir, close_code, http, next_json, start_example};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode,
};

struct Ticker {
    example: Example,
    _dir: TempDir,
}

/// A self-signed certificate for `localhost`, written as PEM files removed on drop.
struct TestCertificate {
    key: rcgen::CertifiedKey<rcgen::KeyPair>,
    cert_path: String,
    key_path: String,
    _dir: TempDir,
}

impl TestCertificate {
    fn new(name: &str) -> Self {
        let key =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let dir = TempDir::new(name);
        let (cert_path, key_path) = (dir.file("cert.pem"), dir.file("key.pem"));
        std::fs::write(&cert_path, key.cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.signing_key.serialize_pem()).expect("write key");
        Self {
            key,
            cert_path,
            key_path,
            _dir: dir,
        }
    }
}

async fn ticker(extra: &[&str]) -> Ticker {
    let dir = TempDir::new("ticker");
    let db = dir.file("ticker.db");
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--user",
        "alice:wonderland",
        "--publisher",
        "alice",
    ];
    if !extra.contains(&"--tick-hz") {
        args.extend_from_slice(&["--tick-hz", "0"]);
    }
    args.extend_from_slice(extra);
    let example = start_example("stock-ticker", &args).await;
    Ticker { example, _dir: dir }
}

impl Ticker {
    fn addr(&self) -> SocketAddr {
        self.example.addr
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr().port())
    }

    /// `POST path` with a JSON (or deliberately broken) body and no credentials.
    async fn post_json(&self, path: &str, body: &str) -> common::HttpResponse {
        http(
            self.addr(),
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body,
        )
        .await
    }

    async fn login(&self, user: &str, password: &str) -> common::HttpResponse {
        let body = json!({ "username": user, "password": password }).to_string();
        self.post_json("/login", &body).await
    }

    async fn token(&self) -> String {
        let res = self.login("alice", "wonderland").await;
        assert_eq!(res.status, 200, "{}", res.body);
        let body = res.json();
        assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0), "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    async fn post_price(&self, token: &str, body: &str) -> common::HttpResponse {
        let auth = format!("Bearer {token}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ];
        http(self.addr(), "POST", "/prices", &headers, body).await
    }

    /// `POST path` with a JSON body and the bearer `token`.
    async fn post_auth(&self, path: &str, token: &str, body: &str) -> common::HttpResponse {
        let auth = format!("Bearer {token}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ];
        http(self.addr(), "POST", path, &headers, body).await
    }

    /// Opens `/ws`: the socket, or the HTTP status of the refusal.
    async fn try_connect(&self, token: &str) -> Result<Socket, u16> {
        let mut request = format!("ws://{}/ws", self.addr())
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_str(&self.origin()).expect("origin"),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// Opens `/ws` with the token in the Authorization header and this server's origin.
    async fn connect(&self, token: &str) -> Socket {
        let mut request = format!("ws://{}/ws", self.addr())
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_str(&self.origin()).expect("origin"),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("handshake");
        assert_eq!(response.status(), 101);
        socket
    }
}

#[tokio::test]
async fn login_is_accepted_and_refused() {
    let ticker = ticker(&[]).await;
    let _ = ticker.token().await;
    for (user, password) in [("alice", "wrong"), ("nobody", "wonderland"), ("", "")] {
        let res = ticker.login(user, password).await;
        assert_eq!(res.status, 401, "{user}: {}", res.body);
        assert!(res.json()["error"].is_string());
    }
    let res = ticker.post_json("/login", "{not json").await;
    assert_eq!(res.status, 400, "{}", res.body);
}

#[tokio::test]
async fn snapshot_then_pushed_prices_reach_every_client() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut a = ticker.connect(&token).await;
    let mut b = ticker.connect(&token).await;
    for socket in [&mut a, &mut b] {
        let snapshot = next_json(socket).await;
        assert_eq!(snapshot["type"], "snapshot");
        let prices = snapshot["prices"].as_array().expect("prices");
        assert!(prices.len() >= 5, "{snapshot}");
        assert!(prices.iter().any(|p| p["symbol"] == "AAPL"));
    }
    let res = ticker
        .post_price(&token, r#"{"symbol":"AAPL","price":123.45}"#)
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    for socket in [&mut a, &mut b] {
        let update = next_json(socket).await;
        assert_eq!(update["type"], "price");
        assert_eq!(update["symbol"], "AAPL");
        assert_eq!(update["price"], 123.45);
        assert!(
            update["ts"]
                .as_u64()
                .is_some_and(|ts| ts > 1_600_000_000_000),
            "{update}"
        );
    }
}

// Under load the socket's writer may not have sent one change before the next is queued; the
// queue only conflates once it is full, so a client that reads sees every change.
#[tokio::test]
async fn seq_is_contiguous_per_symbol() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    let snapshot = next_json(&mut socket).await;
    let start = snapshot["prices"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["symbol"] == "MSFT"))
        .and_then(|p| p["seq"].as_u64())
        .expect("MSFT seq");
    for i in 1..=5u64 {
        let body = json!({ "symbol": "MSFT", "price": 400.0 + i as f64 }).to_string();
        assert_eq!(ticker.post_price(&token, &body).await.status, 200);
    }
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let update = next_json(&mut socket).await;
        if update["type"] == "price" && update["symbol"] == "MSFT" {
            seqs.push(update["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(seqs, (start + 1..=start + 5).collect::<Vec<_>>());
}

#[tokio::test]
async fn subscriptions_filter_updates() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    let snapshot = next_json(&mut socket).await;
    let all: Vec<String> = snapshot["prices"]
        .as_array()
        .expect("prices")
        .iter()
        .filter_map(|p| p["symbol"].as_str().map(str::to_owned))
        .collect();
    let unsubscribe = json!({ "type": "unsubscribe", "symbols": all }).to_string();
    socket.send(Message::text(unsubscribe)).await.expect("send");
    let subscribe = json!({ "type": "subscribe", "symbols": ["GOOG"] }).to_string();
    socket.send(Message::text(subscribe)).await.expect("send");
    // The server answers a subscription with a snapshot of its symbols; messages are handled
    // in order, so both changes are in effect once it arrives.
    let confirmation = next_json(&mut socket).await;
    assert_eq!(confirmation["type"], "snapshot", "{confirmation}");
    let symbols: Vec<_> = confirmation["prices"]
        .as_array()
        .expect("prices")
        .iter()
        .map(|p| p["symbol"].clone())
        .collect();
    assert_eq!(symbols, [json!("GOOG")], "{confirmation}");
    for (symbol, price) in [
        ("AAPL", 100.0),
        ("GOOG", 150.5),
        ("MSFT", 300.0),
        ("GOOG", 151.5),
    ] {
        let body = json!({ "symbol": symbol, "price": price }).to_string();
        assert_eq!(ticker.post_price(&token, &body).await.status, 200);
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = next_json(&mut socket).await;
        assert_eq!(message["type"], "price", "{message}");
        seen.push((message["symbol"].clone(), message["price"].clone()));
    }
    assert_eq!(
        seen,
        vec![(json!("GOOG"), json!(150.5)), (json!("GOOG"), json!(151.5))]
    );
}

#[tokio::test]
async fn bad_client_messages_get_an_error_and_the_socket_stays_open() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    for bad in [
        "{not json",
        r#"{"type":"buy","symbols":["AAPL"]}"#,
        r#"{"type":"subscribe","symbols":"AAPL"}"#,
    ] {
        socket.send(Message::text(bad)).await.expect("send");
        let reply = next_json(&mut socket).await;
        assert_eq!(reply["type"], "error", "{bad}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        ticker
            .post_price(&token, r#"{"symbol":"TSLA","price":9.5}"#)
            .await
            .status,
        200
    );
    assert_eq!(next_json(&mut socket).await["symbol"], "TSLA");
}

#[tokio::test]
async fn prices_endpoint_validates_input() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    struct Case {
        name: &'static str,
        body: &'static str,
        status: u16,
        error: &'static str,
    }
    let cases = [
        Case {
            name: "unknown symbol",
            body: r#"{"symbol":"ZZZZ","price":1}"#,
            status: 400,
            error: "unknown symbol",
        },
        Case {
            name: "zero",
            body: r#"{"symbol":"AAPL","price":0}"#,
            status: 400,
            error: "positive",
        },
        Case {
            name: "negative",
            body: r#"{"symbol":"AAPL","price":-3}"#,
            status: 400,
            error: "positive",
        },
        Case {
            name: "overflow",
            body: r#"{"symbol":"AAPL","price":1e999}"#,
            status: 400,
            error: "",
        },
        // Well-formed JSON of the wrong shape: 422 (axum's `Json`), naming the field.
        Case {
            name: "string price",
            body: r#"{"symbol":"AAPL","price":"1"}"#,
            status: 422,
            error: "price",
        },
        Case {
            name: "missing field",
            body: r#"{"symbol":"AAPL"}"#,
            status: 422,
            error: "price",
        },
        Case {
            name: "malformed",
            body: r#"{"symbol":"AAPL","#,
            status: 400,
            error: "",
        },
        Case {
            name: "ok",
            body: r#"{"symbol":"AAPL","price":10.25}"#,
            status: 200,
            error: "",
        },
    ];
    for case in cases {
        let res = ticker.post_price(&token, case.body).await;
        assert_eq!(res.status, case.status, "{}: {}", case.name, res.body);
        if case.status != 200 {
            let error = res.json()["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_default();
            assert!(
                !error.is_empty() && error.contains(case.error),
                "{}: {error}",
                case.name
            );
        }
    }
    // Without `Content-Type: application/json`: 415.
    let auth = format!("Bearer {token}");
    let res = http(
        ticker.addr(),
        "POST",
        "/prices",
        &[("Authorization", auth.as_str())],
        r#"{"symbol":"AAPL","price":1}"#,
    )
    .await;
    assert_eq!(res.status, 415, "{}", res.body);
    assert!(res.json()["error"].is_string(), "{}", res.body);
    // The auth layer's refusals, as at the handshake, in the API's JSON shape with the
    // RFC 6750 challenge.
    struct Refusal {
        name: &'static str,
        token: Option<String>,
        status: u16,
        error: &'static str,
    }
    for refusal in [
        Refusal {
            name: "forged",
            token: Some(forged(&token)),
            status: 401,
            error: "invalid token",
        },
        Refusal {
            name: "not a ticket",
            token: Some("not-a-token".to_owned()),
            status: 400,
            error: "malformed",
        },
        Refusal {
            name: "no token",
            token: None,
            status: 401,
            error: "missing bearer token",
        },
    ] {
        let res = match &refusal.token {
            Some(token) => {
                ticker
                    .post_price(token, r#"{"symbol":"AAPL","price":1}"#)
                    .await
            }
            None => ticker.post_json("/prices", "{}").await,
        };
        assert_eq!(res.status, refusal.status, "{}: {}", refusal.name, res.body);
        assert!(
            res.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(refusal.error)),
            "{}: {}",
            refusal.name,
            res.body
        );
        assert!(
            res.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{}: {:?}",
            refusal.name,
            res.headers
        );
    }
}

/// A ticket of the right shape (`kid.payload.tag`) whose tag does not match its payload:
/// an invalid token (`401`), where a malformed one is a bad request (`400`).
fn forged(ticket: &str) -> String {
    let (kid, rest) = ticket.split_once('.').expect("kid.payload.tag");
    let (_, tag) = rest.split_once('.').expect("payload.tag");
    format!("{kid}.eyJzdWIiOiJhZG1pbiJ9.{tag}")
}

#[tokio::test]
async fn handshake_refusals() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let url = format!("ws://{}/ws", ticker.addr());

    // A page on another site.
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("forged origin: {:?}", other.map(|_| ())),
    }

    // No token.
    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(&ticker.origin()).expect("origin"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 401);
            assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        }
        other => panic!("no token: {:?}", other.map(|_| ())),
    }

    // A well-behaved client is still served.
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
}

/// The page's diagnostic `GET /ws` (a plain request with the token, sent when a handshake
/// failed) passes the same guards but does not use up a one-time token: the socket opens
/// with it afterwards. (Before, the diagnostic burned the token and the reconnect got 401.)
#[tokio::test]
async fn the_diagnostic_request_does_not_use_up_a_one_time_token() {
    let ticker = ticker(&["--one-time-tokens"]).await;
    let token = ticker.token().await;
    let diagnose = || async {
        let auth = format!("Bearer {token}");
        let origin = ticker.origin();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Origin", origin.as_str()),
        ];
        http(ticker.addr(), "GET", "/ws", &headers, "").await
    };
    // Every guard lets it through; the handler's upgrade extractor refuses the plain request.
    for _ in 0..2 {
        let res = diagnose().await;
        assert_eq!(res.status, 400, "{}", res.body);
        assert!(res.body.contains("upgrade"), "{}", res.body);
    }
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    // Used up by the handshake: the diagnostic now says so.
    let res = diagnose().await;
    assert_eq!(res.status, 401, "{}", res.body);
}

#[tokio::test]
async fn token_as_subprotocol_or_query() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;

    let mut request = format!("ws://{}/ws", ticker.addr())
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_str(&ticker.origin()).expect("origin"),
    );
    let protocols = format!("ticker.v1, bearer.{token}");
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&protocols).expect("protocols"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("subprotocol handshake");
    assert_eq!(
        response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
        "ticker.v1"
    );
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");

    let mut request = format!("ws://{}/ws?token={token}", ticker.addr())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(&ticker.origin()).expect("origin"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("query handshake");
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    socket
        .send(Message::text("x".repeat(5000)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn expired_token_closes_the_socket_with_1008() {
    let ticker = ticker(&["--token-ttl", "1"]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn health_and_metrics() {
    let dir = common::TempDir::new("ticker-metrics-token");
    let token_file = dir.file("metrics.token");
    std::fs::write(&token_file, "health-and-metrics-token").expect("write metrics token");
    let ticker = ticker(&["--metrics-token-file", &token_file]).await;
    let res = http(ticker.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(res.status, 200);
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    let _ = http(
        ticker.addr(),
        "GET",
        "/ws",
        &[("Upgrade", "websocket"), ("Origin", "http://evil.test")],
        "",
    )
    .await;
    let bearer = [("Authorization", "Bearer health-and-metrics-token")];
    let res = http(ticker.addr(), "GET", "/metrics", &bearer, "").await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        res.headers
    );
    for needle in [
        "ticker_connections_open 1",
        "ticker_rejections_total{cause=\"origin_not_allowed\"} 1",
        "ticker_messages_pushed_total",
        "wsguard_sockets_open 1",
        "wsguard_handshakes_total{outcome=\"refused\",layer=\"origin\",cause=\"not_allowed\"} 1",
    ] {
        assert!(res.body.contains(needle), "{needle} in\n{}", res.body);
    }
}

#[tokio::test]
async fn page_is_served() {
    let ticker = ticker(&[]).await;
    let res = http(ticker.addr(), "GET", "/", &[], "").await;
    assert_eq!(res.status, 200);
    assert!(res.body.contains("<title>wsguard stock ticker</title>"));
    assert!(res.body.contains(r#"<script src="/page.js">"#));
    let script = http(ticker.addr(), "GET", "/page.js", &[], "").await;
    assert_eq!(script.status, 200);
    assert!(
        script.body.contains("bearer."),
        "the page authenticates with the subprotocol"
    );
}

#[tokio::test]
async fn tls_serves_https_with_hsts_and_wss() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::ServerName};

    let cert = TestCertificate::new("tls");
    let ticker = ticker(&["--cert", &cert.cert_path, "--key", &cert.key_path]).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.key.cert.der().clone())
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");
    let addr = ticker.addr();

    // https: the page, with HSTS.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("strict-transport-security: max-age="),
        "HSTS header"
    );

    // wss: a guarded socket over TLS, with the https origin allowed.
    let res = {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("TLS handshake");
        let body = json!({ "username": "alice", "password": "wonderland" }).to_string();
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.expect("read");
        String::from_utf8_lossy(&raw).into_owned()
    };
    let token = res
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body.trim()).ok())
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .expect("token over https");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .expect("request");
    let origin = format!("https://localhost:{}", addr.port());
    request.headers_mut().insert(
        header::ORIGIN,
        HeaderValue::from_str(&origin).expect("origin"),
    );
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    let (mut socket, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("wss handshake");
    assert_eq!(response.status(), 101);
    let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    let snapshot: Value = serde_json::from_str(message.to_text().expect("text")).expect("json");
    assert_eq!(snapshot["type"], "snapshot");
}

#[tokio::test]
async fn resubscribing_never_sends_an_older_price() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let mut socket = ticker.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    let unsubscribe = json!({ "type": "unsubscribe", "symbols": ["AMZN"] }).to_string();
    socket.send(Message::text(unsubscribe)).await.expect("send");
    // Messages are handled in order: the answer to this subscription means the
    // unsubscription is in effect.
    let barrier = json!({ "type": "subscribe", "symbols": ["AAPL"] }).to_string();
    socket.send(Message::text(barrier)).await.expect("send");
    assert_eq!(next_json(&mut socket).await["prices"][0]["symbol"], "AAPL");
    for price in [10.0, 11.0, 12.0] {
        let body = json!({ "symbol": "AMZN", "price": price }).to_string();
        assert_eq!(ticker.post_price(&token, &body).await.status, 200);
    }
    let subscribe = json!({ "type": "subscribe", "symbols": ["AMZN"] }).to_string();
    socket.send(Message::text(subscribe)).await.expect("send");
    // The subscription is answered with the latest price ...
    let snapshot = next_json(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["prices"][0]["symbol"], "AMZN", "{snapshot}");
    assert_eq!(snapshot["prices"][0]["price"], 12.0, "{snapshot}");
    let seq = snapshot["prices"][0]["seq"].as_u64().expect("seq");
    // ... and what follows continues from it.
    let body = json!({ "symbol": "AMZN", "price": 13.0 }).to_string();
    assert_eq!(ticker.post_price(&token, &body).await.status, 200);
    let update = next_json(&mut socket).await;
    assert_eq!(update["type"], "price", "{update}");
    assert_eq!(update["price"], 13.0, "{update}");
    assert_eq!(update["seq"].as_u64(), Some(seq + 1), "{update}");
}

#[tokio::test]
async fn login_is_throttled_per_client_ip() {
    let ticker = ticker(&[]).await;
    // Every request counts, so malformed ones (400, no argon2 work) spend the burst of 10.
    let bad = || ticker.post_json("/login", "{not json");
    for i in 0..10 {
        let res = bad().await;
        assert_eq!(res.status, 400, "request {i}: {}", res.body);
    }
    // 20 a minute refills one every 3 s: of the next two, at least one is refused.
    let (a, b) = (bad().await, bad().await);
    let refused = [a, b]
        .into_iter()
        .find(|r| r.status == 429)
        .expect("the burst is spent");
    let retry = refused
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // A correct password is refused too until the bucket refills: that is the point.
    assert_eq!(ticker.login("alice", "wonderland").await.status, 429);
}

/// The login limit is tower_governor keyed by wsguard's trusted client address: a client
/// that forges a new `X-Forwarded-For` on every request (tower_governor's own
/// `SmartIpKeyExtractor` would believe it) still spends one budget.
#[tokio::test]
async fn a_forged_forwarded_for_does_not_escape_the_login_limit() {
    let ticker = ticker(&[]).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let forged = format!("198.51.100.{i}");
        let res = http(
            ticker.addr(),
            "POST",
            "/login",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", &forged),
            ],
            "{not json",
        )
        .await;
        statuses.push(res.status);
    }
    assert_eq!(&statuses[..10], &[400; 10], "the burst of 10: {statuses:?}");
    assert!(statuses[10..].contains(&429), "{statuses:?}");
}

/// Runs the ticker-client binary with `args`; returns its stdout lines, checking that each
/// arrives in time (`on_line` sees each line as it comes) and that it exits successfully.
async fn run_client(args: &[&str], mut on_line: impl AsyncFnMut(&str)) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(common::example_path("ticker-client"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ticker_client");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("client output in time")
        .expect("read client output")
    {
        on_line(&line).await;
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("client exits")
        .expect("client status");
    assert!(
        status.success(),
        "ticker_client failed: {status}; printed {seen:?}"
    );
    seen
}

#[tokio::test]
async fn ticker_client_prints_only_its_symbols() {
    let ticker = ticker(&[]).await;
    let token = ticker.token().await;
    let server = ticker.addr().to_string();
    let args = [
        "--server",
        &server,
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--symbols",
        "AAPL,MSFT",
        "--count",
        "3",
    ];
    let lines = run_client(&args, async |line: &str| {
        if line == "subscribed AAPL,MSFT" {
            for (symbol, price) in [
                ("GOOG", 1.5),
                ("AAPL", 2.5),
                ("GOOG", 3.5),
                ("MSFT", 4.5),
                ("AAPL", 5.5),
            ] {
                let body = json!({ "symbol": symbol, "price": price }).to_string();
                assert_eq!(ticker.post_price(&token, &body).await.status, 200);
            }
        }
    })
    .await;
    let after: Vec<&str> = lines
        .iter()
        .skip_while(|l| *l != "subscribed AAPL,MSFT")
        .skip(1)
        .map(|l| l.rsplit_once(" #").map_or(l.as_str(), |(head, _)| head))
        .collect();
    assert_eq!(
        after,
        ["price AAPL 2.50", "price MSFT 4.50", "price AAPL 5.50"],
        "{lines:?}"
    );
}

#[tokio::test]
async fn ticker_client_speaks_wss() {
    let cert = TestCertificate::new("client-tls");
    let ticker = ticker(&[
        "--cert",
        &cert.cert_path,
        "--key",
        &cert.key_path,
        "--tick-hz",
        "50",
    ])
    .await;
    let server = format!("localhost:{}", ticker.addr().port());
    let args = [
        "--server",
        &server,
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--tls",
        "--ca",
        &cert.cert_path,
        "--count",
        "2",
    ];
    let lines = run_client(&args, async |_: &str| {}).await;
    assert!(
        lines.iter().any(|l| l.starts_with("snapshot AAPL ")),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("price ")).count(),
        2,
        "{lines:?}"
    );
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let output = std::process::Command::new(common::example_path("stock-ticker"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    // clap prints each option on its own line, its help (ending in the default) below it.
    let mut flags = 0;
    for entry in help.split("\n      --").skip(1) {
        let name = entry.split_whitespace().next().unwrap_or_default();
        if name == "help" {
            continue;
        }
        flags += 1;
        assert!(
            entry.contains("[default: "),
            "--{name} has no default:\n{entry}"
        );
    }
    assert!(flags >= 19, "{help}");
}

/// Issue 13, point 11: DNS rebinding against the ticker. A page on
/// `http://attacker.example:PORT` whose name now resolves to the ticker sends that `Host`
/// and `Origin`; the ticker names its own hosts and refuses it before the origin is looked
/// at. `--allowed-host` adds a name.
#[tokio::test]
async fn dns_rebinding_is_refused() {
    let ticker = ticker(&["--allowed-host", "ticker.test"]).await;
    let addr = ticker.addr();
    let port = addr.port();
    let attacker = format!("attacker.example:{port}");
    let (status, body) =
        common::raw_handshake(addr, "/ws", &attacker, Some(&format!("http://{attacker}"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host not allowed"), "{body}");
    // Without Origin (a non-browser client) the host is checked too.
    let (status, body) = common::raw_handshake(addr, "/ws", &attacker, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host not allowed"), "{body}");
    // The added name passes the host check; its origin is not on the list.
    let named = format!("ticker.test:{port}");
    let (status, body) =
        common::raw_handshake(addr, "/ws", &named, Some(&format!("http://{named}"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin not allowed"), "{body}");
    // The ticker's own names get as far as authentication.
    for own in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) =
            common::raw_handshake(addr, "/ws", &own, Some(&format!("http://{own}"))).await;
        assert_eq!(status, 401, "{own}: {body}");
    }
}

/// Issue 13, point 14: password checks (argon2, ~19 MiB each) are capped across all
/// clients. Logins spread over many addresses past the cap get `503` with `Retry-After`,
/// and the server keeps answering `/healthz` meanwhile.
#[tokio::test]
async fn concurrent_logins_are_capped_globally() {
    let ticker = ticker(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-concurrent-logins",
        "1",
    ])
    .await;
    let addr = ticker.addr();
    let body = json!({ "username": "alice", "password": "not the password" }).to_string();
    let mut busy = None;
    // Bounded: a few rounds of logins from distinct addresses, all sent at once.
    for round in 0..3u8 {
        let mut logins = tokio::task::JoinSet::new();
        for i in 0..24u8 {
            let body = body.clone();
            logins.spawn(async move {
                let client = format!("198.51.{round}.{i}");
                let headers = [
                    ("Content-Type", "application/json"),
                    ("X-Forwarded-For", client.as_str()),
                ];
                http(addr, "POST", "/login", &headers, &body).await
            });
        }
        let health = http(addr, "GET", "/healthz", &[], "").await;
        assert_eq!(health.status, 200, "{}", health.body);
        let mut checked = 0;
        while let Some(res) = logins.join_next().await {
            let res = res.expect("login task");
            match res.status {
                401 => checked += 1,
                503 => {
                    assert!(res.body.contains("too many logins"), "{}", res.body);
                    let retry = res
                        .header("retry-after")
                        .and_then(|v| v.parse::<u64>().ok())
                        .expect("Retry-After in seconds");
                    assert!(retry >= 1, "Retry-After {retry}");
                    busy = Some(res);
                }
                other => panic!("unexpected status {other}: {}", res.body),
            }
        }
        assert!(checked >= 1, "no password was checked");
        if busy.is_some() {
            break;
        }
    }
    assert!(busy.is_some(), "no login was refused past the cap");
    // The cap frees up: a right password gets through afterwards.
    assert_eq!(ticker.login("alice", "wonderland").await.status, 200);
}

/// Logs in `user` on `addr`; the token.
async fn login_token(addr: SocketAddr, user: &str, password: &str) -> String {
    let body = json!({ "username": user, "password": password }).to_string();
    let res = http(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["token"].as_str().expect("token").to_owned()
}

async fn post_price_to(addr: SocketAddr, token: &str) -> common::HttpResponse {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    http(
        addr,
        "POST",
        "/prices",
        &headers,
        r#"{"symbol":"AAPL","price":42.5}"#,
    )
    .await
}

#[tokio::test]
async fn logout_without_redis_closes_the_socket_with_1008_and_every_route_refuses_the_token() {
    let ticker = ticker(&[]).await;
    let (phone, laptop) = (ticker.token().await, ticker.token().await);
    let mut on_phone = ticker.connect(&phone).await;
    let mut on_laptop = ticker.connect(&laptop).await;
    for socket in [&mut on_phone, &mut on_laptop] {
        assert_eq!(next_json(socket).await["type"], "snapshot");
    }
    let price = r#"{"symbol":"AAPL","price":42.5}"#;

    // A body of the wrong shape revokes nothing.
    let res = ticker
        .post_auth("/revoke", &phone, r#"{"scope":"token","everywhere":true}"#)
        .await;
    assert_eq!(res.status, 422, "{}", res.body);

    // Log out this device: its socket closes, the token is refused by every route.
    let res = ticker
        .post_auth("/revoke", &phone, r#"{"scope":"token"}"#)
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(close_code(&mut on_phone).await, Some(CloseCode::Policy));
    let res = ticker.post_price(&phone, price).await;
    assert_eq!(
        res.status, 401,
        "POST /prices with a revoked token: {}",
        res.body
    );
    assert_eq!(res.json()["error"], "token revoked", "{}", res.body);
    let res = ticker.post_auth("/revoke", &phone, "").await;
    assert_eq!(
        res.status, 401,
        "POST /revoke with a revoked token: {}",
        res.body
    );
    assert_eq!(ticker.try_connect(&phone).await.err(), Some(401));

    // The other device is untouched...
    let res = ticker.post_price(&laptop, price).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(next_json(&mut on_laptop).await["symbol"], "AAPL");

    // ...until the user logs out everywhere.
    let res = ticker.post_auth("/revoke", &laptop, "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(close_code(&mut on_laptop).await, Some(CloseCode::Policy));
    let res = ticker.post_price(&laptop, price).await;
    assert_eq!(res.status, 401, "{}", res.body);
    assert_eq!(ticker.try_connect(&laptop).await.err(), Some(401));

    // Signing in again gives a token that works.
    let fresh = ticker.token().await;
    let res = ticker.post_price(&fresh, price).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let mut socket = ticker.connect(&fresh).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
}

#[tokio::test]
async fn demo_cannot_publish_unless_named_a_publisher() {
    let dir = TempDir::new("publisher");
    let db = dir.file("ticker.db");
    let args = ["--addr", "127.0.0.1:0", "--db", &db, "--tick-hz", "0"];
    // A new database: demo / demo is created, and is not a publisher.
    let ticker = start_example("stock-ticker", &args).await;
    let token = login_token(ticker.addr, "demo", "demo").await;
    let res = post_price_to(ticker.addr, &token).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert!(
        res.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("publisher")),
        "{}",
        res.body
    );
    drop(ticker);

    // The same database, with the flag.
    let with_flag = [&args[..], &["--publisher", "demo"]].concat();
    let ticker = start_example("stock-ticker", &with_flag).await;
    let token = login_token(ticker.addr, "demo", "demo").await;
    let res = post_price_to(ticker.addr, &token).await;
    assert_eq!(res.status, 200, "{}", res.body);
    drop(ticker);

    // The role is stored: a restart without the flag keeps it; naming the user again with
    // --user and no --publisher takes it away.
    let ticker = start_example("stock-ticker", &args).await;
    let token = login_token(ticker.addr, "demo", "demo").await;
    assert_eq!(post_price_to(ticker.addr, &token).await.status, 200);
    drop(ticker);
    let demoted = [&args[..], &["--user", "demo:demo"]].concat();
    let ticker = start_example("stock-ticker", &demoted).await;
    let token = login_token(ticker.addr, "demo", "demo").await;
    assert_eq!(post_price_to(ticker.addr, &token).await.status, 403);
}

#[tokio::test]
async fn a_database_of_the_previous_schema_is_migrated_without_publishers() {
    use argon2::{Argon2, password_hash::PasswordHasher};
    let dir = TempDir::new("migrate");
    let db = dir.file("ticker.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("sqlite");
        let hash = Argon2::default()
            .hash_password(b"secret")
            .expect("hash")
            .to_string();
        conn.execute_batch("CREATE TABLE users (name TEXT PRIMARY KEY, hash TEXT NOT NULL);")
            .expect("old schema");
        conn.execute(
            "INSERT INTO users (name, hash) VALUES ('carol', ?1)",
            [hash],
        )
        .expect("old user");
    }
    let args = ["--addr", "127.0.0.1:0", "--db", &db, "--tick-hz", "0"];
    let ticker = start_example("stock-ticker", &args).await;
    let token = login_token(ticker.addr, "carol", "secret").await;
    assert_eq!(post_price_to(ticker.addr, &token).await.status, 403);
    drop(ticker);
    let with_flag = [&args[..], &["--publisher", "carol"]].concat();
    let ticker = start_example("stock-ticker", &with_flag).await;
    let token = login_token(ticker.addr, "carol", "secret").await;
    assert_eq!(post_price_to(ticker.addr, &token).await.status, 200);
    drop(ticker);
    // Naming a user that does not exist is refused at start-up.
    let unknown = [&args[..], &["--publisher", "nobody"]].concat();
    let output = std::process::Command::new(common::example_path("stock-ticker"))
        .args(&unknown)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nobody"), "{stderr}");
}

#[tokio::test]
async fn publishing_has_its_own_rate_limit_per_user() {
    let ticker = ticker(&[
        "--user",
        "bob:builder",
        "--publisher",
        "bob",
        "--publish-rate",
        "1",
        "--publish-burst",
        "2",
    ])
    .await;
    let alice = ticker.token().await;
    let bob = login_token(ticker.addr(), "bob", "builder").await;
    let price = r#"{"symbol":"AAPL","price":42.5}"#;
    for i in 0..2 {
        let res = ticker.post_price(&alice, price).await;
        assert_eq!(res.status, 200, "#{i}: {}", res.body);
    }
    let res = ticker.post_price(&alice, price).await;
    assert_eq!(res.status, 429, "{}", res.body);
    let retry_after: u64 = res
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(res.json()["error"].is_string(), "{}", res.body);
    // Another publisher has a budget of its own.
    let res = ticker.post_price(&bob, price).await;
    assert_eq!(res.status, 200, "{}", res.body);
}

/// Reads until the server's close frame: its code and reason (`None`: no close frame).
async fn close_frame(socket: &mut Socket) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// SIGTERM to a loaded ticker: it stops accepting, closes every socket with `1001` and a
/// reconnect hint, forces the one peer that never answers the close once `--drain-timeout-ms`
/// is over, reports it, and exits 0.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    const N: usize = 50;
    let mut ticker = ticker(&[
        "--max-conns-per-user",
        "100",
        "--connect-burst",
        "100",
        // Shorter than the 2 s a closing socket waits for the peer's close: the deaf peer
        // below is forced by the drain's deadline.
        "--drain-timeout-ms",
        "1000",
        "--reconnect-after-ms",
        "200",
        "--reconnect-jitter-ms",
        "800",
    ])
    .await;
    let token = ticker.token().await;
    let mut readers = Vec::new();
    for _ in 0..N {
        let mut socket = ticker.connect(&token).await;
        assert_eq!(next_json(&mut socket).await["type"], "snapshot");
        readers.push(tokio::spawn(async move { close_frame(&mut socket).await }));
    }
    let origin = ticker.origin();
    let bearer = format!("Bearer {token}");
    let mut deaf = common::RawWs::connect(
        ticker.addr(),
        "/ws",
        &[("Origin", &origin), ("Authorization", &bearer)],
    )
    .await;

    ticker.example.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), ticker.example.child.wait())
        .await
        .expect("the ticker exits")
        .expect("wait for the ticker");
    assert!(status.success(), "{status}");
    for reader in readers {
        let (code, reason) = reader.await.expect("reader").expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
        let hint = wsguard::socket::parse_reconnect_hint(&reason).expect("a reconnect hint");
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(1000)).contains(&hint),
            "{reason}"
        );
    }
    assert_eq!(
        deaf.close_code().await,
        Some(1001),
        "the deaf peer got it too"
    );
    let report = ticker.example.line_starting_with("drained").await;
    assert_eq!(
        report,
        format!("drained {} sockets: {N} closed, 1 forced", N + 1),
        "{report}"
    );
}
