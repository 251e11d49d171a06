//! Prometheus metrics: open connections, sockets opened by HTTP version, rejections by cause,
//! pushes, slow-consumer actions.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
};

use axum::{extract::Request, middleware::Next, response::Response};
use http::{StatusCode, Version};

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) connections_open: AtomicI64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_pushed: AtomicU64,
    pub(crate) client_messages: AtomicU64,
    /// Sockets opened, by the HTTP version of their handshake.
    opened: Mutex<BTreeMap<String, u64>>,
    rejections: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    slow_consumer: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str, by: u64) {
    if let Ok(mut map) = map.lock() {
        *map.entry(key.to_owned()).or_default() += by;
    }
}

impl Metrics {
    /// A socket was opened by a handshake over `version` (`HTTP/1.1` upgrade or `HTTP/2.0`
    /// extended CONNECT): a handful of label values.
    pub(crate) fn opened(&self, version: Version) {
        bump(&self.opened, &format!("{version:?}"), 1);
    }

    pub(crate) fn rejected(&self, cause: &str) {
        bump(&self.rejections, cause, 1);
    }

    pub(crate) fn closed(&self, cause: &str) {
        bump(&self.closes, cause, 1);
    }

    pub(crate) fn slow_consumer(&self, action: &str, count: u64) {
        bump(&self.slow_consumer, action, count);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        map: &Mutex<BTreeMap<String, u64>>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(map) = map.lock() {
                for (key, value) in map.iter() {
                    let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
                }
            }
        };
        let _ = writeln!(
            out,
            "# HELP ticker_connections_open WebSocket connections open now.\n\
             # TYPE ticker_connections_open gauge\nticker_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        counter(
            &mut out,
            "ticker_connections_total",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        labelled(
            &mut out,
            "ticker_sockets_opened_total",
            "WebSocket sockets opened, by the HTTP version of the handshake.",
            "version",
            &self.opened,
        );
        counter(
            &mut out,
            "ticker_messages_pushed_total",
            "Price messages handed to sockets.",
            self.messages_pushed.load(Relaxed),
        );
        counter(
            &mut out,
            "ticker_client_messages_total",
            "Messages received from clients.",
            self.client_messages.load(Relaxed),
        );
        labelled(
            &mut out,
            "ticker_rejections_total",
            "Requests refused by a wsguard layer, by cause.",
            "cause",
            &self.rejections,
        );
        labelled(
            &mut out,
            "ticker_socket_closes_total",
            "Sockets closed by the server, by cause.",
            "cause",
            &self.closes,
        );
        labelled(
            &mut out,
            "ticker_slow_consumer_actions_total",
            "Slow-consumer policy actions.",
            "action",
            &self.slow_consumer,
        );
        out
    }
}

/// Outermost middleware: counts every refusal by the typed error the wsguard layers put in the
/// response extensions (falling back to the status code).
pub(crate) async fn count_rejections(
    metrics: axum::extract::State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    if let Some(cause) = rejection_cause(&response) {
        metrics.rejected(&cause);
    }
    response
}

fn rejection_cause(response: &Response) -> Option<String> {
    let ext = response.extensions();
    if let Some(e) = ext.get::<wsguard::origin::OriginError>() {
        return Some(format!("origin_{}", e.as_str()));
    }
    if ext.get::<wsguard::auth::AuthError>().is_some() {
        return Some("auth".to_owned());
    }
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS => Some("rate_limited".to_owned()),
        StatusCode::SERVICE_UNAVAILABLE => Some("capacity".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => Some("body_too_large".to_owned()),
        _ => None,
    }
}
