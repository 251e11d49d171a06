//! The heroes round-trip scenario (`--only heroes`): `get_name` answered with `name`, over
//! Socket.IO on WebSocket, against the heroes example (socketioxide behind wsguard), a Node
//! Socket.IO 4 server and the seed tutorial's python-socketio server, each with the same
//! Rust clients in the same run.
//!
//! The client speaks Engine.IO 4 / Socket.IO 5 itself (as socket.io-client does on a
//! WebSocket transport): open packet `0{..}`, connect `40{auth}`, its answer `40{"sid"..}`,
//! then `42["get_name",{"hero":"ironMan"}]` and wait for `42["name",..]`, answering the
//! server's pings (`2` → `3`); one request in flight a connection.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

use crate::{
    Report,
    client::{BoxError, Rate, summarise},
    median,
};

const SOCKETIOXIDE: &str = "heroes (socketioxide + wsguard)";
const NODE: &str = "Node Socket.IO 4.8";
const PYTHON: &str = "python-socketio 5.18 (aiohttp)";

/// A Socket.IO server in a child process, killed on drop.
struct Peer {
    _child: Child,
    addr: String,
}

async fn spawn(mut cmd: Command) -> Result<Peer, BoxError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                return Ok::<_, BoxError>(url.trim_start_matches("http://").to_owned());
            }
        }
        Err("the server exited without naming its address".into())
    })
    .await
    .map_err(|_| "the server did not start in 60 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Peer {
        _child: child,
        addr,
    })
}

/// Builds the heroes example in release mode; its path.
fn build_heroes() -> Result<PathBuf, BoxError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building the heroes example: cargo build --release -p heroes");
    let status = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release", "-p", "heroes"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release -p heroes failed".into());
    }
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find target/release")?;
    Ok(release.join(format!("heroes{}", std::env::consts::EXE_SUFFIX)))
}

/// `target/bench-venv` with benches/load/python/requirements.txt installed (once); its python.
fn python() -> Result<PathBuf, BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python");
    let requirements = root.join("benches/load/python/requirements.txt");
    let stamp = venv.join("requirements.txt");
    if std::fs::read(&stamp).ok() != std::fs::read(&requirements).ok() {
        println!("installing the python-socketio peer: {}", venv.display());
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        let installed = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(&requirements)
            .status()?;
        if !made.success() || !installed.success() {
            return Err("making target/bench-venv failed".into());
        }
        std::fs::copy(&requirements, &stamp)?;
    }
    Ok(python)
}

async fn start(server: &str, heroes: &Path) -> Result<Peer, BoxError> {
    match server {
        SOCKETIOXIDE => {
            let mut cmd = Command::new(heroes);
            cmd.env("RUST_LOG", "warn").args([
                "--addr",
                "127.0.0.1:0",
                "--user",
                "bench:bench",
                "--connect-rate",
                "1000000",
                "--connect-burst",
                "1000000",
                "--max-conns-per-ip",
                "100000",
            ]);
            spawn(cmd).await
        }
        NODE => {
            let dir = crate::node_dir()?;
            let mut cmd = Command::new("node");
            cmd.current_dir(&dir).arg(dir.join("heroes-socketio.mjs"));
            spawn(cmd).await
        }
        _ => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("benches/load/python/heroes_socketio.py");
            let mut cmd = Command::new(python()?);
            cmd.arg(script);
            spawn(cmd).await
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message, answering Engine.IO pings on the way.
async fn next_text(ws: &mut Ws) -> Result<String, BoxError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await?;
            }
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the server closed the socket".into()),
        }
    }
}

/// Opens a Socket.IO connection over WebSocket and signs in as bench/bench.
async fn connect(addr: &str) -> Result<Ws, BoxError> {
    let mut request =
        format!("ws://{addr}/socket.io/?EIO=4&transport=websocket").into_client_request()?;
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(&format!("http://{addr}"))?);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "handshake timed out")??;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected the Engine.IO open packet, got {open:?}").into());
    }
    ws.send(Message::text(
        r#"40{"username":"bench","password":"bench"}"#,
    ))
    .await?;
    let connected = next_text(&mut ws).await?;
    if !connected.starts_with("40") {
        return Err(format!("the Socket.IO connect was refused: {connected:?}").into());
    }
    Ok(ws)
}

/// `conns` connections doing round trips for a warm-up second and `secs` measured seconds.
async fn round_trips(addr: &str, conns: usize, secs: f64) -> Rate {
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let addr = addr.to_owned();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let Ok(mut ws) = connect(&addr).await else {
                return (samples, 1);
            };
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                if ws
                    .send(Message::text(r#"42["get_name",{"hero":"ironMan"}]"#))
                    .await
                    .is_err()
                {
                    return (samples, 1);
                }
                let answered = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match next_text(&mut ws).await {
                            Ok(text) if text.starts_with(r#"42["name""#) => {
                                return text.contains("Tony Stark");
                            }
                            Ok(_) => {}
                            Err(_) => return false,
                        }
                    }
                })
                .await;
                if answered != Ok(true) {
                    return (samples, 1);
                }
                if sent >= warm_end {
                    samples.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            let _ = ws.close(None).await;
            (samples, 0)
        });
    }
    let mut all = Vec::new();
    let mut failed = 0;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok((samples, f)) => {
                all.extend(samples);
                failed += f;
            }
            Err(_) => failed += 1,
        }
    }
    summarise(all, secs, failed)
}

pub(crate) async fn run(
    report: &mut Report,
    heroes: Option<&Path>,
    rounds: usize,
    secs: f64,
    conns: usize,
) -> Result<(), BoxError> {
    let heroes = match heroes {
        Some(path) => path.to_owned(),
        None => build_heroes()?,
    };
    let servers = [SOCKETIOXIDE, NODE, PYTHON];
    report.line(format!(
        "## 6. heroes `get_name` round trips per second, {conns} Socket.IO connections over WebSocket"
    ));
    report.line(
        "| round | load | heroes /s (p50/p99 ms) | Node /s (p50/p99 ms) | python /s (p50/p99 ms) | heroes/Node | heroes/python | failures h/n/p |",
    );
    report.line("|---|---|---|---|---|---|---|---|");
    let (mut vs_node, mut vs_python) = (Vec::new(), Vec::new());
    let mut per: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let load = crate::loadavg();
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.rotate_left(round % servers.len());
        let mut rates: [Rate; 3] = Default::default();
        for i in order {
            let peer = start(servers[i], &heroes).await?;
            rates[i] = round_trips(&peer.addr, conns, secs).await;
            eprintln!(
                "    {}: {:.0} round trips/s, p50 {:.2} ms, p99 {:.2} ms ({} failed)",
                servers[i], rates[i].per_second, rates[i].p50_ms, rates[i].p99_ms, rates[i].failed
            );
            drop(peer);
        }
        let cell = |r: &Rate| format!("{:.0} ({:.2}/{:.2})", r.per_second, r.p50_ms, r.p99_ms);
        let (h, n, p) = (&rates[0], &rates[1], &rates[2]);
        report.line(format!(
            "| {} | {load} | {} | {} | {} | {:.2} | {:.2} | {}/{}/{} |",
            round + 1,
            cell(h),
            cell(n),
            cell(p),
            h.per_second / n.per_second,
            h.per_second / p.per_second,
            h.failed,
            n.failed,
            p.failed
        ));
        vs_node.push(h.per_second / n.per_second);
        vs_python.push(h.per_second / p.per_second);
        for (i, r) in rates.iter().enumerate() {
            per[i].push(r.per_second);
        }
    }
    report.line(format!(
        "| **median** | | **{:.0}** | **{:.0}** | **{:.0}** | **{:.2}** (target ≥ 3) | **{:.2}** (target ≥ 10) | |",
        median(&per[0]),
        median(&per[1]),
        median(&per[2]),
        median(&vs_node),
        median(&vs_python)
    ));
    report.line("");
    Ok(())
}
