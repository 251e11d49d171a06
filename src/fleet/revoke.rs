//! [`RevocationLayer`]: refuses revoked tokens and makes sockets closable from any instance.

use std::{
    fmt,
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
};

use axum::response::Response;
use http::Request;
use tower::{Layer, Service};

use super::{
    FailurePolicy, Fleet, FleetError, ResponseFuture, fleet_reject, handle::millis, note_fallback,
    refuse_unavailable, scripts,
};
use crate::{
    auth::{Principal, TokenFingerprint},
    client_ip::ClientIp,
    rate_limit::ConnectionPermit,
    socket::CloseSignal,
};

/// Layer that refuses handshakes whose token was revoked (`401` with
/// [`FleetError::Revoked`] in the extensions) and registers every admitted socket so that
/// [`Fleet::revoke_identity`] and [`Fleet::revoke_token`] close it, from any instance, with
/// `1008`. See the [module docs](super).
///
/// Place it after the auth layer (it reads [`Principal`] and [`TokenFingerprint`]); requests
/// without either pass unchanged. It puts a [`CloseSignal`] into the request extensions,
/// which [`GuardedUpgrade`](crate::socket::GuardedUpgrade) attaches to the socket, and holds
/// the registration in the request's [`ConnectionPermit`] until the socket ends. The token
/// is remembered under its subject (for the revocation TTL) so that revoking the subject
/// revokes it.
///
/// While Redis is unreachable, [`FailurePolicy::FallBackToLocal`] lets handshakes through
/// without the revoked-token check; [`FailurePolicy::Refuse`] answers `503`.
#[derive(Clone)]
pub struct RevocationLayer {
    fleet: Fleet,
}

impl fmt::Debug for RevocationLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationLayer")
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl RevocationLayer {
    /// A revocation layer for `fleet`.
    #[must_use]
    pub fn new(fleet: &Fleet) -> Self {
        Self {
            fleet: fleet.clone(),
        }
    }
}

impl<S> Layer<S> for RevocationLayer {
    type Service = Revocation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Revocation {
            inner,
            fleet: self.fleet.clone(),
        }
    }
}

/// Middleware that enforces revocation. Made by [`RevocationLayer`].
#[derive(Clone, Debug)]
pub struct Revocation<S> {
    inner: S,
    fleet: Fleet,
}

impl<S> Revocation<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Revocation<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ip: Option<IpAddr> = req.extensions().get::<ClientIp>().map(|c| c.0);
        let subject: Option<Arc<str>> = req
            .extensions()
            .get::<Principal>()
            .map(|p| Arc::from(p.subject()));
        let token = req.extensions().get::<TokenFingerprint>().copied();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if subject.is_none() && token.is_none() {
            return ResponseFuture::new(inner.call(req));
        }
        let fleet = self.fleet.clone();
        ResponseFuture::new(async move {
            // Register first: a revocation published from now on reaches this socket, and
            // one published before is seen by the check below.
            let signal = CloseSignal::new();
            let registration = fleet.register(subject.clone(), token, signal.clone());
            if let Some(fp) = token {
                let mut conn = fleet.connection();
                let marker = fleet.key(&format!("revoked:{}", fp.to_hex()));
                let tokens = subject
                    .as_deref()
                    .map(|s| fleet.key(&format!("tokens:{s}")));
                let ttl = millis(fleet.revocation_ttl());
                let checked = fleet
                    .run("revocation_check", async move {
                        let mut invocation = scripts::CHECK_TOKEN.key(marker);
                        if let Some(tokens) = tokens {
                            invocation.key(tokens);
                        }
                        invocation
                            .arg(fp.to_hex())
                            .arg(ttl)
                            .invoke_async::<bool>(&mut conn)
                            .await
                    })
                    .await;
                match checked {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::warn!(
                            name: "wsguard.fleet.token_revoked",
                            target: "wsguard::fleet",
                            cause = "revoked",
                            client_ip = ip.map(tracing::field::display),
                            identity = subject.as_deref(),
                            "handshake refused: the token was revoked"
                        );
                        return Ok(fleet_reject(FleetError::Revoked));
                    }
                    Err(error) => {
                        if fleet.failure_policy() == FailurePolicy::Refuse {
                            return Ok(refuse_unavailable("revocation", error, ip));
                        }
                        note_fallback("revocation", ip);
                    }
                }
            }
            req.extensions_mut().insert(signal);
            let permit = ConnectionPermit::holding(registration);
            match req.extensions_mut().get_mut::<ConnectionPermit>() {
                Some(existing) => existing.merge(permit),
                None => {
                    req.extensions_mut().insert(permit);
                }
            }
            inner.call(req).await
        })
    }
}
