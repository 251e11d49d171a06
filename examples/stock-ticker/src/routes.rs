//! The router: the socket route `/ws` with every wsguard layer in order, the REST routes
//! (handlers in `rest`) with the auth and revocation layers where they act for a caller,
//! `/healthz`, `/metrics` and the page (`/`, `/page.js`, `/page.css`).
//!
//! tower-http does the generic HTTP work: credentials marked sensitive before the request
//! trace, a body limit on the JSON routes, a timeout on every HTTP route (not on the socket
//! route, whose upgraded connection lives on), and security headers on the page.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use axum::{
    Extension, Router,
    body::Body,
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::{any, get, post},
};
use tower_governor::{
    GovernorError, GovernorLayer, governor::GovernorConfigBuilder, key_extractor::KeyExtractor,
};
use tower_http::{
    limit::RequestBodyLimitLayer,
    sensitive_headers::SetSensitiveHeadersLayer,
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::{DefaultMakeSpan, TraceLayer},
};
use wsguard::{
    WsGuard,
    auth::{Credential, CredentialSource, HandshakeAuthLayer, Verified},
    client_ip::ClientIpLayer,
    governor::{ClientIpKey, IdentityKey},
    origin::OriginGuardLayer,
    rate_limit::{ConnectionQuotaLayer, RateLimitLayer},
    revoke::RevocationLayer,
    socket::{Drain, MessageRate, SlowConsumer, SocketPolicyLayer},
};

use crate::{
    App,
    cli::Args,
    json::{self, json_error},
    metrics,
    rest::{self, LoginSlots},
    server,
    session::ws,
};

/// Logins per client IP: one every 3 s (20 a minute), with a burst of 10.
const LOGIN_EVERY: Duration = Duration::from_secs(3);
const LOGIN_BURST: u32 = 10;
/// One-time tokens the socket route's replay cache remembers.
const ONE_TIME_TOKENS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();
/// Each socket's send queue: messages and bytes.
const SEND_QUEUE_MESSAGES: NonZeroUsize = NonZeroUsize::new(64).unwrap();
const SEND_QUEUE_BYTES: NonZeroUsize = NonZeroUsize::new(256 * 1024).unwrap();
/// The largest JSON body `/login`, `/prices` and `/revoke` read.
const JSON_BODY_LIMIT: usize = 16 * 1024;
/// The page's Content-Security-Policy: its script, style and socket come from this origin
/// only, nothing inline, no plugins, no framing, forms post back here.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

pub(crate) fn router(
    args: &Args,
    addr: SocketAddr,
    tls: bool,
    app: App,
    drain: &Drain,
) -> Result<Router, Box<dyn std::error::Error>> {
    let mut client_ip = ClientIpLayer::new();
    for cidr in &args.trusted_proxies {
        client_ip = client_ip.trusted_proxy_str(cidr)?;
    }
    let origins = OriginGuardLayer::new()
        .allow_origins(server::origins_for(addr, tls))?
        .allow_origins(&args.allow_origins)?
        .allow_hosts(server::hosts_for(addr))?
        .allow_hosts(&args.allowed_hosts)?
        .tls(tls);
    let connect_rate = RateLimitLayer::new()
        .per_second(args.connect_rate)
        .burst(args.connect_burst);
    connect_rate.spawn_pruner(Duration::from_secs(60));
    let login_rate = json_rate_limit(ClientIpKey::new(), LOGIN_EVERY, LOGIN_BURST, "logins")?;
    // Per publisher, after auth (the route's own layer runs inside the caller layers).
    let publish_rate = json_rate_limit(
        IdentityKey,
        Duration::from_secs(60) / args.publish_rate.get(),
        args.publish_burst.get(),
        "price changes",
    )?;
    let ws_verifier = if args.one_time_tokens {
        // Its own replay cache: only socket handshakes use the token up.
        app.verifier.clone().one_time(ONE_TIME_TOKENS)
    } else {
        app.verifier.clone()
    };
    // Only a real handshake uses a one-time token up: the page's diagnostic `GET /ws` (a
    // plain fetch, which browsers cannot make an upgrade) passes the same layers and gets
    // the same refusal, or 426 from the handler, without burning the token.
    let ws_auth = move |parts: &Parts, credential: Credential| {
        let checked = if is_handshake(parts) {
            ws_verifier.verify(credential.token())
        } else {
            ws_verifier.check(credential.token())
        };
        std::future::ready(checked.map(|ticket| {
            let principal = ticket.principal();
            Verified::new(ticket, principal)
        }))
    };
    let auth = HandshakeAuthLayer::new(ws_auth).sources([
        CredentialSource::authorization(),
        CredentialSource::subprotocol("bearer.")?,
        CredentialSource::query("token")?,
    ]);
    let quota = ConnectionQuotaLayer::new()
        .per_ip(args.max_conns_per_ip)
        .per_identity(args.max_conns_per_user);
    let heartbeat = Duration::from_secs(args.heartbeat);
    let policy = SocketPolicyLayer::new()
        .max_message_size(args.max_message_bytes)
        .max_frame_size(args.max_message_bytes)
        .message_rate(MessageRate::per_second(args.msg_rate).with_burst(args.msg_burst))
        .idle_timeout(Duration::from_secs(args.idle_timeout))
        .heartbeat(heartbeat, heartbeat)
        .send_queue(SEND_QUEUE_MESSAGES, SEND_QUEUE_BYTES)
        .slow_consumer(SlowConsumer::Conflate);

    // request → drain → origin → client IP → rate → throttle → auth → revocation → quota →
    // socket policy → handler, in that order by construction; in fleet mode the rate limit,
    // quota and revocation count in Redis. The drain closes every socket at shutdown.
    let guard = WsGuard::with_auth(auth)
        .origin(origins)
        .client_ip(client_ip.clone())
        .rate_limit(connect_rate)
        .revocations(app.revocations.clone())
        .quota(quota)
        .socket_policy(policy)
        .drain(drain);
    #[cfg(feature = "redis")]
    let guard = match &app.fleet {
        Some(fleet) => guard.fleet(fleet.handle()),
        None => guard,
    };
    // `route_layer` here and on the REST routes: a layer covers its routes only, not the
    // router's fallback (with `layer`, an unknown path such as `/favicon.ico` would get an
    // auth layer's 401 instead of 404).
    let ws_route = Router::new().route("/ws", any(ws)).route_layer(guard);
    let login_slots = LoginSlots::new(args.max_concurrent_logins);
    let login_route = Router::new()
        .route("/login", post(rest::login))
        .route_layer(Extension(login_slots))
        .route_layer(login_rate)
        .route_layer(client_ip)
        .route_layer(RequestBodyLimitLayer::new(JSON_BODY_LIMIT));
    // The routes that act for a caller: its bearer token, verified as at the handshake (but
    // not used up: one-time tokens are for sockets) and not revoked (in fleet mode, on any
    // instance). Their refusals answer in the API's JSON shape.
    let caller_routes = Router::new()
        .route("/prices", post(rest::post_price).layer(publish_rate))
        .route("/revoke", post(rest::revoke))
        .route_layer(RevocationLayer::new(app.revocations.clone()).on_rejection(json::refusal))
        .route_layer(HandshakeAuthLayer::new(app.verifier.clone()).on_rejection(json::refusal))
        .route_layer(RequestBodyLimitLayer::new(JSON_BODY_LIMIT));
    let page = Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route(
            "/page.js",
            get(|| asset("text/javascript; charset=utf-8", include_str!("page.js"))),
        )
        .route(
            "/page.css",
            get(|| asset("text/css; charset=utf-8", include_str!("page.css"))),
        )
        .route_layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        ))
        .route_layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ));
    // Every HTTP route answers within the timeout (`408` otherwise); `route_layer` keeps it
    // off the fallback, and the socket route is merged in outside it: an upgraded socket is
    // not an HTTP request and lives as long as its policy allows.
    let http_routes = Router::new()
        .merge(page)
        .merge(login_route)
        .merge(caller_routes)
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(public_metrics(args, &app))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(args.http_timeout_ms.get()),
        ));

    let mut router = Router::new()
        .merge(ws_route)
        .merge(http_routes)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(middleware::from_fn_with_state(
            app.metrics.clone(),
            metrics::count_rejections,
        ))
        // The request trace (debug level, with headers) sees the credentials redacted: the
        // bearer token, cookies, and `Sec-WebSocket-Protocol`, which carries the page's
        // ticket (`bearer.<token>`).
        .layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)),
        )
        .layer(SetSensitiveHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::SET_COOKIE,
            header::SEC_WEBSOCKET_PROTOCOL,
        ]));
    if tls {
        router = router.layer(middleware::map_response(|mut res: Response| async move {
            res.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
            res
        }));
    }
    Ok(router.with_state(app))
}

/// `GET /metrics` on the public listener: only with `--metrics-token-file` (the bearer token)
/// and without `--metrics-addr` (then it is on that listener alone).
fn public_metrics(args: &Args, app: &App) -> Router<App> {
    if args.metrics_token_file.is_none() || args.metrics_addr.is_some() {
        return Router::new();
    }
    Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(app.metrics.clone())
}

/// A static file of the page, with its content type.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A tower_governor rate limit of one request every `every` with a burst of `burst` per
/// `key` (wsguard's trusted client address or the authenticated user, so a forged
/// `X-Forwarded-For` gives no new budget), answering in the API's JSON shape with
/// `Retry-After` (at least 1 s; tower_governor's own can say 0). Idle keys are pruned every
/// minute.
fn json_rate_limit<K>(
    key: K,
    every: Duration,
    burst: u32,
    what: &'static str,
) -> Result<
    GovernorLayer<K, governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>, Body>,
    Box<dyn std::error::Error>,
>
where
    K: KeyExtractor + Send + Sync + 'static,
    K::Key: Send + Sync + 'static,
{
    let config = GovernorConfigBuilder::default()
        .period(every.max(Duration::from_nanos(1)))
        .burst_size(burst.max(1))
        .key_extractor(key)
        .finish()
        .ok_or("invalid rate limit settings")?;
    let config = std::sync::Arc::new(config);
    let limiter = std::sync::Arc::clone(config.limiter());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
    Ok(
        GovernorLayer::new(config).error_handler(move |error| match error {
            GovernorError::TooManyRequests { wait_time, .. } => {
                let secs = wait_time.max(1);
                let mut response = json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many {what}: retry in {secs} s"),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                response
            }
            GovernorError::Other { code, msg, .. } => {
                json_error(code, msg.unwrap_or_else(|| "refused".to_owned()))
            }
            _ => json_error(StatusCode::INTERNAL_SERVER_ERROR, "no rate limit key"),
        }),
    )
}

/// A WebSocket handshake: an HTTP/1.1 `Upgrade: websocket` request or an HTTP/2 extended
/// CONNECT.
fn is_handshake(parts: &Parts) -> bool {
    parts.method == Method::CONNECT
        || parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}
