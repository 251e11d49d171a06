//! The socket session: `/ws` upgrades into a guarded socket that gets a snapshot, then every
//! price change of its subscribed symbols; it may subscribe and unsubscribe.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use axum::{
    extract::{State, ws::Message},
    http::Version,
    response::Response,
};
use serde::Deserialize;
use serde_json::json;
use wsguard::socket::{CloseCause, GuardedSocket, GuardedUpgrade, Sender};

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

    // The snapshot and the subscription happen under the hub's lock: the socket then gets
    // every later change of its symbols, queued straight on it by the hub's fan-out (keyed by
    // symbol: a slow consumer keeps only the latest price per symbol). This task only reads
    // the client's messages.
    let sender = socket.sender();
    if !app.hub.subscribe(&sender, None, |snapshot| {
        sender.send(Message::text(snapshot_json(snapshot))).is_ok()
    }) {
        return;
    }

    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => {
                app.metrics.client_messages.fetch_add(1, Relaxed);
                if !handle_client_message(&app, &sender, &text) {
                    break;
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let error =
                    json!({ "type": "error", "error": "binary messages are not supported" });
                if sender.send(Message::text(error.to_string())).is_err() {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
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

/// Applies a subscribe/unsubscribe message and queues the reply, if any; returns whether the
/// socket still accepts messages. A subscribe is answered with a snapshot of the requested
/// symbols (which also confirms it); an unsubscribe has no reply.
fn handle_client_message(app: &App, sender: &Sender, text: &str) -> bool {
    let error = |e: String| {
        sender
            .send(Message::text(
                json!({ "type": "error", "error": e }).to_string(),
            ))
            .is_ok()
    };
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
            app.hub.unsubscribe(sender, &symbols);
            true
        }
        ClientMessage::Subscribe { symbols } => {
            app.hub.subscribe(sender, Some(&symbols), |prices| {
                sender.send(Message::text(snapshot_json(prices))).is_ok()
            })
        }
    }
}
