use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, body::Body, response::Response, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderValue, Request, StatusCode, header, request::Parts};
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::{ConfigError, Rejection, test_support::nz};

const TOKEN: &str = "tok-alice";

fn static_tokens() -> StaticTokens<String> {
    StaticTokens::new()
        .token(TOKEN, "alice", "alice-identity".to_owned())
        .token("tok-bob", "bob", "bob-identity".to_owned())
}

fn all_sources() -> Vec<CredentialSource> {
    vec![
        CredentialSource::authorization(),
        CredentialSource::subprotocol("bearer.").unwrap(),
        CredentialSource::query("access_token").unwrap(),
        CredentialSource::cookie("session").unwrap(),
    ]
}

fn handshake(uri: &str) -> http::request::Builder {
    Request::get(uri)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
}

/// What came out of the layer, and what the inner service saw (if it was reached).
struct Outcome {
    response: Response,
    inner: Option<Request<Body>>,
}

/// Sends `req` through `layer` in front of a `tower_test` mock that answers 200 and echoes
/// the `Sec-WebSocket-Protocol` it received, as a naive server that selects the first offered
/// protocol would.
async fn run<A: Authenticator>(layer: HandshakeAuthLayer<A>, req: Request<Body>) -> Outcome {
    let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
    let svc = layer.layer(mock);
    let inner = async move {
        let (req, send) = handle.next_request().await?;
        let mut res = Response::new(Body::from("inner"));
        if let Some(protocol) = req.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
            res.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        send.send_response(res);
        Some(req)
    };
    let (response, inner) = tokio::join!(svc.oneshot(req), inner);
    Outcome {
        response: response.expect("the mock never fails"),
        inner,
    }
}

/// Asserts the response of a rejected request: status, challenge and the error extension.
fn assert_rejected(name: &str, outcome: &Outcome, err: &AuthError) {
    let res = &outcome.response;
    let (status, challenge) = match err {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, "Bearer"),
        AuthError::Malformed => (
            StatusCode::BAD_REQUEST,
            r#"Bearer error="invalid_request", error_description="the credential is malformed""#,
        ),
        AuthError::Invalid => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer error="invalid_token", error_description="the credential is not valid""#,
        ),
        AuthError::Expired => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer error="invalid_token", error_description="the credential has expired""#,
        ),
        AuthError::TooManyTickets { .. } => {
            assert_eq!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "{name}: status"
            );
            assert!(res.headers().contains_key(header::RETRY_AFTER), "{name}");
            assert_eq!(res.extensions().get::<AuthError>(), Some(err), "{name}");
            return;
        }
    };
    assert_eq!(res.status(), status, "{name}: status");
    assert_eq!(
        res.headers().get(header::WWW_AUTHENTICATE).unwrap(),
        challenge,
        "{name}: challenge"
    );
    assert_eq!(
        res.extensions().get::<AuthError>(),
        Some(err),
        "{name}: error extension"
    );
    assert!(
        outcome.inner.is_none(),
        "{name}: the inner service must not be reached"
    );
}

struct Case {
    name: &'static str,
    sources: Vec<CredentialSource>,
    request: http::request::Builder,
    /// `Ok((subject, uri, subprotocol header the inner service sees))` or the rejection.
    expect: Result<(&'static str, &'static str, Option<&'static str>), AuthError>,
}

async fn check(cases: Vec<Case>) {
    for case in cases {
        let layer = HandshakeAuthLayer::new(static_tokens()).sources(case.sources);
        let outcome = run(layer, case.request.body(Body::empty()).unwrap()).await;
        let name = case.name;
        match case.expect {
            Ok((subject, uri, protocol)) => {
                assert_eq!(outcome.response.status(), StatusCode::OK, "{name}: status");
                let inner = outcome.inner.as_ref().expect("inner reached");
                let principal = inner.extensions().get::<Principal>().expect("principal");
                assert_eq!(principal.subject(), subject, "{name}: subject");
                assert_eq!(principal.expires_at(), None, "{name}: expiry");
                let identity = inner.extensions().get::<String>().expect("identity");
                assert_eq!(identity, &format!("{subject}-identity"), "{name}: identity");
                assert_eq!(inner.uri(), uri, "{name}: uri");
                assert_eq!(
                    inner.headers().get(header::SEC_WEBSOCKET_PROTOCOL),
                    protocol.map(HeaderValue::from_static).as_ref(),
                    "{name}: subprotocol header"
                );
                assert_eq!(
                    inner
                        .headers()
                        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                        .iter()
                        .count(),
                    usize::from(protocol.is_some()),
                    "{name}: one subprotocol header at most"
                );
                let echoed = outcome
                    .response
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL);
                assert!(
                    echoed.is_none_or(|v| !v.to_str().unwrap().contains("tok-")),
                    "{name}: the token must never be echoed"
                );
                assert!(outcome.response.extensions().get::<AuthError>().is_none());
            }
            Err(err) => assert_rejected(name, &outcome, &err),
        }
    }
}

#[tokio::test]
async fn every_source() {
    let all = all_sources;
    let only = |s: CredentialSource| vec![s];
    check(vec![
        Case {
            name: "authorization header",
            sources: all(),
            request: handshake("/ws").header(header::AUTHORIZATION, "Bearer tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "authorization scheme is case-insensitive",
            sources: all(),
            request: handshake("/ws").header(header::AUTHORIZATION, "bEaReR   tok-bob"),
            expect: Ok(("bob", "/ws", None)),
        },
        Case {
            name: "authorization with another scheme is not ours",
            sources: only(CredentialSource::authorization()),
            request: handshake("/ws").header(header::AUTHORIZATION, "Basic YWxpY2U6cHc="),
            expect: Err(AuthError::Missing),
        },
        Case {
            name: "authorization without a token",
            sources: all(),
            request: handshake("/ws").header(header::AUTHORIZATION, "Bearer"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "authorization twice",
            sources: all(),
            request: handshake("/ws")
                .header(header::AUTHORIZATION, "Bearer tok-alice")
                .header(header::AUTHORIZATION, "Bearer tok-bob"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "authorization with a wrong token",
            sources: all(),
            request: handshake("/ws").header(header::AUTHORIZATION, "Bearer tok-mallory"),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "nothing anywhere",
            sources: all(),
            request: handshake("/ws").header(header::SEC_WEBSOCKET_PROTOCOL, "chat"),
            expect: Err(AuthError::Missing),
        },
        Case {
            name: "subprotocol before the app protocol",
            sources: all(),
            request: handshake("/ws")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-alice, chat"),
            expect: Ok(("alice", "/ws", Some("chat"))),
        },
        Case {
            name: "subprotocol between app protocols",
            sources: all(),
            request: handshake("/ws").header(
                header::SEC_WEBSOCKET_PROTOCOL,
                "chat.v2,bearer.tok-alice , chat.v1",
            ),
            expect: Ok(("alice", "/ws", Some("chat.v2, chat.v1"))),
        },
        Case {
            name: "subprotocol alone: the header goes",
            sources: all(),
            request: handshake("/ws").header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "subprotocol across two headers",
            sources: all(),
            request: handshake("/ws")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "chat")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-bob"),
            expect: Ok(("bob", "/ws", Some("chat"))),
        },
        Case {
            name: "subprotocol token twice",
            sources: all(),
            request: handshake("/ws").header(
                header::SEC_WEBSOCKET_PROTOCOL,
                "bearer.tok-alice, bearer.tok-bob, chat",
            ),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "subprotocol prefix without a token",
            sources: all(),
            request: handshake("/ws").header(header::SEC_WEBSOCKET_PROTOCOL, "bearer., chat"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "subprotocol prefix is case-sensitive",
            sources: only(CredentialSource::subprotocol("bearer.").unwrap()),
            request: handshake("/ws").header(header::SEC_WEBSOCKET_PROTOCOL, "Bearer.tok-alice"),
            expect: Err(AuthError::Missing),
        },
        Case {
            name: "subprotocol with a wrong token",
            sources: all(),
            request: handshake("/ws")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-eve, chat"),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "query parameter among others",
            sources: all(),
            request: handshake("/ws?room=1&access_token=tok-alice&x=%20y"),
            expect: Ok(("alice", "/ws?room=1&x=%20y", None)),
        },
        Case {
            name: "query parameter alone: the query goes",
            sources: all(),
            request: handshake("/ws?access_token=tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "query parameter percent-encoded",
            sources: all(),
            request: handshake("/ws?%61ccess_token=%74ok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "query parameter twice",
            sources: all(),
            request: handshake("/ws?access_token=tok-alice&access_token=tok-bob"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "query parameter with a broken escape",
            sources: all(),
            request: handshake("/ws?access_token=tok%2"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "query parameter empty",
            sources: all(),
            request: handshake("/ws?access_token="),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "query parameter with a space",
            sources: all(),
            request: handshake("/ws?access_token=tok+alice"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "other query parameters only",
            sources: all(),
            request: handshake("/ws?token=tok-alice"),
            expect: Err(AuthError::Missing),
        },
        Case {
            name: "cookie among others",
            sources: all(),
            request: handshake("/ws")
                .header(header::COOKIE, "theme=dark; session=tok-alice; lang=en"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "cookie quoted, odd spacing",
            sources: all(),
            request: handshake("/ws").header(header::COOKIE, "theme=dark;session = \"tok-bob\" ;"),
            expect: Ok(("bob", "/ws", None)),
        },
        Case {
            name: "cookie in the second Cookie header",
            sources: all(),
            request: handshake("/ws")
                .header(header::COOKIE, "theme=dark")
                .header(header::COOKIE, "session=tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "cookie twice with the same value",
            sources: all(),
            request: handshake("/ws")
                .header(header::COOKIE, "session=tok-alice; session=tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "cookie twice with different values (cookie tossing)",
            sources: all(),
            request: handshake("/ws").header(header::COOKIE, "session=tok-evil; session=tok-alice"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "cookie next to garbage",
            sources: all(),
            request: handshake("/ws").header(
                header::COOKIE,
                HeaderValue::from_bytes(b"junk; =x; \xff\xfe=\xff; session=tok-alice").unwrap(),
            ),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "cookie with a non-UTF-8 value",
            sources: all(),
            request: handshake("/ws").header(
                header::COOKIE,
                HeaderValue::from_bytes(b"session=tok-\xff").unwrap(),
            ),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "cookie named like a suffix",
            sources: all(),
            request: handshake("/ws").header(header::COOKIE, "xsession=tok-alice"),
            expect: Err(AuthError::Missing),
        },
        Case {
            name: "a source that is not configured is not read",
            sources: only(CredentialSource::authorization()),
            request: handshake("/ws?access_token=tok-alice")
                .header(header::COOKIE, "session=tok-alice"),
            expect: Err(AuthError::Missing),
        },
    ])
    .await;
}

#[tokio::test]
async fn sources_are_tried_in_order_and_all_stripped() {
    let sub = || CredentialSource::subprotocol("bearer.").unwrap();
    let query = || CredentialSource::query("access_token").unwrap();
    let cookie = || CredentialSource::cookie("session").unwrap();
    check(vec![
        Case {
            name: "first source decides (good before bad)",
            sources: vec![sub(), query()],
            request: handshake("/ws?access_token=tok-eve&a=b")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-alice, chat"),
            expect: Ok(("alice", "/ws?a=b", Some("chat"))),
        },
        Case {
            name: "first source decides (bad before good)",
            sources: vec![query(), sub()],
            request: handshake("/ws?access_token=tok-eve")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-alice, chat"),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "the other order, and the subprotocol token is stripped anyway",
            sources: vec![query(), sub()],
            request: handshake("/ws?access_token=tok-bob")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "bearer.tok-eve, chat"),
            expect: Ok(("bob", "/ws", Some("chat"))),
        },
        Case {
            name: "a malformed first source decides",
            sources: vec![cookie(), query()],
            request: handshake("/ws?access_token=tok-alice").header(header::COOKIE, "session=a b"),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "an empty first source is skipped",
            sources: vec![cookie(), sub(), query()],
            request: handshake("/ws?access_token=tok-alice"),
            expect: Ok(("alice", "/ws", None)),
        },
        Case {
            name: "no sources accept nothing",
            sources: vec![],
            request: handshake("/ws").header(header::AUTHORIZATION, "Bearer tok-alice"),
            expect: Err(AuthError::Missing),
        },
    ])
    .await;
}

/// Found by `credential_sources_give_a_precise_answer_and_strip_every_token`: a
/// `Sec-WebSocket-Protocol` line with a non-ASCII byte could not be read, so its token entry
/// was not stripped, and when an earlier source decided the handshake went on with it.
#[tokio::test]
async fn an_unreadable_subprotocol_header_never_reaches_the_service() {
    let layer = HandshakeAuthLayer::new(static_tokens()).sources(all_sources());
    let req = handshake("/ws")
        .header(header::AUTHORIZATION, "Bearer tok-alice")
        .header(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"bearer.tok-bob, chat\x80").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    let outcome = run(layer, req).await;
    assert_eq!(outcome.response.status(), StatusCode::OK);
    let inner = outcome.inner.expect("alice is let through");
    assert_eq!(inner.headers().get(header::SEC_WEBSOCKET_PROTOCOL), None);
}

/// Found by the `credential` fuzz target: an entry with a space in it (`u bearer.tok-bob`)
/// is no subprotocol name, and the token in its second word was neither counted nor
/// stripped: a second credential went on to the service, where two token entries are
/// refused as malformed.
#[tokio::test]
async fn a_token_in_a_word_of_a_subprotocol_entry_is_counted_and_stripped() {
    let protocols = |value: &'static str| {
        handshake("/ws")
            .header(header::SEC_WEBSOCKET_PROTOCOL, value)
            .body(Body::empty())
            .unwrap()
    };
    let seen = |outcome: Outcome| {
        assert_eq!(outcome.response.status(), StatusCode::OK);
        let inner = outcome.inner.expect("the handshake is let through");
        inner
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let sub = || {
        HandshakeAuthLayer::new(static_tokens())
            .sources([CredentialSource::subprotocol("bearer.").unwrap()])
    };
    // Two tokens, one in a word: malformed, as two token entries are.
    let outcome = run(sub(), protocols("chat, u bearer.tok-bob, bearer.tok-alice")).await;
    assert_eq!(outcome.response.status(), StatusCode::BAD_REQUEST);
    assert!(outcome.inner.is_none());
    // One token, in a word: found, and stripped; the entry's other words and the other
    // entries go on.
    let outcome = run(sub(), protocols("chat, v2 bearer.tok-alice")).await;
    assert_eq!(seen(outcome).as_deref(), Some("chat, v2"));
    // Another source decides: the token word is stripped all the same.
    let layer = HandshakeAuthLayer::new(static_tokens()).sources(all_sources());
    let req = handshake("/ws")
        .header(header::AUTHORIZATION, "Bearer tok-alice")
        .header(header::SEC_WEBSOCKET_PROTOCOL, "chat,u\tbearer.tok-bob")
        .body(Body::empty())
        .unwrap();
    assert_eq!(seen(run(layer, req).await).as_deref(), Some("chat, u"));
    // Entries without a token are left as they are, spaces and all.
    let outcome = run(sub(), protocols("chat v2, bearer.tok-alice")).await;
    assert_eq!(seen(outcome).as_deref(), Some("chat v2"));
}

#[tokio::test]
async fn long_credentials_are_refused_before_the_authenticator() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let auth = move |_: &Parts, c: Credential| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Verified::new((), Principal::new(c.token(), None))))
    };
    let layer = HandshakeAuthLayer::new(auth).max_credential_len(nz(16));
    let outcome = run(
        layer.clone(),
        handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {}", "a".repeat(17)))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_rejected("too long", &outcome, &AuthError::Malformed);
    let outcome = run(
        layer,
        handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {}", "a".repeat(16)))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(outcome.response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_source_names_are_config_errors() {
    for bad in ["", "bearer token", "a,b", "ü", "x;y", "t=1"] {
        assert!(CredentialSource::subprotocol(bad).is_err(), "{bad:?}");
        assert!(CredentialSource::query(bad).is_err(), "{bad:?}");
        assert!(CredentialSource::cookie(bad).is_err(), "{bad:?}");
    }
    assert!(CredentialSource::subprotocol("bearer.").is_ok());
    assert!(CredentialSource::query("access_token").is_ok());
}

#[tokio::test]
async fn closure_authenticators_see_the_request_and_can_fail() {
    // An async lookup that only admits tokens for the path they were issued for.
    let auth = |parts: &Parts, credential: Credential| {
        let path = parts.uri.path().to_owned();
        async move {
            tokio::task::yield_now().await;
            match (credential.token(), path.as_str(), credential.source()) {
                ("room-1", "/rooms/1", SourceKind::Query) => Ok(Verified::new(
                    7u32,
                    Principal::new("user-7", Some(UNIX_EPOCH + Duration::from_secs(100))),
                )),
                ("expired", _, _) => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid),
            }
        }
    };
    let layer = HandshakeAuthLayer::new(auth).sources([CredentialSource::query("t").unwrap()]);
    let req = |uri: &str| handshake(uri).body(Body::empty()).unwrap();

    let ok = run(layer.clone(), req("/rooms/1?t=room-1")).await;
    assert_eq!(ok.response.status(), StatusCode::OK);
    let inner = ok.inner.unwrap();
    assert_eq!(inner.extensions().get::<u32>(), Some(&7));
    assert_eq!(
        inner.extensions().get::<Principal>(),
        Some(&Principal::new(
            "user-7",
            Some(UNIX_EPOCH + Duration::from_secs(100))
        ))
    );
    assert_eq!(inner.uri(), "/rooms/1");

    let wrong_room = run(layer.clone(), req("/rooms/2?t=room-1")).await;
    assert_rejected("wrong room", &wrong_room, &AuthError::Invalid);
    let expired = run(layer, req("/rooms/1?t=expired")).await;
    assert_rejected("expired", &expired, &AuthError::Expired);
}

#[tokio::test]
async fn custom_rejections_still_carry_the_error() {
    let layer = HandshakeAuthLayer::new(static_tokens()).on_rejection(|rejection: &Rejection| {
        let mut res = Response::new(Body::from(format!("nope: {rejection}")));
        *res.status_mut() = StatusCode::IM_A_TEAPOT;
        res
    });
    for (header_value, err) in [
        (None, AuthError::Missing),
        (Some(&b"Bearer tok-eve"[..]), AuthError::Invalid),
        (Some(&b"Bearer tok-\xff"[..]), AuthError::Malformed),
    ] {
        let mut req = handshake("/ws");
        if let Some(v) = header_value {
            req = req.header(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        let outcome = run(layer.clone(), req.body(Body::empty()).unwrap()).await;
        assert_eq!(outcome.response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(outcome.response.extensions().get::<AuthError>(), Some(&err));
        assert_eq!(
            outcome.response.extensions().get::<Rejection>(),
            Some(&Rejection::Auth(err.clone()))
        );
        assert!(
            !outcome
                .response
                .headers()
                .contains_key(header::WWW_AUTHENTICATE),
            "the hook's response gets no challenge added"
        );
        assert!(outcome.inner.is_none());
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_700_000_000)))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn clock(&self) -> impl Fn() -> SystemTime + Send + Sync + 'static {
        let now = self.0.clone();
        move || UNIX_EPOCH + Duration::from_secs(now.load(Ordering::SeqCst))
    }
}

fn key(id: &str, fill: u8) -> TicketKey {
    TicketKey::new(id, [fill; 32]).unwrap()
}

fn flip(token: &str, segment: usize, byte: usize, bit: u8) -> String {
    let mut segments: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut bytes = URL_SAFE_NO_PAD.decode(&segments[segment]).unwrap();
    bytes[byte] ^= 1 << bit;
    segments[segment] = URL_SAFE_NO_PAD.encode(bytes);
    segments.join(".")
}

#[test]
fn tickets_verify_expire_and_resist_tampering() {
    let time = ManualClock::new();
    let issuer = TicketIssuer::new(key("k1", 1))
        .ttl(Duration::from_secs(30))
        .clock(time.clock());
    let verifier = TicketVerifier::new(key("k1", 1)).clock(time.clock());
    let ticket = issuer.issue("alice");

    struct Case {
        name: &'static str,
        token: String,
        verifier: TicketVerifier,
        expect: Result<&'static str, AuthError>,
    }
    let other_secret = TicketVerifier::new(key("k1", 2)).clock(time.clock());
    let other_id = TicketVerifier::new(key("k2", 1)).clock(time.clock());
    let cases = vec![
        Case {
            name: "valid",
            token: ticket.clone(),
            verifier: verifier.clone(),
            expect: Ok("alice"),
        },
        Case {
            name: "bit flipped in the payload",
            token: flip(&ticket, 1, 3, 0),
            verifier: verifier.clone(),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "bit flipped in the tag",
            token: flip(&ticket, 2, 31, 7),
            verifier: verifier.clone(),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "key id changed",
            token: ticket.replacen("k1.", "k2.", 1),
            verifier: verifier.clone(),
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "same key id, wrong secret",
            token: ticket.clone(),
            verifier: other_secret,
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "unknown key id",
            token: ticket.clone(),
            verifier: other_id,
            expect: Err(AuthError::Invalid),
        },
        Case {
            name: "truncated tag",
            token: ticket[..ticket.len() - 2].to_owned(),
            verifier: verifier.clone(),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "two segments",
            token: ticket.rsplit_once('.').unwrap().0.to_owned(),
            verifier: verifier.clone(),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "four segments",
            token: format!("{ticket}.x"),
            verifier: verifier.clone(),
            expect: Err(AuthError::Malformed),
        },
        Case {
            name: "garbage",
            token: "not a ticket".into(),
            verifier: verifier.clone(),
            expect: Err(AuthError::Malformed),
        },
    ];
    for case in cases {
        let got = case.verifier.verify(&case.token);
        match case.expect {
            Ok(subject) => assert_eq!(got.unwrap().subject(), subject, "{}", case.name),
            Err(err) => assert_eq!(got.unwrap_err(), err, "{}", case.name),
        }
    }

    // Every single-bit change of the ticket text is refused.
    let bytes = ticket.as_bytes();
    for i in 0..bytes.len() {
        for bit in 0..7 {
            let mut changed = bytes.to_vec();
            changed[i] ^= 1 << bit;
            let Ok(changed) = String::from_utf8(changed) else {
                continue;
            };
            assert!(verifier.verify(&changed).is_err(), "byte {i} bit {bit}");
        }
    }

    // Expiry, by the fake clock.
    time.advance(29);
    let t = verifier.verify(&ticket).unwrap();
    assert_eq!(
        t.expires_at(),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 30)
    );
    time.advance(1);
    assert_eq!(verifier.verify(&ticket), Err(AuthError::Expired));
}

#[test]
fn tickets_carry_claims() {
    let issuer = TicketIssuer::new(key("k1", 1));
    let mut claims = serde_json::Map::new();
    claims.insert("room".into(), serde_json::json!("lobby"));
    claims.insert("admin".into(), serde_json::json!(false));
    let ticket = issuer.issue_with_claims("bob", claims.clone());
    let verified = TicketVerifier::new(key("k1", 1)).verify(&ticket).unwrap();
    assert_eq!(verified.subject(), "bob");
    assert_eq!(verified.claims(), &claims);
    assert_eq!(verified.claim("room"), Some(&serde_json::json!("lobby")));
    assert_eq!(verified.key_id(), "k1");
    // Two tickets for the same subject differ (nonce).
    assert_ne!(issuer.issue("bob"), issuer.issue("bob"));
}

#[test]
fn ticket_keys_rotate() {
    let old = key("2024-05", 1);
    let new = key("2024-06", 2);
    let old_ticket = TicketIssuer::new(old.clone()).issue("alice");
    let new_ticket = TicketIssuer::new(new.clone()).issue("alice");

    let during = TicketVerifier::new(old.clone()).key(new.clone());
    assert_eq!(during.verify(&old_ticket).unwrap().key_id(), "2024-05");
    assert_eq!(during.verify(&new_ticket).unwrap().key_id(), "2024-06");

    let after = TicketVerifier::new(new.clone());
    assert_eq!(after.verify(&old_ticket), Err(AuthError::Invalid));
    assert!(after.verify(&new_ticket).is_ok());

    // Re-adding a key id replaces that key.
    let replaced = TicketVerifier::new(old).key(key("2024-05", 9));
    assert_eq!(replaced.verify(&old_ticket), Err(AuthError::Invalid));
}

#[test]
fn ticket_key_validation() {
    assert_eq!(
        TicketKey::new("k", [0; 31]).unwrap_err(),
        ConfigError::WeakKey { len: 31 }
    );
    for id in ["", "has space", "dot.ted", &"x".repeat(33)] {
        assert!(matches!(
            TicketKey::new(id, [0; 32]),
            Err(ConfigError::InvalidKeyId { .. })
        ));
    }
    let generated = TicketKey::generate("gen").unwrap();
    assert!(!format!("{generated:?}").contains("mac"));
    assert!(format!("{generated:?}").contains("<redacted>"));
}

#[test]
fn one_time_tickets_cannot_be_replayed_and_the_cache_stays_bounded() {
    let time = ManualClock::new();
    let issuer = TicketIssuer::new(key("k1", 1))
        .ttl(Duration::from_secs(10))
        .clock(time.clock());
    let verifier = TicketVerifier::new(key("k1", 1))
        .clock(time.clock())
        .one_time(nz(2));

    let first = issuer.issue("alice");
    assert!(verifier.verify(&first).is_ok());
    assert_eq!(verifier.verify(&first), Err(AuthError::Invalid), "replay");
    // Clones share the cache.
    assert_eq!(verifier.clone().verify(&first), Err(AuthError::Invalid));

    // A forged ticket never takes a slot.
    assert!(verifier.verify(&flip(&issuer.issue("x"), 2, 0, 0)).is_err());
    assert_eq!(verifier.replay_len(), Some(1));

    time.advance(5);
    let second = issuer.issue("bob");
    assert!(verifier.verify(&second).is_ok());
    // Full of unexpired tickets: fail closed.
    let third = issuer.issue("carol");
    assert_eq!(verifier.verify(&third), Err(AuthError::Invalid));
    assert_eq!(verifier.replay_len(), Some(2));

    // The first ticket expires and is evicted, making room.
    time.advance(5);
    assert_eq!(verifier.verify(&third), Ok(verifier_ticket(&third)));
    assert_eq!(verifier.replay_len(), Some(2));
    // Expired tickets stay refused once evicted, as expired.
    assert_eq!(verifier.verify(&first), Err(AuthError::Expired));
    time.advance(10);
    let fourth = issuer.issue("dave");
    assert!(verifier.verify(&fourth).is_ok());
    assert_eq!(verifier.replay_len(), Some(1));

    fn verifier_ticket(token: &str) -> Ticket {
        // What a verifier without replay protection says about the same ticket.
        TicketVerifier::new(key("k1", 1))
            .clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_010))
            .verify(token)
            .unwrap()
    }
}

#[test]
fn the_replay_cache_is_safe_under_concurrent_use() {
    const THREADS: usize = 8;
    const TICKETS: usize = 50;
    let issuer = TicketIssuer::new(key("k1", 1));
    let verifier = TicketVerifier::new(key("k1", 1)).one_time(nz(THREADS * TICKETS));
    let tickets: Arc<Vec<String>> = Arc::new(
        (0..TICKETS)
            .map(|i| issuer.issue(format!("u{i}")))
            .collect(),
    );
    let accepted = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let tickets = tickets.clone();
            let verifier = verifier.clone();
            let accepted = accepted.clone();
            scope.spawn(move || {
                // Every thread tries every ticket: each must be accepted exactly once.
                for ticket in tickets.iter() {
                    if let Ok(t) = verifier.verify(ticket) {
                        accepted.lock().unwrap().push(t.subject().to_owned());
                    }
                }
            });
        }
    });
    let mut accepted = accepted.lock().unwrap().clone();
    accepted.sort();
    let mut expected: Vec<String> = (0..TICKETS).map(|i| format!("u{i}")).collect();
    expected.sort();
    assert_eq!(accepted, expected);
    assert_eq!(verifier.replay_len(), Some(TICKETS));
}

#[tokio::test]
async fn tickets_through_the_layer() {
    let time = ManualClock::new();
    let issuer = TicketIssuer::new(key("k1", 1))
        .ttl(Duration::from_secs(60))
        .clock(time.clock());
    let verifier = TicketVerifier::new(key("k1", 1))
        .clock(time.clock())
        .one_time(nz(100));
    let layer = HandshakeAuthLayer::new(verifier)
        .sources([CredentialSource::subprotocol("ticket.").unwrap()]);
    let req = |ticket: &str| {
        handshake("/ws")
            .header(
                header::SEC_WEBSOCKET_PROTOCOL,
                format!("ticket.{ticket}, chat.v1"),
            )
            .body(Body::empty())
            .unwrap()
    };

    let ticket = issuer.issue("alice");
    let ok = run(layer.clone(), req(&ticket)).await;
    assert_eq!(ok.response.status(), StatusCode::OK);
    assert_eq!(
        ok.response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
        "chat.v1"
    );
    let inner = ok.inner.unwrap();
    let principal = inner.extensions().get::<Principal>().unwrap();
    assert_eq!(principal.subject(), "alice");
    assert_eq!(
        principal.expires_at(),
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_060))
    );
    assert_eq!(
        inner.extensions().get::<Ticket>().unwrap().subject(),
        "alice"
    );

    assert_rejected(
        "replayed",
        &run(layer.clone(), req(&ticket)).await,
        &AuthError::Invalid,
    );
    assert_rejected(
        "tampered",
        &run(layer.clone(), req(&flip(&issuer.issue("alice"), 1, 0, 1))).await,
        &AuthError::Invalid,
    );
    assert_rejected(
        "malformed",
        &run(layer.clone(), req("x.y")).await,
        &AuthError::Malformed,
    );
    let late = issuer.issue("alice");
    time.advance(60);
    assert_rejected(
        "expired",
        &run(layer, req(&late)).await,
        &AuthError::Expired,
    );
}

#[test]
fn static_tokens_match_exactly() {
    let tokens = static_tokens();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens.verify("tok-alice").unwrap().principal().subject(),
        "alice"
    );
    assert_eq!(tokens.verify("tok-bob").unwrap().identity(), "bob-identity");
    for wrong in ["", "tok-alic", "tok-alicee", "TOK-ALICE", "tok-bob "] {
        assert_eq!(
            tokens.verify(wrong).unwrap_err(),
            AuthError::Invalid,
            "{wrong:?}"
        );
    }
    assert!(StaticTokens::<()>::new().verify("anything").is_err());
    assert!(!format!("{tokens:?}").contains("tok-"));
}

async fn whoami(Identity(who): Identity<String>) -> String {
    who
}

async fn maybe(who: Option<Identity<String>>) -> String {
    who.map_or_else(|| "anonymous".to_owned(), |Identity(w)| w)
}

#[tokio::test]
async fn the_extractor_fails_closed_without_the_layer() {
    let plain = Router::new()
        .route("/", get(whoami))
        .route("/maybe", get(maybe));
    let guarded = Router::new()
        .route("/", get(whoami))
        .layer(HandshakeAuthLayer::new(static_tokens()));
    let wrong_type = Router::new()
        .route(
            "/",
            get(|Identity(n): Identity<u64>| async move { n.to_string() }),
        )
        .layer(HandshakeAuthLayer::new(static_tokens()));

    let get_with = |token: Option<&str>, uri: &str| {
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Body::empty()).unwrap()
    };
    async fn body(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    let res = plain
        .clone()
        .oneshot(get_with(Some(TOKEN), "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.extensions().get::<AuthError>().is_none());
    assert!(body(res).await.contains("not configured"));

    let res = plain.oneshot(get_with(None, "/maybe")).await.unwrap();
    assert_eq!(body(res).await, "anonymous");

    let res = wrong_type
        .oneshot(get_with(Some(TOKEN), "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let res = guarded
        .clone()
        .oneshot(get_with(Some(TOKEN), "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "alice-identity");
    let res = guarded.oneshot(get_with(Some("nope"), "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// Runs `f` on a current-thread runtime; returns its output and the events it logged, one
/// `name fields` line each.
fn with_logs<F: Future>(f: impl FnOnce() -> F) -> (F::Output, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let capture = crate::test_support::capture();
    let out = rt.block_on(f());
    let text = capture
        .events()
        .into_iter()
        .map(|(name, fields)| format!("{name} {fields}\n"))
        .collect();
    (out, text)
}

#[test]
fn failures_are_logged_without_the_token() {
    let secret_ish = "tok-mallory-guess-123";
    let (outcome, logs) = with_logs(|| async {
        let mut req = handshake("/ws?access_token=x")
            .header(header::COOKIE, format!("session={secret_ish}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(crate::client_ip::ClientIp("192.0.2.7".parse().unwrap()));
        let layer = HandshakeAuthLayer::new(static_tokens()).sources([
            CredentialSource::cookie("session").unwrap(),
            CredentialSource::query("access_token").unwrap(),
        ]);
        run(layer, req).await
    });
    assert_rejected("logged", &outcome, &AuthError::Invalid);
    assert!(
        logs.contains("wsguard.auth.rejected") || logs.contains("handshake authentication failed"),
        "{logs}"
    );
    assert!(
        logs.contains("cause=\"invalid\"") || logs.contains("cause=invalid"),
        "{logs}"
    );
    assert!(logs.contains("192.0.2.7"), "{logs}");
    assert!(logs.contains("cookie"), "{logs}");
    assert!(!logs.contains(secret_ish), "{logs}");
}

#[test]
fn the_replay_cache_bounds_each_subject_and_purges_expired_tickets() {
    let time = ManualClock::new();
    let issuer = TicketIssuer::new(key("k1", 1))
        .ttl(Duration::from_secs(10))
        .clock(time.clock());
    let verifier = TicketVerifier::new(key("k1", 1))
        .clock(time.clock())
        .one_time(nz(10))
        .tickets_per_subject(std::num::NonZeroUsize::new(2).unwrap());

    assert!(verifier.verify(&issuer.issue("alice")).is_ok());
    assert!(verifier.verify(&issuer.issue("alice")).is_ok());
    // Alice's share is used up: refused until her oldest ticket expires, 10 s from now.
    let third = issuer.issue("alice");
    assert_eq!(
        verifier.verify(&third),
        Err(AuthError::TooManyTickets {
            retry_after: Duration::from_secs(10)
        })
    );
    // Bob is not affected.
    assert!(verifier.verify(&issuer.issue("bob")).is_ok());
    assert_eq!(verifier.replay_len(), Some(3));

    time.advance(4);
    let fourth = issuer.issue("alice");
    assert_eq!(
        verifier.verify(&fourth),
        Err(AuthError::TooManyTickets {
            retry_after: Duration::from_secs(6)
        })
    );
    // The first three tickets expire and are purged; alice gets in again.
    time.advance(6);
    assert!(verifier.verify(&fourth).is_ok());
    assert_eq!(verifier.replay_len(), Some(1));
    assert_eq!(verifier.verify(&third), Err(AuthError::Expired));
    assert_eq!(verifier.verify(&fourth), Err(AuthError::Invalid), "replay");
}

#[test]
fn a_full_replay_cache_is_shared_fairly_between_subjects() {
    let time = ManualClock::new();
    let issuer = TicketIssuer::new(key("k1", 1))
        .ttl(Duration::from_secs(60))
        .clock(time.clock());
    let verifier = TicketVerifier::new(key("k1", 1))
        .clock(time.clock())
        .one_time(nz(4))
        .tickets_per_subject(std::num::NonZeroUsize::new(4).unwrap());
    // Alice fills the whole cache, one ticket a second.
    let mut alice = Vec::new();
    for _ in 0..4 {
        let ticket = issuer.issue("alice");
        assert!(verifier.verify(&ticket).is_ok());
        alice.push(ticket);
        time.advance(1);
    }
    // Bob, Carol and Dave still get in: Alice gives up her oldest tickets, one each.
    for subject in ["bob", "carol", "dave"] {
        assert!(verifier.verify(&issuer.issue(subject)).is_ok(), "{subject}");
        time.advance(1);
    }
    assert_eq!(verifier.replay_len(), Some(4));
    // The tickets Alice gave up are refused (they may have been used), not replayable.
    for ticket in &alice[..3] {
        assert_eq!(verifier.verify(ticket), Err(AuthError::Invalid));
        assert_eq!(verifier.check(ticket), Err(AuthError::Invalid));
    }
    assert_eq!(
        verifier.verify(&alice[3]),
        Err(AuthError::Invalid),
        "replay"
    );
    // One ticket each: nobody gives up more, the next subject is refused (fail closed).
    assert_eq!(
        verifier.verify(&issuer.issue("erin")),
        Err(AuthError::Invalid)
    );
    assert_eq!(
        verifier.verify(&issuer.issue("alice")),
        Err(AuthError::Invalid)
    );
    // Everything expires; the cache is empty again, Alice's floor included.
    time.advance(60);
    assert!(verifier.verify(&issuer.issue("alice")).is_ok());
    assert_eq!(verifier.replay_len(), Some(1));
}

#[test]
fn checking_a_one_time_ticket_does_not_use_it_up() {
    let issuer = TicketIssuer::new(key("k1", 1));
    let verifier = TicketVerifier::new(key("k1", 1)).one_time(nz(10));
    let ticket = issuer.issue("alice");
    assert_eq!(verifier.check(&ticket).unwrap().subject(), "alice");
    assert!(verifier.check(&ticket).is_ok());
    assert_eq!(verifier.replay_len(), Some(0));
    assert!(verifier.verify(&ticket).is_ok());
    assert_eq!(verifier.check(&ticket), Err(AuthError::Invalid), "used");
    assert_eq!(verifier.check("garbage"), Err(AuthError::Malformed));
}

/// 9999-12-31T23:59:59Z, where dates saturate.
fn max_date() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

#[test]
fn extreme_ticket_settings_saturate() {
    let issuer = TicketIssuer::new(key("k1", 1)).ttl(Duration::MAX);
    let verifier = TicketVerifier::new(key("k1", 1)).one_time(nz(10));
    let ticket = verifier.verify(&issuer.issue("alice")).unwrap();
    assert_eq!(ticket.expires_at(), max_date());
    let issuer = TicketIssuer::new(key("k1", 1)).ttl(Duration::from_secs(u64::MAX));
    assert_eq!(
        verifier.verify(&issuer.issue("bob")).unwrap().expires_at(),
        max_date()
    );
    // A clock before 1970 does not underflow either.
    let issuer = TicketIssuer::new(key("k1", 1))
        .clock(|| UNIX_EPOCH - Duration::from_secs(1000))
        .ttl(Duration::MAX);
    assert_eq!(
        verifier
            .verify(&issuer.issue("carol"))
            .unwrap()
            .expires_at(),
        max_date()
    );
}

#[test]
fn token_fingerprints_name_the_signed_part() {
    use sha2::Digest;
    let whole = |t: &str| -> [u8; 32] { sha2::Sha256::digest(t.as_bytes()).into() };
    struct Case {
        name: &'static str,
        a: &'static str,
        b: &'static str,
        same: bool,
    }
    let cases = [
        Case {
            name: "JWS shape: another signature is the same token",
            a: "aGVhZA.Ym9keQ.c2ln",
            b: "aGVhZA.Ym9keQ.b3RoZXI",
            same: true,
        },
        Case {
            name: "another payload is another token",
            a: "aGVhZA.Ym9keQ.c2ln",
            b: "aGVhZA.Ym9keTI.c2ln",
            same: false,
        },
        Case {
            name: "the signed part alone is not the token",
            a: "aGVhZA.Ym9keQ.c2ln",
            b: "aGVhZA.Ym9keQ",
            same: false,
        },
        Case {
            name: "four segments: the whole string",
            a: "a.b.c.d",
            b: "a.b.c.e",
            same: false,
        },
        Case {
            name: "an empty segment: the whole string",
            a: "a..c",
            b: "a..d",
            same: false,
        },
        Case {
            name: "padding is not base64url: the whole string",
            a: "a.b.c=",
            b: "a.b.d=",
            same: false,
        },
    ];
    for case in cases {
        assert_eq!(
            TokenFingerprint::of(case.a) == TokenFingerprint::of(case.b),
            case.same,
            "{}",
            case.name
        );
    }
    // Opaque tokens keep their plain SHA-256 (fingerprints stored before stay valid).
    assert_eq!(TokenFingerprint::of(TOKEN).as_bytes(), &whole(TOKEN));
    assert_ne!(
        TokenFingerprint::of("aGVhZA.Ym9keQ.c2ln").as_bytes(),
        &whole("aGVhZA.Ym9keQ")
    );
}

#[tokio::test]
async fn an_authenticator_can_supply_the_fingerprint() {
    let canonical = TokenFingerprint::of("canonical");
    let auth = move |_parts: &Parts, credential: Credential| {
        let ok = credential.token() == "v1:alice" || credential.token() == "V1:alice";
        async move {
            if ok {
                Ok(Verified::new((), Principal::new("alice", None)).with_fingerprint(canonical))
            } else {
                Err(AuthError::Invalid)
            }
        }
    };
    for token in ["v1:alice", "V1:alice"] {
        let req = handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let inner = run(HandshakeAuthLayer::new(auth), req).await.inner.unwrap();
        assert_eq!(
            inner.extensions().get::<TokenFingerprint>(),
            Some(&canonical)
        );
    }
    // Without one, the layer names the token itself.
    let req = handshake("/ws")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let inner = run(HandshakeAuthLayer::new(static_tokens()), req)
        .await
        .inner
        .unwrap();
    assert_eq!(
        inner.extensions().get::<TokenFingerprint>(),
        Some(&TokenFingerprint::of(TOKEN))
    );
}

#[cfg(feature = "jwt")]
mod jwt {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private_pkcs1.der");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa_public_pkcs1.der");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private_pkcs8.der");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public_sec1.bin");
    const HS_SECRET: &[u8] = b"a shared secret of at least 32 bytes!!";

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn sign(alg: Algorithm, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET),
            Algorithm::RS256 => EncodingKey::from_rsa_der(RSA_PRIVATE),
            Algorithm::ES256 => EncodingKey::from_ec_der(EC_PRIVATE),
            _ => unreachable!(),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn hs() -> JwtAuthenticator {
        JwtAuthenticator::hs256(HS_SECRET).any_audience()
    }
    fn rs() -> JwtAuthenticator {
        JwtAuthenticator::rs256(DecodingKey::from_rsa_der(RSA_PUBLIC)).any_audience()
    }
    fn es() -> JwtAuthenticator {
        JwtAuthenticator::es256(DecodingKey::from_ec_der(EC_PUBLIC)).any_audience()
    }

    #[test]
    fn jwt_validation() {
        let t = now();
        struct Case {
            name: &'static str,
            auth: JwtAuthenticator,
            token: String,
            expect: Result<(), AuthError>,
        }
        let valid = json!({"sub": "alice", "exp": t + 300});
        let cases = vec![
            Case {
                name: "HS256",
                auth: hs(),
                token: sign(Algorithm::HS256, &valid),
                expect: Ok(()),
            },
            Case {
                name: "RS256",
                auth: rs(),
                token: sign(Algorithm::RS256, &valid),
                expect: Ok(()),
            },
            Case {
                name: "ES256",
                auth: es(),
                token: sign(Algorithm::ES256, &valid),
                expect: Ok(()),
            },
            Case {
                name: "wrong HS256 secret",
                auth: JwtAuthenticator::hs256(b"another secret, also 32 bytes long..")
                    .any_audience(),
                token: sign(Algorithm::HS256, &valid),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "algorithm confusion: HS256 token for an RS256 verifier",
                auth: rs(),
                token: sign(Algorithm::HS256, &valid),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "ES256 token for an RS256 verifier",
                auth: rs(),
                token: sign(Algorithm::ES256, &valid),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "expired beyond the leeway",
                auth: hs(),
                token: sign(Algorithm::HS256, &json!({"sub": "alice", "exp": t - 120})),
                expect: Err(AuthError::Expired),
            },
            Case {
                name: "expired within the default leeway",
                auth: hs(),
                token: sign(Algorithm::HS256, &json!({"sub": "alice", "exp": t - 10})),
                expect: Ok(()),
            },
            Case {
                name: "expired with no leeway",
                auth: hs().leeway(Duration::ZERO),
                token: sign(Algorithm::HS256, &json!({"sub": "alice", "exp": t - 10})),
                expect: Err(AuthError::Expired),
            },
            Case {
                name: "not yet valid (nbf)",
                auth: hs(),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "alice", "exp": t + 900, "nbf": t + 600}),
                ),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "nbf within the leeway",
                auth: hs(),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "alice", "exp": t + 900, "nbf": t + 30}),
                ),
                expect: Ok(()),
            },
            Case {
                name: "no exp",
                auth: hs(),
                token: sign(Algorithm::HS256, &json!({"sub": "alice"})),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "no sub",
                auth: hs(),
                token: sign(Algorithm::HS256, &json!({"exp": t + 300})),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "audience matches",
                auth: hs().audience(["chat", "api"]),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "a", "exp": t + 300, "aud": "api"}),
                ),
                expect: Ok(()),
            },
            Case {
                name: "audience differs",
                auth: hs().audience(["chat"]),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "a", "exp": t + 300, "aud": "billing"}),
                ),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "audience missing",
                auth: hs().audience(["chat"]),
                token: sign(Algorithm::HS256, &valid),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "issuer matches",
                auth: hs().issuer(["https://id.example.com"]),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "a", "exp": t + 300, "iss": "https://id.example.com"}),
                ),
                expect: Ok(()),
            },
            Case {
                name: "issuer differs",
                auth: hs().issuer(["https://id.example.com"]),
                token: sign(
                    Algorithm::HS256,
                    &json!({"sub": "a", "exp": t + 300, "iss": "https://evil.example.com"}),
                ),
                expect: Err(AuthError::Invalid),
            },
            Case {
                name: "not a JWT",
                auth: hs(),
                token: "abc".into(),
                expect: Err(AuthError::Malformed),
            },
        ];
        for case in cases {
            let got = case.auth.verify(&case.token).map(|_| ());
            assert_eq!(got, case.expect, "{}", case.name);
        }

        // A flipped bit in the signature of each algorithm.
        for (auth, alg) in [
            (hs(), Algorithm::HS256),
            (rs(), Algorithm::RS256),
            (es(), Algorithm::ES256),
        ] {
            let token = sign(alg, &valid);
            let (head, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[0] ^= 1;
            let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
            assert_eq!(
                auth.verify(&tampered).map(|_| ()),
                Err(AuthError::Invalid),
                "{alg:?}"
            );
        }
    }

    #[derive(Clone, Debug, serde::Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        role: String,
    }

    #[tokio::test]
    async fn jwt_through_the_layer() {
        let exp = now() + 300;
        let auth =
            JwtAuthenticator::<Claims>::new(Algorithm::ES256, DecodingKey::from_ec_der(EC_PUBLIC))
                .audience(["chat"]);
        let layer = HandshakeAuthLayer::new(auth);
        let token = sign(
            Algorithm::ES256,
            &json!({"sub": "alice", "aud": "chat", "exp": exp, "role": "admin"}),
        );
        let req = handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let outcome = run(layer.clone(), req).await;
        assert_eq!(outcome.response.status(), StatusCode::OK);
        let inner = outcome.inner.unwrap();
        assert_eq!(
            inner.extensions().get::<Claims>(),
            Some(&Claims {
                sub: "alice".into(),
                role: "admin".into()
            })
        );
        assert_eq!(
            inner.extensions().get::<Principal>(),
            Some(&Principal::new(
                "alice",
                Some(UNIX_EPOCH + Duration::from_secs(exp as u64))
            ))
        );

        // Claims that do not fit the identity type are invalid.
        let token = sign(
            Algorithm::ES256,
            &json!({"sub": "alice", "aud": "chat", "exp": exp}),
        );
        let req = handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_rejected(
            "no role",
            &run(layer.clone(), req).await,
            &AuthError::Invalid,
        );

        let token = sign(
            Algorithm::ES256,
            &json!({"sub": "alice", "aud": "chat", "exp": now() - 3600, "role": "x"}),
        );
        let req = handshake("/ws")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_rejected("expired", &run(layer, req).await, &AuthError::Expired);
    }

    /// `(r, s)` → `(r, n - s)`: a second valid signature, made without the key.
    fn flip_s(token: &str) -> String {
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap())
                .unwrap();
        let (r, s) = signature.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-s).to_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(flipped.to_bytes()))
    }

    #[tokio::test]
    async fn a_flipped_es256_signature_is_the_same_token() {
        let token = sign(
            Algorithm::ES256,
            &json!({"sub": "alice", "exp": now() + 300}),
        );
        let flipped = flip_s(&token);
        assert_ne!(flipped, token);
        // Both verify: ES256 signatures are malleable, and high-S ones are not refused
        // (many signers emit them).
        assert!(es().verify(&token).is_ok());
        assert!(es().verify(&flipped).is_ok());
        // ... and both are one token for revocation and replay.
        assert_eq!(TokenFingerprint::of(&token), TokenFingerprint::of(&flipped));
        let other = sign(
            Algorithm::ES256,
            &json!({"sub": "alice", "exp": now() + 301}),
        );
        assert_ne!(TokenFingerprint::of(&token), TokenFingerprint::of(&other));
        // What the layer puts into the extensions.
        let mut seen = Vec::new();
        for t in [&token, &flipped] {
            let req = handshake("/ws")
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .body(Body::empty())
                .unwrap();
            let inner = run(HandshakeAuthLayer::new(es()), req).await.inner.unwrap();
            seen.push(*inner.extensions().get::<TokenFingerprint>().unwrap());
        }
        assert_eq!(seen[0], seen[1]);
    }

    #[test]
    fn jwt_numeric_dates() {
        const T: u64 = 1_700_000_000;
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        struct Case {
            name: &'static str,
            claims: serde_json::Value,
            leeway: Duration,
            expect: Result<SystemTime, AuthError>,
        }
        let case = |name, extra: serde_json::Value, expect| {
            let mut claims = json!({"sub": "alice", "exp": T + 300});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            Case {
                name,
                claims,
                leeway: Duration::ZERO,
                expect,
            }
        };
        let t = T as f64;
        let cases = vec![
            case("integer exp", json!({}), Ok(at(t + 300.0))),
            case(
                "fractional exp",
                json!({"exp": t + 300.5}),
                Ok(at(t + 300.5)),
            ),
            case(
                "fractional exp ahead",
                json!({"exp": t + 0.25}),
                Ok(at(t + 0.25)),
            ),
            case(
                "fractional exp past",
                json!({"exp": t - 0.5}),
                Err(AuthError::Expired),
            ),
            case("exp now", json!({"exp": T}), Err(AuthError::Expired)),
            case("exp 1e300", json!({"exp": 1e300}), Ok(max_date())),
            case("exp u64::MAX", json!({"exp": u64::MAX}), Ok(max_date())),
            case("exp i64::MAX", json!({"exp": i64::MAX}), Ok(max_date())),
            case("exp -1", json!({"exp": -1}), Err(AuthError::Expired)),
            case(
                "exp i64::MIN",
                json!({"exp": i64::MIN}),
                Err(AuthError::Expired),
            ),
            case(
                "exp -1e300",
                json!({"exp": -1e300}),
                Err(AuthError::Expired),
            ),
            case(
                "exp \"NaN\"",
                json!({"exp": "NaN"}),
                Err(AuthError::Invalid),
            ),
            case(
                "exp \"1e300\"",
                json!({"exp": "1e300"}),
                Err(AuthError::Invalid),
            ),
            case("exp true", json!({"exp": true}), Err(AuthError::Invalid)),
            case("exp null", json!({"exp": null}), Err(AuthError::Invalid)),
            case("nbf past", json!({"nbf": t - 0.5}), Ok(at(t + 300.0))),
            case(
                "nbf ahead by half a second",
                json!({"nbf": t + 0.5}),
                Err(AuthError::Invalid),
            ),
            case("nbf 1e300", json!({"nbf": 1e300}), Err(AuthError::Invalid)),
            case(
                "nbf u64::MAX",
                json!({"nbf": u64::MAX}),
                Err(AuthError::Invalid),
            ),
            case("nbf negative", json!({"nbf": -5}), Ok(at(t + 300.0))),
            case(
                "nbf \"NaN\"",
                json!({"nbf": "NaN"}),
                Err(AuthError::Invalid),
            ),
            case("iat 1e300", json!({"iat": 1e300}), Ok(at(t + 300.0))),
            case("iat u64::MAX", json!({"iat": u64::MAX}), Ok(at(t + 300.0))),
            case("iat negative", json!({"iat": -5}), Ok(at(t + 300.0))),
            case("iat \"NaN\"", json!({"iat": "NaN"}), Ok(at(t + 300.0))),
            Case {
                leeway: Duration::MAX,
                ..case(
                    "leeway MAX, long expired",
                    json!({"exp": t - 1e6}),
                    Ok(at(t - 1e6)),
                )
            },
            Case {
                leeway: Duration::MAX,
                ..case(
                    "leeway MAX, nbf u64::MAX",
                    json!({"nbf": u64::MAX}),
                    Ok(at(t + 300.0)),
                )
            },
            Case {
                leeway: Duration::from_secs(u64::MAX),
                ..case(
                    "leeway u64::MAX s, exp -1",
                    json!({"exp": -1}),
                    Ok(UNIX_EPOCH),
                )
            },
        ];
        for case in cases {
            let token = sign(Algorithm::HS256, &case.claims);
            let auth = hs()
                .leeway(case.leeway)
                .clock(|| UNIX_EPOCH + Duration::from_secs(T));
            let got = auth
                .verify(&token)
                .map(|v| v.principal().expires_at().unwrap());
            assert_eq!(got, case.expect, "{}", case.name);
        }
    }

    #[test]
    fn the_audience_is_required_or_explicitly_any() {
        let t = now();
        let token = |aud: Option<&str>| {
            let mut claims = json!({"sub": "alice", "exp": t + 300});
            if let Some(aud) = aud {
                claims["aud"] = json!(aud);
            }
            sign(Algorithm::HS256, &claims)
        };
        let ours = JwtAuthenticator::<serde_json::Value>::hs256(HS_SECRET)
            .leeway(Duration::from_secs(5))
            .audience(["ticker"]);
        let any = JwtAuthenticator::<serde_json::Value>::hs256(HS_SECRET).any_audience();
        let none =
            JwtAuthenticator::<serde_json::Value>::hs256(HS_SECRET).audience(Vec::<String>::new());
        struct Case {
            name: &'static str,
            auth: &'static str,
            aud: Option<&'static str>,
            ok: bool,
        }
        let cases = [
            Case {
                name: "ours",
                auth: "ours",
                aud: Some("ticker"),
                ok: true,
            },
            Case {
                name: "another app of the issuer",
                auth: "ours",
                aud: Some("billing"),
                ok: false,
            },
            Case {
                name: "no aud",
                auth: "ours",
                aud: None,
                ok: false,
            },
            Case {
                name: "any: another app",
                auth: "any",
                aud: Some("billing"),
                ok: true,
            },
            Case {
                name: "any: no aud",
                auth: "any",
                aud: None,
                ok: true,
            },
            Case {
                name: "empty list",
                auth: "none",
                aud: Some("ticker"),
                ok: false,
            },
        ];
        for case in cases {
            let auth = match case.auth {
                "ours" => &ours,
                "any" => &any,
                _ => &none,
            };
            let got = auth.verify(&token(case.aud)).map(|_| ());
            let expect = if case.ok {
                Ok(())
            } else {
                Err(AuthError::Invalid)
            };
            assert_eq!(got, expect, "{}", case.name);
        }
        // Debug shows the settings, never the key.
        let debug = format!("{ours:?}");
        assert!(debug.contains("ticker"), "{debug}");
        assert!(!debug.contains("shared secret"), "{debug}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::{super::credential::take_credential, *};

    const MAX_LEN: usize = 64;

    /// Bytes a header value can hold (no control bytes but tab), including obs-text.
    fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(|v| {
            v.into_iter()
                .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                .collect()
        })
    }

    /// Bits of text with the separators and prefixes the sources look for.
    fn with_markers(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                header_bytes(8),
                proptest::sample::select(
                    &[
                        "bearer.",
                        "Bearer ",
                        "session=",
                        "access_token=",
                        ", ",
                        ";",
                        "=",
                        "\"",
                        "%",
                        "+",
                        "&",
                        "\u{e9}",
                    ][..]
                )
                .prop_map(|s| s.as_bytes().to_vec()),
            ],
            0..max,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A URI query from characters a request line can carry.
    fn query() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9%+=&._~-]{0,6}",
                Just("access_token=".to_owned()),
                Just("%61ccess_token=".to_owned()),
                Just("&".to_owned()),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Strict `application/x-www-form-urlencoded` decoding, written out independently: `+`
    /// is a space, `%` takes exactly two hex digits, the result must be UTF-8.
    fn form_decode(raw: &str) -> Option<String> {
        let bytes = raw.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = bytes.get(i + 1..i + 3)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(digit(hex[0]) * 16 + digit(hex[1]));
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

    fn parts_with(
        authorization: Option<&[u8]>,
        protocols: &[Vec<u8>],
        cookie: Option<&[u8]>,
        query: &str,
    ) -> Option<Parts> {
        let uri = if query.is_empty() {
            "/ws".to_owned()
        } else {
            format!("/ws?{query}")
        };
        let mut req = handshake(&uri).body(()).ok()?;
        let headers = req.headers_mut();
        if let Some(value) = authorization {
            headers.append(header::AUTHORIZATION, HeaderValue::from_bytes(value).ok()?);
        }
        for value in protocols {
            headers.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        if let Some(value) = cookie {
            headers.append(header::COOKIE, HeaderValue::from_bytes(value).ok()?);
        }
        Some(req.into_parts().0)
    }

    proptest! {
        /// Whatever the handshake carries: a credential of visible ASCII within the length
        /// limit, or `Missing`/`Malformed`; never a panic. And whichever source decided, no
        /// `bearer.` subprotocol entry (nor word of an entry) and no `access_token` parameter
        /// goes on.
        #[test]
        fn credential_sources_give_a_precise_answer_and_strip_every_token(
            authorization in proptest::option::of(with_markers(6)),
            protocols in proptest::collection::vec(with_markers(6), 0..3),
            cookie in proptest::option::of(with_markers(6)),
            query in query(),
        ) {
            let Some(mut parts) =
                parts_with(authorization.as_deref(), &protocols, cookie.as_deref(), &query)
            else {
                return Ok(());
            };
            match take_credential(&mut parts, &all_sources(), MAX_LEN) {
                Ok(credential) => {
                    let token = credential.token();
                    prop_assert!(!token.is_empty() && token.len() <= MAX_LEN);
                    prop_assert!(token.bytes().all(|b| b.is_ascii_graphic()));
                }
                Err((error, _)) => {
                    prop_assert!(matches!(error, AuthError::Missing | AuthError::Malformed), "{:?}", error);
                }
            }
            for value in parts.headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
                prop_assert!(
                    !value
                        .as_bytes()
                        .split(|b| matches!(b, b',' | b' ' | b'\t'))
                        .any(|word| word.starts_with(b"bearer.")),
                    "a token entry went on: {:?}", value
                );
            }
            for pair in parts.uri.query().unwrap_or("").split('&') {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                let decoded = form_decode(key);
                prop_assert_ne!(decoded.as_deref(), Some("access_token"), "{}", pair);
            }
        }

        /// A query parameter's value is decoded exactly as the form encoding says: `%` with
        /// two hex digits, `+` a space; anything else (`%+1`, `%4`, `%zz`) is malformed.
        #[test]
        fn query_values_decode_strictly(value in "[a-zA-Z0-9%+._~-]{0,12}") {
            let mut parts = parts_with(None, &[], None, &format!("access_token={value}"))
                .expect("a valid URI");
            let sources = [CredentialSource::query("access_token").unwrap()];
            let got = take_credential(&mut parts, &sources, MAX_LEN)
                .map(|c| c.token().to_owned())
                .map_err(|(e, _)| e);
            let expected = match form_decode(&value) {
                Some(token)
                    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Ok(token)
                }
                _ => Err(AuthError::Malformed),
            };
            prop_assert_eq!(got, expected, "{}", value);
        }

        /// Any visible-ASCII token placed in a source (in the encoding that source needs) is
        /// found as itself, from that source.
        #[test]
        fn a_token_placed_in_any_source_is_found_as_itself(
            token in "[!-~]{1,40}",
            scheme_case in any::<u64>(),
            source in 0usize..4,
        ) {
            let (parts, kind) = match source {
                0 => {
                    let scheme: String = "bearer"
                        .chars()
                        .enumerate()
                        .map(|(i, c)| if scheme_case >> i & 1 == 1 { c.to_ascii_uppercase() } else { c })
                        .collect();
                    (parts_with(Some(format!("{scheme} {token}").as_bytes()), &[], None, ""), SourceKind::Authorization)
                }
                1 => {
                    let token = token.replace(',', "");
                    prop_assume!(!token.is_empty());
                    let value = format!("chat, bearer.{token}");
                    return check_found(parts_with(None, &[value.into_bytes()], None, ""), &token, SourceKind::Subprotocol);
                }
                2 => {
                    let encoded: String = token
                        .bytes()
                        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        })
                        .collect();
                    (parts_with(None, &[], None, &format!("a=1&access_token={encoded}&b")), SourceKind::Query)
                }
                _ => {
                    let token = token.replace([';', '"'], "");
                    prop_assume!(!token.is_empty());
                    let cookie = format!("theme=dark; session={token}; x=y");
                    return check_found(parts_with(None, &[], Some(cookie.as_bytes()), ""), &token, SourceKind::Cookie);
                }
            };
            check_found(parts, &token, kind)?;
        }
    }

    fn check_found(
        parts: Option<Parts>,
        token: &str,
        kind: SourceKind,
    ) -> Result<(), TestCaseError> {
        let mut parts = parts.expect("valid request");
        let credential = take_credential(&mut parts, &all_sources(), MAX_LEN)
            .map_err(|(e, _)| TestCaseError::fail(format!("{e:?} for {token:?}")))?;
        prop_assert_eq!(credential.token(), token);
        prop_assert_eq!(credential.source(), kind);
        Ok(())
    }

    fn clock() -> impl Fn() -> SystemTime + Send + Sync + 'static {
        || UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// Claims of the kinds JSON round-trips exactly (no floats).
    fn claims() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
        proptest::collection::btree_map(
            "\\PC{0,8}",
            prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
                "\\PC{0,12}".prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
            ],
            0..4,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// Invariant 3: a ticket round-trips (subject, claims, key, expiry), and every
        /// single-bit change of the encoded ticket is refused, also by a verifier holding a
        /// second key whose id is one bit away.
        #[test]
        fn a_ticket_round_trips_and_every_bit_flip_is_refused(
            subject in "\\PC{0,24}",
            claims in claims(),
            ttl in 1u64..100_000,
        ) {
            let issuer = TicketIssuer::new(key("k1", 1))
                .ttl(Duration::from_secs(ttl))
                .clock(clock());
            let verifier = TicketVerifier::new(key("k1", 1)).key(key("k0", 1)).clock(clock());
            let ticket = issuer.issue_with_claims(&subject, claims.clone());
            let verified = verifier.verify(&ticket).expect("a fresh ticket verifies");
            prop_assert_eq!(verified.subject(), subject.as_str());
            prop_assert_eq!(verified.claims(), &claims);
            prop_assert_eq!(verified.key_id(), "k1");
            prop_assert_eq!(verified.expires_at(), clock()() + Duration::from_secs(ttl));
            let bytes = ticket.as_bytes();
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.to_vec();
                    flipped[i] ^= 1 << bit;
                    match String::from_utf8(flipped) {
                        Ok(text) => {
                            let got = verifier.verify(&text);
                            prop_assert!(
                                matches!(got, Err(AuthError::Malformed | AuthError::Invalid)),
                                "byte {} bit {}: {:?}", i, bit, got
                            );
                        }
                        // Not text: the credential sources refuse it before any verifier.
                        Err(e) => {
                            let mut value = b"Bearer ".to_vec();
                            value.extend(e.as_bytes());
                            let mut parts = parts_with(Some(&value), &[], None, "").expect("valid header");
                            let got = take_credential(&mut parts, &all_sources(), 4096).map_err(|(e, _)| e);
                            prop_assert_eq!(got.map(|c| c.token().to_owned()), Err(AuthError::Malformed));
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Any string as a ticket: `Malformed` or `Invalid`, never a panic; also strings
        /// shaped like tickets, with the verifier's own key id.
        #[test]
        fn any_string_is_a_precisely_refused_ticket(
            raw in "\\PC{0,80}",
            payload in "[A-Za-z0-9_-]{0,60}",
            tag in "[A-Za-z0-9_-]{42,44}",
        ) {
            let verifier = TicketVerifier::new(key("k1", 1)).clock(clock());
            for token in [raw, format!("k1.{payload}.{tag}"), format!("k1.{payload}")] {
                let got = verifier.verify(&token);
                prop_assert!(matches!(got, Err(AuthError::Malformed | AuthError::Invalid)), "{:?}", got);
            }
        }

        /// Correctly signed tickets whose payload is not the issuer's JSON: `Malformed`.
        #[test]
        fn authentic_garbage_payloads_are_malformed(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let json_ok = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .is_some_and(|v| v.get("sub").is_some());
            prop_assume!(!json_ok);
            let k = key("k1", 1);
            let payload_b64 = URL_SAFE_NO_PAD.encode(&payload);
            prop_assume!(!payload_b64.is_empty());
            let issuer_tag = {
                use hmac::{KeyInit, Mac};
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1u8; 32]).unwrap();
                mac.update(b"wsguard-ticket-v1\nk1.");
                mac.update(payload_b64.as_bytes());
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            };
            let verifier = TicketVerifier::new(k).clock(clock());
            let got = verifier.verify(&format!("k1.{payload_b64}.{issuer_tag}"));
            prop_assert_eq!(got.map(|t| t.subject().to_owned()), Err(AuthError::Malformed));
        }
    }

    #[cfg(feature = "jwt")]
    mod jwt {
        use jsonwebtoken::{EncodingKey, Header};
        use serde_json::json;

        use super::*;

        const SECRET: &[u8] = b"a shared secret of at least 32 bytes!!";

        fn authenticator() -> JwtAuthenticator {
            JwtAuthenticator::hs256(SECRET)
                .any_audience()
                .clock(clock())
        }

        fn sign(claims: &serde_json::Value) -> String {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(SECRET),
            )
            .expect("serialisable claims")
        }

        fn b64(strategy: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = String> {
            strategy.prop_map(|b| URL_SAFE_NO_PAD.encode(b))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            /// Any string, and any three base64url segments (of bytes or of JSON): `Malformed`
            /// or `Invalid`, never a panic.
            #[test]
            fn any_string_is_a_precisely_refused_jwt(
                raw in "\\PC{0,80}",
                header in b64(proptest::collection::vec(any::<u8>(), 0..32)),
                payload in b64(proptest::collection::vec(any::<u8>(), 0..48)),
                signature in b64(proptest::collection::vec(any::<u8>(), 0..40)),
                alg in proptest::sample::select(&["HS256", "none", "RS256", "ES256", "HS512", ""][..]),
            ) {
                let json_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
                let json_payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"a","exp":99999999999}"#);
                for token in [
                    raw,
                    format!("{header}.{payload}.{signature}"),
                    format!("{json_header}.{json_payload}.{signature}"),
                    format!("{json_header}.{json_payload}."),
                    format!("{json_header}.{payload}"),
                ] {
                    let got = authenticator().verify(&token).map(|v| v.principal().subject().to_owned());
                    prop_assert!(matches!(got, Err(AuthError::Malformed | AuthError::Invalid)), "{:?}: {:?}", token, got);
                }
            }

            /// Correctly signed tokens with any `sub`, `exp`, `nbf` and `iat` values (numbers
            /// of any size and sign, strings, null): a decision, never a panic.
            #[test]
            fn any_claim_values_give_a_decision(
                sub in prop_oneof![Just(json!(null)), "\\PC{0,8}".prop_map(|s| json!(s)), any::<i64>().prop_map(|n| json!(n))],
                exp in date(),
                nbf in proptest::option::of(date()),
                iat in proptest::option::of(date()),
            ) {
                let mut claims = json!({ "sub": sub, "exp": exp });
                if let Some(nbf) = nbf {
                    claims["nbf"] = nbf;
                }
                if let Some(iat) = iat {
                    claims["iat"] = iat;
                }
                let got = authenticator().verify(&sign(&claims));
                if let Err(e) = &got {
                    prop_assert!(matches!(e, AuthError::Expired | AuthError::Invalid), "{:?}", e);
                }
                if let Ok(v) = got {
                    prop_assert!(v.principal().expires_at().is_some());
                    prop_assert!(v.principal().issued_at().is_none_or(|t| t <= clock()()));
                }
            }
        }

        fn date() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                (1_600_000_000i64..1_800_000_000).prop_map(|n| json!(n)),
                Just(json!("1700000000")),
                Just(json!(null)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4))]

            /// Every single-bit change of a signed HS256 token is refused.
            #[test]
            fn every_bit_flip_of_a_jwt_is_refused(subject in "[a-z]{1,12}") {
                let token = sign(&json!({ "sub": subject, "exp": 1_800_000_000 }));
                prop_assert!(authenticator().verify(&token).is_ok());
                let bytes = token.as_bytes();
                for i in 0..bytes.len() {
                    for bit in 0..7 {
                        let mut flipped = bytes.to_vec();
                        flipped[i] ^= 1 << bit;
                        let text = String::from_utf8(flipped).expect("ASCII stays UTF-8");
                        let got = authenticator().verify(&text).map(|v| v.principal().subject().to_owned());
                        prop_assert!(
                            matches!(got, Err(AuthError::Malformed | AuthError::Invalid)),
                            "byte {} bit {}: {:?}", i, bit, got
                        );
                    }
                }
            }
        }
    }
}
