//! Handshake authentication: verify who connects before the upgrade, and hand the identity
//! to the handler.
//!
//! [`HandshakeAuthLayer`] finds a credential in the handshake request, asks an
//! [`Authenticator`] who it belongs to, and either answers a rejection or lets the request go
//! on with two request extensions: the application's own identity type (read in the handler
//! with the [`Identity`] extractor) and a [`Principal`] (subject and expiry), which the quota
//! and socket-policy layers key on. The socket-policy layer closes the socket at
//! [`Principal::expires_at`]; revocation ([`crate::revoke`]) reads its subject and
//! [`Principal::issued_at`].
//!
//! # Where the credential comes from
//!
//! Browsers cannot set headers on a WebSocket, so real apps smuggle the token in one of a few
//! places, each with a pitfall that the layer handles. Configure any of them with
//! [`HandshakeAuthLayer::sources`]; they are tried in the configured order and the first one
//! that carries a credential decides (the default is only the `Authorization` header):
//!
//! - [`CredentialSource::authorization`]: `Authorization: Bearer <token>`, for non-browser
//!   clients.
//! - [`CredentialSource::subprotocol`]: a `Sec-WebSocket-Protocol` entry with a prefix, e.g.
//!   `new WebSocket(url, ["bearer.<token>", "chat.v1"])`. The token entry is **removed** from the
//!   header before the request goes on (the header is removed when nothing is left), so axum's
//!   `WebSocketUpgrade::protocols` can only select, and echo back, the real application
//!   protocol.
//! - [`CredentialSource::query`]: a query parameter such as `?access_token=<token>`. The
//!   parameter is **removed** from the URI that goes on, so later layers and access logs never
//!   see it (a proxy in front of the server still logs the original URI: prefer short-lived
//!   [tickets](TicketIssuer) for this source).
//! - [`CredentialSource::cookie`]: a named cookie. Cookies are sent by the browser on
//!   cross-site handshakes too, so pair this source with the origin check
//!   ([`crate::origin`]).
//!
//! Token entries and query parameters of every configured source are stripped, whichever
//! source supplied the credential.
//!
//! # Authenticators
//!
//! - Closures `Fn(&Parts, Credential) -> impl Future<Output = Result<Verified<I>, AuthError>>`
//!   (a database or session lookup, say).
//! - [`StaticTokens`]: a fixed set of tokens (service accounts), compared in constant time.
//! - [`TicketVerifier`] with [`TicketIssuer`]: short-lived HMAC-SHA256 tickets that a login
//!   route hands out and the WebSocket handshake presents, with several keys for rotation and
//!   optional one-time use backed by a replay cache bounded in all and per subject.
//! - `JwtAuthenticator` (feature `jwt`): HS256, RS256 and ES256 JSON Web Tokens with `exp`,
//!   `nbf`, `aud`, `iss` and leeway. The audience is required: the builder is not an
//!   authenticator until it names one (or says `any_audience()` explicitly).
//!
//! Revocation and replay name a token by its [`TokenFingerprint`]: for JWTs and tickets a
//! hash of the signed part, so a re-encoded signature (ES256's `s` flipped to `n - s`) is
//! still the same, revoked, token.
//!
//! # Rejections
//!
//! | cause | status | `WWW-Authenticate` |
//! |---|---|---|
//! | [`AuthError::Missing`] | 401 | `Bearer` |
//! | [`AuthError::Invalid`] | 401 | `Bearer error="invalid_token", error_description="the credential is not valid"` |
//! | [`AuthError::Expired`] | 401 | `Bearer error="invalid_token", error_description="the credential has expired"` |
//! | [`AuthError::Malformed`] | 400 | `Bearer error="invalid_request", error_description="the credential is malformed"` |
//! | [`AuthError::TooManyTickets`] | 429 with `Retry-After` | none |
//!
//! An unknown user and a wrong secret get the same answer. Every rejection carries the
//! [`AuthError`] and the crate's [`Rejection`](crate::Rejection)
//! ([`Rejection::Auth`](crate::Rejection::Auth)) in its response extensions (the rate limiter
//! counts failed authentications per client with the `AuthError`), has a short plain-text
//! body and emits one `tracing` event named `wsguard.auth.rejected` with the fields `cause`,
//! `source` and `client_ip` (never the token). [`HandshakeAuthLayer::on_rejection`] replaces
//! the response with a hook over the `Rejection`, as on every layer; the [`AuthError`] and
//! the `Rejection` are still added to its extensions, and `Retry-After` when it lacks one
//! ([`AuthError::TooManyTickets`]). `WWW-Authenticate` is the hook's to set.
//!
//! # Example
//!
//! A login route issues a one-minute ticket; the WebSocket route accepts it in the
//! `Sec-WebSocket-Protocol` header and reads the identity.
//!
//! ```
//! use axum::{
//!     Router, body::Body, extract::ws::WebSocketUpgrade, response::Response, routing::{get, post},
//! };
//! use http::{Request, StatusCode, header};
//! use std::{num::NonZeroUsize, time::Duration};
//! use tower::ServiceExt;
//! use wsguard::auth::{
//!     CredentialSource, HandshakeAuthLayer, Identity, Ticket, TicketIssuer, TicketKey,
//!     TicketVerifier,
//! };
//!
//! /// How many used tickets the verifier remembers (until each expires).
//! const REPLAY_CACHE: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();
//!
//! async fn ws(Identity(ticket): Identity<Ticket>, upgrade: WebSocketUpgrade) -> Response {
//!     let user = ticket.subject().to_owned();
//!     upgrade
//!         .protocols(["chat.v1"])
//!         .on_upgrade(move |_socket| async move { println!("{user} connected") })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = TicketKey::generate("2024-06")?;
//! let issuer = TicketIssuer::new(key.clone()).ttl(Duration::from_secs(60));
//! let verifier = TicketVerifier::new(key).one_time(REPLAY_CACHE);
//!
//! // Check the password however you like, then hand out a ticket.
//! let login = post(move || {
//!     let issuer = issuer.clone();
//!     async move { issuer.issue("alice") }
//! });
//! let guarded = get(ws).layer(
//!     HandshakeAuthLayer::new(verifier).sources([CredentialSource::subprotocol("ticket.")?]),
//! );
//! let app = Router::new().route("/login", login).route("/ws", guarded);
//!
//! let res = app.clone().oneshot(Request::post("/login").body(Body::empty())?).await?;
//! let body = axum::body::to_bytes(res.into_body(), 4096).await?;
//! let ticket = String::from_utf8(body.to_vec())?;
//!
//! let handshake = |protocols: String| {
//!     Request::get("/ws")
//!         .header(header::CONNECTION, "upgrade")
//!         .header(header::UPGRADE, "websocket")
//!         .header(header::SEC_WEBSOCKET_VERSION, "13")
//!         .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
//!         .header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
//!         .body(Body::empty())
//! };
//!
//! // Without a ticket: 401.
//! let res = app.clone().oneshot(handshake("chat.v1".into())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//!
//! // With the ticket the handshake reaches the handler. (`oneshot` has no connection to
//! // upgrade, so axum answers 426; over a real connection this is a 101 selecting `chat.v1`.)
//! let res = app.clone().oneshot(handshake(format!("ticket.{ticket}, chat.v1"))?).await?;
//! assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
//!
//! // The ticket was for one use only.
//! let res = app.clone().oneshot(handshake(format!("ticket.{ticket}, chat.v1"))?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Deployment
//!
//! Proxies forward `Authorization`, `Cookie` and `Sec-WebSocket-Protocol` unchanged, but they
//! log the request line: a token in the query string ends up in the proxy's access log even
//! though this layer strips it. Keep query tokens short-lived (tickets) or use the
//! subprotocol source. Put the layer after the rate limiter so failed attempts are
//! throttled per client.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

mod authenticator;
mod credential;
mod extract;
mod future;
#[cfg(feature = "jwt")]
mod jwt;
mod layer;
mod rejection;
mod service;
mod static_tokens;
mod ticket;

/// The latest date the crate computes with (the year 9999), for the fleet's revocation
/// cutoffs.
#[cfg(feature = "redis")]
pub(crate) use self::ticket::MAX_UNIX_SECS;
pub use self::{
    authenticator::{Authenticator, Verified},
    credential::{Credential, CredentialSource, SourceKind, TokenFingerprint},
    extract::{Identity, MissingIdentity},
    future::ResponseFuture,
    layer::HandshakeAuthLayer,
    service::HandshakeAuth,
    static_tokens::StaticTokens,
    ticket::{SystemClock, Ticket, TicketClock, TicketIssuer, TicketKey, TicketVerifier},
};
/// The JSON types of ticket claims ([`Ticket::claims`], [`TicketIssuer::issue_with_claims`]),
/// re-exported from `serde_json`.
pub use serde_json::{Map, Value};

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use self::jwt::{Algorithm, DecodingKey, JwtAuthenticator, JwtAuthenticatorBuilder};

/// Who an authenticated handshake belongs to, stored in the request extensions next to the
/// application's own identity type. Later layers (quotas, socket policy) key on
/// [`Principal::subject`] and close the socket at [`Principal::expires_at`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    subject: Arc<str>,
    expires_at: Option<SystemTime>,
    issued_at: Option<SystemTime>,
}

impl Principal {
    /// A principal for `subject` whose credential expires at `expires_at`, if ever.
    pub fn new(subject: impl Into<Arc<str>>, expires_at: Option<SystemTime>) -> Self {
        Self {
            subject: subject.into(),
            expires_at,
            issued_at: None,
        }
    }

    /// The same principal with the time its credential was issued. Replaces an earlier
    /// value. Default: unknown (`None`), which revocation by issue time treats as issued
    /// before any time (see [`crate::revoke`]). [`TicketVerifier`] and `JwtAuthenticator`
    /// (from the `iat` claim) set it.
    #[must_use]
    pub fn with_issued_at(mut self, issued_at: SystemTime) -> Self {
        self.issued_at = Some(issued_at);
        self
    }

    /// The stable subject (user id) this credential was issued to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the credential stops being valid, if it has an expiry.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When the credential was issued, if known.
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.issued_at
    }
}

/// Why a handshake failed authentication. Carried in the extensions of every rejection
/// response, which is how the rate limiter counts failures per client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was found in any configured source.
    Missing,
    /// The credential was present but not well formed.
    Malformed,
    /// The credential was well formed but not valid.
    Invalid,
    /// The credential was valid once but has expired.
    Expired,
    /// A valid one-time ticket whose subject already has as many unused-up tickets in the
    /// replay cache as [`TicketVerifier::tickets_per_subject`] allows; answered `429` with
    /// `Retry-After`.
    TooManyTickets {
        /// When the subject's oldest remembered ticket expires and frees a place.
        retry_after: Duration,
    },
}

impl AuthError {
    /// A stable, lowercase name for logs and metrics, e.g. `invalid`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::TooManyTickets { .. } => "too_many_tickets",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing credential",
            Self::Malformed => "malformed credential",
            Self::Invalid => "invalid credential",
            Self::Expired => "expired credential",
            Self::TooManyTickets { .. } => "too many one-time tickets in use for this subject",
        })
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests;
