//! The command line: every flag with its default, and the login-ticket secret it names.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    path::PathBuf,
};

use clap::Parser;
use wsguard::auth::TicketKey;

use crate::fleet;

#[derive(Debug, Parser)]
#[command(about = "Live stock prices over a wsguard-protected WebSocket")]
pub(crate) struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub(crate) addr: SocketAddr,
    /// Serve https and wss (a self-signed certificate unless --cert/--key are given)
    /// [default: off: http and ws].
    #[arg(long)]
    pub(crate) tls: bool,
    /// PEM certificate chain; implies --tls [default: a self-signed certificate generated at
    /// start].
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key for --cert [default: generated with the self-signed certificate].
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// SQLite database file, created and seeded on first run.
    #[arg(long, default_value = "stock_ticker.db")]
    pub(crate) db: PathBuf,
    /// Simulated price changes per second across all symbols (0 turns the simulator off).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) tick_hz: f64,
    /// Add or update a user, NAME:PASSWORD (repeatable); it is a publisher only if
    /// --publisher names it [default: none; `demo`/`demo`, not a publisher, is created when
    /// the database has no user].
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub(crate) users: Vec<String>,
    /// Give a user the publisher role, stored in the database: only publishers may `POST
    /// /prices` (repeatable; the user must exist or be added with --user) [default: none:
    /// roles stay as stored].
    #[arg(long = "publisher", value_name = "NAME")]
    pub(crate) publishers: Vec<String>,
    /// Price changes a publisher may post per minute (`POST /prices`, per user and instance;
    /// over it: 429 with Retry-After).
    #[arg(long, default_value_t = NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN))]
    pub(crate) publish_rate: NonZeroU32,
    /// Burst of price changes a publisher may post at once.
    #[arg(long, default_value_t = NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN))]
    pub(crate) publish_burst: NonZeroU32,
    /// Another origin allowed to open sockets (repeatable) [default: only the server's own
    /// origins].
    #[arg(long = "allow-origin", value_name = "URL")]
    pub(crate) allow_origins: Vec<String>,
    /// Another name (or address) this server answers to, HOST[:PORT] or .DOMAIN for its
    /// subdomains (repeatable): a socket handshake whose Host is none of them gets 403, the
    /// defence against DNS rebinding [default: the listen address, 127.0.0.1 and localhost,
    /// with the listen port].
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub(crate) allowed_hosts: Vec<String>,
    /// Password checks (argon2, ~19 MiB each) running at once across all clients; a login
    /// past this gets 503 with Retry-After.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrent_logins: u32,
    /// Largest message a client may send, in bytes (larger: close 1009).
    #[arg(long, default_value_t = NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN))]
    pub(crate) max_message_bytes: NonZeroUsize,
    /// Messages per second a socket may send.
    #[arg(long, default_value_t = NonZeroU64::new(10).unwrap_or(NonZeroU64::MIN))]
    pub(crate) msg_rate: NonZeroU64,
    /// Burst of messages a socket may send at once.
    #[arg(long, default_value_t = NonZeroU64::new(20).unwrap_or(NonZeroU64::MIN))]
    pub(crate) msg_burst: NonZeroU64,
    /// WebSocket handshakes per second per client IP.
    #[arg(long, default_value_t = NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN))]
    pub(crate) connect_rate: NonZeroU32,
    /// Burst of handshakes per client IP.
    #[arg(long, default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))]
    pub(crate) connect_burst: NonZeroU32,
    /// Concurrent sockets per client IP.
    #[arg(long, default_value_t = NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN))]
    pub(crate) max_conns_per_ip: NonZeroUsize,
    /// Concurrent sockets per user.
    #[arg(long, default_value_t = NonZeroUsize::new(10).unwrap_or(NonZeroUsize::MIN))]
    pub(crate) max_conns_per_user: NonZeroUsize,
    /// Close a socket that sent nothing for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) idle_timeout: u64,
    /// Ping every this many seconds; close if no pong within as long again.
    #[arg(long, default_value_t = 20)]
    pub(crate) heartbeat: u64,
    /// A proxy (CIDR) whose X-Forwarded-For is trusted (repeatable) [default: none: the peer
    /// address is the client].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub(crate) trusted_proxies: Vec<String>,
    /// Lifetime of a login token, in seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) token_ttl: u64,
    /// On SIGTERM or Ctrl-C: how long to wait, in milliseconds, for the sockets to close
    /// after they were sent 1001 Going Away; those still open then are cut off. New
    /// connections are refused from the signal on, and the process exits 0 once drained.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) drain_timeout_ms: u64,
    /// The reconnect hint in the 1001 close reason at shutdown
    /// (`reconnect_after_ms=<N>`): at least this many milliseconds...
    #[arg(long, default_value_t = 1_000)]
    pub(crate) reconnect_after_ms: u64,
    /// ...plus a random part of this many, drawn for each socket, so clients do not all
    /// come back at once.
    #[arg(long, default_value_t = 4_000)]
    pub(crate) reconnect_jitter_ms: u64,
    /// Seconds a client may take to complete TLS and send its request headers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_timeout: u64,
    /// Milliseconds an HTTP request (login, price, revoke, the page, health, metrics) may
    /// take before it is answered `408 Request Timeout`; the socket route and its open
    /// sockets are not subject to it.
    #[arg(long, default_value_t = NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN))]
    pub(crate) http_timeout_ms: NonZeroU64,
    /// A login token opens at most one socket (replayed tokens get 401); `POST /prices`
    /// still accepts it until it expires [default: off: a token opens sockets until it expires].
    #[arg(long)]
    pub(crate) one_time_tokens: bool,
    /// Fleet mode: share limits, quotas, revocation and prices with other instances through
    /// this Redis, redis://host:port (needs the `redis` feature) [default: off: this
    /// instance alone].
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Prefix of the fleet's Redis keys; instances of one fleet share it.
    #[arg(long, default_value = "stock-ticker", requires = "redis")]
    pub(crate) redis_prefix: String,
    /// Longest wait for Redis in a handshake, in milliseconds.
    #[arg(long, default_value_t = 250, requires = "redis")]
    pub(crate) redis_timeout_ms: u64,
    /// While Redis is unreachable: fall back to per-instance limits, or refuse with 503.
    #[arg(long, value_enum, default_value = "fallback", requires = "redis")]
    pub(crate) redis_failure: fleet::OnFailure,
    /// Lifetime of a socket's quota lease without renewal, in milliseconds (the leases of a
    /// crashed instance are free after this long).
    #[arg(long, default_value_t = 30_000, requires = "redis")]
    pub(crate) lease_ttl_ms: u64,
    /// File holding the login-ticket signing secret (at least 32 bytes; a trailing newline is
    /// ignored), or set TICKER_TICKET_SECRET instead. Required with --redis: every instance
    /// of a fleet needs the same secret. Whoever holds it can sign in as anyone: keep the
    /// file readable by the server only; changing it signs everybody out [default: a random
    /// secret per process: tickets do not survive a restart].
    #[arg(long, value_name = "PATH")]
    pub(crate) ticket_secret_file: Option<PathBuf>,
    /// Serve the Prometheus metrics, `GET /metrics`, on a listener of their own at this
    /// address (keep it on loopback or a private network; port 0 picks a free port), and
    /// not on the public one [default: off; without --metrics-token-file there is no
    /// /metrics at all].
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// File holding the bearer token `GET /metrics` asks for (`Authorization: Bearer
    /// <token>`, compared in constant time; a trailing newline is ignored). Without
    /// --metrics-addr, /metrics is then served on the public listener [default: off].
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_token_file: Option<PathBuf>,
}

/// The bearer token of `--metrics-token-file`, if given: at least 16 bytes.
pub(crate) fn metrics_token(args: &Args) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
    let Some(path) = &args.metrics_token_file else {
        return Ok(None);
    };
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("--metrics-token-file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < 16 {
        return Err(format!(
            "--metrics-token-file {}: the token must be at least 16 bytes",
            path.display()
        )
        .into());
    }
    Ok(Some(bytes))
}

/// The environment variable that may hold the ticket secret instead of
/// `--ticket-secret-file`.
pub(crate) const TICKET_SECRET_ENV: &str = "TICKER_TICKET_SECRET";

/// The login-ticket key: from the operator's secret (`--ticket-secret-file` or
/// `TICKER_TICKET_SECRET`), required in fleet mode; otherwise random for this process.
pub(crate) fn ticket_key(args: &Args) -> Result<TicketKey, Box<dyn std::error::Error>> {
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
