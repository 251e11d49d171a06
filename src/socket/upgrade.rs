use std::{
    borrow::Cow,
    fmt,
    future::Future,
    sync::{Arc, Once},
};

use axum::{
    body::Body,
    extract::{
        FromRequestParts,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    response::Response,
};
use futures_util::{
    FutureExt,
    future::{self, Either},
};
use http::{HeaderValue, StatusCode, Version, header, request::Parts};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::{
    CloseSignal, GuardedSocket,
    drain::DrainTicket,
    driver,
    joined::Joined,
    policy::SocketPolicy,
    wire::{AxumMessages, WireIo, WireLimits, WireReport},
};
use crate::{auth::Principal, client_ip::ClientIp, rate_limit::ConnectionPermit};

/// Extractor for a WebSocket upgrade that applies the request's [`SocketPolicy`]: the
/// guarded counterpart of axum's `WebSocketUpgrade`.
///
/// It extracts axum's `WebSocketUpgrade` (and rejects exactly as it does), then performs the
/// upgrade itself, with an adapter under the WebSocket protocol that counts frames on the
/// wire (see the [module docs](crate::socket)). It also:
/// - reads the [`SocketPolicy`] put in the extensions by
///   [`SocketPolicyLayer`](super::SocketPolicyLayer). Without the layer it uses the
///   documented defaults and emits a `wsguard.socket.default_policy` debug event (a warning
///   the first time);
/// - **removes** the [`ConnectionPermit`] from the extensions and keeps it until the socket
///   ends, so the quota slot is released only then;
/// - reads [`Principal`] (identity and expiry) and [`ClientIp`] (log field), if present;
/// - **removes** the [`CloseSignal`], if a layer put one there, and attaches it to the socket
///   so that revoking it closes the socket with `1008`;
/// - **removes** the registration of a [`DrainLayer`](super::DrainLayer), if there is one,
///   and keeps it with the socket's task, so that the [`Drain`](super::Drain) closes the
///   socket with `1001`, waits for it, or ends its task by force at its deadline;
/// - sets the size and buffer limits on the upgrade;
/// - over HTTP/2 (RFC 8441), answers `200` and upgrades only an extended `CONNECT` whose
///   `:protocol` is `websocket`. Any other `CONNECT` is refused as not upgradable (`426`),
///   or with `400` by axum itself when its `http2` feature is on.
///
/// ```
/// use axum::response::Response;
/// use wsguard::socket::{GuardedSocket, GuardedUpgrade};
///
/// async fn ws(up: GuardedUpgrade) -> Response {
///     up.on_upgrade(echo)
/// }
///
/// async fn echo(mut socket: GuardedSocket) {
///     while let Some(Ok(msg)) = socket.recv().await {
///         if socket.send(msg).await.is_err() {
///             break;
///         }
///     }
/// }
/// # let _: axum::Router = axum::Router::new().route("/ws", axum::routing::any(ws));
/// ```
///
/// See the [module docs](crate::socket).
#[must_use]
pub struct GuardedUpgrade {
    inner: WebSocketUpgrade,
    /// hyper's upgrade future, cloned before axum's extractor takes it.
    on_upgrade: Option<OnUpgrade>,
    /// `None` for HTTP/2 (extended `CONNECT`).
    key: Option<HeaderValue>,
    policy: SocketPolicy,
    handoff: Handoff,
}

/// What the handshake's layers hand over to the socket.
#[derive(Debug)]
struct Handoff {
    permit: Option<ConnectionPermit>,
    principal: Option<Principal>,
    client_ip: Option<ClientIp>,
    signal: Option<CloseSignal>,
    /// Held until the socket's task ends (or is aborted): the drain waits for it.
    drain: Option<DrainTicket>,
}

impl fmt::Debug for GuardedUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedUpgrade")
            .field("inner", &self.inner)
            .field("http2", &self.key.is_none())
            .field("policy", &self.policy)
            .field("permit", &self.handoff.permit)
            .field("principal", &self.handoff.principal)
            .field("client_ip", &self.handoff.client_ip)
            .field("signal", &self.handoff.signal)
            .field("drain", &self.handoff.drain)
            .finish()
    }
}

impl<S> FromRequestParts<S> for GuardedUpgrade
where
    S: Send + Sync,
{
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.version >= Version::HTTP_2 && !is_websocket_protocol(parts) {
            // An HTTP/2 `CONNECT` is a WebSocket handshake only with `:protocol websocket`
            // (RFC 8441). axum checks this only with its `http2` feature, which a server
            // built on hyper directly need not enable: without the upgrade state, axum's
            // extractor refuses the request as not upgradable.
            parts.extensions.remove::<OnUpgrade>();
        }
        // `OnUpgrade` is a shared handle: axum's extractor validates the handshake (and its
        // rejections stay axum's) and takes its copy, which is then simply dropped.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let key = if parts.version <= Version::HTTP_11 {
            parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned()
        } else {
            None
        };
        let inner = WebSocketUpgrade::from_request_parts(parts, state).await?;
        let policy = match parts.extensions.get::<SocketPolicy>() {
            Some(policy) => policy.clone(),
            None => {
                static WARN: Once = Once::new();
                WARN.call_once(|| {
                    tracing::warn!(
                        name: "wsguard.socket.default_policy",
                        target: "wsguard::socket",
                        "GuardedUpgrade found no SocketPolicyLayer; using the default socket policy"
                    );
                });
                tracing::debug!(
                    name: "wsguard.socket.default_policy",
                    target: "wsguard::socket",
                    "GuardedUpgrade found no SocketPolicyLayer; using the default socket policy"
                );
                SocketPolicy::fallback()
            }
        };
        Ok(Self {
            inner,
            on_upgrade,
            key,
            policy,
            handoff: Handoff {
                permit: parts.extensions.remove::<ConnectionPermit>(),
                principal: parts.extensions.get::<Principal>().cloned(),
                client_ip: parts.extensions.get::<ClientIp>().copied(),
                signal: parts.extensions.remove::<CloseSignal>(),
                drain: parts.extensions.remove::<DrainTicket>(),
            },
        })
    }
}

impl GuardedUpgrade {
    /// The known subprotocols, in decreasing preference; see axum's
    /// `WebSocketUpgrade::protocols`.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Cow<'static, str>>,
    {
        self.inner = self.inner.protocols(protocols);
        self
    }

    /// The subprotocols requested by the client.
    pub fn requested_protocols(&self) -> impl Iterator<Item = &HeaderValue> {
        self.inner.requested_protocols()
    }

    /// The subprotocol chosen so far, if any.
    pub fn selected_protocol(&self) -> Option<&HeaderValue> {
        self.inner.selected_protocol()
    }

    /// The policy that will guard the socket.
    pub fn policy(&self) -> &SocketPolicy {
        &self.policy
    }

    /// The authenticated principal of the handshake, if any.
    pub fn principal(&self) -> Option<&Principal> {
        self.handoff.principal.as_ref()
    }

    /// The client address, if the client-IP layer recorded it.
    pub fn client_ip(&self) -> Option<ClientIp> {
        self.handoff.client_ip
    }

    /// Finishes the upgrade and calls `callback` with the [`GuardedSocket`]; like axum's
    /// `WebSocketUpgrade::on_upgrade`, the returned response must be returned by the
    /// handler. The callback and the socket's driver run in the same task.
    #[must_use = "to set up the WebSocket connection, this response must be returned"]
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(GuardedSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            inner,
            on_upgrade,
            key,
            policy,
            handoff,
        } = self;
        let cfg = policy.config();
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(cfg.max_message_size);
        config.max_frame_size = Some(cfg.max_frame_size);
        config.read_buffer_size = cfg.read_buffer_size;
        config.write_buffer_size = cfg.write_buffer_size;
        if let Some(max) = cfg.max_write_buffer_size {
            config.max_write_buffer_size = max;
        }
        let protocol = inner.selected_protocol().cloned();
        let response = switching_protocols(key.as_ref(), protocol.as_ref());
        crate::metrics::handshake_accepted();
        if let (Some(drain), Some(permit)) = (&handoff.drain, &handoff.permit) {
            drain.wait_for(permit.releases());
        }
        let drain = handoff.drain.clone();
        let socket = Setup {
            config,
            limits: cfg.wire(),
            drain_bytes: cfg.drain_bytes(),
            protocol,
            policy,
            handoff,
        };
        // Built from combinators rather than one `async` block: a block keeps everything it
        // captured for the socket's whole life, while each of these steps gives up its
        // state to the next, so the long-lived task holds little more than the driver and
        // the handler's future.
        let upgraded = match on_upgrade {
            Some(on_upgrade) => Either::Left(on_upgrade.map(|r| r.map_err(|e| e.to_string()))),
            None => Either::Right(future::ready(Err("connection not upgradable".to_owned()))),
        };
        let task = tokio::spawn(upgraded.then(move |upgraded| match upgraded {
            Ok(upgraded) => Either::Left(socket.run(upgraded, callback)),
            Err(error) => {
                tracing::debug!(
                    name: "wsguard.socket.upgrade_failed",
                    target: "wsguard::socket",
                    client_ip = socket.handoff.client_ip.map(|ip| ip.0.to_string()),
                    error,
                    "WebSocket upgrade failed"
                );
                Either::Right(future::ready(()))
            }
        }));
        if let Some(drain) = drain {
            drain.set_abort(task.abort_handle());
        }
        response
    }
}

/// What a socket is set up with once the connection is upgraded.
struct Setup {
    config: WebSocketConfig,
    limits: WireLimits,
    drain_bytes: u64,
    protocol: Option<HeaderValue>,
    policy: SocketPolicy,
    handoff: Handoff,
}

impl Setup {
    /// Runs the protocol over the wire adapter, and the driver beside the handler.
    fn run<C, Fut>(self, upgraded: Upgraded, callback: C) -> impl Future<Output = ()> + Send
    where
        C: FnOnce(GuardedSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let report = Arc::new(WireReport::default());
        let io = WireIo::new(
            TokioIo::new(upgraded),
            self.limits,
            self.drain_bytes,
            report.clone(),
        );
        WebSocketStream::from_raw_socket(io, Role::Server, Some(self.config)).then(move |ws| {
            let Handoff {
                permit,
                principal,
                client_ip,
                signal,
                drain,
            } = self.handoff;
            let (socket, driver) = driver::start(
                AxumMessages(ws),
                Some(report),
                self.protocol,
                self.policy,
                permit,
                principal,
                client_ip,
            );
            for signal in signal.iter().chain(drain.as_ref().map(DrainTicket::signal)) {
                signal.attach(driver::Driver::shared(&driver));
            }
            Joined::new(driver, callback(socket)).map(move |()| drop(drain))
        })
    }
}

/// Whether an HTTP/2 request's `:protocol` pseudo-header is `websocket`.
fn is_websocket_protocol(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|protocol| protocol.as_str() == "websocket")
}

/// The handshake answer, as axum gives it: `101 Switching Protocols` with
/// `Sec-WebSocket-Accept` over HTTP/1.1, `200` for HTTP/2's extended `CONNECT` (RFC 8441).
fn switching_protocols(key: Option<&HeaderValue>, protocol: Option<&HeaderValue>) -> Response {
    let mut response = Response::new(Body::empty());
    if let Some(key) = key {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    response
}
