//! The load harness: what the wsguard stack costs against a bare axum route, side by side in
//! one run. See BENCHMARKS.md.
//!
//! Run: `cargo bench --bench load` (about 8 minutes), or `cargo bench --bench load -- --quick`
//! (under 2 minutes). `-- --help` lists the options. Servers bind 127.0.0.1 only; every
//! loop is bounded in time.
//!
//! 1. handshakes per second (connect and close), 16 concurrent clients;
//! 2. echo round trips per second with p50/p99: 100 connections × 20 B and 10 × 16 KiB;
//! 3. fan-out through the stock ticker example (the real binary, SQLite and all) against a
//!    naive axum broadcast, at 1k, 5k and 10k clients;
//! 4. resident memory per idle socket at 10k sockets, bare axum and guarded, each in its
//!    own process;
//! 5. the soak, not in the default set: `--only soak --minutes N` churns thousands of
//!    guarded sockets (readers, slow readers, abusers) against the stock ticker for N
//!    minutes and reports RSS, descriptors, socket and quota counts and live tasks over time
//!    and at the end (see `soak.rs`);
//! 6. heroes `get_name` round trips over Socket.IO: the heroes example (socketioxide behind
//!    wsguard) against Node Socket.IO 4 and python-socketio, the same clients (`heroes.rs`).
//!
//! Bare and guarded alternate within each round; the report gives medians over rounds.

mod chart;
mod client;
mod heroes;
mod server;
mod soak;

use std::{
    error::Error,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use clap::Parser;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use crate::client::{BoxError, Rate, Subscribers, Target};

#[derive(Debug, Parser)]
#[command(about = "wsguard load harness: guarded vs bare axum, side by side")]
struct Args {
    /// A short run (one round, short windows): under two minutes.
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario (each round measures bare and guarded); default 3, 1 with --quick.
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured seconds per handshake/echo window; default 4, 2 with --quick.
    #[arg(long)]
    secs: Option<f64>,
    /// Scenarios to run (comma-separated): handshake, echo, fanout, memory, heroes, soak (the
    /// soak is not in the default set).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "handshake,echo,fanout,memory,heroes"
    )]
    only: Vec<Scenario>,
    /// Fan-out client counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    clients: Vec<usize>,
    /// Another stock ticker binary, measured as the fan-out server `ticker-before` (say, a
    /// build of the previous commit), to compare two builds in one run.
    #[arg(long)]
    ticker_before: Option<PathBuf>,
    /// Fan-out servers to measure (comma-separated): ticker, node, naive, ticker-before.
    #[arg(long, value_delimiter = ',', default_value = "ticker,node,naive")]
    fanout_servers: Vec<FanoutServer>,
    /// Updates per second for the fan-out latency runs.
    #[arg(long, default_value_t = 10.0)]
    tick_hz: f64,
    /// Updates per second offered in the fan-out throughput runs: more than either server can
    /// deliver at 5k clients (at 100/s the ticker still delivers everything it is offered).
    #[arg(long, default_value_t = 300.0)]
    saturate_hz: f64,
    /// The heroes example binary (default: built now with `cargo build --release -p heroes`).
    #[arg(long)]
    heroes: Option<PathBuf>,
    /// Socket.IO connections in the heroes scenario.
    #[arg(long, default_value_t = 100)]
    heroes_connections: usize,
    /// Minutes the soak runs.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Churning clients in the soak (at most this many sockets at once).
    #[arg(long, default_value_t = 2000)]
    soak_clients: usize,
    /// Seconds between the soak's samples.
    #[arg(long, default_value_t = 10.0)]
    soak_sample_secs: f64,
    /// Idle sockets for the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_sockets: usize,
    /// The stock ticker binary (default: built now with `cargo build --release -p
    /// stock-ticker`).
    #[arg(long)]
    ticker: Option<PathBuf>,
    /// Where the report and the chart go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// tungstenite read buffer of the guarded servers' sockets (echo and memory), in bytes (default: the socket
    /// policy's, 1 KiB), to measure the memory/throughput trade-off for large messages.
    #[arg(long)]
    guarded_read_buffer: Option<usize>,
    /// Internal: run one server (the harness starts itself with this).
    #[arg(long, hide = true)]
    serve: Option<server::Kind>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A fan-out server: the stock ticker, the Node `ws` peer, the naive axum broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FanoutServer {
    Ticker,
    Node,
    Naive,
    TickerBefore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Handshake,
    Echo,
    Fanout,
    Memory,
    Heroes,
    Soak,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    // 10k sockets on each side: raise the descriptor limit (children inherit it).
    let nofile = rlimit::increase_nofile_limit(u64::MAX)?;
    if let Some(kind) = args.serve {
        return server::run(kind, args.guarded_read_buffer);
    }
    if nofile
        < 2 * args
            .idle_sockets
            .max(args.clients.iter().copied().max().unwrap_or(0)) as u64
    {
        eprintln!("warning: the open-file limit is {nofile}; 10k sockets need about 20k");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args)).map_err(|e| e as Box<dyn Error>)
}

/// One line of the report's figures.
#[derive(Debug, Default)]
struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "nproc {}, CPU {cpu}, kernel {}, {}",
        command_output("nproc", &[]),
        command_output("uname", &["-r"]),
        command_output("rustc", &["--version"]),
    )
}

async fn run(args: Args) -> Result<(), BoxError> {
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let secs = args.secs.unwrap_or(if args.quick { 2.0 } else { 4.0 });
    let started = Instant::now();
    let mut report = Report::default();
    report.line(format!(
        "# wsguard load harness ({rounds} round(s), {secs} s windows)"
    ));
    report.line(format!("machine: {}", machine()));
    report.line(format!("load average at start: {}", loadavg()));
    report.line("");

    if args.only.contains(&Scenario::Handshake) || args.only.contains(&Scenario::Echo) {
        let bare = Server::start(server::Kind::Bare).await?;
        let guarded = Server::start_with(server::Kind::Guarded, args.guarded_read_buffer).await?;
        if args.only.contains(&Scenario::Handshake) {
            handshake_scenario(&mut report, &bare, &guarded, rounds, secs).await;
        }
        if args.only.contains(&Scenario::Echo) {
            echo_scenario(&mut report, &bare, &guarded, rounds, secs).await;
        }
    }
    if args.only.contains(&Scenario::Fanout) {
        let ticker = match &args.ticker {
            Some(path) => path.clone(),
            None => build_ticker()?,
        };
        let results = fanout_scenario(&mut report, &args, &ticker, rounds, args.quick).await?;
        std::fs::create_dir_all(&args.out)?;
        let chart = args.out.join("fanout-latency.svg");
        chart::fanout(&chart, args.tick_hz, &results)?;
        report.line(format!("chart: {}", chart.display()));
        report.line("");
    }
    if args.only.contains(&Scenario::Memory) {
        memory_scenario(
            &mut report,
            args.idle_sockets,
            rounds,
            args.guarded_read_buffer,
        )
        .await?;
    }
    if args.only.contains(&Scenario::Heroes) {
        heroes::run(
            &mut report,
            args.heroes.as_deref(),
            rounds,
            secs,
            args.heroes_connections,
        )
        .await?;
    }
    if args.only.contains(&Scenario::Soak) {
        let ticker = match &args.ticker {
            Some(path) => path.clone(),
            None => build_ticker()?,
        };
        let settings = soak::Settings {
            minutes: args.minutes,
            clients: args.soak_clients,
            sample_secs: args.soak_sample_secs,
            tick_hz: args.tick_hz,
        };
        soak::run(&mut report, &ticker, settings, &args.out).await?;
    }
    report.line(format!(
        "total {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("report.md");
    std::fs::write(&path, &report.text)?;
    println!("report: {}", path.display());
    Ok(())
}

/// A server in a child process, killed on drop.
struct Server {
    child: Child,
    target: Target,
}

impl Server {
    /// Starts `load --serve KIND` (this binary again) and waits for its address.
    async fn start(kind: server::Kind) -> Result<Self, BoxError> {
        Self::start_with(kind, None).await
    }

    async fn start_with(kind: server::Kind, read_buffer: Option<usize>) -> Result<Self, BoxError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        if let Some(bytes) = read_buffer {
            cmd.arg("--guarded-read-buffer").arg(bytes.to_string());
        }
        cmd.arg("--serve").arg(
            clap::ValueEnum::to_possible_value(&kind)
                .map_or_else(String::new, |v| v.get_name().to_owned()),
        );
        Self::spawn(cmd, None).await
    }

    async fn spawn(mut cmd: Command, token: Option<String>) -> Result<Self, BoxError> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(
                if std::env::var_os("WSGUARD_BENCH_SERVER_STDERR").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                },
            )
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut token = token;
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(t) = line.strip_prefix("ticket ") {
                    token = Some(t.to_owned());
                }
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                    return Ok::<_, BoxError>(url.trim_start_matches("http://").parse()?);
                }
            }
            Err("the server exited without naming its address".into())
        })
        .await
        .map_err(|_| "the server did not start in 30 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            target: Target { addr, token },
        })
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
    }
}

fn ratio(guarded: f64, bare: f64) -> f64 {
    guarded / bare
}

async fn handshake_scenario(
    report: &mut Report,
    bare: &Server,
    guarded: &Server,
    rounds: usize,
    secs: f64,
) {
    report.line("## 1. handshakes per second (connect and close), 16 concurrent clients");
    report.line("| round | load | bare /s | guarded /s | guarded/bare | open ms b/g | close ms b/g | failures b/g |");
    report.line("|---|---|---|---|---|---|---|---|");
    let (mut b, mut g, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let load = loadavg();
        let run = async |s: &Server| client::handshakes(&s.target, 16, secs).await;
        let (bare_r, guarded_r) = if round % 2 == 0 {
            let x = run(bare).await;
            (x, run(guarded).await)
        } else {
            let y = run(guarded).await;
            (run(bare).await, y)
        };
        let (x, y) = (bare_r, guarded_r);
        report.line(format!(
            "| {} | {load} | {:.0} | {:.0} | {:.3} | {:.2}/{:.2} | {:.2}/{:.2} | {}/{} |",
            round + 1,
            x.per_second,
            y.per_second,
            ratio(y.per_second, x.per_second),
            x.open_ms,
            y.open_ms,
            x.close_ms,
            y.close_ms,
            x.failed,
            y.failed
        ));
        b.push(x.per_second);
        g.push(y.per_second);
        r.push(ratio(y.per_second, x.per_second));
    }
    report.line(format!(
        "| **median** | | **{:.0}** | **{:.0}** | **{:.3}** (target ≥ 0.95) | | | |",
        median(&b),
        median(&g),
        median(&r)
    ));
    report.line("");
}

async fn echo_scenario(
    report: &mut Report,
    bare: &Server,
    guarded: &Server,
    rounds: usize,
    secs: f64,
) {
    for (conns, size, label) in [
        (100, 20, "100 connections × 20 B"),
        (10, 16 * 1024, "10 connections × 16 KiB"),
    ] {
        report.line(format!("## 2. echo round trips per second, {label}"));
        report.line("| round | load | bare /s | bare p50/p99 ms | guarded /s | guarded p50/p99 ms | guarded/bare | failures b/g |");
        report.line("|---|---|---|---|---|---|---|---|");
        let (mut b, mut g, mut r) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bp, mut gp) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let load = loadavg();
            let run = async |s: &Server| client::echo(&s.target, conns, size, secs).await;
            let (x, y) = if round % 2 == 0 {
                let x = run(bare).await;
                (x, run(guarded).await)
            } else {
                let y = run(guarded).await;
                (run(bare).await, y)
            };
            report.line(format!(
                "| {} | {load} | {:.0} | {:.2}/{:.2} | {:.0} | {:.2}/{:.2} | {:.3} | {}/{} |",
                round + 1,
                x.per_second,
                x.p50_ms,
                x.p99_ms,
                y.per_second,
                y.p50_ms,
                y.p99_ms,
                ratio(y.per_second, x.per_second),
                x.failed,
                y.failed
            ));
            r.push(ratio(y.per_second, x.per_second));
            b.push(x.per_second);
            g.push(y.per_second);
            bp.push((x.p50_ms, x.p99_ms));
            gp.push((y.p50_ms, y.p99_ms));
        }
        let med = |v: &[(f64, f64)], i: usize| {
            median(
                &v.iter()
                    .map(|p| if i == 0 { p.0 } else { p.1 })
                    .collect::<Vec<_>>(),
            )
        };
        report.line(format!(
            "| **median** | | **{:.0}** | {:.2}/{:.2} | **{:.0}** | {:.2}/{:.2} | **{:.3}** (target ≥ 0.97) | |",
            median(&b),
            med(&bp, 0),
            med(&bp, 1),
            median(&g),
            med(&gp, 0),
            med(&gp, 1),
            median(&r)
        ));
        report.line("");
    }
}

/// Builds the stock ticker example crate in release mode and returns its path.
fn build_ticker() -> Result<PathBuf, BoxError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building the stock ticker: cargo build --release -p stock-ticker");
    let status = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release", "-p", "stock-ticker"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release -p stock-ticker failed".into());
    }
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find target/release")?;
    Ok(release.join(format!("stock-ticker{}", std::env::consts::EXE_SUFFIX)))
}

/// Starts the stock ticker on port 0 with its simulator off (the harness publishes through
/// `POST /prices`), limits that do not fire, a fresh database in a
/// temporary directory and a `bench` user, logs in and returns it with the token.
async fn start_ticker(ticker: &Path, dir: &Path) -> Result<Server, BoxError> {
    start_ticker_with(ticker, dir, &[]).await
}

/// [`start_ticker`] with `extra` arguments.
async fn start_ticker_with(ticker: &Path, dir: &Path, extra: &[&str]) -> Result<Server, BoxError> {
    let db = dir.join(format!("ticker-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut cmd = Command::new(ticker);
    cmd.env("RUST_LOG", "warn").args([
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db.display().to_string(),
        "--tick-hz",
        "0",
        "--allow-origin",
        server::ORIGIN,
        "--user",
        "bench:bench",
        "--publisher",
        "bench",
        "--publish-rate",
        "4000000000",
        "--publish-burst",
        "4000000000",
        "--connect-rate",
        "1000000000",
        "--connect-burst",
        "1000000000",
        "--max-conns-per-ip",
        "1000000",
        "--max-conns-per-user",
        "1000000",
        "--idle-timeout",
        "86400",
    ]);
    cmd.args(extra);
    let mut server = Server::spawn(cmd, None).await?;
    server.target.token = Some(login(server.target.addr).await?);
    Ok(server)
}

/// `POST /login` as bench/bench; returns the token.
async fn login(addr: SocketAddr) -> Result<String, BoxError> {
    let body = r#"{"username":"bench","password":"bench"}"#;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_string(&mut raw))
        .await
        .map_err(|_| "login timed out")??;
    let json = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value: serde_json::Value = serde_json::from_str(json)?;
    value["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("login failed: {raw}").into())
}

/// Fan-out results for the chart: (variant, clients, p50 ms, p99 ms) at `tick_hz`.
pub(crate) type FanoutPoint = (&'static str, usize, f64, f64);

/// One fan-out measurement.
#[derive(Debug)]
struct FanoutRow {
    round: usize,
    rate_hz: f64,
    variant: &'static str,
    clients: usize,
    rate: Rate,
    /// Deliveries per second asked for: updates published per second × clients.
    offered: f64,
    load: String,
}

const TICKER: &str = "ticker";
const NAIVE: &str = "naive";
const NODE: &str = "node-ws";
const BEFORE: &str = "ticker-before";
/// Publishing connections per fan-out server.
const PUBLISHERS: usize = 4;

/// The chart's name of a fan-out server.
fn fanout_label(variant: &str) -> &'static str {
    match variant {
        TICKER => "stock ticker (wsguard)",
        NODE => "Node ws 8.23",
        BEFORE => "stock ticker, --ticker-before build",
        _ => "naive axum broadcast",
    }
}

/// `benches/load/node`, with its pinned packages installed (`npm ci`, once).
fn node_dir() -> Result<PathBuf, BoxError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/load/node");
    if !dir.join("node_modules/ws/package.json").exists()
        || !dir.join("node_modules/socket.io/package.json").exists()
    {
        println!("installing the Node peers: npm ci (benches/load/node)");
        let status = std::process::Command::new("npm")
            .current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund"])
            .status()?;
        if !status.success() {
            return Err("npm ci in benches/load/node failed".into());
        }
    }
    Ok(dir)
}

/// Starts `node SCRIPT` from `benches/load/node` and waits for its address.
async fn start_node(script: &str) -> Result<Server, BoxError> {
    let dir = node_dir()?;
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir).arg(dir.join(script));
    Server::spawn(cmd, None).await
}

async fn start_fanout_server(
    variant: &str,
    ticker: &Path,
    before: Option<&Path>,
    dir: &Path,
) -> Result<Server, BoxError> {
    match variant {
        TICKER => start_ticker(ticker, dir).await,
        BEFORE => {
            start_ticker(
                before.ok_or("ticker-before needs --ticker-before PATH")?,
                dir,
            )
            .await
        }
        NODE => start_node("ws-broadcast.mjs").await,
        _ => Server::start(server::Kind::Naive).await,
    }
}

async fn fanout_scenario(
    report: &mut Report,
    args: &Args,
    ticker: &Path,
    rounds: usize,
    quick: bool,
) -> Result<Vec<FanoutPoint>, BoxError> {
    let dir = std::env::temp_dir();
    let warm = if quick { 1.0 } else { 2.0 };
    let secs = if quick { 2.0 } else { 4.0 };
    let rates = [args.tick_hz, args.saturate_hz];
    let variants: Vec<&'static str> = args
        .fanout_servers
        .iter()
        .map(|s| match s {
            FanoutServer::Ticker => TICKER,
            FanoutServer::Node => NODE,
            FanoutServer::Naive => NAIVE,
            FanoutServer::TickerBefore => BEFORE,
        })
        .collect();
    let mut rows: Vec<FanoutRow> = Vec::new();
    for round in 0..rounds {
        // Each round starts with the next server in turn.
        let mut order = variants.clone();
        let len = order.len();
        if len > 0 {
            order.rotate_left(round % len);
        }
        for variant in order {
            let server =
                start_fanout_server(variant, ticker, args.ticker_before.as_deref(), &dir).await?;
            // Several publishing connections, so a slow answer does not throttle the updates.
            let mut publishers = Vec::new();
            for i in 0..PUBLISHERS {
                publishers.push(client::Publisher::connect(&server.target, i, PUBLISHERS).await?);
            }
            let mut subs = Subscribers::new(server.target.clone());
            for &n in &args.clients {
                let t0 = Instant::now();
                subs.grow_to(n).await;
                eprintln!(
                    "    {variant}: {} sockets open in {:.1} s ({} failed)",
                    subs.len(),
                    t0.elapsed().as_secs_f64(),
                    subs.failed
                );
                for hz in rates {
                    let load = loadavg();
                    let each = hz / PUBLISHERS as f64;
                    let (posted, rate) = tokio::join!(
                        futures_util::future::join_all(
                            publishers.iter_mut().map(|p| p.run(each, warm + secs))
                        ),
                        subs.measure(warm, secs)
                    );
                    let mut total = 0;
                    for p in posted {
                        total += p?;
                    }
                    let offered = total as f64 / (warm + secs) * subs.len() as f64;
                    eprintln!(
                        "    {variant} {n} clients {hz} Hz: {:.0} deliveries/s of {offered:.0}, p50 {:.1} ms, p99 {:.1} ms",
                        rate.per_second, rate.p50_ms, rate.p99_ms
                    );
                    rows.push(FanoutRow {
                        round,
                        rate_hz: hz,
                        variant,
                        clients: n,
                        rate,
                        offered,
                        load,
                    });
                    // Let queued deliveries drain before the next window.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            subs.shutdown().await;
            drop(server);
        }
    }

    let mut points = Vec::new();
    let find = |round: usize, variant: &str, n: usize, hz: f64| {
        rows.iter()
            .find(|r| r.round == round && r.variant == variant && r.clients == n && r.rate_hz == hz)
    };
    let has_peer = variants.contains(&TICKER) && variants.contains(&NODE);
    for (hz, what) in [(args.tick_hz, "latency"), (args.saturate_hz, "throughput")] {
        report.line(format!(
            "## 3. fan-out at {hz} updates/s ({what}): {}",
            variants
                .iter()
                .map(|v| fanout_label(v))
                .collect::<Vec<_>>()
                .join(" vs ")
        ));
        let mut head = String::from("| round | clients |");
        let mut rule = String::from("|---|---|");
        for v in &variants {
            head.push_str(&format!(
                " {v} load | {v} deliveries/s (offered) | {v} p50/p99 ms | {v} lost |"
            ));
            rule.push_str("---|---|---|---|");
        }
        if has_peer {
            head.push_str(" ticker/node deliveries | ticker/node p50 | ticker/node p99 |");
            rule.push_str("---|---|---|");
        }
        report.line(head);
        report.line(rule);
        for round in 0..rounds {
            for &n in &args.clients {
                let mut line = format!("| {} | {n} |", round + 1);
                for v in &variants {
                    match find(round, v, n, hz) {
                        Some(r) => line.push_str(&format!(
                            " {} | {:.0} ({:.0}) | {:.1}/{:.1} | {} |",
                            r.load,
                            r.rate.per_second,
                            r.offered,
                            r.rate.p50_ms,
                            r.rate.p99_ms,
                            r.rate.failed
                        )),
                        None => line.push_str(" | | | |"),
                    }
                }
                if has_peer
                    && let (Some(t), Some(p)) =
                        (find(round, TICKER, n, hz), find(round, NODE, n, hz))
                {
                    line.push_str(&format!(
                        " {:.2} | {:.2} | {:.2} |",
                        t.rate.per_second / p.rate.per_second,
                        t.rate.p50_ms / p.rate.p50_ms,
                        t.rate.p99_ms / p.rate.p99_ms
                    ));
                }
                report.line(line);
            }
        }
        for &n in &args.clients {
            let med = |variant: &str, f: fn(&Rate) -> f64| {
                median(
                    &(0..rounds)
                        .filter_map(|r| find(r, variant, n, hz))
                        .map(|r| f(&r.rate))
                        .collect::<Vec<_>>(),
                )
            };
            let mut line = format!("| **median** | {n} |");
            for v in &variants {
                let (p50, p99) = (med(v, |r| r.p50_ms), med(v, |r| r.p99_ms));
                line.push_str(&format!(
                    " | **{:.0}** | {p50:.1}/{p99:.1} | |",
                    med(v, |r| r.per_second)
                ));
                if what == "latency" {
                    points.push((fanout_label(v), n, p50, p99));
                }
            }
            if has_peer {
                // Ratios are taken within each round, then the median over rounds.
                let ratio_of = |f: fn(&Rate) -> f64| {
                    median(
                        &(0..rounds)
                            .filter_map(|r| {
                                Some(
                                    f(&find(r, TICKER, n, hz)?.rate)
                                        / f(&find(r, NODE, n, hz)?.rate),
                                )
                            })
                            .collect::<Vec<_>>(),
                    )
                };
                line.push_str(&format!(
                    " **{:.2}** | **{:.2}** | **{:.2}** |",
                    ratio_of(|r| r.per_second),
                    ratio_of(|r| r.p50_ms),
                    ratio_of(|r| r.p99_ms)
                ));
            }
            report.line(line);
        }
        report.line("");
    }
    report.line("Targets (issue 16): at 10 updates/s, ticker/node p50 and p99 ≤ 0.7 at 5000 clients, ≤ 0.8 at 10000; saturated at 5000 clients, ticker/node deliveries ≥ 2 with ticker p99 < 200 ms.");
    report.line("");
    Ok(points)
}

async fn memory_scenario(
    report: &mut Report,
    n: usize,
    rounds: usize,
    read_buffer: Option<usize>,
) -> Result<(), BoxError> {
    report.line(format!(
        "## 4. resident memory per idle socket at {n} sockets (VmRSS after − before, / sockets)"
    ));
    report.line("| round | load | bare axum (defaults) KiB/socket | guarded (defaults) KiB/socket | sockets b/g |");
    report.line("|---|---|---|---|---|");
    let (mut b, mut g) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let load = loadavg();
        let mut row = Vec::new();
        for kind in [server::Kind::Bare, server::Kind::GuardedDefaults] {
            let read_buffer = read_buffer.filter(|_| kind == server::Kind::GuardedDefaults);
            let server = Server::start_with(kind, read_buffer).await?;
            // Warm the runtime and allocator with a few sockets first.
            let (warm, _) = client::connect_many(&server.target, 32, 8).await;
            drop(warm);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = server.rss_kib().ok_or("no VmRSS")?;
            let (sockets, failed) = client::connect_many(&server.target, n, 32).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = server.rss_kib().ok_or("no VmRSS")?;
            let open = sockets.len();
            let per = after.saturating_sub(before) as f64 / open.max(1) as f64;
            eprintln!(
                "    {kind:?}: {open} sockets ({failed} failed), VmRSS {before} -> {after} KiB"
            );
            row.push((per, open));
            drop(sockets);
            drop(server);
        }
        report.line(format!(
            "| {} | {load} | {:.2} | {:.2} | {}/{} |",
            round + 1,
            row[0].0,
            row[1].0,
            row[0].1,
            row[1].1
        ));
        b.push(row[0].0);
        g.push(row[1].0);
    }
    report.line(format!(
        "| **median** | | **{:.2}** | **{:.2}** (target ≤ 4) | |",
        median(&b),
        median(&g)
    ));
    report.line("");
    Ok(())
}
