use std::convert::Infallible;

use axum::{body::Body, response::Response};
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

use super::{OriginError, OriginGuardLayer};
use crate::{ConfigError, Rejection};

fn ok_service()
-> impl tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("passed")))
    })
}

/// A WebSocket handshake to `host` with the given `Origin` header values.
fn handshake(host: &str, origins: &[&[u8]]) -> Request<Body> {
    let mut req = Request::get("/ws")
        .header(header::HOST, host)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .body(Body::empty())
        .expect("static request");
    for origin in origins {
        req.headers_mut().append(
            header::ORIGIN,
            HeaderValue::from_bytes(origin).expect("test header value"),
        );
    }
    req
}

async fn outcome(layer: &OriginGuardLayer, req: Request<Body>) -> Result<(), OriginError> {
    let res = layer
        .layer(ok_service())
        .oneshot(req)
        .await
        .expect("infallible");
    match res.status() {
        StatusCode::OK => Ok(()),
        StatusCode::FORBIDDEN => Err(*res
            .extensions()
            .get::<OriginError>()
            .expect("typed error in extensions")),
        other => panic!("unexpected status {other}"),
    }
}

struct Case {
    name: &'static str,
    origins: &'static [&'static [u8]],
    host: &'static str,
    expected: Result<(), OriginError>,
}

const ALLOWED: Result<(), OriginError> = Ok(());
const NOT_ALLOWED: Result<(), OriginError> = Err(OriginError::NotAllowed);
const MALFORMED: Result<(), OriginError> = Err(OriginError::Malformed);

async fn run(layer: &OriginGuardLayer, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let got = outcome(layer, handshake(case.host, case.origins)).await;
        if got != case.expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name, case.expected, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn configured() -> OriginGuardLayer {
    OriginGuardLayer::new()
        .allow_origins([
            "https://app.example.com",
            "http://127.0.0.1:8000",
            "https://bücher.example",
            "http://[::1]:8080",
            "https://ports.example.com:8443/",
        ])
        .expect("valid origins")
        .allow_origin_pattern("https://*.example.org")
        .expect("valid pattern")
}

#[tokio::test]
async fn exact_and_wildcard_origins() {
    let h = "api.example.com";
    let cases = [
        Case {
            name: "exact match",
            origins: &[b"https://app.example.com"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "uppercase host",
            origins: &[b"https://APP.Example.COM"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "uppercase scheme",
            origins: &[b"HTTPS://app.example.com"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "explicit default port",
            origins: &[b"https://app.example.com:443"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "other port",
            origins: &[b"https://app.example.com:8443"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "configured non-default port",
            origins: &[b"https://ports.example.com:8443"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "non-default port omitted",
            origins: &[b"https://ports.example.com"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "http instead of https",
            origins: &[b"http://app.example.com"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wss scheme",
            origins: &[b"wss://app.example.com"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "ws scheme",
            origins: &[b"ws://127.0.0.1:8000"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "loopback with port",
            origins: &[b"http://127.0.0.1:8000"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "localhost is not 127.0.0.1",
            origins: &[b"http://localhost:8000"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "trailing dot is another origin",
            origins: &[b"https://app.example.com."],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "trailing slash",
            origins: &[b"https://app.example.com/"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "path",
            origins: &[b"https://app.example.com/login"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "query",
            origins: &[b"https://app.example.com?x=1"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "userinfo",
            origins: &[b"https://evil.net@app.example.com"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "userinfo pointing away",
            origins: &[b"https://app.example.com@evil.net"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "backslash",
            origins: &[b"https://app.example.com\\@evil.net"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "percent escape",
            origins: &[b"https://%61pp.example.com"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "inner whitespace",
            origins: &[b"https://app.example .com"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "tab",
            origins: &[b"https://app.\texample.com"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "empty port",
            origins: &[b"https://app.example.com:"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "port out of range",
            origins: &[b"https://app.example.com:65536"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "no scheme",
            origins: &[b"app.example.com"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "empty",
            origins: &[b""],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "null",
            origins: &[b"null"],
            host: h,
            expected: Err(OriginError::Null),
        },
        Case {
            name: "NULL is malformed, not null",
            origins: &[b"NULL"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "two headers",
            origins: &[b"https://app.example.com", b"https://app.example.com"],
            host: h,
            expected: Err(OriginError::Multiple),
        },
        Case {
            name: "two origins in one header",
            origins: &[b"https://app.example.com https://evil.net"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "punycode host",
            origins: &[b"https://xn--bcher-kva.example"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "raw unicode host",
            origins: &[b"https://b\xc3\xbccher.example"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "ipv6 literal",
            origins: &[b"http://[::1]:8080"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "ipv6 literal, long form",
            origins: &[b"http://[0:0:0:0:0:0:0:1]:8080"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "ipv6 literal, other port",
            origins: &[b"http://[::1]:8081"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "ipv6 unclosed",
            origins: &[b"http://[::1:8080"],
            host: h,
            expected: MALFORMED,
        },
        Case {
            name: "wildcard: one label",
            origins: &[b"https://a.example.org"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "wildcard: two labels",
            origins: &[b"https://a.b.example.org"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "wildcard: base itself",
            origins: &[b"https://example.org"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: suffix confusion",
            origins: &[b"https://evilexample.org"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: base as a label",
            origins: &[b"https://example.org.evil.net"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: empty label",
            origins: &[b"https://a..example.org"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: leading dot",
            origins: &[b"https://.example.org"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: other scheme",
            origins: &[b"http://a.example.org"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: other port",
            origins: &[b"https://a.example.org:8443"],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "wildcard: uppercase",
            origins: &[b"https://A.EXAMPLE.ORG"],
            host: h,
            expected: ALLOWED,
        },
        Case {
            name: "wildcard: trailing dot",
            origins: &[b"https://a.example.org."],
            host: h,
            expected: NOT_ALLOWED,
        },
        Case {
            name: "same origin is off once configured",
            origins: &[b"https://api.example.com"],
            host: h,
            expected: NOT_ALLOWED,
        },
    ];
    run(&configured(), &cases).await;
}

#[tokio::test]
async fn non_ascii_origin_is_malformed() {
    let layer = configured();
    let req = handshake("api.example.com", &[b"https://app.example.com\xff"]);
    assert_eq!(outcome(&layer, req).await, MALFORMED);
}

#[tokio::test]
async fn same_origin_is_the_default() {
    // A domain `Host` is trusted only once it is an allowed host (issue 13, point 11).
    let layer = OriginGuardLayer::new()
        .allow_hosts(["chat.example.com", "127.0.0.1", "[::1]"])
        .expect("valid hosts");
    let cases = [
        Case {
            name: "same host",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com",
            expected: ALLOWED,
        },
        Case {
            name: "same host over http",
            origins: &[b"http://chat.example.com"],
            host: "chat.example.com",
            expected: ALLOWED,
        },
        Case {
            name: "host with explicit port",
            origins: &[b"http://127.0.0.1:8000"],
            host: "127.0.0.1:8000",
            expected: ALLOWED,
        },
        Case {
            name: "host port differs",
            origins: &[b"http://127.0.0.1:9000"],
            host: "127.0.0.1:8000",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "host with default port",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com:443",
            expected: ALLOWED,
        },
        Case {
            name: "https origin, host on port 80",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com:80",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "host case",
            origins: &[b"https://chat.example.com"],
            host: "CHAT.Example.com",
            expected: ALLOWED,
        },
        Case {
            name: "other site",
            origins: &[b"https://evil.example.net"],
            host: "chat.example.com",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "subdomain is another origin",
            origins: &[b"https://a.chat.example.com"],
            host: "chat.example.com",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "ws scheme is never same origin",
            origins: &[b"ws://chat.example.com"],
            host: "chat.example.com",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "ipv6 host",
            origins: &[b"http://[::1]:3000"],
            host: "[::1]:3000",
            expected: ALLOWED,
        },
        Case {
            name: "malformed host header",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com/x",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "no origin",
            origins: &[],
            host: "chat.example.com",
            expected: ALLOWED,
        },
    ];
    run(&layer, &cases).await;
}

#[tokio::test]
async fn same_origin_uses_the_uri_scheme_when_known() {
    let layer = OriginGuardLayer::new()
        .allow_host("chat.example.com")
        .expect("valid host");
    let mut req = handshake("chat.example.com", &[b"http://chat.example.com"]);
    *req.uri_mut() = "https://chat.example.com/ws".parse().expect("static uri");
    // An https request refuses http origins outright (issue 13, point 11).
    assert_eq!(outcome(&layer, req).await, INSECURE);

    let mut req = handshake("chat.example.com", &[b"https://chat.example.com"]);
    *req.uri_mut() = "https://chat.example.com/ws".parse().expect("static uri");
    assert_eq!(outcome(&layer, req).await, ALLOWED);
}

#[tokio::test]
async fn same_origin_needs_exactly_one_host() {
    let layer = OriginGuardLayer::new();
    let mut req = handshake("chat.example.com", &[b"https://chat.example.com"]);
    req.headers_mut()
        .append(header::HOST, HeaderValue::from_static("evil.example.net"));
    assert_eq!(outcome(&layer, req).await, NOT_ALLOWED);

    let mut req = handshake("chat.example.com", &[b"https://chat.example.com"]);
    req.headers_mut().remove(header::HOST);
    assert_eq!(outcome(&layer, req).await, NOT_ALLOWED);
}

#[tokio::test]
async fn allow_same_origin_adds_to_the_list() {
    let layer = configured()
        .allow_same_origin()
        .allow_host("api.example.com")
        .expect("valid host");
    let req = handshake("api.example.com", &[b"https://api.example.com"]);
    assert_eq!(outcome(&layer, req).await, ALLOWED);
}

#[tokio::test]
async fn missing_origin_policy() {
    let allow = OriginGuardLayer::new();
    assert_eq!(
        outcome(&allow, handshake("a.example.com", &[])).await,
        ALLOWED
    );

    let require = OriginGuardLayer::new()
        .require_origin(true)
        .allow_host("a.example.com")
        .expect("valid host");
    assert_eq!(
        outcome(&require, handshake("a.example.com", &[])).await,
        Err(OriginError::Missing)
    );
    assert_eq!(
        outcome(
            &require,
            handshake("a.example.com", &[b"https://a.example.com"])
        )
        .await,
        ALLOWED
    );
}

#[tokio::test]
async fn only_handshakes_are_checked_by_default() {
    let layer = configured().require_origin(true);
    let plain = || {
        Request::get("/api")
            .header(header::HOST, "api.example.com")
            .header(header::ORIGIN, "https://evil.example.net")
            .body(Body::empty())
            .expect("static request")
    };
    assert_eq!(outcome(&layer, plain()).await, ALLOWED);

    let all = layer.check_all_requests(true);
    assert_eq!(outcome(&all, plain()).await, NOT_ALLOWED);
    // Without an Origin, a plain request is not a browser's cross-site request: it passes.
    let no_origin = Request::get("/api")
        .header(header::HOST, "api.example.com")
        .body(Body::empty());
    assert_eq!(
        outcome(&all, no_origin.expect("static request")).await,
        ALLOWED
    );
}

#[tokio::test]
async fn every_kind_of_handshake_is_checked() {
    let layer = configured();
    let cases: [(&str, Request<Body>); 3] = [
        (
            "upgrade header in another case, in a list",
            Request::get("/ws")
                .header(header::UPGRADE, "h2c, WebSocket")
                .header(header::ORIGIN, "https://evil.example.net")
                .body(Body::empty())
                .expect("static request"),
        ),
        (
            "second upgrade header",
            Request::get("/ws")
                .header(header::UPGRADE, "h2c")
                .header(header::UPGRADE, "websocket")
                .header(header::ORIGIN, "https://evil.example.net")
                .body(Body::empty())
                .expect("static request"),
        ),
        (
            "http/2 extended connect",
            Request::builder()
                .method(Method::CONNECT)
                .uri("https://api.example.com/ws")
                .header(header::ORIGIN, "https://evil.example.net")
                .body(Body::empty())
                .expect("static request"),
        ),
    ];
    for (name, req) in cases {
        assert_eq!(outcome(&layer, req).await, NOT_ALLOWED, "{name}");
    }
}

#[tokio::test]
async fn predicate_and_allow_any() {
    let layer = OriginGuardLayer::new().allow_if(
        |origin: &super::Origin, _parts: &http::request::Parts| origin.host().ends_with(".test"),
    );
    assert_eq!(
        outcome(&layer, handshake("x", &[b"http://a.test"])).await,
        ALLOWED
    );
    assert_eq!(
        outcome(&layer, handshake("x", &[b"http://a.prod"])).await,
        NOT_ALLOWED
    );
    assert_eq!(
        outcome(&layer, handshake("x", &[b"null"])).await,
        Err(OriginError::Null)
    );

    let any = OriginGuardLayer::new().dangerously_allow_any_origin();
    assert_eq!(
        outcome(&any, handshake("x", &[b"https://whatever.example"])).await,
        ALLOWED
    );
    assert_eq!(
        outcome(&any, handshake("x", &[b"null"])).await,
        Err(OriginError::Null)
    );
    assert_eq!(
        outcome(&any, handshake("x", &[b"https://a b"])).await,
        MALFORMED
    );
}

#[tokio::test]
async fn rejection_is_403_plain_text_and_never_echoes_the_header() {
    let layer = configured();
    let res = layer
        .layer(ok_service())
        .oneshot(handshake(
            "api.example.com",
            &[b"https://evil.example.net<script>"],
        ))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let body = axum::body::to_bytes(res.into_body(), 1024)
        .await
        .expect("body");
    assert_eq!(&body[..], b"forbidden: malformed Origin header\n");
}

#[tokio::test]
async fn rejection_can_be_replaced() {
    let layer = configured().on_rejection(|rejection: &Rejection| match rejection {
        Rejection::Origin(err) => (StatusCode::NOT_FOUND, format!("nope ({})", err.as_str())),
        other => (other.status(), String::from("not an origin rejection")),
    });
    let res = layer
        .layer(ok_service())
        .oneshot(handshake("api.example.com", &[b"https://evil.example.net"]))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.extensions().get::<OriginError>(),
        Some(&OriginError::NotAllowed)
    );
    assert_eq!(
        res.extensions().get::<Rejection>(),
        Some(&Rejection::Origin(OriginError::NotAllowed))
    );
    let body = axum::body::to_bytes(res.into_body(), 1024)
        .await
        .expect("body");
    assert_eq!(&body[..], b"nope (not_allowed)");
}

#[tokio::test]
async fn rejected_requests_never_reach_the_inner_service() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response>();
    let mut guard = configured().layer(service);
    handle.allow(1);
    let res = guard
        .ready()
        .await
        .expect("ready")
        .call(handshake("api.example.com", &[b"https://evil.example.net"]))
        .await
        .expect("rejection is a response");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let allowed = tokio::spawn(
        guard
            .ready_oneshot()
            .await
            .expect("ready")
            .oneshot(handshake("api.example.com", &[b"https://app.example.com"])),
    );
    let (req, send) = handle
        .next_request()
        .await
        .expect("the allowed request reaches the inner service");
    assert_eq!(req.headers()[header::ORIGIN], "https://app.example.com");
    send.send_response(Response::new(Body::empty()));
    assert_eq!(
        allowed.await.expect("join").expect("ok").status(),
        StatusCode::OK
    );
}

#[test]
fn dangerous_patterns_are_refused_at_build_time() {
    struct Refusal {
        pattern: &'static str,
        too_broad: bool,
    }
    let cases = [
        Refusal {
            pattern: "*",
            too_broad: true,
        },
        Refusal {
            pattern: " * ",
            too_broad: true,
        },
        Refusal {
            pattern: "https://*.com",
            too_broad: true,
        },
        Refusal {
            pattern: "https://*.co.uk",
            too_broad: true,
        },
        Refusal {
            pattern: "https://*.github.io",
            too_broad: true,
        },
        Refusal {
            pattern: "https://*.localhost",
            too_broad: true,
        },
        Refusal {
            pattern: "https://*",
            too_broad: false,
        },
        Refusal {
            pattern: "https://*example.com",
            too_broad: false,
        },
        Refusal {
            pattern: "https://a.*.example.com",
            too_broad: false,
        },
        Refusal {
            pattern: "https://*.*.example.com",
            too_broad: false,
        },
        Refusal {
            pattern: "*.example.com",
            too_broad: false,
        },
        Refusal {
            pattern: "https://*.127.0.0.1",
            too_broad: false,
        },
        Refusal {
            pattern: "https://*.example.com/path",
            too_broad: false,
        },
        Refusal {
            pattern: "https://*.example..com",
            too_broad: false,
        },
    ];
    for case in cases {
        match OriginGuardLayer::new().allow_origin_pattern(case.pattern) {
            Err(ConfigError::PatternTooBroad { .. }) if case.too_broad => {}
            Err(ConfigError::InvalidPattern { .. }) if !case.too_broad => {}
            other => panic!("{:?}: unexpected {:?}", case.pattern, other.map(|_| ())),
        }
    }
    assert!(
        OriginGuardLayer::new()
            .allow_origin_pattern("https://*.example.co.uk")
            .is_ok()
    );
    assert!(
        OriginGuardLayer::new()
            .allow_origin_pattern("https://*.user.github.io")
            .is_ok()
    );
}

#[test]
fn invalid_exact_origins_are_refused_at_build_time() {
    let cases = [
        "*",
        "null",
        "example.com",
        "https://",
        "https://example.com/path",
        "https://user@example.com",
        "https://example.com:",
        "https://example.com:99999",
        " https://example.com",
        "https://*.example.com",
    ];
    for value in cases {
        let err = OriginGuardLayer::new()
            .allow_origin(value)
            .expect_err(value);
        assert!(
            matches!(err, ConfigError::InvalidOrigin { .. }),
            "{value}: {err}"
        );
    }
    let err = OriginGuardLayer::new()
        .allow_origin_pattern("https://*.com")
        .map(|_| ())
        .expect_err("too broad");
    assert!(err.to_string().contains("public suffix"), "{err}");
}

#[test]
fn debug_lists_the_rules() {
    let debug = format!("{:?}", configured().on_rejection(|_| StatusCode::FORBIDDEN));
    assert!(debug.contains("https://app.example.com"), "{debug}");
    assert!(debug.contains("https://*.example.org"), "{debug}");
    assert!(debug.contains("xn--bcher-kva.example"), "{debug}");
}

#[tokio::test(flavor = "current_thread")]
async fn one_event_per_rejection_with_a_sanitised_origin() {
    let capture = crate::test_support::capture();

    let layer = configured();
    let raw: &[u8] = b"https://evil.example.net/\xffsecret-looking-path-that-goes-on-and-on-and-on-for-a-long-time";
    assert_eq!(
        outcome(&layer, handshake("api.example.com", &[raw])).await,
        MALFORMED
    );
    assert_eq!(
        outcome(
            &layer,
            handshake("api.example.com", &[b"https://EVIL.example.net"])
        )
        .await,
        NOT_ALLOWED
    );
    assert_eq!(
        outcome(
            &layer,
            handshake("api.example.com", &[b"https://app.example.com"])
        )
        .await,
        ALLOWED
    );

    let events = capture.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|(name, _)| name == "wsguard.origin.rejected"),
        "{events:?}"
    );
    let (_, malformed) = &events[0];
    assert!(malformed.contains("reason=\"malformed\""), "{malformed}");
    assert!(
        malformed.contains("\\\\xff"),
        "control bytes escaped: {malformed}"
    );
    assert!(
        !malformed.contains("for-a-long-time"),
        "truncated: {malformed}"
    );
    let (_, not_allowed) = &events[1];
    assert!(
        not_allowed.contains("reason=\"not_allowed\""),
        "{not_allowed}"
    );
    assert!(
        not_allowed.contains("origin=\"https://evil.example.net\""),
        "canonical: {not_allowed}"
    );
}

const HOST_NOT_ALLOWED: Result<(), OriginError> = Err(OriginError::HostNotAllowed);
const INSECURE: Result<(), OriginError> = Err(OriginError::InsecureOrigin);

/// Issue 13, point 11: with DNS rebinding, a page on `http://attacker.example:8000` whose
/// name now resolves to the server sends `Host: attacker.example:8000` and the matching
/// `Origin`, so a same-origin check that trusts `Host` lets it in. Without allowed hosts the
/// same-origin default trusts only hosts that DNS cannot rebind (IP literals, `localhost`).
#[tokio::test]
async fn same_origin_default_refuses_dns_rebinding() {
    let cases = [
        Case {
            name: "rebound domain",
            origins: &[b"http://attacker.example:8000"],
            host: "attacker.example:8000",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "rebound domain over https",
            origins: &[b"https://attacker.example"],
            host: "attacker.example",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "IPv4 literal",
            origins: &[b"http://127.0.0.1:8000"],
            host: "127.0.0.1:8000",
            expected: ALLOWED,
        },
        Case {
            name: "IPv6 literal",
            origins: &[b"http://[::1]:8000"],
            host: "[::1]:8000",
            expected: ALLOWED,
        },
        Case {
            name: "localhost",
            origins: &[b"http://localhost:8000"],
            host: "LOCALHOST:8000",
            expected: ALLOWED,
        },
        Case {
            name: "a name under localhost",
            origins: &[b"http://app.localhost:8000"],
            host: "app.localhost:8000",
            expected: ALLOWED,
        },
        Case {
            name: "a domain that merely starts with localhost",
            origins: &[b"http://localhost.attacker.example:8000"],
            host: "localhost.attacker.example:8000",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "no origin: not a browser, the host is not checked",
            origins: &[],
            host: "attacker.example:8000",
            expected: ALLOWED,
        },
    ];
    run(&OriginGuardLayer::new(), &cases).await;
    // `allow_same_origin` next to other rules follows the same rule.
    run(&configured().allow_same_origin(), &cases[..2]).await;
}

/// Allowed hosts (Django's `ALLOWED_HOSTS`): the `Host` of every checked handshake must be
/// one of them, whatever rule decides the origin.
#[tokio::test]
async fn allowed_hosts_are_checked_on_every_handshake() {
    let same_origin = OriginGuardLayer::new()
        .allow_hosts(["chat.example.com", ".example.org", "127.0.0.1:8000"])
        .expect("valid hosts");
    let cases = [
        Case {
            name: "allowed host, same origin",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com",
            expected: ALLOWED,
        },
        Case {
            name: "allowed host, other origin",
            origins: &[b"https://evil.example.net"],
            host: "chat.example.com",
            expected: NOT_ALLOWED,
        },
        Case {
            name: "rebound domain",
            origins: &[b"http://attacker.example:8000"],
            host: "attacker.example:8000",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "subdomain entry: the domain itself",
            origins: &[b"https://example.org"],
            host: "example.org",
            expected: ALLOWED,
        },
        Case {
            name: "subdomain entry: a subdomain",
            origins: &[b"https://a.b.example.org"],
            host: "a.b.example.org",
            expected: ALLOWED,
        },
        Case {
            name: "subdomain entry: not a suffix match",
            origins: &[b"https://evilexample.org"],
            host: "evilexample.org",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "entry with a port: that port",
            origins: &[b"http://127.0.0.1:8000"],
            host: "127.0.0.1:8000",
            expected: ALLOWED,
        },
        Case {
            name: "entry with a port: another port",
            origins: &[b"http://127.0.0.1:9000"],
            host: "127.0.0.1:9000",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "allowed hosts replace the IP-literal rule",
            origins: &[b"http://[::1]:8000"],
            host: "[::1]:8000",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "no origin: host still checked",
            origins: &[],
            host: "attacker.example",
            expected: HOST_NOT_ALLOWED,
        },
        Case {
            name: "malformed host",
            origins: &[b"https://chat.example.com"],
            host: "chat.example.com/x",
            expected: HOST_NOT_ALLOWED,
        },
    ];
    run(&same_origin, &cases).await;

    // With an explicit origin list, the host is checked too.
    let explicit = configured().allow_host("api.example.com").expect("valid");
    let cases = [
        Case {
            name: "explicit origin, allowed host",
            origins: &[b"https://app.example.com"],
            host: "api.example.com",
            expected: ALLOWED,
        },
        Case {
            name: "explicit origin, other host",
            origins: &[b"https://app.example.com"],
            host: "attacker.example",
            expected: HOST_NOT_ALLOWED,
        },
    ];
    run(&explicit, &cases).await;

    // Two Host headers or none: refused.
    let mut req = handshake("chat.example.com", &[b"https://chat.example.com"]);
    req.headers_mut()
        .append(header::HOST, HeaderValue::from_static("chat.example.com"));
    assert_eq!(outcome(&same_origin, req).await, HOST_NOT_ALLOWED);
    let mut req = handshake("chat.example.com", &[b"https://chat.example.com"]);
    req.headers_mut().remove(header::HOST);
    assert_eq!(outcome(&same_origin, req).await, HOST_NOT_ALLOWED);
}

#[test]
fn allowed_host_config_errors() {
    for bad in [
        "",
        " example.com",
        "http://example.com",
        "example.com/",
        "user@example.com",
        "*.example.com",
        "example.com:",
        "example.com:99999",
        "::1",
        "[::1",
        ".127.0.0.1",
        "exa mple.com",
    ] {
        assert!(
            matches!(
                OriginGuardLayer::new().allow_host(bad),
                Err(ConfigError::InvalidHost { .. })
            ),
            "{bad:?}"
        );
    }
    // IDN hosts are stored in punycode.
    let layer = OriginGuardLayer::new()
        .allow_host("Bücher.example")
        .expect("valid");
    assert!(format!("{layer:?}").contains("xn--bcher-kva.example"));
}

/// Issue 13, point 11: a handshake known to arrive over TLS refuses `http://` origins, even
/// allowed ones: such a page can be rewritten by anybody on the network path.
#[tokio::test]
async fn http_origins_are_refused_over_tls() {
    let layer = OriginGuardLayer::new()
        .allow_origins(["http://app.example.com", "https://app.example.com"])
        .expect("valid")
        .tls(true);
    let cases = [
        Case {
            name: "http origin",
            origins: &[b"http://app.example.com"],
            host: "api.example.com",
            expected: INSECURE,
        },
        Case {
            name: "https origin",
            origins: &[b"https://app.example.com"],
            host: "api.example.com",
            expected: ALLOWED,
        },
    ];
    run(&layer, &cases).await;

    // Same origin over TLS: `https` only.
    let layer = OriginGuardLayer::new().tls(true);
    let cases = [
        Case {
            name: "same origin over https",
            origins: &[b"https://127.0.0.1:8443"],
            host: "127.0.0.1:8443",
            expected: ALLOWED,
        },
        Case {
            name: "same origin over http",
            origins: &[b"http://127.0.0.1:8443"],
            host: "127.0.0.1:8443",
            expected: INSECURE,
        },
    ];
    run(&layer, &cases).await;

    // An `https` request URI (HTTP/2, absolute form) is known to be TLS without the setting.
    let layer = OriginGuardLayer::new()
        .allow_origin("http://app.example.com")
        .expect("valid");
    let mut req = handshake("api.example.com", &[b"http://app.example.com"]);
    *req.uri_mut() = "https://api.example.com/ws".parse().expect("static uri");
    assert_eq!(outcome(&layer, req).await, INSECURE);
    let req = handshake("api.example.com", &[b"http://app.example.com"]);
    assert_eq!(outcome(&layer, req).await, ALLOWED);
}

mod properties {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// The layer's decision for a handshake carrying `origin` as its only `Origin`.
    fn decide(layer: &OriginGuardLayer, origin: &[u8]) -> Result<(), OriginError> {
        let (parts, _) = handshake("api.example.com", &[origin]).into_parts();
        layer
            .config
            .check(&parts)
            .map_err(|rejected| rejected.error)
    }

    /// IDN labels with their punycode (A-label) forms, from IANA's test domains and RFC 3492's
    /// examples; written out so that the test does not trust the parser it checks.
    const IDN: &[(&str, &str)] = &[
        ("bücher", "xn--bcher-kva"),
        ("münchen", "xn--mnchen-3ya"),
        ("пример", "xn--e1afmkfd"),
        ("δοκιμή", "xn--jxalpdlp"),
        ("例え", "xn--r8jz45g"),
    ];

    #[derive(Clone, Debug)]
    enum Host {
        /// Labels as (unicode, ascii) spellings; equal for plain labels.
        Domain(Vec<(String, String)>),
        V4(Ipv4Addr),
        V6(Ipv6Addr),
    }

    #[derive(Clone, Debug)]
    struct Site {
        scheme: &'static str,
        host: Host,
        /// The port as configured: `None`, the scheme's default, or another one.
        port: Option<u16>,
    }

    fn default_port(scheme: &str) -> u16 {
        match scheme {
            "http" | "ws" => 80,
            _ => 443,
        }
    }

    impl Site {
        fn effective_port(&self) -> u16 {
            self.port.unwrap_or_else(|| default_port(self.scheme))
        }

        fn ascii_host(&self) -> String {
            match &self.host {
                Host::Domain(labels) => labels
                    .iter()
                    .map(|(_, a)| a.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
                Host::V4(ip) => ip.to_string(),
                Host::V6(ip) => format!("[{ip}]"),
            }
        }

        /// The canonical serialisation, computed without the URL parser.
        fn canonical(&self) -> String {
            let mut s = format!("{}://{}", self.scheme, self.ascii_host());
            if self.effective_port() != default_port(self.scheme) {
                s.push_str(&format!(":{}", self.effective_port()));
            }
            s
        }

        fn with_host(&self, host: String) -> String {
            format!("{}://{host}{}", self.scheme, self.port_suffix())
        }

        fn port_suffix(&self) -> String {
            match self.port {
                Some(p) => format!(":{p}"),
                None => String::new(),
            }
        }
    }

    fn ascii_label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
            .prop_filter("not an A-label", |l| l.len() < 4 || &l[2..4] != "--")
    }

    fn host() -> impl Strategy<Value = Host> {
        let domain = (
            proptest::option::of(proptest::sample::select(IDN)),
            proptest::collection::vec(ascii_label(), 0..3),
            proptest::sample::select(&["com", "org", "net", "example", "de"][..]),
        )
            .prop_map(|(idn, middle, tld)| {
                let mut labels: Vec<(String, String)> = Vec::new();
                if let Some((u, a)) = idn {
                    labels.push(((*u).to_owned(), (*a).to_owned()));
                }
                labels.extend(middle.into_iter().map(|l| (l.clone(), l)));
                if labels.is_empty() {
                    labels.push(("app".to_owned(), "app".to_owned()));
                }
                labels.push(((*tld).to_owned(), (*tld).to_owned()));
                Host::Domain(labels)
            });
        prop_oneof![
            3 => domain,
            1 => any::<[u8; 4]>().prop_map(|o| Host::V4(Ipv4Addr::from(o))),
            1 => any::<[u16; 8]>().prop_map(|s| Host::V6(Ipv6Addr::from(s))),
        ]
    }

    fn site() -> impl Strategy<Value = Site> {
        (
            proptest::sample::select(&["http", "https", "ws", "wss"][..]),
            host(),
            prop_oneof![Just(None), Just(Some(0)), (1u16..=65535).prop_map(Some)],
        )
            .prop_map(|(scheme, host, port)| Site {
                scheme,
                host,
                // `Some(0)` stands for "the default port, spelled out".
                port: port.map(|p| if p == 0 { default_port(scheme) } else { p }),
            })
    }

    /// `s` with the ASCII letters upper-cased where `mask` has a bit set (cycling).
    fn recase(s: &str, mask: u64) -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_uppercase().next().unwrap_or(c)
                } else {
                    c
                }
            })
            .collect()
    }

    /// How the site is spelled somewhere.
    #[derive(Clone, Debug)]
    struct Spelling {
        scheme_case: u64,
        host_case: u64,
        explicit_port: bool,
        /// Config only: Unicode labels instead of punycode; a trailing slash.
        unicode: bool,
        slash: bool,
        /// IPv6 written out in full instead of compressed.
        full_v6: bool,
    }

    fn spelling() -> impl Strategy<Value = Spelling> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(scheme_case, host_case, explicit_port, unicode, slash, full_v6)| Spelling {
                    scheme_case,
                    host_case,
                    explicit_port,
                    unicode,
                    slash,
                    full_v6,
                },
            )
    }

    /// `site` spelled by `how`; `config` allows Unicode hosts and a trailing slash, which a
    /// browser's `Origin` never has.
    fn spell(site: &Site, how: &Spelling, config: bool) -> String {
        let host = match &site.host {
            Host::Domain(labels) => labels
                .iter()
                .map(|(u, a)| if config && how.unicode { u } else { a }.as_str())
                .collect::<Vec<_>>()
                .join("."),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) if how.full_v6 => {
                let pieces: Vec<String> = ip.segments().iter().map(|s| format!("{s:x}")).collect();
                format!("[{}]", pieces.join(":"))
            }
            Host::V6(ip) => format!("[{ip}]"),
        };
        let port = site.effective_port();
        let port = if port != default_port(site.scheme) || how.explicit_port {
            format!(":{port}")
        } else {
            String::new()
        };
        let slash = if config && how.slash { "/" } else { "" };
        format!(
            "{}://{}{port}{slash}",
            recase(site.scheme, how.scheme_case),
            recase(&host, how.host_case)
        )
    }

    fn allowing(site: &Site, how: &Spelling) -> OriginGuardLayer {
        let entry = spell(site, how, true);
        OriginGuardLayer::new()
            .allow_origin(&entry)
            .unwrap_or_else(|e| panic!("{entry:?} is a valid origin: {e}"))
    }

    /// Origins that differ from `site` by one trick, each of them a different origin.
    fn near_misses(site: &Site) -> Vec<String> {
        let host = site.ascii_host();
        let port = site.port_suffix();
        let mut misses = vec![
            format!("a.{host}"),
            format!("evil{host}"),
            format!("{host}.evil.net"),
            format!("{host}evil"),
            format!("{host}-"),
        ]
        .into_iter()
        .map(|h| site.with_host(h))
        .collect::<Vec<_>>();
        for scheme in ["http", "https", "ws", "wss", "ftp", "chrome-extension"] {
            if scheme != site.scheme {
                misses.push(format!("{scheme}://{host}{port}"));
            }
        }
        for other in [1, 80, 443, 8080, 65535] {
            if other != site.effective_port() {
                misses.push(format!("{}://{host}:{other}", site.scheme));
            }
        }
        let authority = format!("{host}{port}");
        misses.extend([
            format!("{}://user@{authority}", site.scheme),
            format!("{}://user:pw@{authority}", site.scheme),
            format!("{}://{authority}@evil.net", site.scheme),
            format!("{}://{authority}/", site.scheme),
            format!("{}://{authority}/path", site.scheme),
            format!("{}://{authority}?q", site.scheme),
            format!("{}://{authority}#f", site.scheme),
            format!("{}://{authority}\\", site.scheme),
            format!("{}:// {authority}", site.scheme),
            format!("{}://{authority} ", site.scheme),
            format!("{}://%61{authority}", site.scheme),
            format!("{}:{authority}", site.scheme),
            format!("{}//{authority}", site.scheme),
            authority.clone(),
            "null".to_owned(),
        ]);
        match &site.host {
            Host::Domain(labels) => {
                // One label changed, one dropped.
                let ascii: Vec<&str> = labels.iter().map(|(_, a)| a.as_str()).collect();
                let mut changed: Vec<String> = ascii.iter().map(|s| (*s).to_owned()).collect();
                let first = &mut changed[0];
                let last = first.pop().unwrap_or('a');
                first.push(if last == 'q' { 'z' } else { 'q' });
                misses.push(site.with_host(changed.join(".")));
                misses.push(site.with_host(ascii[1..].join(".")));
                // A trailing dot names another host (for an IPv4 address the URL standard
                // drops it: the same origin).
                misses.push(site.with_host(format!("{host}.")));
                // The Unicode spelling is for configuration only: browsers send punycode.
                if labels.iter().any(|(u, a)| u != a) {
                    let unicode: Vec<&str> = labels.iter().map(|(u, _)| u.as_str()).collect();
                    misses.push(site.with_host(unicode.join(".")));
                }
            }
            Host::V4(ip) => {
                let mut octets = ip.octets();
                octets[3] ^= 1;
                misses.push(site.with_host(Ipv4Addr::from(octets).to_string()));
                misses.push(site.with_host(format!("[::ffff:{ip}]")));
            }
            Host::V6(ip) => {
                let mut segments = ip.segments();
                segments[7] ^= 1;
                misses.push(site.with_host(format!("[{}]", Ipv6Addr::from(segments))));
                misses.push(site.with_host(ip.to_string()));
            }
        }
        misses
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Invariant 1: a listed origin matches under any spelling of the entry and of the
        /// header: case, explicit default port, Unicode or punycode, a trailing slash in
        /// the configuration, IPv6 compressed or not.
        #[test]
        fn a_listed_origin_matches_under_any_spelling(
            site in site(),
            config in spelling(),
            header in spelling(),
        ) {
            let layer = allowing(&site, &config);
            let sent = spell(&site, &header, false);
            prop_assert_eq!(decide(&layer, sent.as_bytes()), Ok(()), "{} for {}", sent, site.canonical());
        }

        /// Invariant 1, the other half: near misses (other host, prefix and suffix tricks,
        /// other scheme or port, userinfo, trailing dots, paths, escapes, Unicode in the
        /// header) are refused as not allowed or malformed.
        #[test]
        fn near_misses_of_a_listed_origin_are_refused(site in site(), config in spelling()) {
            let layer = allowing(&site, &config);
            for miss in near_misses(&site) {
                let got = decide(&layer, miss.as_bytes());
                prop_assert!(
                    matches!(got, Err(OriginError::NotAllowed | OriginError::Malformed | OriginError::Null)),
                    "{:?} was {:?} with {} allowed", miss, got, site.canonical()
                );
            }
        }

        /// Invariant 1 for any two sites: one is allowed for the other exactly when their
        /// canonical serialisations are equal.
        #[test]
        fn only_the_same_canonical_origin_matches(
            listed in site(),
            other in site(),
            config in spelling(),
            header in spelling(),
        ) {
            let layer = allowing(&listed, &config);
            let sent = spell(&other, &header, false);
            let same = listed.canonical() == other.canonical();
            prop_assert_eq!(decide(&layer, sent.as_bytes()).is_ok(), same, "{} vs {}", sent, listed.canonical());
        }

        /// A subdomain pattern matches one or more whole labels in front of its base, in any
        /// case, and refuses the base itself, look-alikes, other schemes and ports.
        #[test]
        fn a_pattern_matches_whole_subdomains_only(
            base in proptest::collection::vec(ascii_label(), 0..2),
            name in ascii_label(),
            tld in proptest::sample::select(&["com", "org", "net", "de"][..]),
            sub in proptest::collection::vec(ascii_label(), 1..4),
            port in proptest::option::of(1u16..=65535),
            case in any::<u64>(),
        ) {
            // `site…`: no label of the public suffix list (`us.com`, `de.net`) by chance.
            let mut base = base;
            base.push(format!("site{name}"));
            let base = format!("{}.{tld}", base.join("."));
            let port = port.filter(|p| *p != 443).map(|p| format!(":{p}")).unwrap_or_default();
            let layer = OriginGuardLayer::new()
                .allow_origin_pattern(format!("https://*.{base}{port}"))
                .expect("a registrable base");
            let sub = sub.join(".");
            let good = recase(&format!("https://{sub}.{base}{port}"), case);
            prop_assert_eq!(decide(&layer, good.as_bytes()), Ok(()), "{}", good);
            let other_port = if port == ":8443" { ":8444" } else { ":8443" };
            for miss in [
                format!("https://{base}{port}"),
                format!("https://{sub}{base}{port}"),
                format!("https://{sub}-{base}{port}"),
                format!("https://{sub}.{base}.evil.net{port}"),
                format!("https://{sub}.{base}.{port}"),
                format!("https://.{base}{port}"),
                format!("https://{sub}..{base}{port}"),
                format!("http://{sub}.{base}{port}"),
                format!("wss://{sub}.{base}{port}"),
                format!("https://{sub}.{base}{other_port}"),
                format!("https://user@{sub}.{base}{port}"),
                format!("https://{sub}.{base}{port}/"),
            ] {
                let got = decide(&layer, miss.as_bytes());
                prop_assert!(
                    matches!(got, Err(OriginError::NotAllowed | OriginError::Malformed)),
                    "{:?} was {:?}", miss, got
                );
            }
        }

        /// Any bytes a header can hold: a precise refusal or a canonical origin, never a
        /// panic; an accepted value is exactly `scheme://host[:port]` and re-parses to itself.
        #[test]
        fn any_origin_bytes_give_a_precise_answer(
            raw in proptest::collection::vec(any::<u8>(), 0..48),
            prefix in proptest::sample::select(&["", "https://", "http://[", "wss://a.b:"][..]),
        ) {
            let mut value = prefix.as_bytes().to_vec();
            value.extend(raw.into_iter().filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
            let Ok(header) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            match super::super::Origin::from_header(header.as_bytes()) {
                Ok(origin) => {
                    let text = origin.to_string();
                    let (scheme, authority) = text.split_once("://").expect("scheme://authority");
                    prop_assert!(!scheme.is_empty() && !authority.is_empty(), "{}", text);
                    prop_assert!(
                        authority.bytes().all(|b| b.is_ascii_graphic() && !b"/@?#\\%".contains(&b)),
                        "{}", text
                    );
                    prop_assert_eq!(super::super::Origin::from_header(text.as_bytes()), Ok(origin));
                }
                Err(e) => prop_assert!(matches!(e, OriginError::Malformed | OriginError::Null)),
            }
            // And through the whole layer, with every kind of rule configured.
            let _ = decide(&configured(), header.as_bytes());
        }

        /// Any `Host` bytes, with allowed hosts or the same-origin rule: a precise refusal
        /// or an admission whose `Host` is the origin's own, never a panic.
        #[test]
        fn any_host_bytes_give_a_precise_answer(
            raw in proptest::collection::vec(any::<u8>(), 0..32),
            prefix in proptest::sample::select(&["", "app.example.com", "[::1]", "127.0.0.1:"][..]),
            hosts in any::<bool>(),
        ) {
            let mut host = prefix.as_bytes().to_vec();
            host.extend(raw.into_iter().filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
            let Ok(host) = HeaderValue::from_bytes(&host) else {
                return Ok(());
            };
            let layer = if hosts {
                OriginGuardLayer::new().allow_host("app.example.com").expect("a host")
            } else {
                OriginGuardLayer::new()
            };
            let mut req = handshake("placeholder", &[b"http://app.example.com"]);
            req.headers_mut().insert(header::HOST, host.clone());
            let (parts, _) = req.into_parts();
            match layer.config.check(&parts).map_err(|r| r.error) {
                Ok(()) => prop_assert!(
                    host.as_bytes().eq_ignore_ascii_case(b"app.example.com")
                        || host.as_bytes().eq_ignore_ascii_case(b"app.example.com:80"),
                    "{:?} let through", host
                ),
                Err(e) => prop_assert!(matches!(e, OriginError::HostNotAllowed | OriginError::NotAllowed), "{:?}", e),
            }
        }
    }
}
