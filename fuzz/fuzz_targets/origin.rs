//! `Origin` and `Host` header bytes (and the request target) through `OriginGuardLayer`,
//! under four configurations. Checks: no panic; the answer is the inner service's or a `403`
//! carrying an `OriginError`; requests that are not checked always pass; and an accepted
//! handshake's origin and host are, as the WHATWG URL parser reads them, ones the
//! configuration allows.
//!
//! Input: a configuration byte, then lines (`\n`) of a tag byte and a value: `h` a `Host`
//! header, `o` an `Origin` header, `u` an `Upgrade` header, `t` the request target, `c`
//! (no value) the method `CONNECT` instead of `GET`.
#![no_main]

use std::{convert::Infallible, sync::LazyLock};

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use libfuzzer_sys::fuzz_target;
use tower::{ServiceExt, service_fn};
use url::Url;
use wsguard::origin::{OriginError, OriginGuardLayer};

#[derive(Debug, Default)]
struct Input<'a> {
    config: u8,
    connect: bool,
    upgrades: Vec<&'a [u8]>,
    /// The request target; `/ws` when absent or when it does not parse.
    target: Option<&'a [u8]>,
    hosts: Vec<&'a [u8]>,
    origins: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (&config, rest) = data.split_first()?;
        let mut input = Self {
            config,
            ..Self::default()
        };
        for line in rest.split(|b| *b == b'\n') {
            let Some((&tag, value)) = line.split_first() else {
                continue;
            };
            match tag {
                b'h' => input.hosts.push(value),
                b'o' => input.origins.push(value),
                b'u' => input.upgrades.push(value),
                b't' => input.target = Some(value),
                b'c' => input.connect = true,
                _ => {}
            }
        }
        Some(input)
    }
}

/// The configurations, built once.
struct Configs {
    /// Exact origins and a wildcard, nothing else.
    listed: OriginGuardLayer,
    /// Allowed hosts, same origin and the exact origins.
    hosts: OriginGuardLayer,
    /// Nothing configured: same origin, for hosts DNS cannot rebind.
    default: OriginGuardLayer,
    /// TLS only, `Origin` required, every request with an `Origin` checked.
    strict: OriginGuardLayer,
}

const EXACT: [&str; 2] = ["https://app.example.com", "http://127.0.0.1:8000"];

static CONFIGS: LazyLock<Configs> = LazyLock::new(|| {
    let listed = || {
        OriginGuardLayer::new()
            .allow_origins(EXACT)
            .and_then(|l| l.allow_origin_pattern("https://*.example.org"))
            .expect("valid configuration")
    };
    Configs {
        listed: listed(),
        hosts: listed()
            .allow_same_origin()
            .allow_hosts(["api.example.com", ".example.net"])
            .expect("valid hosts"),
        default: OriginGuardLayer::new(),
        strict: listed()
            .tls(true)
            .require_origin(true)
            .check_all_requests(true),
    }
});

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

/// The inner service: `200` with a marker header, so a pass cannot be mistaken for a rejection.
async fn inner(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Body::empty());
    res.headers_mut()
        .insert("x-inner", HeaderValue::from_static("1"));
    Ok(res)
}

/// Scheme, host and port (the scheme's default when none) as the URL parser reads them.
fn parsed(text: &str) -> Option<(String, String, Option<u16>)> {
    let url = Url::parse(text).ok()?;
    let host = url.host_str()?.to_owned();
    Some((url.scheme().to_owned(), host, url.port_or_known_default()))
}

/// Whether `host` is `base` or below it, by whole non-empty labels.
fn at_or_below(host: &str, base: &str) -> bool {
    host == base
        || host
            .strip_suffix(base)
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|p| p.split('.').all(|l| !l.is_empty()))
}

/// Whether `host` is strictly below `base`.
fn below(host: &str, base: &str) -> bool {
    host != base && at_or_below(host, base)
}

/// What an allowed origin of the exact list or the wildcard looks like.
fn listed_origin(origin: &(String, String, Option<u16>)) -> bool {
    let (scheme, host, port) = origin;
    let exact = EXACT.iter().filter_map(|e| parsed(e)).any(|e| &e == origin);
    exact || (scheme == "https" && *port == Some(443) && below(host, "example.org"))
}

/// Whether the raw value has the shape browsers send: visible ASCII `scheme://authority`
/// without userinfo, path, query, fragment or escapes.
fn strict_shape(raw: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(raw) else {
        return false;
    };
    let Some((_, authority)) = text.split_once("://") else {
        return false;
    };
    text.bytes().all(|b| b.is_ascii_graphic())
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', '\\', '%'])
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let configs = &*CONFIGS;
    let (layer, which) = match input.config % 4 {
        0 => (&configs.listed, 0),
        1 => (&configs.hosts, 1),
        2 => (&configs.default, 2),
        _ => (&configs.strict, 3),
    };
    let uri = input
        .target
        .and_then(|t| Uri::try_from(t).ok())
        .unwrap_or_else(|| Uri::from_static("/ws"));
    let mut req = Request::new(Body::empty());
    *req.method_mut() = if input.connect {
        Method::CONNECT
    } else {
        Method::GET
    };
    *req.uri_mut() = uri.clone();
    let headers = req.headers_mut();
    for upgrade in &input.upgrades {
        if let Ok(value) = HeaderValue::from_bytes(upgrade) {
            headers.append(header::UPGRADE, value);
        }
    }
    for host in &input.hosts {
        if let Ok(value) = HeaderValue::from_bytes(host) {
            headers.append(header::HOST, value);
        }
    }
    for origin in &input.origins {
        if let Ok(value) = HeaderValue::from_bytes(origin) {
            headers.append(header::ORIGIN, value);
        }
    }
    // The request as the guard sees it, for the checks below.
    let origins: Vec<Vec<u8>> = headers
        .get_all(header::ORIGIN)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let host_values: Vec<Vec<u8>> = headers
        .get_all(header::HOST)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let handshake = input.connect
        || headers.get_all(header::UPGRADE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        });

    let service = tower::Layer::layer(layer, service_fn(inner));
    let res = RT
        .block_on(service.oneshot(req))
        .unwrap_or_else(|never| match never {});
    let passed = res.headers().contains_key("x-inner");
    if passed {
        assert_eq!(res.status(), StatusCode::OK);
    } else {
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(res.extensions().get::<OriginError>().is_some());
    }

    let checked = handshake || (which == 3 && !origins.is_empty());
    if !checked {
        assert!(passed, "an unchecked request was refused: {res:?}");
        return;
    }
    if handshake && origins.len() > 1 {
        assert!(!passed, "a handshake with {} origins passed", origins.len());
    }
    if !passed {
        return;
    }
    // Accepted: what allowed it must be visible in the request.
    let authority: Option<String> = match uri.authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => match host_values.as_slice() {
            [one] => std::str::from_utf8(one).ok().map(str::to_owned),
            _ => None,
        },
    };
    let own = authority
        .as_deref()
        .and_then(|a| parsed(&format!("http://{a}")));
    if which == 1 {
        let (_, host, _) = own.as_ref().expect("an allowed host was checked");
        assert!(
            host == "api.example.com" || at_or_below(host, "example.net"),
            "host {host:?} is not allowed"
        );
    }
    let Some(raw) = origins.first() else {
        assert_ne!(which, 3, "a handshake without Origin passed require_origin");
        return;
    };
    assert!(strict_shape(raw), "malformed origin accepted: {raw:?}");
    let text = std::str::from_utf8(raw).expect("checked above");
    let origin = parsed(text).expect("an accepted origin parses as a URL");
    let same_host = own.as_ref().is_some_and(|(_, host, _)| *host == origin.1);
    match which {
        0 => assert!(listed_origin(&origin), "{origin:?} is not listed"),
        1 => assert!(
            listed_origin(&origin) || same_host,
            "{origin:?} is neither listed nor the host's"
        ),
        2 => {
            let (scheme, host, _) = &origin;
            assert!(matches!(scheme.as_str(), "http" | "https"), "{origin:?}");
            let ip_or_local = host.starts_with('[')
                || host.parse::<std::net::Ipv4Addr>().is_ok()
                || at_or_below(host, "localhost");
            assert!(
                ip_or_local,
                "same origin trusted a rebindable host: {origin:?}"
            );
            assert!(
                same_host,
                "{origin:?} is not the request's host {authority:?}"
            );
        }
        _ => {
            assert_ne!(origin.0, "http", "an http origin passed over TLS");
            assert!(listed_origin(&origin), "{origin:?} is not listed");
        }
    }
});
