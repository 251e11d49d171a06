//! Per-handshake cost of the client IP, rate limit, throttle and quota layers, measured
//! through `oneshot` against a bare service.
//!
//! Run: `cargo bench --bench layers -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`.

use std::{convert::Infallible, hint::black_box, net::SocketAddr};

use axum::{body::Body, extract::ConnectInfo, response::Response};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard::{
    client_ip::{ClientIpLayer, ProxyHeader},
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
};

fn request(with_xff: bool) -> Request<Body> {
    let mut builder = Request::get("/ws");
    if with_xff {
        builder = builder.header("x-forwarded-for", "203.0.113.9, 10.0.0.2");
    }
    let mut req = builder.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40000))));
    req
}

async fn bare(_req: Request<Body>) -> Result<Response, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn bench_one<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S, xff: bool)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let svc = svc.clone();
            async move { black_box(svc.oneshot(request(xff)).await.unwrap()) }
        })
    });
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let client_ip = || {
        ClientIpLayer::new()
            .trusted_proxy_str("10.0.0.0/8")
            .unwrap()
            .proxy_header(ProxyHeader::XForwardedFor)
    };
    // Limits high enough that nothing is refused: this measures the bookkeeping.
    let rate = || {
        RateLimitLayer::new()
            .per_second(1_000_000_000)
            .and_then(|l| l.burst(u32::MAX))
            .unwrap()
    };
    let quota = || {
        ConnectionQuotaLayer::new()
            .per_ip(1_000)
            .and_then(|l| l.global(1_000_000))
            .unwrap()
    };

    bench_one(c, &rt, "bare", service_fn(bare), false);
    bench_one(
        c,
        &rt,
        "bare (request with X-Forwarded-For)",
        service_fn(bare),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip (peer only)",
        client_ip().layer(service_fn(bare)),
        false,
    );
    bench_one(
        c,
        &rt,
        "client_ip (trusted proxy, X-Forwarded-For)",
        client_ip().layer(service_fn(bare)),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate",
        client_ip().layer(rate().layer(service_fn(bare))),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate + quota",
        client_ip().layer(rate().layer(quota().layer(service_fn(bare)))),
        true,
    );
    bench_one(
        c,
        &rt,
        "client_ip + rate + throttle + quota",
        client_ip()
            .layer(rate().layer(AuthThrottleLayer::new().layer(quota().layer(service_fn(bare))))),
        true,
    );
}

criterion_group!(benches, layers);
criterion_main!(benches);
