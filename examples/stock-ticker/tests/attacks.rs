//! The OWASP WebSocket attack list as tests: each attack asserts the status or close code a
//! wsguard-protected server must answer with, then checks that a well-behaved client is still
//! served.
//!
//! By default every test starts its own stock ticker (`examples/stock-ticker`) on loopback with
//! short limits, so the suite runs in CI: `cargo test -p stock-ticker --test attacks`.
//!
//! # Pointing it at your own server
//!
//! Set `WSGUARD_ATTACK_URL` and the suite attacks that server instead (plain `ws://` only; run
//! with `--test-threads=1` so that one attack's flood does not rate-limit the next one):
//!
//! ```sh
//! WSGUARD_ATTACK_URL=ws://127.0.0.1:8000/ws \
//! WSGUARD_ATTACK_TOKEN=$(curl -s -H content-type:application/json \
//!   -d '{"username":"demo","password":"demo"}' http://127.0.0.1:8000/login | jq -r .token) \
//! WSGUARD_ATTACK_MAX_MESSAGE=4096 \
//! cargo test -p stock-ticker --test attacks -- --test-threads=1 --skip expired_token --skip replayed_token
//! ```
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `WSGUARD_ATTACK_URL` | the guarded WebSocket route | start a stock ticker per test |
//! | `WSGUARD_ATTACK_ORIGIN` | an origin the server allows | `http://` + the URL's host and port |
//! | `WSGUARD_ATTACK_TOKEN_CMD` | a shell command that prints a fresh valid token (needed for one-time tokens) | — |
//! | `WSGUARD_ATTACK_TOKEN` | a valid token, if there is no command | — |
//! | `WSGUARD_ATTACK_TOKEN_IN` | where the server reads the token: `header` (`Authorization: Bearer`), `query:NAME`, `subprotocol:PREFIX` or `cookie:NAME` | `header` |
//! | `WSGUARD_ATTACK_WRONG_PLACE` | a place the server must not accept it from | `cookie:token` |
//! | `WSGUARD_ATTACK_EXPIRED_TOKEN` | an expired token | — |
//! | `WSGUARD_ATTACK_ONE_TIME` | `1` if tokens are one-time (the replay attack needs it) | — |
//! | `WSGUARD_ATTACK_MAX_MESSAGE` | the server's message size limit, in bytes | `65536` |
//! | `WSGUARD_ATTACK_FLOOD` | messages or pings sent by a flood | `2000` |
//! | `WSGUARD_ATTACK_CONNECTIONS` | most sockets opened by the connection flood | `300` |
//! | `WSGUARD_ATTACK_HEADER_TIMEOUT` | the server's request-header timeout, in seconds | `30` |
//! | `WSGUARD_ATTACK_HEARTBEAT` | seconds after which a client that stops reading must be gone (ping interval + pong timeout) | `60` |
//! | `WSGUARD_ATTACK_MESSAGE_DEADLINE` | seconds a message may take once its first frame arrived | `10` |
//!
//! An external target needs a token command or a token. The expired-token and replay attacks
//! fail with a message naming the variable they need; leave them out with
//! `-- --skip expired_token --skip replayed_token` if your server has no such tokens.
//! Expected answers: `403` for a foreign or `null` Origin; `401` (with `WWW-Authenticate`) for a
//! missing, expired, tampered, replayed or misplaced token and `400` for a malformed one; close
//! `1009` for an oversized message (whole or in small fragments); close `1008` for ping and
//! message floods, for endless or too many fragments and for a message that never completes; `429` (or `503` at a global cap) for a connection flood and for handshakes that
//! forge `X-Forwarded-For`; the connection closed without an upgrade for a slow handshake;
//! close `1001` (heartbeat) or `1013` (slow consumer) for a client that stops reading, and
//! `1001` for one that answers pings it never read with guessed pongs.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{Example, RawWs, TempDir, http, opcode, start_example};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        protocol::frame::{
            Frame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};

type Socket = WebSocketStream<TcpStream>;

/// "Should arrive" waits: generous, the machine may be loaded.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The target: a stock ticker started here, or a server named by the environment.

/// Where a token goes in the handshake.
#[derive(Clone, Debug)]
enum Place {
    Header,
    Query(String),
    Subprotocol(String),
    Cookie(String),
}

impl Place {
    fn parse(s: &str) -> Place {
        match s.split_once(':') {
            None if s == "header" => Place::Header,
            Some(("query", name)) => Place::Query(name.to_owned()),
            Some(("subprotocol", prefix)) => Place::Subprotocol(prefix.to_owned()),
            Some(("cookie", name)) => Place::Cookie(name.to_owned()),
            _ => panic!(
                "token place {s:?}: expected header, query:NAME, subprotocol:PREFIX or cookie:NAME"
            ),
        }
    }
}

enum Tokens {
    /// `POST /login` on the ticker.
    Login(SocketAddr),
    /// A shell command printing a token.
    Command(String),
    Static(String),
}

struct Target {
    url: String,
    addr: SocketAddr,
    origin: String,
    tokens: Tokens,
    token_in: Place,
    wrong_place: Place,
    expired: Option<String>,
    one_time: bool,
    max_message: usize,
    flood: usize,
    connections: usize,
    header_timeout: Duration,
    heartbeat: Duration,
    /// How long a message may take once it has started.
    message_deadline: Duration,
    /// The ticker this test started, killed on drop.
    _ticker: Option<(Example, TempDir)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env(name) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
        None => default,
    }
}

fn external() -> bool {
    env("WSGUARD_ATTACK_URL").is_some()
}

/// The value of `--name` in `flags`, if given.
fn flag<'a>(flags: &[&'a str], name: &str) -> Option<&'a str> {
    flags
        .iter()
        .position(|f| *f == name)
        .and_then(|i| flags.get(i + 1).copied())
}

/// The target of one attack. `flags` configure the ticker started when no external target is
/// set (they are ignored for an external one, whose limits come from the environment).
async fn target(flags: &[&str]) -> Target {
    if let Some(url) = env("WSGUARD_ATTACK_URL") {
        let parsed = url::Url::parse(&url).expect("WSGUARD_ATTACK_URL is a URL");
        assert_eq!(
            parsed.scheme(),
            "ws",
            "WSGUARD_ATTACK_URL: only ws:// targets"
        );
        let host = parsed.host_str().expect("a host");
        let port = parsed.port_or_known_default().expect("a port");
        let addr = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve the target")
            .next()
            .expect("an address");
        let tokens = match (env("WSGUARD_ATTACK_TOKEN_CMD"), env("WSGUARD_ATTACK_TOKEN")) {
            (Some(cmd), _) => Tokens::Command(cmd),
            (None, Some(token)) => Tokens::Static(token),
            (None, None) => panic!(
                "WSGUARD_ATTACK_URL needs WSGUARD_ATTACK_TOKEN_CMD or WSGUARD_ATTACK_TOKEN: \
                 most attacks compare a bad handshake with a good one"
            ),
        };
        return Target {
            origin: env("WSGUARD_ATTACK_ORIGIN").unwrap_or_else(|| {
                let host = parsed.host_str().unwrap_or_default();
                match parsed.port() {
                    Some(port) => format!("http://{host}:{port}"),
                    None => format!("http://{host}"),
                }
            }),
            url,
            addr,
            tokens,
            token_in: Place::parse(&env("WSGUARD_ATTACK_TOKEN_IN").unwrap_or("header".into())),
            wrong_place: Place::parse(
                &env("WSGUARD_ATTACK_WRONG_PLACE").unwrap_or("cookie:token".into()),
            ),
            expired: env("WSGUARD_ATTACK_EXPIRED_TOKEN"),
            one_time: env("WSGUARD_ATTACK_ONE_TIME").is_some_and(|v| v == "1"),
            max_message: env_num("WSGUARD_ATTACK_MAX_MESSAGE", 65536),
            flood: env_num("WSGUARD_ATTACK_FLOOD", 2000),
            connections: env_num("WSGUARD_ATTACK_CONNECTIONS", 300),
            header_timeout: Duration::from_secs(env_num("WSGUARD_ATTACK_HEADER_TIMEOUT", 30)),
            heartbeat: Duration::from_secs(env_num("WSGUARD_ATTACK_HEARTBEAT", 60)),
            message_deadline: Duration::from_secs(env_num("WSGUARD_ATTACK_MESSAGE_DEADLINE", 10)),
            _ticker: None,
        };
    }

    let dir = TempDir::new("attacks");
    let db = dir.file("ticker.db");
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--user",
        "alice:wonderland",
    ];
    // Defaults for the attacks; a test's own flags come later and win.
    for (name, value) in [
        ("--tick-hz", "0"),
        ("--max-message-bytes", "4096"),
        ("--msg-rate", "10"),
        ("--msg-burst", "20"),
    ] {
        if flag(flags, name).is_none() {
            args.extend_from_slice(&[name, value]);
        }
    }
    args.extend_from_slice(flags);
    let secs = |name: &str, default: u64| {
        flag(flags, name).map_or(default, |v| v.parse().expect("seconds"))
    };
    let max_message = flag(&args, "--max-message-bytes")
        .and_then(|v| v.parse().ok())
        .expect("--max-message-bytes");
    let example = start_example("stock-ticker", &args).await;
    let addr = example.addr;
    Target {
        url: format!("ws://{addr}/ws"),
        addr,
        origin: format!("http://127.0.0.1:{}", addr.port()),
        tokens: Tokens::Login(addr),
        token_in: Place::Header,
        wrong_place: Place::Cookie("token".into()),
        expired: None,
        one_time: flags.contains(&"--one-time-tokens"),
        max_message,
        flood: 500,
        connections: 50,
        header_timeout: Duration::from_secs(secs("--header-timeout", 10)),
        heartbeat: Duration::from_secs(2 * secs("--heartbeat", 20)),
        // wsguard's default: the ticker does not change it.
        message_deadline: Duration::from_secs(10),
        _ticker: Some((example, dir)),
    }
}

/// The outcome of a handshake.
enum Handshake {
    Upgraded(Socket),
    Refused {
        status: u16,
        headers: http::HeaderMap,
        body: String,
    },
}

impl Handshake {
    #[track_caller]
    fn socket(self) -> Socket {
        match self {
            Handshake::Upgraded(socket) => socket,
            Handshake::Refused { status, body, .. } => {
                panic!("handshake refused with {status}: {body}")
            }
        }
    }

    #[track_caller]
    fn refused(self) -> (u16, http::HeaderMap, String) {
        match self {
            Handshake::Upgraded(_) => panic!("the attack was let in: 101 Switching Protocols"),
            Handshake::Refused {
                status,
                headers,
                body,
            } => (status, headers, body),
        }
    }
}

/// A handshake as a test describes it.
#[derive(Clone, Default)]
struct Hello<'a> {
    token: Option<&'a str>,
    place: Option<&'a Place>,
    /// `None`: the target's allowed origin; `Some(None)`: no `Origin` header.
    origin: Option<Option<&'a str>>,
    headers: Vec<(&'static str, String)>,
    /// The local address to connect from (another loopback address is another client).
    source: Option<IpAddr>,
}

impl Target {
    /// A valid token for another handshake: the same one unless tokens are one-time.
    async fn token_again(&self, token: &str) -> String {
        if self.one_time {
            self.token().await
        } else {
            token.to_owned()
        }
    }

    /// A fresh valid token.
    async fn token(&self) -> String {
        match &self.tokens {
            Tokens::Login(addr) => {
                let body = json!({ "username": "alice", "password": "wonderland" }).to_string();
                let res = http(
                    *addr,
                    "POST",
                    "/login",
                    &[("Content-Type", "application/json")],
                    &body,
                )
                .await;
                assert_eq!(res.status, 200, "login: {}", res.body);
                res.json()["token"].as_str().expect("token").to_owned()
            }
            Tokens::Command(cmd) => {
                let out = tokio::process::Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .await
                    .expect("run WSGUARD_ATTACK_TOKEN_CMD");
                assert!(out.status.success(), "WSGUARD_ATTACK_TOKEN_CMD failed");
                let token = String::from_utf8(out.stdout).expect("utf-8 token");
                let token = token.trim().to_owned();
                assert!(
                    !token.is_empty(),
                    "WSGUARD_ATTACK_TOKEN_CMD printed no token"
                );
                token
            }
            Tokens::Static(token) => token.clone(),
        }
    }

    async fn handshake(&self, hello: Hello<'_>) -> Handshake {
        let place = hello.place.unwrap_or(&self.token_in);
        let mut url = self.url.clone();
        if let (Some(token), Place::Query(name)) = (hello.token, place) {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{name}={token}");
        }
        let mut request = url.into_client_request().expect("request");
        let headers = request.headers_mut();
        match hello.origin.unwrap_or(Some(&self.origin)) {
            Some(origin) => {
                headers.insert(
                    header::ORIGIN,
                    HeaderValue::from_str(origin).expect("origin"),
                );
            }
            None => {
                headers.remove(header::ORIGIN);
            }
        }
        if let Some(token) = hello.token {
            let (name, value) = match place {
                Place::Header => (header::AUTHORIZATION, format!("Bearer {token}")),
                Place::Subprotocol(prefix) => {
                    (header::SEC_WEBSOCKET_PROTOCOL, format!("{prefix}{token}"))
                }
                Place::Cookie(name) => (header::COOKIE, format!("{name}={token}")),
                Place::Query(_) => (header::HeaderName::from_static("x-unused"), String::new()),
            };
            if !value.is_empty() {
                headers.insert(name, HeaderValue::from_str(&value).expect("token header"));
            }
        }
        for (name, value) in &hello.headers {
            headers.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        let stream = connect_from(self.addr, hello.source).await;
        let result = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("handshake answered in time");
        match result {
            Ok((socket, _)) => Handshake::Upgraded(socket),
            Err(tungstenite::Error::Http(res)) => {
                let (parts, body) = res.into_parts();
                Handshake::Refused {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
                }
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// A handshake whose refusal the test asserts. Against an external target, a `429` may
    /// be the brute-force throttle counting earlier attacks from this host: wait out its
    /// `Retry-After` (at most 65 s) once and try again.
    async fn attempt(&self, hello: Hello<'_>) -> (u16, http::HeaderMap, String) {
        let (status, headers, body) = self.handshake(hello.clone()).await.refused();
        if status != 429 || !external() {
            return (status, headers, body);
        }
        let secs: u64 = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        eprintln!("429 (throttled by earlier attacks?): retrying in {secs} s");
        tokio::time::sleep(Duration::from_secs(secs.min(65))).await;
        self.handshake(hello).await.refused()
    }

    /// A handshake of a well-behaved client. An external target may rate-limit this host
    /// after an earlier attack: on `429`, wait out `Retry-After` (at most 65 s) once, as a
    /// well-behaved client would, and try again (with a fresh token if they are one-time).
    async fn patiently(&self, hello: Hello<'_>) -> Handshake {
        let first = self.handshake(hello.clone()).await;
        let Handshake::Refused {
            status: 429,
            headers,
            ..
        } = &first
        else {
            return first;
        };
        if !external() {
            return first;
        }
        let secs: u64 = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        eprintln!("429 for a well-behaved client: retrying in {secs} s");
        tokio::time::sleep(Duration::from_secs(secs.min(65))).await;
        let token = match hello.token {
            Some(token) => Some(self.token_again(token).await),
            None => None,
        };
        self.handshake(Hello {
            token: token.as_deref(),
            ..hello
        })
        .await
    }

    /// A handshake with a fresh valid token and the allowed origin.
    async fn connect(&self, source: Option<IpAddr>) -> Socket {
        let token = self.token().await;
        self.patiently(Hello {
            token: Some(&token),
            source,
            ..Hello::default()
        })
        .await
        .socket()
    }

    /// A well-behaved client (from `source`, or this host's default address) is served: its
    /// handshake is upgraded and the socket answers (a first message, or a pong).
    async fn assert_served(&self, source: Option<IpAddr>) {
        let token = self.token().await;
        let hello = Hello {
            token: Some(&token),
            source,
            ..Hello::default()
        };
        let mut socket = self.patiently(hello).await.socket();
        socket
            .send(Message::Ping(b"served?".to_vec().into()))
            .await
            .expect("send a ping");
        let answer = tokio::time::timeout(WAIT, async {
            while let Some(message) = socket.next().await {
                match message.expect("a message") {
                    Message::Text(_) | Message::Binary(_) | Message::Pong(_) => return true,
                    Message::Close(frame) => panic!("well-behaved client closed: {frame:?}"),
                    _ => continue,
                }
            }
            false
        })
        .await
        .expect("an answer in time");
        assert!(answer, "the well-behaved client's socket ended");
        let _ = socket.close(None).await;
    }
}

/// Another client of a loopback target: a different loopback address, so the flood's
/// per-address limits do not apply to it. `None` for other targets.
fn other_client(target: &Target) -> Option<IpAddr> {
    target
        .addr
        .ip()
        .is_loopback()
        .then_some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .filter(|_| target.addr.is_ipv4())
}

async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> TcpStream {
    let connect = async {
        match source {
            Some(source) => {
                let socket = if source.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .expect("socket");
                socket
                    .bind(SocketAddr::new(source, 0))
                    .expect("bind source");
                socket.connect(addr).await
            }
            None => TcpStream::connect(addr).await,
        }
    };
    tokio::time::timeout(WAIT, connect)
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads until the server closes the socket; returns its close code (`None`: no close frame).
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the server closed the socket in time")
}

// ---------------------------------------------------------------------------------------------
// Origin

#[tokio::test]
async fn foreign_origin_gets_403() {
    let target = target(&[]).await;
    let token = Some(target.token().await);
    let (status, _, body) = target
        .handshake(Hello {
            token: token.as_deref(),
            origin: Some(Some("https://evil.example")),
            ..Hello::default()
        })
        .await
        .refused();
    assert_eq!(status, 403, "{body}");
    target.assert_served(None).await;
}

#[tokio::test]
async fn null_origin_gets_403() {
    let target = target(&[]).await;
    let token = Some(target.token().await);
    let (status, _, body) = target
        .handshake(Hello {
            token: token.as_deref(),
            origin: Some(Some("null")),
            ..Hello::default()
        })
        .await
        .refused();
    assert_eq!(status, 403, "{body}");
    target.assert_served(None).await;
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[track_caller]
fn assert_401(status: u16, headers: &http::HeaderMap, body: &str) {
    assert_eq!(status, 401, "{body}");
    assert!(
        headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "WWW-Authenticate: {headers:?}"
    );
}

#[tokio::test]
async fn missing_token_gets_401() {
    let target = target(&[]).await;
    let (status, headers, body) = target.attempt(Hello::default()).await;
    assert_401(status, &headers, &body);
    target.assert_served(None).await;
}

#[tokio::test]
async fn malformed_token_gets_400() {
    let target = target(&[]).await;
    for token in ["not-a-token", "a.b.c.d", "k1.%%%.@@@"] {
        let (status, _, body) = target
            .attempt(Hello {
                token: Some(token),
                ..Hello::default()
            })
            .await;
        assert_eq!(status, 400, "{token}: {body}");
    }
    target.assert_served(None).await;
}

#[tokio::test]
async fn expired_token_gets_401() {
    let target = target(&["--token-ttl", "1"]).await;
    let token = if external() {
        target.expired.clone().expect(
            "set WSGUARD_ATTACK_EXPIRED_TOKEN (or leave this attack out: -- --skip expired_token)",
        )
    } else {
        let token = target.token().await;
        // The shortest lifetime the ticker issues is a second.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        token
    };
    let (status, headers, body) = target
        .attempt(Hello {
            token: Some(&token),
            ..Hello::default()
        })
        .await;
    assert_401(status, &headers, &body);
    let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap_or("");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    if !external() {
        assert!(challenge.contains("expired"), "{challenge}");
    }
    // A fresh token still works (the ticker issues 1-second tokens: connect at once).
    target.assert_served(None).await;
}

/// Changes the claims of a `header.payload.signature`-shaped token (a wsguard ticket, a JWT)
/// while keeping its signature: `sub` becomes `admin`.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert!(
        parts.len() >= 3,
        "the token is not dot-separated: cannot tamper with it"
    );
    // Tickets are `kid.payload.tag`, JWTs `header.payload.signature`: the payload is second.
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
    let tampered = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(mut claims)) => {
            claims.insert("sub".into(), json!("admin"));
            serde_json::to_vec(&claims).expect("JSON")
        }
        _ => {
            let mut bytes = payload;
            if let Some(first) = bytes.first_mut() {
                *first ^= 1;
            }
            bytes
        }
    };
    let mut out: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    out[1] = URL_SAFE_NO_PAD.encode(tampered);
    out.join(".")
}

#[tokio::test]
async fn tampered_token_gets_401() {
    let target = target(&[]).await;
    let token = target.token().await;
    let tampered = tamper(&token);
    assert_ne!(tampered, token);
    let (status, headers, body) = target
        .attempt(Hello {
            token: Some(&tampered),
            ..Hello::default()
        })
        .await;
    assert_401(status, &headers, &body);
    target.assert_served(None).await;
}

#[tokio::test]
async fn replayed_token_gets_401() {
    let target = target(&["--one-time-tokens"]).await;
    assert!(
        target.one_time,
        "tokens that are not one-time can be replayed by design: set WSGUARD_ATTACK_ONE_TIME=1 \
         if the server's are (or leave this attack out: -- --skip replayed_token)"
    );
    let token = target.token().await;
    let hello = Hello {
        token: Some(&token),
        ..Hello::default()
    };
    let first = target.handshake(hello.clone()).await.socket();
    let (status, headers, body) = target.handshake(hello).await.refused();
    assert_401(status, &headers, &body);
    drop(first);
    target.assert_served(None).await;
}

#[tokio::test]
async fn token_in_the_wrong_place_gets_401() {
    let target = target(&[]).await;
    let token = target.token().await;
    let (status, headers, body) = target
        .attempt(Hello {
            token: Some(&token),
            place: Some(&target.wrong_place),
            ..Hello::default()
        })
        .await;
    assert_401(status, &headers, &body);
    target.assert_served(None).await;
}

// ---------------------------------------------------------------------------------------------
// The live socket

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    socket
        .send(Message::text("x".repeat(target.max_message + 1)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Size));
    target.assert_served(None).await;
}

#[tokio::test]
async fn tiny_fragments_making_one_huge_message_close_with_1009() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    // Small fragments (a 32nd of the limit, so few that no fragment limit applies): each frame
    // is small, only the message they make is too big.
    let fragment = "y".repeat((target.max_message / 32).max(64));
    let fragments = target.max_message / fragment.len() + 2;
    let mut sent = 0;
    let mut send = Ok(());
    for i in 0..fragments {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        // Never final: the message would only end after the limit.
        let frame = Frame::message(fragment.clone(), opcode, false);
        send = socket.feed(Message::Frame(frame)).await;
        if send.is_err() {
            break;
        }
        sent += 1;
    }
    if send.is_ok() {
        let _ = socket.flush().await;
    }
    assert!(sent * fragment.len() > target.max_message || send.is_err());
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Size));
    target.assert_served(None).await;
}

/// An empty continuation frame that does not end its message.
fn empty_fragment() -> Message {
    Message::Frame(Frame::message(
        Vec::<u8>::new(),
        OpCode::Data(Data::Continue),
        false,
    ))
}

#[tokio::test]
async fn endless_empty_continuations_close_with_1008() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    // A message that never grows and never ends: no size limit or message rate sees it.
    let start = Frame::message("{", OpCode::Data(Data::Text), false);
    let mut send = socket.feed(Message::Frame(start)).await;
    let mut sent = 0;
    while send.is_ok() && sent < 100_000 {
        send = socket.feed(empty_fragment()).await;
        sent += 1;
    }
    if send.is_ok() {
        let _ = socket.flush().await;
    }
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
    target.assert_served(None).await;
}

#[tokio::test]
async fn fragment_flood_closes_with_1008() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    // One byte a fragment, up to half the size limit: never too big, only too many pieces.
    let start = Frame::message("[", OpCode::Data(Data::Text), false);
    let mut send = socket.feed(Message::Frame(start)).await;
    let mut sent = 1;
    while send.is_ok() && sent < target.max_message / 2 {
        let byte = Frame::message(" ", OpCode::Data(Data::Continue), false);
        send = socket.feed(Message::Frame(byte)).await;
        sent += 1;
    }
    if send.is_ok() {
        let _ = socket.flush().await;
    }
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
    target.assert_served(None).await;
}

#[tokio::test]
async fn message_that_never_completes_closes_with_1008() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    // Slowly: an empty fragment every half second stays within every rate and fragment
    // limit; only the deadline for finishing a message ends it.
    let start = Frame::message("{", OpCode::Data(Data::Text), false);
    socket.send(Message::Frame(start)).await.expect("send");
    let give_up = Instant::now() + target.message_deadline + WAIT;
    let code = loop {
        assert!(
            Instant::now() < give_up,
            "the unfinished message kept the socket open"
        );
        match tokio::time::timeout(Duration::from_millis(500), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break None,
            Err(_) => {}
        }
        if socket.send(empty_fragment()).await.is_err() {
            break close_code(&mut socket).await;
        }
    };
    assert_eq!(code, Some(CloseCode::Policy));
    target.assert_served(None).await;
}

#[tokio::test]
async fn blind_pongs_do_not_keep_a_socket_open() {
    let target = target(&["--heartbeat", "1"]).await;
    let mut blind = target.connect(None).await;
    // Never reads the pings; answers them with guessed payloads (the n-th ping as the
    // big-endian u64 `n`, two guesses a second) for longer than the heartbeat allows.
    let started = Instant::now();
    while started.elapsed() < target.heartbeat + Duration::from_secs(1) {
        let n = started.elapsed().as_secs();
        for guess in [n, n + 1] {
            let _ = blind
                .send(Message::Pong(guess.to_be_bytes().to_vec().into()))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(close_code(&mut blind).await, Some(CloseCode::Away));
    target.assert_served(None).await;
}

#[tokio::test]
async fn ping_flood_closes_with_1008() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    let mut sent = 0;
    for i in 0..target.flood {
        let ping = Message::Ping((i as u32).to_be_bytes().to_vec().into());
        if socket.feed(ping).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = socket.flush().await;
    assert!(sent > 0);
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
    target.assert_served(None).await;
}

#[tokio::test]
async fn message_flood_closes_with_1008() {
    let target = target(&[]).await;
    let mut socket = target.connect(None).await;
    let message = json!({ "type": "subscribe", "symbols": ["AAPL"] }).to_string();
    for _ in 0..target.flood {
        if socket.feed(Message::text(message.clone())).await.is_err() {
            break;
        }
    }
    let _ = socket.flush().await;
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
    target.assert_served(None).await;
}

#[tokio::test]
async fn client_that_stops_reading_is_closed() {
    // Prices flow (a fast simulator) and the heartbeat is short.
    let target = target(&["--tick-hz", "200", "--heartbeat", "1"]).await;
    let mut lazy = target.connect(None).await;
    // Stop reading (so no pong answers the server's pings) for longer than the heartbeat
    // allows, while a well-behaved client keeps being served.
    let stop_until = Instant::now() + target.heartbeat + Duration::from_secs(1);
    let mut good = target.connect(other_client(&target)).await;
    let mut good_messages = 0u32;
    while Instant::now() < stop_until {
        if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(200), good.next()).await
        {
            good_messages += 1;
        }
    }
    let code = close_code(&mut lazy).await;
    assert!(
        matches!(code, Some(CloseCode::Away) | Some(CloseCode::Again)),
        "close code {code:?}: expected 1001 (heartbeat) or 1013 (slow consumer)"
    );
    if !external() {
        assert!(
            good_messages > 0,
            "the reading client got nothing meanwhile"
        );
    }
    target.assert_served(None).await;
}

// ---------------------------------------------------------------------------------------------
// Lingering close: the close code survives the data the client keeps sending

/// Repeats of each lingering-close attack (`WSGUARD_ATTACK_LINGER_RUNS`, default 100).
fn linger_runs() -> usize {
    env_num("WSGUARD_ATTACK_LINGER_RUNS", 100)
}

/// What the client keeps sending after the offence: far more than the server reads before it
/// closes, so a server that drops the connection with these bytes unread resets it (RST) and
/// the client may lose the close frame in flight.
const TRAILING_BYTES: usize = 512 * 1024;

/// Pings sent before an oversized message: their pongs fill the client's small receive
/// window. Fewer than the violations after which a rate limit closes with `1008` (20 by
/// default), as the per-user message rate runs out over the repeated runs.
const LINGER_PINGS: usize = 19;

/// The flags for the lingering-close attacks: one client opens a socket per run, and pings
/// are within the message rate.
const LINGER_FLAGS: [&str; 12] = [
    "--msg-rate",
    "1000",
    "--msg-burst",
    "1000",
    "--connect-rate",
    "1000",
    "--connect-burst",
    "1000",
    "--max-conns-per-ip",
    "1000",
    "--max-conns-per-user",
    "1000",
];

impl Target {
    /// A socket with a fresh valid token and the allowed origin, on raw TCP.
    async fn connect_raw(&self, token: &str) -> RawWs {
        let url = url::Url::parse(&self.url).expect("target URL");
        let mut path = url.path().to_owned();
        let mut headers = vec![("Origin".to_owned(), self.origin.clone())];
        match &self.token_in {
            Place::Header => headers.push(("Authorization".into(), format!("Bearer {token}"))),
            Place::Query(name) => path = format!("{path}?{name}={token}"),
            Place::Subprotocol(prefix) => {
                headers.push(("Sec-WebSocket-Protocol".into(), format!("{prefix}{token}")))
            }
            Place::Cookie(name) => headers.push(("Cookie".into(), format!("{name}={token}"))),
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // A small receive window, as a slow client has: what the server sends waits in the
        // server's kernel, where a reset would discard it.
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("socket");
        socket.set_recv_buffer_size(1024).expect("SO_RCVBUF");
        let stream = tokio::time::timeout(WAIT, socket.connect(self.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        RawWs::upgrade(stream, self.addr, &path, &headers).await
    }

    /// Runs an attack `linger_runs()` times on fresh sockets: the frames of `offence`, then
    /// [`TRAILING_BYTES`] of binary frames in the same write, then reads until the server's
    /// close. Returns the runs and the close codes that were not `expected` (`None`: the
    /// connection ended without a close frame).
    async fn lingering_close(
        &self,
        offence: impl Fn(&mut RawWs) -> Vec<u8>,
        expected: u16,
    ) -> (usize, Vec<Option<u16>>) {
        let runs = linger_runs();
        let token = self.token().await;
        let mut wrong = Vec::new();
        for _ in 0..runs {
            let token = self.token_again(&token).await;
            let mut ws = self.connect_raw(&token).await;
            let mut bytes = offence(&mut ws);
            let chunk = vec![0x5a; 16 * 1024];
            while bytes.len() < TRAILING_BYTES {
                bytes.extend(ws.frame(true, opcode::BINARY, &chunk));
            }
            // A server that stops reading and resets the connection fails the write: what
            // counts is whether the close code arrived anyway.
            let _ = tokio::time::timeout(WAIT, ws.stream.write_all(&bytes)).await;
            let code = ws.close_code().await;
            if code != Some(expected) {
                wrong.push(code);
            }
        }
        (runs, wrong)
    }
}

#[tokio::test]
async fn oversized_message_then_more_data_gets_1009_every_time() {
    let target = target(&LINGER_FLAGS).await;
    let max = target.max_message;
    let (runs, wrong) = target
        .lingering_close(
            |ws| {
                // Pings first, so pongs are on their way (the close frame waits behind them).
                let mut bytes: Vec<u8> = (0..LINGER_PINGS)
                    .flat_map(|_| ws.frame(true, opcode::PING, &[b'p'; 125]))
                    .collect();
                bytes.extend(ws.frame(true, opcode::TEXT, &vec![b'x'; max + 1]));
                bytes
            },
            1009,
        )
        .await;
    assert!(
        wrong.is_empty(),
        "{} of {runs} runs did not get 1009: {wrong:?}",
        wrong.len()
    );
    target.assert_served(None).await;
}

#[tokio::test]
async fn frame_flood_then_more_data_gets_1008_every_time() {
    let target = target(&LINGER_FLAGS).await;
    let flood = target.flood;
    let (runs, wrong) = target
        .lingering_close(
            |ws| {
                (0..flood)
                    .flat_map(|i| {
                        let mut payload = [b'p'; 125];
                        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
                        ws.frame(true, opcode::PING, &payload)
                    })
                    .collect()
            },
            1008,
        )
        .await;
    assert!(
        wrong.is_empty(),
        "{} of {runs} runs did not get 1008: {wrong:?}",
        wrong.len()
    );
    target.assert_served(None).await;
}

// ---------------------------------------------------------------------------------------------
// The door: floods, slow handshakes and forged addresses

#[tokio::test]
async fn connection_flood_from_one_client_gets_429() {
    let target = target(&[
        "--max-conns-per-ip",
        "3",
        "--connect-rate",
        "100",
        "--connect-burst",
        "100",
    ])
    .await;
    let token = target.token().await;
    let mut open = Vec::new();
    let refusal = loop {
        assert!(
            open.len() < target.connections,
            "{} sockets opened from one client and none refused",
            open.len()
        );
        let token = target.token_again(&token).await;
        let hello = Hello {
            token: Some(&token),
            ..Hello::default()
        };
        match target.handshake(hello).await {
            Handshake::Upgraded(socket) => open.push(socket),
            Handshake::Refused {
                status, headers, ..
            } => break (status, headers),
        }
    };
    let (status, headers) = refusal;
    assert!(matches!(status, 429 | 503), "status {status}");
    assert!(headers.contains_key(header::RETRY_AFTER) || status == 503);
    if !external() {
        assert_eq!(open.len(), 3, "the per-IP quota");
    }
    if external() {
        // With one token the well-behaved client is the flood's user, whose per-user quota the
        // flood may hold: close the flood's sockets first (their slots must come back).
        for mut socket in open.drain(..) {
            let _ = socket.close(None).await;
        }
    }
    // Another client is served (in CI, while the flood still holds its sockets).
    target.assert_served(other_client(&target)).await;
    drop(open);
}

#[tokio::test]
async fn slow_handshake_is_cut_off() {
    let target = target(&["--header-timeout", "1"]).await;
    let mut stream = connect_from(target.addr, None).await;
    let path = url::Url::parse(&target.url)
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/".into());
    let start = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", target.addr);
    stream.write_all(start.as_bytes()).await.expect("write");
    // One byte of a header every 200 ms, for at most the server's timeout plus a margin.
    let rest = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let deadline = Instant::now() + target.header_timeout * 3 + Duration::from_secs(10);
    let mut answer = Vec::new();
    let mut closed = false;
    let mut i = 0;
    while Instant::now() < deadline {
        if i < rest.len() && stream.write_all(&rest[i..=i]).await.is_err() {
            closed = true;
            break;
        }
        i += 1;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        closed,
        "the server kept the trickling connection open: {answer:?}"
    );
    assert!(!answer.contains(" 101 "), "upgraded: {answer:?}");
    target.assert_served(None).await;
}

#[tokio::test]
async fn forged_x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Three handshakes per client; the attacker claims a new address for each one.
    let target = target(&["--connect-rate", "1", "--connect-burst", "3"]).await;
    let token = target.token().await;
    let mut refused = None;
    for i in 0..target.connections.min(100) {
        let token = target.token_again(&token).await;
        let hello = Hello {
            token: Some(&token),
            headers: vec![
                ("x-forwarded-for", format!("203.0.113.{}", i % 250 + 1)),
                ("x-real-ip", format!("198.51.100.{}", i % 250 + 1)),
                ("forwarded", format!("for=192.0.2.{}", i % 250 + 1)),
            ],
            ..Hello::default()
        };
        match target.handshake(hello).await {
            Handshake::Upgraded(socket) => drop(socket),
            Handshake::Refused {
                status, headers, ..
            } => {
                refused = Some((i, status, headers));
                break;
            }
        }
    }
    let (after, status, headers) = refused.expect("the forged addresses escaped the rate limit");
    assert_eq!(status, 429);
    assert!(headers.contains_key(header::RETRY_AFTER));
    if !external() {
        // The burst of 3 of the one real address (a slow machine may refill a few more).
        assert!((3..10).contains(&after), "refused after {after} handshakes");
    }
    target.assert_served(other_client(&target)).await;
}
