//! An HTTP/2 WebSocket client (RFC 8441) on hyper's HTTP/2 client: one connection, any
//! number of extended `CONNECT` streams, each a WebSocket. Included with
//! `#[path = ".../common/h2.rs"] mod h2;` by the tests that need it.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, client::conn::http2, ext::Protocol, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

/// A WebSocket running over one HTTP/2 stream.
pub type H2Socket = WebSocketStream<TokioIo<Upgraded>>;

/// One HTTP/2 connection (prior knowledge over TCP, or `h2` negotiated by TLS ALPN).
/// Dropping it drops the TCP connection, with every socket on it.
pub struct H2Client {
    send: http2::SendRequest<Body>,
    /// `scheme://authority`, the `:scheme` and `:authority` of every request.
    base: String,
    /// hyper's tasks for this connection (the frame I/O, the dispatcher, the send side of
    /// each upgraded stream), aborted on drop.
    tasks: Tasks,
}

impl Drop for H2Client {
    fn drop(&mut self) {
        let tasks =
            std::mem::take(&mut *self.tasks.0.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
    }
}

/// Spawns hyper's tasks on tokio and keeps a handle to each.
#[derive(Clone, Default)]
struct Tasks(Arc<Mutex<Vec<tokio::task::AbortHandle>>>);

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let handle = tokio::spawn(future).abort_handle();
        let mut tasks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
    }
}

/// A refused handshake: its status, headers and body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl H2Client {
    /// The HTTP/2 handshake over `io`, then waits (bounded) until the server's `SETTINGS`
    /// allow extended `CONNECT`: a client may not send `:protocol` before that.
    pub async fn handshake<T>(io: T, base: &str) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tasks = Tasks::default();
        let (send, conn) = http2::Builder::new(tasks.clone())
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
        // hyper runs the frame I/O in a task of its own, so the flag is set there; `conn`
        // only dispatches requests. Poll it, bounded in count and time.
        let mut enabled = false;
        for _ in 0..2000 {
            if conn.is_extended_connect_protocol_enabled() {
                enabled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            enabled,
            "the server's SETTINGS did not enable extended CONNECT (RFC 8441)"
        );
        hyper::rt::Executor::execute(&tasks, async move {
            let _ = conn.await;
        });
        Self {
            send,
            base: base.trim_end_matches('/').to_owned(),
            tasks,
        }
    }

    /// Prior-knowledge HTTP/2 (h2c) to `addr`, with `authority` as `:authority`.
    pub async fn h2c(addr: std::net::SocketAddr, authority: &str) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self::handshake(tcp, &format!("http://{authority}")).await
    }

    /// `scheme://authority` of this connection's requests.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `request` on a new stream of this connection.
    pub async fn send(&mut self, request: Request<Body>) -> Response<Incoming> {
        self.send.ready().await.expect("connection usable");
        tokio::time::timeout(Duration::from_secs(10), self.send.send_request(request))
            .await
            .expect("response in time")
            .expect("response")
    }

    /// An extended `CONNECT` for `protocol` to `path`, with `Sec-WebSocket-Version: 13` and
    /// `headers`; `send` it, or change it first.
    pub fn connect_request(
        &self,
        path: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> Request<Body> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}{path}", self.base))
            .extension(Protocol::from_static(protocol))
            .header(header::SEC_WEBSOCKET_VERSION, "13");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::empty()).expect("valid request")
    }

    /// Opens a WebSocket on `path` on a new stream: the socket and the response headers, or
    /// the refusal.
    pub async fn websocket(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(H2Socket, HeaderMap), Refused> {
        let request = self.connect_request(path, "websocket", headers);
        let response = self.send(request).await;
        upgrade(response).await
    }
}

/// A `200` answer to an extended `CONNECT` becomes the WebSocket; anything else a [`Refused`].
pub async fn upgrade(mut response: Response<Incoming>) -> Result<(H2Socket, HeaderMap), Refused> {
    let status = response.status();
    if status != StatusCode::OK {
        let headers = response.headers().clone();
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024),
        )
        .await
        .expect("body in time")
        .expect("body");
        return Err(Refused {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let upgraded = tokio::time::timeout(Duration::from_secs(10), hyper::upgrade::on(&mut response))
        .await
        .expect("upgrade in time")
        .expect("the stream becomes the socket");
    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((socket, response.headers().clone()))
}

/// The value of `name` in `headers`, as text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}
