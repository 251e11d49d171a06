//! `/metrics` after a known sequence, read with a real Prometheus text parser: the stock
//! ticker starts with `--metrics-addr` (a listener of its own) and a cap of one socket per
//! user; the test makes one refused origin (`403`), one bad token (`401`), one socket, one quota
//! `429`, one oversized message closed with `1009`, then scrapes `/metrics` and parses it with
//! PyPI's `prometheus_client` (`text_string_to_metric_families`), checking each value.
//!
//! The parser runs in `.venv/bin/python` (made by `scripts/test` from
//! `examples/stock-ticker/tests/requirements.txt`), or the interpreter named by
//! `WSGUARD_TEST_PYTHON`. The test fails when neither has `prometheus_client`, unless
//! `WSGUARD_TEST_SKIP_PROMETHEUS=1` says to skip it. Also: `/metrics` is not on the public
//! listener by default, and with `--metrics-token-file` it asks for the token.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use common::{Example, TempDir, close_code, http, next_json, start_example};
use futures_util::SinkExt;
use http::{HeaderValue, header};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::frame::coding::CloseCode,
};

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"type": family.type, "name": sample.name,
                          "labels": sample.labels, "value": sample.value}))
"#;

/// The interpreter that has `prometheus_client`, or `None` when the test is to be skipped.
fn python() -> Option<PathBuf> {
    if std::env::var_os("WSGUARD_TEST_SKIP_PROMETHEUS").is_some_and(|v| v == "1") {
        eprintln!("WSGUARD_TEST_SKIP_PROMETHEUS=1: skipping the prometheus_client parse");
        return None;
    }
    let python = match std::env::var_os("WSGUARD_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    };
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import prometheus_client: run scripts/test (it makes .venv from \
         examples/stock-ticker/tests/requirements.txt), or name an interpreter that has it in \
         WSGUARD_TEST_PYTHON, or set WSGUARD_TEST_SKIP_PROMETHEUS=1 to skip",
        python.display()
    );
    Some(python)
}

/// One sample: `name{k=v,...}` (labels sorted) → (family type, value).
type Samples = BTreeMap<String, (String, f64)>;

async fn parse(python: &PathBuf, text: &str) -> Samples {
    let mut child = tokio::process::Command::new(python)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("parser in time")
        .expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = Samples::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let sample: Value = serde_json::from_str(line).expect("json line");
        let mut labels: Vec<String> = sample["labels"]
            .as_object()
            .expect("labels")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().expect("label value")))
            .collect();
        labels.sort();
        let name = sample["name"].as_str().expect("name");
        let value = sample["value"].as_f64().expect("value");
        let kind = sample["type"].as_str().expect("type").to_owned();
        samples.insert(format!("{name}{{{}}}", labels.join(",")), (kind, value));
    }
    samples
}

async fn start(dir: &TempDir, extra: &[&str]) -> Example {
    let db = dir.file("ticker.db");
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--tick-hz",
        "0",
        "--user",
        "alice:wonderland",
    ];
    args.extend_from_slice(extra);
    start_example("stock-ticker", &args).await
}

async fn token(example: &Example) -> String {
    let body = json!({ "username": "alice", "password": "wonderland" }).to_string();
    let res = http(
        example.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["token"].as_str().expect("token").to_owned()
}

/// A handshake to `/ws` from `origin` with the bearer `token`: the socket, or the status.
async fn handshake(example: &Example, origin: &str, token: &str) -> Result<common::Socket, u16> {
    let mut request = format!("ws://{}/ws", example.addr)
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        header::ORIGIN,
        HeaderValue::from_str(origin).expect("origin"),
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("handshake in time")
    {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(other) => panic!("handshake: {other}"),
    }
}

/// A ticket of the right shape whose tag does not match its payload: `401`, not `400`.
fn forged(ticket: &str) -> String {
    let (kid, rest) = ticket.split_once('.').expect("kid.payload.tag");
    let (_, tag) = rest.split_once('.').expect("payload.tag");
    format!("{kid}.eyJzdWIiOiJhZG1pbiJ9.{tag}")
}

#[tokio::test]
async fn metrics_after_a_known_sequence_parse_with_prometheus_client() {
    let Some(python) = python() else { return };
    let dir = TempDir::new("ticker-metrics");
    let mut example = start(
        &dir,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-conns-per-user",
            "1",
            "--max-message-bytes",
            "1024",
        ],
    )
    .await;
    let line = tokio::time::timeout(Duration::from_secs(10), example.stdout.recv())
        .await
        .expect("the metrics line in time")
        .expect("the metrics line");
    let metrics_addr: std::net::SocketAddr = line
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("metrics address in {line:?}"));
    assert_ne!(metrics_addr, example.addr);
    let origin = format!("http://127.0.0.1:{}", example.addr.port());

    // Not on the public listener.
    assert_eq!(
        http(example.addr, "GET", "/metrics", &[], "").await.status,
        404
    );

    let token = token(&example).await;
    assert_eq!(
        handshake(&example, "http://evil.test", &token).await.err(),
        Some(403)
    );
    assert_eq!(
        handshake(&example, &origin, &forged(&token)).await.err(),
        Some(401)
    );
    let mut socket = handshake(&example, &origin, &token).await.expect("socket");
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    assert_eq!(handshake(&example, &origin, &token).await.err(), Some(429));
    socket
        .send(Message::text("x".repeat(2048)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Size));

    // The socket's task ends shortly after the close: scrape until it has (bounded).
    let mut text = String::new();
    let mut samples = Samples::new();
    for _ in 0..100 {
        let res = http(metrics_addr, "GET", "/metrics", &[], "").await;
        assert_eq!(res.status, 200);
        assert!(
            res.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain")),
            "{:?}",
            res.headers
        );
        text = res.body;
        samples = parse(&python, &text).await;
        let open = |name: &str| samples.get(name).map(|(_, v)| *v);
        if open("wsguard_sockets_open{}") == Some(0.0)
            && open("ticker_connections_open{}") == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expected: &[(&str, &str, f64)] = &[
        // wsguard's own, through the facade.
        (
            "wsguard_handshakes_total{cause=not_allowed,layer=origin,outcome=refused}",
            "counter",
            1.0,
        ),
        (
            "wsguard_handshakes_total{cause=invalid,layer=auth,outcome=refused}",
            "counter",
            1.0,
        ),
        (
            "wsguard_handshakes_total{cause=identity_quota,layer=rate_limit,outcome=refused}",
            "counter",
            1.0,
        ),
        ("wsguard_handshakes_total{outcome=accepted}", "counter", 1.0),
        ("wsguard_sockets_open{}", "gauge", 0.0),
        ("wsguard_quota_active{backend=local}", "gauge", 0.0),
        (
            "wsguard_socket_closes_total{cause=message_too_big}",
            "counter",
            1.0,
        ),
        ("wsguard_messages_total{direction=out}", "counter", 1.0),
        // The ticker's application metrics, through the same facade.
        (
            "ticker_rejections_total{cause=origin_not_allowed}",
            "counter",
            1.0,
        ),
        ("ticker_rejections_total{cause=auth}", "counter", 1.0),
        (
            "ticker_rejections_total{cause=rate_limited}",
            "counter",
            1.0,
        ),
        (
            "ticker_sockets_opened_total{version=HTTP/1.1}",
            "counter",
            1.0,
        ),
        ("ticker_connections_total{}", "counter", 1.0),
        ("ticker_connections_open{}", "gauge", 0.0),
        (
            "ticker_socket_closes_total{cause=message_too_big}",
            "counter",
            1.0,
        ),
        ("ticker_client_messages_total{}", "counter", 0.0),
    ];
    for (series, kind, value) in expected {
        assert_eq!(
            samples.get(*series),
            Some(&((*kind).to_owned(), *value)),
            "{series} in\n{text}"
        );
    }
    // The snapshot went out: its bytes are counted, the refused message's are not counted in.
    let bytes_out = samples
        .get("wsguard_bytes_total{direction=out}")
        .map(|(_, v)| *v);
    assert!(bytes_out.is_some_and(|b| b > 0.0), "{text}");
    assert_eq!(
        samples
            .get("wsguard_messages_total{direction=in}")
            .map(|(_, v)| *v)
            .unwrap_or(0.0),
        0.0,
        "{text}"
    );
    // No token, user, address or origin in a label.
    for secret in [token.as_str(), "alice", "127.0.0.1", "evil.test"] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_on_the_public_listener_ask_for_the_token() {
    let dir = TempDir::new("ticker-metrics-token");
    let token_file = dir.file("metrics.token");
    std::fs::write(&token_file, "0123456789abcdef-metrics\n").expect("write token");
    let example = start(&dir, &["--metrics-token-file", &token_file]).await;
    struct Case {
        name: &'static str,
        authorization: Option<&'static str>,
        status: u16,
    }
    let cases = [
        Case {
            name: "no token",
            authorization: None,
            status: 401,
        },
        Case {
            name: "wrong token",
            authorization: Some("Bearer 0123456789abcdef-metricz"),
            status: 401,
        },
        Case {
            name: "a prefix of the token",
            authorization: Some("Bearer 0123456789abcdef"),
            status: 401,
        },
        Case {
            name: "the token",
            authorization: Some("Bearer 0123456789abcdef-metrics"),
            status: 200,
        },
    ];
    for case in cases {
        let headers: Vec<(&str, &str)> = case
            .authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let res = http(example.addr, "GET", "/metrics", &headers, "").await;
        assert_eq!(res.status, case.status, "{}: {}", case.name, res.body);
        if case.status == 200 {
            assert!(
                res.body.contains("ticker_connections_open 0"),
                "{}",
                res.body
            );
        } else {
            assert!(!res.body.contains("ticker_"), "{}: {}", case.name, res.body);
        }
    }
}
