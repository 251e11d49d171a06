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
        /// The client address, or `REFUSED` when no usable address is in the chain.
        want: &'static str,
    }
    const REFUSED: &str = "refused";
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
            // The proxy's own entry is unreadable: what is left of it was never vouched
            // for by a trusted hop, so it is not taken either.
            name: "trusted proxy: garbage where the client should be is refused",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"1.2.3.4, garbage")],
            want: REFUSED,
        },
        Case {
            name: "trusted proxy: garbage left of the client is never read",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"garbage, 198.51.100.7")],
            want: "198.51.100.7",
        },
        Case {
            name: "trusted proxy: non-ASCII client entry is refused",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"198.51.100.7\xff")],
            want: REFUSED,
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
            want: REFUSED,
        },
        Case {
            name: "Forwarded: obfuscated identifier",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"for=_hidden, for=10.0.0.2")],
            want: REFUSED,
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
            want: REFUSED,
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
            want: REFUSED,
        },
        Case {
            name: "IPv4-mapped peer is canonicalised and trusted",
            header: XForwardedFor,
            peer: "::ffff:10.0.0.1",
            headers: &[("x-forwarded-for", b"::ffff:198.51.100.7")],
            want: "198.51.100.7",
        },
        Case {
            name: "issue 13.10: a non-ASCII byte in a client entry does not hide the proxy's",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"\xffoo\xe9, 198.51.100.7, 10.9.9.9")],
            want: "198.51.100.7",
        },
        Case {
            name: "issue 13.10: non-ASCII on a client line, the proxy's on its own line",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[
                ("x-forwarded-for", b"6.6.6.6\xff"),
                ("x-forwarded-for", b"198.51.100.7"),
            ],
            want: "198.51.100.7",
        },
        Case {
            name: "issue 13.10: an unterminated quote from the client",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[("forwarded", b"for=\"6.6.6.6, for=198.51.100.7")],
            want: "198.51.100.7",
        },
        Case {
            name: "issue 13.10: a client quote does not swallow the proxy's quoted IPv6",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[(
                "forwarded",
                b"for=6.6.6.6, x=\", for=\"[2001:db8::7]:4711\";proto=https",
            )],
            want: "2001:db8::7",
        },
        Case {
            name: "issue 13.10: non-ASCII in a client Forwarded element",
            header: Forwarded,
            peer: "10.0.0.1",
            headers: &[(
                "forwarded",
                b"for=\"\xff\xfe\", for=198.51.100.7;proto=http",
            )],
            want: "198.51.100.7",
        },
        Case {
            name: "empty XFF elements carry no hop",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"198.51.100.7, ,")],
            want: "198.51.100.7",
        },
        Case {
            name: "only trusted hops and garbage: refused",
            header: XForwardedFor,
            peer: "10.0.0.1",
            headers: &[("x-forwarded-for", b"garbage, 10.0.0.7")],
            want: REFUSED,
        },
    ];
    for case in cases {
        let layer = layer(case.header);
        let got = layer.resolve(case.peer.parse().unwrap(), &headers(case.headers));
        if case.want == REFUSED {
            assert_eq!(got, Err(ClientIpError::NoUsableAddress), "{}", case.name);
        } else {
            assert_eq!(
                got,
                Ok(case.want.parse::<IpAddr>().unwrap()),
                "{}",
                case.name
            );
        }
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
        .layer(ClientIpLayer::new().on_rejection(|_: &crate::Rejection| {
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
    assert_eq!(
        res.extensions().get::<crate::Rejection>(),
        Some(&crate::Rejection::ClientIp(
            ClientIpError::MissingConnectInfo
        ))
    );
}

/// A request from a trusted proxy whose chain holds no usable client address is refused
/// with `400`, never keyed by the proxy's own address.
#[tokio::test]
async fn unusable_chain_is_refused_with_400() {
    let svc = ServiceBuilder::new()
        .layer(layer(ProxyHeader::XForwardedFor))
        .service(service_fn(echo));
    let mut req = Request::get("/")
        .header("x-forwarded-for", "unknown")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("10.0.0.1:1234".parse::<SocketAddr>().unwrap()));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.extensions().get::<ClientIpError>(),
        Some(&ClientIpError::NoUsableAddress)
    );
    let body = axum::body::to_bytes(res.into_body(), 1000).await.unwrap();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("x-forwarded-for")
    );
}

mod properties {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn client() -> impl Strategy<Value = IpAddr> {
        // Untrusted addresses: outside 10/8, 192.0.2.1 and 2001:db8:ffff::/48.
        prop_oneof![
            (1u8..=9, any::<[u8; 3]>())
                .prop_map(|(a, [b, c, d])| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
            any::<[u16; 7]>().prop_map(|[b, c, d, e, f, g, h]| IpAddr::V6(Ipv6Addr::new(
                0x2a00, b, c, d, e, f, g, h
            ))),
        ]
    }

    fn proxy() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 3]>().prop_map(|[b, c, d]| IpAddr::V4(Ipv4Addr::new(10, b, c, d)))
    }

    fn header_byte(b: u8) -> bool {
        b == b'\t' || (b >= 0x20 && b != 0x7f)
    }

    fn xff_entry(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        }
    }

    fn forwarded_entry(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]:4711\";proto=https"),
        }
    }

    /// A random set of trusted networks, IPv4 and IPv6, of any prefix length from /8.
    fn trusted_nets() -> impl Strategy<Value = Vec<IpNet>> {
        let net = prop_oneof![
            (any::<[u8; 4]>(), 8u8..=32).prop_map(|(o, len)| IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(o), len)
                    .expect("len <= 32")
                    .trunc()
            )),
            (any::<[u16; 8]>(), 16u8..=128).prop_map(|(s, len)| IpNet::V6(
                ipnet::Ipv6Net::new(Ipv6Addr::from(s), len)
                    .expect("len <= 128")
                    .trunc()
            )),
        ];
        proptest::collection::vec(net, 1..4)
    }

    /// An address inside `net`: its network address with random host bits.
    fn inside(net: &IpNet, bits: u128) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host = (bits as u32) & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = bits & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// One entry of a generated chain.
    #[derive(Clone, Debug)]
    enum Entry {
        /// An address in the trusted network with this index (modulo their number).
        Trusted(usize, u128),
        /// Any address (trusted or not: the model decides).
        Any(IpAddr),
        /// An IPv4-mapped IPv6 spelling of an address in a trusted network.
        Mapped(usize, u128),
        /// Not an address.
        Unusable(&'static str),
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            3 => (any::<usize>(), any::<u128>()).prop_map(|(i, b)| Entry::Trusted(i, b)),
            3 => any::<IpAddr>().prop_map(Entry::Any),
            1 => (any::<usize>(), any::<u128>()).prop_map(|(i, b)| Entry::Mapped(i, b)),
            1 => proptest::sample::select(&["unknown", "_hidden", "garbage", "1.2.3", "[::1"][..])
                .prop_map(Entry::Unusable),
        ]
    }

    /// The address of an entry, or `None` for an unusable one.
    fn address(entry: &Entry, nets: &[IpNet]) -> Option<IpAddr> {
        match entry {
            Entry::Trusted(i, bits) | Entry::Mapped(i, bits) => {
                let ip = inside(&nets[i % nets.len()], *bits);
                match (entry, ip) {
                    (Entry::Mapped(..), IpAddr::V4(v4)) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                    _ => Some(ip),
                }
            }
            Entry::Any(ip) => Some(*ip),
            Entry::Unusable(_) => None,
        }
    }

    fn render(entry: &Entry, nets: &[IpNet], forwarded: bool) -> String {
        match (address(entry, nets), forwarded) {
            (Some(IpAddr::V4(v4)), false) => v4.to_string(),
            (Some(IpAddr::V6(v6)), false) => format!("[{v6}]"),
            (Some(IpAddr::V4(v4)), true) => format!("for={v4}:4711;proto=https"),
            (Some(IpAddr::V6(v6)), true) => format!("for=\"[{v6}]\""),
            (None, false) => match entry {
                Entry::Unusable(text) => (*text).to_owned(),
                _ => unreachable!(),
            },
            (None, true) => match entry {
                Entry::Unusable(text) => format!("for={text}"),
                _ => unreachable!(),
            },
        }
    }

    proptest! {
        /// Whatever bytes the client sends as its own forwarding header, the address the
        /// trusted proxies appended is the one resolved.
        #[test]
        fn client_bytes_never_change_the_result(
            junk in proptest::collection::vec(any::<u8>(), 0..64),
            real in client(),
            proxies in proptest::collection::vec(proxy(), 0..3),
            forwarded in any::<bool>(),
            same_line in any::<bool>(),
        ) {
            let (header, name, entry): (ProxyHeader, &str, fn(IpAddr) -> String) = if forwarded {
                (ProxyHeader::Forwarded, "forwarded", forwarded_entry)
            } else {
                (ProxyHeader::XForwardedFor, "x-forwarded-for", xff_entry)
            };
            // What the proxies append: the client's address, then each inner proxy's.
            let appended: Vec<String> =
                std::iter::once(real).chain(proxies.iter().copied()).map(entry).collect();
            let appended = appended.join(", ");
            // Whatever a header value can hold (no control bytes but tab) can come from a client.
            let junk: Vec<u8> = junk.into_iter().filter(|&b| header_byte(b)).collect();
            let mut map = HeaderMap::new();
            if same_line {
                let mut line = junk.clone();
                line.extend_from_slice(b", ");
                line.extend_from_slice(appended.as_bytes());
                map.append(name, HeaderValue::from_bytes(&line).unwrap());
            } else {
                if let Ok(value) = HeaderValue::from_bytes(&junk) {
                    map.append(name, value);
                }
                map.append(name, HeaderValue::from_str(&appended).unwrap());
            }
            let got = layer(header).resolve("10.0.0.1".parse().unwrap(), &map);
            prop_assert_eq!(got, Ok(real));
        }

        /// Any header from a trusted proxy resolves to an address or a refusal, never a panic.
        #[test]
        fn any_header_resolves_without_panic(
            value in proptest::collection::vec(any::<u8>(), 0..96),
            forwarded in any::<bool>(),
        ) {
            let value: Vec<u8> = value.into_iter().filter(|&b| header_byte(b)).collect();
            let header = if forwarded { ProxyHeader::Forwarded } else { ProxyHeader::XForwardedFor };
            let mut map = HeaderMap::new();
            map.append(header.name(), HeaderValue::from_bytes(&value).unwrap());
            let _ = layer(header).resolve("10.0.0.1".parse().unwrap(), &map);
        }

        /// Invariant 2: with any set of trusted networks and any chain of trusted, untrusted
        /// and unusable hops in `X-Forwarded-For` or `Forwarded` (on one line or several),
        /// the chosen address is never a trusted proxy unless every hop is one, and never an
        /// address left of an untrusted hop; a chain whose walk meets an unusable entry first
        /// is refused. Checked against a model of the walk.
        #[test]
        fn the_client_is_the_rightmost_untrusted_hop(
            nets in trusted_nets(),
            chain in proptest::collection::vec(entry(), 0..6),
            peer in entry().prop_filter("an address", |e| !matches!(e, Entry::Unusable(_))),
            forwarded in any::<bool>(),
            lines in 1usize..=3,
        ) {
            let (header, name) = if forwarded {
                (ProxyHeader::Forwarded, "forwarded")
            } else {
                (ProxyHeader::XForwardedFor, "x-forwarded-for")
            };
            let layer = nets
                .iter()
                .fold(ClientIpLayer::new(), |l, net| l.trusted_proxy(*net))
                .proxy_header(header);
            let trusted = |ip: IpAddr| nets.iter().any(|n| n.contains(&ip.to_canonical()));
            let peer = address(&peer, &nets).expect("filtered").to_canonical();
            let rendered: Vec<String> = chain.iter().map(|e| render(e, &nets, forwarded)).collect();
            let mut map = HeaderMap::new();
            if !rendered.is_empty() {
                for part in rendered.chunks(rendered.len().div_ceil(lines)) {
                    map.append(name, HeaderValue::from_str(&part.join(", ")).unwrap());
                }
            }
            let hops: Vec<Option<IpAddr>> = chain
                .iter()
                .map(|e| address(e, &nets).map(|ip| ip.to_canonical()))
                .collect();
            // The model: the peer unless trusted, else the walk from the right.
            let expected = if !trusted(peer) {
                Ok(peer)
            } else {
                let mut found = None;
                for hop in hops.iter().rev() {
                    match hop {
                        Some(ip) if !trusted(*ip) => {
                            found = Some(Ok(*ip));
                            break;
                        }
                        Some(_) => {}
                        None => {
                            found = Some(Err(ClientIpError::NoUsableAddress));
                            break;
                        }
                    }
                }
                found.unwrap_or_else(|| Ok(hops.first().copied().flatten().unwrap_or(peer)))
            };
            let got = layer.resolve(peer, &map);
            prop_assert_eq!(&got, &expected);
            if let Ok(client) = got {
                if trusted(client) {
                    // Only when nobody untrusted is anywhere in the chain.
                    prop_assert!(hops.iter().all(|h| h.is_some_and(trusted)));
                    prop_assert!(trusted(peer));
                }
                if trusted(peer) {
                    // Nothing right of the client is untrusted or unusable.
                    let at = hops.iter().rposition(|h| *h == Some(client));
                    let right = at.map_or(&hops[..], |i| &hops[i + 1..]);
                    prop_assert!(right.iter().all(|h| h.is_some_and(trusted)));
                }
            }
        }
    }
}
