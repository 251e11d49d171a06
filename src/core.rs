//! What every middleware module would otherwise repeat: the response future, the plain-text
//! body of rejections (built by [`Rejection`](crate::Rejection) in `crate::rejection`), the
//! inner-service accessors, permit attachment and identity lookup.
//!
//! Crate-private; the futures are public only through each module's `ResponseFuture`
//! re-export, because they appear in `Service::Future`.

use std::{
    any::Any,
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, OnceLock, Weak},
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use http::{Extensions, HeaderValue, StatusCode, header};
use pin_project_lite::pin_project;

use crate::{auth::Principal, client_ip::ClientIp, rate_limit::ConnectionPermit};

pin_project! {
    /// Response future of a handshake middleware: the inner service's future, or a rejection
    /// decided before the inner service was called.
    ///
    /// `B` is the response body, axum's [`Body`] by default.
    pub struct ResponseFuture<F, B = Body> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Future { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// Runs `future`, the inner service's.
    pub(crate) fn future(future: F) -> Self {
        Self {
            kind: Kind::Future { future },
        }
    }

    /// Answers `response` without calling the inner service, its body converted to `B`
    /// (see [`convert_body`]).
    pub(crate) fn rejected(response: Response) -> Self
    where
        B: Default + 'static,
    {
        Self {
            kind: Kind::Rejected {
                response: Some(convert_body(response)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future } => future.poll(cx),
            KindProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.kind {
            Kind::Future { .. } => "Future",
            Kind::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &state)
            .finish()
    }
}

type BoxFuture<E, B> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send + 'static>>;

/// Response future of a middleware that awaits something of its own (a Redis round trip)
/// before it calls the inner service.
///
/// `B` is the response body, axum's [`Body`] by default.
pub struct BoxResponseFuture<E, B = Body> {
    inner: BoxFuture<E, B>,
}

impl<E, B> BoxResponseFuture<E, B> {
    pub(crate) fn new(fut: impl Future<Output = Result<Response<B>, E>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(fut),
        }
    }

    /// Answers `response` without calling the inner service, its body converted to `B`.
    pub(crate) fn rejected(response: Response) -> Self
    where
        E: Send + 'static,
        B: Default + Send + 'static,
    {
        Self::new(std::future::ready(Ok(convert_body(response))))
    }
}

impl<E, B> Future for BoxResponseFuture<E, B> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<E, B> fmt::Debug for BoxResponseFuture<E, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The text of a default rejection, kept beside the body until [`convert_body`] decides.
#[derive(Clone)]
struct RejectionText(String);

/// A short `text/plain` response with `status`: the body of every default rejection.
pub(crate) fn plain_text(status: StatusCode, text: impl Into<String>) -> Response {
    let text = text.into();
    let mut response = Response::new(Body::from(text.clone()));
    response.extensions_mut().insert(RejectionText(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A rejection built as an axum response, with its body as a `B`: axum's [`Body`] is kept
/// as it is, a `String` body gets the plain text of a default rejection, and any other body
/// type (socketioxide's, for one) gets `B::default()`, usually empty. Status, headers and the
/// typed error in the extensions are the same for every body type.
pub(crate) fn convert_body<B: Default + 'static>(response: Response) -> Response<B> {
    let (mut parts, body) = response.into_parts();
    let text = parts.extensions.remove::<RejectionText>();
    let mut axum_body = Some(body);
    if let Some(same) = (&mut axum_body as &mut dyn Any).downcast_mut::<Option<B>>()
        && let Some(body) = same.take()
    {
        return Response::from_parts(parts, body);
    }
    let mut string = text.map(|t| t.0);
    let body = match (&mut string as &mut dyn Any).downcast_mut::<Option<B>>() {
        Some(body) => body.take().unwrap_or_default(),
        None => B::default(),
    };
    Response::from_parts(parts, body)
}

/// Adds `permit` to the [`ConnectionPermit`] in `extensions` (several layers may each hold
/// slots for the same socket), or inserts it.
pub(crate) fn attach_permit(extensions: &mut Extensions, permit: ConnectionPermit) {
    match extensions.get_mut::<ConnectionPermit>() {
        Some(existing) => existing.merge(permit),
        None => {
            extensions.insert(permit);
        }
    }
}

/// The client address that [`ClientIpLayer`](crate::client_ip::ClientIpLayer) stored, if any.
pub(crate) fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ClientIp>().map(|ip| ip.0)
}

/// The authenticated principal that the auth layer stored, if any.
pub(crate) fn principal(extensions: &Extensions) -> Option<&Principal> {
    extensions.get::<Principal>()
}

/// The authenticated identity's subject, if any.
pub(crate) fn identity(extensions: &Extensions) -> Option<&str> {
    principal(extensions).map(Principal::subject)
}

/// A WebSocket handshake is an HTTP/1.1 request whose `Upgrade` header lists `websocket`, or
/// an HTTP/2 extended `CONNECT` (RFC 8441). Every `Upgrade` header is looked at, and any
/// `CONNECT` is treated as a handshake, so no request that axum would upgrade escapes.
pub(crate) fn is_websocket_handshake(method: &http::Method, headers: &http::HeaderMap) -> bool {
    *method == http::Method::CONNECT
        || headers.get_all(header::UPGRADE).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
}

/// Work started when something was dropped that must finish before the process exits: the
/// Redis round trips giving a socket's fleet leases back. Clones count together;
/// [`idle`](Self::idle) waits until none is running.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for InFlight {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl InFlight {
    /// Counts one piece of work until the guard drops.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn start(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.clone())
    }

    /// Waits until no work counted here is running.
    pub(crate) async fn idle(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Whether `other` counts the same work.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InFlight").field(&*self.0.borrow()).finish()
    }
}

/// One piece of [`InFlight`] work, counted until dropped.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A layer's shared state (limiter, counters), created when it is first needed: the first
/// `layer()` call, or the first request. Building, configuring or cloning a layer allocates an
/// empty slot only; clones share the slot, so the services made by one layer and its clones
/// count together (axum's `Router::layer` calls `layer()` once per route, and a per-IP limit
/// must not become a per-route one). A setter that changes what the state is built from
/// calls [`reset`](Self::reset), which gives this copy a new empty slot and leaves the
/// services already made untouched.
pub(crate) struct LazyState<T>(Arc<OnceLock<T>>);

impl<T> LazyState<T> {
    pub(crate) fn new() -> Self {
        Self(Arc::new(OnceLock::new()))
    }

    /// The state, built with `init` if nothing has built it yet.
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(init)
    }

    /// The state, if it was built.
    pub(crate) fn get(&self) -> Option<&T> {
        self.0.get()
    }

    /// A new empty slot for this copy; the services already made keep theirs.
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    /// A handle that does not keep the state alive (for background pruners).
    pub(crate) fn downgrade(&self) -> Weak<OnceLock<T>> {
        Arc::downgrade(&self.0)
    }
}

impl<T> Clone for LazyState<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for LazyState<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service is the field
/// `inner` (tower-http's `define_inner_service_accessors!`).
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the middleware, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use define_inner_service_accessors;

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::SocketAddr};

    use crate::test_support::nz;

    use axum::{
        extract::ConnectInfo,
        response::{IntoResponse, Response},
    };
    use http::{Request, StatusCode};
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    use super::ConnectionPermit;
    use crate::{
        Rejection,
        auth::{AuthError, HandshakeAuthLayer, StaticTokens},
        client_ip::{ClientIp, ClientIpError, ClientIpLayer},
        origin::{OriginError, OriginGuardLayer},
        rate_limit::{AuthThrottleLayer, ConnectionQuotaLayer, RateLimitError, RateLimitLayer},
        revoke::{RevocationLayer, Revocations},
    };

    /// A body type that is not axum's and has no `From<String>`, only `Default`, like
    /// socketioxide's `ResponseBody<B>` (engineioxide's enum of empty / custom / inner body).
    #[derive(Debug, Default, PartialEq)]
    enum ForeignBody {
        #[default]
        Empty,
        Inner(&'static str),
    }

    fn handshake(origin: &str, token: Option<&str>, peer: [u8; 4]) -> Request<()> {
        crate::test_support::handshake(origin, token, peer, ())
    }

    /// A rejection hook, as the tests set it on every layer.
    type Hook = fn(&Rejection) -> Response;

    /// `layer` with `hook`, if any.
    fn hooked<L>(layer: L, hook: Option<Hook>, set: fn(L, Hook) -> L) -> L {
        match hook {
            Some(hook) => set(layer, hook),
            None => layer,
        }
    }

    /// Every handshake layer, in the documented order, over an inner service whose response
    /// body is `B`.
    fn stack<B>(
        make: fn() -> B,
    ) -> impl tower::Service<
        Request<()>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send,
    > + Clone
    where
        B: Default + Send + 'static,
    {
        hooked_stack(make, None)
    }

    /// [`stack`], with `hook` on every layer.
    fn hooked_stack<B>(
        make: fn() -> B,
        hook: Option<Hook>,
    ) -> impl tower::Service<
        Request<()>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send,
    > + Clone
    where
        B: Default + Send + 'static,
    {
        let inner = service_fn(move |_req: Request<()>| async move {
            Ok::<_, Infallible>(http::Response::new(make()))
        });
        let tokens = StaticTokens::new().token("s3cret", "alice", ());
        let origin = OriginGuardLayer::new()
            .allow_origin("https://app.example.com")
            .unwrap_or_default();
        ServiceBuilder::new()
            .layer(hooked(origin, hook, |l, h| l.on_rejection(h)))
            .layer(hooked(ClientIpLayer::new(), hook, |l, h| l.on_rejection(h)))
            .layer(hooked(RateLimitLayer::new().burst(nz(2)), hook, |l, h| {
                l.on_rejection(h)
            }))
            .layer(hooked(AuthThrottleLayer::new(), hook, |l, h| {
                l.on_rejection(h)
            }))
            .layer(hooked(HandshakeAuthLayer::new(tokens), hook, |l, h| {
                l.on_rejection(h)
            }))
            .layer(hooked(
                RevocationLayer::new(Revocations::new()),
                hook,
                |l, h| l.on_rejection(h),
            ))
            .layer(hooked(ConnectionQuotaLayer::new(), hook, |l, h| {
                l.on_rejection(h)
            }))
            .service(inner)
    }

    struct Case {
        name: &'static str,
        origin: &'static str,
        token: Option<&'static str>,
        peer: [u8; 4],
        status: StatusCode,
        text: &'static str,
    }

    const CASES: &[Case] = &[
        Case {
            name: "cross-site origin",
            origin: "https://evil.example",
            token: Some("s3cret"),
            peer: [192, 0, 2, 1],
            status: StatusCode::FORBIDDEN,
            text: "forbidden",
        },
        Case {
            name: "no credential",
            origin: "https://app.example.com",
            token: None,
            peer: [192, 0, 2, 2],
            status: StatusCode::UNAUTHORIZED,
            text: "authentication required\n",
        },
        Case {
            name: "accepted",
            origin: "https://app.example.com",
            token: Some("s3cret"),
            peer: [192, 0, 2, 3],
            status: StatusCode::OK,
            text: "inner",
        },
    ];

    #[tokio::test]
    async fn a_string_body_gets_the_plain_text_rejections() {
        let svc = stack(|| String::from("inner"));
        for case in CASES {
            let res = svc
                .clone()
                .oneshot(handshake(case.origin, case.token, case.peer))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(res.status(), case.status, "{}", case.name);
            assert!(
                res.body().starts_with(case.text),
                "{}: {:?}",
                case.name,
                res.body()
            );
        }
    }

    #[tokio::test]
    async fn a_foreign_body_composes_and_carries_the_typed_rejection() {
        let svc = stack(|| ForeignBody::Inner("inner"));
        for case in CASES {
            let res = svc
                .clone()
                .oneshot(handshake(case.origin, case.token, case.peer))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(res.status(), case.status, "{}", case.name);
            if case.status == StatusCode::OK {
                assert_eq!(res.body(), &ForeignBody::Inner("inner"), "{}", case.name);
            } else {
                assert_eq!(res.body(), &ForeignBody::Empty, "{}", case.name);
            }
        }
        let res = svc
            .clone()
            .oneshot(handshake("https://evil.example", None, [192, 0, 2, 9]))
            .await
            .unwrap_or_else(|e| match e {});
        assert!(res.extensions().get::<OriginError>().is_some());
        let res = svc
            .clone()
            .oneshot(handshake("https://app.example.com", None, [192, 0, 2, 9]))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(
            res.extensions().get::<AuthError>(),
            Some(&AuthError::Missing)
        );
        // The origin layer refused the first before the rate limit counted it; the second
        // and this one spend the burst of 2 per IP, so the next one is 429.
        let res = svc
            .clone()
            .oneshot(handshake(
                "https://app.example.com",
                Some("s3cret"),
                [192, 0, 2, 9],
            ))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::OK);
        let res = svc
            .clone()
            .oneshot(handshake(
                "https://app.example.com",
                Some("s3cret"),
                [192, 0, 2, 9],
            ))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key(http::header::RETRY_AFTER));
        assert!(matches!(
            res.extensions().get::<RateLimitError>(),
            Some(RateLimitError::TooManyHandshakes { .. })
        ));
        assert_eq!(res.body(), &ForeignBody::Empty);
    }

    /// A hook's response is an axum response too: its status, headers and the typed
    /// rejection reach any body type; its body reaches axum bodies only, except that a hook
    /// returning the default response keeps the plain text for `String` bodies.
    #[tokio::test]
    async fn a_hook_composes_with_any_body() {
        struct HookCase {
            name: &'static str,
            hook: Hook,
            status_of: fn(&Case) -> StatusCode,
            /// Whether the `String` body is right.
            string_body: fn(&Case, &str) -> bool,
        }
        let hook_cases = [
            HookCase {
                name: "the default, from the hook",
                hook: |rejection| rejection.clone().into_response(),
                status_of: |case| case.status,
                string_body: |case, body| body.starts_with(case.text),
            },
            HookCase {
                name: "a teapot",
                hook: |_| (StatusCode::IM_A_TEAPOT, "hooked").into_response(),
                status_of: |_| StatusCode::IM_A_TEAPOT,
                // The hook's body is an axum body: a `String` body gets its default.
                string_body: |_, body| body.is_empty(),
            },
        ];
        for hook_case in &hook_cases {
            let strings = hooked_stack(|| String::from("inner"), Some(hook_case.hook));
            let foreign = hooked_stack(|| ForeignBody::Inner("inner"), Some(hook_case.hook));
            for case in CASES {
                let name = format!("{} / {}", hook_case.name, case.name);
                let res = strings
                    .clone()
                    .oneshot(handshake(case.origin, case.token, case.peer))
                    .await
                    .unwrap_or_else(|e| match e {});
                let foreign_res = foreign
                    .clone()
                    .oneshot(handshake(case.origin, case.token, case.peer))
                    .await
                    .unwrap_or_else(|e| match e {});
                if case.status == StatusCode::OK {
                    assert_eq!(res.status(), StatusCode::OK, "{name}");
                    assert_eq!(res.body(), "inner", "{name}");
                    assert_eq!(foreign_res.body(), &ForeignBody::Inner("inner"), "{name}");
                    continue;
                }
                let status = (hook_case.status_of)(case);
                assert_eq!(res.status(), status, "{name}");
                assert!(
                    (hook_case.string_body)(case, res.body()),
                    "{name}: {:?}",
                    res.body()
                );
                assert_eq!(foreign_res.status(), status, "{name}");
                assert_eq!(foreign_res.body(), &ForeignBody::Empty, "{name}");
                for extensions in [res.extensions(), foreign_res.extensions()] {
                    let rejection = extensions.get::<Rejection>();
                    match rejection {
                        Some(Rejection::Origin(e)) => {
                            assert_eq!(extensions.get::<OriginError>(), Some(e), "{name}");
                        }
                        Some(Rejection::Auth(e)) => {
                            assert_eq!(extensions.get::<AuthError>(), Some(e), "{name}");
                        }
                        other => panic!("{name}: {other:?}"),
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_missing_connect_info_is_a_500_with_any_body() {
        let mut req = handshake("https://app.example.com", Some("s3cret"), [192, 0, 2, 1]);
        req.extensions_mut().remove::<ConnectInfo<SocketAddr>>();
        let inner = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(ForeignBody::Inner("inner")))
        });
        let res = ClientIpLayer::new()
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.extensions().get::<ClientIpError>(),
            Some(&ClientIpError::MissingConnectInfo)
        );
    }

    fn from_ip(last: u8) -> Request<()> {
        let mut req = Request::get("/ws").body(()).unwrap_or_default();
        req.extensions_mut()
            .insert(ClientIp(std::net::IpAddr::from([192, 0, 2, last])));
        req
    }

    fn ok_service() -> impl tower::Service<
        Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        })
    }

    #[tokio::test]
    async fn a_layer_creates_its_counters_on_first_use_and_its_services_share_them() {
        let layer = RateLimitLayer::new().burst(nz(1));
        assert_eq!(layer.tracked_keys(), 0, "configuring creates no counters");
        // Two routes of one layer (axum calls `layer()` once per route) count together.
        let route_a = layer.layer(ok_service());
        let route_b = layer.clone().layer(ok_service());
        let res = route_a
            .oneshot(from_ip(1))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::OK);
        let res = route_b
            .oneshot(from_ip(1))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(layer.tracked_keys(), 1);
        // A setter on a copy gives that copy counters of its own.
        let other = layer.clone().burst(nz(2));
        assert_eq!(other.tracked_keys(), 0);
        let res = other
            .layer(ok_service())
            .oneshot(from_ip(1))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(layer.tracked_keys(), 1);

        let throttle = AuthThrottleLayer::new().max_failures(nz(1));
        assert_eq!(
            throttle.tracked_keys(),
            0,
            "configuring creates no counters"
        );
        let shared = throttle.throttle();
        let _attempt = shared.begin(std::net::IpAddr::from([192, 0, 2, 1]));
        assert_eq!(
            throttle.tracked_keys(),
            1,
            "throttle() shares the layer's counters"
        );

        let quota = ConnectionQuotaLayer::new();
        let permits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&permits);
        let holder = service_fn(move |req: Request<()>| {
            let keep = std::sync::Arc::clone(&keep);
            async move {
                if let Some(permit) = req.extensions().get::<ConnectionPermit>() {
                    keep.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(permit.clone());
                }
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }
        });
        assert_eq!(quota.active(), 0);
        for route in [quota.layer(holder.clone()), quota.clone().layer(holder)] {
            let res = route
                .oneshot(from_ip(1))
                .await
                .unwrap_or_else(|e| match e {});
            assert_eq!(res.status(), StatusCode::OK);
        }
        assert_eq!(quota.active(), 2, "the routes of one layer count together");
        permits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        assert_eq!(quota.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pruner_of_a_layer_prunes_the_counters_its_services_made() {
        let clock = crate::rate_limit::FakeRelativeClock::default();
        let layer = RateLimitLayer::new()
            .per_second(nz(1000))
            .clock(clock.clone());
        let pruner = layer.spawn_pruner(std::time::Duration::from_secs(1));
        let svc = layer.layer(ok_service());
        let res = svc.oneshot(from_ip(7)).await.unwrap_or_else(|e| match e {});
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(layer.tracked_keys(), 1);
        clock.advance(std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert_eq!(layer.tracked_keys(), 0, "the idle key was pruned");
        pruner.abort();
    }
}
