//! Forwarding-header bytes (`X-Forwarded-For`, `Forwarded`, `X-Real-Ip`; several header
//! lines) from a trusted or an untrusted peer, through `ClientIpLayer`. Checks: no panic; the
//! answer is the inner service's, with a `ClientIp`, or a `400` with
//! `ClientIpError::NoUsableAddress`; an untrusted peer is its own client; for
//! `X-Forwarded-For` and `X-Real-Ip` the address is the model's (the rightmost untrusted hop,
//! `400` at an unreadable hop before it, the leftmost trusted hop when all are trusted); and
//! for every header, an address a trusted proxy appended after whatever the client wrote is
//! the one chosen, so a chosen address is never a trusted proxy's while an untrusted one
//! stands right of the client's bytes.
//!
//! Input: a byte choosing the header, a byte choosing the peer (past the list of peers, the
//! next 16 bytes are its IPv6 address), then lines (`\n`) of a tag byte and a value: `l` a
//! header line, `a` (two bytes: which untrusted entry, how many trusted hops after it) a
//! trusted proxy's entries appended to the last line.
#![no_main]

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::LazyLock,
};

use axum::{body::Body, extract::ConnectInfo};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::{ServiceExt, service_fn};
use wsguard::client_ip::{ClientIp, ClientIpError, ClientIpLayer, IpNet, ProxyHeader};

#[derive(Debug)]
struct Input<'a> {
    header: u8,
    peer: IpAddr,
    lines: Vec<&'a [u8]>,
    /// A proxy appends the untrusted [`APPENDED`] entry `0` (and then `1` trusted hops) to the
    /// last line.
    append: Option<(u8, u8)>,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (&header, rest) = data.split_first()?;
        let (&peer, mut rest) = rest.split_first()?;
        let peer = match PEERS.get(usize::from(peer)) {
            Some(peer) => *peer,
            None => {
                let (octets, after) = rest.split_first_chunk::<16>()?;
                rest = after;
                IpAddr::from(*octets)
            }
        };
        let mut input = Self {
            header,
            peer,
            lines: Vec::new(),
            append: None,
        };
        for line in rest.split(|b| *b == b'\n') {
            match line {
                [b'l', value @ ..] => input.lines.push(value),
                [b'a', entry, trusted, ..] => input.append = Some((*entry, *trusted)),
                _ => {}
            }
        }
        Some(input)
    }
}

/// Peers: trusted ones first.
const PEERS: [IpAddr; 6] = [
    IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    // `::ffff:10.0.0.9`, what a dual-stack listener reports for a trusted IPv4 proxy.
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0009)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1)),
];

/// Untrusted addresses a trusted proxy appends, as each header writes them.
const APPENDED: [(IpAddr, &str, &str); 3] = [
    (
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        "203.0.113.9",
        "for=203.0.113.9",
    ),
    (
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)),
        "198.51.100.4:4711",
        "for=\"198.51.100.4:4711\";proto=https",
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb9, 0xcafe, 0, 0, 0, 0, 0x17)),
        "[2001:db9:cafe::17]:4711",
        "for=\"[2001:db9:cafe::17]:4711\"",
    ),
];

/// Trusted hops appended after that, as each header writes them.
const TRUSTED_HOPS: [(&str, &str); 2] =
    [("10.9.9.9", "for=10.9.9.9"), ("192.0.2.1", "for=192.0.2.1")];

fn trusted_nets() -> Vec<IpNet> {
    ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]
        .iter()
        .map(|n| n.parse().expect("a network"))
        .collect()
}

static TRUSTED: LazyLock<Vec<IpNet>> = LazyLock::new(trusted_nets);

static LAYERS: LazyLock<[ClientIpLayer; 3]> = LazyLock::new(|| {
    let base = trusted_nets()
        .into_iter()
        .fold(ClientIpLayer::new(), ClientIpLayer::trusted_proxy);
    [
        base.clone().proxy_header(ProxyHeader::XForwardedFor),
        base.clone().proxy_header(ProxyHeader::Forwarded),
        base.proxy_header(ProxyHeader::XRealIp),
    ]
});

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

fn is_trusted(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    TRUSTED.iter().any(|net| net.contains(&ip))
}

/// The inner service hands the `ClientIp` it saw back in the response extensions.
async fn inner(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Body::empty());
    if let Some(ip) = req.extensions().get::<ClientIp>() {
        res.extensions_mut().insert(*ip);
    }
    Ok(res)
}

/// One `X-Forwarded-For` element, read the simple way: `None` unless an address.
fn model_addr(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw.trim_ascii()).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The rightmost-untrusted walk over hops (`None`: unreadable).
fn walk(peer: IpAddr, hops: &[Option<IpAddr>]) -> Result<IpAddr, ()> {
    let mut leftmost_trusted = None;
    for hop in hops.iter().rev() {
        let ip = hop.ok_or(())?.to_canonical();
        if !is_trusted(ip) {
            return Ok(ip);
        }
        leftmost_trusted = Some(ip);
    }
    Ok(leftmost_trusted.unwrap_or(peer))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let which = usize::from(input.header % 3);
    let header = [
        HeaderName::from_static("x-forwarded-for"),
        http::header::FORWARDED,
        HeaderName::from_static("x-real-ip"),
    ][which]
        .clone();
    let peer = input.peer;

    let mut lines: Vec<Vec<u8>> = input
        .lines
        .iter()
        .filter(|l| HeaderValue::from_bytes(l).is_ok())
        .map(|l| l.to_vec())
        .collect();
    // The appended entry (not for X-Real-Ip, whose one line is the proxy's alone).
    let appended = input.append.filter(|_| which != 2).map(|(entry, trusted)| {
        let (ip, xff, fwd) = APPENDED[usize::from(entry) % APPENDED.len()];
        let mut tail = if which == 0 { xff } else { fwd }.to_owned();
        for (xff, fwd) in TRUSTED_HOPS.iter().take(usize::from(trusted % 3)) {
            tail.push_str(", ");
            tail.push_str(if which == 0 { xff } else { fwd });
        }
        match lines.last_mut() {
            Some(last) => {
                last.extend_from_slice(b", ");
                last.extend_from_slice(tail.as_bytes());
            }
            None => lines.push(tail.into_bytes()),
        }
        ip
    });

    let mut req = Request::new(Body::empty());
    for line in &lines {
        let value = HeaderValue::from_bytes(line).expect("checked above");
        req.headers_mut().append(header.clone(), value);
    }
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(peer, 40000)));

    let service = tower::Layer::layer(&LAYERS[which], service_fn(inner));
    let res = RT
        .block_on(service.oneshot(req))
        .unwrap_or_else(|never| match never {});
    let got = match res.status() {
        StatusCode::OK => Ok(res
            .extensions()
            .get::<ClientIp>()
            .expect("the inner service saw a ClientIp")
            .0),
        StatusCode::BAD_REQUEST => {
            assert_eq!(
                res.extensions().get::<ClientIpError>(),
                Some(&ClientIpError::NoUsableAddress)
            );
            Err(())
        }
        other => panic!("unexpected status {other}"),
    };

    let peer_canonical = peer.to_canonical();
    if !is_trusted(peer_canonical) {
        assert_eq!(
            got,
            Ok(peer_canonical),
            "an untrusted peer's headers were read"
        );
        return;
    }
    if let Some(ip) = appended {
        assert_eq!(
            got,
            Ok(ip),
            "the address the proxy appended was not chosen: {lines:?}"
        );
    }
    let model = match which {
        0 => {
            let hops: Vec<Option<IpAddr>> = lines
                .iter()
                .flat_map(|l| l.split(|b| *b == b','))
                .filter(|e| !e.trim_ascii().is_empty())
                .map(model_addr)
                .collect();
            Some(walk(peer_canonical, &hops))
        }
        2 => Some(match lines.as_slice() {
            [] => Ok(peer_canonical),
            [one] => walk(peer_canonical, &[model_addr(one)]),
            _ => Err(()),
        }),
        _ => None,
    };
    if let Some(model) = model {
        assert_eq!(got, model, "{lines:?}");
    }
    if let Ok(ip) = got
        && is_trusted(ip)
    {
        // Only when no untrusted address is to be had: every hop a trusted proxy.
        assert!(appended.is_none());
    }
});
