//! Limits enforced on the live, upgraded socket: size, rate, idle, heartbeat, credential
//! expiry, lifetime and send backpressure; and the graceful drain of every socket at shutdown.
//!
//! The handshake layers only guard the door. Once upgraded, a client could send a 64 MiB
//! message (axum's default limit), thousands of messages a second, or stop reading while the
//! server buffers pushes without bound, and a credential could expire while the socket lives
//! on for hours. A tower layer cannot wrap axum's upgraded connection, so the policy travels
//! as a request extension:
//!
//! 1. [`SocketPolicyLayer`] puts a [`SocketPolicy`] into the request extensions;
//! 2. the [`GuardedUpgrade`] extractor (validating the handshake with axum's
//!    `WebSocketUpgrade`) performs the upgrade itself, with an adapter under the WebSocket
//!    protocol that counts frames on the wire, applies the size and buffer limits, takes the
//!    quota [`ConnectionPermit`] and reads the [`Principal`] and [`ClientIp`];
//! 3. the [`GuardedSocket`] handed to the handler (a `Stream` + `Sink` of axum `Message`s)
//!    enforces the rest, and holds the permit until the socket ends.
//!
//! Handlers keep the axum feel: `async fn ws(up: GuardedUpgrade) -> Response {
//! up.on_upgrade(handle) }`. A route that needs no limits can keep using axum's plain
//! `WebSocketUpgrade` under the layer.
//!
//! # Example
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{
//!     num::{NonZeroU64, NonZeroUsize},
//!     time::Duration,
//! };
//!
//! use axum::{Router, body::Body, response::Response, routing::{any, post}};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_http::limit::RequestBodyLimitLayer;
//! use wsguard::socket::{GuardedSocket, GuardedUpgrade, MessageRate, SlowConsumer, SocketPolicyLayer};
//!
//! const MAX_MESSAGE: NonZeroUsize = NonZeroUsize::new(16 * 1024).unwrap();
//! const PER_SECOND: NonZeroU64 = NonZeroU64::new(20).unwrap();
//! const BURST: NonZeroU64 = NonZeroU64::new(40).unwrap();
//! const QUEUE_MESSAGES: NonZeroUsize = NonZeroUsize::new(128).unwrap();
//! const QUEUE_BYTES: NonZeroUsize = NonZeroUsize::new(512 * 1024).unwrap();
//!
//! async fn ws(up: GuardedUpgrade) -> Response {
//!     up.on_upgrade(echo)
//! }
//!
//! async fn echo(mut socket: GuardedSocket) {
//!     while let Some(Ok(msg)) = socket.recv().await {
//!         if socket.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//! }
//!
//! let policy = SocketPolicyLayer::new()
//!     .max_message_size(MAX_MESSAGE)
//!     .message_rate(MessageRate::per_second(PER_SECOND).with_burst(BURST))
//!     .idle_timeout(Duration::from_secs(300))
//!     .heartbeat(Duration::from_secs(20), Duration::from_secs(10))
//!     .send_queue(QUEUE_MESSAGES, QUEUE_BYTES)
//!     .slow_consumer(SlowConsumer::DropOldest);
//!
//! let app = Router::new()
//!     .route("/ws", any(ws))
//!     .layer(policy)
//!     // Other routes take HTTP bodies: tower-http limits those (413).
//!     .merge(
//!         Router::new()
//!             .route("/upload", post(|body: String| async move { body.len().to_string() }))
//!             .layer(RequestBodyLimitLayer::new(1024)),
//!     );
//!
//! // A WebSocket handshake passes the layer; `oneshot` cannot upgrade, so axum answers 426.
//! let handshake = Request::get("/ws")
//!     .header("connection", "upgrade")
//!     .header("upgrade", "websocket")
//!     .header("sec-websocket-version", "13")
//!     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!     .body(Body::empty())?;
//! let response = app.clone().oneshot(handshake).await?;
//! assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
//!
//! // A body over the limit on the HTTP route is refused with 413.
//! let upload = Request::post("/upload").body(Body::from(vec![b'x'; 2048]))?;
//! let response = app.oneshot(upload).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! # Ok(())
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
//! # }
//! ```
//!
//! # Limits and defaults
//!
//! | Limit | Default | On violation |
//! |---|---|---|
//! | message / frame size | 64 KiB / 64 KiB | close `1009` |
//! | frames per socket, on the wire (data, continuation and control alike) | 200/s, burst 400 | close `1008` |
//! | fragments per message (Node `ws`'s `maxFragments`: 131072) | 128 | close `1008` |
//! | message deadline (first byte to last of a message, or of any frame) | 10 s | close `1008` |
//! | read / write buffer | 1 KiB / 4 KiB (tungstenite: 128 KiB each); the connection is read in 64 KiB steps into pooled buffers | — |
//! | messages per socket | 50/s, burst 100 | drop and count, or close `1008` |
//! | bytes per socket | 512 KiB/s, burst 1 MiB | same |
//! | messages per identity (all its sockets) | 200/s, burst 400 | same |
//! | bytes per identity | 2 MiB/s, burst 4 MiB | same |
//! | escalation | close `1008` at the 20th message over a limit | — |
//! | idle (no text or binary message) | off | close `1001` |
//! | heartbeat (16 random bytes a ping; only the pong of the ping last written counts) | ping every 30 s, pong within 15 s | close `1001` |
//! | credential expiry ([`Principal::expires_at`]) | on when the principal has one | close `1008` |
//! | revocation ([`CloseSignal`] in the request extensions) | on when a layer adds one | close `1008` |
//! | shutdown ([`Drain`], see [below](#graceful-drain)) | on when a [`DrainLayer`] registers the handshake | close `1001`, optional reconnect hint |
//! | max lifetime | off; jitter a tenth of it | close `1001` |
//! | send queue | 64 messages, 1 MiB | [`SlowConsumer`]: close `1013`, drop oldest or conflate |
//! | receive queue | 16 messages; reading pauses while it is full, at most 1 s (`recv_stall`) | then more are read and dropped, counted in [`SocketStats::dropped_unread`] |
//!
//! The message and byte limits count every message the peer sends (pongs answering the
//! heartbeat excepted), so a ping flood is limited like a message flood. The wire limits
//! count below the message level, where tungstenite would hide them: a message sent as
//! endless empty continuation frames never grows, never completes and is never a message,
//! yet each frame costs a header to parse. They are checked as the bytes arrive; the offending
//! frame and everything after it never reaches the protocol.
//!
//! **Heartbeat**: a ping carries 16 bytes from the OS's random source, and the deadline runs
//! from when the ping is due, not written. A pong answers it only if its payload is that of
//! the last ping actually written to the connection, so a peer that stops reading cannot keep
//! the socket open with guessed pongs; other pongs are delivered like any other frame (and
//! count against the rates).
//!
//! **Credential refresh**: when the application accepts a fresh credential in-band (say a
//! `{"type":"refresh","token":..}` message it verified itself), it calls
//! [`GuardedSocket::refresh_credential`] with the new [`Principal`]; the socket's expiry
//! moves to the new one. The subject must not change.
//!
//! **Backpressure**: sending never waits. Messages go into the socket's bounded send queue
//! and a driver writes them as fast as the peer reads; when the queue is full the
//! [`SlowConsumer`] policy decides. With [`SlowConsumer::Conflate`],
//! [`GuardedSocket::send_keyed`] (or [`Sender::send_keyed`] from another task) keeps only the
//! latest queued message per key, such as the latest price per symbol. On the receiving side
//! the receive queue holds 16 messages for the application. When it is full the driver stops
//! reading, so TCP pushes back on the peer and a handler that is only briefly slow loses
//! nothing, but for at most [`recv_stall`](SocketPolicyLayer::recv_stall) (1 s): with TCP,
//! pausing the data pauses the pongs and the close frames too, and the heartbeat, idle, expiry
//! and wire limits must hold whatever the application does (a push-only handler never calls
//! `recv`). Their deadlines keep running during the pause; once it is over, the driver reads on
//! and drops what does not fit until the application takes a message
//! ([`SocketStats::dropped_unread`], one `wsguard.socket.dropped` event with
//! `cause = "receive_queue_full"` on the 1st, 2nd, 4th, 8th… drop); a close from the peer
//! always gets through. The message and byte rates bound how fast a peer can make the server
//! read; an application that must not lose messages keeps calling `recv` (or raises
//! [`recv_queue`](SocketPolicyLayer::recv_queue)). Either way a peer cannot grow server
//! memory without bound.
//!
//! **Fan-out**: a push service publishes through a [`FanOut`] (topics by key; subscribe and
//! unsubscribe per socket). A publish queues one message, serialised once, straight into the
//! send queue of every subscriber under that socket's [`SlowConsumer`] policy, and wakes only
//! its driver: no task per subscriber, no per-socket broadcast receiver, and the publisher
//! never waits on a slow socket. Subscriptions end with the socket.
//!
//! # Memory
//!
//! An idle guarded socket costs about 3.9 KiB of the server's memory (bare axum: about
//! 130 KiB; measured with the load harness, see `BENCHMARKS.md`): the socket's task (the
//! driver, tungstenite's state and the handler's future), tungstenite's 1 KiB read buffer,
//! the shared send/receive state and the connection. The read buffer that matters for speed
//! is not per socket: the adapter under the protocol reads the connection in 64 KiB steps
//! into a buffer lent by a per-thread pool (a few are kept per thread), and gives it back as
//! soon as everything read has been passed up, so a large message takes as few system calls
//! as with a large buffer of its own. What is not pooled: tungstenite may keep the capacity of
//! the largest frame it has read, and its write buffer that of the largest burst it has written,
//! until the socket ends.
//!
//! # Graceful drain
//!
//! axum's `serve`, even `with_graceful_shutdown`, does not wait for upgraded connections
//! (axum issue #3003): it returns while the sockets still run, `main` returns, and the
//! runtime drops them without a close frame; their quota leases stay in Redis until they
//! expire. A [`Drain`] handle, given to the stack with
//! [`WsGuard::drain`](crate::WsGuard::drain) (or [`Drain::layer`] outermost in a hand-made
//! stack), knows every guarded socket, and [`Drain::shutdown`]:
//!
//! 1. refuses new handshakes with `503` and `Retry-After` ([`Rejection::Drain`], answered
//!    through the guard's `on_rejection` hook like every refusal); other requests pass;
//! 2. sends every socket `1001 Going Away` ([`CloseCause::Shutdown`]), through the driver
//!    path a revocation's `1008` takes, so the close is delivered as every policy close is;
//!    sockets whose handshake is still in flight close as soon as they open;
//! 3. waits until they all ended or the deadline passed, then aborts the tasks of the rest,
//!    which drops their connections and their [`ConnectionPermit`]s;
//! 4. waits until their fleet leases are released in Redis (each release is bounded by the
//!    fleet's timeout), so the process may exit at once;
//! 5. returns a [`DrainReport`]: how many sockets closed and how many were forced.
//!
//! **Reconnect hint**: with [`DrainOptions::reconnect_hint`]`(after, jitter)` each socket's
//! close reason is `server shutting down; reconnect_after_ms=<N>`, `N` being `after` plus a
//! random part of `jitter` drawn for that socket, so clients do not all reconnect at the same
//! moment; [`parse_reconnect_hint`] reads it (the format is documented there). Without it the
//! reason is `server shutting down`.
//!
//! The drain's future fits axum's `with_graceful_shutdown`: the server keeps serving while
//! the sockets close (new handshakes get `503`), then stops accepting and finishes the HTTP
//! connections; `serve` returns once both are done. [`Drain::started`] resolves when a drain
//! begins, for code that must stop with it (an accept loop, a readiness probe).
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{net::SocketAddr, time::Duration};
//!
//! use axum::{Router, body::Body, extract::ConnectInfo, response::Response, routing::any};
//! use http::{Request, StatusCode, header};
//! use tower::ServiceExt;
//! use wsguard::{
//!     WsGuard,
//!     auth::StaticTokens,
//!     socket::{Drain, DrainOptions, GuardedSocket, GuardedUpgrade},
//! };
//!
//! async fn ws(up: GuardedUpgrade) -> Response {
//!     up.on_upgrade(|mut socket: GuardedSocket| async move {
//!         while let Some(Ok(_)) = socket.recv().await {}
//!     })
//! }
//!
//! let drain = Drain::new();
//! let guard = WsGuard::new(StaticTokens::new().token("s3cret-token", "alice", ())).drain(&drain);
//! let app = Router::new().route("/ws", any(ws)).layer(guard);
//!
//! // `main`: serve until the stop signal, then drain the sockets before returning.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>(); // tokio::signal::ctrl_c() in a real server
//! let handle = drain.clone();
//! let server = tokio::spawn(
//!     axum::serve(listener, app.clone().into_make_service_with_connect_info::<SocketAddr>())
//!         .with_graceful_shutdown(async move {
//!             let _ = stopped.await;
//!             let options = DrainOptions::new(Duration::from_secs(10))
//!                 .reconnect_hint(Duration::from_secs(1), Duration::from_secs(4));
//!             let report = handle.shutdown(options).await;
//!             println!("{} sockets closed, {} forced", report.closed, report.forced);
//!         })
//!         .into_future(),
//! );
//! let _ = stop.send(());
//! server.await??;
//!
//! // Once draining, a handshake is refused with 503 and Retry-After.
//! let mut handshake = Request::get("/ws")
//!     .header("connection", "upgrade")
//!     .header("upgrade", "websocket")
//!     .header("sec-websocket-version", "13")
//!     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!     .header("authorization", "Bearer s3cret-token")
//!     .body(Body::empty())?;
//! handshake.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 50000))));
//! let response = app.oneshot(handshake).await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()[header::RETRY_AFTER], "1");
//! assert!(drain.is_draining());
//! # Ok(())
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
//! # }
//! ```
//!
//! Only sockets upgraded by [`GuardedUpgrade`] are drained: a route using axum's plain
//! `WebSocketUpgrade` under the layer is not known to the drain. A task that blocks its
//! thread cannot be aborted until it yields (tokio's rule); the drain gives up on it a
//! second after the deadline and counts it as forced.
//!
//! # Events
//!
//! Each enforcement emits one `tracing` event with the fields `cause` (see
//! [`CloseCause::as_str`]), `client_ip`, `identity`, `limit` and `close_code`, and never
//! message contents:
//! - `wsguard.socket.closed` (info) when the policy closes a socket;
//!   The wire limits close with the causes `frame_rate`, `fragments` and
//!   `message_deadline`;
//! - `wsguard.socket.draining` (info, with `sockets` and `deadline_ms`) when a drain begins,
//!   `wsguard.socket.drain_forced` (warn, `sockets`) when its deadline forces sockets, and
//!   `wsguard.socket.drained` (info, `closed` and `forced`) when it ends; each socket it
//!   closes logs `wsguard.socket.closed` with `cause = "shutdown"` at debug level only, and
//!   each handshake it refuses `wsguard.socket.refused` (debug, `cause = "draining"`);
//! - `wsguard.socket.dropped` (warn) when rate-limited received messages, received messages
//!   nobody reads (`receive_queue_full`) or slow-consumer queued messages are dropped, on the
//!   1st, 2nd, 4th, 8th… drop of a socket (with a `dropped` count), so a flood does not flood
//!   the logs.
//!
//! # Deployment
//!
//! Proxies in front of the server must pass WebSocket upgrades and usually have their own
//! idle timeout (nginx's `proxy_read_timeout`, 60 s by default): keep the heartbeat interval
//! below it. The identity and client address come from the auth and client-IP layers, which
//! must run before this one. HTTP/2 extended `CONNECT` (RFC 8441) is answered with `200` as
//! axum does, when the server enables it; each stream is a socket with its own policy (see
//! [HTTP/2](crate#http2)).
//!
//! At shutdown, a load balancer keeps sending new clients until its health check fails: make
//! the readiness probe fail from [`Drain::started`] on, so they go to other instances while
//! this one's clients, told to come back after the reconnect hint, land there too.
//!
//! [`ConnectionPermit`]: crate::rate_limit::ConnectionPermit
//! [`Rejection::Drain`]: crate::Rejection::Drain
//! [`Principal`]: crate::auth::Principal
//! [`Principal::expires_at`]: crate::auth::Principal::expires_at
//! [`ClientIp`]: crate::client_ip::ClientIp

mod drain;
mod driver;
mod error;
mod fanout;
mod guarded;
mod joined;
mod layer;
mod policy;
mod queue;
mod rate;
mod service;
mod signal;
mod upgrade;
mod wire;

pub use self::{
    drain::{
        Drain, DrainError, DrainLayer, DrainOptions, DrainReport, DrainService,
        parse_reconnect_hint,
    },
    error::{
        CloseCause, RateAction, RateScope, RefreshError, SendError, SlowConsumer, SocketStats,
    },
    fanout::{FanOut, Published},
    guarded::{GuardedSocket, Sender},
    layer::SocketPolicyLayer,
    policy::SocketPolicy,
    rate::MessageRate,
    service::SocketPolicyService,
    signal::CloseSignal,
    upgrade::GuardedUpgrade,
};

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use http::{Request, Response};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::test_support::nz;
    use std::{num::NonZeroU32, sync::Arc};

    #[test]
    fn duration_setters_raise_zero_to_the_minimum() {
        const MS: Duration = Duration::from_millis(1);
        const SEC: Duration = Duration::from_secs(1);
        struct Case {
            name: &'static str,
            layer: SocketPolicyLayer,
            read: fn(&policy::Config) -> Option<Duration>,
            expected: Option<Duration>,
        }
        let l = SocketPolicyLayer::new;
        let cases = [
            Case {
                name: "zero idle timeout is 1 ms",
                layer: l().idle_timeout(Duration::ZERO),
                read: |c| c.idle_timeout,
                expected: Some(MS),
            },
            Case {
                name: "no idle timeout stays off",
                layer: l().idle_timeout(None),
                read: |c| c.idle_timeout,
                expected: None,
            },
            Case {
                name: "a longer idle timeout is kept",
                layer: l().idle_timeout(SEC),
                read: |c| c.idle_timeout,
                expected: Some(SEC),
            },
            Case {
                name: "zero ping interval is 1 ms",
                layer: l().heartbeat(Duration::ZERO, SEC),
                read: |c| c.ping_interval,
                expected: Some(MS),
            },
            Case {
                name: "zero pong timeout is 1 ms",
                layer: l().heartbeat(SEC, Duration::ZERO),
                read: |c| Some(c.pong_timeout),
                expected: Some(MS),
            },
            Case {
                name: "sub-millisecond pong timeout is 1 ms",
                layer: l().heartbeat(SEC, Duration::from_micros(10)),
                read: |c| Some(c.pong_timeout),
                expected: Some(MS),
            },
            Case {
                name: "zero lifetime is 1 ms",
                layer: l().max_lifetime(Duration::ZERO),
                read: |c| c.max_lifetime,
                expected: Some(MS),
            },
            Case {
                name: "zero close timeout is 1 ms",
                layer: l().close_timeout(Duration::ZERO),
                read: |c| Some(c.close_timeout),
                expected: Some(MS),
            },
            Case {
                name: "a longer close timeout is kept",
                layer: l().close_timeout(SEC),
                read: |c| Some(c.close_timeout),
                expected: Some(SEC),
            },
        ];
        for case in cases {
            let policy = case.layer.policy();
            assert_eq!((case.read)(policy.config()), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn count_setters_take_non_zero_values() {
        let policy = SocketPolicyLayer::new()
            .max_message_size(nz(1))
            .max_frame_size(nz(2))
            .read_buffer_size(nz(3))
            .escalate_after(nz::<NonZeroU32>(4))
            .send_queue(nz(5), nz(6))
            .recv_queue(nz(7))
            .policy();
        let c = policy.config();
        assert_eq!(
            (
                c.max_message_size,
                c.max_frame_size,
                c.read_buffer_size,
                c.escalate_after,
                c.send_queue_len,
                c.send_queue_bytes,
                c.recv_queue_len,
            ),
            (1, 2, 3, Some(4), 5, 6, 7)
        );
        let never = SocketPolicyLayer::new().escalate_after(None).policy();
        assert_eq!(never.config().escalate_after, None);
    }

    #[test]
    fn close_causes_have_fixed_codes() {
        struct Case {
            cause: CloseCause,
            code: u16,
            name: &'static str,
        }
        let cases = [
            Case {
                cause: CloseCause::MessageTooBig,
                code: 1009,
                name: "message_too_big",
            },
            Case {
                cause: CloseCause::RateLimited(RateScope::IdentityBytes),
                code: 1008,
                name: "identity_byte_rate",
            },
            Case {
                cause: CloseCause::Idle,
                code: 1001,
                name: "idle",
            },
            Case {
                cause: CloseCause::HeartbeatTimeout,
                code: 1001,
                name: "heartbeat_timeout",
            },
            Case {
                cause: CloseCause::CredentialExpired,
                code: 1008,
                name: "credential_expired",
            },
            Case {
                cause: CloseCause::LifetimeElapsed,
                code: 1001,
                name: "lifetime",
            },
            Case {
                cause: CloseCause::SlowConsumer,
                code: 1013,
                name: "slow_consumer",
            },
            Case {
                cause: CloseCause::Revoked,
                code: 1008,
                name: "revoked",
            },
            Case {
                cause: CloseCause::Shutdown,
                code: 1001,
                name: "shutdown",
            },
        ];
        for case in cases {
            assert_eq!(case.cause.close_code(), case.code, "{}", case.name);
            assert_eq!(case.cause.as_str(), case.name);
            assert!(!case.cause.to_string().is_empty());
        }
    }

    #[test]
    fn lifetime_jitter_stays_within_bounds() {
        let mut cfg = policy::Config {
            max_lifetime: Some(Duration::from_secs(100)),
            ..Default::default()
        };
        for _ in 0..100 {
            let d = cfg.lifetime().unwrap();
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(100),
                "{d:?}"
            );
        }
        cfg.lifetime_jitter = Some(Duration::ZERO);
        assert_eq!(cfg.lifetime(), Some(Duration::from_secs(100)));
        cfg.lifetime_jitter = Some(Duration::from_secs(1000));
        assert!(
            cfg.lifetime().is_some(),
            "jitter larger than the lifetime is capped"
        );
        cfg.max_lifetime = None;
        assert_eq!(cfg.lifetime(), None);
    }

    #[tokio::test]
    async fn the_layer_inserts_one_shared_policy() {
        let layer = SocketPolicyLayer::new().max_message_size(nz(1234));
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            let size = req
                .extensions()
                .get::<SocketPolicy>()
                .map(|p| p.max_message_size());
            Ok::<_, Infallible>(Response::new(size))
        }));
        assert_eq!(svc.policy().max_message_size(), 1234);
        let response = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(*response.body(), Some(1234));
        assert!(format!("{layer:?}").contains("1234"));
        let other_route = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        assert!(
            Arc::ptr_eq(
                &svc.policy().inner.identities,
                &other_route.policy().inner.identities
            ),
            "routes of one layer share the per-identity state"
        );
    }

    #[tokio::test]
    async fn the_service_passes_through_to_a_mock() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
        let svc = SocketPolicyLayer::new().layer(mock);
        let call = tokio::spawn(svc.oneshot(Request::new(())));
        let (req, respond) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<SocketPolicy>().is_some());
        respond.send_response(Response::new(()));
        assert!(call.await.unwrap().is_ok());
    }
}
