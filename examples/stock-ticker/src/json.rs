//! The REST API's JSON: request bodies through axum's `Json` extractor, and one error shape,
//! `{"error": "..."}`, for the handlers' refusals, `Json`'s rejections and the refusals of the
//! wsguard layers in front of the routes.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRequest, OptionalFromRequest, Request},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use wsguard::{auth::AuthError, revoke::RevokeError};

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

/// Middleware for the routes behind the auth and revocation layers: their refusals (found by
/// the typed error in the response extensions) get the API's JSON body; the status, the
/// `WWW-Authenticate` and `Retry-After` headers and the extensions (the metrics count the
/// error) stay.
pub(crate) async fn layer_refusals(response: Response) -> Response {
    let Some(error) = refusal_text(&response) else {
        return response;
    };
    let (parts, _) = response.into_parts();
    let mut json = json_error(parts.status, error);
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    *json.extensions_mut() = parts.extensions;
    json
}

fn refusal_text(response: &Response) -> Option<String> {
    let extensions = response.extensions();
    if let Some(error) = extensions.get::<AuthError>() {
        return Some(match error {
            AuthError::Missing => "missing bearer token".to_owned(),
            error => format!("invalid token: {error}"),
        });
    }
    if let Some(error) = extensions.get::<RevokeError>() {
        return Some(match error {
            RevokeError::Revoked => "token revoked".to_owned(),
            _ => "Redis is unavailable".to_owned(),
        });
    }
    // Fleet mode under `--redis-failure refuse`: the revocation check could not ask Redis.
    #[cfg(feature = "redis")]
    if extensions.get::<wsguard::fleet::FleetError>().is_some() {
        return Some("Redis is unavailable".to_owned());
    }
    None
}
