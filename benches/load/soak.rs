//! The soak scenario (`--only soak --minutes N`): churn of guarded sockets against the stock
//! ticker for N minutes while prices flow, then everything closed and the server's counts
//! compared with their start values.
//!
//! Clients (`--soak-clients`, each a loop until the end):
//! - readers (18 in 20): open a socket, read prices for 2–20 s checking that every symbol's
//!   `seq` follows the snapshot's without a gap or repeat, close with a close handshake;
//! - slow readers (1 in 20): open a socket and never read it for 5–30 s, then drop it
//!   (the ticker's heartbeat closes the socket that stopped answering pings);
//! - abusers (1 in 20), in turn: a wrong token (`401`), a foreign origin (`403`), an
//!   oversized message (`1009`), a message flood (dropped over the rate limit, then closed
//!   `1008` at the 20th message over it), a broken frame (`1002`), a handshake that never
//!   completes (cut by the header-read timeout). They come from their own source addresses
//!   (malformed tokens from 127.0.0.254: `400`, or `429` once the brute-force throttle
//!   locks it out; the rest from 127.0.0.252–253), so no lock-out falls on the readers.
//!
//! Every `--soak-sample-secs` the harness records the ticker's VmRSS, open file descriptors
//! and, from its `/metrics`, `wsguard_sockets_open`, `wsguard_quota_active`, the ticker's open
//! connections and its live tokio tasks. Every loop is bounded in time.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use plotters::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

use crate::{
    Report,
    client::{self, BoxError, Publisher, Target},
};

/// What the soak counts, shared by every client.
#[derive(Debug, Default)]
struct Counts {
    sockets: AtomicU64,
    prices: AtomicU64,
    gaps: AtomicU64,
    reader_failures: AtomicU64,
    slow: AtomicU64,
    abuse_expected: AtomicU64,
    abuse_unexpected: AtomicU64,
}

/// One sample of the server's state.
#[derive(Clone, Debug, Default)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: u64,
    sockets_open: f64,
    quota_active: f64,
    connections_open: f64,
    tasks: f64,
}

impl Sample {
    fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            self.secs / 60.0,
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.sockets_open,
            self.quota_active,
            self.connections_open,
            self.tasks
        )
    }
}

/// The soak's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) minutes: f64,
    pub(crate) clients: usize,
    pub(crate) sample_secs: f64,
    pub(crate) tick_hz: f64,
}

/// A tiny xorshift: every client its own sequence of choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(1000 * from + self.below(1000 * (to - from)))
    }
}

pub(crate) async fn run(
    report: &mut Report,
    ticker: &Path,
    settings: Settings,
    out: &Path,
) -> Result<(), BoxError> {
    let metrics_addr = free_loopback_port()?;
    let metrics = metrics_addr.to_string();
    // The readers' login outlives the soak (the ticker's default is 15 minutes).
    let token_ttl = (settings.minutes * 60.0 + 600.0).ceil().to_string();
    let server = crate::start_ticker_with(
        ticker,
        &std::env::temp_dir(),
        &[
            "--heartbeat",
            "2",
            "--header-timeout",
            "2",
            "--metrics-addr",
            &metrics,
            "--token-ttl",
            &token_ttl,
        ],
    )
    .await?;
    let target = server.target.clone();
    let pid = server.child.id().ok_or("the ticker has no pid")?;
    let total = Duration::from_secs_f64(settings.minutes * 60.0);
    let start = Instant::now();
    let end = start + total;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = sample(pid, metrics_addr, 0.0).await?;
    eprintln!("    soak: start {baseline:?}");

    let mut publishers = JoinSet::new();
    for i in 0..crate::PUBLISHERS {
        let mut publisher = Publisher::connect(&target, i, crate::PUBLISHERS).await?;
        let hz = settings.tick_hz / crate::PUBLISHERS as f64;
        let secs = total.as_secs_f64();
        publishers.spawn(async move { publisher.run(hz, secs).await });
    }

    let counts = Arc::new(Counts::default());
    let mut clients = JoinSet::new();
    for i in 0..settings.clients {
        let (target, counts) = (target.clone(), counts.clone());
        clients.spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491));
            // Spread the first connections over the first few seconds.
            tokio::time::sleep(Duration::from_millis(rng.below(5_000))).await;
            while Instant::now() < end {
                match i % 20 {
                    0 => slow_reader(&target, &counts, &mut rng).await,
                    1 => abuse(&target, &counts, &mut rng, i / 20).await,
                    _ => reader(&target, &counts, &mut rng, end).await,
                }
            }
        });
    }

    let mut samples = vec![baseline.clone()];
    let period = Duration::from_secs_f64(settings.sample_secs.max(1.0));
    while Instant::now() + period <= end {
        tokio::time::sleep(period).await;
        let s = sample(pid, metrics_addr, start.elapsed().as_secs_f64()).await?;
        eprintln!(
            "    soak {:.1} min: RSS {:.1} MiB, {} fds, {} sockets, {} quota, {} tasks; {} sockets opened, {} prices, {} gaps",
            s.secs / 60.0,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.sockets_open,
            s.quota_active,
            s.tasks,
            counts.sockets.load(Relaxed),
            counts.prices.load(Relaxed),
            counts.gaps.load(Relaxed)
        );
        samples.push(s);
    }
    // Every client ends its current turn (each bounded to well under a minute).
    let joined = tokio::time::timeout(Duration::from_secs(90), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        clients.shutdown().await;
    }
    while let Some(posted) = publishers.join_next().await {
        posted??;
    }
    // The server closes what is left (heartbeats, header timeouts): wait for it, bounded.
    let mut last = sample(pid, metrics_addr, start.elapsed().as_secs_f64()).await?;
    for _ in 0..60 {
        if last.sockets_open == baseline.sockets_open
            && last.quota_active == baseline.quota_active
            && last.connections_open == baseline.connections_open
            && last.tasks == baseline.tasks
            && last.fds == baseline.fds
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = sample(pid, metrics_addr, start.elapsed().as_secs_f64()).await?;
    }
    samples.push(last.clone());

    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // Flat: the second half's highest RSS against the first half's.
    let half = samples.len() / 2;
    let first_peak = samples[..half.max(1)]
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let second_peak = samples[half..].iter().map(|s| s.rss_kib).max().unwrap_or(0);
    report.line(format!(
        "## 5. soak: {:.0} min, {} churning clients, {} updates/s (the stock ticker)",
        settings.minutes, settings.clients, settings.tick_hz
    ));
    report.line(
        "| when | min | RSS MiB | open fds | wsguard_sockets_open | wsguard_quota_active | ticker_connections_open | live tasks |",
    );
    report.line("|---|---|---|---|---|---|---|---|");
    report.line(baseline.row("start"));
    if let Some(busiest) = samples
        .iter()
        .max_by(|a, b| a.sockets_open.total_cmp(&b.sockets_open))
    {
        report.line(busiest.row("most sockets"));
    }
    report.line(last.row("end"));
    report.line("");
    let back = last.sockets_open == baseline.sockets_open
        && last.quota_active == baseline.quota_active
        && last.connections_open == baseline.connections_open
        && last.tasks == baseline.tasks
        && last.fds == baseline.fds;
    report.line(format!(
        "counts back to start: {}; RSS peak {:.1} MiB (first half {:.1}, second half {:.1})",
        if back { "yes" } else { "**no**" },
        peak as f64 / 1024.0,
        first_peak as f64 / 1024.0,
        second_peak as f64 / 1024.0
    ));
    report.line(format!(
        "sockets opened {}, prices read {}, seq gaps or repeats seen by readers {}, reader failures {}, slow readers {}, abuses refused as expected {} (unexpected {})",
        counts.sockets.load(Relaxed),
        counts.prices.load(Relaxed),
        counts.gaps.load(Relaxed),
        counts.reader_failures.load(Relaxed),
        counts.slow.load(Relaxed),
        counts.abuse_expected.load(Relaxed),
        counts.abuse_unexpected.load(Relaxed)
    ));
    std::fs::create_dir_all(out)?;
    let chart = out.join("soak.svg");
    draw(&chart, &settings, &samples)?;
    report.line(format!("chart: {}", chart.display()));
    report.line("");
    drop(server);
    Ok(())
}

/// A reader: one socket for 2–20 s (or until the end), checking each symbol's `seq`.
async fn reader(target: &Target, counts: &Counts, rng: &mut Rng, end: Instant) {
    let life = rng.secs(2, 20);
    let Ok(mut ws) = client::connect(target).await else {
        counts.reader_failures.fetch_add(1, Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    counts.sockets.fetch_add(1, Relaxed);
    let until = (Instant::now() + life).min(end.max(Instant::now()));
    let mut seqs: Vec<(String, u64)> = Vec::new();
    let ok = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break true;
        }
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => break true,
            Ok(Some(Ok(Message::Text(text)))) => check(&text, &mut seqs, counts),
            Ok(Some(Ok(_))) => {}
            Ok(_) => break false,
        }
    };
    if !ok {
        counts.reader_failures.fetch_add(1, Relaxed);
        return;
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: 1000.into(),
            reason: "".into(),
        }))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Checks a snapshot or price message against the last `seq` of its symbol.
fn check(text: &str, seqs: &mut Vec<(String, u64)>, counts: &Counts) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let mut note =
        |symbol: &str, seq: u64, snapshot: bool| match seqs.iter_mut().find(|(s, _)| s == symbol) {
            Some((_, last)) => {
                if seq <= *last && snapshot {
                    return;
                }
                if seq != *last + 1 {
                    counts.gaps.fetch_add(1, Relaxed);
                }
                *last = (*last).max(seq);
            }
            None => seqs.push((symbol.to_owned(), seq)),
        };
    match value["type"].as_str() {
        Some("snapshot") => {
            for p in value["prices"].as_array().into_iter().flatten() {
                if let (Some(symbol), Some(seq)) = (p["symbol"].as_str(), p["seq"].as_u64()) {
                    note(symbol, seq, true);
                }
            }
        }
        Some("price") => {
            if let (Some(symbol), Some(seq)) = (value["symbol"].as_str(), value["seq"].as_u64()) {
                counts.prices.fetch_add(1, Relaxed);
                note(symbol, seq, false);
            }
        }
        _ => {}
    }
}

/// A slow reader: opens a socket and does not read it for 5–30 s.
async fn slow_reader(target: &Target, counts: &Counts, rng: &mut Rng) {
    let hold = rng.secs(5, 30);
    if let Ok(ws) = client::connect(target).await {
        counts.sockets.fetch_add(1, Relaxed);
        counts.slow.fetch_add(1, Relaxed);
        tokio::time::sleep(hold).await;
        drop(ws);
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One abuse in turn, from a source address of the abusers' own; then a pause of 0.5–2 s.
async fn abuse(target: &Target, counts: &Counts, rng: &mut Rng, n: usize) {
    let kind = rng.below(6);
    let source = if kind == 0 {
        Ipv4Addr::new(127, 0, 0, 254)
    } else {
        Ipv4Addr::new(127, 0, 0, 252 + (n % 2) as u8)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        match kind {
            0 => {
                let origin = crate::server::ORIGIN;
                expect_status(
                    target,
                    source,
                    "Bearer not-a-token",
                    origin,
                    &[400, 401, 429],
                )
                .await
            }
            1 => {
                let auth = format!("Bearer {}", target.token.as_deref().unwrap_or(""));
                expect_status(target, source, &auth, "http://evil.test", &[403]).await
            }
            2 => expect_close(target, source, &[frame(0x1, &[b'x'; 8192])], 1009).await,
            3 => {
                let flood: Vec<Vec<u8>> = (0..200)
                    .map(|_| frame(0x1, br#"{"type":"subscribe","symbols":["AAPL"]}"#))
                    .collect();
                expect_close(target, source, &flood, 1008).await
            }
            4 => expect_close(target, source, &[frame(0x3, b"reserved opcode")], 1002).await,
            _ => slowloris(target, source).await,
        }
    })
    .await
    .unwrap_or(Err("the abuse was not answered in 30 s".into()));
    match outcome {
        Ok(()) => counts.abuse_expected.fetch_add(1, Relaxed),
        Err(e) => {
            if counts.abuse_unexpected.fetch_add(1, Relaxed) < 5 {
                eprintln!("    soak: abuse {kind}: {e}");
            }
            0
        }
    };
    tokio::time::sleep(rng.secs(0, 2) + Duration::from_millis(500)).await;
}

async fn tcp_from(target: &Target, source: Ipv4Addr) -> Result<TcpStream, BoxError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    Ok(socket.connect(target.addr).await?)
}

/// Writes a WebSocket handshake and reads the status code of the answer (headers only).
async fn handshake(
    tcp: &mut TcpStream,
    target: &Target,
    auth: &str,
    origin: &str,
) -> Result<u16, BoxError> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\nAuthorization: {auth}\r\n\r\n",
        target.addr
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err("no complete answer to the handshake".into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}").into())
}

async fn expect_status(
    target: &Target,
    source: Ipv4Addr,
    auth: &str,
    origin: &str,
    want: &[u16],
) -> Result<(), BoxError> {
    let mut tcp = tcp_from(target, source).await?;
    let got = handshake(&mut tcp, target, auth, origin).await?;
    if want.contains(&got) {
        Ok(())
    } else {
        Err(format!("answered {got}, wanted {want:?}").into())
    }
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Upgrades, writes `frames`, and reads frames until the server's close: its code must be
/// `want`.
async fn expect_close(
    target: &Target,
    source: Ipv4Addr,
    frames: &[Vec<u8>],
    want: u16,
) -> Result<(), BoxError> {
    let mut tcp = tcp_from(target, source).await?;
    let auth = format!("Bearer {}", target.token.as_deref().unwrap_or(""));
    let got = handshake(&mut tcp, target, &auth, crate::server::ORIGIN).await?;
    if got != 101 {
        let mut body = [0u8; 200];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut body))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        let body = String::from_utf8_lossy(&body[..n]);
        return Err(format!("upgrade answered {got}: {:?}", body.trim()).into());
    }
    for f in frames {
        if tcp.write_all(f).await.is_err() {
            break;
        }
    }
    loop {
        let mut head = [0u8; 2];
        if tcp.read_exact(&mut head).await.is_err() {
            return Err(
                format!("the connection ended without a close frame (wanted {want})").into(),
            );
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(tcp.read_u16().await?),
            127 => tcp.read_u64().await?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len.min(1 << 20) as usize];
        tcp.read_exact(&mut payload).await?;
        if head[0] & 0x0f == 0x8 {
            let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            return if code == Some(want) {
                // Answer the close so the server's lingering close ends at once.
                let _ = tcp.write_all(&frame(0x8, &payload[..2])).await;
                Ok(())
            } else {
                Err(format!("closed with {code:?}, wanted {want}").into())
            };
        }
    }
}

/// A handshake that never completes: the header-read timeout must cut it.
async fn slowloris(target: &Target, source: Ipv4Addr) -> Result<(), BoxError> {
    let mut tcp = tcp_from(target, source).await?;
    tcp.write_all(format!("GET /ws HTTP/1.1\r\nHost: {}\r\nX-Slow: ", target.addr).as_bytes())
        .await?;
    let mut rest = Vec::new();
    // Whatever comes back (a `408` or nothing), the connection must end.
    let _ = tcp.read_to_end(&mut rest).await;
    Ok(())
}

fn free_loopback_port() -> Result<SocketAddr, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

async fn sample(pid: u32, metrics: SocketAddr, secs: f64) -> Result<Sample, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .ok_or("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let text = scrape(metrics).await?;
    let value = |series: &str| {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Sample {
        secs,
        rss_kib,
        fds,
        sockets_open: value("wsguard_sockets_open"),
        quota_active: value("wsguard_quota_active{backend=\"local\"}"),
        connections_open: value("ticker_connections_open"),
        tasks: value("ticker_tasks_alive"),
    })
}

/// `GET /metrics` (HTTP/1.0, so the answer ends with the connection).
async fn scrape(addr: SocketAddr) -> Result<String, BoxError> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut raw))
        .await
        .map_err(|_| "the metrics scrape timed out")??;
    Ok(raw
        .split_once("\r\n\r\n")
        .map_or(raw.clone(), |(_, b)| b.to_owned()))
}

/// RSS and open sockets over time, as SVG.
fn draw(path: &Path, settings: &Settings, samples: &[Sample]) -> Result<(), BoxError> {
    let minutes = samples.last().map_or(1.0, |s| s.secs / 60.0).max(0.1);
    let max_rss = samples
        .iter()
        .map(|s| s.rss_kib as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.2;
    let max_sockets = samples
        .iter()
        .map(|s| s.sockets_open.max(s.fds as f64))
        .fold(1.0, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let blue = RGBColor(0x1f, 0x77, 0xb4);
    let red = RGBColor(0xd6, 0x27, 0x28);
    let green = RGBColor(0x2c, 0xa0, 0x2c);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "Soak: the stock ticker, {} churning clients, {} updates/s",
                settings.clients, settings.tick_hz
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..minutes, 0.0..max_rss)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("VmRSS (MiB)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            samples
                .iter()
                .map(|s| (s.secs / 60.0, s.rss_kib as f64 / 1024.0)),
            blue.stroke_width(2),
        ))?
        .label("ticker VmRSS")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..minutes, 0.0..max_sockets)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("count")
        .draw()?;
    for (label, colour, pick) in [
        ("wsguard_sockets_open", red, 0usize),
        ("open file descriptors", green, 1),
        ("live tokio tasks", blue, 2),
    ] {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(move |s| {
                    let v = match pick {
                        0 => s.sockets_open,
                        1 => s.fds as f64,
                        _ => s.tasks,
                    };
                    (s.secs / 60.0, v)
                }),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
