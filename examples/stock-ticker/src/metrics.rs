//! Prometheus metrics through the `metrics` facade: wsguard's own (`wsguard_*`, feature
//! `metrics`) and the ticker's (`ticker_*`: open connections, sockets opened by HTTP version,
//! refusals by cause, pushes, client messages, closes, slow-consumer actions), rendered by
//! `metrics-exporter-prometheus` on `GET /metrics`.
//!
//! `/metrics` is not served to the world: it is on the listener of `--metrics-addr` (apart
//! from the public one), or on the public listener behind the bearer token of
//! `--metrics-token-file` (both: the separate listener, and the token too), or nowhere.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, Version, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use subtle::ConstantTimeEq;

pub(crate) struct Metrics {
    handle: PrometheusHandle,
    /// The bearer token `/metrics` asks for, if any.
    token: Option<Arc<[u8]>>,
}

impl Metrics {
    /// Installs the process-wide Prometheus recorder (once, at start).
    pub(crate) fn install(token: Option<Vec<u8>>) -> Result<Self, Box<dyn std::error::Error>> {
        let handle = PrometheusBuilder::new().install_recorder()?;
        describe_gauge!("ticker_connections_open", "WebSocket connections open now.");
        describe_counter!(
            "ticker_connections_total",
            "WebSocket connections accepted."
        );
        describe_counter!(
            "ticker_sockets_opened_total",
            "WebSocket sockets opened, by the HTTP version of the handshake."
        );
        describe_counter!(
            "ticker_messages_pushed_total",
            "Price messages handed to sockets."
        );
        describe_counter!(
            "ticker_client_messages_total",
            "Messages received from clients."
        );
        describe_counter!(
            "ticker_rejections_total",
            "Requests refused by a wsguard layer or a route's limit, by cause."
        );
        describe_counter!(
            "ticker_socket_closes_total",
            "Sockets closed by the server, by cause."
        );
        describe_counter!(
            "ticker_slow_consumer_actions_total",
            "Slow-consumer policy actions."
        );
        describe_gauge!(
            "ticker_tasks_alive",
            "Tokio tasks alive in the runtime, as of this scrape."
        );
        // Present from the start, at zero.
        gauge!("ticker_connections_open").set(0.0);
        counter!("ticker_connections_total").absolute(0);
        counter!("ticker_messages_pushed_total").absolute(0);
        counter!("ticker_client_messages_total").absolute(0);
        Ok(Self {
            handle,
            token: token.map(Arc::from),
        })
    }

    /// A socket was opened by a handshake over `version` (`HTTP/1.1` upgrade or `HTTP/2.0`
    /// extended CONNECT): a handful of label values.
    pub(crate) fn opened(&self, version: Version) {
        let version = match version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        counter!("ticker_sockets_opened_total", "version" => version).increment(1);
        counter!("ticker_connections_total").increment(1);
        gauge!("ticker_connections_open").increment(1.0);
    }

    /// A session ended (however).
    pub(crate) fn ended(&self) {
        gauge!("ticker_connections_open").decrement(1.0);
    }

    pub(crate) fn pushed(&self) {
        counter!("ticker_messages_pushed_total").increment(1);
    }

    pub(crate) fn client_message(&self) {
        counter!("ticker_client_messages_total").increment(1);
    }

    pub(crate) fn rejected(&self, cause: &'static str) {
        counter!("ticker_rejections_total", "cause" => cause).increment(1);
    }

    pub(crate) fn closed(&self, cause: &'static str) {
        counter!("ticker_socket_closes_total", "cause" => cause).increment(1);
    }

    pub(crate) fn slow_consumer(&self, action: &'static str, count: u64) {
        counter!("ticker_slow_consumer_actions_total", "action" => action).increment(count);
    }

    /// Whether `headers` carry the bearer token (constant-time), or no token is asked for.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| bool::from(given.ct_eq(token)))
    }
}

/// `GET /metrics`: the Prometheus text format, `401` without the token it asks for.
pub(crate) async fn render(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    if !metrics.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the metrics token is required\n",
        )
            .into_response();
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    gauge!("ticker_tasks_alive").set(tasks as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.handle.render(),
    )
        .into_response()
}

/// Outermost middleware: counts every refusal by the typed error the wsguard layers put in the
/// response extensions (falling back to the status code).
pub(crate) async fn count_rejections(
    metrics: State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    if let Some(cause) = rejection_cause(&response) {
        metrics.rejected(cause);
    }
    response
}

fn rejection_cause(response: &Response) -> Option<&'static str> {
    let ext = response.extensions();
    if let Some(e) = ext.get::<wsguard::origin::OriginError>() {
        use wsguard::origin::OriginError;
        return Some(match e {
            OriginError::Missing => "origin_missing",
            OriginError::Multiple => "origin_multiple",
            OriginError::Null => "origin_null",
            OriginError::Malformed => "origin_malformed",
            OriginError::NotAllowed => "origin_not_allowed",
            OriginError::HostNotAllowed => "origin_host_not_allowed",
            OriginError::InsecureOrigin => "origin_insecure_origin",
            _ => "origin_other",
        });
    }
    if ext.get::<wsguard::auth::AuthError>().is_some() {
        return Some("auth");
    }
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS => Some("rate_limited"),
        StatusCode::SERVICE_UNAVAILABLE => Some("capacity"),
        StatusCode::PAYLOAD_TOO_LARGE => Some("body_too_large"),
        _ => None,
    }
}
