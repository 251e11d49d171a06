// The heroes example through the real npm `socket.io-client` (Node). Run after `cargo test --workspace --all-features` has
// built the example (target/debug/heroes): `npm test`. HEROES_BIN overrides the path.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { io } from "socket.io-client";

const ROOT = new URL("../../../..", import.meta.url).pathname;
const BIN = process.env.HEROES_BIN || join(ROOT, "target/debug/heroes");
const MAX_PAYLOAD = 2048;
const HEROES = {
  ironMan: "Tony Stark",
  hulk: "Bruce Banner",
  wonderWoman: "Diana Prince",
  batMan: "Bruce Wayne",
  blackPanther: "T'Challa",
};
// "Should arrive" waits are generous: the machine may be loaded.
const WAIT_MS = 15000;

let server, base;

function startHeroes() {
  assert.ok(existsSync(BIN), `${BIN} missing: run cargo test --workspace --all-features (or cargo build -p heroes) first`);
  const child = spawn(BIN, ["--addr", "127.0.0.1:0", "--user", "alice:wonderland",
    "--max-payload", String(MAX_PAYLOAD), "--connect-burst", "1000", "--connect-rate", "1000",
    "--max-login-failures", "1000", "--ping-interval", "1", "--ping-timeout", "10"],
  { stdio: ["ignore", "pipe", "ignore"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("heroes did not start in time")), 30000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const url = line.split(/\s+/).find((w) => w.startsWith("http://"));
      if (url) { clearTimeout(timer); resolve([child, url]); }
    });
    child.on("exit", (code) => reject(new Error(`heroes exited with ${code}`)));
  });
}

before(async () => { [server, base] = await startHeroes(); });
after(() => { server?.kill(); });

const TRANSPORTS = [["websocket"], ["polling"]];

function client(auth, opts = {}) {
  return io(base, { auth, reconnection: false, forceNew: true, timeout: WAIT_MS, ...opts });
}

/// Resolves with the first of `events` the socket emits: [event, payload].
function first(socket, events) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`none of ${events} in time`)), WAIT_MS);
    for (const event of events) {
      socket.once(event, (payload) => { clearTimeout(timer); resolve([event, payload]); });
    }
  });
}

async function connected(transports) {
  const socket = client({ username: "alice", password: "wonderland" }, { transports });
  const [event, payload] = await first(socket, ["connect", "connect_error"]);
  assert.equal(event, "connect", `connect refused: ${payload?.message}`);
  return socket;
}

for (const transports of TRANSPORTS) {
  const name = transports[0];

  test(`${name}: login accepted, get_name → name for every hero, to this client only`, async () => {
    const socket = await connected(transports);
    const bystander = await connected(transports);
    let bystanderGot = 0;
    bystander.on("name", () => { bystanderGot += 1; });
    try {
      for (const [hero, heroName] of Object.entries(HEROES)) {
        const reply = first(socket, ["name", "error"]);
        socket.emit("get_name", { hero });
        assert.deepEqual(await reply, ["name", { hero_name: heroName }]);
      }
      // The bystander asks once; it gets its own answer and never the other client's.
      const reply = first(bystander, ["name"]);
      bystander.emit("get_name", { hero: "hulk" });
      assert.deepEqual(await reply, ["name", { hero_name: "Bruce Banner" }]);
      assert.equal(bystanderGot, 1);
    } finally {
      socket.disconnect();
      bystander.disconnect();
    }
  });

  test(`${name}: an emit right on connect is answered (60 connections)`, async () => {
    // socketioxide acknowledges the connect before it runs the connect handler: handlers
    // registered there would miss a message sent at once. The example registers them earlier.
    for (let i = 0; i < 60; i++) {
      const socket = client({ username: "alice", password: "wonderland" }, { transports });
      const reply = first(socket, ["name", "error", "connect_error"]);
      socket.on("connect", () => socket.emit("get_name", { hero: "wonderWoman" }));
      try {
        assert.deepEqual(await reply, ["name", { hero_name: "Diana Prince" }], `connection ${i}`);
      } finally {
        socket.disconnect();
      }
    }
  });

  test(`${name}: unknown hero and malformed payloads get an error event, the socket stays`, async () => {
    const socket = await connected(transports);
    try {
      for (const payload of [{ hero: "superMan" }, "hulk", { hero: 42 }, { villain: "x" }]) {
        const reply = first(socket, ["name", "error", "disconnect"]);
        socket.emit("get_name", payload);
        const [event, body] = await reply;
        assert.equal(event, "error", `${JSON.stringify(payload)} → ${event}`);
        assert.equal(typeof body.error, "string");
      }
      const [event, body] = await (async () => {
        const reply = first(socket, ["name", "error"]);
        socket.emit("get_name", { hero: "batMan" });
        return reply;
      })();
      assert.deepEqual([event, body], ["name", { hero_name: "Bruce Wayne" }]);
      assert.ok(socket.connected);
    } finally {
      socket.disconnect();
    }
  });

  test(`${name}: login refused with a connect_error that says why`, async () => {
    const cases = [
      [{ username: "alice", password: "wrong" }, "invalid username or password"],
      [{ username: "mallory", password: "wonderland" }, "invalid username or password"],
      [undefined, "missing credentials"],
      [{ user: "alice" }, "missing credentials"],
    ];
    for (const [auth, message] of cases) {
      const socket = client(auth, { transports });
      const [event, err] = await first(socket, ["connect", "connect_error"]);
      socket.disconnect();
      assert.equal(event, "connect_error", `${JSON.stringify(auth)} was accepted`);
      assert.match(err.message, new RegExp(message));
    }
    // A well-behaved client is still served.
    (await connected(transports)).disconnect();
  });

  test(`${name}: a forged Origin is refused before Socket.IO sees it`, async () => {
    const socket = client({ username: "alice", password: "wonderland" },
      { transports, extraHeaders: { Origin: "http://evil.test" } });
    const [event, err] = await first(socket, ["connect", "connect_error"]);
    socket.disconnect();
    assert.equal(event, "connect_error", "a foreign origin connected");
    if (name === "polling") {
      // engine.io-client's TransportError carries the HTTP status.
      assert.equal(err.description, 403, `description ${err.description}`);
    }
    (await connected(transports)).disconnect();
  });

  test(`${name}: an oversized payload is refused and the socket closed`, async () => {
    const socket = await connected(transports);
    let named = false;
    socket.on("name", () => { named = true; });
    const reply = first(socket, ["disconnect", "error"]);
    socket.emit("get_name", { hero: "x".repeat(MAX_PAYLOAD * 4) });
    const [event, reason] = await reply;
    assert.equal(event, "disconnect", `got ${event} instead`);
    assert.match(reason, /transport (close|error)/);
    assert.equal(named, false);
    // A well-behaved client is still served.
    const other = await connected(transports);
    const answer = first(other, ["name"]);
    other.emit("get_name", { hero: "ironMan" });
    assert.deepEqual(await answer, ["name", { hero_name: "Tony Stark" }]);
    other.disconnect();
  });
}

test("raw HTTP: a foreign origin gets 403, an over-long polling body 413", async () => {
  let res = await fetch(`${base}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: "http://evil.test" } });
  assert.equal(res.status, 403);
  res = await fetch(`${base}/socket.io/?EIO=4&transport=polling`);
  assert.equal(res.status, 200);
  const open = JSON.parse((await res.text()).slice(1));
  assert.equal(open.maxPayload, MAX_PAYLOAD);
  res = await fetch(`${base}/socket.io/?EIO=4&transport=polling&sid=${open.sid}`, {
    method: "POST", body: "4" + "x".repeat(MAX_PAYLOAD * 2),
  });
  assert.equal(res.status, 413);
});
