//! The stock ticker: live prices pushed from an embedded SQLite database to a browser page over
//! a WebSocket guarded by every wsguard layer.
//!
//! Run: `cargo run --release -p stock-ticker`, then open <http://127.0.0.1:8000> and
//! sign in (`demo` / `demo` on a new database). `--tls` serves https/wss with a self-signed
//! certificate; `--help` lists every flag with its default.
//!
//! The WebSocket route `/ws` goes through, in order: origin guard → client IP → handshake rate
//! limit → brute-force throttle → ticket authentication (`Authorization: Bearer`, a
//! `bearer.<token>` subprotocol entry next to `ticker.v1`, or `?token=`) → connection quotas →
//! socket policy (size, rate, idle, heartbeat, expiry, conflating backpressure).
//!
//! `POST /prices` needs a user with the publisher role (`--publisher NAME`; `demo` is not
//! one) and has its own rate limit per user; `POST /revoke` logs the caller out (one token
//! or every token of the user), closing the sockets with 1008, with or without `--redis`.
//!
//! Fleet mode: `cargo run --release -p stock-ticker --features redis -- --redis
//! redis://127.0.0.1:6379 --ticket-secret-file ticket.secret` on several instances (each with
//! its own `--addr` and `--db`) shares handshake rate limits, socket quotas, revocation
//! (`POST /revoke`) and prices through Redis; see `fleet.rs`.
//!
//! The login ticket secret: a single instance makes a random one at start (tickets die with
//! the process; nothing to manage or leak). Instances of a fleet must verify each other's
//! tickets, so they share one the operator provides, in a file (`--ticket-secret-file PATH`,
//! at least 32 bytes, e.g. `head -c 32 /dev/urandom | base64 > ticket.secret`, readable by
//! the server only) or in the environment (`TICKER_TICKET_SECRET`, visible to anything that
//! can read the process's environment). Whoever holds the secret can mint a ticket for any
//! user, so it is never stored in Redis; changing it signs everybody out.

mod db;
mod fleet;
mod hub;
mod market;
mod metrics;
mod server;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    num::NonZeroU32,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{State, ws::Message},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::{any, get, post},
};
use clap::Parser;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use wsguard::{
    auth::{
        Credential, CredentialSource, HandshakeAuthLayer, Ticket, TicketIssuer, TicketKey,
        TicketVerifier, TokenFingerprint, Verified,
    },
    client_ip::ClientIpLayer,
    origin::OriginGuardLayer,
    rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitLayer},
    revoke::{RevocationLayer, Revocations, RevokeError},
    socket::{
        CloseCause, GuardedSocket, GuardedUpgrade, RateLimit, SlowConsumer, SocketPolicyLayer,
    },
};

use crate::{db::Db, hub::Hub, metrics::Metrics};

#[derive(Debug, Parser)]
#[command(about = "Live stock prices over a wsguard-protected WebSocket")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Serve https and wss (a self-signed certificate unless --cert/--key are given)
    /// [default: off: http and ws].
    #[arg(long)]
    tls: bool,
    /// PEM certificate chain; implies --tls [default: a self-signed certificate generated at
    /// start].
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert [default: generated with the self-signed certificate].
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// SQLite database file, created and seeded on first run.
    #[arg(long, default_value = "stock_ticker.db")]
    db: PathBuf,
    /// Simulated price changes per second across all symbols (0 turns the simulator off).
    #[arg(long, default_value_t = 10.0)]
    tick_hz: f64,
    /// Add or update a user, NAME:PASSWORD (repeatable); it is a publisher only if
    /// --publisher names it [default: none; `demo`/`demo`, not a publisher, is created when
    /// the database has no user].
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Give a user the publisher role, stored in the database: only publishers may `POST
    /// /prices` (repeatable; the user must exist or be added with --user) [default: none:
    /// roles stay as stored].
    #[arg(long = "publisher", value_name = "NAME")]
    publishers: Vec<String>,
    /// Price changes a publisher may post per minute (`POST /prices`, per user and instance;
    /// over it: 429 with Retry-After).
    #[arg(long, default_value_t = NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN))]
    publish_rate: NonZeroU32,
    /// Burst of price changes a publisher may post at once.
    #[arg(long, default_value_t = NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN))]
    publish_burst: NonZeroU32,
    /// Another origin allowed to open sockets (repeatable) [default: only the server's own
    /// origins].
    #[arg(long = "allow-origin", value_name = "URL")]
    allow_origins: Vec<String>,
    /// Another name (or address) this server answers to, HOST[:PORT] or .DOMAIN for its
    /// subdomains (repeatable): a socket handshake whose Host is none of them gets 403, the
    /// defence against DNS rebinding [default: the listen address, 127.0.0.1 and localhost,
    /// with the listen port].
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// Password checks (argon2, ~19 MiB each) running at once across all clients; a login
    /// past this gets 503 with Retry-After.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_logins: u32,
    /// Largest message a client may send, in bytes (larger: close 1009).
    #[arg(long, default_value_t = 4096)]
    max_message_bytes: usize,
    /// Messages per second a socket may send.
    #[arg(long, default_value_t = 10)]
    msg_rate: u64,
    /// Burst of messages a socket may send at once.
    #[arg(long, default_value_t = 20)]
    msg_burst: u64,
    /// WebSocket handshakes per second per client IP.
    #[arg(long, default_value_t = 5)]
    connect_rate: u32,
    /// Burst of handshakes per client IP.
    #[arg(long, default_value_t = 20)]
    connect_burst: u32,
    /// Concurrent sockets per client IP.
    #[arg(long, default_value_t = 100)]
    max_conns_per_ip: usize,
    /// Concurrent sockets per user.
    #[arg(long, default_value_t = 10)]
    max_conns_per_user: usize,
    /// Close a socket that sent nothing for this many seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Ping every this many seconds; close if no pong within as long again.
    #[arg(long, default_value_t = 20)]
    heartbeat: u64,
    /// A proxy (CIDR) whose X-Forwarded-For is trusted (repeatable) [default: none: the peer
    /// address is the client].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Lifetime of a login token, in seconds.
    #[arg(long, default_value_t = 900)]
    token_ttl: u64,
    /// Seconds a client may take to complete TLS and send its request headers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// A login token opens at most one socket (replayed tokens get 401); `POST /prices`
    /// still accepts it until it expires [default: off: a token opens sockets until it expires].
    #[arg(long)]
    one_time_tokens: bool,
    /// Fleet mode: share limits, quotas, revocation and prices with other instances through
    /// this Redis, redis://host:port (needs the `redis` feature) [default: off: this
    /// instance alone].
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Prefix of the fleet's Redis keys; instances of one fleet share it.
    #[arg(long, default_value = "stock-ticker", requires = "redis")]
    redis_prefix: String,
    /// Longest wait for Redis in a handshake, in milliseconds.
    #[arg(long, default_value_t = 250, requires = "redis")]
    redis_timeout_ms: u64,
    /// While Redis is unreachable: fall back to per-instance limits, or refuse with 503.
    #[arg(long, value_enum, default_value = "fallback", requires = "redis")]
    redis_failure: fleet::OnFailure,
    /// Lifetime of a socket's quota lease without renewal, in milliseconds (the leases of a
    /// crashed instance are free after this long).
    #[arg(long, default_value_t = 30_000, requires = "redis")]
    lease_ttl_ms: u64,
    /// File holding the login-ticket signing secret (at least 32 bytes; a trailing newline is
    /// ignored), or set TICKER_TICKET_SECRET instead. Required with --redis: every instance
    /// of a fleet needs the same secret. Whoever holds it can sign in as anyone: keep the
    /// file readable by the server only; changing it signs everybody out [default: a random
    /// secret per process: tickets do not survive a restart].
    #[arg(long, value_name = "PATH")]
    ticket_secret_file: Option<PathBuf>,
}

/// The environment variable that may hold the ticket secret instead of
/// `--ticket-secret-file`.
const TICKET_SECRET_ENV: &str = "TICKER_TICKET_SECRET";

/// The login-ticket key: from the operator's secret (`--ticket-secret-file` or
/// `TICKER_TICKET_SECRET`), required in fleet mode; otherwise random for this process.
fn ticket_key(args: &Args) -> Result<TicketKey, Box<dyn std::error::Error>> {
    let from_env = std::env::var_os(TICKET_SECRET_ENV).filter(|v| !v.is_empty());
    let secret: Option<Vec<u8>> = match (&args.ticket_secret_file, from_env) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "the ticket secret is given twice: use --ticket-secret-file or {TICKET_SECRET_ENV}, not both"
            )
            .into());
        }
        (Some(path), None) => {
            let mut bytes = std::fs::read(path)
                .map_err(|e| format!("--ticket-secret-file {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Some(bytes)
        }
        (None, Some(value)) => Some(value.into_encoded_bytes()),
        (None, None) => None,
    };
    match secret {
        Some(secret) => TicketKey::new("k1", secret).map_err(|e| {
            format!("the ticket secret (--ticket-secret-file or {TICKET_SECRET_ENV}): {e}").into()
        }),
        None if args.redis.is_some() => Err(format!(
            "fleet mode (--redis) needs the ticket secret every instance shares: \
             --ticket-secret-file PATH or {TICKET_SECRET_ENV}"
        )
        .into()),
        None => Ok(TicketKey::generate("k1")?),
    }
}

#[derive(Clone)]
struct App {
    db: Db,
    hub: Hub,
    metrics: Arc<Metrics>,
    issuer: TicketIssuer,
    verifier: TicketVerifier,
    token_ttl: u64,
    /// Revoked tokens and users, shared through Redis in fleet mode.
    revocations: Revocations,
    /// `POST /prices` per user.
    publish_limit: Arc<DefaultKeyedRateLimiter<String>>,
    /// Fleet mode (`--redis`).
    fleet: Option<fleet::TickerFleet>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let db = Db::open(&args.db)?;
    for user in &args.users {
        let (name, password) = user
            .split_once(':')
            .ok_or_else(|| format!("--user {user:?}: expected NAME:PASSWORD"))?;
        if name.is_empty() || password.is_empty() {
            return Err(format!("--user {user:?}: name and password must not be empty").into());
        }
        db.upsert_user(name, password, args.publishers.iter().any(|p| p == name))?;
    }
    if db.user_count()? == 0 {
        db.upsert_user("demo", "demo", args.publishers.iter().any(|p| p == "demo"))?;
        println!("no users in {}: created demo / demo", args.db.display());
    }
    for name in &args.publishers {
        if !db.make_publisher(name)? {
            return Err(format!(
                "--publisher {name:?}: no such user (add it with --user NAME:PASSWORD)"
            )
            .into());
        }
    }

    let key = ticket_key(&args)?;
    let hub = Hub::new(db.snapshot()?);
    let fleet = match &args.redis {
        Some(url) => {
            let fleet = fleet::TickerFleet::connect(&fleet::Options {
                url: url.clone(),
                prefix: args.redis_prefix.clone(),
                timeout: Duration::from_millis(args.redis_timeout_ms),
                lease_ttl: Duration::from_millis(args.lease_ttl_ms),
                on_failure: args.redis_failure,
            })
            .await?;
            fleet.prepare(&db, &hub).await?;
            Some(fleet)
        }
        None => None,
    };
    tokio::spawn(market::run(
        db.clone(),
        hub.clone(),
        fleet.clone(),
        args.tick_hz,
    ));

    let revocations = match &fleet {
        Some(fleet) => fleet.revocations(),
        // Remembered as long as a token lives.
        None => Revocations::builder()
            .retention(Duration::from_secs(args.token_ttl))
            .build(),
    };
    let publish_limit = Arc::new(RateLimiter::keyed(
        Quota::per_minute(args.publish_rate).allow_burst(args.publish_burst),
    ));
    {
        let limit = Arc::clone(&publish_limit);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limit.retain_recent();
                limit.shrink_to_fit();
            }
        });
    }
    let app = App {
        db,
        hub,
        metrics: Arc::new(Metrics::default()),
        issuer: TicketIssuer::new(key.clone()).ttl(Duration::from_secs(args.token_ttl)),
        verifier: TicketVerifier::new(key),
        token_ttl: args.token_ttl,
        revocations,
        publish_limit,
        fleet,
    };

    let tls = if args.tls || args.cert.is_some() {
        Some(server::tls_acceptor(
            args.cert.as_deref().zip(args.key.as_deref()),
        )?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    let router = router(&args, addr, tls.is_some(), app)?;

    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("stock ticker listening on {scheme}://{addr}");
    let header_timeout = Duration::from_secs(args.header_timeout);
    server::serve(listener, router, tls, header_timeout).await;
    Ok(())
}

fn router(
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
        .per_second(args.connect_rate)?
        .burst(args.connect_burst)?;
    connect_rate.spawn_pruner(Duration::from_secs(60));
    let login_rate = RateLimitLayer::new().per_minute(20)?.burst(10)?;
    login_rate.spawn_pruner(Duration::from_secs(60));
    let ws_verifier = if args.one_time_tokens {
        // Its own replay cache: only socket handshakes use the token up.
        app.verifier.clone().one_time(100_000)?
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
        .per_ip(args.max_conns_per_ip)?
        .per_identity(args.max_conns_per_user)?;
    let heartbeat = Duration::from_secs(args.heartbeat);
    let policy = SocketPolicyLayer::new()
        .max_message_size(args.max_message_bytes)?
        .max_frame_size(args.max_message_bytes)?
        .message_rate(RateLimit::per_second(args.msg_rate)?.with_burst(args.msg_burst)?)
        .idle_timeout(Duration::from_secs(args.idle_timeout))?
        .heartbeat(heartbeat, heartbeat)?
        .send_queue(64, 256 * 1024)?
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

fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
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
struct LoginSlots {
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
async fn caller<'h>(app: &App, headers: &'h HeaderMap) -> Result<(Ticket, &'h str), Response> {
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

async fn ws(State(app): State<App>, upgrade: GuardedUpgrade) -> Response {
    upgrade
        .protocols(["ticker.v1"])
        .on_upgrade(move |socket| session(app, socket))
}

/// Decrements the open-connection gauge however the session ends.
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe { symbols: Vec<String> },
    Unsubscribe { symbols: Vec<String> },
}

async fn session(app: App, mut socket: GuardedSocket) {
    app.metrics.connections_open.fetch_add(1, Relaxed);
    app.metrics.connections_total.fetch_add(1, Relaxed);
    let _open = OpenGuard(app.metrics.clone());

    // Subscribe before the snapshot; updates already in the snapshot are skipped by `seq`.
    let mut updates = app.hub.subscribe();
    let sender = socket.sender();
    let mut subs = Subscriptions::default();
    let snapshot = app.hub.latest();
    subs.subscribe(&snapshot);
    if sender
        .send(Message::text(snapshot_json(&snapshot)))
        .is_err()
    {
        return;
    }

    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(update) => {
                    if !subs.admit(&update.symbol, update.seq) {
                        continue;
                    }
                    // Keyed by symbol: a slow consumer keeps only the latest price per symbol.
                    if sender.send_keyed(update.symbol, Message::Text(update.json)).is_err() {
                        break;
                    }
                    app.metrics.messages_pushed.fetch_add(1, Relaxed);
                }
                Err(RecvError::Lagged(missed)) => {
                    // This task fell behind the hub: catch up with the latest prices.
                    tracing::debug!(missed, "session lagged behind the hub");
                    let mut open = true;
                    for price in app.hub.latest() {
                        let symbol: Arc<str> = Arc::from(price.symbol.as_str());
                        if open && subs.admit(&symbol, price.seq) {
                            let text = json!({ "type": "price", "symbol": price.symbol,
                                               "price": price.price, "seq": price.seq,
                                               "ts": price.ts }).to_string();
                            open = sender.send_keyed(symbol, Message::text(text)).is_ok();
                        }
                    }
                    if !open {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    app.metrics.client_messages.fetch_add(1, Relaxed);
                    let reply = handle_client_message(&app, &text, &mut subs);
                    if let Some(reply) = reply
                        && sender.send(Message::text(reply)).is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let error = json!({ "type": "error", "error": "binary messages are not supported" });
                    if sender.send(Message::text(error.to_string())).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }

    let stats = socket.stats();
    if stats.conflated > 0 {
        app.metrics.slow_consumer("conflated", stats.conflated);
    }
    if let Some(cause) = socket.close_cause() {
        app.metrics.closed(cause.as_str());
        if matches!(cause, CloseCause::SlowConsumer) {
            app.metrics.slow_consumer("closed", 1);
        }
    }
}

fn snapshot_json(prices: &[db::Price]) -> String {
    json!({ "type": "snapshot", "prices": prices }).to_string()
}

/// What one socket is subscribed to, and the last `seq` it was sent per symbol.
#[derive(Default)]
struct Subscriptions {
    symbols: HashSet<String>,
    last_seq: HashMap<Arc<str>, u64>,
}

impl Subscriptions {
    /// Subscribes to the symbols of `prices`, which the client is about to be sent.
    fn subscribe(&mut self, prices: &[db::Price]) {
        for price in prices {
            self.symbols.insert(price.symbol.clone());
            let last = self
                .last_seq
                .entry(Arc::from(price.symbol.as_str()))
                .or_default();
            *last = (*last).max(price.seq);
        }
    }

    fn unsubscribe(&mut self, symbols: &[String]) {
        for symbol in symbols {
            self.symbols.remove(symbol);
        }
    }

    /// Whether change `seq` of `symbol` goes to the client: subscribed and newer than what it
    /// has. Records it as sent.
    fn admit(&mut self, symbol: &Arc<str>, seq: u64) -> bool {
        if !self.symbols.contains(&**symbol) {
            return false;
        }
        let last = self.last_seq.entry(symbol.clone()).or_default();
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }
}

/// Applies a subscribe/unsubscribe message; returns the reply to send, if any. A subscribe is
/// answered with a snapshot of the requested symbols (which also confirms it); an unsubscribe
/// has no reply.
fn handle_client_message(app: &App, text: &str, subs: &mut Subscriptions) -> Option<String> {
    let error = |e: String| Some(json!({ "type": "error", "error": e }).to_string());
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(e) => return error(format!("invalid message: {e}")),
    };
    let symbols = match &message {
        ClientMessage::Subscribe { symbols } | ClientMessage::Unsubscribe { symbols } => symbols,
    };
    let unknown: Vec<&str> = symbols
        .iter()
        .filter(|s| !app.hub.is_symbol(s))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return error(format!("unknown symbols: {}", unknown.join(", ")));
    }
    match message {
        ClientMessage::Unsubscribe { symbols } => {
            subs.unsubscribe(&symbols);
            None
        }
        ClientMessage::Subscribe { symbols } => {
            let requested: HashSet<&str> = symbols.iter().map(String::as_str).collect();
            let prices: Vec<db::Price> = app
                .hub
                .latest()
                .into_iter()
                .filter(|p| requested.contains(p.symbol.as_str()))
                .collect();
            subs.subscribe(&prices);
            Some(snapshot_json(&prices))
        }
    }
}
