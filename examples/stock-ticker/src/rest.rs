//! The REST handlers: `POST /login`, `POST /prices`, and `POST /revoke`.
//!
//! `/prices` and `/revoke` act for a caller: `routes` puts them behind wsguard's
//! `HandshakeAuthLayer` (the bearer token, verified) and `RevocationLayer` (not revoked, in
//! fleet mode on any instance), and the handlers read the caller with the `Identity`
//! extractor. Bodies come through axum's `Json` extractor ([`ApiJson`]).

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use wsguard::auth::{Identity, Ticket, TokenFingerprint};

use crate::{
    App, db,
    json::{ApiJson, json_error},
};

#[derive(Deserialize)]
pub(crate) struct Login {
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
    pub(crate) fn new(limit: u32) -> Self {
        let permits = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(permits)),
            limit,
        }
    }
}

pub(crate) async fn login(
    State(app): State<App>,
    Extension(slots): Extension<LoginSlots>,
    ApiJson(login): ApiJson<Login>,
) -> Response {
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
pub(crate) struct NewPrice {
    symbol: String,
    price: f64,
}

/// `POST /prices`: a publisher changes a price (on every instance in fleet mode).
pub(crate) async fn post_price(
    State(app): State<App>,
    Identity(ticket): Identity<Ticket>,
    ApiJson(new): ApiJson<NewPrice>,
) -> Response {
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
pub(crate) struct Revoke {
    /// `"user"` (default): every token and socket of the caller, on every instance;
    /// `"token"`: only the presented token and its sockets.
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /revoke`: the caller, authenticated by its bearer token, revokes its identity (log
/// out everywhere: every token issued to it so far) or just that token (named by the
/// fingerprint the auth layer stored). Sockets close with 1008 (on every instance in fleet
/// mode); the revoked tokens are refused afterwards by the handshake, `POST /prices` and
/// `POST /revoke`. An empty body means the defaults.
pub(crate) async fn revoke(
    State(app): State<App>,
    Identity(ticket): Identity<Ticket>,
    Extension(token): Extension<TokenFingerprint>,
    request: Option<ApiJson<Revoke>>,
) -> Response {
    let request = request.map(|ApiJson(r)| r).unwrap_or_default();
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
        ("token", app.revocations.revoke_fingerprint(token).await)
    };
    match result {
        Ok(closed) => Json(json!({ "revoked": scope, "closed_sockets": closed })).into_response(),
        Err(e) => {
            tracing::error!("revocation not shared yet: {e}");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unavailable: revoked on this instance now, on the others once Redis is back",
            )
        }
    }
}
