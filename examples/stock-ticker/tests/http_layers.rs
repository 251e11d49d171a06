//! The ticker's tower-http layers, against the real program on loopback: security headers on
//! the page and its assets, the HTTP timeout (which the upgraded socket outlives), the body
//! limit of the JSON routes, tokens redacted from the request trace, and 404 for unknown paths.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::{process::Stdio, time::Duration};

use common::{
    Example, TempDir, example_path, http, next_json, start_example, start_example_with_env,
};
use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::Command,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn ticker(dir: &TempDir, extra: &[&str]) -> Example {
    let db = dir.file("ticker.db");
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--user",
        "alice:wonderland",
    ];
    args.extend_from_slice(extra);
    start_example("stock-ticker", &args).await
}

async fn token(example: &Example) -> String {
    let body = json!({ "username": "alice", "password": "wonderland" }).to_string();
    let headers = [("Content-Type", "application/json")];
    let res = http(example.addr, "POST", "/login", &headers, &body).await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn the_page_and_its_assets_carry_security_headers() {
    let dir = TempDir::new("headers");
    let ticker = ticker(&dir, &["--tick-hz", "0"]).await;
    struct Case {
        path: &'static str,
        content_type: &'static str,
    }
    let cases = [
        Case {
            path: "/",
            content_type: "text/html",
        },
        Case {
            path: "/page.js",
            content_type: "text/javascript",
        },
        Case {
            path: "/page.css",
            content_type: "text/css",
        },
    ];
    for case in cases {
        let res = http(ticker.addr, "GET", case.path, &[], "").await;
        assert_eq!(res.status, 200, "{}", case.path);
        let content_type = res.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with(case.content_type),
            "{}: {content_type}",
            case.path
        );
        assert_eq!(
            res.header("x-content-type-options"),
            Some("nosniff"),
            "{}",
            case.path
        );
        assert_eq!(res.header("x-frame-options"), Some("DENY"), "{}", case.path);
        assert_eq!(
            res.header("referrer-policy"),
            Some("no-referrer"),
            "{}",
            case.path
        );
        let csp = res.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(
                csp.contains(directive),
                "{}: {directive} missing in {csp:?}",
                case.path
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{}: {csp}", case.path);
        assert!(!csp.contains("unsafe-eval"), "{}: {csp}", case.path);
    }
    // The page loads its script and style from those files: nothing inline for a CSP to allow.
    let page = http(ticker.addr, "GET", "/", &[], "").await.body;
    assert!(page.contains(r#"<script src="/page.js""#), "{page}");
    assert!(
        page.contains(r#"<link rel="stylesheet" href="/page.css">"#),
        "{page}"
    );
    assert!(
        !page.contains("<script>") && !page.contains("<style"),
        "inline script or style left"
    );
    assert!(
        !page.contains(" style=") && !page.contains(" onclick="),
        "inline attribute left"
    );
    // The API's answers are not pages, but they are not to be sniffed either.
    let res = http(ticker.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn unknown_paths_are_404_not_the_socket_guard_s_401() {
    let dir = TempDir::new("notfound");
    let ticker = ticker(&dir, &["--tick-hz", "0"]).await;
    for path in ["/favicon.ico", "/nope", "/ws/extra", "/login/x"] {
        let res = http(ticker.addr, "GET", path, &[], "").await;
        assert_eq!(res.status, 404, "{path}: {}", res.body);
        assert_eq!(res.header("www-authenticate"), None, "{path}");
    }
    // The socket route itself is still guarded.
    let res = http(ticker.addr, "GET", "/ws", &[], "").await;
    assert_eq!(res.status, 401, "{}", res.body);
}

#[tokio::test]
async fn a_stalled_http_request_times_out_but_a_socket_outlives_the_timeout() {
    // A login hashes a password (slow in a debug build): the token comes from a twin with
    // the default timeout and the same ticket secret.
    const SECRET: (&str, &str) = (
        "TICKER_TICKET_SECRET",
        "an-http-timeout-test-secret-of-32-bytes+",
    );
    let (dir, twin_dir) = (TempDir::new("timeout"), TempDir::new("timeout-twin"));
    let (db, twin_db) = (dir.file("ticker.db"), twin_dir.file("ticker.db"));
    let common = ["--addr", "127.0.0.1:0", "--user", "alice:wonderland"];
    let twin = start_example_with_env(
        "stock-ticker",
        &[&common[..], &["--db", &twin_db, "--tick-hz", "0"]].concat(),
        &[SECRET],
    )
    .await;
    let ticker = start_example_with_env(
        "stock-ticker",
        &[
            &common[..],
            &["--db", &db, "--tick-hz", "20", "--http-timeout-ms", "300"],
        ]
        .concat(),
        &[SECRET],
    )
    .await;
    // A login whose body never comes: the handler waits on it until the HTTP timeout.
    let mut stalled = TcpStream::connect(ticker.addr).await.expect("connect");
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{",
        ticker.addr
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut raw))
        .await
        .expect("an answer before the test's own deadline")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // A socket opened now is still receiving prices well after the HTTP timeout.
    let token = token(&twin).await;
    let mut request = format!("ws://{}/ws", ticker.addr)
        .into_client_request()
        .expect("request");
    let origin = format!("http://127.0.0.1:{}", ticker.addr.port());
    let headers = request.headers_mut();
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_str(&origin).expect("origin"),
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    // Three times the HTTP timeout, counted by the server's own tick messages (20 a second):
    // no sleep, and the socket must be live the whole time.
    let started = tokio::time::Instant::now();
    let mut prices = 0;
    while started.elapsed() < Duration::from_millis(900) {
        let update = next_json(&mut socket).await;
        assert_eq!(update["type"], "price", "{update}");
        prices += 1;
        assert!(prices < 10_000, "bounded loop");
    }
    assert!(prices > 1);
    // And it still answers afterwards.
    let more = socket
        .next()
        .await
        .expect("socket open")
        .expect("a message");
    assert!(more.is_text(), "{more:?}");
}

#[tokio::test]
async fn json_bodies_over_the_limit_are_413() {
    let dir = TempDir::new("bodylimit");
    let ticker = ticker(&dir, &["--tick-hz", "0"]).await;
    let big = format!(
        r#"{{"username":"{}","password":"x"}}"#,
        "a".repeat(32 * 1024)
    );
    let headers = [("Content-Type", "application/json")];
    let res = http(ticker.addr, "POST", "/login", &headers, &big).await;
    assert_eq!(res.status, 413, "{}", res.body);
}

#[tokio::test]
async fn the_request_trace_redacts_credentials() {
    let dir = TempDir::new("trace");
    let db = dir.file("ticker.db");
    let mut child = Command::new(example_path("stock-ticker"))
        .args(["--addr", "127.0.0.1:0", "--db", &db, "--tick-hz", "0"])
        .args(["--user", "alice:wonderland"])
        .env("RUST_LOG", "tower_http=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the ticker");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.expect("stdout") {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                return url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
            }
        }
        panic!("no address");
    })
    .await
    .expect("banner in time")
    .parse()
    .expect("address");
    let (tx, mut logs) = tokio::sync::mpsc::unbounded_channel();
    let stderr = child.stderr.take().expect("stderr");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });

    const SECRET: &str = "tok-3c1f9a-never-in-logs";
    let headers = [
        ("Authorization", "Bearer tok-3c1f9a-never-in-logs"),
        ("Cookie", "session=tok-3c1f9a-never-in-logs"),
        (
            "Sec-WebSocket-Protocol",
            "ticker.v1, bearer.tok-3c1f9a-never-in-logs",
        ),
        ("X-Marker", "trace-test"),
    ];
    let res = http(addr, "GET", "/healthz", &headers, "").await;
    assert_eq!(res.status, 200);
    // The trace names the request, shows the harmless header, and redacts the others.
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = logs.recv().await {
            let hit = line.contains("trace-test");
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    // Collect what else was logged for this request.
    while let Ok(line) = logs.try_recv() {
        seen.push(line);
    }
    let all = seen.join("\n");
    assert!(found, "the request was traced with its headers: {all}");
    assert!(!all.contains(SECRET), "a credential reached the log: {all}");
    assert!(all.contains("\"authorization\": Sensitive"), "{all}");
    assert!(all.contains("\"cookie\": Sensitive"), "{all}");
    assert!(
        all.contains("\"sec-websocket-protocol\": Sensitive"),
        "{all}"
    );
}
