//! The fleet tests' helpers (`fleet.rs`, `faults.rs`): a `redis-server` of the test's own or
//! the shared one, ticker instances on it, and their HTTP and socket clients.
#![allow(dead_code, unreachable_pub)]

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, handshake::client::Request};

use crate::common::{self, Example, Socket, TempDir, http, start_example};

/// A `redis-server` on a loopback port, killed on drop (unless it is the shared one).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// The shared server of `WSGUARD_TEST_REDIS_URL`, or a new one.
    pub fn shared() -> Self {
        match std::env::var("WSGUARD_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                child: None,
                port: 0,
                url,
            },
            _ => Self::start_on(free_port()),
        }
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the fleet tests need a real Redis; \
                     install it with `apt-get install -y redis-server` (.ci/run does)"
                )
            });
        let server = Self {
            child: Some(child),
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Stops the server (SIGKILL: nothing is saved) and returns its port.
    pub fn stop(mut self) -> u16 {
        let mut child = self.child.take().expect("a server this test started");
        let _ = child.kill();
        let _ = child.wait();
        self.port
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`) to a server this test started.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a server this test started");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}: {status}");
    }

    /// The leases of `key` that have not expired, by the server's clock.
    pub async fn live_leases(&self, key: &str) -> usize {
        let mut conn = self.conn().await;
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("TIME");
        redis::cmd("ZCOUNT")
            .arg(key)
            .arg(secs * 1000 + micros / 1000 + 1)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .expect("ZCOUNT")
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis key prefix unique to this test run and test.
pub fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("wsguard-test:{}:{nanos}:{test}", std::process::id())
}

/// One ticker instance with its own SQLite file.
pub struct Ticker {
    pub example: Example,
    pub _dir: TempDir,
}

/// The ticket secret every instance of the fleet with this prefix is given.
pub fn ticket_secret(prefix: &str) -> String {
    format!("the ticket secret of the test fleet {prefix}")
}

pub async fn ticker(redis_url: &str, prefix: &str, extra: &[&str]) -> Ticker {
    let dir = TempDir::new("fleet");
    let db = dir.file("ticker.db");
    let secret_file = dir.file("ticket.secret");
    std::fs::write(&secret_file, format!("{}\n", ticket_secret(prefix))).expect("secret file");
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--user",
        "alice:wonderland",
        "--user",
        "bob:builder",
        "--publisher",
        "alice",
        "--publisher",
        "bob",
        // These tests post many prices at once; the publish limit has a test of its own.
        "--publish-burst",
        "1000",
        "--tick-hz",
        "0",
        "--redis",
        redis_url,
        "--redis-timeout-ms",
        "500",
        "--redis-prefix",
        prefix,
    ];
    if !extra.contains(&"--ticket-secret-file") {
        args.extend_from_slice(&["--ticket-secret-file", &secret_file]);
    }
    args.extend_from_slice(extra);
    let example = start_example("stock-ticker", &args).await;
    Ticker { example, _dir: dir }
}

impl Ticker {
    pub fn addr(&self) -> SocketAddr {
        self.example.addr
    }

    pub async fn token(&self, user: &str, password: &str) -> String {
        let body = json!({ "username": user, "password": password }).to_string();
        let headers = [("Content-Type", "application/json")];
        let res = http(self.addr(), "POST", "/login", &headers, &body).await;
        assert_eq!(res.status, 200, "{}", res.body);
        res.json()["token"].as_str().expect("token").to_owned()
    }

    pub async fn post(&self, path: &str, token: &str, body: &str) -> common::HttpResponse {
        let auth = format!("Bearer {token}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ];
        http(self.addr(), "POST", path, &headers, body).await
    }

    /// The `/ws` handshake request of a client of this instance holding `token`.
    pub fn ws_request(&self, token: &str) -> Request {
        ws_request(self.addr(), token)
    }

    /// Opens `/ws`: the socket, or the HTTP status of the refusal.
    pub async fn try_connect(&self, token: &str) -> Result<Socket, u16> {
        let request = self.ws_request(token);
        let attempt = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .expect("the handshake is answered in time");
        match attempt {
            Ok((socket, response)) => {
                assert_eq!(response.status(), 101);
                Ok(socket)
            }
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    pub async fn connect(&self, token: &str) -> Socket {
        match self.try_connect(token).await {
            Ok(socket) => socket,
            Err(status) => panic!("handshake refused with {status}"),
        }
    }
}

pub async fn close(mut socket: Socket) {
    let _ = socket.close(None).await;
    // Wait for the server's side of the close, so its lease is being released.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// The `/ws` handshake request of a client of the instance at `addr` holding `token`.
pub fn ws_request(addr: SocketAddr, token: &str) -> Request {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    let origin = format!("http://127.0.0.1:{}", addr.port());
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_str(&origin).expect("origin"),
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    request
}

/// Retries `attempt` until it returns `Some`, for at most 30 s.
pub async fn eventually<T>(what: &str, mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
