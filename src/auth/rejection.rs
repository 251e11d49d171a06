use axum::response::Response;

use super::{AuthError, SourceKind, layer::Config};

/// Logs the rejection and builds the response (the hook's, or the default of
/// [`Rejection::Auth`](crate::Rejection::Auth)), with the error in its extensions.
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
    crate::rejection::reject(config.on_rejection.as_ref(), err)
}
