use std::task::{Context, Poll};

use http::Request;
use tower::Service;

use super::{SocketPolicyLayer, policy::SocketPolicy};

/// Inserts a [`SocketPolicy`] into every request's extensions, made by
/// [`SocketPolicyLayer`]. It never rejects: the policy is applied by
/// [`GuardedUpgrade`](super::GuardedUpgrade) and the socket it upgrades to. See the
/// [module docs](crate::socket).
#[derive(Clone, Debug)]
pub struct SocketPolicyService<S> {
    inner: S,
    policy: SocketPolicy,
}

impl<S> SocketPolicyService<S> {
    pub(crate) fn new(inner: S, policy: SocketPolicy) -> Self {
        Self { inner, policy }
    }

    /// A [`SocketPolicyLayer`] with the default settings.
    pub fn layer() -> SocketPolicyLayer {
        SocketPolicyLayer::new()
    }

    crate::core::define_inner_service_accessors!();

    /// The policy this service inserts.
    pub fn policy(&self) -> &SocketPolicy {
        &self.policy
    }
}

impl<S, B> Service<Request<B>> for SocketPolicyService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.policy.clone());
        self.inner.call(req)
    }
}
