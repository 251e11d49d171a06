//! The heroes app of the python-socketio tutorial, in Rust: axum and socketioxide (a Socket.IO
//! server that is itself a tower service) behind wsguard's origin guard, client IP, handshake
//! rate limit and connection quota.
//!
//! Run: `cargo run -p heroes`, open <http://127.0.0.1:8000> and sign in (`demo` / `demo`
//! unless you pass `--user NAME:PASSWORD`, repeatable). Each hero button emits `get_name` with
//! `{"hero": "ironMan"}`; the server answers that client only with `name` and
//! `{"hero_name": "Tony Stark"}`. `--help` lists every flag with its default.
//!
//! What each request to `/socket.io/` goes through:
//! - origin guard on every request (long-polling too): a page on another site, or a `Host`
//!   that is not one of the server's names (`--allowed-host` adds one), gets `403`;
//! - client IP (from the peer, or `X-Forwarded-For` of a `--trusted-proxy`);
//! - for requests that open an Engine.IO session (no `sid`): a handshake rate limit per client
//!   IP (`429` + `Retry-After`) and a quota of open sessions per client IP (`429`), held until
//!   the session ends;
//! - socketioxide's own limits: `--max-payload` bytes per long-polling request body (larger:
//!   `413`) and per WebSocket message or frame (larger: the socket is closed);
//! - at the Socket.IO connect, the `auth` payload `{"username", "password"}` is checked; a
//!   refusal is a `connect_error` whose message says why. After `--max-login-failures` (5)
//!   failures within a minute a client (an IPv4 address, an IPv6 /64) is refused without a
//!   check for a minute (one Engine.IO session can carry many connect attempts, so the rate
//!   limit alone would not stop password guessing). The throttle is wsguard's
//!   `FailureThrottle`, keyed like its layers.
//!
//! The page (`/`, `/script.js`, `/style.css`, `/socket.io.min.js`) is served with a
//! Content-Security-Policy that allows nothing inline, `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`, and answers within a
//! timeout (tower-http); the Engine.IO endpoint has no such timeout, a long-poll being long
//! by design.
//!
//! Unknown heroes and malformed `get_name` payloads get an `error` event
//! (`{"error": "unknown hero: ..."}`); the socket stays open.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use socketioxide::{
    ParserError, SocketIo,
    extract::{MaybeHttpExtension, SocketRef, TryData},
    handler::ConnectHandler,
    socket::DisconnectReason,
};
use subtle::ConstantTimeEq;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::{
    sensitive_headers::SetSensitiveHeadersLayer,
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::{DefaultMakeSpan, TraceLayer},
};
use wsguard::{
    client_ip::{ClientIp, ClientIpLayer},
    origin::OriginGuardLayer,
    rate_limit::{ConnectionQuotaLayer, FailureThrottle, RateLimitLayer},
};

/// The tutorial's heroes: id → name.
const HEROES: [(&str, &str); 5] = [
    ("ironMan", "Tony Stark"),
    ("hulk", "Bruce Banner"),
    ("wonderWoman", "Diana Prince"),
    ("batMan", "Bruce Wayne"),
    ("blackPanther", "T'Challa"),
];

#[derive(Debug, Parser)]
#[command(about = "The Socket.IO heroes app behind wsguard")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// A user allowed to connect, NAME:PASSWORD (repeatable; default demo:demo).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Another origin allowed to connect (repeatable); the server's own origins always are.
    #[arg(long = "allow-origin", value_name = "URL")]
    allow_origins: Vec<String>,
    /// Another name (or address) this server answers to, HOST[:PORT] or .DOMAIN for its
    /// subdomains (repeatable); a request whose Host is none of them gets 403 (DNS rebinding).
    /// The listen address, 127.0.0.1 and localhost with the listen port always are.
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// A proxy (CIDR) whose X-Forwarded-For is trusted (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Largest long-polling request body and WebSocket message or frame, in bytes.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=16 << 20))]
    max_payload: u64,
    /// New Engine.IO sessions per second per client IP.
    #[arg(long, default_value = "5")]
    connect_rate: NonZeroU32,
    /// Burst of new sessions per client IP.
    #[arg(long, default_value = "20")]
    connect_burst: NonZeroU32,
    /// Open sessions per client IP.
    #[arg(long, default_value = "20")]
    max_conns_per_ip: NonZeroUsize,
    /// Failed logins per client (an IPv4 address or an IPv6 /64) within a minute before it is
    /// locked out for a minute.
    #[arg(long, default_value = "5")]
    max_login_failures: NonZeroU32,
    /// Seconds between Engine.IO pings (a long-poll is answered by the next ping at the latest).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval: u64,
    /// Seconds a client has to answer a ping before its session is closed.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    ping_timeout: u64,
    /// Close a session that has not joined a namespace after this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,
    /// Serve wsguard's metrics (Prometheus text, `GET /metrics`) on this address, a listener
    /// of its own: keep it on loopback or behind your scraper's network [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// Who may connect: name → password.
#[derive(Clone)]
struct Users(Arc<HashMap<String, String>>);

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the passwords.
        f.debug_struct("Users")
            .field("count", &self.0.len())
            .finish()
    }
}

impl Users {
    fn from_args(args: &[String]) -> Result<Self, String> {
        let mut users = HashMap::new();
        for user in args {
            let (name, password) = user
                .split_once(':')
                .ok_or_else(|| format!("--user {name:?}: expected NAME:PASSWORD", name = user))?;
            if name.is_empty() || password.is_empty() {
                return Err(format!(
                    "--user {name:?}: name and password must not be empty"
                ));
            }
            users.insert(name.to_owned(), password.to_owned());
        }
        Ok(Self(Arc::new(users)))
    }

    /// Constant-time in the password; unknown names compare against a dummy.
    fn check(&self, name: &str, password: &str) -> bool {
        let (known, expected) = match self.0.get(name) {
            Some(expected) => (true, expected.as_str()),
            None => (false, "\u{0}no such user"),
        };
        let same: bool = expected.as_bytes().ct_eq(password.as_bytes()).into();
        known && same
    }
}

/// The Socket.IO `auth` payload the page sends.
#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Why a Socket.IO connect was refused; its `Display` is the `connect_error` message.
#[derive(Debug)]
enum ConnectRefused {
    MissingCredentials,
    InvalidCredentials,
    TooManyFailures { retry_after: Duration },
}

impl fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingCredentials => {
                f.write_str("missing credentials: send {username, password} as the auth payload")
            }
            Self::InvalidCredentials => f.write_str("invalid username or password"),
            Self::TooManyFailures { retry_after } => write!(
                f,
                "too many failed logins: try again in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

/// The signed-in user, stored on the socket.
#[derive(Clone, Debug)]
struct User(Arc<str>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetName {
    hero: String,
}

fn hero_name(hero: &str) -> Option<&'static str> {
    HEROES
        .iter()
        .find(|(id, _)| *id == hero)
        .map(|(_, name)| *name)
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

    let mut users = Users::from_args(&args.users)?;
    if users.0.is_empty() {
        users = Users::from_args(&["demo:demo".to_owned()])?;
        println!("no --user given: sign in as demo / demo");
    }

    // Installed before serving, so that every layer's first record is kept.
    let metrics = match args.metrics_addr {
        Some(addr) => Some((
            tokio::net::TcpListener::bind(addr).await?,
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?,
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    let app = app(&args, addr, users)?;
    println!("heroes listening on http://{addr}");
    if let Some((listener, handle)) = metrics {
        println!("metrics on http://{}/metrics", listener.local_addr()?);
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The server's own hosts: the address it listens on, by IP and as `localhost`.
fn own_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if addr.ip().is_ipv6() {
        hosts.push(format!("[::1]:{port}"));
    }
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        hosts.push(addr.to_string());
    }
    hosts
}

/// The server's own origins: the address it listens on, by IP and as `localhost`.
fn own_origins(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    if addr.ip().is_ipv6() {
        origins.push(format!("http://[::1]:{port}"));
    } else if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        origins.push(format!("http://{}:{port}", addr.ip()));
    }
    origins
}

/// A request that opens an Engine.IO session: one without a `sid` query parameter. Requests
/// of an open session (long-polls, posts, the upgrade to WebSocket) carry its `sid`. This is
/// the same test engineioxide applies, so no request can open a session past the limits.
fn opens_session(req: &Request<Body>) -> bool {
    !req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair.starts_with("sid="))
}

/// How long the page and its files may take to answer (`408` after).
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The page's Content-Security-Policy: scripts, style and the Socket.IO connection from this
/// origin only, nothing inline, no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

fn app(args: &Args, addr: SocketAddr, users: Users) -> Result<Router, Box<dyn std::error::Error>> {
    let max_payload = args.max_payload;
    let max_message = usize::try_from(max_payload)?;
    // wsguard's brute-force throttle, used outside a layer: keyed like the layers (an IPv4
    // address, an IPv6 /64), counting checks in flight.
    let throttle = FailureThrottle::new()
        .max_failures(args.max_login_failures)
        .window(Duration::from_secs(60))
        .block_for(Duration::from_secs(60));
    let (socket_io, io) = SocketIo::builder()
        .max_payload(max_payload)
        .ws_max_message_size(max_message)
        .ws_max_frame_size(max_message)
        .ping_interval(Duration::from_secs(args.ping_interval))
        .ping_timeout(Duration::from_secs(args.ping_timeout))
        .connect_timeout(Duration::from_secs(args.connect_timeout))
        .build_svc();
    io.ns(
        "/",
        on_connect.with(
            move |socket: SocketRef,
                  TryData(credentials): TryData<Credentials>,
                  MaybeHttpExtension(client_ip): MaybeHttpExtension<ClientIp>| {
                let result = authenticate(&users, &throttle, &socket, credentials, client_ip);
                async move { result }
            },
        ),
    );

    let mut client_ip = ClientIpLayer::new();
    for cidr in &args.trusted_proxies {
        client_ip = client_ip.trusted_proxy_str(cidr)?;
    }
    // Long-polling is plain HTTP: check the origin of every request, not only upgrades.
    let origins = OriginGuardLayer::new()
        .allow_origins(own_origins(addr))?
        .allow_origins(&args.allow_origins)?
        .allow_hosts(own_hosts(addr))?
        .allow_hosts(&args.allowed_hosts)?
        .check_all_requests(true);
    let rate = RateLimitLayer::new()
        .per_second(args.connect_rate)
        .burst(args.connect_burst);
    rate.spawn_pruner(Duration::from_secs(60));
    let quota = ConnectionQuotaLayer::new().per_ip(args.max_conns_per_ip);

    // socketioxide answers with its own body type: make it an axum response.
    let socket_io = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .service(socket_io);
    // The rate limit and the quota count sessions, not the many requests of one session. The
    // quota permit travels in the request extensions, which the Engine.IO session keeps until
    // it ends, so the slot is held as long as the session lives.
    let new_sessions = ServiceBuilder::new()
        .layer(rate)
        .layer(quota)
        .service(socket_io.clone());
    let socket_io = tower::service_fn(move |req: Request<Body>| {
        let new_sessions = new_sessions.clone();
        let existing = socket_io.clone();
        async move {
            if opens_session(&req) {
                new_sessions.oneshot(req).await
            } else {
                existing.oneshot(req).await
            }
        }
    });
    // request → origin → client IP → (new sessions: rate → quota) → socketioxide.
    let socket_io = ServiceBuilder::new()
        .layer(origins)
        .layer(client_ip)
        .service(socket_io);

    // The page and its files: answered within the timeout, with security headers. Not the
    // Engine.IO endpoint: a long-poll waits up to a ping interval by design, and its upgraded
    // WebSocket is not an HTTP request at all.
    let page = Router::new()
        .route("/", get(|| async { Html(include_str!("index.html")) }))
        .route(
            "/script.js",
            get(|| async { javascript(include_str!("script.js")) }),
        )
        .route(
            "/socket.io.min.js",
            get(|| async { javascript(include_str!("socket.io.min.js")) }),
        )
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    include_str!("style.css"),
                )
            }),
        )
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            PAGE_TIMEOUT,
        ))
        .route_layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        ))
        .route_layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ));

    Ok(Router::new()
        .merge(page)
        .route_service("/socket.io/", socket_io)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // The request trace (debug level, with headers) sees credentials redacted.
        .layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)),
        )
        .layer(SetSensitiveHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::SET_COOKIE,
        ])))
}

fn javascript(source: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
        .into_response()
}

/// The connect check: the `auth` payload must name a user and their password. Runs before
/// the socket joins the namespace; an error becomes the client's `connect_error`.
fn authenticate(
    users: &Users,
    throttle: &FailureThrottle,
    socket: &SocketRef,
    credentials: Result<Credentials, ParserError>,
    client_ip: Option<ClientIp>,
) -> Result<(), ConnectRefused> {
    // The client-IP layer runs before socketioxide; without it, fall back to a shared key.
    let ip = client_ip.map_or(IpAddr::from([0, 0, 0, 0]), |ClientIp(ip)| ip);
    // Refused while locked out (the throttle emits `wsguard.rate_limit.auth_throttled`).
    let attempt = throttle
        .begin(ip)
        .map_err(|error| ConnectRefused::TooManyFailures {
            retry_after: error.retry_after().unwrap_or(Duration::from_secs(1)),
        })?;
    let Ok(credentials) = credentials else {
        attempt.failed();
        tracing::warn!(name: "heroes.connect.refused", cause = "missing_credentials", client_ip = %ip, "connect refused");
        return Err(ConnectRefused::MissingCredentials);
    };
    if !users.check(&credentials.username, &credentials.password) {
        attempt.failed();
        tracing::warn!(name: "heroes.connect.refused", cause = "invalid_credentials", client_ip = %ip, "connect refused");
        return Err(ConnectRefused::InvalidCredentials);
    }
    attempt.succeeded();
    socket
        .extensions
        .insert(User(Arc::from(credentials.username)));
    // Register the event handlers here, not in the connect handler: socketioxide sends the
    // CONNECT acknowledgement and only then spawns the connect handler, so a client that emits
    // as soon as it is connected would race a handler registered there and lose the message.
    // The middleware runs before the acknowledgement.
    socket.on("get_name", get_name);
    socket.on_disconnect(async |socket: SocketRef, reason: DisconnectReason| {
        let user = user_of(&socket);
        tracing::info!(name: "heroes.disconnect", sid = %socket.id, %user, ?reason, "disconnected");
    });
    Ok(())
}

async fn on_connect(
    socket: SocketRef,
    MaybeHttpExtension(client_ip): MaybeHttpExtension<ClientIp>,
) {
    let user = user_of(&socket);
    let client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    tracing::info!(name: "heroes.connect", sid = %socket.id, %user, %client_ip, "connected");
}

async fn get_name(socket: SocketRef, TryData(request): TryData<GetName>) {
    let reply = match request {
        Ok(GetName { hero }) => match hero_name(&hero) {
            Some(name) => Ok(json!({ "hero_name": name })),
            None => {
                // The hero id comes from the client: log its length, not its contents.
                tracing::info!(name: "heroes.unknown_hero", sid = %socket.id, len = hero.len(), "unknown hero");
                let shown: String = hero.chars().take(40).collect();
                Err(format!("unknown hero: {shown:?}"))
            }
        },
        Err(_) => Err(r#"get_name expects {"hero": "<hero id>"}"#.to_owned()),
    };
    let sent = match reply {
        Ok(name) => socket.emit("name", &name),
        Err(error) => socket.emit("error", &json!({ "error": error })),
    };
    if let Err(e) = sent {
        tracing::debug!(sid = %socket.id, "reply not sent: {e}");
    }
}

fn user_of(socket: &SocketRef) -> Arc<str> {
    socket
        .extensions
        .get::<User>()
        .map(|User(name)| name)
        .unwrap_or_else(|| Arc::from("?"))
}
