//! [`Drain`]: the graceful shutdown of guarded sockets, and [`DrainLayer`], which refuses new
//! handshakes once it has begun and registers the others with it.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::response::{IntoResponse, Response};
use http::Request;
use tokio::{sync::watch, task::AbortHandle, time::Instant};
use tower::{Layer, Service};

use super::{CloseCause, CloseSignal, guarded::CloseRequest};
use crate::{
    Rejection,
    core::{InFlight, ResponseFuture},
    rejection::{OnRejection, reject},
};

/// The reason of a `1001` sent by a drain, before its reconnect hint.
pub(crate) const SHUTDOWN_REASON: &str = "server shutting down";
/// The field of the close reason that carries the reconnect hint.
const HINT_FIELD: &str = "reconnect_after_ms=";
/// How long a drain waits for the tasks it aborted at the deadline to be dropped (a task
/// that blocks its thread cannot be aborted before it yields).
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The reconnect hint of a close reason sent by a [`Drain`]: how long the client should
/// wait before it reconnects, or `None` if the reason has no hint.
///
/// The reason is `server shutting down`, followed, when the drain was given a
/// [reconnect hint](DrainOptions::reconnect_hint), by `; reconnect_after_ms=<milliseconds>`
/// (a decimal number). In general: the reason is split at `;`, and the field starting with
/// `reconnect_after_ms=` after trimming spaces gives the delay; anything else is ignored, and
/// a field that is not a whole number gives `None`. A browser client reads it with
/// `/(?:^|;)\s*reconnect_after_ms=(\d+)\s*(?:;|$)/.exec(event.reason)`.
///
/// ```
/// use std::time::Duration;
/// use wsguard::socket::parse_reconnect_hint;
///
/// let reason = "server shutting down; reconnect_after_ms=2750";
/// assert_eq!(parse_reconnect_hint(reason), Some(Duration::from_millis(2750)));
/// assert_eq!(parse_reconnect_hint("server shutting down"), None);
/// ```
pub fn parse_reconnect_hint(reason: &str) -> Option<Duration> {
    reason.split(';').find_map(|field| {
        let millis = field.trim().strip_prefix(HINT_FIELD)?;
        if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        millis.parse().ok().map(Duration::from_millis)
    })
}

/// The close reason with a reconnect hint of `delay`.
fn hinted_reason(delay: Duration) -> String {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    format!("{SHUTDOWN_REASON}; {HINT_FIELD}{millis}")
}

/// How a [`Drain`] goes: its deadline, the reconnect hint it sends, and the `Retry-After` of
/// the handshakes it refuses. Passed to [`Drain::shutdown`]; a [`Duration`] converts to the
/// options with that deadline and the defaults. See the [module docs](crate::socket#graceful-drain).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct DrainOptions {
    deadline: Duration,
    hint: Option<(Duration, Duration)>,
    retry_after: Duration,
}

impl DrainOptions {
    /// Options with `deadline`: how long the drain waits for the sockets to end after it
    /// sent them `1001`; it then ends the rest by force. No reconnect hint, `Retry-After: 1`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            hint: None,
            retry_after: Duration::from_secs(1),
        }
    }

    /// Tells each client when to reconnect: `after` plus a random part of `jitter` (uniform,
    /// drawn for each socket), in the close reason (see [`parse_reconnect_hint`]), so a
    /// fleet's clients do not all come back at once. Replaces; default: no hint.
    pub fn reconnect_hint(mut self, after: Duration, jitter: Duration) -> Self {
        self.hint = Some((after, jitter));
        self
    }

    /// The `Retry-After` of the `503` refusing handshakes once the drain has begun (rounded
    /// up to whole seconds, at least 1). Replaces; default 1 s.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// The close request for one socket: `1001`, with the hint and this socket's jitter.
    fn close_request(&self) -> CloseRequest {
        let reason = self.hint.map(|(after, jitter)| {
            let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
            let random = match jitter_ms {
                0 => 0,
                n => getrandom::u64().unwrap_or(0) % n.saturating_add(1),
            };
            hinted_reason(after.saturating_add(Duration::from_millis(random)))
        });
        CloseRequest {
            cause: CloseCause::Shutdown,
            reason,
        }
    }
}

impl From<Duration> for DrainOptions {
    fn from(deadline: Duration) -> Self {
        Self::new(deadline)
    }
}

/// What a drain did, returned by [`Drain::shutdown`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Sockets (and handshakes in flight) that ended by the deadline: closed with `1001`, or
    /// gone by themselves.
    pub closed: usize,
    /// Sockets still open at the deadline, ended by force: their tasks were aborted, which
    /// dropped their connections and gave their quota slots back.
    pub forced: usize,
}

/// Why [`DrainLayer`] refused a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainError {
    /// The server is shutting down: [`Drain::shutdown`] has begun. `503` with
    /// `Retry-After`.
    Draining {
        /// When the client may try again ([`DrainOptions::retry_after`]).
        retry_after: Duration,
    },
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Draining { .. } => f.write_str("the server is shutting down"),
        }
    }
}

impl std::error::Error for DrainError {}

/// The state of the sockets a drain knows, for waiters.
#[derive(Clone, Copy, Debug, Default)]
struct Status {
    live: usize,
    draining: bool,
}

/// One socket (or handshake in flight) registered with a drain.
struct Entry {
    signal: CloseSignal,
    /// The socket's task, once it is spawned.
    abort: Option<AbortHandle>,
}

#[derive(Default)]
struct State {
    /// Set when the drain begins, never unset.
    options: Option<DrainOptions>,
    next_id: u64,
    sockets: HashMap<u64, Entry>,
    /// What ending the sockets starts (fleet lease releases), to wait for.
    releases: Vec<InFlight>,
}

struct Registry {
    state: Mutex<State>,
    /// Updated with `state` locked, so waiters never see a stale count.
    status: watch::Sender<Status>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            status: watch::Sender::new(Status::default()),
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before the next statement, so a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        let live = state.sockets.len();
        let draining = state.options.is_some();
        self.status.send_if_modified(|status| {
            let changed = status.live != live || status.draining != draining;
            *status = Status { live, draining };
            changed
        });
    }
}

/// The graceful shutdown of guarded sockets: a cloneable handle that the application creates,
/// gives to the stack ([`WsGuard::drain`](crate::WsGuard::drain), or [`layer`](Self::layer)
/// in a hand-made stack) and calls [`shutdown`](Self::shutdown) on when it stops.
///
/// axum's `serve` (and hyper's graceful shutdown) do not wait for upgraded connections
/// (axum issue #3003): a server that returns from `main` drops its sockets without a close
/// frame, and its quota leases linger in Redis until they expire. A drain:
///
/// 1. refuses new handshakes with `503 Service Unavailable` and `Retry-After`
///    ([`DrainError::Draining`], through the `on_rejection` hook like every other refusal);
/// 2. closes every guarded socket with `1001 Going Away`, through the same driver path as a
///    revocation's `1008`, with an optional reconnect hint in the reason;
/// 3. waits until the sockets ended or the deadline passed, then aborts the tasks of the
///    rest, which drops their connections and their quota permits;
/// 4. waits until the fleet leases of the sockets are released in Redis;
/// 5. reports how many sockets closed and how many were forced.
///
/// Clones are the same handle; once begun, a drain is never undone. See the
/// [module docs](crate::socket#graceful-drain).
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Registry>,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = *self.inner.status.borrow();
        f.debug_struct("Drain")
            .field("live", &status.live)
            .field("draining", &status.draining)
            .finish()
    }
}

impl Drain {
    /// A handle with no socket, not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layer that refuses handshakes once the drain has begun and registers the others,
    /// for a hand-made stack: put it outermost, so that a refusal costs nothing and uses no
    /// one-time token. [`WsGuard::drain`](crate::WsGuard::drain) puts it there.
    pub fn layer(&self) -> DrainLayer {
        DrainLayer::new(self)
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.status.borrow().draining
    }

    /// The guarded sockets registered now, handshakes in flight included.
    pub fn live(&self) -> usize {
        self.inner.status.borrow().live
    }

    /// Resolves once [`shutdown`](Self::shutdown) has begun (at once if it has), for
    /// whatever must stop with it: `axum::serve(..).with_graceful_shutdown(drain.started())`
    /// when the drain is started elsewhere, an accept loop, a background task.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut status = self.inner.status.subscribe();
        async move {
            if status.wait_for(|s| s.draining).await.is_err() {
                // Every handle is gone: nothing can start a drain any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Drains: refuses new handshakes, closes every guarded socket with `1001`, waits for
    /// them until `options`' deadline (a [`Duration`] or [`DrainOptions`]), ends the rest by
    /// force and waits for their fleet leases to be released; see [`Drain`]. Starts when
    /// first polled.
    ///
    /// It returns at most the deadline after it started, plus up to a second for aborted
    /// tasks to be dropped, plus the lease releases (each bounded by the fleet's timeout,
    /// `FleetBuilder::timeout`). Called again, or on a clone, it
    /// closes and waits for what is still open, and keeps the options of the first call.
    pub fn shutdown(
        &self,
        options: impl Into<DrainOptions>,
    ) -> impl Future<Output = DrainReport> + Send + 'static {
        let registry = Arc::clone(&self.inner);
        let options = options.into();
        async move { run(registry, options).await }
    }

    /// Registers a handshake that is about to reach the handler; refuses it with the
    /// `Retry-After` wait once the drain has begun.
    fn register(&self) -> Result<DrainTicket, Duration> {
        let mut state = self.inner.lock();
        if let Some(options) = &state.options {
            return Err(options.retry_after);
        }
        state.next_id += 1;
        let id = state.next_id;
        let signal = CloseSignal::new();
        state.sockets.insert(
            id,
            Entry {
                signal: signal.clone(),
                abort: None,
            },
        );
        self.inner.publish(&state);
        drop(state);
        Ok(DrainTicket(Arc::new(Registration {
            registry: Arc::clone(&self.inner),
            id,
            signal,
        })))
    }
}

async fn run(registry: Arc<Registry>, options: DrainOptions) -> DrainReport {
    let deadline = Instant::now().checked_add(options.deadline);
    let (options, signals) = {
        let mut state = registry.lock();
        let options = state.options.get_or_insert(options).clone();
        let signals: Vec<CloseSignal> = state.sockets.values().map(|e| e.signal.clone()).collect();
        registry.publish(&state);
        (options, signals)
    };
    let live = signals.len();
    tracing::info!(
        name: "wsguard.socket.draining",
        target: "wsguard::socket",
        sockets = live,
        deadline_ms = u64::try_from(options.deadline.as_millis()).unwrap_or(u64::MAX),
        close_code = 1001,
        "draining: refusing handshakes and closing every guarded socket"
    );
    for signal in signals {
        signal.close(options.close_request());
    }

    let mut status = registry.status.subscribe();
    let all_ended = status.wait_for(|s| s.live == 0);
    let ended = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, all_ended).await.is_ok(),
        None => all_ended.await.is_ok(),
    };
    let mut forced = 0;
    if !ended {
        let aborts: Vec<Option<AbortHandle>> = registry
            .lock()
            .sockets
            .values()
            .map(|e| e.abort.clone())
            .collect();
        forced = aborts.len();
        for abort in aborts.into_iter().flatten() {
            abort.abort();
        }
        tracing::warn!(
            name: "wsguard.socket.drain_forced",
            target: "wsguard::socket",
            sockets = forced,
            "drain deadline passed: ending the remaining sockets by force"
        );
        let _ = tokio::time::timeout(ABORT_GRACE, status.wait_for(|s| s.live == 0)).await;
    }
    // Every ended socket has dropped its permit, so every release has started.
    let releases = registry.lock().releases.clone();
    for release in releases {
        release.idle().await;
    }
    let report = DrainReport {
        closed: live.saturating_sub(forced),
        forced,
    };
    tracing::info!(
        name: "wsguard.socket.drained",
        target: "wsguard::socket",
        closed = report.closed,
        forced = report.forced,
        "drained every guarded socket"
    );
    report
}

/// A socket's (or in-flight handshake's) place in a drain, given back on drop.
struct Registration {
    registry: Arc<Registry>,
    id: u64,
    signal: CloseSignal,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        state.sockets.remove(&self.id);
        self.registry.publish(&state);
    }
}

/// The registration of one handshake, put in the request extensions by [`DrainService`] and
/// taken by [`GuardedUpgrade`](super::GuardedUpgrade) into the socket's task.
#[derive(Clone)]
pub(crate) struct DrainTicket(Arc<Registration>);

impl DrainTicket {
    /// The signal the drain closes the socket with.
    pub(crate) fn signal(&self) -> &CloseSignal {
        &self.0.signal
    }

    /// Lets the drain end the socket's task by force.
    pub(crate) fn set_abort(&self, abort: AbortHandle) {
        let mut state = self.0.registry.lock();
        if let Some(entry) = state.sockets.get_mut(&self.0.id) {
            entry.abort = Some(abort);
        }
    }

    /// Lets the drain wait for what ending the socket starts.
    pub(crate) fn wait_for(&self, releases: &[InFlight]) {
        let mut state = self.0.registry.lock();
        for release in releases {
            if !state.releases.iter().any(|known| known.same(release)) {
                state.releases.push(release.clone());
            }
        }
    }
}

impl fmt::Debug for DrainTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DrainTicket").field(&self.0.id).finish()
    }
}

/// Refuses WebSocket handshakes with `503` once its [`Drain`] has begun, and registers the
/// others with it, so that [`GuardedUpgrade`](super::GuardedUpgrade) sockets are closed
/// with `1001` by the drain. Other requests pass untouched. Made by [`Drain::layer`]; see
/// the [module docs](crate::socket#graceful-drain).
#[derive(Clone)]
#[must_use]
pub struct DrainLayer {
    drain: Drain,
    on_rejection: Option<OnRejection>,
}

impl fmt::Debug for DrainLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainLayer")
            .field("drain", &self.drain)
            .field("on_rejection", &self.on_rejection)
            .finish()
    }
}

impl DrainLayer {
    /// A layer for `drain` (the handle, not a copy of its state: every layer and clone made
    /// from one drain refuses and registers with it).
    pub fn new(drain: &Drain) -> Self {
        Self {
            drain: drain.clone(),
            on_rejection: None,
        }
    }

    /// Builds the rejection response from the [`Rejection`] (always [`Rejection::Drain`]
    /// here). Replaces the previous hook; default: none, which answers
    /// [`Rejection::into_response`] (`503`, plain text, `Retry-After`). `Retry-After` is added
    /// if the hook's response lacks it, and the [`DrainError`] and the [`Rejection`] are put
    /// in the extensions.
    pub fn on_rejection<F, R>(mut self, f: F) -> Self
    where
        F: Fn(&Rejection) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.on_rejection = Some(OnRejection::new(f));
        self
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`DrainLayer`].
#[derive(Clone, Debug)]
pub struct DrainService<S> {
    inner: S,
    layer: DrainLayer,
}

impl<S> DrainService<S> {
    crate::core::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DrainService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if !crate::core::is_websocket_handshake(req.method(), req.headers()) {
            return ResponseFuture::future(self.inner.call(req));
        }
        match self.layer.drain.register() {
            Ok(ticket) => {
                req.extensions_mut().insert(ticket);
                ResponseFuture::future(self.inner.call(req))
            }
            Err(retry_after) => {
                tracing::debug!(
                    name: "wsguard.socket.refused",
                    target: "wsguard::socket",
                    cause = "draining",
                    status = 503,
                    "handshake refused: the server is shutting down"
                );
                let error = DrainError::Draining { retry_after };
                ResponseFuture::rejected(reject(self.layer.on_rejection.as_ref(), error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use http::StatusCode;
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn reconnect_hints_parse_from_the_documented_format_only() {
        struct Case {
            name: &'static str,
            reason: &'static str,
            hint: Option<u64>,
        }
        let cases = [
            Case {
                name: "as a drain sends it",
                reason: "server shutting down; reconnect_after_ms=2750",
                hint: Some(2750),
            },
            Case {
                name: "no hint",
                reason: "server shutting down",
                hint: None,
            },
            Case {
                name: "zero",
                reason: "server shutting down; reconnect_after_ms=0",
                hint: Some(0),
            },
            Case {
                name: "among other fields, spaces around",
                reason: "x=1 ;  reconnect_after_ms=15  ; y",
                hint: Some(15),
            },
            Case {
                name: "first field",
                reason: "reconnect_after_ms=7",
                hint: Some(7),
            },
            Case {
                name: "empty number",
                reason: "server shutting down; reconnect_after_ms=",
                hint: None,
            },
            Case {
                name: "signed",
                reason: "reconnect_after_ms=+5",
                hint: None,
            },
            Case {
                name: "with a unit",
                reason: "reconnect_after_ms=5s",
                hint: None,
            },
            Case {
                name: "not a field of its own",
                reason: "xreconnect_after_ms=5",
                hint: None,
            },
            Case {
                name: "too large for u64",
                reason: "reconnect_after_ms=99999999999999999999999",
                hint: None,
            },
        ];
        for case in cases {
            assert_eq!(
                parse_reconnect_hint(case.reason),
                case.hint.map(Duration::from_millis),
                "{}",
                case.name
            );
        }
    }

    proptest! {
        #[test]
        fn a_hint_survives_its_round_trip(millis in any::<u64>()) {
            let reason = hinted_reason(Duration::from_millis(millis));
            prop_assert!(reason.len() <= 123, "a close reason fits in a control frame");
            prop_assert!(reason.starts_with(SHUTDOWN_REASON));
            prop_assert_eq!(parse_reconnect_hint(&reason), Some(Duration::from_millis(millis)));
        }

        #[test]
        fn parsing_any_reason_never_panics(reason in ".{0,200}") {
            let _ = parse_reconnect_hint(&reason);
        }
    }

    #[test]
    fn each_socket_gets_the_hint_plus_its_own_jitter() {
        let after = Duration::from_millis(1000);
        let options = DrainOptions::new(Duration::from_secs(5))
            .reconnect_hint(after, Duration::from_millis(500));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let request = options.close_request();
            assert_eq!(request.cause, CloseCause::Shutdown);
            let hint = request.reason.as_deref().and_then(parse_reconnect_hint);
            let Some(hint) = hint else {
                panic!("no hint in {:?}", request.reason);
            };
            assert!((after..=after + Duration::from_millis(500)).contains(&hint));
            seen.insert(hint);
        }
        assert!(seen.len() > 1, "the jitter is random");
        let no_jitter = DrainOptions::new(Duration::ZERO).reconnect_hint(after, Duration::ZERO);
        assert_eq!(
            no_jitter.close_request().reason.as_deref(),
            Some("server shutting down; reconnect_after_ms=1000")
        );
        assert_eq!(
            DrainOptions::new(Duration::ZERO).close_request().reason,
            None
        );
    }

    #[test]
    fn options_have_documented_defaults() {
        let options: DrainOptions = Duration::from_secs(3).into();
        assert_eq!(options, DrainOptions::new(Duration::from_secs(3)));
        assert_eq!(options.retry_after, Duration::from_secs(1));
        assert_eq!(options.hint, None);
    }

    fn handshake() -> Request<Body> {
        Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Body::empty())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_layer_registers_handshakes_until_the_drain_begins() {
        let drain = Drain::new();
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response>();
        let svc = drain.layer().layer(mock);
        let call = tokio::spawn(svc.clone().oneshot(handshake()));
        let Some((req, respond)) = handle.next_request().await else {
            panic!("the handshake reached the inner service");
        };
        assert!(req.extensions().get::<DrainTicket>().is_some());
        assert_eq!(drain.live(), 1, "registered while in flight");
        drop(req);
        respond.send_response(Response::new(Body::empty()));
        assert!(matches!(call.await, Ok(Ok(_))));
        assert_eq!(drain.live(), 0, "a handshake that is not upgraded leaves");

        let plain = tokio::spawn(svc.clone().oneshot(Request::new(Body::empty())));
        let Some((req, respond)) = handle.next_request().await else {
            panic!("the plain request reached the inner service");
        };
        assert!(req.extensions().get::<DrainTicket>().is_none());
        respond.send_response(Response::new(Body::empty()));
        assert!(matches!(plain.await, Ok(Ok(_))));

        let report = drain.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report, DrainReport::default());
        let refused = drain
            .layer()
            .layer(tower::service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }))
            .oneshot(handshake())
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            refused.extensions().get::<Rejection>(),
            Some(Rejection::Drain(DrainError::Draining { .. }))
        ));
        assert!(format!("{drain:?}").contains("draining: true"));
    }

    #[tokio::test]
    async fn started_resolves_once_the_drain_begins() {
        let drain = Drain::new();
        let started = tokio::spawn(drain.started());
        tokio::task::yield_now().await;
        assert!(!started.is_finished());
        let _ = drain.shutdown(Duration::ZERO).await;
        assert!(started.await.is_ok());
        // And at once afterwards.
        drain.started().await;
    }
}
