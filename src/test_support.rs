//! Helpers shared by the unit tests.

use std::{cell::RefCell, marker::PhantomData, sync::Once};

use tracing_subscriber::{
    Layer,
    layer::{Context, SubscriberExt},
};

thread_local! {
    static EVENTS: RefCell<Option<Vec<Event>>> = const { RefCell::new(None) };
}

/// One captured `tracing` event: its name and its fields as `name=debug ` pairs.
pub(crate) type Event = (String, String);

/// Routes each event to the capture of the thread that emitted it, if any.
struct ThreadCapture;

impl<S: tracing::Subscriber> Layer<S> for ThreadCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        EVENTS.with(|events| {
            if let Some(events) = events.borrow_mut().as_mut() {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                events.push((event.metadata().name().to_owned(), fields.0));
            }
        });
    }
}

/// Captures the events emitted on this thread until dropped (use a current-thread runtime for
/// async code).
///
/// A process-wide subscriber, installed once, does the routing. A thread-local
/// `with_default` subscriber is not enough when tests run in parallel: `tracing` caches each
/// callsite's interest process-wide, and a callsite first reached on a thread without a
/// subscriber is cached as "never", so a capturing test on another thread would miss it.
pub(crate) struct Capture {
    _not_send: PhantomData<*const ()>,
}

pub(crate) fn capture() -> Capture {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(ThreadCapture);
        // Only fails if a global subscriber exists already; then events still flow to it.
        let _ = tracing::subscriber::set_global_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
    });
    EVENTS.with(|events| *events.borrow_mut() = Some(Vec::new()));
    Capture {
        _not_send: PhantomData,
    }
}

impl Capture {
    /// The events captured so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        EVENTS.with(|events| events.borrow().clone().unwrap_or_default())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        EVENTS.with(|events| *events.borrow_mut() = None);
    }
}

/// A non-zero test constant of any `NonZero` type (`NonZeroU32`, `NonZeroU64`,
/// `NonZeroUsize`, ...), for the setters that take one.
///
/// # Panics
///
/// On zero or a value that does not fit: a mistake in the test itself.
pub(crate) fn nz<N: TryFrom<std::num::NonZeroU64>>(n: impl TryInto<u64>) -> N {
    n.try_into()
        .ok()
        .and_then(std::num::NonZeroU64::new)
        .and_then(|n| N::try_from(n).ok())
        .expect("nz: not a non-zero value of the target type")
}

/// A WebSocket handshake to `/ws` on `api.example.com` from `origin`, with a bearer `token`
/// when given, from `peer` (as `ConnectInfo`), with the body `body`.
pub(crate) fn handshake<B>(
    origin: &str,
    token: Option<&str>,
    peer: [u8; 4],
    body: B,
) -> http::Request<B> {
    let mut req = http::Request::get("/ws")
        .header("host", "api.example.com")
        .header("origin", origin)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let mut req = req
        .body(body)
        .unwrap_or_else(|e| panic!("a valid request: {e}"));
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            peer, 50000,
        ))));
    req
}
