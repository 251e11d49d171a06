use std::{convert::Infallible, net::IpAddr, time::Duration};

use axum::{body::Body, response::Response};
use futures_util::FutureExt;
use governor::clock::FakeRelativeClock;
use http::{Request, StatusCode, header};
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use super::*;
use crate::{
    Rejection,
    auth::{AuthError, Principal},
    test_support::nz,
};

fn request(ip: Option<&str>, subject: Option<&str>) -> Request<Body> {
    let mut req = Request::get("/ws").body(Body::empty()).unwrap();
    if let Some(ip) = ip {
        req.extensions_mut()
            .insert(ClientIp(ip.parse::<IpAddr>().unwrap()));
    }
    if let Some(subject) = subject {
        req.extensions_mut().insert(Principal::new(subject, None));
    }
    req
}

/// An inner service that answers 200 and hands the request's permit back in the response
/// extensions, so a test can hold it like an upgraded socket would.
async fn ok(mut req: Request<Body>) -> Result<Response, Infallible> {
    let mut res = Response::new(Body::empty());
    if let Some(permit) = req.extensions_mut().remove::<ConnectionPermit>() {
        res.extensions_mut().insert(permit);
    }
    Ok(res)
}

fn header_str<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn retry_after_rounds_up_to_at_least_one_second() {
    struct Case {
        name: &'static str,
        wait: Duration,
        want: u64,
    }
    let cases = [
        Case {
            name: "zero",
            wait: Duration::ZERO,
            want: 1,
        },
        Case {
            name: "1ns",
            wait: Duration::from_nanos(1),
            want: 1,
        },
        Case {
            name: "exact",
            wait: Duration::from_secs(3),
            want: 3,
        },
        Case {
            name: "fraction",
            wait: Duration::from_millis(3001),
            want: 4,
        },
    ];
    for case in cases {
        assert_eq!(retry_after_secs(case.wait), case.want, "{}", case.name);
    }
}

#[test]
fn rates_too_fine_for_governor_saturate_to_one_per_nanosecond() {
    struct Case {
        name: &'static str,
        count: u32,
        period: Duration,
        interval: Duration,
    }
    let cases = [
        Case {
            name: "ten a second",
            count: 10,
            period: Duration::from_secs(1),
            interval: Duration::from_millis(100),
        },
        Case {
            name: "a billion a second is the finest rate",
            count: 1_000_000_000,
            period: Duration::from_secs(1),
            interval: Duration::from_nanos(1),
        },
        Case {
            name: "above a billion a second saturates",
            count: 1_000_000_001,
            period: Duration::from_secs(1),
            interval: Duration::from_nanos(1),
        },
        Case {
            name: "u32::MAX a second saturates",
            count: u32::MAX,
            period: Duration::from_secs(1),
            interval: Duration::from_nanos(1),
        },
        Case {
            name: "u32::MAX a minute is representable",
            count: u32::MAX,
            period: Duration::from_secs(60),
            interval: Duration::from_secs(60) / u32::MAX,
        },
    ];
    for case in cases {
        let quota = layer::quota(nz(case.count), case.period, None);
        assert_eq!(quota.replenish_interval(), case.interval, "{}", case.name);
        assert_eq!(quota.burst_size().get(), case.count, "{}", case.name);
    }
}

#[tokio::test]
async fn a_saturated_rate_still_limits() {
    let clock = FakeRelativeClock::default();
    let svc = RateLimitLayer::new()
        .per_second(nz(u32::MAX))
        .burst(nz(1))
        .clock(clock.clone())
        .layer(service_fn(ok));
    let call = || svc.clone().oneshot(request(Some("192.0.2.1"), None));
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        call().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "same instant"
    );
    clock.advance(Duration::from_nanos(1));
    assert_eq!(call().await.unwrap().status(), StatusCode::OK, "1 ns later");
}

#[tokio::test]
async fn throttle_durations_below_one_second_count_as_one_second() {
    struct Case {
        name: &'static str,
        layer: AuthThrottleLayer<FakeRelativeClock>,
        /// When the second failure comes, after the first.
        second_failure_after: Duration,
        /// Whether the client is locked out right after the second failure.
        locked: bool,
        /// How long a lock-out lasts.
        lock_lasts: Duration,
    }
    let throttle = |clock: &FakeRelativeClock| {
        AuthThrottleLayer::new()
            .max_failures(nz(2))
            .clock(clock.clone())
    };
    let clocks: Vec<FakeRelativeClock> = (0..3).map(|_| FakeRelativeClock::default()).collect();
    let cases = [
        Case {
            name: "a zero window counts failures for one second",
            layer: throttle(&clocks[0]).window(Duration::ZERO),
            second_failure_after: Duration::from_millis(999),
            locked: true,
            lock_lasts: Duration::from_secs(60),
        },
        Case {
            name: "and forgets them after one second",
            layer: throttle(&clocks[1]).window(Duration::ZERO),
            second_failure_after: Duration::from_secs(1),
            locked: false,
            lock_lasts: Duration::ZERO,
        },
        Case {
            name: "a zero lock-out lasts one second",
            layer: throttle(&clocks[2]).block_for(Duration::ZERO),
            second_failure_after: Duration::ZERO,
            locked: true,
            lock_lasts: Duration::from_secs(1),
        },
    ];
    for (case, clock) in cases.into_iter().zip(&clocks) {
        let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
        let svc = case.layer.layer(mock);
        let bad = || Some(AuthError::Invalid);
        const A: &str = "192.0.2.1";
        through_mock(&svc, &mut handle, A, bad()).await;
        clock.advance(case.second_failure_after);
        through_mock(&svc, &mut handle, A, bad()).await;
        let (status, _) = through_mock(&svc, &mut handle, A, None).await;
        let expected = if case.locked {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SWITCHING_PROTOCOLS
        };
        assert_eq!(status, expected, "{}", case.name);
        if case.locked {
            clock.advance(case.lock_lasts - Duration::from_millis(1));
            let (status, _) = through_mock(&svc, &mut handle, A, None).await;
            assert_eq!(
                status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}: still locked",
                case.name
            );
            clock.advance(Duration::from_millis(1));
            let (status, _) = through_mock(&svc, &mut handle, A, None).await;
            assert_eq!(
                status,
                StatusCode::SWITCHING_PROTOCOLS,
                "{}: lock-out over",
                case.name
            );
        }
    }
}

#[tokio::test]
async fn rate_limit_by_key() {
    struct Case {
        name: &'static str,
        key: KeyBy,
        // (client ip, subject, expected status) in order, all at the same instant.
        steps: &'static [(Option<&'static str>, Option<&'static str>, StatusCode)],
    }
    const OK: StatusCode = StatusCode::OK;
    const LIMITED: StatusCode = StatusCode::TOO_MANY_REQUESTS;
    let cases = [
        Case {
            name: "per ip: burst then limited, other ip unaffected",
            key: KeyBy::ClientIp,
            steps: &[
                (Some("192.0.2.1"), None, OK),
                (Some("192.0.2.1"), None, OK),
                (Some("192.0.2.1"), None, LIMITED),
                (Some("192.0.2.2"), None, OK),
            ],
        },
        Case {
            name: "per ip: an IPv6 /64 is one key",
            key: KeyBy::ClientIp,
            steps: &[
                (Some("2001:db8:1:1::1"), None, OK),
                (Some("2001:db8:1:1::2"), None, OK),
                (Some("2001:db8:1:1:ffff::3"), None, LIMITED),
                (Some("2001:db8:1:2::1"), None, OK),
            ],
        },
        Case {
            name: "per identity: one user across addresses",
            key: KeyBy::Identity,
            steps: &[
                (Some("192.0.2.1"), Some("alice"), OK),
                (Some("192.0.2.2"), Some("alice"), OK),
                (Some("192.0.2.3"), Some("alice"), LIMITED),
                (Some("192.0.2.3"), Some("bob"), OK),
                // Anonymous requests fall back to the client address.
                (Some("192.0.2.3"), None, OK),
            ],
        },
        Case {
            name: "global: everyone shares",
            key: KeyBy::Global,
            steps: &[
                (Some("192.0.2.1"), None, OK),
                (None, Some("bob"), OK),
                (Some("192.0.2.9"), None, LIMITED),
            ],
        },
        Case {
            name: "missing ClientIp is a configuration error",
            key: KeyBy::ClientIp,
            steps: &[(None, Some("alice"), StatusCode::INTERNAL_SERVER_ERROR)],
        },
    ];
    for case in cases {
        let clock = FakeRelativeClock::default();
        let layer = RateLimitLayer::new()
            .per_second(nz(1))
            .burst(nz(2))
            .key(case.key)
            .clock(clock.clone());
        let svc = layer.layer(service_fn(ok));
        for (i, (ip, subject, want)) in case.steps.iter().enumerate() {
            let res = svc.clone().oneshot(request(*ip, *subject)).await.unwrap();
            assert_eq!(res.status(), *want, "{} step {i}", case.name);
            if *want == LIMITED {
                assert_eq!(header_str(&res, "retry-after"), Some("1"), "{}", case.name);
                assert!(matches!(
                    res.extensions().get::<RateLimitError>(),
                    Some(RateLimitError::TooManyHandshakes { limit: 2, .. })
                ));
            }
        }
    }
}

#[tokio::test]
async fn rate_limit_replenishes_with_the_clock_and_sets_headers() {
    let clock = FakeRelativeClock::default();
    let svc = RateLimitLayer::new()
        .per_minute(nz(2))
        .burst(nz(2))
        .rate_limit_headers(true)
        .clock(clock.clone())
        .layer(service_fn(ok));
    let call = || svc.clone().oneshot(request(Some("192.0.2.1"), None));

    let res = call().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_str(&res, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header_str(&res, "x-ratelimit-remaining"), Some("1"));
    let res = call().await.unwrap();
    assert_eq!(header_str(&res, "x-ratelimit-remaining"), Some("0"));

    let res = call().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // One handshake every 30 s.
    assert_eq!(header_str(&res, "retry-after"), Some("30"));
    assert_eq!(header_str(&res, "x-ratelimit-after"), Some("30"));
    assert_eq!(header_str(&res, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        header_str(&res, "content-type"),
        Some("text/plain; charset=utf-8")
    );

    clock.advance(Duration::from_millis(29_500));
    let res = call().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&res, "retry-after"), Some("1"));

    clock.advance(Duration::from_millis(500));
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        call().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn custom_rejection_keeps_retry_after_and_error() {
    let svc = RateLimitLayer::new()
        .per_minute(nz(1))
        .on_rejection(|rejection: &Rejection| {
            let cause = match rejection {
                Rejection::RateLimit(err) => err.cause(),
                _ => "other",
            };
            let mut res = Response::new(Body::from(format!("custom: {cause}")));
            *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            res
        })
        .clock(FakeRelativeClock::default())
        .layer(service_fn(ok));
    let call = || svc.clone().oneshot(request(Some("192.0.2.1"), None));
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    let res = call().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&res, "retry-after"), Some("60"));
    assert!(res.extensions().get::<RateLimitError>().is_some());
    assert!(matches!(
        res.extensions().get::<Rejection>(),
        Some(Rejection::RateLimit(
            RateLimitError::TooManyHandshakes { .. }
        ))
    ));
    let body = axum::body::to_bytes(res.into_body(), 100).await.unwrap();
    assert_eq!(&body[..], b"custom: too_many_handshakes");
}

#[tokio::test]
async fn idle_keys_are_pruned() {
    const KEYS: u32 = 20_000;
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::new()
        .per_second(nz(10))
        .prune_every(0)
        .clock(clock.clone());
    let svc = layer.layer(service_fn(ok));
    for i in 0..KEYS {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let mut req = Request::get("/ws").body(Body::empty()).unwrap();
        req.extensions_mut().insert(ClientIp(ip));
        assert_eq!(
            svc.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(layer.tracked_keys(), KEYS as usize);

    // Still inside the refill time of the burst: nothing is idle yet.
    layer.prune();
    assert_eq!(layer.tracked_keys(), KEYS as usize);

    // One key stays active; the others have been idle longer than the burst takes to refill.
    clock.advance(Duration::from_secs(2));
    let res = svc
        .clone()
        .oneshot(request(Some("10.0.0.1"), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    layer.prune();
    assert_eq!(layer.tracked_keys(), 1);
}

#[tokio::test]
async fn pruning_runs_every_n_requests() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::new()
        .per_second(nz(10))
        .prune_every(100)
        .clock(clock.clone());
    let svc = layer.layer(service_fn(ok));
    for i in 0..99u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let mut req = Request::get("/ws").body(Body::empty()).unwrap();
        req.extensions_mut().insert(ClientIp(ip));
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(layer.tracked_keys(), 99);
    clock.advance(Duration::from_secs(5));
    // The 100th request triggers the prune before it is counted.
    svc.clone()
        .oneshot(request(Some("192.0.2.1"), None))
        .await
        .unwrap();
    assert_eq!(layer.tracked_keys(), 1);
}

#[tokio::test]
async fn spawned_pruner_prunes_and_stops_with_the_layer() {
    tokio::time::pause();
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::new().prune_every(0).clock(clock.clone());
    let svc = layer.clone().layer(service_fn(ok));
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        svc.clone().oneshot(request(Some(ip), None)).await.unwrap();
    }
    assert_eq!(layer.tracked_keys(), 3);
    let task = layer.spawn_pruner(Duration::from_secs(10));
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(layer.tracked_keys(), 0);
    drop(svc);
    drop(layer);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(task.is_finished());
}

fn auth_response(error: Option<AuthError>) -> Response {
    let mut res = Response::new(Body::empty());
    match error {
        Some(e) => {
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            res.extensions_mut().insert(e);
        }
        None => *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS,
    }
    res
}

/// Sends a request through `svc` and, if it reaches the mock, answers with `answer`.
/// Returns the status and whether the inner service ran.
async fn through_mock(
    svc: &AuthThrottle<mock::Mock<Request<Body>, Response>, FakeRelativeClock>,
    handle: &mut mock::Handle<Request<Body>, Response>,
    ip: &str,
    answer: Option<AuthError>,
) -> (StatusCode, bool) {
    let mut call = Box::pin(svc.clone().oneshot(request(Some(ip), None)));
    // A rejected request completes without reaching the mock.
    if let Some(res) = (&mut call).now_or_never() {
        assert!(handle.next_request().now_or_never().is_none());
        return (res.unwrap().status(), false);
    }
    let (_req, send) = handle
        .next_request()
        .await
        .expect("request reached the mock");
    send.send_response(auth_response(answer));
    (call.await.unwrap().status(), true)
}

#[tokio::test]
async fn brute_force_throttle_locks_out_before_auth_runs() {
    let clock = FakeRelativeClock::default();
    let layer = AuthThrottleLayer::new()
        .max_failures(nz(3))
        .window(Duration::from_secs(60))
        .block_for(Duration::from_secs(120))
        .clock(clock.clone());
    let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
    let svc = layer.layer(mock);
    let bad = Some(AuthError::Invalid);
    const A: &str = "192.0.2.1";

    assert_eq!(
        through_mock(&svc, &mut handle, A, bad.clone()).await,
        (StatusCode::UNAUTHORIZED, true)
    );
    // Successes are passed through and not counted.
    assert_eq!(
        through_mock(&svc, &mut handle, A, None).await,
        (StatusCode::SWITCHING_PROTOCOLS, true)
    );
    assert_eq!(
        through_mock(&svc, &mut handle, A, Some(AuthError::Missing)).await,
        (StatusCode::UNAUTHORIZED, true)
    );
    assert_eq!(
        through_mock(&svc, &mut handle, A, Some(AuthError::Expired)).await,
        (StatusCode::UNAUTHORIZED, true)
    );
    // Third failure: locked out; the authenticator no longer runs.
    let mut call = Box::pin(svc.clone().oneshot(request(Some(A), None)));
    let res = (&mut call)
        .now_or_never()
        .expect("rejected without the inner service")
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&res, "retry-after"), Some("120"));
    assert!(matches!(
        res.extensions().get::<RateLimitError>(),
        Some(RateLimitError::TooManyFailedAuth { limit: 3, .. })
    ));
    assert!(handle.next_request().now_or_never().is_none());

    // Another client is unaffected.
    assert_eq!(
        through_mock(&svc, &mut handle, "192.0.2.2", None).await,
        (StatusCode::SWITCHING_PROTOCOLS, true)
    );

    clock.advance(Duration::from_secs(119));
    assert_eq!(
        through_mock(&svc, &mut handle, A, None).await,
        (StatusCode::TOO_MANY_REQUESTS, false)
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        through_mock(&svc, &mut handle, A, None).await,
        (StatusCode::SWITCHING_PROTOCOLS, true)
    );
}

#[tokio::test]
async fn brute_force_window_expires_and_counters_are_pruned() {
    let clock = FakeRelativeClock::default();
    let layer = AuthThrottleLayer::new()
        .max_failures(nz(2))
        .window(Duration::from_secs(10))
        .prune_every(0)
        .clock(clock.clone());
    let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
    let svc = layer.layer(mock);
    let bad = || Some(AuthError::Invalid);

    // Two failures 11 s apart fall in different windows: no lock-out.
    through_mock(&svc, &mut handle, "192.0.2.1", bad()).await;
    clock.advance(Duration::from_secs(11));
    through_mock(&svc, &mut handle, "192.0.2.1", bad()).await;
    assert_eq!(
        through_mock(&svc, &mut handle, "192.0.2.1", None).await,
        (StatusCode::SWITCHING_PROTOCOLS, true)
    );
    for i in 0..50u8 {
        let ip = format!("198.51.100.{i}");
        through_mock(&svc, &mut handle, &ip, bad()).await;
    }
    assert_eq!(layer.tracked_keys(), 51);
    clock.advance(Duration::from_secs(10));
    layer.prune();
    assert_eq!(layer.tracked_keys(), 0);
}

#[tokio::test]
async fn throttle_without_client_ip_is_a_configuration_error() {
    let svc = AuthThrottleLayer::new().layer(service_fn(ok));
    let res = svc.oneshot(request(None, None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        res.extensions().get::<RateLimitError>(),
        Some(&RateLimitError::MissingClientIp)
    );
    assert!(!res.headers().contains_key(header::RETRY_AFTER));
}

async fn open<S>(svc: &S, ip: Option<&str>, subject: Option<&str>) -> Response
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    svc.clone().oneshot(request(ip, subject)).await.unwrap()
}

#[tokio::test]
async fn quotas_per_ip_identity_and_global() {
    let layer = ConnectionQuotaLayer::new()
        .per_ip(nz(2))
        .per_identity(nz(2))
        .global(nz(4))
        .retry_after(Duration::from_millis(2500));
    let svc = layer.layer(service_fn(ok));
    let mut held: Vec<ConnectionPermit> = Vec::new();
    fn take(held: &mut Vec<ConnectionPermit>, res: Response) {
        assert_eq!(res.status(), StatusCode::OK);
        let permit = res
            .extensions()
            .get::<ConnectionPermit>()
            .cloned()
            .expect("a permit");
        assert_eq!(permit.slots(), 1);
        held.push(permit);
    }

    take(&mut held, open(&svc, Some("192.0.2.1"), None).await);
    take(
        &mut held,
        open(&svc, Some("2001:db8::1"), Some("alice")).await,
    );
    // Same /64, same key.
    take(&mut held, open(&svc, Some("2001:db8::2"), None).await);
    let res = open(&svc, Some("2001:db8::3"), None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&res, "retry-after"), Some("3"));
    assert!(matches!(
        res.extensions().get::<RateLimitError>(),
        Some(RateLimitError::ClientIpQuota { limit: 2, .. })
    ));
    take(
        &mut held,
        open(&svc, Some("192.0.2.2"), Some("alice")).await,
    );
    let res = open(&svc, Some("192.0.2.3"), Some("alice")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(matches!(
        res.extensions().get::<RateLimitError>(),
        Some(RateLimitError::IdentityQuota { limit: 2, .. })
    ));
    assert_eq!(layer.active(), 4);
    let res = open(&svc, Some("192.0.2.5"), Some("carol")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    assert!(matches!(
        res.extensions().get::<RateLimitError>(),
        Some(RateLimitError::GlobalQuota { limit: 4, .. })
    ));
    // Rejections hold nothing.
    assert_eq!(layer.active(), 4);
    assert_eq!(layer.active_for_identity("carol"), 0);
    assert_eq!(layer.active_for_ip("2001:db8::ffff".parse().unwrap()), 2);
    assert_eq!(layer.active_for_identity("alice"), 2);

    // A slot comes back only when the last clone of the permit drops.
    let clone = held[0].clone();
    held.remove(0);
    assert_eq!(layer.active(), 4);
    drop(clone);
    assert_eq!(layer.active(), 3);
    take(
        &mut held,
        open(&svc, Some("192.0.2.5"), Some("carol")).await,
    );

    held.clear();
    assert_eq!(layer.active(), 0);
    assert_eq!(layer.tracked_keys(), 0, "empty keys are removed");
}

#[tokio::test]
async fn quota_merges_into_an_existing_permit_and_needs_client_ip_for_per_ip() {
    let outer = ConnectionQuotaLayer::new().global(nz(10));
    let inner = ConnectionQuotaLayer::new().per_ip(nz(1));
    let svc = outer.layer(inner.layer(service_fn(ok)));
    let res = svc
        .clone()
        .oneshot(request(Some("192.0.2.1"), None))
        .await
        .unwrap();
    let permit = res.extensions().get::<ConnectionPermit>().cloned().unwrap();
    assert_eq!(permit.slots(), 2);
    drop(res);
    assert_eq!((outer.active(), inner.active()), (1, 1));
    drop(permit);
    assert_eq!((outer.active(), inner.active()), (0, 0));

    let res = svc.clone().oneshot(request(None, None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        outer.active(),
        0,
        "the outer slot is released with the request"
    );

    // Without a per-IP cap, ClientIp is not needed; without a principal nothing is counted per
    // identity.
    let quota = ConnectionQuotaLayer::new().per_identity(nz(1));
    let svc = quota.layer(service_fn(ok));
    let a = svc.clone().oneshot(request(None, None)).await.unwrap();
    let b = svc.clone().oneshot(request(None, None)).await.unwrap();
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(quota.tracked_keys(), 0);
}

/// Issue 13, point 8: no setting of this module panics on an extreme value.
#[tokio::test]
async fn extreme_settings_saturate_instead_of_panicking() {
    assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);

    // A quota whose retry hint is `Duration::MAX`.
    let svc = ConnectionQuotaLayer::new()
        .per_ip(nz(1))
        .retry_after(Duration::MAX)
        .layer(service_fn(ok));
    let held = open(&svc, Some("192.0.2.1"), None).await;
    let res = open(&svc, Some("192.0.2.1"), None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header_str(&res, "retry-after"),
        Some("18446744073709551615")
    );
    drop(held);

    // A throttle that locks out (and counts) for `Duration::MAX`.
    let clock = FakeRelativeClock::default();
    let layer = AuthThrottleLayer::new()
        .max_failures(nz(1))
        .window(Duration::MAX)
        .block_for(Duration::MAX)
        .clock(clock.clone());
    let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
    let svc = layer.layer(mock);
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        through_mock(&svc, &mut handle, "192.0.2.1", Some(AuthError::Invalid)).await,
        (StatusCode::UNAUTHORIZED, true)
    );
    clock.advance(Duration::from_secs(1_000_000));
    assert_eq!(
        through_mock(&svc, &mut handle, "192.0.2.1", None).await,
        (StatusCode::TOO_MANY_REQUESTS, false)
    );
    layer.prune();
    assert_eq!(layer.tracked_keys(), 1);

    // A pruner that would run every `Duration::MAX` (tokio's interval panics on it).
    tokio::time::pause();
    let rate = RateLimitLayer::new();
    let task = rate.spawn_pruner(Duration::MAX);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!task.is_finished(), "the pruner task died");
    task.abort();
}

/// Issue 13, point 9: an attempt in flight counts as a potential failure, so at most
/// `max_failures` guesses reach the authenticator at once; a success gives its slot back,
/// and so does an attempt whose response future is dropped.
#[tokio::test]
async fn attempts_in_flight_count_against_the_budget() {
    let clock = FakeRelativeClock::default();
    let layer = AuthThrottleLayer::new()
        .max_failures(nz(2))
        .clock(clock.clone());
    let (mock, mut handle) = mock::pair::<Request<Body>, Response>();
    let svc = layer.layer(mock);
    const A: &str = "192.0.2.1";

    let mut first = Box::pin(svc.clone().oneshot(request(Some(A), None)));
    let mut second = Box::pin(svc.clone().oneshot(request(Some(A), None)));
    assert!((&mut first).now_or_never().is_none());
    assert!((&mut second).now_or_never().is_none());
    let (_, send_first) = handle.next_request().await.expect("first reached the mock");
    let (_, send_second) = handle
        .next_request()
        .await
        .expect("second reached the mock");

    // Two attempts in flight: a third is refused before the authenticator, with a hint.
    let res = svc
        .clone()
        .oneshot(request(Some(A), None))
        .now_or_never()
        .expect("refused without the inner service")
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&res, "retry-after"), Some("1"));
    assert!(matches!(
        res.extensions().get::<RateLimitError>(),
        Some(RateLimitError::AuthAttemptsInFlight { limit: 2, .. })
    ));
    assert!(handle.next_request().now_or_never().is_none());
    // Another client has its own budget.
    assert_eq!(
        through_mock(&svc, &mut handle, "192.0.2.2", None).await,
        (StatusCode::SWITCHING_PROTOCOLS, true)
    );

    // A success gives the slot back.
    send_first.send_response(auth_response(None));
    assert_eq!(
        first.await.unwrap().status(),
        StatusCode::SWITCHING_PROTOCOLS
    );
    let mut third = Box::pin(svc.clone().oneshot(request(Some(A), None)));
    assert!((&mut third).now_or_never().is_none());
    let (_, _send_third) = handle.next_request().await.expect("third reached the mock");
    // A dropped attempt gives it back too, without counting as a failure.
    drop(third);
    // The second fails: one failure on the books, one slot free.
    send_second.send_response(auth_response(Some(AuthError::Invalid)));
    assert_eq!(second.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        through_mock(&svc, &mut handle, A, Some(AuthError::Invalid)).await,
        (StatusCode::UNAUTHORIZED, true)
    );
    // Two failures: locked out.
    assert_eq!(
        through_mock(&svc, &mut handle, A, None).await,
        (StatusCode::TOO_MANY_REQUESTS, false)
    );
}

/// `wsguard_rate_limit_keys{layer}`: each prune reports the keys it left, two limiters add
/// up, and a dropped limiter takes its keys back out.
#[cfg(feature = "metrics")]
#[test]
fn tracked_keys_gauge_follows_the_prunes_of_every_limiter() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut gauge = 0.0;
    let mut read = move || {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() == crate::metrics::RATE_LIMIT_KEYS
                && key.labels().any(|l| l.value() == "rate_limit")
                && let DebugValue::Gauge(g) = value
            {
                gauge += g.into_inner();
            }
        }
        gauge
    };
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let clock = FakeRelativeClock::default();
        let a = RateLimitLayer::new().prune_every(0).clock(clock.clone());
        let b = RateLimitLayer::new().prune_every(0).clock(clock.clone());
        let (svc_a, svc_b) = (a.layer(service_fn(ok)), b.layer(service_fn(ok)));
        rt.block_on(async {
            for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
                svc_a
                    .clone()
                    .oneshot(request(Some(ip), None))
                    .await
                    .unwrap();
            }
            svc_b
                .clone()
                .oneshot(request(Some("192.0.2.9"), None))
                .await
                .unwrap();
        });
        assert_eq!(read(), 0.0, "reported at prunes only");
        a.prune();
        b.prune();
        assert_eq!(read(), 4.0);
        clock.advance(Duration::from_secs(60));
        a.prune();
        assert_eq!(read(), 1.0, "a's keys went idle");
        drop((svc_b, b));
        assert_eq!(read(), 0.0, "b is gone");
    });
}

mod properties {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Client addresses by key: the two IPv6 addresses share a /64, so one key.
    const IPS: [(&str, usize); 4] = [
        ("192.0.2.1", 0),
        ("192.0.2.2", 1),
        ("2001:db8::1", 2),
        ("2001:db8::2", 2),
    ];
    const SUBJECTS: [&str; 2] = ["alice", "bob"];

    #[derive(Clone, Debug)]
    enum Op {
        Open {
            ip: usize,
            subject: Option<usize>,
        },
        /// Drops the held permit (or permit clone) with this index, modulo their number.
        Close(usize),
        /// Clones a held permit: its slots return only when every clone is gone.
        Clone(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..IPS.len(), proptest::option::of(0..SUBJECTS.len()))
                .prop_map(|(ip, subject)| Op::Open { ip, subject }),
            2 => any::<usize>().prop_map(Op::Close),
            1 => any::<usize>().prop_map(Op::Clone),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Invariant 4 (local quota): under any interleaving of opens (some refused), permit
        /// clones and closes, the counts are the model's at every step, never pass a cap,
        /// and return to zero, with no key left, once every permit is dropped in any order.
        #[test]
        fn quota_counts_return_to_zero(
            caps in (1usize..4, 1usize..4, 1usize..6),
            ops in proptest::collection::vec(op(), 0..40),
            drop_order in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let (per_ip, per_identity, global) = caps;
            let layer = ConnectionQuotaLayer::new()
                .per_ip(nz(per_ip))
                .per_identity(nz(per_identity))
                .global(nz(global));
            let svc = layer.layer(service_fn(ok));
            // Held permits with the slot they stand for; slots by id: (ip key, subject).
            let mut held: Vec<(ConnectionPermit, usize)> = Vec::new();
            let mut slots: HashMap<usize, (usize, Option<usize>)> = HashMap::new();
            let mut next_id = 0;
            let model = |held: &[(ConnectionPermit, usize)], slots: &HashMap<usize, (usize, Option<usize>)>| {
                let live: std::collections::HashSet<usize> = held.iter().map(|(_, id)| *id).collect();
                let mut by_ip = [0usize; 3];
                let mut by_subject = [0usize; 2];
                for id in &live {
                    let (ip, subject) = slots[id];
                    by_ip[ip] += 1;
                    if let Some(s) = subject {
                        by_subject[s] += 1;
                    }
                }
                (live.len(), by_ip, by_subject)
            };
            for op in ops {
                match op {
                    Op::Open { ip, subject } => {
                        let (total, by_ip, by_subject) = model(&held, &slots);
                        let key = IPS[ip].1;
                        // The first cap reached refuses, in this order.
                        let expected = if by_ip[key] >= per_ip {
                            Some((StatusCode::TOO_MANY_REQUESTS, "ip"))
                        } else if subject.is_some_and(|s| by_subject[s] >= per_identity) {
                            Some((StatusCode::TOO_MANY_REQUESTS, "identity"))
                        } else if total >= global {
                            Some((StatusCode::SERVICE_UNAVAILABLE, "global"))
                        } else {
                            None
                        };
                        let res = open(&svc, Some(IPS[ip].0), subject.map(|s| SUBJECTS[s]))
                            .now_or_never()
                            .expect("the local quota answers at once");
                        match expected {
                            Some((status, cap)) => {
                                prop_assert_eq!(res.status(), status);
                                let error = res.extensions().get::<RateLimitError>();
                                let named = match cap {
                                    "ip" => matches!(error, Some(RateLimitError::ClientIpQuota { .. })),
                                    "identity" => matches!(error, Some(RateLimitError::IdentityQuota { .. })),
                                    _ => matches!(error, Some(RateLimitError::GlobalQuota { .. })),
                                };
                                prop_assert!(named, "{:?} for the {} cap", error, cap);
                                prop_assert!(res.extensions().get::<ConnectionPermit>().is_none());
                            }
                            None => {
                                prop_assert_eq!(res.status(), StatusCode::OK);
                                let permit = res.extensions().get::<ConnectionPermit>().cloned().expect("a permit");
                                slots.insert(next_id, (key, subject));
                                held.push((permit, next_id));
                                next_id += 1;
                            }
                        }
                    }
                    Op::Close(i) if !held.is_empty() => {
                        held.remove(i % held.len());
                    }
                    Op::Clone(i) if !held.is_empty() => {
                        let (permit, id) = &held[i % held.len()];
                        let copy = (permit.clone(), *id);
                        held.push(copy);
                    }
                    Op::Close(_) | Op::Clone(_) => {}
                }
                let (total, by_ip, by_subject) = model(&held, &slots);
                prop_assert_eq!(layer.active(), total);
                prop_assert!(total <= global);
                for (ip, key) in IPS {
                    prop_assert_eq!(layer.active_for_ip(ip.parse().unwrap()), by_ip[key]);
                    prop_assert!(by_ip[key] <= per_ip);
                }
                for (s, subject) in SUBJECTS.iter().enumerate() {
                    prop_assert_eq!(layer.active_for_identity(subject), by_subject[s]);
                    prop_assert!(by_subject[s] <= per_identity);
                }
            }
            for i in drop_order {
                if held.is_empty() {
                    break;
                }
                held.remove(i % held.len());
                prop_assert_eq!(layer.active(), model(&held, &slots).0);
            }
            held.clear();
            prop_assert_eq!(layer.active(), 0);
            prop_assert_eq!(layer.tracked_keys(), 0);
        }
    }
}
