//! Proxy-safe keys for [tower_governor](https://docs.rs/tower_governor) (feature
//! `tower-governor`): an application that already rate-limits its HTTP routes with
//! tower_governor keys them by wsguard's trusted client address or the authenticated identity.
//!
//! tower_governor's own `SmartIpKeyExtractor` takes the leftmost `X-Forwarded-For` address,
//! which any client can write, so a forged header per request escapes the limit.
//! [`ClientIpKey`] reads the [`ClientIp`] that [`ClientIpLayer`](crate::client_ip::ClientIpLayer)
//! resolved (headers only from the trusted proxies, rightmost untrusted hop), grouped by a
//! [`KeyPrefix`] (IPv6 clients by /64, so a client cannot rotate through its own /64);
//! [`IdentityKey`] reads the subject that
//! [`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer) verified. Put the wsguard layer in
//! front (with `Router::layer`, add it after the governor layer):
//!
//! ```
//! use std::{net::SocketAddr, sync::Arc};
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::post};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};
//! use wsguard::{client_ip::ClientIpLayer, governor::ClientIpKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GovernorConfigBuilder::default()
//!     .per_second(60)
//!     .burst_size(2)
//!     .key_extractor(ClientIpKey::new())
//!     .finish()
//!     .ok_or("invalid governor settings")?;
//! let app = Router::new()
//!     .route("/login", post(|| async { "welcome" }))
//!     .layer(GovernorLayer::new(Arc::new(config)))
//!     .layer(ClientIpLayer::new()); // runs first: the governor keys on its result
//!
//! let login = |forged: &str| {
//!     let mut req = Request::post("/login")
//!         .header("x-forwarded-for", forged) // not from a trusted proxy: ignored
//!         .body(Body::empty())?;
//!     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 50000))));
//!     Ok::<_, http::Error>(req)
//! };
//! for (forged, status) in [("198.51.100.1", 200), ("198.51.100.2", 200), ("198.51.100.3", 429)] {
//!     let res = app.clone().oneshot(login(forged)?).await?;
//!     assert_eq!(res.status(), StatusCode::from_u16(status)?);
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use http::{Request, StatusCode};
use tower_governor::{GovernorError, key_extractor::KeyExtractor};

use crate::client_ip::{ClientIp, IpNet, KeyPrefix};

/// The `500` of a request the wsguard layer in front did not see: a stack in the wrong order.
fn misconfigured(what: &str) -> GovernorError {
    tracing::error!(
        name: "wsguard.governor.missing_key",
        missing = what,
        "tower_governor key missing: put the wsguard layer that provides it in front"
    );
    GovernorError::Other {
        code: StatusCode::INTERNAL_SERVER_ERROR,
        msg: Some(format!("wsguard: no {what} in the request\n")),
        headers: None,
    }
}

/// A tower_governor [`KeyExtractor`] keyed by the trusted client address that
/// [`ClientIpLayer`](crate::client_ip::ClientIpLayer) resolved, grouped by a [`KeyPrefix`]
/// ([`KeyPrefix::DEFAULT`]: /32 for IPv4, /64 for IPv6). A request without a [`ClientIp`]
/// (no `ClientIpLayer` in front) gets `500`. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientIpKey {
    prefix: KeyPrefix,
}

impl ClientIpKey {
    /// Keys by [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How addresses are grouped into keys. Replaces; default [`KeyPrefix::DEFAULT`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }
}

impl KeyExtractor for ClientIpKey {
    type Key = IpNet;

    fn name(&self) -> &'static str {
        "wsguard client ip"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        req.extensions()
            .get::<ClientIp>()
            .map(|ip| self.prefix.key(ip.0))
            .ok_or_else(|| misconfigured("ClientIp (add ClientIpLayer in front)"))
    }

    fn key_name(&self, key: &Self::Key) -> Option<String> {
        Some(key.to_string())
    }
}

/// A tower_governor [`KeyExtractor`] keyed by the authenticated subject that
/// [`HandshakeAuthLayer`](crate::auth::HandshakeAuthLayer) put in the request. A request
/// without a [`Principal`](crate::auth::Principal) (no auth layer in front) gets `500`. The
/// subject is never logged. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityKey;

impl KeyExtractor for IdentityKey {
    type Key = Arc<str>;

    fn name(&self) -> &'static str {
        "wsguard identity"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        crate::core::identity(req.extensions())
            .map(Arc::from)
            .ok_or_else(|| misconfigured("Principal (add HandshakeAuthLayer in front)"))
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::IpAddr, sync::Arc};

    use axum::{body::Body, response::Response};
    use http::{Request, StatusCode};
    use tower::{Layer, ServiceExt, service_fn};
    use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};

    use super::*;
    use crate::{auth::Principal, client_ip::ClientIpLayer};

    fn status(error: GovernorError) -> StatusCode {
        match error {
            GovernorError::Other { code, .. } => code,
            GovernorError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    async fn ok(_: Request<Body>) -> Result<Response, Infallible> {
        Ok(Response::new(Body::empty()))
    }

    /// Table: which requests share a key, and what a request without the key gets.
    #[tokio::test]
    async fn keys_are_the_trusted_address_or_the_subject() {
        struct Case {
            name: &'static str,
            key: fn(&Request<()>) -> Result<String, StatusCode>,
            requests: Vec<Request<()>>,
            distinct: usize,
        }
        let with_ip = |ip: &str| {
            let mut req = Request::new(());
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            req.extensions_mut().insert(ClientIp(ip));
            req
        };
        let with_subject = |subject: &str| {
            let mut req = Request::new(());
            req.extensions_mut().insert(Principal::new(subject, None));
            req
        };
        let ip_key = |req: &Request<()>| {
            ClientIpKey::new()
                .extract(req)
                .map(|k| k.to_string())
                .map_err(status)
        };
        let id_key = |req: &Request<()>| {
            IdentityKey
                .extract(req)
                .map(|k| k.to_string())
                .map_err(status)
        };
        let cases = [
            Case {
                name: "one IPv6 /64 is one key",
                key: ip_key,
                requests: vec![with_ip("2001:db8::1"), with_ip("2001:db8::ffff:1")],
                distinct: 1,
            },
            Case {
                name: "two IPv4 addresses are two keys",
                key: ip_key,
                requests: vec![with_ip("203.0.113.1"), with_ip("203.0.113.2")],
                distinct: 2,
            },
            Case {
                name: "subjects",
                key: id_key,
                requests: vec![
                    with_subject("alice"),
                    with_subject("alice"),
                    with_subject("bob"),
                ],
                distinct: 2,
            },
        ];
        for case in cases {
            let mut keys: Vec<String> = case
                .requests
                .iter()
                .map(|r| (case.key)(r).unwrap_or_default())
                .collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), case.distinct, "{}", case.name);
        }
        assert_eq!(
            ip_key(&Request::new(())),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            id_key(&Request::new(())),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
    }

    /// A forged `X-Forwarded-For` per request does not escape the limit: the key is the peer
    /// address (no trusted proxy), while tower_governor's `SmartIpKeyExtractor` would give each
    /// forged address a fresh budget.
    #[tokio::test]
    async fn a_forged_forwarded_for_does_not_escape_the_limit() {
        let login =
            |forged: usize| {
                let mut req = Request::post("/login")
                    .header("x-forwarded-for", format!("198.51.100.{forged}"))
                    .body(Body::empty())
                    .unwrap_or_default();
                req.extensions_mut().insert(axum::extract::ConnectInfo(
                    std::net::SocketAddr::from(([203, 0, 113, 7], 50000)),
                ));
                req
            };
        let statuses =
            async |svc: tower::util::BoxCloneService<Request<Body>, Response, Infallible>| {
                let mut statuses = Vec::new();
                for forged in 1..=4 {
                    let res = svc.clone().oneshot(login(forged)).await;
                    statuses.push(res.map(|r| r.status().as_u16()).unwrap_or_default());
                }
                statuses
            };

        let ours = GovernorConfigBuilder::default()
            .per_second(60)
            .burst_size(2)
            .key_extractor(ClientIpKey::new())
            .finish();
        let Some(ours) = ours else {
            panic!("valid governor settings");
        };
        let svc =
            ClientIpLayer::new().layer(GovernorLayer::new(Arc::new(ours)).layer(service_fn(ok)));
        assert_eq!(
            statuses(tower::util::BoxCloneService::new(svc)).await,
            [200, 200, 429, 429]
        );

        // The attack works against tower_governor's own extractor.
        let smart = GovernorConfigBuilder::default()
            .per_second(60)
            .burst_size(2)
            .key_extractor(tower_governor::key_extractor::SmartIpKeyExtractor)
            .finish();
        let Some(smart) = smart else {
            panic!("valid governor settings");
        };
        let svc = GovernorLayer::new(Arc::new(smart)).layer(service_fn(ok));
        assert_eq!(
            statuses(tower::util::BoxCloneService::new(svc)).await,
            [200, 200, 200, 200]
        );
    }
}
