//! The REST API's JSON: request bodies through axum's `Json` extractor, and one error shape,
//! `{"error": "..."}`, for the handlers' refusals, `Json`'s rejections and (through their
//! `on_rejection`) the refusals of the wsguard layers in front of the routes.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRequest, OptionalFromRequest, Request},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use wsguard::{Rejection, auth::AuthError, revoke::RevokeError};

/// A refusal in the API's shape: `status` and `{"error": error}`.
pub(crate) fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error.into() }))).into_response()
}

/// A JSON request body: axum's [`Json`], whose rejections answer in the API's shape with
/// `Json`'s status and text: `415` without `Content-Type: application/json`, `400` for
/// malformed JSON, `422` for JSON of the wrong shape (a missing field, a string for a
/// number), `413` past the body limit.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match <Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_error(rejection.status(), rejection.body_text())),
        }
    }
}

/// `Option<ApiJson<T>>`: `None` for an empty body (whatever the `Content-Type`), so a body of
/// defaults may be left out; any other body as [`ApiJson`].
impl<S, T> OptionalFromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Response> {
        let headers = req.headers().clone();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| json_error(rejection.status(), rejection.body_text()))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let mut req = Request::new(Body::from(bytes));
        *req.headers_mut() = headers;
        <Self as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// The `on_rejection` of the auth and revocation layers in front of the REST routes: the
/// layer's own refusal (status, `WWW-Authenticate`, `Retry-After`) with the API's JSON body.
/// wsguard puts the typed cause in the extensions whatever the hook returns (the metrics
/// count it).
pub(crate) fn refusal(rejection: &Rejection) -> Response {
    let text = match rejection {
        Rejection::Auth(AuthError::Missing) => "missing bearer token".to_owned(),
        Rejection::Auth(error) => format!("invalid token: {error}"),
        Rejection::Revoke(RevokeError::Revoked) => "token revoked".to_owned(),
        // The revocation check could not ask Redis (fleet mode, `--redis-failure refuse`).
        _ => "Redis is unavailable".to_owned(),
    };
    let default = rejection.clone().into_response();
    let mut json = json_error(default.status(), text);
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = default.headers().get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}
