//! `Authorization`, `Sec-WebSocket-Protocol` and `Cookie` header bytes and the request target
//! through `HandshakeAuthLayer`, with each credential source alone and all four in two
//! orders. Checks: no panic; the answer is the inner service's or a `401`/`400` with an
//! `AuthError` (and `WWW-Authenticate`); a credential that passes is visible ASCII within the
//! length limit and came from where its source says; and whatever decided, the request the
//! inner service sees carries no `bearer.` subprotocol entry, nor a word of one starting
//! with `bearer.` (an unreadable, non-UTF-8 line is dropped whole), and no `access_token`
//! query parameter. (Not "no substring equal to the token": a client may name another
//! subprotocol `chabearer.<token>`, and that name is its own.)
//!
//! Input: a configuration byte, then lines (`\n`) of a tag byte and a value: `a` an
//! `Authorization` header, `p` a `Sec-WebSocket-Protocol` header, `c` a `Cookie` header,
//! `t` the request target.
#![no_main]

use std::{convert::Infallible, future::Ready, num::NonZeroUsize, sync::LazyLock};

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header, request::Parts};
use libfuzzer_sys::fuzz_target;
use tower::{ServiceExt, service_fn};
use wsguard::auth::{
    AuthError, Credential, CredentialSource, HandshakeAuthLayer, Principal, SourceKind, Verified,
};

const PREFIX: &str = "bearer.";
const PARAM: &str = "access_token";
const COOKIE: &str = "session";
const MAX_LEN: usize = 64;

#[derive(Debug, Default)]
struct Input<'a> {
    config: u8,
    target: Option<&'a [u8]>,
    authorization: Vec<&'a [u8]>,
    protocols: Vec<&'a [u8]>,
    cookies: Vec<&'a [u8]>,
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
                b'a' => input.authorization.push(value),
                b'p' => input.protocols.push(value),
                b'c' => input.cookies.push(value),
                b't' => input.target = Some(value),
                _ => {}
            }
        }
        Some(input)
    }
}

/// What the authenticator saw: the token and its source.
type Seen = (String, SourceKind);

/// Accepts tokens whose first byte is even, refuses the others: both outcomes are reached.
type Auth = fn(&Parts, Credential) -> Ready<Result<Verified<Seen>, AuthError>>;

fn authenticate(
    _parts: &Parts,
    credential: Credential,
) -> Ready<Result<Verified<Seen>, AuthError>> {
    let token = credential.token();
    std::future::ready(if token.as_bytes().first().is_some_and(|b| b % 2 == 0) {
        Ok(Verified::new(
            (token.to_owned(), credential.source()),
            Principal::new("fuzz", None),
        ))
    } else {
        Err(AuthError::Invalid)
    })
}

fn sources(kinds: &[u8]) -> Vec<CredentialSource> {
    kinds
        .iter()
        .map(|k| match k {
            0 => CredentialSource::authorization(),
            1 => CredentialSource::subprotocol(PREFIX).expect("a valid prefix"),
            2 => CredentialSource::query(PARAM).expect("a valid name"),
            _ => CredentialSource::cookie(COOKIE).expect("a valid name"),
        })
        .collect()
}

/// Each source alone, then all four in two orders; the last with a short length limit.
static LAYERS: LazyLock<Vec<(HandshakeAuthLayer<Auth>, Vec<u8>)>> = LazyLock::new(|| {
    let configs: [&[u8]; 6] = [&[0], &[1], &[2], &[3], &[0, 1, 2, 3], &[3, 2, 1, 0]];
    configs
        .iter()
        .enumerate()
        .map(|(i, kinds)| {
            let mut layer = HandshakeAuthLayer::new(authenticate as Auth).sources(sources(kinds));
            if i == configs.len() - 1 {
                layer = layer.max_credential_len(NonZeroUsize::new(MAX_LEN).expect("non-zero"));
            }
            (layer, kinds.to_vec())
        })
        .collect()
});

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

/// The inner service hands back what it saw: the identity and the request's parts.
async fn inner(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let (parts, _) = req.into_parts();
    let mut res = Response::new(Body::empty());
    res.extensions_mut().insert(InnerSaw(parts));
    Ok(res)
}

#[derive(Clone)]
struct InnerSaw(Parts);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Form-decodes a query component: `None` for a broken escape or non-UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let (layer, kinds) = &LAYERS[usize::from(input.config) % LAYERS.len()];
    let uri = input
        .target
        .and_then(|t| Uri::try_from(t).ok())
        .unwrap_or_else(|| Uri::from_static("/ws"));
    let mut req = Request::get(uri)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Body::empty())
        .expect("a request");
    let headers = req.headers_mut();
    for (name, values) in [
        (header::AUTHORIZATION, &input.authorization),
        (header::SEC_WEBSOCKET_PROTOCOL, &input.protocols),
        (header::COOKIE, &input.cookies),
    ] {
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name.clone(), value);
            }
        }
    }
    let sent = req.headers().clone();
    let sent_uri = req.uri().clone();

    let service = tower::Layer::layer(layer, service_fn(inner));
    let res = RT
        .block_on(service.oneshot(req))
        .unwrap_or_else(|never| match never {});

    let Some(InnerSaw(parts)) = res.extensions().get::<InnerSaw>().cloned() else {
        let error = res
            .extensions()
            .get::<AuthError>()
            .expect("a rejection carries its AuthError");
        let expected = match error {
            AuthError::Malformed => StatusCode::BAD_REQUEST,
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            other => panic!("unexpected error {other:?}"),
        };
        assert_eq!(res.status(), expected);
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        return;
    };
    assert_eq!(res.status(), StatusCode::OK);
    let (token, source) = parts
        .extensions
        .get::<Seen>()
        .cloned()
        .expect("a request that passed is authenticated");
    assert!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
        "{token:?}"
    );
    assert!(
        token.len() <= MAX_LEN || kinds != &[3, 2, 1, 0],
        "{} bytes",
        token.len()
    );
    let from = match source {
        SourceKind::Authorization => 0,
        SourceKind::Subprotocol => 1,
        SourceKind::Query => 2,
        _ => 3,
    };
    assert!(kinds.contains(&from), "{source:?} is not configured");
    // It came from where its source says.
    match source {
        SourceKind::Authorization => {
            let value = sent
                .get(header::AUTHORIZATION)
                .expect("an Authorization header");
            assert!(value.as_bytes()[..6].eq_ignore_ascii_case(b"bearer"));
            assert!(contains(value.as_bytes(), token.as_bytes()));
        }
        SourceKind::Subprotocol => {
            let entry = format!("{PREFIX}{token}");
            assert!(
                sent.get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .any(|v| contains(v.as_bytes(), entry.as_bytes())),
                "no {entry:?} entry was sent"
            );
        }
        SourceKind::Cookie => assert!(
            sent.get_all(header::COOKIE)
                .iter()
                .any(|v| contains(v.as_bytes(), token.as_bytes())),
            "no cookie carries the token"
        ),
        _ => assert!(sent_uri.query().is_some()),
    }

    // Nothing of a subprotocol or query credential goes on.
    if kinds.contains(&1) {
        let unreadable = sent
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .any(|v| v.to_str().is_err());
        let values: Vec<&HeaderValue> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .collect();
        if unreadable {
            assert!(values.is_empty(), "an unreadable line went on: {values:?}");
        }
        for value in &values {
            // Split into entries, and entries into words: an entry with a space in it is no
            // subprotocol name, and a token in one of its words must not go on either.
            let words = value
                .as_bytes()
                .split(|b| matches!(b, b',' | b' ' | b'\t'))
                .filter(|w| !w.is_empty());
            for word in words {
                assert!(
                    !word.starts_with(PREFIX.as_bytes()),
                    "a token entry went on: {value:?}"
                );
            }
        }
    } else {
        // Untouched by the other sources.
        let before: Vec<_> = sent
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .collect();
        let after: Vec<_> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .collect();
        assert_eq!(before, after);
    }
    if kinds.contains(&2) {
        for pair in parts.uri.query().unwrap_or("").split('&') {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            assert_ne!(form_decode(key).as_deref(), Some(PARAM), "{pair:?} went on");
        }
    } else {
        assert_eq!(parts.uri, sent_uri);
    }
});
