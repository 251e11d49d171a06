//! [`Rejection`]: why a layer refused a handshake, for every layer of the crate, and the one
//! rejection path that every layer answers through.

use std::{fmt, sync::Arc, time::Duration};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

#[cfg(feature = "redis")]
use crate::fleet::FleetError;
use crate::{
    auth::AuthError, client_ip::ClientIpError, origin::OriginError, rate_limit::RateLimitError,
    revoke::RevokeError, socket::DrainError,
};

/// The fixed `Retry-After` of a refusal for an unavailable store: one second.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// Why a wsguard layer refused a request: one variant per layer, each wrapping the typed
/// cause of that layer.
///
/// Every rejection response of the crate's layers carries both the `Rejection` and the typed cause
/// ([`OriginError`], [`AuthError`], ...) in its extensions, whatever built the response.
/// The `on_rejection` hook of every layer (and
/// [`WsGuard::on_rejection`](crate::WsGuard::on_rejection), which sets it on every part)
/// takes a `&Rejection`, so one function can answer for the whole stack:
///
/// ```
/// use axum::response::IntoResponse;
/// use http::StatusCode;
/// use wsguard::{Rejection, WsGuard, auth::StaticTokens};
///
/// let guard = WsGuard::new(StaticTokens::new().token("s3cret", "alice", ()))
///     .on_rejection(|rejection: &Rejection| match rejection {
///         // Hide the origin check from probes.
///         Rejection::Origin(_) => StatusCode::NOT_FOUND.into_response(),
///         // Every other cause: the default response.
///         other => other.clone().into_response(),
///     });
/// # let _ = guard;
/// ```
///
/// [`IntoResponse`] builds the default response that each layer sends when no hook is set:
///
/// | variant | status | headers |
/// |---|---|---|
/// | [`Origin`](Self::Origin) | `403` | |
/// | [`ClientIp`](Self::ClientIp) | `500` (no `ConnectInfo`) or `400` ([`ClientIpError::status`]) | |
/// | [`RateLimit`](Self::RateLimit) | `429`, `503` (global quota) or `500` ([`RateLimitError::status`]) | `Retry-After` when the wait is known |
/// | [`Auth`](Self::Auth) | `401`, `400` (malformed) or `429` (too many tickets) | `WWW-Authenticate` (see [`auth`](crate::auth#rejections)), `Retry-After` on `429` |
/// | [`Revoke`](Self::Revoke) | `401` (revoked) or `503` | `WWW-Authenticate: Bearer error="invalid_token"` on `401`, `Retry-After: 1` on `503` |
/// | [`Drain`](Self::Drain) | `503` | `Retry-After` ([`DrainOptions::retry_after`](crate::socket::DrainOptions::retry_after)) |
/// | `Fleet` (feature `redis`) | `503` | `Retry-After: 1` |
///
/// The body is a short `text/plain` reason (never the credential or a header's value); axum
/// bodies and `String` bodies carry it, other body types get their `Default` (see the layers'
/// `ResBody: Default` bound).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The origin guard refused the `Origin` or `Host`
    /// ([`OriginGuardLayer`](crate::origin::OriginGuardLayer)).
    Origin(OriginError),
    /// The client address could not be found
    /// ([`ClientIpLayer`](crate::client_ip::ClientIpLayer)).
    ClientIp(ClientIpError),
    /// A rate limit, the brute-force throttle or a socket quota
    /// ([`RateLimitLayer`](crate::rate_limit::RateLimitLayer),
    /// [`AuthThrottleLayer`](crate::rate_limit::AuthThrottleLayer),
    /// [`ConnectionQuotaLayer`](crate::rate_limit::ConnectionQuotaLayer)).
    RateLimit(RateLimitError),
    /// Handshake authentication failed
    /// ([`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer)).
    Auth(AuthError),
    /// The credential was revoked
    /// ([`RevocationLayer`](crate::revoke::RevocationLayer)).
    Revoke(RevokeError),
    /// The server is shutting down and refuses new sockets
    /// ([`DrainLayer`](crate::socket::DrainLayer)).
    Drain(DrainError),
    /// Redis could not be asked and the fleet's failure policy is `Refuse` (any fleet-backed
    /// layer). Feature `redis`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Fleet(FleetError),
}

impl Rejection {
    /// The status code of the default response.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::ClientIp(e) => e.status(),
            Self::RateLimit(e) => e.status(),
            Self::Auth(e) => match e {
                AuthError::Malformed => StatusCode::BAD_REQUEST,
                AuthError::TooManyTickets { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            },
            Self::Revoke(e) => e.status(),
            Self::Drain(_) => StatusCode::SERVICE_UNAVAILABLE,
            #[cfg(feature = "redis")]
            Self::Fleet(e) => e.status(),
        }
    }

    /// When the client may try again, if known: the wait that the default response states
    /// in `Retry-After` (rounded up to whole seconds, at least 1). An unavailable store
    /// ([`RevokeError::Unavailable`], the fleet's `503`) states one second.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Origin(_) | Self::ClientIp(_) => None,
            Self::RateLimit(e) => e.retry_after(),
            Self::Auth(AuthError::TooManyTickets { retry_after }) => Some(*retry_after),
            Self::Auth(_) => None,
            Self::Revoke(RevokeError::Revoked) => None,
            Self::Revoke(_) => Some(RETRY_UNAVAILABLE),
            Self::Drain(DrainError::Draining { retry_after }) => Some(*retry_after),
            #[cfg(feature = "redis")]
            Self::Fleet(_) => Some(RETRY_UNAVAILABLE),
        }
    }

    /// The `WWW-Authenticate` challenge of the default response (RFC 6750), if any.
    fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::Auth(e) => match e {
                AuthError::Missing => Some("Bearer"),
                AuthError::Malformed => Some(
                    r#"Bearer error="invalid_request", error_description="the credential is malformed""#,
                ),
                AuthError::Expired => Some(
                    r#"Bearer error="invalid_token", error_description="the credential has expired""#,
                ),
                AuthError::Invalid => Some(
                    r#"Bearer error="invalid_token", error_description="the credential is not valid""#,
                ),
                _ => None,
            },
            Self::Revoke(RevokeError::Revoked) => Some(r#"Bearer error="invalid_token""#),
            _ => None,
        }
    }

    /// The plain-text body of the default response.
    fn body(&self) -> String {
        match self {
            Self::Origin(e) => format!("forbidden: {e}\n"),
            Self::ClientIp(e) => format!("{e}\n"),
            Self::RateLimit(e) => format!("{e}\n"),
            Self::Auth(e) => match e {
                AuthError::Missing => "authentication required\n",
                AuthError::Malformed => "malformed credential\n",
                AuthError::Expired => "expired credential\n",
                AuthError::Invalid => "invalid credential\n",
                AuthError::TooManyTickets { .. } => {
                    "too many one-time tickets in use for this account; retry later\n"
                }
            }
            .to_owned(),
            Self::Revoke(RevokeError::Revoked) => "credential revoked\n".to_owned(),
            Self::Revoke(_) => "service unavailable: try again later\n".to_owned(),
            Self::Drain(_) => "service unavailable: the server is shutting down\n".to_owned(),
            #[cfg(feature = "redis")]
            Self::Fleet(_) => "service unavailable: try again later\n".to_owned(),
        }
    }

    /// Puts the typed cause and `self` into the extensions of `response`.
    fn attach_to(self, response: &mut Response) {
        let extensions = response.extensions_mut();
        match &self {
            Self::Origin(e) => {
                extensions.insert(*e);
            }
            Self::ClientIp(e) => {
                extensions.insert(e.clone());
            }
            Self::RateLimit(e) => {
                extensions.insert(e.clone());
            }
            Self::Auth(e) => {
                extensions.insert(e.clone());
            }
            Self::Revoke(e) => {
                extensions.insert(e.clone());
            }
            Self::Drain(e) => {
                extensions.insert(e.clone());
            }
            #[cfg(feature = "redis")]
            Self::Fleet(e) => {
                extensions.insert(e.clone());
            }
        }
        extensions.insert(self);
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1, saturating at `u64::MAX`.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.max(1)
}

impl IntoResponse for Rejection {
    /// The default response of the layer that refused: [`status`](Self::status), a short
    /// plain-text body, `WWW-Authenticate` on authentication failures, `Retry-After` when
    /// [`retry_after`](Self::retry_after) is known, and the `Rejection` and its typed cause
    /// in the extensions.
    fn into_response(self) -> Response {
        let mut response = crate::core::plain_text(self.status(), self.body());
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(wait) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
        }
        self.attach_to(&mut response);
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Origin(e) => write!(f, "origin: {e}"),
            Self::ClientIp(e) => write!(f, "client ip: {e}"),
            Self::RateLimit(e) => write!(f, "rate limit: {e}"),
            Self::Auth(e) => write!(f, "auth: {e}"),
            Self::Revoke(e) => write!(f, "revocation: {e}"),
            Self::Drain(e) => write!(f, "drain: {e}"),
            #[cfg(feature = "redis")]
            Self::Fleet(e) => write!(f, "fleet: {e}"),
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Origin(e) => Some(e),
            Self::ClientIp(e) => Some(e),
            Self::RateLimit(e) => Some(e),
            Self::Auth(e) => Some(e),
            Self::Revoke(e) => Some(e),
            Self::Drain(e) => Some(e),
            #[cfg(feature = "redis")]
            Self::Fleet(e) => Some(e),
        }
    }
}

macro_rules! rejection_from {
    ($($(#[$attr:meta])* $cause:ty => $variant:ident),* $(,)?) => {$(
        $(#[$attr])*
        impl From<$cause> for Rejection {
            fn from(e: $cause) -> Self {
                Self::$variant(e)
            }
        }
    )*};
}

rejection_from!(
    OriginError => Origin,
    ClientIpError => ClientIp,
    RateLimitError => RateLimit,
    AuthError => Auth,
    RevokeError => Revoke,
    DrainError => Drain,
    #[cfg(feature = "redis")]
    FleetError => Fleet,
);

/// A user's `on_rejection` hook, as every layer stores it.
#[derive(Clone)]
pub(crate) struct OnRejection(Arc<dyn Fn(&Rejection) -> Response + Send + Sync>);

impl OnRejection {
    pub(crate) fn new<F, R>(f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        Self(Arc::new(move |rejection| f(rejection).into_response()))
    }

    /// The hook's response, before [`reject`] completes it.
    pub(crate) fn call(&self, rejection: &Rejection) -> Response {
        (self.0)(rejection)
    }
}

impl fmt::Debug for OnRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<fn>")
    }
}

/// The response refusing a request for `cause`, the one rejection path of every layer: the
/// user's hook if there is one, else [`Rejection::into_response`]. Whatever the hook
/// returns, `Retry-After` is added when it lacks one and the cause knows the wait, and the
/// typed cause and the [`Rejection`] are put in the extensions. `WWW-Authenticate` is not
/// added: a hook may answer with another status, where a challenge has no place.
pub(crate) fn reject(hook: Option<&OnRejection>, cause: impl Into<Rejection>) -> Response {
    let rejection = cause.into();
    crate::metrics::handshake_refused(&rejection);
    let Some(hook) = hook else {
        return rejection.into_response();
    };
    let mut response = hook.call(&rejection);
    if let Some(wait) = rejection.retry_after()
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
    }
    rejection.attach_to(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        error::Error as _,
        future::Future,
        net::SocketAddr,
        num::NonZeroUsize,
        pin::Pin,
        sync::{Arc, Mutex, PoisonError},
        time::Duration,
    };

    use axum::{body::Body, extract::ConnectInfo};
    use http::{HeaderValue, Request, StatusCode, header};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::{
        auth::{HandshakeAuthLayer, Principal, StaticTokens, TokenFingerprint},
        client_ip::{ClientIp, ClientIpLayer},
        origin::OriginGuardLayer,
        rate_limit::{
            AuthThrottleLayer, ConnectionPermit, ConnectionQuotaLayer, FakeRelativeClock,
            RateLimitLayer,
        },
        revoke::{RevocationLayer, Revocations},
    };

    #[test]
    fn every_cause_has_its_default_response() {
        struct Case {
            name: &'static str,
            rejection: Rejection,
            status: StatusCode,
            body: &'static str,
            www_authenticate: Option<&'static str>,
            retry_after: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "origin",
                rejection: OriginError::NotAllowed.into(),
                status: StatusCode::FORBIDDEN,
                body: "forbidden: origin not allowed\n",
                www_authenticate: None,
                retry_after: None,
            },
            Case {
                name: "client ip: no ConnectInfo",
                rejection: ClientIpError::MissingConnectInfo.into(),
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: "wsguard: the peer address is missing; serve the app with \
                       into_make_service_with_connect_info::<SocketAddr>()\n",
                www_authenticate: None,
                retry_after: None,
            },
            Case {
                name: "client ip: unusable chain",
                rejection: ClientIpError::NoUsableAddress.into(),
                status: StatusCode::BAD_REQUEST,
                body: "no usable client address in the forwarding header (forwarded, \
                       x-forwarded-for or x-real-ip) of a trusted proxy\n",
                www_authenticate: None,
                retry_after: None,
            },
            Case {
                name: "rate: too many handshakes",
                rejection: RateLimitError::TooManyHandshakes {
                    limit: 10,
                    retry_after: Duration::from_millis(1500),
                }
                .into(),
                status: StatusCode::TOO_MANY_REQUESTS,
                body: "too many handshakes, retry later\n",
                www_authenticate: None,
                retry_after: Some("2"),
            },
            Case {
                name: "quota: global",
                rejection: RateLimitError::GlobalQuota {
                    limit: 1,
                    retry_after: Duration::from_secs(3),
                }
                .into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "server at socket capacity, retry later\n",
                www_authenticate: None,
                retry_after: Some("3"),
            },
            Case {
                name: "rate: no client ip",
                rejection: RateLimitError::MissingClientIp.into(),
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: "wsguard: no ClientIp in the request; add ClientIpLayer in front of the \
                       rate limit and quota layers\n",
                www_authenticate: None,
                retry_after: None,
            },
            Case {
                name: "auth: missing",
                rejection: AuthError::Missing.into(),
                status: StatusCode::UNAUTHORIZED,
                body: "authentication required\n",
                www_authenticate: Some("Bearer"),
                retry_after: None,
            },
            Case {
                name: "auth: malformed",
                rejection: AuthError::Malformed.into(),
                status: StatusCode::BAD_REQUEST,
                body: "malformed credential\n",
                www_authenticate: Some(
                    r#"Bearer error="invalid_request", error_description="the credential is malformed""#,
                ),
                retry_after: None,
            },
            Case {
                name: "auth: invalid",
                rejection: AuthError::Invalid.into(),
                status: StatusCode::UNAUTHORIZED,
                body: "invalid credential\n",
                www_authenticate: Some(
                    r#"Bearer error="invalid_token", error_description="the credential is not valid""#,
                ),
                retry_after: None,
            },
            Case {
                name: "auth: expired",
                rejection: AuthError::Expired.into(),
                status: StatusCode::UNAUTHORIZED,
                body: "expired credential\n",
                www_authenticate: Some(
                    r#"Bearer error="invalid_token", error_description="the credential has expired""#,
                ),
                retry_after: None,
            },
            Case {
                name: "auth: too many tickets",
                rejection: AuthError::TooManyTickets {
                    retry_after: Duration::from_millis(200),
                }
                .into(),
                status: StatusCode::TOO_MANY_REQUESTS,
                body: "too many one-time tickets in use for this account; retry later\n",
                www_authenticate: None,
                retry_after: Some("1"),
            },
            Case {
                name: "revoked",
                rejection: RevokeError::Revoked.into(),
                status: StatusCode::UNAUTHORIZED,
                body: "credential revoked\n",
                www_authenticate: Some(r#"Bearer error="invalid_token""#),
                retry_after: None,
            },
            Case {
                name: "revocation store unavailable",
                rejection: RevokeError::Unavailable("timed out".into()).into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "service unavailable: try again later\n",
                www_authenticate: None,
                retry_after: Some("1"),
            },
            Case {
                name: "draining",
                rejection: DrainError::Draining {
                    retry_after: Duration::from_millis(2500),
                }
                .into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "service unavailable: the server is shutting down\n",
                www_authenticate: None,
                retry_after: Some("3"),
            },
            #[cfg(feature = "redis")]
            Case {
                name: "fleet unavailable",
                rejection: FleetError::Unavailable("timed out".into()).into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "service unavailable: try again later\n",
                www_authenticate: None,
                retry_after: Some("1"),
            },
        ];
        for case in cases {
            assert_eq!(case.rejection.status(), case.status, "{}", case.name);
            assert_eq!(
                case.rejection.retry_after().is_some(),
                case.retry_after.is_some(),
                "{}",
                case.name
            );
            let response =
                crate::core::convert_body::<String>(case.rejection.clone().into_response());
            assert_eq!(response.status(), case.status, "{}", case.name);
            assert_eq!(response.body(), case.body, "{}", case.name);
            let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
            assert_eq!(
                header(header::CONTENT_TYPE),
                Some("text/plain; charset=utf-8"),
                "{}",
                case.name
            );
            assert_eq!(
                header(header::WWW_AUTHENTICATE),
                case.www_authenticate,
                "{}",
                case.name
            );
            assert_eq!(
                header(header::RETRY_AFTER),
                case.retry_after,
                "{}",
                case.name
            );
            assert_eq!(
                response.extensions().get::<Rejection>(),
                Some(&case.rejection),
                "{}",
                case.name
            );
            assert!(carries_cause(&response, &case.rejection), "{}", case.name);
            // Display names the layer and the cause; `source` is the cause.
            let text = case.rejection.to_string();
            let source = case.rejection.source().map(ToString::to_string);
            assert!(
                source.as_deref().is_some_and(|s| text.ends_with(s)),
                "{}: {text} / {source:?}",
                case.name
            );
        }
    }

    /// Whether the typed cause of `rejection` is in the extensions of `response`.
    fn carries_cause<B>(response: &http::Response<B>, rejection: &Rejection) -> bool {
        let ext = response.extensions();
        match rejection {
            Rejection::Origin(e) => ext.get::<OriginError>() == Some(e),
            Rejection::ClientIp(e) => ext.get::<ClientIpError>() == Some(e),
            Rejection::RateLimit(e) => ext.get::<RateLimitError>() == Some(e),
            Rejection::Auth(e) => ext.get::<AuthError>() == Some(e),
            Rejection::Revoke(e) => ext.get::<RevokeError>() == Some(e),
            Rejection::Drain(e) => ext.get::<DrainError>() == Some(e),
            #[cfg(feature = "redis")]
            Rejection::Fleet(e) => ext.get::<FleetError>() == Some(e),
        }
    }

    type Hook = fn(&Rejection) -> Response;

    /// A hook that answers `418` and nothing else.
    fn teapot(_: &Rejection) -> Response {
        (StatusCode::IM_A_TEAPOT, "hooked").into_response()
    }

    /// `layer` with `hook` as its rejection hook, if any.
    fn hooked<L>(layer: L, hook: Option<Hook>, set: fn(L, Hook) -> L) -> L {
        match hook {
            Some(hook) => set(layer, hook),
            None => layer,
        }
    }

    type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

    fn ok()
    -> impl tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        })
    }

    /// An inner service that answers as a failed authentication does, for the throttle.
    fn auth_fails()
    -> impl tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Rejection::from(AuthError::Invalid).into_response())
        })
    }

    fn from_peer(headers: &[(&str, &str)]) -> Request<Body> {
        let mut req = Request::get("/ws")
            .header("host", "api.example.com")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(Body::empty()).unwrap_or_default();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 50000))));
        req
    }

    fn with_ip() -> Request<Body> {
        let mut req = Request::get("/ws").body(Body::empty()).unwrap_or_default();
        req.extensions_mut()
            .insert(ClientIp(std::net::IpAddr::from([192, 0, 2, 1])));
        req
    }

    struct LayerCase {
        name: &'static str,
        /// Makes the layer (with the hook, if any) and sends it a request it refuses.
        run: fn(Option<Hook>) -> Answer,
        status: StatusCode,
        cause: fn(&Rejection) -> bool,
    }

    fn layer_cases() -> Vec<LayerCase> {
        vec![
            LayerCase {
                name: "origin",
                run: |hook| {
                    Box::pin(async move {
                        let layer = OriginGuardLayer::new()
                            .allow_origin("https://app.example.com")
                            .unwrap_or_default();
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let req = from_peer(&[("origin", "https://evil.example")]);
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::FORBIDDEN,
                cause: |r| matches!(r, Rejection::Origin(OriginError::NotAllowed)),
            },
            LayerCase {
                name: "client ip: no ConnectInfo",
                run: |hook| {
                    Box::pin(async move {
                        let layer = hooked(ClientIpLayer::new(), hook, |l, h| l.on_rejection(h));
                        let req = Request::get("/ws").body(Body::empty()).unwrap_or_default();
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::INTERNAL_SERVER_ERROR,
                cause: |r| matches!(r, Rejection::ClientIp(ClientIpError::MissingConnectInfo)),
            },
            LayerCase {
                name: "client ip: unusable chain",
                run: |hook| {
                    Box::pin(async move {
                        let layer = ClientIpLayer::new().trusted_proxy(ipnet::IpNet::from(
                            std::net::IpAddr::from([10, 0, 0, 1]),
                        ));
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let req = from_peer(&[("x-forwarded-for", "unknown")]);
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::BAD_REQUEST,
                cause: |r| matches!(r, Rejection::ClientIp(ClientIpError::NoUsableAddress)),
            },
            LayerCase {
                name: "rate: too many handshakes",
                run: |hook| {
                    Box::pin(async move {
                        let layer = RateLimitLayer::new().clock(FakeRelativeClock::default());
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let svc = layer.layer(ok());
                        // The default burst of 10, then one too many.
                        for _ in 0..10 {
                            let res = svc.clone().oneshot(with_ip()).await;
                            assert_eq!(res.map(|r| r.status()).ok(), Some(StatusCode::OK));
                        }
                        svc.oneshot(with_ip()).await.unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::TOO_MANY_REQUESTS,
                cause: |r| {
                    matches!(
                        r,
                        Rejection::RateLimit(RateLimitError::TooManyHandshakes { limit: 10, .. })
                    )
                },
            },
            LayerCase {
                name: "rate: no client ip",
                run: |hook| {
                    Box::pin(async move {
                        let layer = hooked(RateLimitLayer::new(), hook, |l, h| l.on_rejection(h));
                        let req = Request::get("/ws").body(Body::empty()).unwrap_or_default();
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::INTERNAL_SERVER_ERROR,
                cause: |r| matches!(r, Rejection::RateLimit(RateLimitError::MissingClientIp)),
            },
            LayerCase {
                name: "throttle: locked out",
                run: |hook| {
                    Box::pin(async move {
                        let layer = AuthThrottleLayer::new().clock(FakeRelativeClock::default());
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let svc = layer.layer(auth_fails());
                        // The default 5 failures, then the lock-out.
                        for _ in 0..5 {
                            let res = svc.clone().oneshot(with_ip()).await;
                            assert_eq!(
                                res.map(|r| r.status()).ok(),
                                Some(StatusCode::UNAUTHORIZED)
                            );
                        }
                        svc.oneshot(with_ip()).await.unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::TOO_MANY_REQUESTS,
                cause: |r| {
                    matches!(
                        r,
                        Rejection::RateLimit(RateLimitError::TooManyFailedAuth { limit: 5, .. })
                    )
                },
            },
            LayerCase {
                name: "quota: global",
                run: |hook| {
                    Box::pin(async move {
                        let layer = ConnectionQuotaLayer::new().global(NonZeroUsize::MIN);
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let kept = Arc::new(Mutex::new(Vec::new()));
                        let keep = Arc::clone(&kept);
                        let svc = layer.layer(service_fn(move |req: Request<Body>| {
                            let keep = Arc::clone(&keep);
                            async move {
                                if let Some(permit) = req.extensions().get::<ConnectionPermit>() {
                                    keep.lock()
                                        .unwrap_or_else(PoisonError::into_inner)
                                        .push(permit.clone());
                                }
                                Ok::<_, Infallible>(Response::new(Body::empty()))
                            }
                        }));
                        let first = svc.clone().oneshot(with_ip()).await;
                        assert_eq!(first.map(|r| r.status()).ok(), Some(StatusCode::OK));
                        svc.oneshot(with_ip()).await.unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::SERVICE_UNAVAILABLE,
                cause: |r| {
                    matches!(
                        r,
                        Rejection::RateLimit(RateLimitError::GlobalQuota { limit: 1, .. })
                    )
                },
            },
            LayerCase {
                name: "auth: missing",
                run: |hook| {
                    Box::pin(async move {
                        let layer = HandshakeAuthLayer::new(StaticTokens::new().token(
                            "s3cret",
                            "alice",
                            (),
                        ));
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        layer
                            .layer(ok())
                            .oneshot(from_peer(&[]))
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::UNAUTHORIZED,
                cause: |r| matches!(r, Rejection::Auth(AuthError::Missing)),
            },
            LayerCase {
                name: "auth: invalid",
                run: |hook| {
                    Box::pin(async move {
                        let layer = HandshakeAuthLayer::new(StaticTokens::new().token(
                            "s3cret",
                            "alice",
                            (),
                        ));
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let req = from_peer(&[("authorization", "Bearer guess")]);
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::UNAUTHORIZED,
                cause: |r| matches!(r, Rejection::Auth(AuthError::Invalid)),
            },
            LayerCase {
                name: "auth: malformed",
                run: |hook| {
                    Box::pin(async move {
                        let layer = HandshakeAuthLayer::new(StaticTokens::new().token(
                            "s3cret",
                            "alice",
                            (),
                        ));
                        let layer = hooked(layer, hook, |l, h| l.on_rejection(h));
                        let mut req = from_peer(&[]);
                        if let Ok(value) = HeaderValue::from_bytes(b"Bearer tok-\xff") {
                            req.headers_mut().insert(header::AUTHORIZATION, value);
                        }
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::BAD_REQUEST,
                cause: |r| matches!(r, Rejection::Auth(AuthError::Malformed)),
            },
            LayerCase {
                name: "revoked",
                run: |hook| {
                    Box::pin(async move {
                        let revocations = Revocations::new();
                        let revoked = revocations.revoke_token("t1").await;
                        assert!(revoked.is_ok());
                        let layer = hooked(RevocationLayer::new(revocations), hook, |l, h| {
                            l.on_rejection(h)
                        });
                        let mut req = with_ip();
                        req.extensions_mut().insert(Principal::new("alice", None));
                        req.extensions_mut().insert(TokenFingerprint::of("t1"));
                        layer
                            .layer(ok())
                            .oneshot(req)
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::UNAUTHORIZED,
                cause: |r| matches!(r, Rejection::Revoke(RevokeError::Revoked)),
            },
            LayerCase {
                name: "draining",
                run: |hook| {
                    Box::pin(async move {
                        let drain = crate::socket::Drain::new();
                        let _ = drain
                            .shutdown(
                                crate::socket::DrainOptions::new(Duration::ZERO)
                                    .retry_after(Duration::from_secs(7)),
                            )
                            .await;
                        let layer = hooked(drain.layer(), hook, |l, h| l.on_rejection(h));
                        layer
                            .layer(ok())
                            .oneshot(from_peer(&[]))
                            .await
                            .unwrap_or_else(|e| match e {})
                    })
                },
                status: StatusCode::SERVICE_UNAVAILABLE,
                cause: |r| {
                    matches!(
                        r,
                        Rejection::Drain(DrainError::Draining { retry_after })
                            if *retry_after == Duration::from_secs(7)
                    )
                },
            },
        ]
    }

    async fn body_of(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 4096)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn each_layer_answers_with_the_default_response_of_its_cause() {
        for case in layer_cases() {
            let response = (case.run)(None).await;
            assert_eq!(response.status(), case.status, "{}", case.name);
            let rejection = response.extensions().get::<Rejection>().cloned();
            let Some(rejection) = rejection else {
                panic!("{}: no Rejection in the extensions", case.name);
            };
            assert!((case.cause)(&rejection), "{}: {rejection:?}", case.name);
            assert!(carries_cause(&response, &rejection), "{}", case.name);

            let expected = rejection.clone().into_response();
            assert_eq!(response.status(), expected.status(), "{}", case.name);
            assert_eq!(response.headers(), expected.headers(), "{}", case.name);
            assert_eq!(
                expected.extensions().get::<Rejection>(),
                Some(&rejection),
                "{}",
                case.name
            );
            assert_eq!(
                body_of(response).await,
                body_of(expected).await,
                "{}",
                case.name
            );
        }
    }

    #[tokio::test]
    async fn a_hook_replaces_the_response_and_the_extensions_keep_both_types() {
        for case in layer_cases() {
            let response = (case.run)(Some(teapot)).await;
            assert_eq!(response.status(), StatusCode::IM_A_TEAPOT, "{}", case.name);
            let rejection = response.extensions().get::<Rejection>().cloned();
            let Some(rejection) = rejection else {
                panic!("{}: no Rejection in the extensions", case.name);
            };
            assert!((case.cause)(&rejection), "{}: {rejection:?}", case.name);
            assert!(carries_cause(&response, &rejection), "{}", case.name);
            assert_eq!(rejection.status(), case.status, "{}", case.name);
            // Retry-After is added when the cause knows the wait; no challenge is added.
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                rejection.retry_after().is_some(),
                "{}",
                case.name
            );
            assert!(
                !response.headers().contains_key(header::WWW_AUTHENTICATE),
                "{}",
                case.name
            );
            assert_eq!(body_of(response).await, b"hooked", "{}", case.name);
        }
    }

    #[tokio::test]
    async fn a_hook_that_sets_retry_after_keeps_its_own() {
        let layer = RateLimitLayer::new()
            .clock(FakeRelativeClock::default())
            .on_rejection(|rejection: &Rejection| {
                (
                    rejection.status(),
                    [(header::RETRY_AFTER, HeaderValue::from_static("42"))],
                    "slow down",
                )
            });
        let svc = layer.layer(ok());
        let mut last = None;
        for _ in 0..11 {
            last = svc.clone().oneshot(with_ip()).await.ok();
        }
        let Some(response) = last else {
            panic!("no response");
        };
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let values: Vec<_> = response
            .headers()
            .get_all(header::RETRY_AFTER)
            .iter()
            .collect();
        assert_eq!(values, [HeaderValue::from_static("42")]);
    }
}
