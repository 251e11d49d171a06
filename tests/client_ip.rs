//! Loopback integration: the client address seen through a real server, with forged,
//! relayed and malformed forwarding headers sent over the wire.

use std::net::SocketAddr;

use axum::{Extension, Router, routing::get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use wsguard::client_ip::{ClientIp, ClientIpLayer, ProxyHeader};

async fn serve(layer: ClientIpLayer, connect_info: bool) -> SocketAddr {
    let app = Router::new()
        .route(
            "/ip",
            get(|Extension(ip): Extension<ClientIp>| async move { ip.to_string() }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    addr
}

/// Sends a raw HTTP/1.1 request with `headers` (raw bytes, one header per line) and returns
/// the status code and body.
async fn get_ip(addr: SocketAddr, headers: &[&[u8]]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = b"GET /ip HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
    for h in headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    stream.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn untrusted_peer_cannot_forge_its_address() {
    // The loopback peer is not a trusted proxy here.
    let layer = ClientIpLayer::new()
        .trusted_proxy_str("10.0.0.0/8")
        .unwrap();
    let addr = serve(layer, true).await;
    for headers in [
        &[&b"X-Forwarded-For: 1.2.3.4"[..]][..],
        &[b"X-Forwarded-For: 10.0.0.1, 8.8.8.8"],
        &[b"Forwarded: for=1.2.3.4", b"X-Real-IP: 5.6.7.8"],
    ] {
        assert_eq!(get_ip(addr, headers).await, (200, "127.0.0.1".into()));
    }
}

#[tokio::test]
async fn trusted_proxy_rightmost_untrusted_hop_is_used() {
    struct Case {
        name: &'static str,
        header: ProxyHeader,
        sent: &'static [&'static [u8]],
        want: &'static str,
    }
    let cases = [
        Case {
            name: "XFF: forged leftmost entry ignored",
            header: ProxyHeader::XForwardedFor,
            sent: &[b"X-Forwarded-For: 6.6.6.6, 203.0.113.9, 127.0.0.2"],
            want: "203.0.113.9",
        },
        Case {
            name: "Forwarded: bracketed IPv6 with port",
            header: ProxyHeader::Forwarded,
            sent: &[b"Forwarded: for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https"],
            want: "2001:db8::1",
        },
        Case {
            name: "X-Real-IP",
            header: ProxyHeader::XRealIp,
            sent: &[b"X-Real-IP: 198.51.100.20"],
            want: "198.51.100.20",
        },
        Case {
            name: "header not chosen is ignored",
            header: ProxyHeader::Forwarded,
            sent: &[b"X-Forwarded-For: 203.0.113.9"],
            want: "127.0.0.1",
        },
    ];
    for case in cases {
        let layer = ClientIpLayer::new()
            .trusted_proxy_str("127.0.0.0/8")
            .unwrap()
            .proxy_header(case.header);
        let addr = serve(layer, true).await;
        assert_eq!(
            get_ip(addr, case.sent).await,
            (200, case.want.into()),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn malformed_headers_are_refused_and_never_panic() {
    let garbage: &[&[u8]] = &[
        b"garbage",
        b"1.2.3.4, ",
        b"for=unknown",
        b"for=_hidden",
        b"for=\"[2001:db8::1]",
        b"for=\"\\",
        b"\"\"\"",
        b";;;,,,===",
        b"999.999.999.999",
        b"[::1",
        b"\xff\xfe\x80",
        b"1.2.3.4\xff",
        b"for=\"[::1]:_obf\", for=\"[",
    ];
    for header in [
        ProxyHeader::XForwardedFor,
        ProxyHeader::Forwarded,
        ProxyHeader::XRealIp,
    ] {
        let layer = ClientIpLayer::new()
            .trusted_proxy_str("127.0.0.1")
            .unwrap()
            .proxy_header(header);
        let addr = serve(layer, true).await;
        let name = header.name();
        for value in garbage {
            let mut line = format!("{name}: ").into_bytes();
            line.extend_from_slice(value);
            let (status, body) = get_ip(addr, &[&line]).await;
            let shown = String::from_utf8_lossy(value);
            // Never keyed by the proxy's own address: refused, or (`1.2.3.4, ` in
            // X-Forwarded-For, whose empty element carries no hop) the address written.
            match status {
                400 => assert!(body.contains(name.as_str()), "{name}: {shown:?}: {body}"),
                200 => assert_eq!(body, "1.2.3.4", "{name}: {shown:?}"),
                other => panic!("{name}: {shown:?}: status {other}"),
            }
        }
    }
}

#[tokio::test]
async fn missing_connect_info_is_a_clear_500() {
    let addr = serve(ClientIpLayer::new(), false).await;
    let (status, body) = get_ip(addr, &[]).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("into_make_service_with_connect_info::<SocketAddr>()"),
        "{body}"
    );
}

/// Issue 13, point 10: bytes the client wrote into its own forwarding header (a non-ASCII
/// byte, an unterminated quote) used to make the whole header unreadable, so the client was
/// keyed by the proxy's own address, shared with every other client. The entry the trusted
/// proxy appended is read regardless.
#[tokio::test]
async fn client_junk_does_not_hide_the_address_the_proxy_appended() {
    struct Case {
        name: &'static str,
        header: ProxyHeader,
        lines: &'static [&'static [u8]],
    }
    let cases = [
        Case {
            name: "non-ASCII byte in the client's part of the line",
            header: ProxyHeader::XForwardedFor,
            lines: &[b"X-Forwarded-For: 6.6.6.6\xff, 198.51.100.7"],
        },
        Case {
            name: "non-ASCII client line, proxy entry on its own line",
            header: ProxyHeader::XForwardedFor,
            lines: &[
                b"X-Forwarded-For: \xe9t\xe9",
                b"X-Forwarded-For: 198.51.100.7",
            ],
        },
        Case {
            name: "unterminated quote in the client's part",
            header: ProxyHeader::Forwarded,
            lines: &[b"Forwarded: for=\"6.6.6.6, for=198.51.100.7"],
        },
        Case {
            name: "non-ASCII quoted string in the client's part",
            header: ProxyHeader::Forwarded,
            lines: &[b"Forwarded: for=\"\xff\", for=198.51.100.7"],
        },
    ];
    for case in cases {
        let layer = ClientIpLayer::new()
            .trusted_proxy_str("127.0.0.1")
            .unwrap()
            .proxy_header(case.header);
        let addr = serve(layer, true).await;
        assert_eq!(
            get_ip(addr, case.lines).await,
            (200, "198.51.100.7".into()),
            "{}",
            case.name
        );
    }
}
