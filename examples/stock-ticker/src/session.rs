//! The socket session: `/ws` upgrades into a guarded socket that gets a snapshot, then every
//! price change of its subscribed symbols; it may subscribe and unsubscribe.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use axum::{
    extract::{State, ws::Message},
    http::Version,
    response::Response,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use wsguard::socket::{CloseCause, GuardedSocket, GuardedUpgrade};

use crate::{App, db, metrics::Metrics};

/// `/ws`: an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT (one stream of a connection that
/// may carry many); the guard has checked either the same way.
pub(crate) async fn ws(
    State(app): State<App>,
    version: Version,
    upgrade: GuardedUpgrade,
) -> Response {
    upgrade
        .protocols(["ticker.v1"])
        .on_upgrade(move |socket| session(app, version, socket))
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

pub(crate) async fn session(app: App, version: Version, mut socket: GuardedSocket) {
    tracing::info!(
        http_version = ?version,
        client_ip = socket.client_ip().map(|ip| ip.0.to_string()),
        "socket opened"
    );
    app.metrics.opened(version);
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
