//! The heroes example's HTTP surface, tested against the real program on loopback: its page
//! and scripts, and the wsguard layers in front of socketioxide's Engine.IO endpoint. The
//! Socket.IO conversation itself is tested with real clients in tests/socketio/ (next to this file).

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{http, start_example};
use serde_json::Value;

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

/// Opens an Engine.IO long-polling session; returns its `sid`.
async fn open_session(addr: std::net::SocketAddr) -> Result<String, u16> {
    let res = http(addr, "GET", POLL, &[], "").await;
    if res.status != 200 {
        return Err(res.status);
    }
    // An Engine.IO open packet: `0` then JSON.
    let open: Value = serde_json::from_str(res.body.trim_start_matches('0')).expect("open packet");
    Ok(open["sid"].as_str().expect("sid").to_owned())
}

#[tokio::test]
async fn page_scripts_and_engine_io_endpoint() {
    let heroes = start_example("heroes", &["--addr", "127.0.0.1:0"]).await;
    let addr = heroes.addr;

    struct Case {
        path: &'static str,
        content_type: &'static str,
        contains: &'static str,
    }
    let cases = [
        Case {
            path: "/",
            content_type: "text/html",
            contains: "data-hero=\"blackPanther\"",
        },
        Case {
            path: "/script.js",
            content_type: "text/javascript",
            contains: "get_name",
        },
        Case {
            path: "/style.css",
            content_type: "text/css",
            contains: "#status.error",
        },
        Case {
            path: "/socket.io.min.js",
            content_type: "text/javascript",
            contains: "Socket.IO v4",
        },
    ];
    for case in cases {
        let res = http(addr, "GET", case.path, &[], "").await;
        assert_eq!(res.status, 200, "{}", case.path);
        assert!(
            res.header("content-type")
                .is_some_and(|v| v.starts_with(case.content_type)),
            "{}: {:?}",
            case.path,
            res.header("content-type")
        );
        assert!(res.body.contains(case.contains), "{}", case.path);
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
        ] {
            assert!(
                csp.contains(directive),
                "{}: {directive} missing in {csp:?}",
                case.path
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{}: {csp}", case.path);
    }
    let page = http(addr, "GET", "/", &[], "").await.body;
    assert!(
        !page.contains("<style") && !page.contains("<script>"),
        "inline style or script left"
    );

    // The open packet advertises socketioxide's payload limit (4 KiB by default).
    let res = http(addr, "GET", POLL, &[], "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    let open: Value = serde_json::from_str(res.body.trim_start_matches('0')).expect("open");
    assert_eq!(open["maxPayload"], 4096);
    let sid = open["sid"].as_str().expect("sid");

    // A body over the limit on the session's long-polling transport: 413.
    let path = format!("{POLL}&sid={sid}");
    let res = http(addr, "POST", &path, &[], &format!("4{}", "x".repeat(8192))).await;
    assert_eq!(res.status, 413, "{}", res.body);
}

#[tokio::test]
async fn wsguard_metrics_are_exported_on_their_own_listener() {
    let mut heroes = start_example(
        "heroes",
        &["--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let line = heroes.line_starting_with("metrics on http://").await;
    let metrics: std::net::SocketAddr = line
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("metrics address");
    let res = http(
        heroes.addr,
        "GET",
        POLL,
        &[("Origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(res.status, 403);
    let res = http(metrics, "GET", "/metrics", &[], "").await;
    assert_eq!(res.status, 200);
    let refused = res
        .body
        .lines()
        .find(|l| {
            l.starts_with("wsguard_handshakes_total{")
                && l.contains("outcome=\"refused\"")
                && l.contains("layer=\"origin\"")
        })
        .unwrap_or_else(|| panic!("no origin refusal in:\n{}", res.body));
    assert!(refused.ends_with(" 1"), "{refused}");
    // Not on the public listener.
    assert_eq!(
        http(heroes.addr, "GET", "/metrics", &[], "").await.status,
        404
    );
}

#[tokio::test]
async fn origin_is_checked_on_long_polling_too() {
    let heroes = start_example("heroes", &["--addr", "127.0.0.1:0"]).await;
    let addr = heroes.addr;
    let own = format!("http://127.0.0.1:{}", addr.port());
    for (origin, status) in [
        ("https://evil.example", 403),
        ("null", 403),
        (own.as_str(), 200),
    ] {
        let res = http(addr, "GET", POLL, &[("Origin", origin)], "").await;
        assert_eq!(res.status, status, "{origin}: {}", res.body);
    }
}

#[tokio::test]
async fn new_sessions_are_rate_limited_and_counted_per_ip() {
    let heroes = start_example(
        "heroes",
        &[
            "--addr",
            "127.0.0.1:0",
            "--connect-rate",
            "1",
            "--connect-burst",
            "3",
            "--max-conns-per-ip",
            "100",
        ],
    )
    .await;
    let addr = heroes.addr;
    // New sessions until one is refused: at least the burst of 3 is admitted, then 429 with
    // Retry-After (bounded: a second refills one, so 20 attempts end with a refusal).
    let mut sids = Vec::new();
    let refused = loop {
        assert!(sids.len() < 20, "no new session refused");
        match open_session(addr).await {
            Ok(sid) => sids.push(sid),
            Err(status) => break status,
        }
    };
    assert_eq!(refused, 429);
    assert!(sids.len() >= 3, "{} sessions admitted", sids.len());
    let res = http(addr, "GET", POLL, &[], "").await;
    if res.status == 429 {
        assert!(res.header("retry-after").is_some());
    }
    // Requests of open sessions are not new handshakes: they are not rate-limited.
    for sid in &sids {
        let res = http(addr, "POST", &format!("{POLL}&sid={sid}"), &[], "40").await;
        assert_eq!(res.status, 200, "{}", res.body);
    }
}

#[tokio::test]
async fn open_sessions_per_ip_are_capped() {
    let heroes = start_example(
        "heroes",
        &[
            "--addr",
            "127.0.0.1:0",
            "--connect-rate",
            "100",
            "--connect-burst",
            "100",
            "--max-conns-per-ip",
            "2",
        ],
    )
    .await;
    let addr = heroes.addr;
    let _a = open_session(addr).await.expect("first");
    let _b = open_session(addr).await.expect("second");
    assert_eq!(open_session(addr).await, Err(429), "the third open session");
}

#[tokio::test]
async fn a_session_that_ends_gives_its_slot_back() {
    // Sessions that never join a namespace end after a second (or when they miss a ping).
    let heroes = start_example(
        "heroes",
        &[
            "--addr",
            "127.0.0.1:0",
            "--max-conns-per-ip",
            "1",
            "--ping-interval",
            "1",
            "--ping-timeout",
            "1",
            "--connect-timeout",
            "1",
        ],
    )
    .await;
    let addr = heroes.addr;
    let _abandoned = open_session(addr).await.expect("first");
    assert_eq!(open_session(addr).await, Err(429), "the slot is taken");
    // Bounded wait for the abandoned session to end and release its slot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match open_session(addr).await {
            Ok(_) => break,
            Err(429) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(status) => panic!("the slot never came back: {status}"),
        }
    }
}

/// Sends a Socket.IO CONNECT with `auth` over the session's long-polling transport and
/// returns the server's answer (`40{..}` accepted, `44{"message": ..}` refused).
async fn socket_io_connect(addr: std::net::SocketAddr, sid: &str, auth: &str) -> String {
    let path = format!("{POLL}&sid={sid}");
    let res = http(addr, "POST", &path, &[], &format!("40{auth}")).await;
    assert_eq!(res.status, 200, "{}", res.body);
    // A poll answers with packets separated by 0x1e; the Socket.IO one starts with `4`
    // (Engine.IO message), the others are Engine.IO control packets such as pings.
    for _ in 0..5 {
        let res = http(addr, "GET", &path, &[], "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        if let Some(packet) = res.body.split('\u{1e}').find(|p| p.starts_with('4')) {
            return packet.to_owned();
        }
    }
    panic!("no Socket.IO answer to the connect");
}

#[tokio::test]
async fn password_guessing_is_throttled_even_within_one_session() {
    let heroes = start_example(
        "heroes",
        &[
            "--addr",
            "127.0.0.1:0",
            "--user",
            "alice:wonderland",
            "--max-login-failures",
            "2",
        ],
    )
    .await;
    let addr = heroes.addr;
    let wrong = r#"{"username":"alice","password":"guess"}"#;
    let right = r#"{"username":"alice","password":"wonderland"}"#;

    // A right password is accepted.
    let sid = open_session(addr).await.expect("session");
    let answer = socket_io_connect(addr, &sid, right).await;
    assert!(answer.starts_with("40{"), "{answer}");

    // Guesses over one Engine.IO session: two are checked, then the client IP is locked out.
    let sid = open_session(addr).await.expect("session");
    for _ in 0..2 {
        let answer = socket_io_connect(addr, &sid, wrong).await;
        assert!(answer.starts_with("44"), "{answer}");
        assert!(answer.contains("invalid username or password"), "{answer}");
    }
    let answer = socket_io_connect(addr, &sid, wrong).await;
    assert!(answer.contains("too many failed logins"), "{answer}");
    // Locked out: even the right password, even in a new session, until the minute ends.
    let sid = open_session(addr).await.expect("session");
    let answer = socket_io_connect(addr, &sid, right).await;
    assert!(answer.contains("too many failed logins"), "{answer}");
}

/// Opens a session and sends a Socket.IO CONNECT with `auth`, every request relayed for
/// `client` (an `X-Forwarded-For` entry; the loopback peer is a trusted proxy).
async fn connect_as(addr: std::net::SocketAddr, client: &str, auth: &str) -> String {
    let xff = [("X-Forwarded-For", client)];
    let res = http(addr, "GET", POLL, &xff, "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    let open: Value = serde_json::from_str(res.body.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid");
    let path = format!("{POLL}&sid={sid}");
    let res = http(addr, "POST", &path, &xff, &format!("40{auth}")).await;
    assert_eq!(res.status, 200, "{}", res.body);
    for _ in 0..5 {
        let res = http(addr, "GET", &path, &xff, "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        if let Some(packet) = res.body.split('\u{1e}').find(|p| p.starts_with('4')) {
            return packet.to_owned();
        }
    }
    panic!("no Socket.IO answer to the connect");
}

/// Issue 13, point 15: the login throttle is wsguard's own, keyed like the layers: an IPv6
/// client is its /64, so hopping to another address of the same /64 gets no fresh budget.
#[tokio::test]
async fn addresses_of_one_ipv6_64_share_the_login_budget() {
    let heroes = start_example(
        "heroes",
        &[
            "--addr",
            "127.0.0.1:0",
            "--user",
            "alice:wonderland",
            "--max-login-failures",
            "2",
            "--trusted-proxy",
            "127.0.0.1/32",
        ],
    )
    .await;
    let addr = heroes.addr;
    let wrong = r#"{"username":"alice","password":"guess"}"#;
    let right = r#"{"username":"alice","password":"wonderland"}"#;

    for client in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        let answer = connect_as(addr, client, wrong).await;
        assert!(answer.contains("invalid username or password"), "{answer}");
    }
    // A third address of the same /64: locked out, even with the right password.
    let answer = connect_as(addr, "2001:db8:1:2:ffff::9", right).await;
    assert!(answer.contains("too many failed logins"), "{answer}");
    // Another /64 and an IPv4 client have their own budgets.
    let answer = connect_as(addr, "2001:db8:1:3::1", right).await;
    assert!(answer.starts_with("40{"), "{answer}");
    let answer = connect_as(addr, "198.51.100.7", right).await;
    assert!(answer.starts_with("40{"), "{answer}");
}

/// Issue 13, point 11: the heroes app names its hosts, so a rebound domain is refused on
/// the long-polling transport too; `--allowed-host` adds one.
#[tokio::test]
async fn a_rebound_host_is_refused() {
    let heroes = start_example(
        "heroes",
        &["--addr", "127.0.0.1:0", "--allowed-host", "heroes.test"],
    )
    .await;
    let addr = heroes.addr;
    let port = addr.port();
    let attacker = format!("attacker.example:{port}");
    let (status, body) = common::raw_handshake(
        addr,
        "/socket.io/?EIO=4&transport=websocket",
        &attacker,
        Some(&format!("http://{attacker}")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host not allowed"), "{body}");
    // The allowed name gets past the host check (and its origin is then not on the list).
    let named = format!("heroes.test:{port}");
    let (status, body) = common::raw_handshake(
        addr,
        "/socket.io/?EIO=4&transport=websocket",
        &named,
        Some(&format!("http://{named}")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin not allowed"), "{body}");
    // The server's own address still opens a socket.
    let own = format!("127.0.0.1:{port}");
    let (status, body) = common::raw_handshake(
        addr,
        "/socket.io/?EIO=4&transport=websocket",
        &own,
        Some(&format!("http://{own}")),
    )
    .await;
    assert_eq!(status, 101, "{body}");
}
