use std::sync::Arc;

use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use super::{AuthError, SourceKind, layer::Config};

pub(super) type OnRejection = Arc<dyn Fn(&AuthError) -> Response + Send + Sync>;

/// The default rejection: status, `WWW-Authenticate` (RFC 6750) or `Retry-After`, and a
/// short body.
fn default_response(err: &AuthError) -> Response {
    let (status, challenge, body) = match err {
        AuthError::Missing => (
            StatusCode::UNAUTHORIZED,
            Some("Bearer"),
            "authentication required\n",
        ),
        AuthError::Malformed => (
            StatusCode::BAD_REQUEST,
            Some(
                r#"Bearer error="invalid_request", error_description="the credential is malformed""#,
            ),
            "malformed credential\n",
        ),
        AuthError::Expired => (
            StatusCode::UNAUTHORIZED,
            Some(r#"Bearer error="invalid_token", error_description="the credential has expired""#),
            "expired credential\n",
        ),
        AuthError::Invalid => (
            StatusCode::UNAUTHORIZED,
            Some(
                r#"Bearer error="invalid_token", error_description="the credential is not valid""#,
            ),
            "invalid credential\n",
        ),
        AuthError::TooManyTickets { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "too many one-time tickets in use for this account; retry later\n",
        ),
    };
    let mut res = crate::core::plain_text(status, body);
    if let Some(challenge) = challenge {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let AuthError::TooManyTickets { retry_after } = err {
        // Whole seconds, rounded up, at least 1.
        let secs = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
            .max(1);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// Logs the rejection and builds the response, with the error in its extensions.
pub(super) fn reject(
    config: &Config,
    err: AuthError,
    source: Option<SourceKind>,
    extensions: &http::Extensions,
) -> Response {
    let client_ip = crate::core::client_ip(extensions);
    tracing::info!(
        name: "wsguard.auth.rejected",
        cause = err.as_str(),
        source = source.map_or("none", |s| s.as_str()),
        client_ip = client_ip.map(tracing::field::display),
        "handshake authentication failed"
    );
    crate::core::reject_with(err, config.on_rejection.as_deref(), default_response)
}
