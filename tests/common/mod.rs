//! Helpers shared by the integration tests: start an example program, talk raw HTTP/1.1, read
//! JSON and close codes from a WebSocket, and a temporary directory.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

/// `target/<profile>/<name>`: the binary of a workspace example crate. `cargo test --workspace`
/// builds every crate's binaries before its tests; `cargo test -p <crate>` builds that crate's.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built: run through `cargo test --workspace --all-features`",
        path.display()
    );
    path
}

/// A running example, killed on drop.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
    /// The lines it prints on stdout after the one naming its address.
    pub stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Example {
    /// Sends `SIGTERM`, as a service manager stopping it does (`kill -TERM`).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the example is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// The next line printed on stdout that starts with `prefix`, skipping others; fails
    /// after 10 s or at the end of the output.
    pub async fn line_starting_with(&mut self, prefix: &str) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.stdout.recv().await {
                if line.starts_with(prefix) {
                    return line;
                }
            }
            panic!("the example printed no line starting with {prefix:?}");
        })
        .await
        .expect("the line in time")
    }
}

/// Starts an example with `args` (which should bind port 0) and waits for the line on stdout
/// that names its `http://` or `https://` address.
pub async fn start_example(name: &str, args: &[&str]) -> Example {
    start_example_with_env(name, args, &[]).await
}

/// A response as the tests need it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A fresh directory under the system temp directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `wsguard-<name>-<pid>-<nanos>`.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("wsguard-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// A file name inside the directory, as a UTF-8 string (for command lines).
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client socket over plain TCP or TLS.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next text message as JSON, skipping pings and pongs; fails after 10 s.
pub async fn next_json(socket: &mut Socket) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code (`None`: no close frame).
pub async fn close_code(
    socket: &mut Socket,
) -> Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// [`start_example`] with extra environment variables.
pub async fn start_example_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Example {
    let mut command = Command::new(example_path(name));
    command
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the example");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line
                .split_whitespace()
                .find(|word| word.starts_with("http://") || word.starts_with("https://"))
            {
                return url.to_owned();
            }
        }
        panic!("the example exited without naming its address");
    })
    .await
    .expect("banner in time");
    // Keep draining stdout so the example never blocks on a full pipe.
    let (tx, stdout) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("socket address");
    Example {
        child,
        addr,
        stdout,
    }
}

/// A WebSocket handshake to `/ws` (or `path`) sent by hand with the given `Host` and
/// `Origin` (a client library would not let the test pick `Host`). Returns the status and,
/// unless the answer is `101`, the body (read until the server closes).
pub async fn raw_handshake(
    addr: SocketAddr,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    if status == 101 {
        return (status, String::new());
    }
    let length: Option<usize> = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    let mut body = raw[head_end..].to_vec();
    while length.is_none_or(|len| body.len() < len) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A WebSocket client on a raw TCP stream: a hand-made handshake and hand-made masked frames,
/// for attacks a client library would not make. It reads only when asked, so it never answers
/// a ping by itself.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    mask: u32,
}

/// Opcodes of RFC 6455.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

impl RawWs {
    /// Upgrades `path` on `addr` with `headers` added; panics unless the answer is `101`.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawWs {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::upgrade(stream, addr, path, headers).await
    }

    /// Upgrades an open connection; panics unless the answer is `101`.
    pub async fn upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RawWs {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the handshake");
        let mut buf = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("read the answer");
                assert!(n > 0, "the server closed during the handshake: {buf:?}");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("handshake answered in time");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        buf.drain(..end);
        RawWs {
            stream,
            buf,
            mask: 0x1234_5678,
        }
    }

    /// One masked frame.
    pub fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        self.mask = self.mask.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let key = self.mask.to_be_bytes();
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// Writes one masked frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let frame = self.frame(fin, opcode, payload);
        self.stream.write_all(&frame).await
    }

    /// Reads the next frame from the server: `(fin, opcode, payload)`; `None` at the end of
    /// the stream or on an error.
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server's close frame (skipping everything else) and returns its code;
    /// `None` if the stream ended without one. Fails after 10 s.
    pub async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((_, op, payload)) = self.next_frame().await {
                if op == opcode::CLOSE {
                    return payload
                        .get(..2)
                        .map(|code| u16::from_be_bytes([code[0], code[1]]));
                }
            }
            None
        })
        .await
        .expect("the server closed in time")
    }
}

/// A frame as [`RawWs::next_frame`] returns it: `(fin, opcode, payload)`.
pub type RawFrame = (bool, u8, Vec<u8>);

/// Parses one unmasked frame at the start of `buf`: the frame and the bytes it took.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)?;
    let (len, mut at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some(((b0 & 0x80 != 0, b0 & 0x0F, payload), at + len))
}

/// Connects with the given Origin (or none) and returns the HTTP status of the handshake
/// answer, after checking that an accepted socket echoes (the origin tests and the echo
/// example's test).
pub async fn echo_handshake(addr: SocketAddr, origin: Option<&str>) -> http::StatusCode {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/ws"
        ))
        .expect("client request");
    if let Some(origin) = origin {
        request.headers_mut().insert(
            http::header::ORIGIN,
            http::HeaderValue::from_str(origin).expect("origin value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, response)) => {
            futures_util::SinkExt::send(
                &mut socket,
                tokio_tungstenite::tungstenite::Message::text("hello"),
            )
            .await
            .expect("send");
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                futures_util::StreamExt::next(&mut socket),
            )
            .await;
            assert_eq!(
                reply
                    .expect("echo in time")
                    .expect("a message")
                    .expect("no error"),
                tokio_tungstenite::tungstenite::Message::text("hello")
            );
            socket.close(None).await.expect("close");
            response.status()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            assert!(
                String::from_utf8_lossy(body).starts_with("forbidden: "),
                "plain-text reason, got {body:?}"
            );
            response.status()
        }
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

/// A non-zero test constant of any `NonZero` type (`NonZeroU32`, `NonZeroU64`,
/// `NonZeroUsize`, ...), for the setters that take one.
///
/// # Panics
///
/// On zero or a value that does not fit: a mistake in the test itself.
pub fn nz<N: TryFrom<std::num::NonZeroU64>>(n: impl TryInto<u64>) -> N {
    n.try_into()
        .ok()
        .and_then(std::num::NonZeroU64::new)
        .and_then(|n| N::try_from(n).ok())
        .expect("nz: not a non-zero value of the target type")
}

/// Serves `app` on 127.0.0.1 (with `ConnectInfo`) in the background; its address.
pub async fn serve_router(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A handler echoing every message through the guarded socket.
pub async fn echo(upgrade: wsguard::socket::GuardedUpgrade) -> axum::response::Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}
