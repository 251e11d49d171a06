//! Faults under load, end to end: a Redis killed and restarted, a fleet instance killed, and a
//! Redis frozen (`SIGSTOP`) during a revocation, each while 1 000 clients read the ticker's
//! prices. Each test checks that the fault is absorbed as the fleet docs say (the fallback,
//! recovery, lease expiry, bounded waits) and that the legitimate clients are still served:
//! every handshake is answered, every reading client keeps getting prices, and none sees a
//! duplicate or out-of-order `seq`. Deadlines here are hang detectors, not timing assertions.
//!
//! Each test starts its own `redis-server` (it kills, freezes or restarts it) and fails, never
//! skips, without one. The tests take a lock so that they run one at a time: each loads the
//! machine on its own.
//!
//! Run after building the example with the feature (`cargo test --workspace --all-features`
//! does both): `cargo test -p stock-ticker --features redis --test faults`.
#![cfg(feature = "redis")]

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Socket, http};
use fleet_common::{RedisServer, eventually, free_port, prefix, ticker, ws_request};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::{
    net::TcpSocket,
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::{
    MaybeTlsStream,
    tungstenite::{self, Message},
};

/// The reading clients of each test.
const CLIENTS: usize = 1000;
/// The hang detector: a handshake or request not answered within this is hung.
const HANG: Duration = Duration::from_secs(15);
/// Handshakes the clients have in flight at once.
const HANDSHAKES_AT_ONCE: usize = 64;

/// Held by each test for its whole run: one loaded test at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The flags that let the clients' loopback addresses carry the load: no per-IP cap or
/// handshake rate in the way (a reconnecting client retries), and prices posted as fast as
/// the tests like.
const LOAD_FLAGS: [&str; 8] = [
    "--max-conns-per-ip",
    "100000",
    "--connect-rate",
    "100000",
    "--connect-burst",
    "100000",
    "--publish-rate",
    "100000",
];

/// The ticker flags of a loaded instance, with `extra`.
fn load_flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    LOAD_FLAGS.iter().chain(extra).copied().collect()
}

/// Raises this process's open-file limit (inherited by the tickers it starts) for the load.
fn raise_nofile() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    assert!(
        limit >= 3 * CLIENTS as u64,
        "RLIMIT_NOFILE is {limit}: too low for {CLIENTS} clients (raise the hard limit)"
    );
}

/// What the reading clients have seen, shared with the test.
struct Load {
    /// The latest AAPL `seq` each client was sent.
    aapl: Vec<AtomicU64>,
    /// Connections that got their snapshot.
    opened: AtomicUsize,
    /// Handshakes answered with a refusal, by status (0: the connection failed).
    refused: Mutex<HashMap<u16, usize>>,
    /// Broken guarantees: a hung handshake, a duplicate or out-of-order `seq`, ...
    faults: Mutex<Vec<String>>,
    /// Set to stop the clients.
    stop: watch::Sender<bool>,
    handshakes: Semaphore,
}

impl Load {
    fn new(clients: usize) -> Arc<Self> {
        Arc::new(Self {
            aapl: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            opened: AtomicUsize::new(0),
            refused: Mutex::default(),
            faults: Mutex::default(),
            stop: watch::channel(false).0,
            handshakes: Semaphore::new(HANDSHAKES_AT_ONCE),
        })
    }

    fn fault(&self, fault: String) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.push(fault);
        }
    }

    /// Fails the test with the first faults seen, if any.
    fn assert_no_fault(&self) {
        let faults = self.faults.lock().expect("faults").clone();
        assert!(
            faults.is_empty(),
            "{} faults, the first: {:#?}",
            faults.len(),
            &faults[..faults.len().min(10)]
        );
    }

    fn refused(&self) -> HashMap<u16, usize> {
        self.refused.lock().expect("refused").clone()
    }

    /// Waits until `n` connections in all have had their snapshot.
    async fn wait_opened(&self, n: usize) {
        let deadline = Instant::now() + 2 * HANG;
        while self.opened.load(Ordering::Relaxed) < n {
            self.assert_no_fault();
            assert!(
                Instant::now() < deadline,
                "{} of {n} connections opened; refusals: {:?}",
                self.opened.load(Ordering::Relaxed),
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until each of `clients` was sent AAPL's change `seq` or a later one.
    async fn wait_prices(&self, clients: Range<usize>, seq: u64) {
        eventually(
            &format!("AAPL seq {seq} at clients {clients:?}"),
            async || {
                self.assert_no_fault();
                clients
                    .clone()
                    .all(|i| self.aapl[i].load(Ordering::Relaxed) >= seq)
                    .then_some(())
            },
        )
        .await;
    }

    /// Stops the clients: each must still be open, and none may have seen a fault.
    async fn finish(&self, clients: Vec<JoinHandle<End>>) {
        let _ = self.stop.send(true);
        let mut not_open = Vec::new();
        for client in clients {
            let end = client.await.expect("client task");
            if end != End::Open {
                not_open.push(end);
            }
        }
        self.assert_no_fault();
        assert!(
            not_open.is_empty(),
            "{} clients not served to the end: {not_open:?}",
            not_open.len()
        );
    }
}

/// How a client ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Still open when the test stopped the clients.
    Open,
    /// Closed by the server with this code (`None`: without a close frame).
    Closed(Option<u16>),
    /// Not admitted: the handshake was answered with this status (0: the connection failed).
    Refused(u16),
}

/// One reading client: opens `/ws` on `targets[0]` with `token` and reads prices, checking
/// the ticker's `seq` guarantees, until the test stops it or the connection ends; then it
/// reconnects to the next target, if any, retrying refusals (`429` while a dead instance's
/// leases live), with its record of what it was sent.
///
/// The guarantees (README: a snapshot first, then each change, `seq` rising per symbol): on
/// one connection, an update's `seq` is above every `seq` the client had of the symbol; across
/// a reconnect, the new snapshot does not go back either.
fn spawn_client(
    load: &Arc<Load>,
    id: usize,
    targets: Vec<SocketAddr>,
    token: &str,
) -> JoinHandle<End> {
    let (load, token) = (Arc::clone(load), token.to_owned());
    tokio::spawn(async move {
        let mut stop = load.stop.subscribe();
        let mut seen = HashMap::new();
        let mut end = End::Refused(0);
        for (i, addr) in targets.into_iter().enumerate() {
            let mut socket = match connect(&load, id, addr, &token, i > 0).await {
                Ok(socket) => socket,
                Err(status) => return End::Refused(status),
            };
            end = read(&load, id, &mut socket, &mut seen, &mut stop).await;
            if end == End::Open {
                break;
            }
        }
        end
    })
}

/// One handshake, or with `retry` as many as it takes (for at most twice [`HANG`]); every
/// attempt must be answered within [`HANG`]. `Err`: the last refusal's status.
async fn connect(
    load: &Load,
    id: usize,
    addr: SocketAddr,
    token: &str,
    retry: bool,
) -> Result<Socket, u16> {
    let deadline = Instant::now() + 2 * HANG;
    loop {
        let permit = load.handshakes.acquire().await.expect("semaphore");
        let attempt = tokio::time::timeout(HANG, handshake(id, addr, token)).await;
        drop(permit);
        let status = match attempt {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => response.status().as_u16(),
            Ok(Err(_)) => 0,
            Err(_) => {
                load.fault(format!("client {id}: a handshake to {addr} hung"));
                return Err(0);
            }
        };
        *load
            .refused
            .lock()
            .expect("refused")
            .entry(status)
            .or_default() += 1;
        if !retry || Instant::now() > deadline {
            return Err(status);
        }
        // Spread the retries.
        tokio::time::sleep(Duration::from_millis(100 + (id % 10) as u64 * 10)).await;
    }
}

/// The handshake of client `id`, from a loopback address of its own among 250
/// (`127.0.0.2`...): clients on many addresses, as behind no proxy, so the per-IP limits
/// (the auth throttle's attempts in flight among them) hold as they would.
async fn handshake(id: usize, addr: SocketAddr, token: &str) -> Result<Socket, tungstenite::Error> {
    let ip = Ipv4Addr::new(127, 0, 0, 2 + (id % 250) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let stream = socket.connect(addr).await?;
    let (socket, _) =
        tokio_tungstenite::client_async(ws_request(addr, token), MaybeTlsStream::Plain(stream))
            .await?;
    Ok(socket)
}

/// Reads one connection until it ends or the clients are stopped.
async fn read(
    load: &Load,
    id: usize,
    socket: &mut Socket,
    seen: &mut HashMap<String, u64>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let mut snapshot = false;
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return End::Open,
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return End::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return End::Closed(None),
        };
        let message: Value = match serde_json::from_str(&text) {
            Ok(message) => message,
            Err(e) => {
                load.fault(format!("client {id}: not JSON ({e})"));
                continue;
            }
        };
        match message["type"].as_str() {
            Some("snapshot") => {
                for price in message["prices"].as_array().into_iter().flatten() {
                    check(load, id, seen, price, false);
                }
                snapshot = true;
                load.opened.fetch_add(1, Ordering::Relaxed);
            }
            Some("price") if snapshot => check(load, id, seen, &message, true),
            _ => load.fault(format!("client {id}: unexpected {message}")),
        }
    }
}

/// Checks one price against what the client had of its symbol, and records it.
fn check(load: &Load, id: usize, seen: &mut HashMap<String, u64>, price: &Value, update: bool) {
    let (Some(symbol), Some(seq)) = (price["symbol"].as_str(), price["seq"].as_u64()) else {
        load.fault(format!("client {id}: no symbol or seq in {price}"));
        return;
    };
    let last = seen.entry(symbol.to_owned()).or_default();
    // An update is newer than everything before; a snapshot is not older.
    let in_order = if update { seq > *last } else { seq >= *last };
    if !in_order {
        let what = if update { "update" } else { "snapshot" };
        load.fault(format!(
            "client {id}: {symbol} {what} seq {seq} after seq {last}"
        ));
    }
    *last = (*last).max(seq);
    if symbol == "AAPL" {
        load.aapl[id].fetch_max(seq, Ordering::Relaxed);
    }
}

/// Posts AAPL prices to `addr` as `token` every 50 ms until aborted: the price flow under
/// the fault. Each post must be answered (the helper's own deadline), with `200`, or `503`
/// while Redis is unreachable.
fn spawn_publisher(load: &Arc<Load>, addr: SocketAddr, token: &str) -> JoinHandle<()> {
    let (load, token) = (Arc::clone(load), token.to_owned());
    tokio::spawn(async move {
        for i in 0u32.. {
            let (status, body) = post_price(addr, &token, 100.0 + f64::from(i % 100)).await;
            if status != 200 && status != 503 {
                load.fault(format!("POST /prices answered {status}: {body}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Ends the publisher; fails the test if it panicked (a request not answered in time).
async fn stop_publisher(publisher: JoinHandle<()>) {
    publisher.abort();
    if let Err(e) = publisher.await {
        assert!(e.is_cancelled(), "the publisher failed: {e}");
    }
}

/// `POST /prices` for AAPL: the status and the body.
async fn post_price(addr: SocketAddr, token: &str, price: f64) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let body = json!({ "symbol": "AAPL", "price": price }).to_string();
    let res = http(addr, "POST", "/prices", &headers, &body).await;
    (res.status, res.body)
}

/// Posts an AAPL price until one is taken (Redis is back): its `seq`.
async fn posted_seq(addr: SocketAddr, token: &str) -> u64 {
    eventually("a price is taken", async || {
        let (status, body) = post_price(addr, token, 42.5).await;
        if status == 200 {
            let body: Value = serde_json::from_str(&body).expect("JSON");
            return Some(body["seq"].as_u64().expect("seq"));
        }
        assert_eq!(status, 503, "{body}");
        None
    })
    .await
}

/// The Redis key of alice's quota leases.
fn alice_leases(prefix: &str) -> String {
    format!("{{{prefix}:quota:sockets}}:id:alice")
}

/// Waits until the [`CLIENTS`] first clients are open, and checks that each socket holds one
/// lease in `key`.
async fn wait_opened_and_leased(load: &Load, redis: &RedisServer, key: &str) {
    load.wait_opened(CLIENTS).await;
    assert_eq!(
        redis.live_leases(key).await,
        CLIENTS,
        "one lease per socket"
    );
}

/// Waits until the live leases of `key` number `n`.
async fn wait_leases(redis: &RedisServer, key: &str, n: usize) {
    eventually(&format!("{n} leases in {key}"), async || {
        (redis.live_leases(key).await == n).then_some(())
    })
    .await;
}

/// Redis is killed while 1 000 clients read prices in fleet mode (policy: fall back to local
/// limits), and restarted on the same port: handshakes during the outage are answered (and
/// admitted by the fallback), prices posted then get `503`, the readers stay connected, and
/// after the restart prices reach all of them again and every open socket holds its lease
/// in Redis once more (the outage's admissions included, the sockets closed during it not),
/// and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_falls_back_recovers_and_loses_no_lease() {
    const DURING_OUTAGE: usize = 50;
    const LEAVING: usize = 50;
    let _heavy = HEAVY.lock().await;
    raise_nofile();
    let started = std::time::Instant::now();
    let redis = RedisServer::start_on(free_port());
    let p = prefix("faults-restart");
    let lease_ttl = Duration::from_millis(1500);
    let ttl = lease_ttl.as_millis().to_string();
    let flags = load_flags(&["--max-conns-per-user", "100000", "--lease-ttl-ms", &ttl]);
    let a = ticker(&redis.url(), &p, &flags).await;
    let (alice, bob) = tokio::join!(a.token("alice", "wonderland"), a.token("bob", "builder"));

    let load = Load::new(CLIENTS + DURING_OUTAGE);
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|id| spawn_client(&load, id, vec![a.addr()], &alice))
        .collect();
    let key = alice_leases(&p);
    wait_opened_and_leased(&load, &redis, &key).await;
    let publisher = spawn_publisher(&load, a.addr(), &bob);
    let seq = posted_seq(a.addr(), &bob).await;
    load.wait_prices(0..CLIENTS, seq).await;

    let port = redis.stop();
    // Prices need Redis in fleet mode: refused at once, not hung.
    let (status, body) = post_price(a.addr(), &bob, 10.0).await;
    assert_eq!(status, 503, "{body}");
    // Clients that leave during the outage: their leases must not come back.
    for client in clients.drain(..LEAVING) {
        client.abort();
    }
    // Handshakes are answered, and the fallback admits them.
    clients.extend(
        (CLIENTS..CLIENTS + DURING_OUTAGE)
            .map(|id| spawn_client(&load, id, vec![a.addr()], &alice)),
    );
    load.wait_opened(CLIENTS + DURING_OUTAGE).await;

    let redis = RedisServer::start_on(port);
    let seq = posted_seq(a.addr(), &bob).await;
    let open = LEAVING..CLIENTS + DURING_OUTAGE;
    load.wait_prices(open.clone(), seq).await;
    // Every open socket is leased again by its renewals (within one renewal interval of
    // the recovery), and no closed one...
    wait_leases(&redis, &key, open.len()).await;
    // ...and stays leased: a lease whose renewals had stopped would have expired by now.
    tokio::time::sleep(lease_ttl + lease_ttl / 3).await;
    assert_eq!(redis.live_leases(&key).await, open.len());

    stop_publisher(publisher).await;
    load.finish(clients).await;
    assert!(
        load.refused().is_empty(),
        "refused handshakes: {:?}",
        load.refused()
    );
    eprintln!("redis restart under load: {:?}", started.elapsed());
}

/// Two instances share a Redis, and one is SIGKILLed while 1 000 clients read prices, half
/// of them from it. Its leases expire (the per-user cap is the client count, so its clients
/// get in again only once they have: `429` until then), its clients reconnect to the other
/// instance and are served, and no client sees a duplicate or out-of-order `seq`, across
/// the reconnect either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_clients_reconnect_to_the_other_with_seq_in_order() {
    let _heavy = HEAVY.lock().await;
    raise_nofile();
    let started = std::time::Instant::now();
    let redis = RedisServer::start_on(free_port());
    let p = prefix("faults-kill");
    let cap = CLIENTS.to_string();
    let flags = load_flags(&["--max-conns-per-user", &cap, "--lease-ttl-ms", "1500"]);
    let url = redis.url();
    let (mut a, b) = tokio::join!(ticker(&url, &p, &flags), ticker(&url, &p, &flags));
    let (alice, bob) = tokio::join!(a.token("alice", "wonderland"), b.token("bob", "builder"));

    let load = Load::new(CLIENTS);
    let half = CLIENTS / 2;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let targets = if id < half {
                vec![a.addr(), b.addr()]
            } else {
                vec![b.addr()]
            };
            spawn_client(&load, id, targets, &alice)
        })
        .collect();
    let key = alice_leases(&p);
    wait_opened_and_leased(&load, &redis, &key).await;
    assert_eq!(
        b.try_connect(&alice).await.err(),
        Some(429),
        "alice is at her cap"
    );
    let publisher = spawn_publisher(&load, b.addr(), &bob);
    let seq = posted_seq(b.addr(), &bob).await;
    load.wait_prices(0..CLIENTS, seq).await;

    a.example.child.kill().await.expect("SIGKILL instance A");
    // A's clients are back, on B, once A's leases have expired.
    load.wait_opened(CLIENTS + half).await;
    let seq = posted_seq(b.addr(), &bob).await;
    load.wait_prices(0..CLIENTS, seq).await;
    // B's sockets hold the only leases: A's expired, none leaked.
    assert_eq!(redis.live_leases(&key).await, CLIENTS);

    stop_publisher(publisher).await;
    load.finish(clients).await;
    eprintln!(
        "killed instance: {:?}, refusals while its leases lived: {:?}",
        started.elapsed(),
        load.refused()
    );
}

/// Redis is frozen (`SIGSTOP`) while 1 000 clients read prices from two instances, and alice
/// logs out everywhere (`POST /revoke`) on A during the freeze; then Redis thaws (`SIGCONT`).
/// Nothing hangs: the revocation is answered `503` (the fleet's `RevokeError::Unavailable`:
/// not shared yet) and applied on A at once (alice's sockets there close with `1008`, her
/// token gets `401` there); handshakes on both instances are answered (the fallback admits
/// bob's) and prices get `503`. After the thaw the revocation takes effect on B too (the
/// fleet shares it once Redis answers), prices reach every reader again and the leases are
/// all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_redis_is_frozen_is_answered_and_reaches_the_fleet_after_the_thaw() {
    const ALICE: usize = 20;
    let _heavy = HEAVY.lock().await;
    raise_nofile();
    let started = std::time::Instant::now();
    let redis = RedisServer::start_on(free_port());
    let p = prefix("faults-freeze");
    let flags = load_flags(&["--max-conns-per-user", "100000", "--lease-ttl-ms", "1500"]);
    let url = redis.url();
    let (a, b) = tokio::join!(ticker(&url, &p, &flags), ticker(&url, &p, &flags));
    let (alice, bob) = tokio::join!(a.token("alice", "wonderland"), b.token("bob", "builder"));

    // Bob's readers on both instances, then alice's: the first half on A.
    let load = Load::new(CLIENTS + ALICE);
    let on = |id: usize| {
        if id.is_multiple_of(2) {
            a.addr()
        } else {
            b.addr()
        }
    };
    let readers: Vec<_> = (0..CLIENTS)
        .map(|id| spawn_client(&load, id, vec![on(id)], &bob))
        .collect();
    let alices: Vec<_> = (CLIENTS..CLIENTS + ALICE)
        .map(|id| {
            let addr = if id < CLIENTS + ALICE / 2 {
                a.addr()
            } else {
                b.addr()
            };
            spawn_client(&load, id, vec![addr], &alice)
        })
        .collect();
    load.wait_opened(CLIENTS + ALICE).await;
    let publisher = spawn_publisher(&load, a.addr(), &bob);
    let seq = posted_seq(a.addr(), &bob).await;
    load.wait_prices(0..CLIENTS + ALICE, seq).await;

    redis.signal("STOP");
    let res = tokio::time::timeout(HANG, a.post("/revoke", &alice, ""))
        .await
        .expect("the revocation is answered");
    assert_eq!(res.status, 503, "{}", res.body);
    // Applied on A: her token is refused there (and her sockets there close with 1008).
    // Handshakes are answered (the fallback admits bob on both instances), and prices are
    // refused.
    let (alice_on_a, on_a, on_b, (status, body)) = tokio::join!(
        a.try_connect(&alice),
        a.connect(&bob),
        b.connect(&bob),
        post_price(a.addr(), &bob, 10.0)
    );
    assert_eq!(alice_on_a.err(), Some(401));
    assert_eq!(status, 503, "{body}");
    drop((on_a, on_b));
    redis.signal("CONT");

    let seq = posted_seq(a.addr(), &bob).await;
    load.wait_prices(0..CLIENTS, seq).await;
    // The revocation reaches the fleet once Redis is back: alice's sockets on B close with
    // 1008 as well, and B refuses her token.
    let mut alice_ends = Vec::new();
    for client in alices {
        let end = tokio::time::timeout(HANG, client)
            .await
            .expect("alice's sockets close")
            .expect("client task");
        alice_ends.push(end);
    }
    assert!(
        alice_ends.iter().all(|end| *end == End::Closed(Some(1008))),
        "{alice_ends:?}"
    );
    assert_eq!(b.try_connect(&alice).await.err(), Some(401));
    // Bob's sockets are all leased again.
    wait_leases(&redis, &format!("{{{p}:quota:sockets}}:id:bob"), CLIENTS).await;

    stop_publisher(publisher).await;
    load.finish(readers).await;
    eprintln!("revocation while frozen: {:?}", started.elapsed());
}
