use std::{convert::Infallible, net::SocketAddr};

use axum::{body::Body, extract::ConnectInfo, response::Response};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;

fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            *name,
            HeaderValue::from_bytes(value).expect("test header value"),
        );
    }
    map
}

fn layer(header: ProxyHeader) -> ClientIpLayer {
    ClientIpLayer::new()
        .trusted_proxy_str("10.0.0.0/8")
        .and_then(|l| l.trusted_proxy_str("2001:db8:ffff::/48"))
        .and_then(|l| l.trusted_proxy_str("192.0.2.1"))
        .expect("valid proxies")
        .proxy_header(header)
}

#[test]
fn resolve_table() {
    struct Case {
        name: &'static str,
        header: ProxyHeader,
        peer: &'static str,
        headers: &'static [(&'static str, &'static [u8])],
        want: &'static str,
    }
    use ProxyHeader::*;
    let cases = [
        Case {
            name: "untrusted peer: forged XFF ignored",
            header: XForwardedFor,
            peer: "203.0.113.5",
            headers: &[("x-forwarded-for", b"1.1.1.1")],
            want: "203.0.113.5",
        },
        Case {
            name: "untrusted peer: forged Forwarded ignored",
            header: Forwarded,
            peer: "203.0.113.5",
            headers: &[("forwarded", b"for=1.1.1.1")],
            want: "203.0.113.5",
        },
        Case {
            name: "trusted proxy: rightmost untrusted hop",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"6.6.6.6, 198.51.100.7, 10.9.9.9")],
            want: "198.51.100.7",
        },
        Case {
            name: "trusted proxy: forged leftmost entries ignored across lines",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[
                ("x-forwarded-for", b"6.6.6.6"),
                ("x-forwarded-for", b"198.51.100.7"),
            ],
            want: "198.51.100.7",
        },
        Case {
            name: "trusted proxy: all hops trusted, leftmost used",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"10.0.0.7, 10.0.0.8")],
            want: "10.0.0.7",
        },
        Case {
            name: "trusted proxy without header: peer",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[],
            want: "10.0.0.1",
        },
        Case {
            name: "trusted proxy: garbage hop falls back to peer",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"1.2.3.4, garbage")],
            want: "10.0.0.1",
        },
        Case {
            name: "trusted proxy: garbage left of the client is never read",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"garbage, 198.51.100.7")],
            want: "198.51.100.7",
        },
        Case {
            name: "trusted proxy: non-ASCII header falls back to peer",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"198.51.100.7\xff")],
            want: "10.0.0.1",
        },
        Case {
            name: "Forwarded: bracketed IPv6 with port",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"for=\"[2001:db8::1]:4711\";proto=https")],
            want: "2001:db8::1",
        },
        Case {
            name: "Forwarded: unknown where the client should be",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"for=unknown")],
            want: "10.0.0.1",
        },
        Case {
            name: "Forwarded: obfuscated identifier",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"for=_hidden, for=10.0.0.2")],
            want: "10.0.0.1",
        },
        Case {
            name: "Forwarded: trusted IPv6 proxy chain",
            header: Forwarded,
            peer: "2001:db8:ffff::1",
            headers: &[(
                "forwarded",
                b"for=198.51.100.1, for=\"[2001:db8:ffff::2]:80\"",
            )],
            want: "198.51.100.1",
        },
        Case {
            name: "Forwarded: garbage",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"\"\"\";;;==,,for=\"[")],
            want: "10.0.0.1",
        },
        Case {
            name: "Forwarded: XFF not honoured when Forwarded chosen",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"198.51.100.7")],
            want: "10.0.0.1",
        },
        Case {
            name: "X-Real-IP",
            header: XRealIp,
            peer: "192.0.2.1",
            headers: &[("x-real-ip", b"198.51.100.9")],
            want: "198.51.100.9",
        },
        Case {
            name: "X-Real-IP from an untrusted peer ignored",
            header: XRealIp,
            peer: "192.0.2.2",
            headers: &[("x-real-ip", b"198.51.100.9")],
            want: "192.0.2.2",
        },
        Case {
            name: "X-Real-IP twice is ambiguous",
            header: XRealIp,
            peer: "192.0.2.1",
            headers: &[("x-real-ip", b"198.51.100.9"), ("x-real-ip", b"1.1.1.1")],
            want: "192.0.2.1",
        },
        Case {
            name: "IPv4-mapped peer is canonicalised and trusted",
            header: XForwardedFor,
            peer: "::ffff:10.0.0.1",
            headers: &[("x-forwarded-for", b"::ffff:198.51.100.7")],
            want: "198.51.100.7",
        },
    ];
    for case in cases {
        let layer = layer(case.header);
        let got = layer.resolve(case.peer.parse().unwrap(), &headers(case.headers));
        assert_eq!(got, case.want.parse::<IpAddr>().unwrap(), "{}", case.name);
    }
}

#[test]
fn key_prefix() {
    let p = KeyPrefix::default();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        p.key(ip("2001:db8:1:2:3:4:5:6")),
        "2001:db8:1:2::/64".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        p.key(ip("2001:db8:1:2:ffff::1")),
        p.key(ip("2001:db8:1:2::9"))
    );
    assert_ne!(p.key(ip("2001:db8:1:3::1")), p.key(ip("2001:db8:1:2::1")));
    assert_eq!(
        p.key(ip("192.0.2.7")),
        "192.0.2.7/32".parse::<IpNet>().unwrap()
    );
    assert_eq!(p.key(ip("::ffff:192.0.2.7")), p.key(ip("192.0.2.7")));
    let p = KeyPrefix::new(24, 48).unwrap();
    assert_eq!(
        p.key(ip("192.0.2.7")),
        "192.0.2.0/24".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        ClientIp(ip("2001:db8:1:2::1")).key(p),
        "2001:db8:1::/48".parse::<IpNet>().unwrap()
    );
    assert_eq!(
        KeyPrefix::new(33, 64),
        Err(ConfigError::PrefixTooLong { len: 33, max: 32 })
    );
    assert!(KeyPrefix::new(32, 129).is_err());
    assert!(
        ClientIpLayer::new()
            .trusted_proxy_str("10.0.0.0/33")
            .is_err()
    );
    assert!(ClientIpLayer::new().trusted_proxy_str("nope").is_err());
}

async fn echo(req: Request<Body>) -> Result<Response, Infallible> {
    let ip = req.extensions().get::<ClientIp>().map(|c| c.0.to_string());
    Ok(Response::new(Body::from(ip.unwrap_or_default())))
}

#[tokio::test]
async fn inserts_client_ip_and_rejects_missing_connect_info() {
    let svc = ServiceBuilder::new()
        .layer(layer(ProxyHeader::XForwardedFor))
        .service(service_fn(echo));

    let mut req = Request::get("/")
        .header("x-forwarded-for", "198.51.100.7")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("10.0.0.1:1234".parse::<SocketAddr>().unwrap()));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 100).await.unwrap();
    assert_eq!(&body[..], b"198.51.100.7");

    let res = svc
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        res.extensions().get::<ClientIpError>(),
        Some(&ClientIpError::MissingConnectInfo)
    );
    let body = axum::body::to_bytes(res.into_body(), 1000).await.unwrap();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("into_make_service_with_connect_info")
    );

    let custom = ServiceBuilder::new()
        .layer(ClientIpLayer::new().on_rejection(|_| {
            let mut r = Response::new(Body::from("nope"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }))
        .service(service_fn(echo));
    let res = custom
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.extensions().get::<ClientIpError>().is_some());
}
