//! The HTTP side: the router with every wsguard layer in order, and the handlers for
//! `/login`, `/prices`, `/revoke`, `/metrics` and `/healthz`.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::{any, get, post},
};
use governor::clock::Clock as _;
use serde::Deserialize;
use serde_json::json;
use wsguard::{
    auth::{Credential, CredentialSource, HandshakeAuthLayer, Ticket, TokenFingerprint, Verified},
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    revoke::{RevocationLayer, RevokeError},
    socket::{MessageRate, SlowConsumer, SocketPolicyLayer},
};

use crate::{App, cli::Args, db, metrics, server, session::ws};

/// Logins per minute per client IP, and their burst.
const LOGINS_PER_MINUTE: NonZeroU32 = NonZeroU32::new(20).unwrap();
const LOGIN_BURST: NonZeroU32 = NonZeroU32::new(10).unwrap();
/// One-time tokens the socket route's replay cache remembers.
const ONE_TIME_TOKENS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();
/// Each socket's send queue: messages and bytes.
const SEND_QUEUE_MESSAGES: NonZeroUsize = NonZeroUsize::new(64).unwrap();
const SEND_QUEUE_BYTES: NonZeroUsize = NonZeroUsize::new(256 * 1024).unwrap();

pub(crate) fn router(
    args: &Args,
    addr: SocketAddr,
    tls: bool,
    app: App,
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
    let login_rate = RateLimitLayer::new()
        .per_minute(LOGINS_PER_MINUTE)
        .burst(LOGIN_BURST);
    login_rate.spawn_pruner(Duration::from_secs(60));
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

    // request → origin → client IP → rate → throttle → auth → quota → socket policy → handler.
    // With `layer`, the last one added runs first.
    let ws_route = Router::new().route("/ws", any(ws)).layer(policy);
    // Fleet mode swaps in the Redis-backed quota (plus revocation) and rate limit.
    let ws_route = match &app.fleet {
        Some(fleet) => {
            fleet.guard_sockets(ws_route, args.max_conns_per_ip, args.max_conns_per_user)?
        }
        None => ws_route
            .layer(quota)
            .layer(RevocationLayer::new(app.revocations.clone())),
    };
    let ws_route = ws_route.layer(auth).layer(AuthThrottleLayer::new());
    let ws_route = match &app.fleet {
        Some(fleet) => fleet.limit_rate(ws_route, args.connect_rate, args.connect_burst)?,
        None => ws_route.layer(connect_rate),
    };
    let ws_route = ws_route.layer(client_ip.clone()).layer(origins);
    let login_slots = LoginSlots::new(args.max_concurrent_logins);
    let login_route = Router::new()
        .route("/login", post(login))
        .layer(Extension(login_slots))
        .layer(login_rate)
        .layer(client_ip);

    let mut router = Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .merge(ws_route)
        .merge(login_route)
        .route("/prices", post(post_price))
        .route("/revoke", post(revoke))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024))
        .layer(middleware::from_fn_with_state(
            app.metrics.clone(),
            metrics::count_rejections,
        ));
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

pub(crate) fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error.into() }))).into_response()
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// The global cap on password checks running at once (`--max-concurrent-logins`): each
/// argon2 check takes ~19 MiB and a blocking thread, and the per-IP login rate does not
/// bound logins spread over many addresses.
#[derive(Clone)]
pub(crate) struct LoginSlots {
    slots: Arc<tokio::sync::Semaphore>,
    limit: u32,
}

impl LoginSlots {
    fn new(limit: u32) -> Self {
        let permits = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(permits)),
            limit,
        }
    }
}

async fn login(
    State(app): State<App>,
    Extension(slots): Extension<LoginSlots>,
    body: Bytes,
) -> Response {
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    // Past the cap: refuse at once rather than queue (a queue would hold the requests, and
    // their memory, of a login flood).
    let Ok(slot) = Arc::clone(&slots.slots).try_acquire_owned() else {
        tracing::warn!(
            name: "ticker.login.busy",
            cause = "max_concurrent_logins",
            limit = slots.limit,
            "login refused: too many password checks at once"
        );
        let mut res = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins at once, retry later",
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    let db = app.db.clone();
    let name = login.username.clone();
    // argon2 is slow on purpose: off the async threads. The slot is held by the check
    // itself, so a client that hangs up does not free it before the memory is.
    let ok = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        db.verify_user(&name, &login.password)
    })
    .await
    .unwrap_or(false);
    if !ok {
        tracing::info!(name: "ticker.login.refused", "login refused");
        return json_error(StatusCode::UNAUTHORIZED, "invalid username or password");
    }
    let token = app.issuer.issue(&login.username);
    Json(json!({ "token": token, "expires_in": app.token_ttl })).into_response()
}

#[derive(Deserialize)]
struct NewPrice {
    symbol: String,
    price: f64,
}

/// The caller of an HTTP route: its bearer token, verified and not revoked; or the refusal.
pub(crate) async fn caller<'h>(
    app: &App,
    headers: &'h HeaderMap,
) -> Result<(Ticket, &'h str), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return Err(json_error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let ticket = match app.verifier.verify(token) {
        Ok(ticket) => ticket,
        Err(e) => {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                format!("invalid token: {e}"),
            ));
        }
    };
    let principal = ticket.principal();
    match app
        .revocations
        .check(&principal, Some(&TokenFingerprint::of(token)))
        .await
    {
        Ok(()) => Ok((ticket, token)),
        Err(RevokeError::Revoked) => Err(json_error(StatusCode::UNAUTHORIZED, "token revoked")),
        Err(e) => {
            tracing::error!("revocation check: {e}");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unavailable",
            ))
        }
    }
}

async fn post_price(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let ticket = match caller(&app, &headers).await {
        Ok((ticket, _)) => ticket,
        Err(refusal) => return refusal,
    };
    match app.db.is_publisher(ticket.subject()) {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(name: "ticker.publish.forbidden", identity = ticket.subject(), "not a publisher");
            return json_error(
                StatusCode::FORBIDDEN,
                "publishing prices needs the publisher role (--publisher NAME)",
            );
        }
        Err(e) => {
            tracing::error!("database error: {e}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "database error");
        }
    }
    if let Err(not_until) = app.publish_limit.check_key(&ticket.subject().to_owned()) {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        tracing::info!(
            name: "ticker.publish.rate_limited",
            identity = ticket.subject(),
            retry_after = secs,
            "price change refused: over the publish rate"
        );
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many price changes: retry in {secs} s"),
        );
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let new: NewPrice = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    if let Some(fleet) = &app.fleet {
        // Validated here, numbered and applied through Redis on every instance.
        if !new.price.is_finite() || new.price <= 0.0 {
            return json_error(
                StatusCode::BAD_REQUEST,
                db::PriceError::InvalidPrice.to_string(),
            );
        }
        if !app.hub.is_symbol(&new.symbol) {
            return json_error(
                StatusCode::BAD_REQUEST,
                db::PriceError::UnknownSymbol.to_string(),
            );
        }
        return match fleet.publish(&new.symbol, new.price).await {
            Ok(price) => Json(price).into_response(),
            Err(e) => {
                tracing::error!("fleet error: {e}");
                json_error(StatusCode::SERVICE_UNAVAILABLE, "Redis is unavailable")
            }
        };
    }
    let (db, hub) = (app.db.clone(), app.hub.clone());
    let result = tokio::task::spawn_blocking(move || {
        db.set_price(&new.symbol, new.price, |p| hub.publish(p))
    })
    .await;
    match result {
        Ok(Ok(price)) => Json(price).into_response(),
        Ok(Err(db::PriceError::Database(e))) => {
            tracing::error!("database error: {e}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "database error")
        }
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Revoke {
    /// `"user"` (default): every token and socket of the caller, on every instance;
    /// `"token"`: only the presented token and its sockets.
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /revoke`: the caller, authenticated by its bearer token, revokes its identity (log
/// out everywhere: every token issued to it so far) or just that token. Sockets close with
/// 1008 (on every instance in fleet mode); the revoked tokens are refused afterwards by the
/// handshake, `POST /prices` and `POST /revoke`.
async fn revoke(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let (ticket, token) = match caller(&app, &headers).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let request: Revoke = if body.is_empty() {
        Revoke::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
        }
    };
    let whole_user = match request.scope.as_deref() {
        None | Some("user") => true,
        Some("token") => false,
        Some(other) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("unknown scope {other:?}: use \"user\" or \"token\""),
            );
        }
    };
    let (scope, result) = if whole_user {
        (
            "user",
            app.revocations.revoke_identity(ticket.subject()).await,
        )
    } else {
        ("token", app.revocations.revoke_token(token).await)
    };
    match result {
        Ok(closed) => Json(json!({ "revoked": scope, "closed_sockets": closed })).into_response(),
        Err(e) => {
            tracing::error!("revocation not shared: {e}");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unavailable: revoked on this instance only",
            )
        }
    }
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
