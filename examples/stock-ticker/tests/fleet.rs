//! Fleet mode end to end: two stock ticker instances on two loopback ports sharing one real
//! `redis-server`. Tests use the server named by `WSGUARD_TEST_REDIS_URL` (which `.ci/run`
//! starts) with a key prefix of their own, or spawn one on a free loopback port; tests that
//! stop and restart Redis always spawn their own. They fail, never skip, when `redis-server`
//! is missing (`apt-get install -y redis-server`).
//!
//! Run after building the example with the feature (`cargo test --workspace --all-features` does both):
//! `cargo test -p stock-ticker --features redis --test fleet`.
#![cfg(feature = "redis")]

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::time::Duration;

use common::{TempDir, close_code, http, next_json, start_example_with_env};
use fleet_common::{
    RedisServer, Ticker, close, eventually, free_port, prefix, ticker, ticket_secret,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn per_user_quota_spans_both_instances() {
    let redis = RedisServer::shared();
    let p = prefix("quota");
    let args = ["--max-conns-per-user", "1"];
    let (a, b) = (
        ticker(&redis.url(), &p, &args).await,
        ticker(&redis.url(), &p, &args).await,
    );
    // The ticket key is shared through Redis: a token from A works on B.
    let alice = a.token("alice", "wonderland").await;
    let bob = b.token("bob", "builder").await;

    let on_a = a.connect(&alice).await;
    assert_eq!(
        b.try_connect(&alice).await.err(),
        Some(429),
        "alice's 2nd socket, on B"
    );
    assert_eq!(
        a.try_connect(&alice).await.err(),
        Some(429),
        "alice's 2nd socket, on A"
    );
    let bob_on_b = b.connect(&bob).await;
    assert_eq!(
        a.try_connect(&bob).await.err(),
        Some(429),
        "bob's 2nd socket, on A"
    );

    close(on_a).await;
    let on_b = eventually("alice's lease is released", async || {
        b.try_connect(&alice).await.ok()
    })
    .await;
    assert_eq!(a.try_connect(&alice).await.err(), Some(429));
    drop((on_b, bob_on_b));
}

#[tokio::test]
async fn prices_posted_to_either_instance_reach_clients_of_both_in_seq_order() {
    let redis = RedisServer::shared();
    let p = prefix("prices");
    let (a, b) = (
        ticker(&redis.url(), &p, &[]).await,
        ticker(&redis.url(), &p, &[]).await,
    );
    let token = a.token("alice", "wonderland").await;
    let mut on_a = a.connect(&token).await;
    let mut on_b = b.connect(&token).await;
    let snapshot_a = next_json(&mut on_a).await;
    let snapshot_b = next_json(&mut on_b).await;
    assert_eq!(snapshot_a["type"], "snapshot");
    assert_eq!(snapshot_b["type"], "snapshot");
    let seq_of = |snapshot: &Value| {
        snapshot["prices"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["symbol"] == "AAPL"))
            .and_then(|p| p["seq"].as_u64())
            .expect("AAPL in the snapshot")
    };
    let start = seq_of(&snapshot_a);
    assert_eq!(start, seq_of(&snapshot_b));

    // Alternate the instance that takes the change.
    let prices = [101.25, 102.5, 103.75, 99.0, 98.5, 104.0];
    for (i, price) in prices.iter().enumerate() {
        let target = if i % 2 == 0 { &a } else { &b };
        let res = target
            .post(
                "/prices",
                &token,
                &json!({ "symbol": "AAPL", "price": price }).to_string(),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.json()["seq"].as_u64(), Some(start + 1 + i as u64));
    }
    for (name, socket) in [("A", &mut on_a), ("B", &mut on_b)] {
        for (i, price) in prices.iter().enumerate() {
            let msg = next_json(socket).await;
            assert_eq!(msg["type"], "price", "{name}: {msg}");
            assert_eq!(msg["symbol"], "AAPL", "{name}: {msg}");
            assert_eq!(
                msg["seq"].as_u64(),
                Some(start + 1 + i as u64),
                "{name}: {msg}"
            );
            assert_eq!(msg["price"].as_f64(), Some(*price), "{name}: {msg}");
        }
    }
    // Concurrent writers on both instances: every client still sees each seq once, in order.
    let start = start + prices.len() as u64;
    let writes = (0..20).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        let body = json!({ "symbol": "AAPL", "price": 200.0 + f64::from(i) }).to_string();
        let token = token.clone();
        async move { target.post("/prices", &token, &body).await }
    });
    for res in futures_util::future::join_all(writes).await {
        assert_eq!(res.status, 200, "{}", res.body);
    }
    for (name, socket) in [("A", &mut on_a), ("B", &mut on_b)] {
        for i in 1..=20u64 {
            let msg = next_json(socket).await;
            assert_eq!(msg["seq"].as_u64(), Some(start + i), "{name}: {msg}");
        }
    }
    // Validation happens before Redis.
    let res = a
        .post("/prices", &token, r#"{"symbol":"NOPE","price":1}"#)
        .await;
    assert_eq!(res.status, 400, "{}", res.body);
    let res = b
        .post("/prices", &token, r#"{"symbol":"AAPL","price":-1}"#)
        .await;
    assert_eq!(res.status, 400, "{}", res.body);
}

/// A ticket of the right shape (`kid.payload.tag`) whose tag does not match its payload:
/// an invalid token (`401`), where a malformed one is a bad request (`400`).
fn forged(ticket: &str) -> String {
    let (kid, rest) = ticket.split_once('.').expect("kid.payload.tag");
    let (_, tag) = rest.split_once('.').expect("payload.tag");
    format!("{kid}.eyJzdWIiOiJhZG1pbiJ9.{tag}")
}

/// Pub/sub reaches only the instances subscribed at the time: an instance whose price
/// subscription was cut catches up from the latest prices in Redis when it resubscribes.
#[tokio::test]
async fn an_instance_catches_up_with_the_prices_it_missed_when_it_resubscribes() {
    // Its own server: this test cuts every subscription on it.
    let redis = RedisServer::start_on(free_port());
    let p = prefix("catch-up");
    let a = ticker(&redis.url(), &p, &[]).await;
    let token = a.token("alice", "wonderland").await;
    let mut socket = a.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    // A change through the channel: the instance is subscribed.
    let res = a
        .post("/prices", &token, r#"{"symbol":"AAPL","price":50.5}"#)
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let seq = res.json()["seq"].as_u64().expect("seq");
    assert_eq!(next_json(&mut socket).await["seq"].as_u64(), Some(seq));

    // A change it did not hear of: stored as the latest price, as the publish script does,
    // but published while it was not subscribed (so not at all, here).
    let mut conn = redis.conn().await;
    let missed = json!({ "symbol": "AAPL", "price": 77.25, "ts": 1 });
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{{{p}:prices}}:latest"))
        .arg("AAPL")
        .arg(format!("{}|{missed}", seq + 5))
        .query_async(&mut conn)
        .await
        .expect("HSET");
    // Its subscription is cut: it resubscribes and catches up.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    let update = next_json(&mut socket).await;
    assert_eq!(update["type"], "price", "{update}");
    assert_eq!(update["symbol"], "AAPL", "{update}");
    assert_eq!(update["price"].as_f64(), Some(77.25), "{update}");
    assert_eq!(update["seq"].as_u64(), Some(seq + 5), "{update}");
}

#[tokio::test]
async fn revocation_on_a_closes_the_socket_on_b_with_1008() {
    let redis = RedisServer::shared();
    let p = prefix("revoke");
    let (a, b) = (
        ticker(&redis.url(), &p, &[]).await,
        ticker(&redis.url(), &p, &[]).await,
    );
    let alice = a.token("alice", "wonderland").await;
    let alice_again = b.token("alice", "wonderland").await;
    let bob = a.token("bob", "builder").await;
    let mut alice_on_b = b.connect(&alice).await;
    let mut alice_again_on_a = a.connect(&alice_again).await;
    let mut bob_on_b = b.connect(&bob).await;
    for socket in [&mut alice_on_b, &mut alice_again_on_a, &mut bob_on_b] {
        assert_eq!(next_json(socket).await["type"], "snapshot");
    }

    // Unauthenticated revocation is refused (a malformed token with 400, as at the
    // handshake).
    let res = a.post("/revoke", &forged(&alice), "").await;
    assert_eq!(res.status, 401, "{}", res.body);
    let res = a.post("/revoke", "not-a-token", "").await;
    assert_eq!(res.status, 400, "{}", res.body);
    let res = a.post("/revoke", &alice, r#"{"scope":"everyone"}"#).await;
    assert_eq!(res.status, 400, "{}", res.body);

    // Only the token: the socket opened with it closes on B; alice's other one stays.
    let started = std::time::Instant::now();
    let res = a.post("/revoke", &alice, r#"{"scope":"token"}"#).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(close_code(&mut alice_on_b).await, Some(CloseCode::Policy));
    // Reported, not asserted (the machine may be loaded): the issue's target is < 1 s.
    eprintln!(
        "revocation to close on the other instance: {:?}",
        started.elapsed()
    );
    assert_eq!(
        b.try_connect(&alice).await.err(),
        Some(401),
        "revoked token"
    );
    assert_eq!(
        a.try_connect(&alice).await.err(),
        Some(401),
        "revoked token"
    );
    // The HTTP routes refuse it too, on either instance.
    let res = b
        .post("/prices", &alice, r#"{"symbol":"MSFT","price":1.5}"#)
        .await;
    assert_eq!(
        res.status, 401,
        "POST /prices with a revoked token: {}",
        res.body
    );
    let res = a.post("/revoke", &alice, "").await;
    assert_eq!(
        res.status, 401,
        "POST /revoke with a revoked token: {}",
        res.body
    );

    // The whole identity, from B: alice's socket on A closes; bob's stays open.
    let res = b.post("/revoke", &alice_again, "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["revoked"], "user", "{}", res.body);
    assert_eq!(
        close_code(&mut alice_again_on_a).await,
        Some(CloseCode::Policy)
    );
    assert_eq!(a.try_connect(&alice_again).await.err(), Some(401));
    let res = b
        .post("/prices", &bob, r#"{"symbol":"MSFT","price":321.5}"#)
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let msg = next_json(&mut bob_on_b).await;
    assert_eq!(msg["symbol"], "MSFT", "bob's socket is still open: {msg}");

    // Logging in again gives a token that works.
    let fresh = a.token("alice", "wonderland").await;
    let mut socket = b.connect(&fresh).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
}

#[tokio::test]
async fn a_killed_instance_leaks_no_lease_beyond_its_ttl() {
    let redis = RedisServer::shared();
    let p = prefix("kill");
    let ttl_ms: i64 = 1500;
    let ttl = ttl_ms.to_string();
    let args = ["--max-conns-per-user", "1", "--lease-ttl-ms", &ttl];
    let (mut a, b) = (
        ticker(&redis.url(), &p, &args).await,
        ticker(&redis.url(), &p, &args).await,
    );
    let alice = a.token("alice", "wonderland").await;
    let _on_a = a.connect(&alice).await;
    assert_eq!(b.try_connect(&alice).await.err(), Some(429));

    a.example.child.kill().await.expect("kill instance A");
    // Its lease expires no later than one TTL after its last renewal.
    let mut conn = redis.conn().await;
    let key = format!("{{{p}:quota:sockets}}:id:alice");
    let leases: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let now_ms = secs * 1000 + micros / 1000;
    assert_eq!(leases.len(), 1, "{leases:?}");
    for (_, expires) in &leases {
        assert!(
            *expires <= now_ms + ttl_ms,
            "lease expires {expires} > now {now_ms} + ttl"
        );
    }
    // Once it has expired, B admits alice.
    let socket = eventually("the dead instance's lease to expire", async || {
        b.try_connect(&alice).await.ok()
    })
    .await;
    drop(socket);
}

#[tokio::test]
async fn redis_outage_falls_back_to_local_limits_and_recovery_restores_fleet_limits() {
    // Its own server: this test stops and restarts it.
    let redis = RedisServer::start_on(free_port());
    let p = prefix("outage");
    let args = ["--max-conns-per-user", "1", "--lease-ttl-ms", "1500"];
    let (a, b) = (
        ticker(&redis.url(), &p, &args).await,
        ticker(&redis.url(), &p, &args).await,
    );
    let alice = a.token("alice", "wonderland").await;
    let bob = a.token("bob", "builder").await;

    let port = redis.stop();
    // Fallback: each instance enforces the cap of 1 on its own; handshakes do not hang.
    let alice_on_a = a.connect(&alice).await;
    assert_eq!(
        a.try_connect(&alice).await.err(),
        Some(429),
        "local cap on A"
    );
    let alice_on_b = b.connect(&alice).await;
    assert_eq!(
        b.try_connect(&alice).await.err(),
        Some(429),
        "local cap on B"
    );
    // Logins and the page do not need Redis.
    assert_eq!(http(a.addr(), "GET", "/healthz", &[], "").await.status, 200);

    let redis = RedisServer::start_on(port);
    close(alice_on_b).await;
    // B's local count for alice is 0 now, but the socket A admitted during the outage is
    // leased again by its renewals: the fleet cap refuses alice on B once Redis is back.
    eventually("fleet limits after the restart", async || {
        match b.try_connect(&alice).await {
            Err(429) => Some(()),
            Err(status) => panic!("unexpected status {status}"),
            Ok(socket) => {
                close(socket).await;
                None
            }
        }
    })
    .await;
    let bob_on_b = b.connect(&bob).await;
    assert_eq!(
        a.try_connect(&bob).await.err(),
        Some(429),
        "fleet cap for bob"
    );
    drop((alice_on_a, bob_on_b, redis));
}

#[tokio::test]
async fn redis_outage_refuses_with_503_when_configured_and_recovers() {
    // Its own server: this test stops and restarts it.
    let redis = RedisServer::start_on(free_port());
    let p = prefix("refuse");
    let a = ticker(&redis.url(), &p, &["--redis-failure", "refuse"]).await;
    let alice = a.token("alice", "wonderland").await;
    let mut socket = a.connect(&alice).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");

    let port = redis.stop();
    assert_eq!(a.try_connect(&alice).await.err(), Some(503));
    let res = a
        .post("/prices", &alice, r#"{"symbol":"AAPL","price":100}"#)
        .await;
    assert_eq!(res.status, 503, "{}", res.body);

    let _redis = RedisServer::start_on(port);
    let mut socket = eventually("recovery", async || a.try_connect(&alice).await.ok()).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
}

/// The ticket secret comes from the operator: fleet mode refuses to start without one, an
/// instance given it in the environment verifies the tickets of one given it in a file, and
/// nothing of it is in Redis. (Before, the first instance generated it and stored it in Redis
/// in plain text, where anyone who could read Redis could mint tickets.)
#[tokio::test]
async fn the_ticket_secret_comes_from_the_operator_and_not_from_redis() {
    let redis = RedisServer::shared();
    let p = prefix("operator-key");

    // No secret: refused at start, naming both ways to give it.
    let dir = TempDir::new("fleet-nosecret");
    let db = dir.file("ticker.db");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::example_path("stock-ticker"))
            .args(["--addr", "127.0.0.1:0", "--db", &db, "--tick-hz", "0"])
            .args(["--redis", &redis.url(), "--redis-prefix", &p])
            .env_remove("TICKER_TICKET_SECRET")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("run the ticker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--ticket-secret-file") && stderr.contains("TICKER_TICKET_SECRET"),
        "{stderr}"
    );

    // A secret shorter than 32 bytes is refused too.
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::example_path("stock-ticker"))
            .args(["--addr", "127.0.0.1:0", "--db", &db, "--tick-hz", "0"])
            .args(["--redis", &redis.url(), "--redis-prefix", &p])
            .env("TICKER_TICKET_SECRET", "short")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("run the ticker");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("32"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // One instance with the file, one with the environment variable: one fleet.
    let a = ticker(&redis.url(), &p, &[]).await;
    let dir_b = TempDir::new("fleet-env");
    let db_b = dir_b.file("ticker.db");
    let secret = ticket_secret(&p);
    let b = start_example_with_env(
        "stock-ticker",
        &[
            "--addr",
            "127.0.0.1:0",
            "--db",
            &db_b,
            "--user",
            "alice:wonderland",
            "--tick-hz",
            "0",
            "--redis",
            &redis.url(),
            "--redis-timeout-ms",
            "500",
            "--redis-prefix",
            &p,
        ],
        &[("TICKER_TICKET_SECRET", &secret)],
    )
    .await;
    let b = Ticker {
        example: b,
        _dir: dir_b,
    };
    let token = a.token("alice", "wonderland").await;
    let mut socket = b.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");
    let token = b.token("alice", "wonderland").await;
    let mut socket = a.connect(&token).await;
    assert_eq!(next_json(&mut socket).await["type"], "snapshot");

    // Nothing in Redis holds the secret.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty(), "the fleet uses Redis");
    for key in keys {
        assert!(!key[p.len()..].contains("secret"), "{key}");
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        if kind == "string" {
            let value: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            assert!(
                !String::from_utf8_lossy(&value).contains(&secret),
                "{key} holds the secret"
            );
        }
    }
}

/// SIGTERM to a loaded fleet instance: every socket gets `1001`, the process exits 0, and it
/// has given its quota leases back before exiting: none is left in Redis to expire later.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_the_instance_and_leaves_no_lease_in_redis() {
    const N: usize = 20;
    let redis = RedisServer::shared();
    let p = prefix("drain");
    let mut a = ticker(
        &redis.url(),
        &p,
        &[
            "--max-conns-per-user",
            "100",
            "--connect-burst",
            "100",
            "--drain-timeout-ms",
            "3000",
        ],
    )
    .await;
    let alice = a.token("alice", "wonderland").await;
    let mut readers = Vec::new();
    for _ in 0..N {
        let mut socket = a.connect(&alice).await;
        assert_eq!(next_json(&mut socket).await["type"], "snapshot");
        readers.push(tokio::spawn(async move { close_code(&mut socket).await }));
    }
    let mut conn = redis.conn().await;
    let leases: usize = redis::cmd("ZCARD")
        .arg(format!("{{{p}:quota:sockets}}:id:alice"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!(leases, N, "one lease per socket");

    a.example.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), a.example.child.wait())
        .await
        .expect("the instance exits")
        .expect("wait for the instance");
    assert!(status.success(), "{status}");
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), Some(CloseCode::Away));
    }
    // Right after the exit, not after a TTL: the leases were released, not left to expire.
    // The quota's sets (its release markers share the hash tag: `…:released:<lease>`).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{p}:quota:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    for key in keys.iter().filter(|k| !k.contains(":released:")) {
        let leases: usize = redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        assert_eq!(leases, 0, "{key} still holds leases");
    }
}
