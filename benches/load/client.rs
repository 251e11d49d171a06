//! The load generator: tokio-tungstenite clients on loopback, every loop bounded in time.

use std::{
    error::Error,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt, stream};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
    time::MissedTickBehavior,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig,
    },
};

pub(crate) type Ws = WebSocketStream<tokio::net::TcpStream>;
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// Where and how to open sockets.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// `Authorization: Bearer` credential, if the server wants one.
    pub(crate) token: Option<String>,
}

/// Source addresses 127.0.0.2 ..= 127.0.0.251 in turn: each has its own ephemeral port
/// range, so churn and 10k sockets do not run out of ports on one address.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8)
}

/// Opens one WebSocket (with the bench `Origin` and the token, if any).
pub(crate) async fn connect(target: &Target) -> Result<Ws, BoxError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((next_source(), 0)))?;
    let tcp = tokio::time::timeout(Duration::from_secs(30), socket.connect(target.addr))
        .await
        .map_err(|_| "connect timed out")??;
    tcp.set_nodelay(true)?;
    let mut request = format!("ws://{}/ws", target.addr).into_client_request()?;
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static(crate::server::ORIGIN));
    if let Some(token) = &target.token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    // Small client buffers: the generator holds 10k sockets too.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config)),
    )
    .await
    .map_err(|_| "handshake timed out")??;
    Ok(ws)
}

/// Opens `n` sockets, `concurrency` at a time; returns those that opened and the failures.
pub(crate) async fn connect_many(
    target: &Target,
    n: usize,
    concurrency: usize,
) -> (Vec<Ws>, usize) {
    let results: Vec<_> = stream::iter(0..n)
        .map(|_| connect(target))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut failed = 0;
    let mut sockets = Vec::with_capacity(n);
    for result in results {
        match result {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                if failed == 0 {
                    eprintln!("    connect failed: {e}");
                }
                failed += 1;
            }
        }
    }
    (sockets, failed)
}

/// The result of the handshake scenario.
#[derive(Clone, Debug)]
pub(crate) struct Handshakes {
    pub(crate) per_second: f64,
    /// Mean time from `connect` to the upgraded socket.
    pub(crate) open_ms: f64,
    /// Mean time from sending the close frame to the end of the stream.
    pub(crate) close_ms: f64,
    pub(crate) failed: u64,
}

/// Scenario 1: `clients` loops of connect, close handshake, wait for the server to hang up.
pub(crate) async fn handshakes(target: &Target, clients: usize, secs: f64) -> Handshakes {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (open_us, close_us) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (target, done, failed) = (target.clone(), done.clone(), failed.clone());
        let (open_us, close_us) = (open_us.clone(), close_us.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let result: Result<(), BoxError> = async {
                    let t0 = Instant::now();
                    let mut ws = connect(&target).await?;
                    let t1 = Instant::now();
                    ws.close(None).await?;
                    // The server answers the close frame and drops the connection.
                    while let Some(msg) = ws.next().await {
                        if msg.is_err() {
                            break;
                        }
                    }
                    open_us.fetch_add((t1 - t0).as_micros() as u64, Relaxed);
                    close_us.fetch_add(t1.elapsed().as_micros() as u64, Relaxed);
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => done.fetch_add(1, Relaxed),
                    Err(_) => failed.fetch_add(1, Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Relaxed).max(1) as f64;
    Handshakes {
        per_second: done.load(Relaxed) as f64 / elapsed,
        open_ms: open_us.load(Relaxed) as f64 / n / 1000.0,
        close_ms: close_us.load(Relaxed) as f64 / n / 1000.0,
        failed: failed.load(Relaxed),
    }
}

/// Throughput and latency of one measurement.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) failed: u64,
}

/// Percentile (0..=100) of sorted samples in microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

pub(crate) fn summarise(mut samples: Vec<u32>, secs: f64, failed: u64) -> Rate {
    samples.sort_unstable();
    Rate {
        per_second: samples.len() as f64 / secs,
        p50_ms: percentile_ms(&samples, 50),
        p99_ms: percentile_ms(&samples, 99),
        failed,
    }
}

/// Scenario 2: `conns` sockets each sending `size`-byte binary messages and waiting for the
/// echo, for a warm-up second and then `secs` measured seconds.
pub(crate) async fn echo(target: &Target, conns: usize, size: usize, secs: f64) -> Rate {
    let (sockets, mut failed) = connect_many(target, conns, 16).await;
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs_f64(secs);
    let payload = bytes::Bytes::from(vec![0x5a_u8; size]);
    let mut tasks = JoinSet::new();
    for mut ws in sockets {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    return (samples, 1);
                }
                let echoed = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Binary(b))) => return b.len() == payload.len(),
                            Some(Ok(_)) => {}
                            _ => return false,
                        }
                    }
                })
                .await;
                if echoed != Ok(true) {
                    return (samples, 1);
                }
                if sent >= warm_end {
                    let rtt = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    samples.push(rtt);
                }
            }
            let _ = ws.close(None).await;
            (samples, 0)
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Ok((samples, f)) = result {
            all.extend(samples);
            failed += f;
        }
    }
    summarise(all, secs, failed as u64)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `ts` (ms since the epoch) of a `{"type":"price",..}` update, without a full parse.
fn price_ts(text: &str) -> Option<u64> {
    if !text.starts_with("{\"type\":\"price\"") {
        return None;
    }
    let rest = &text[text.find("\"ts\":")? + 5..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Fan-out subscribers: every socket counts the price updates it receives while `measuring`
/// is set and records each one's delivery latency (receipt minus the update's `ts`).
#[derive(Debug)]
pub(crate) struct Subscribers {
    target: Target,
    measuring: Arc<AtomicBool>,
    samples: Vec<Arc<Mutex<Vec<u32>>>>,
    closed: Arc<AtomicU64>,
    tasks: JoinSet<()>,
    pub(crate) failed: usize,
}

impl Subscribers {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            measuring: Arc::new(AtomicBool::new(false)),
            samples: Vec::new(),
            closed: Arc::new(AtomicU64::new(0)),
            tasks: JoinSet::new(),
            failed: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// Sockets that ended before the harness closed them.
    pub(crate) fn closed_early(&self) -> u64 {
        self.closed.load(Relaxed)
    }

    /// Opens sockets until there are `total`.
    pub(crate) async fn grow_to(&mut self, total: usize) {
        let missing = total.saturating_sub(self.len() + self.failed);
        let (sockets, failed) = connect_many(&self.target, missing, 32).await;
        self.failed += failed;
        for mut ws in sockets {
            let store = Arc::new(Mutex::new(Vec::new()));
            self.samples.push(store.clone());
            let (measuring, closed) = (self.measuring.clone(), self.closed.clone());
            self.tasks.spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if !measuring.load(Relaxed) {
                        continue;
                    }
                    if let Message::Text(text) = msg
                        && let Some(ts) = price_ts(text.as_str())
                    {
                        let latency = now_us().saturating_sub(ts * 1000);
                        if let Ok(mut s) = store.lock() {
                            s.push(latency.min(u64::from(u32::MAX)) as u32);
                        }
                    }
                }
                closed.fetch_add(1, Relaxed);
            });
        }
    }

    /// Measures deliveries for `secs` after `warm` seconds of settling.
    pub(crate) async fn measure(&mut self, warm: f64, secs: f64) -> Rate {
        for s in &self.samples {
            if let Ok(mut s) = s.lock() {
                s.clear();
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(warm)).await;
        self.measuring.store(true, Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        self.measuring.store(false, Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let mut all = Vec::new();
        for s in &self.samples {
            if let Ok(mut s) = s.lock() {
                all.append(&mut s);
            }
        }
        summarise(all, elapsed, self.failed as u64 + self.closed_early())
    }

    /// Closes every socket.
    pub(crate) async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Publishes price updates as `POST /prices` over one keep-alive HTTP/1.1 connection: the
/// stock ticker's own update path (database commit, then fan-out), and the naive server's.
#[derive(Debug)]
pub(crate) struct Publisher {
    stream: BufReader<TcpStream>,
    target: Target,
    prices: [f64; 8],
    sent: u64,
    /// This publisher's place among `of` publishers.
    index: usize,
    of: usize,
}

impl Publisher {
    /// Publisher `index` of `of` publishes its own symbols (`index`, `index + of`, ..), so
    /// two publishers never post the same symbol at the same moment (the stock ticker
    /// conflates queued updates of one symbol), and starts a fraction of a period later.
    pub(crate) async fn connect(
        target: &Target,
        index: usize,
        of: usize,
    ) -> Result<Self, BoxError> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(tcp),
            target: target.clone(),
            prices: [100.0; 8],
            sent: 0,
            index,
            of: of.clamp(1, 8),
        })
    }

    /// One update: the next symbol in turn, its price a step of a random walk.
    async fn post(&mut self) -> Result<(), BoxError> {
        let own = (8 / self.of).max(1);
        let i = (self.index + self.of * (self.sent as usize % own)) % 8;
        self.sent += 1;
        let wiggle = ((self.sent.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 100) as f64;
        self.prices[i] =
            (self.prices[i] * (1.0 + (wiggle - 49.5) / 10_000.0) * 100.0).round() / 100.0;
        let body = format!(
            r#"{{"symbol":"{}","price":{}}}"#,
            crate::server::SYMBOLS[i],
            self.prices[i]
        );
        let auth = self
            .target
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /prices HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.target.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        if line.split_whitespace().nth(1) != Some("200") {
            return Err(format!("POST /prices answered {line:?}").into());
        }
        let mut length = 0;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err("the server closed the publishing connection".into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(())
    }

    /// Posts `hz` updates a second for `secs` seconds (fewer if the server answers slower);
    /// returns how many were published.
    pub(crate) async fn run(&mut self, hz: f64, secs: f64) -> Result<u64, BoxError> {
        let period = Duration::from_secs_f64(1.0 / hz);
        let offset = period.mul_f64(self.index as f64 / self.of as f64);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut posted = 0;
        while Instant::now() < end {
            interval.tick().await;
            self.post().await?;
            posted += 1;
        }
        Ok(posted)
    }
}
