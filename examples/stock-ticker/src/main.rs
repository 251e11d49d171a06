//! The stock ticker: live prices pushed from an embedded SQLite database to a browser page over
//! a WebSocket guarded by every wsguard layer.
//!
//! Run: `cargo run --release -p stock-ticker`, then open <http://127.0.0.1:8000> and
//! sign in (`demo` / `demo` on a new database). `--tls` serves https/wss with a self-signed
//! certificate, over HTTP/2 (the page's socket is then an extended CONNECT stream, RFC 8441)
//! or HTTP/1.1; `--help` lists every flag with its default.
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
//! SIGTERM or Ctrl-C stops it gracefully: it stops accepting, sends every socket `1001 Going
//! Away` with a reconnect hint (`reconnect_after_ms=`, with jitter), waits up to
//! `--drain-timeout-ms` for them to close, cuts off the rest, gives the quota leases back to
//! Redis in fleet mode, prints `drained N sockets: C closed, F forced` and exits 0.
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

mod cli;
mod db;
mod fleet;
mod hub;
mod json;
mod market;
mod metrics;
mod rest;
mod routes;
mod server;
mod session;

use std::{sync::Arc, time::Duration};

use clap::Parser;
use wsguard::{
    auth::{TicketIssuer, TicketVerifier},
    revoke::Revocations,
    socket::{Drain, DrainOptions},
};

use crate::{db::Db, hub::Hub, metrics::Metrics};

use crate::{
    cli::{Args, ticket_key},
    routes::router,
};

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
    let app = App {
        db,
        hub,
        metrics: Arc::new(Metrics::default()),
        issuer: TicketIssuer::new(key.clone()).ttl(Duration::from_secs(args.token_ttl)),
        verifier: TicketVerifier::new(key),
        token_ttl: args.token_ttl,
        revocations,
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
    let drain = Drain::new();
    let router = router(&args, addr, tls.is_some(), app, &drain)?;
    // Installed before the banner: a signal from then on drains instead of killing.
    let stop = stop_signal()?;

    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("stock ticker listening on {scheme}://{addr}");
    let header_timeout = Duration::from_secs(args.header_timeout);
    server::serve(listener, router, tls, header_timeout, stop).await;

    let options = DrainOptions::new(Duration::from_millis(args.drain_timeout_ms)).reconnect_hint(
        Duration::from_millis(args.reconnect_after_ms),
        Duration::from_millis(args.reconnect_jitter_ms),
    );
    let report = drain.shutdown(options).await;
    println!(
        "drained {} sockets: {} closed, {} forced",
        report.closed + report.forced,
        report.closed,
        report.forced
    );
    Ok(())
}

/// Resolves on SIGTERM (what service managers and container runtimes send) or Ctrl-C.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("Ctrl-C: shutting down"),
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: shutting down");
        }
    })
}
