//! Unit tests of the scripts and layers against a real `redis-server` (spawned per test on a
//! free loopback port; the tests fail if `redis-server` is not installed).

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::{body::Body, response::Response};
use http::{Request, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::test_support::nz;
use crate::{
    auth::{Principal, TokenFingerprint},
    client_ip::ClientIp,
    rate_limit::{ConnectionPermit, ConnectionQuotaLayer, RateLimitLayer},
    socket::CloseSignal,
};

/// A `redis-server` on a free loopback port, killed on drop.
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) port: u16,
    /// The cluster config directory of [`start_cluster`](Self::start_cluster), removed on drop.
    dir: Option<std::path::PathBuf>,
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    pub(crate) fn start_on(port: u16) -> Self {
        Self::spawn(port, &[], None)
    }

    /// A single `redis-server` in cluster mode that serves every slot: it checks scripts as
    /// Redis Cluster does (every key declared in `KEYS`, all of one slot, else
    /// `CROSSSLOT` or "Script attempted to access keys that do not hash to the same slot"),
    /// while a plain connection still reaches every key (no `MOVED`: the node owns them all).
    pub(crate) fn start_cluster() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("wsguard-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let dir_arg = dir.to_string_lossy().into_owned();
        let server = Self::spawn(
            port,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
                &dir_arg,
            ],
            Some(dir),
        );
        let mut c = redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to the cluster node");
        let () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query(&mut c)
            .expect("CLUSTER ADDSLOTSRANGE 0 16383");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut c)
                .expect("CLUSTER INFO");
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster node did not reach cluster_state:ok: {info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn spawn(port: u16, extra: &[&str], dir: Option<std::path::PathBuf>) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the fleet tests need a real Redis; \
                     install it with `apt-get install -y redis-server` (.ci/run does)"
                )
            });
        let server = Self { child, port, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn fleet(url: &str) -> Fleet {
    Fleet::builder(url)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn gcra_script_allows_the_burst_then_paces() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    struct Case {
        name: &'static str,
        now_us: u64,
        allowed: i64,
        value: i64,
    }
    // 1 per second, burst 3.
    let cases = [
        Case {
            name: "first",
            now_us: 10_000_000,
            allowed: 1,
            value: 2,
        },
        Case {
            name: "second",
            now_us: 10_000_000,
            allowed: 1,
            value: 1,
        },
        Case {
            name: "third",
            now_us: 10_000_000,
            allowed: 1,
            value: 0,
        },
        Case {
            name: "over the burst",
            now_us: 10_000_000,
            allowed: 0,
            value: 1_000_000,
        },
        Case {
            name: "half a second later",
            now_us: 10_500_000,
            allowed: 0,
            value: 500_000,
        },
        Case {
            name: "one interval later",
            now_us: 11_000_000,
            allowed: 1,
            value: 0,
        },
        Case {
            name: "long quiet: full burst",
            now_us: 100_000_000,
            allowed: 1,
            value: 2,
        },
    ];
    for case in cases {
        let (allowed, value): (i64, i64) = scripts::GCRA
            .key("t:rate")
            .arg(1_000_000u64)
            .arg(3u32)
            .arg(case.now_us)
            .invoke_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            (allowed, value),
            (case.allowed, case.value),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn lease_scripts_cap_expire_renew_and_release() {
    // On a cluster node: the keys of one call share a hash tag, as the fleet's do.
    let redis = RedisServer::start_cluster();
    let mut c = conn(&redis).await;
    let acquire = |now: u64, id: &'static str| {
        let mut inv = scripts::ACQUIRE.key("{t}:a");
        inv.key("{t}:b")
            .arg(now)
            .arg(1000u64)
            .arg(id)
            .arg(2usize)
            .arg(10usize);
        inv
    };
    let count = |now: u64, key: &'static str| {
        let mut inv = scripts::COUNT.key(key);
        inv.arg(now);
        inv
    };
    struct Case {
        name: &'static str,
        now: u64,
        id: &'static str,
        full: usize,
    }
    let cases = [
        Case {
            name: "a",
            now: 1_000,
            id: "a",
            full: 0,
        },
        Case {
            name: "b",
            now: 1_100,
            id: "b",
            full: 0,
        },
        Case {
            name: "c: first set full",
            now: 1_200,
            id: "c",
            full: 1,
        },
        Case {
            name: "a again is not a new socket",
            now: 1_200,
            id: "a",
            full: 0,
        },
        Case {
            name: "c after b expired",
            now: 2_150,
            id: "c",
            full: 0,
        },
    ];
    for case in cases {
        let full: usize = acquire(case.now, case.id)
            .invoke_async(&mut c)
            .await
            .unwrap();
        assert_eq!(full, case.full, "{}", case.name);
    }
    // a expires at 2_200 (taken again at 1_200), b expired at 2_100, c lives until 3_150.
    let n: usize = count(2_160, "{t}:a").invoke_async(&mut c).await.unwrap();
    assert_eq!(n, 2, "a and c live at 2_160");
    let mut renew = scripts::RENEW.key("{t}:released:b");
    renew
        .key("{t}:a")
        .key("{t}:b")
        .arg(2_500u64)
        .arg(1000u64)
        .arg("b");
    let _: i64 = renew.invoke_async(&mut c).await.unwrap();
    let n: usize = count(3_200, "{t}:a").invoke_async(&mut c).await.unwrap();
    assert_eq!(n, 1, "only the renewed b lives at 3_200");
    let mut release = scripts::RELEASE.key("{t}:released:b");
    release.key("{t}:a").key("{t}:b").arg("b").arg(1000u64);
    let _: i64 = release.invoke_async(&mut c).await.unwrap();
    // A renewal that was already on its way does not bring it back.
    let mut late = scripts::RENEW.key("{t}:released:b");
    late.key("{t}:a")
        .key("{t}:b")
        .arg(2_150u64)
        .arg(1000u64)
        .arg("b");
    let released: i64 = late.invoke_async(&mut c).await.unwrap();
    assert_eq!(released, 1);
    let n: usize = count(2_160, "{t}:b").invoke_async(&mut c).await.unwrap();
    assert_eq!(
        n, 1,
        "b released and a dropped as expired by the renewal: c is left"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{t}:a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0, "lease sets always expire: {ttl}");
}

fn handshake(ip: [u8; 4], subject: Option<&str>, token: Option<&str>) -> Request<Body> {
    handshake_issued(ip, subject, token, std::time::SystemTime::now())
}

/// A handshake whose credential was issued at `issued_at`.
fn handshake_issued(
    ip: [u8; 4],
    subject: Option<&str>,
    token: Option<&str>,
    issued_at: std::time::SystemTime,
) -> Request<Body> {
    let mut req = Request::get("/ws").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ClientIp(std::net::IpAddr::from(ip)));
    if let Some(subject) = subject {
        req.extensions_mut()
            .insert(Principal::new(subject, None).with_issued_at(issued_at));
    }
    if let Some(token) = token {
        req.extensions_mut().insert(TokenFingerprint::of(token));
    }
    req
}

/// The handler: hands the permit and close signal back in the response, like an upgrade that
/// keeps them.
async fn keep(req: Request<Body>) -> Result<Response, Infallible> {
    let mut res = Response::new(Body::empty());
    if let Some(p) = req.extensions().get::<ConnectionPermit>() {
        res.extensions_mut().insert(p.clone());
    }
    if let Some(s) = req.extensions().get::<CloseSignal>() {
        res.extensions_mut().insert(s.clone());
    }
    Ok(res)
}

#[tokio::test]
async fn rate_limit_spans_instances() {
    let redis = RedisServer::start();
    let (a, b) = (fleet(&redis.url()), fleet(&redis.url()));
    let layer = |f: &Fleet| {
        RateLimitLayer::new()
            .fleet(f)
            .per_minute(nz(1))
            .burst(nz(3))
    };
    let mut svc_a = layer(&a).layer(service_fn(keep));
    let mut svc_b = layer(&b).layer(service_fn(keep));
    let expect = [
        (true, StatusCode::OK),
        (false, StatusCode::OK),
        (true, StatusCode::OK),
        (false, StatusCode::TOO_MANY_REQUESTS),
        (true, StatusCode::TOO_MANY_REQUESTS),
    ];
    for (i, (on_a, status)) in expect.into_iter().enumerate() {
        let svc = if on_a { &mut svc_a } else { &mut svc_b };
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(handshake([203, 0, 113, 1], None, None))
            .await
            .unwrap();
        assert_eq!(res.status(), status, "handshake {i}");
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
            assert!(matches!(
                res.extensions().get::<RateLimitError>(),
                Some(RateLimitError::TooManyHandshakes { limit: 3, .. })
            ));
        }
    }
    // Another address has its own limit.
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([203, 0, 113, 2], None, None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn fleet_rate_limit_sends_the_same_headers_as_the_local_one() {
    let redis = RedisServer::start();
    let a = fleet(&redis.url());
    let mut svc = RateLimitLayer::new()
        .fleet(&a)
        .name("headers")
        .per_minute(nz(1))
        .burst(nz(2))
        .rate_limit_headers(true)
        .layer(service_fn(keep));
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(handshake([203, 0, 113, 9], None, None))
            .await
            .unwrap();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("2"));
        remaining.push((res.status(), header("x-ratelimit-remaining")));
    }
    assert_eq!(
        remaining,
        [
            (StatusCode::OK, Some("1".to_owned())),
            (StatusCode::OK, Some("0".to_owned())),
            (StatusCode::TOO_MANY_REQUESTS, Some("0".to_owned())),
        ]
    );
}

#[tokio::test]
async fn quota_counts_are_this_instances_without_a_fleet() {
    let quota = ConnectionQuotaLayer::new().per_identity(nz(2));
    let res = quota
        .clone()
        .layer(service_fn(keep))
        .oneshot(handshake([203, 0, 113, 10], Some("bob"), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(quota.fleet_active_for_identity("bob").await, Ok(1));
    assert_eq!(quota.fleet_active().await, Ok(1));
    drop(res);
    assert_eq!(quota.fleet_active_for_identity("bob").await, Ok(0));
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn quota_spans_instances_and_releases_on_drop() {
    let redis = RedisServer::start();
    let (a, b) = (fleet(&redis.url()), fleet(&redis.url()));
    let layer_a = ConnectionQuotaLayer::new()
        .fleet(&a)
        .per_identity(nz(1))
        .per_ip(nz(5));
    let layer_b = ConnectionQuotaLayer::new()
        .fleet(&b)
        .per_identity(nz(1))
        .per_ip(nz(5));
    let mut svc_a = layer_a.clone().layer(service_fn(keep));
    let mut svc_b = layer_b.layer(service_fn(keep));

    let held = svc_a
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 1], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let permit = held
        .extensions()
        .get::<ConnectionPermit>()
        .cloned()
        .expect("permit");
    assert_eq!(layer_a.fleet_active_for_identity("alice").await.unwrap(), 1);

    let refused = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 2], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(matches!(
        refused.extensions().get::<RateLimitError>(),
        Some(RateLimitError::IdentityQuota { limit: 1, .. })
    ));
    let other = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 2], Some("bob"), None))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);

    drop(held);
    drop(permit);
    wait_for("the lease release", async || {
        layer_a.fleet_active_for_identity("alice").await.unwrap() == 0
    })
    .await;
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 2], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A loopback port with nothing listening.
fn dead_url() -> String {
    let port = free_port();
    format!("redis://127.0.0.1:{port}")
}

#[tokio::test]
async fn unreachable_redis_falls_back_to_local_limits_or_refuses() {
    struct Case {
        name: &'static str,
        policy: FailurePolicy,
        statuses: [StatusCode; 2],
    }
    let cases = [
        Case {
            name: "fall back",
            policy: FailurePolicy::FallBackToLocal,
            statuses: [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
        },
        Case {
            name: "refuse",
            policy: FailurePolicy::Refuse,
            statuses: [
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            ],
        },
    ];
    for case in cases {
        let fleet = Fleet::builder(dead_url())
            .timeout(Duration::from_millis(200))
            .on_failure(case.policy)
            .build()
            .unwrap();
        let rate = RateLimitLayer::new()
            .fleet(&fleet)
            .per_minute(nz(1))
            .burst(nz(1));
        let quota = ConnectionQuotaLayer::new()
            .fleet(&fleet)
            .per_identity(nz(1));
        let mut svc = tower::ServiceBuilder::new()
            .layer(rate)
            .layer(RevocationLayer::new(&fleet))
            .layer(quota)
            .service(service_fn(keep));
        let mut kept = Vec::new();
        for (i, status) in case.statuses.into_iter().enumerate() {
            // Bounded: the handshake is answered, whatever Redis does.
            let res = tokio::time::timeout(
                Duration::from_secs(30),
                svc.ready()
                    .await
                    .unwrap()
                    .call(handshake([192, 0, 2, 7], Some("dave"), Some("t"))),
            )
            .await
            .expect("no hang")
            .unwrap();
            assert_eq!(res.status(), status, "{} #{i}", case.name);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(matches!(
                    res.extensions().get::<FleetError>(),
                    Some(FleetError::Unavailable(_))
                ));
            }
            kept.push(res);
        }
        assert!(!fleet.is_available(), "{}", case.name);
    }
}

#[tokio::test]
async fn revocation_closes_sockets_on_other_instances_and_refuses_the_token() {
    let redis = RedisServer::start();
    let (a, b) = (fleet(&redis.url()), fleet(&redis.url()));
    let mut svc_b = RevocationLayer::new(&b).layer(service_fn(keep));
    // Credentials issued before any revocation in this test.
    let issued = std::time::SystemTime::now() - Duration::from_secs(10);
    let on_b = |subject: &str, token: &str| {
        handshake_issued([192, 0, 2, 9], Some(subject), Some(token), issued)
    };

    // Listeners subscribe in the background: wait until a revocation reaches b.
    let probe = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("probe", "probe-token"))
        .await
        .unwrap();
    let probe_signal = probe
        .extensions()
        .get::<CloseSignal>()
        .cloned()
        .expect("signal");
    wait_for("b's listener", async || {
        a.revoke_identity("probe").await.unwrap();
        probe_signal.is_revoked()
    })
    .await;

    let s1 = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("erin", "erin-1"))
        .await
        .unwrap();
    let s2 = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("erin", "erin-2"))
        .await
        .unwrap();
    let frank = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("frank", "frank-1"))
        .await
        .unwrap();
    let signal = |r: &Response| {
        r.extensions()
            .get::<CloseSignal>()
            .cloned()
            .expect("signal")
    };
    let (s1, s2, frank) = (signal(&s1), signal(&s2), signal(&frank));
    assert_eq!(b.local_sockets(), 4);

    // One token.
    a.revoke_token("erin-1").await.unwrap();
    wait_for("erin-1 closed", async || s1.is_revoked()).await;
    assert!(!s2.is_revoked());
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("erin", "erin-1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.extensions().get::<crate::revoke::RevokeError>(),
        Some(&crate::revoke::RevokeError::Revoked)
    );
    assert!(res.headers().contains_key("www-authenticate"));

    // The whole identity: its other token too; frank untouched; a new token works.
    let closed_on_a = a.revoke_identity("erin").await.unwrap();
    assert_eq!(closed_on_a, 0, "erin has no socket on a");
    wait_for("erin-2 closed", async || s2.is_revoked()).await;
    assert!(!frank.is_revoked());
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(on_b("erin", "erin-2"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Issued after the revocation (a second later: the cutoff has millisecond precision).
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake_issued(
            [192, 0, 2, 9],
            Some("erin"),
            Some("erin-3"),
            later,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(b.is_revoked(&TokenFingerprint::of("erin-1")).await.unwrap());
    assert!(!b.is_revoked(&TokenFingerprint::of("erin-3")).await.unwrap());
}

#[tokio::test]
async fn revoking_a_busy_subject_is_one_marker_and_binds_instances_started_later() {
    let redis = RedisServer::start();
    let (a, b) = (fleet(&redis.url()), fleet(&redis.url()));
    let mut svc_b = RevocationLayer::new(&b).layer(service_fn(keep));
    let issued = std::time::SystemTime::now() - Duration::from_secs(10);
    // A busy subject: many tokens seen at handshakes.
    let mut kept = Vec::new();
    for i in 0..300 {
        let req = handshake_issued(
            [192, 0, 2, 11],
            Some("busy"),
            Some(&format!("busy-{i}")),
            issued,
        );
        let res = svc_b.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        kept.push(res);
    }
    let mut c = conn(&redis).await;
    // Nothing is stored per token seen: the subject's footprint in Redis cannot grow.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("wsguard:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    // Listeners subscribe in the background: revoke until b closes the first socket.
    let first = kept[0]
        .extensions()
        .get::<CloseSignal>()
        .cloned()
        .expect("signal");
    wait_for("b's listener", async || {
        a.revoke_identity("busy").await.unwrap();
        first.is_revoked()
    })
    .await;
    for res in &kept {
        let signal = res.extensions().get::<CloseSignal>().expect("signal");
        wait_for("every socket of busy closed", async || signal.is_revoked()).await;
    }
    // One marker, with a TTL.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("wsguard:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys, ["wsguard:revoked_sub:busy"]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0, "{ttl}");

    // An instance started after the revocation refuses the old credentials (from the
    // marker) and accepts one issued after it.
    let late = fleet(&redis.url());
    let mut svc = RevocationLayer::new(&late).layer(service_fn(keep));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(handshake_issued(
            [192, 0, 2, 12],
            Some("busy"),
            Some("busy-7"),
            issued,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let fresh = std::time::SystemTime::now() + Duration::from_secs(1);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(handshake_issued(
            [192, 0, 2, 12],
            Some("busy"),
            Some("busy-new"),
            fresh,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The same through the API for HTTP routes.
    let old = Principal::new("busy", None).with_issued_at(issued);
    assert_eq!(
        late.revocations().check(&old, None).await,
        Err(crate::revoke::RevokeError::Revoked)
    );
}

#[tokio::test]
async fn recovers_when_redis_comes_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let fleet = Fleet::builder(&url)
        .timeout(Duration::from_millis(300))
        .on_failure(FailurePolicy::Refuse)
        .build()
        .unwrap();
    assert!(matches!(
        fleet.ping().await,
        Err(FleetError::Unavailable(_))
    ));
    let _redis = RedisServer::start_on(port);
    wait_for("recovery", async || fleet.ping().await.is_ok()).await;
    assert!(fleet.is_available());
}

/// A revocation made while Redis is down is in effect on its instance at once and fails
/// with `Unavailable`; the fleet shares it once Redis is back, so another instance refuses
/// the credentials then.
#[tokio::test]
async fn a_revocation_made_while_redis_is_down_is_shared_once_it_is_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = Fleet::builder(&url)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(matches!(
        a.revoke_identity("june").await,
        Err(FleetError::Unavailable(_))
    ));
    assert!(matches!(
        a.revoke_token("june-2").await,
        Err(FleetError::Unavailable(_))
    ));
    let june = Principal::new("june", None)
        .with_issued_at(std::time::SystemTime::now() - Duration::from_secs(5));
    assert!(a.revocations().is_revoked(&june, None), "in effect here");

    let _redis = RedisServer::start_on(port);
    let b = fleet(&url);
    let token = TokenFingerprint::of("june-2");
    wait_for("the revocations to reach Redis", async || {
        b.remote_revoked(Some(&june), None).await == Ok(true)
            && b.is_revoked(&token).await == Ok(true)
    })
    .await;
    // A credential issued afterwards is not revoked.
    let later = Principal::new("june", None)
        .with_issued_at(std::time::SystemTime::now() + Duration::from_secs(5));
    assert_eq!(b.remote_revoked(Some(&later), None).await, Ok(false));
}

#[tokio::test]
async fn a_resubscribing_listener_closes_sockets_revoked_while_it_was_away() {
    let redis = RedisServer::start();
    let b = fleet(&redis.url());
    let mut svc = RevocationLayer::new(&b).layer(service_fn(keep));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(handshake([192, 0, 2, 10], Some("gina"), Some("gina-1")))
        .await
        .unwrap();
    let signal = res
        .extensions()
        .get::<CloseSignal>()
        .cloned()
        .expect("signal");
    let issued = std::time::SystemTime::now() - Duration::from_secs(10);
    let hana = svc
        .ready()
        .await
        .unwrap()
        .call(handshake_issued(
            [192, 0, 2, 10],
            Some("hana"),
            Some("hana-1"),
            issued,
        ))
        .await
        .unwrap();
    let hana = hana
        .extensions()
        .get::<CloseSignal>()
        .cloned()
        .expect("signal");
    let mut c = conn(&redis).await;
    // Revocation markers without the announcement (as if published while b's listener was
    // disconnected), then b's subscription is cut: a token's, and a subject's cutoff.
    store_unannounced_revocations(&mut c, issued).await;
    assert!(!signal.is_revoked());
    wait_for("the listener to resubscribe and reconcile", async || {
        cut_pubsub(&mut c).await;
        signal.is_revoked() && hana.is_revoked()
    })
    .await;
}

/// Revocation markers stored without their announcement (as if published while a listener
/// was away): gina's token `gina-1`, and hana's cutoff one second after `issued`.
async fn store_unannounced_revocations(
    c: &mut redis::aio::MultiplexedConnection,
    issued: std::time::SystemTime,
) {
    let cutoff = (issued + Duration::from_secs(1))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let _: () = redis::cmd("SET")
        .arg("wsguard:revoked_sub:hana")
        .arg(&cutoff)
        .query_async(&mut *c)
        .await
        .unwrap();
    let marker = format!(
        "wsguard:revoked:{}",
        TokenFingerprint::of("gina-1").to_hex()
    );
    let _: () = redis::cmd("SET")
        .arg(&marker)
        .arg("1")
        .query_async(c)
        .await
        .unwrap();
}

/// Cuts every pub/sub connection (the listeners resubscribe and catch up), then waits 100 ms.
async fn cut_pubsub(c: &mut redis::aio::MultiplexedConnection) {
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(c)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_revocation_redis_does_not_take_applies_here_and_says_so() {
    let fleet = Fleet::builder(dead_url())
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut svc = RevocationLayer::new(&fleet).layer(service_fn(keep));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(handshake([192, 0, 2, 13], Some("ivan"), Some("ivan-1")))
        .await
        .unwrap();
    // Fallback policy: admitted on this instance's registry.
    assert_eq!(res.status(), StatusCode::OK);
    let signal = res
        .extensions()
        .get::<CloseSignal>()
        .cloned()
        .expect("signal");
    let result = fleet.revocations().revoke_identity("ivan").await;
    assert!(
        matches!(result, Err(crate::revoke::RevokeError::Unavailable(_))),
        "{result:?}"
    );
    assert!(signal.is_revoked(), "closed on this instance all the same");
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(handshake_issued(
            [192, 0, 2, 13],
            Some("ivan"),
            Some("ivan-1"),
            std::time::SystemTime::now() - Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "refused here");
    assert!(matches!(
        fleet.revoke_token("ivan-2").await,
        Err(FleetError::Unavailable(_))
    ));
}

#[tokio::test]
async fn each_cap_refuses_with_its_status() {
    let redis = RedisServer::start();
    let (a, b) = (fleet(&redis.url()), fleet(&redis.url()));
    struct Case {
        name: &'static str,
        layer: fn(&Fleet) -> ConnectionQuotaLayer,
        second: ([u8; 4], &'static str),
        status: StatusCode,
    }
    let cases = [
        Case {
            name: "per ip",
            layer: |f| {
                ConnectionQuotaLayer::new()
                    .fleet(f)
                    .name("ip")
                    .per_ip(nz(1))
            },
            second: ([203, 0, 113, 50], "other"),
            status: StatusCode::TOO_MANY_REQUESTS,
        },
        Case {
            name: "per identity",
            layer: |f| {
                ConnectionQuotaLayer::new()
                    .fleet(f)
                    .name("id")
                    .per_identity(nz(1))
            },
            second: ([203, 0, 113, 51], "same"),
            status: StatusCode::TOO_MANY_REQUESTS,
        },
        Case {
            name: "global",
            layer: |f| {
                ConnectionQuotaLayer::new()
                    .fleet(f)
                    .name("global")
                    .global(nz(1))
            },
            second: ([203, 0, 113, 52], "other"),
            status: StatusCode::SERVICE_UNAVAILABLE,
        },
    ];
    for case in cases {
        let first = (case.layer)(&a)
            .layer(service_fn(keep))
            .oneshot(handshake([203, 0, 113, 50], Some("same"), None))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK, "{}", case.name);
        let (ip, subject) = case.second;
        let second = (case.layer)(&b)
            .layer(service_fn(keep))
            .oneshot(handshake(ip, Some(subject), None))
            .await
            .unwrap();
        assert_eq!(second.status(), case.status, "{}", case.name);
        assert!(
            second.headers().contains_key("retry-after"),
            "{}",
            case.name
        );
        drop(first);
    }
}

#[tokio::test]
async fn an_unresponsive_redis_is_bounded_by_the_timeout() {
    let redis = RedisServer::start();
    let fleet = Fleet::builder(redis.url())
        .timeout(Duration::from_millis(300))
        .on_failure(FailurePolicy::Refuse)
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new()
        .fleet(&fleet)
        .per_second(nz(100))
        .layer(service_fn(keep));
    let mut call = async || {
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            svc.ready()
                .await
                .unwrap()
                .call(handshake([192, 0, 2, 20], None, None)),
        )
        .await
        .expect("answered, not hung");
        res.unwrap().status()
    };
    assert_eq!(call().await, StatusCode::OK);
    // Frozen, not dead: connections stay open and nothing answers.
    let pid = redis.child.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    assert_eq!(call().await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!fleet.is_available());
    signal("-CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while call().await != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fleet.is_available());
}

#[test]
fn errors_have_a_status_a_name_and_a_message() {
    struct Case {
        error: FleetError,
        status: StatusCode,
        name: &'static str,
    }
    let cases = [
        Case {
            error: FleetError::Unavailable("timed out".into()),
            status: StatusCode::SERVICE_UNAVAILABLE,
            name: "unavailable",
        },
        Case {
            error: FleetError::Redis("ERR".into()),
            status: StatusCode::SERVICE_UNAVAILABLE,
            name: "redis_error",
        },
        Case {
            error: FleetError::InvalidUrl("x".into()),
            status: StatusCode::SERVICE_UNAVAILABLE,
            name: "invalid_url",
        },
        Case {
            error: FleetError::NoRuntime,
            status: StatusCode::SERVICE_UNAVAILABLE,
            name: "no_runtime",
        },
    ];
    for case in cases {
        assert_eq!(case.error.status(), case.status, "{}", case.name);
        assert_eq!(case.error.as_str(), case.name);
        assert!(!case.error.to_string().is_empty());
        let response = refuse_unavailable(None, "test", case.error.clone(), None);
        assert_eq!(response.status(), case.status);
        assert_eq!(response.extensions().get::<FleetError>(), Some(&case.error));
        assert_eq!(
            response.headers().get(http::header::RETRY_AFTER),
            Some(&http::HeaderValue::from_static("1"))
        );
        assert_eq!(
            response.extensions().get::<crate::Rejection>(),
            Some(&crate::Rejection::Fleet(case.error.clone()))
        );
    }
    assert_eq!(FailurePolicy::default(), FailurePolicy::FallBackToLocal);
}

/// Under `Refuse`, every fleet layer answers an unreachable Redis through the one rejection
/// path: by default `Rejection::Fleet`'s response, else the layer's hook (also set by
/// `WsGuard::on_rejection`), with `FleetError` and the `Rejection` in the extensions and
/// `Retry-After` either way.
#[tokio::test]
async fn a_refusing_fleet_answers_through_the_rejection_path() {
    use crate::Rejection;
    use axum::response::IntoResponse;

    type Hook = fn(&Rejection) -> Response;
    let teapot: Hook = |_| StatusCode::IM_A_TEAPOT.into_response();
    let fleet = Fleet::builder(dead_url())
        .timeout(Duration::from_millis(200))
        .on_failure(FailurePolicy::Refuse)
        .build()
        .unwrap();
    struct Case {
        name: &'static str,
        service: tower::util::BoxCloneSyncService<Request<Body>, Response, Infallible>,
        hooked: bool,
    }
    let rate = |hook: Option<Hook>| {
        let layer = RateLimitLayer::new().fleet(&fleet);
        let layer = match hook {
            Some(hook) => layer.on_rejection(hook),
            None => layer,
        };
        tower::util::BoxCloneSyncService::new(layer.layer(service_fn(keep)))
    };
    let revocation = |hook: Option<Hook>| {
        let layer = RevocationLayer::new(&fleet);
        let layer = match hook {
            Some(hook) => layer.on_rejection(hook),
            None => layer,
        };
        tower::util::BoxCloneSyncService::new(layer.layer(service_fn(keep)))
    };
    let guard = |hook: Option<Hook>| {
        let guard = crate::WsGuard::new(crate::auth::StaticTokens::new().token("t", "dave", ()))
            .fleet(&fleet)
            .without_rate_limit();
        let guard = match hook {
            Some(hook) => guard.on_rejection(hook),
            None => guard,
        };
        tower::util::BoxCloneSyncService::new(guard.layer(service_fn(keep)))
    };
    let cases = [
        Case {
            name: "rate limit",
            service: rate(None),
            hooked: false,
        },
        Case {
            name: "rate limit, hooked",
            service: rate(Some(teapot)),
            hooked: true,
        },
        Case {
            name: "revocation",
            service: revocation(None),
            hooked: false,
        },
        Case {
            name: "revocation, hooked",
            service: revocation(Some(teapot)),
            hooked: true,
        },
        Case {
            name: "guard",
            service: guard(None),
            hooked: false,
        },
        Case {
            name: "guard, hooked",
            service: guard(Some(teapot)),
            hooked: true,
        },
    ];
    for case in cases {
        let mut req = handshake([192, 0, 2, 30], Some("dave"), Some("t"));
        // The guard authenticates by itself: a same-origin handshake with the token.
        req.headers_mut()
            .insert("authorization", http::HeaderValue::from_static("Bearer t"));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 30],
                50000,
            ))));
        let res = tokio::time::timeout(Duration::from_secs(30), case.service.oneshot(req))
            .await
            .expect("no hang")
            .unwrap();
        let carried = res.extensions().get::<Rejection>().cloned();
        let Some(Rejection::Fleet(error)) = carried else {
            panic!("{}: {carried:?}", case.name);
        };
        assert!(matches!(error, FleetError::Unavailable(_)), "{}", case.name);
        assert_eq!(
            res.extensions().get::<FleetError>(),
            Some(&error),
            "{}",
            case.name
        );
        let rejection = Rejection::Fleet(error);
        assert_eq!(
            res.headers().get(http::header::RETRY_AFTER),
            Some(&http::HeaderValue::from_static("1")),
            "{}",
            case.name
        );
        if case.hooked {
            assert_eq!(res.status(), StatusCode::IM_A_TEAPOT, "{}", case.name);
        } else {
            let expected = rejection.clone().into_response();
            assert_eq!(
                res.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                case.name
            );
            assert_eq!(res.headers(), expected.headers(), "{}", case.name);
            let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            let want = axum::body::to_bytes(expected.into_body(), 1024)
                .await
                .unwrap();
            assert_eq!(body, want, "{}", case.name);
        }
    }
}

/// The next event of `subscription`, within 20 s.
async fn event(subscription: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(Duration::from_secs(20), subscription.recv())
        .await
        .expect("an event within 20 s")
        .expect("the subscription is running")
}

async fn publish(c: &mut redis::aio::MultiplexedConnection, channel: &str, message: &[u8]) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(c)
        .await
        .unwrap()
}

async fn subscribers(c: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(c)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn a_subscription_delivers_in_order_and_says_when_it_has_resubscribed() {
    use SubscriptionEvent::{Message, Subscribed};
    let redis = RedisServer::start();
    let fleet = fleet(&redis.url());
    let mut sub = fleet.subscribe(fleet.key("app"));
    assert_eq!(sub.channel(), "wsguard:app");
    assert!(format!("{sub:?}").contains("wsguard:app"));
    assert_eq!(event(&mut sub).await, Subscribed);

    let mut c = conn(&redis).await;
    assert_eq!(publish(&mut c, "wsguard:other", b"elsewhere").await, 0);
    for message in [&b"1"[..], b"\xff\xfe not UTF-8", b"2", b"3"] {
        assert_eq!(publish(&mut c, "wsguard:app", message).await, 1);
    }
    for expected in ["1", "2", "3"] {
        assert_eq!(event(&mut sub).await, Message(expected.into()));
    }

    // A lost connection: subscribed again, and it says so (the application catches up).
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(event(&mut sub).await, Subscribed);
    publish(&mut c, "wsguard:app", b"4").await;
    assert_eq!(event(&mut sub).await, Message("4".into()));

    // Catching up failed: the application asks for another round.
    sub.resubscribe();
    assert_eq!(event(&mut sub).await, Subscribed);
    publish(&mut c, "wsguard:app", b"5").await;
    assert_eq!(event(&mut sub).await, Message("5".into()));

    // The fleet's own listener runs on the same mechanism and is still subscribed; dropping
    // the application's subscription ends its connection, not the fleet's.
    wait_for("the revocation listener to resubscribe", async || {
        subscribers(&mut c, "wsguard:revocations").await == 1
    })
    .await;
    drop(sub);
    wait_for("the dropped subscription to unsubscribe", async || {
        subscribers(&mut c, "wsguard:app").await == 0
    })
    .await;
    assert_eq!(subscribers(&mut c, "wsguard:revocations").await, 1);
    assert!(fleet.revoke_identity("ivy").await.is_ok());
}

#[tokio::test]
async fn a_subscription_made_while_redis_is_down_subscribes_once_it_is_up() {
    let port = free_port();
    let fleet = fleet(&format!("redis://127.0.0.1:{port}"));
    let mut sub = fleet.subscribe("late");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err(),
        "no event while Redis is down"
    );
    let redis = RedisServer::start_on(port);
    assert_eq!(event(&mut sub).await, SubscriptionEvent::Subscribed);
    let mut c = conn(&redis).await;
    assert_eq!(publish(&mut c, "late", b"hello").await, 1);
    assert_eq!(
        event(&mut sub).await,
        SubscriptionEvent::Message("hello".into())
    );
}

/// A drain gives the fleet leases of its sockets back before it returns, so the process may
/// exit right after it: here the runtime is dropped as a process exit drops it, and Redis is
/// asked afterwards.
#[test]
fn a_drain_releases_the_fleet_leases_before_it_returns() {
    use crate::{
        WsGuard,
        auth::StaticTokens,
        socket::{Drain, DrainOptions, GuardedSocket, GuardedUpgrade},
    };
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    const N: usize = 10;
    const KEY: &str = "{drain:quota:sockets}:id:alice";
    let redis = RedisServer::start();
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fleet = Fleet::builder(&url)
            .prefix("drain")
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let drain = Drain::new();
        let guard = WsGuard::new(StaticTokens::new().token("t0ken-for-alice", "alice", ()))
            .without_rate_limit()
            .quota(ConnectionQuotaLayer::new().per_identity(nz(100)))
            .fleet(&fleet)
            .drain(&drain);
        let app = axum::Router::new()
            .route(
                "/ws",
                axum::routing::any(|up: GuardedUpgrade| async move {
                    up.on_upgrade(|mut socket: GuardedSocket| async move {
                        while socket.recv().await.is_some() {}
                    })
                }),
            )
            .layer(guard);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        let mut readers = Vec::new();
        for _ in 0..N {
            let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", "Bearer t0ken-for-alice".parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Close(frame) = msg {
                        return frame.map(|f| u16::from(f.code));
                    }
                }
                None
            }));
        }
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let leases: usize = redis::cmd("ZCARD")
            .arg(KEY)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(leases, N, "each socket holds a lease");

        let report = drain
            .shutdown(DrainOptions::new(Duration::from_secs(10)))
            .await;
        assert_eq!((report.closed, report.forced), (N, 0), "{report:?}");
        for reader in readers {
            assert_eq!(reader.await.unwrap(), Some(1001));
        }
    });
    // What a process does once `main` returns: the tasks still queued never run.
    drop(runtime);
    let check = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leases: usize = check.block_on(async {
        let mut c = conn(&redis).await;
        redis::cmd("ZCARD")
            .arg(KEY)
            .query_async(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(leases, 0, "the drain returned before releasing the leases");
}

/// The Redis keys matching `pattern`, sorted.
async fn keys(c: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(c)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn slot(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(c)
        .await
        .unwrap()
}

/// The latest lease expiry (ms) in each quota set.
async fn expiries(c: &mut redis::aio::MultiplexedConnection, sets: &[String]) -> Vec<f64> {
    let mut out = Vec::new();
    for set in sets {
        let top: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(set)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(c)
            .await
            .unwrap();
        out.push(top.first().map_or(0.0, |t| t.1));
    }
    out
}

/// Every fleet operation on a Redis Cluster node (one node serving all 16384 slots, which
/// checks scripts as a cluster does): the rate limit, a quota lease over the per-IP,
/// per-identity and global sets (acquire, renew, release), revocation (announce, the marker
/// check at handshakes, the listener's catch-up). Under `FailurePolicy::Refuse` a script
/// that Redis refuses (`CROSSSLOT`, undeclared keys) shows as `503`, not as a local decision.
#[tokio::test]
async fn every_fleet_operation_works_on_a_redis_cluster_node() {
    let redis = RedisServer::start_cluster();
    let strict = |ttl_ms: u64| {
        Fleet::builder(redis.url())
            .timeout(Duration::from_secs(5))
            .on_failure(FailurePolicy::Refuse)
            .lease_ttl(Duration::from_millis(ttl_ms))
            .build()
            .unwrap()
    };
    // Renewals every second; a release marker lives 3 s.
    let (a, b) = (strict(3_000), strict(3_000));
    let mut c = conn(&redis).await;

    // Rate limit: one key per script.
    let mut rate = RateLimitLayer::new()
        .fleet(&a)
        .per_minute(nz(1))
        .burst(nz(1))
        .layer(service_fn(keep));
    for status in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let res = rate
            .ready()
            .await
            .unwrap()
            .call(handshake([203, 0, 113, 40], None, None))
            .await
            .unwrap();
        assert_eq!(res.status(), status, "rate limit");
    }

    // Quota: one script over the IP, identity and global sets.
    let quota = |f: &Fleet| {
        ConnectionQuotaLayer::new()
            .fleet(f)
            .per_ip(nz(5))
            .per_identity(nz(1))
            .global(nz(100))
    };
    let (quota_a, quota_b) = (quota(&a), quota(&b));
    let mut svc_a = quota_a.clone().layer(service_fn(keep));
    let mut svc_b = quota_b.clone().layer(service_fn(keep));
    let held = svc_a
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 40], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK, "quota acquire");
    let permit = held
        .extensions()
        .get::<ConnectionPermit>()
        .cloned()
        .expect("permit");
    let refused = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 41], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(matches!(
        refused.extensions().get::<RateLimitError>(),
        Some(RateLimitError::IdentityQuota { limit: 1, .. })
    ));
    assert_eq!(quota_b.fleet_active_for_identity("alice").await, Ok(1));
    assert_eq!(
        quota_b
            .fleet_active_for_ip(std::net::IpAddr::from([198, 51, 100, 40]))
            .await,
        Ok(1)
    );
    assert_eq!(quota_b.fleet_active().await, Ok(1));

    // The quota's sets share one slot; the rate limit key is elsewhere.
    let sets = keys(&mut c, "*quota*").await;
    assert_eq!(sets.len(), 3, "{sets:?}");
    let quota_slot = slot(&mut c, &sets[0]).await;
    for set in &sets {
        assert_eq!(slot(&mut c, set).await, quota_slot, "{set}");
    }
    let rate_keys = keys(&mut c, "*rate*").await;
    assert_eq!(rate_keys.len(), 1, "{rate_keys:?}");
    assert_ne!(slot(&mut c, &rate_keys[0]).await, quota_slot);

    // Renewal: the lease's expiry moves on in every set.
    let before = expiries(&mut c, &sets).await;
    assert!(before.iter().all(|&e| e > 0.0), "{before:?}");
    wait_for("a lease renewal", async || {
        let now = expiries(&mut c, &sets).await;
        now.iter().zip(&before).all(|(n, b)| n > b)
    })
    .await;

    // Release: the lease leaves every set at once and leaves its marker, in the same slot.
    drop(held);
    drop(permit);
    wait_for("the release marker", async || {
        !keys(&mut c, "*released*").await.is_empty()
    })
    .await;
    let markers = keys(&mut c, "*released*").await;
    assert_eq!(slot(&mut c, &markers[0]).await, quota_slot);
    assert_eq!(quota_b.fleet_active_for_identity("alice").await, Ok(0));
    assert_eq!(quota_b.fleet_active().await, Ok(0));
    let res = svc_b
        .ready()
        .await
        .unwrap()
        .call(handshake([198, 51, 100, 41], Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "acquire after the release");
    drop(res);

    // Revocation: handshakes check the token's and the subject's markers.
    let mut rev_b = RevocationLayer::new(&b).layer(service_fn(keep));
    let issued = std::time::SystemTime::now() - Duration::from_secs(10);
    let on_b = |subject: &str, token: &str| {
        handshake_issued([192, 0, 2, 40], Some(subject), Some(token), issued)
    };
    let signal = |r: &Response| {
        r.extensions()
            .get::<CloseSignal>()
            .cloned()
            .expect("signal")
    };
    let probe = rev_b
        .ready()
        .await
        .unwrap()
        .call(on_b("probe", "probe-token"))
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK, "revocation check");
    let probe = signal(&probe);
    wait_for("b's listener", async || {
        a.revoke_identity("probe").await.unwrap();
        probe.is_revoked()
    })
    .await;
    let erin = rev_b
        .ready()
        .await
        .unwrap()
        .call(on_b("erin", "erin-1"))
        .await
        .unwrap();
    assert_eq!(erin.status(), StatusCode::OK);
    let erin = signal(&erin);
    a.revoke_token("erin-1").await.unwrap();
    wait_for("erin-1 closed", async || erin.is_revoked()).await;
    let late = strict(3_000);
    let mut rev_late = RevocationLayer::new(&late).layer(service_fn(keep));
    for (req, what) in [
        (on_b("erin", "erin-1"), "a revoked token"),
        (on_b("probe", "probe-2"), "a revoked subject"),
    ] {
        let res = rev_late.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
    }

    // The listener's catch-up after a lost subscription: markers stored without an
    // announcement, for two sockets (two tokens, two subjects: keys of different slots).
    let gina = rev_b
        .ready()
        .await
        .unwrap()
        .call(on_b("gina", "gina-1"))
        .await
        .unwrap();
    let hana = rev_b
        .ready()
        .await
        .unwrap()
        .call(on_b("hana", "hana-1"))
        .await
        .unwrap();
    let (gina, hana) = (signal(&gina), signal(&hana));
    store_unannounced_revocations(&mut c, issued).await;
    wait_for("the listener to resubscribe and catch up", async || {
        cut_pubsub(&mut c).await;
        gina.is_revoked() && hana.is_revoked()
    })
    .await;
}

mod properties {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::{SystemTime, UNIX_EPOCH},
    };

    use proptest::prelude::*;
    use redis::Value;

    use super::*;
    use crate::rate_limit::RateLimitError;

    /// Any reply a Redis connection can hand over, nested a little.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            any::<i64>().prop_map(Value::Int),
            (-3i64..8).prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
            "-?[0-9]{1,21}".prop_map(|s| Value::BulkString(s.into_bytes())),
            "[ -~]{0,12}".prop_map(Value::SimpleString),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                proptest::collection::vec((inner.clone(), inner), 0..2).prop_map(Value::Map),
            ]
        })
    }

    /// The integer a reply stands for under the scripts' contract: an integer reply (what
    /// Redis makes of a Lua number), not a string or a double that looks like one.
    fn int(v: &Value) -> Option<i64> {
        match v {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn is_unexpected(e: &redis::RedisError) -> bool {
        e.kind() == redis::ErrorKind::UnexpectedReturnType && !e.is_unrecoverable_error()
    }

    fn sets(n: usize) -> Vec<(String, usize, RateLimitError)> {
        (0..n)
            .map(|i| {
                (
                    format!("set{i}"),
                    i + 1,
                    RateLimitError::GlobalQuota {
                        limit: i + 1,
                        retry_after: Duration::from_secs(1),
                    },
                )
            })
            .collect()
    }

    proptest! {
        /// Any reply to the GCRA script: `{1, n}` allows with `n` remaining, `{0, n}` refuses
        /// with a wait of `n` µs (negatives as 0); anything else is an error that the fleet
        /// reports as `FleetError::Redis` (never `Unavailable`, never a decision). No panic.
        #[test]
        fn any_gcra_reply_maps_to_its_decision_or_an_error(
            reply in prop_oneof![
                value(),
                (prop_oneof![Just(0i64), Just(1), -2i64..4], any::<i64>())
                    .prop_map(|(a, b)| Value::Array(vec![Value::Int(a), Value::Int(b)])),
            ],
        ) {
            let contract = match &reply {
                Value::Array(items) if items.len() == 2 => int(&items[0]).zip(int(&items[1])),
                _ => None,
            };
            let got = rate::gcra_decision(reply.clone());
            match contract {
                Some((1, n)) => prop_assert_eq!(got.ok(), Some(Ok(n.max(0) as u64))),
                Some((0, n)) => prop_assert_eq!(got.ok(), Some(Err(Duration::from_micros(n.max(0) as u64)))),
                _ => prop_assert!(got.as_ref().is_err_and(is_unexpected), "{:?} gave {:?}", reply, got),
            }
        }

        /// Any reply to the acquire script, for one to three capped sets: `0` takes the
        /// lease, `i` names the full set `i`, anything else (out of range, negative, not an
        /// integer) is an error, never an admission. No panic.
        #[test]
        fn any_acquire_reply_maps_to_its_decision_or_an_error(
            reply in prop_oneof![value(), (-2i64..6).prop_map(Value::Int)],
            n in 1usize..4,
        ) {
            let sets = sets(n);
            let got = quota::acquire_decision(reply.clone(), &sets);
            match int(&reply) {
                Some(0) => prop_assert_eq!(got.ok(), Some(None)),
                Some(i) if (1..=n as i64).contains(&i) => {
                    prop_assert_eq!(got.ok(), Some(Some(sets[i as usize - 1].2.clone())));
                }
                _ => prop_assert!(got.as_ref().is_err_and(is_unexpected), "{:?} gave {:?}", reply, got),
            }
        }
    }

    /// A marker as `MGET` returns it, or something else.
    fn marker() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Nil),
            (0u64..4_000_000_000_000).prop_map(|ms| Value::BulkString(ms.to_string().into_bytes())),
            any::<u64>().prop_map(|ms| Value::BulkString(ms.to_string().into_bytes())),
            Just(Value::BulkString(b"1".to_vec())),
            Just(Value::BulkString(b"18446744073709551616".to_vec())),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::BulkString),
            value(),
        ]
    }

    proptest! {
        /// Any reply to the revocation check's `MGET`: a token marker revokes; a subject's
        /// cutoff revokes credentials issued before it and those without an issue time; an
        /// unreadable cutoff revokes (fail closed); a reply of the wrong shape is an error,
        /// never "not revoked". No panic, whatever the dates.
        #[test]
        fn any_revocation_reply_maps_to_its_decision_or_an_error(
            token in any::<bool>(),
            subject in any::<bool>(),
            issued_ms in proptest::option::of(0u64..4_000_000_000_000),
            markers in proptest::collection::vec(marker(), 0..3),
            other in value(),
            shaped in any::<bool>(),
        ) {
            prop_assume!(token || subject);
            let principal = subject.then(|| {
                let p = Principal::new("alice", None);
                match issued_ms {
                    Some(ms) => p.with_issued_at(UNIX_EPOCH + Duration::from_millis(ms)),
                    None => p,
                }
            });
            let reply = if shaped { Value::Array(markers.clone()) } else { other };
            let got = registry_decision(reply.clone(), principal.as_ref(), token);
            // The model.
            let expected: Option<bool> = (|| {
                let Value::Array(items) = &reply else { return None };
                if items.len() != usize::from(token) + usize::from(subject) {
                    return None;
                }
                let read = |v: &Value| match v {
                    Value::Nil => Some(None),
                    Value::BulkString(b) => Some(Some(b.clone())),
                    _ => None,
                };
                let mut items = items.iter();
                if token {
                    let mark = read(items.next()?)?;
                    if mark.is_some() {
                        return Some(true);
                    }
                }
                if !subject {
                    return Some(false);
                }
                let Some(cutoff) = read(items.next()?)? else { return Some(false) };
                let cutoff = std::str::from_utf8(&cutoff).ok().and_then(|t| t.parse::<u64>().ok());
                Some(match (cutoff, issued_ms) {
                    (Some(cutoff), Some(issued)) => issued < cutoff,
                    _ => true,
                })
            })();
            match expected {
                Some(revoked) => prop_assert_eq!(got.ok(), Some(revoked), "{:?}", reply),
                None => prop_assert!(got.as_ref().is_err_and(is_unexpected), "{:?} gave {:?}", reply, got),
            }
        }
    }

    fn registry_decision(
        reply: Value,
        principal: Option<&Principal>,
        token: bool,
    ) -> redis::RedisResult<bool> {
        super::super::handle::revocation_decision(reply, principal, token)
    }

    /// Found by `any_acquire_reply_maps_to_its_decision_or_an_error`: the reply was read as
    /// "the i-th set is full" and an index past the sets as no set full, which admitted the
    /// socket. A reply outside the script's contract now decides nothing.
    #[test]
    fn an_out_of_range_acquire_reply_admits_nobody() {
        for reply in [Value::Int(2), Value::Int(4), Value::Int(i64::MAX)] {
            let got = quota::acquire_decision(reply.clone(), &sets(1));
            assert!(got.as_ref().is_err_and(is_unexpected), "{reply:?}: {got:?}");
        }
    }

    /// The Redis for the tests against a real server (`WSGUARD_TEST_REDIS_URL`), or `None`
    /// (the test is skipped, and says so).
    fn test_redis(test: &str) -> Option<String> {
        let url = std::env::var("WSGUARD_TEST_REDIS_URL").ok();
        if url.is_none() {
            eprintln!("{test}: skipped, WSGUARD_TEST_REDIS_URL is not set");
        }
        url
    }

    /// A key prefix of its own for each run, so that runs sharing a server never meet.
    fn prefix(test: &str) -> String {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(
            "wsguard-prop:{test}:{nanos}:{}",
            RUN.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    fn fleets(url: &str, prefix: &str) -> (Fleet, Fleet) {
        let build = || {
            Fleet::builder(url)
                .prefix(prefix)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a fleet")
        };
        (build(), build())
    }

    /// Whether instance `b` holds `principal` revoked after instance `a` revoked its
    /// subject's credentials issued before `before`.
    async fn revoked_elsewhere(
        a: &Fleet,
        b: &Fleet,
        before: SystemTime,
        principal: &Principal,
    ) -> bool {
        a.revoke_issued_before(principal.subject(), before)
            .await
            .expect("Redis takes the revocation");
        b.remote_revoked(Some(principal), None)
            .await
            .expect("Redis answers")
    }

    /// Found by `revocation_cutoffs_are_never_weakened`: a cutoff past 2^64 ms went through
    /// the script's Lua number as `18446744073709551616`, which no instance could read back,
    /// so the other instances let the subject's credentials in.
    #[test]
    fn a_far_future_cutoff_still_revokes_on_other_instances() {
        let Some(url) = test_redis("a_far_future_cutoff_still_revokes_on_other_instances") else {
            return;
        };
        let rt = runtime();
        rt.block_on(async {
            let (a, b) = fleets(&url, &prefix("far-future"));
            let before = UNIX_EPOCH + Duration::from_millis(u64::MAX);
            let principal = Principal::new("forever", None).with_issued_at(SystemTime::now());
            assert!(revoked_elsewhere(&a, &b, before, &principal).await);
        });
    }

    /// Invariant of the fleet revocation reply: whatever the cutoff (any millisecond from
    /// the epoch to 2^64, around the 2^53 that Lua numbers hold exactly, and today), another
    /// instance reads back a cutoff that revokes every credential issued before it (and
    /// before now, as every credential is), and the credentials without an issue time.
    #[test]
    fn revocation_cutoffs_are_never_weakened() {
        let Some(url) = test_redis("revocation_cutoffs_are_never_weakened") else {
            return;
        };
        let rt = runtime();
        let (a, b) = rt.block_on(async { fleets(&url, &prefix("cutoffs")) });
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let ms = prop_oneof![
            any::<u64>(),
            (1u64 << 53) - 4..(1u64 << 53) + 4,
            u64::MAX - 4096..=u64::MAX,
            now_ms - 10_000..now_ms + 10_000,
            0u64..4,
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(24)
        });
        let case = AtomicU64::new(0);
        runner
            .run(&(ms, any::<bool>()), |(ms, with_issue_time)| {
                let before = UNIX_EPOCH + Duration::from_millis(ms);
                let subject = format!("s{}", case.fetch_add(1, Ordering::Relaxed));
                let principal = match (with_issue_time, ms.checked_sub(1)) {
                    (true, Some(issued)) => {
                        let issued = UNIX_EPOCH + Duration::from_millis(issued);
                        Principal::new(subject, None).with_issued_at(issued.min(SystemTime::now()))
                    }
                    _ => Principal::new(subject, None),
                };
                let revoked = rt.block_on(revoked_elsewhere(&a, &b, before, &principal));
                prop_assert!(revoked, "cutoff {} ms, {:?}", ms, principal.issued_at());
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[derive(Clone, Debug)]
    enum QuotaOp {
        /// A handshake on instance `on` (0 or 1) from address `ip` (an index) as `subject`.
        Open {
            on: usize,
            ip: usize,
            subject: Option<usize>,
        },
        /// Drops the held permit with this index, modulo their number.
        Close(usize),
    }

    /// Invariant 4 with the fleet backend, against a real Redis: two instances share the
    /// caps; under any interleaving of opens on either instance (some refused) and closes,
    /// the fleet-wide counts are the model's after every step, and zero once every permit
    /// is dropped in any order.
    #[test]
    fn fleet_quota_counts_return_to_zero() {
        let Some(url) = test_redis("fleet_quota_counts_return_to_zero") else {
            return;
        };
        let rt = runtime();
        let op = prop_oneof![
            3 => (0usize..2, 0usize..3, proptest::option::of(0usize..2))
                .prop_map(|(on, ip, subject)| QuotaOp::Open { on, ip, subject }),
            2 => any::<usize>().prop_map(QuotaOp::Close),
        ];
        let strategy = (
            (1usize..3, 1usize..3, 1usize..5),
            proptest::collection::vec(op, 0..16),
            proptest::collection::vec(any::<usize>(), 0..16),
        );
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(12)
        });
        runner
            .run(
                &strategy,
                |((per_ip, per_identity, global), ops, drop_order)| {
                    rt.block_on(async {
                        const IPS: [[u8; 4]; 3] =
                            [[192, 0, 2, 1], [192, 0, 2, 2], [198, 51, 100, 7]];
                        const SUBJECTS: [&str; 2] = ["alice", "bob"];
                        let (a, b) = fleets(&url, &prefix("quota"));
                        let layer = |fleet: &Fleet| {
                            ConnectionQuotaLayer::new()
                                .fleet(fleet)
                                .per_ip(nz(per_ip))
                                .per_identity(nz(per_identity))
                                .global(nz(global))
                        };
                        let layers = [layer(&a), layer(&b)];
                        let services = [
                            layers[0].clone().layer(service_fn(keep)),
                            layers[1].clone().layer(service_fn(keep)),
                        ];
                        let mut held: Vec<(ConnectionPermit, usize, Option<usize>)> = Vec::new();
                        let settle = || async {
                            a.releases().idle().await;
                            b.releases().idle().await;
                        };
                        for op in ops {
                            match op {
                                QuotaOp::Open { on, ip, subject } => {
                                    let by_ip = held.iter().filter(|h| h.1 == ip).count();
                                    let by_subject = subject.map_or(0, |s| {
                                        held.iter().filter(|h| h.2 == Some(s)).count()
                                    });
                                    let admit = by_ip < per_ip
                                        && (subject.is_none() || by_subject < per_identity)
                                        && held.len() < global;
                                    let res = services[on]
                                        .clone()
                                        .oneshot(handshake(
                                            IPS[ip],
                                            subject.map(|s| SUBJECTS[s]),
                                            None,
                                        ))
                                        .await
                                        .expect("infallible");
                                    prop_assert_eq!(
                                        res.status() == StatusCode::OK,
                                        admit,
                                        "{:?}",
                                        res.extensions().get::<RateLimitError>()
                                    );
                                    if admit {
                                        let permit = res
                                            .extensions()
                                            .get::<ConnectionPermit>()
                                            .cloned()
                                            .expect("a permit");
                                        held.push((permit, ip, subject));
                                    }
                                }
                                QuotaOp::Close(i) if !held.is_empty() => {
                                    held.remove(i % held.len());
                                }
                                QuotaOp::Close(_) => {}
                            }
                            settle().await;
                            prop_assert_eq!(layers[1].fleet_active().await, Ok(held.len()));
                            for (ip, addr) in IPS.iter().enumerate() {
                                let n = held.iter().filter(|h| h.1 == ip).count();
                                prop_assert_eq!(
                                    layers[0].fleet_active_for_ip((*addr).into()).await,
                                    Ok(n)
                                );
                            }
                            for (s, subject) in SUBJECTS.iter().enumerate() {
                                let n = held.iter().filter(|h| h.2 == Some(s)).count();
                                prop_assert_eq!(
                                    layers[1].fleet_active_for_identity(subject).await,
                                    Ok(n)
                                );
                            }
                        }
                        for i in drop_order {
                            if held.is_empty() {
                                break;
                            }
                            held.remove(i % held.len());
                        }
                        held.clear();
                        settle().await;
                        prop_assert_eq!(layers[0].fleet_active().await, Ok(0));
                        for subject in SUBJECTS {
                            prop_assert_eq!(
                                layers[0].fleet_active_for_identity(subject).await,
                                Ok(0)
                            );
                        }
                        Ok(())
                    })
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
