// Browser test of the stock ticker in real headless Chromium (Debian's `chromium`, driven by
// playwright-core). Run after `cargo test --workspace --all-features` has built the example: `npm test`.
// CHROMIUM_PATH and TICKER_BIN override the defaults.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const ROOT = new URL("../../../..", import.meta.url).pathname;
const BIN = process.env.TICKER_BIN || join(ROOT, "target/debug/stock-ticker");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/browser");
// The bearer token of `/metrics` (`--metrics-token-file`; without it there is no `/metrics`).
const METRICS_TOKEN = "browser-test-metrics-token";
const METRICS_HEADERS = { Authorization: `Bearer ${METRICS_TOKEN}` };

let ticker, base, browser, dir;

// Starts a ticker in `dbDir` with `extra` flags; resolves to [child, base URL]. With `logs`,
// its log lines (stderr, ANSI colours removed) are pushed there.
function startTicker(dbDir, extra = [], logs = null) {
  assert.ok(existsSync(BIN), `${BIN} missing: run cargo test --workspace --all-features (or cargo build -p stock-ticker) first`);
  const tokenFile = join(dbDir, "metrics.token");
  writeFileSync(tokenFile, METRICS_TOKEN);
  const child = spawn(BIN, ["--addr", "127.0.0.1:0", "--db", join(dbDir, "t.db"), "--tick-hz", "20",
    "--user", "alice:wonderland", "--metrics-token-file", tokenFile, ...extra], {
    stdio: ["ignore", "pipe", logs ? "pipe" : "ignore"],
    env: logs ? { ...process.env, RUST_LOG: "info" } : process.env,
  });
  if (logs) {
    // eslint-disable-next-line no-control-regex
    createInterface({ input: child.stderr }).on("line", (line) => logs.push(line.replace(/\x1b\[[0-9;]*m/g, "")));
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("ticker did not start in time")), 30000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const url = line.split(/\s+/).find((w) => w.startsWith("http://") || w.startsWith("https://"));
      if (url) { clearTimeout(timer); resolve([child, url]); }
    });
    child.on("exit", (code) => reject(new Error(`ticker exited with ${code}`)));
  });
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  dir = mkdtempSync(join(tmpdir(), "wsguard-browser-"));
  [ticker, base] = await startTicker(dir);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  ticker?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("log in and watch prices change in the table", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  await page.goto(base);
  await page.fill("#username", "alice");
  await page.fill("#password", "wonderland");
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#status.live", { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length >= 5, null, { timeout: 15000 });
  const before = await page.$$eval("#rows .seq", (cells) => cells.map((c) => c.textContent).join());
  // At 20 changes per second, some row's sequence number moves within a few seconds.
  await page.waitForFunction(
    (prev) => [...document.querySelectorAll("#rows .seq")].map((c) => c.textContent).join() !== prev,
    before, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#rows svg polyline").length >= 1, null, { timeout: 15000 });
  await page.screenshot({ path: join(SHOTS, "ticker.png") });
  await page.close();
});

test("the page works under its Content-Security-Policy, with no violation", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation",
      (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const res = await page.goto(base);
  const csp = res.headers()["content-security-policy"] || "";
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  await page.fill("#username", "alice");
  await page.fill("#password", "wonderland");
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#status.live", { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#rows svg polyline").length >= 1, null, { timeout: 15000 });
  // Style from page.css applied (the CSP would have blocked an inline one).
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, "rgb(15, 20, 25)");
  assert.deepEqual(await page.evaluate(() => window.__violations), []);
  assert.deepEqual(errors, []);
  // The listener does see a violation: an inline script injected now is blocked and reported.
  await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.__ran = true;";
    document.head.append(s);
  });
  await page.waitForFunction(() => window.__violations.length > 0, null, { timeout: 5000 });
  assert.match((await page.evaluate(() => window.__violations))[0], /^script-src/);
  assert.equal(await page.evaluate(() => window.__ran), undefined);
  await page.close();
});

test("wrong password is refused with a clear message", async () => {
  const page = await browser.newPage();
  await page.goto(base);
  await page.fill("#username", "alice");
  await page.fill("#password", "not-the-password");
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.getElementById("banner").textContent.includes("401"), null, { timeout: 10000 });
  await page.close();
});

test("a page served from another origin cannot open the socket", async () => {
  const res = await fetch(`${base}/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "alice", password: "wonderland" }),
  });
  const { token } = await res.json();
  const ws = base.replace("http://", "ws://") + "/ws";
  // Even with a valid token, the foreign page's handshake carries its own Origin.
  const evil = createServer((_req, out) => {
    out.setHeader("content-type", "text/html");
    out.end(`<script>
      const s = new WebSocket(${JSON.stringify(ws)}, ["ticker.v1", "bearer." + ${JSON.stringify(token)}]);
      s.onopen = () => { document.title = "opened"; };
      s.onclose = (e) => { if (document.title !== "opened") document.title = "refused " + e.code; };
    </script>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const page = await browser.newPage();
  try {
    await page.goto(`http://127.0.0.1:${evil.address().port}/`);
    await page.waitForFunction(() => document.title.length > 0, null, { timeout: 10000 });
    assert.match(await page.title(), /^refused/);
    const metrics = await (await fetch(`${base}/metrics`, { headers: METRICS_HEADERS })).text();
    assert.match(metrics, /ticker_rejections_total\{cause="origin_not_allowed"\} [1-9]/);
  } finally {
    await page.close();
    evil.close();
  }
});

// HTTP/2 WebSockets (RFC 8441). Over TLS the ticker offers `h2` by ALPN and announces extended
// CONNECT in its SETTINGS, so Chromium runs the page's socket as one more stream of the page's
// HTTP/2 connection. Chromium's HTTP/1.1 handshake always carries `Sec-WebSocket-Key` and is
// answered `101`; its HTTP/2 handshake has no key and is answered `200`.
describe("over TLS, HTTP/2", () => {
  const PER_IP = 2;
  let h2Ticker, h2Base, h2Dir, context;
  const logs = [];
  /** The WebSocket handshakes the browser sent, by CDP request id. */
  const handshakes = new Map();

  before(async () => {
    h2Dir = mkdtempSync(join(tmpdir(), "wsguard-browser-h2-"));
    [h2Ticker, h2Base] = await startTicker(h2Dir, ["--tls", "--max-conns-per-ip", String(PER_IP)], logs);
    assert.match(h2Base, /^https:\/\//);
    // The certificate is self-signed.
    context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 760 } });
  });

  after(async () => {
    await context?.close();
    h2Ticker?.kill();
    if (h2Dir) rmSync(h2Dir, { recursive: true, force: true });
  });

  /** A page whose WebSocket handshakes are recorded from the DevTools protocol. */
  async function watchedPage() {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketWillSendHandshakeRequest", ({ requestId, request }) => {
      handshakes.set(requestId, { headers: request.headers, status: null, error: null });
    });
    cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
      const h = handshakes.get(requestId);
      if (h) h.status = response.status;
    });
    cdp.on("Network.webSocketFrameError", ({ requestId, errorMessage }) => {
      const h = handshakes.get(requestId);
      if (h) h.error = errorMessage;
    });
    return page;
  }

  const hasKey = (h) => Object.keys(h.headers).some((name) => name.toLowerCase() === "sec-websocket-key");

  async function metrics(page) {
    return page.evaluate(async (headers) => (await fetch("/metrics", { headers })).text(), METRICS_HEADERS);
  }

  function counter(text, line) {
    const found = text.split("\n").find((l) => l.startsWith(line + " "));
    return found ? Number(found.slice(line.length + 1)) : 0;
  }

  test("the page's socket runs over HTTP/2 and live prices arrive", async () => {
    const page = await watchedPage();
    try {
      await page.goto(h2Base);
      const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
      assert.equal(protocol, "h2", "the page itself came over HTTP/2");
      await page.fill("#username", "alice");
      await page.fill("#password", "wonderland");
      await page.click("#login button[type=submit]");
      await page.waitForSelector("#status.live", { timeout: 15000 });
      await page.waitForFunction(() => document.querySelectorAll("#rows tr").length >= 5, null, { timeout: 15000 });
      const first = await page.$$eval("#rows .seq", (cells) => cells.map((c) => c.textContent).join());
      await page.waitForFunction(
        (prev) => [...document.querySelectorAll("#rows .seq")].map((c) => c.textContent).join() !== prev,
        first, { timeout: 15000 });

      // The browser's side: one handshake, without a key, answered 200.
      const opened = [...handshakes.values()];
      assert.equal(opened.length, 1, JSON.stringify(opened));
      assert.equal(opened[0].status, 200, "an RFC 8441 handshake is answered 200, not 101");
      assert.ok(!hasKey(opened[0]), "no Sec-WebSocket-Key: not an HTTP/1.1 upgrade");
      // The server's side: its metrics and its log name the HTTP version of the socket.
      const text = await metrics(page);
      assert.equal(counter(text, 'ticker_sockets_opened_total{version="HTTP/2.0"}'), 1, text);
      assert.equal(counter(text, 'ticker_sockets_opened_total{version="HTTP/1.1"}'), 0, text);
      assert.ok(logs.some((l) => l.includes("socket opened") && l.includes("http_version=HTTP/2.0")), logs.join("\n"));
      await page.screenshot({ path: join(SHOTS, "ticker-h2.png") });
    } finally {
      await page.close();
    }
  });

  test("over HTTP/2 the guard refuses a missing ticket (401), a socket past the quota (429) and a foreign page (403)", async () => {
    handshakes.clear();
    const page = await watchedPage();
    const evil = createServer((_req, out) => {
      const wss = h2Base.replace("https://", "wss://") + "/ws";
      out.setHeader("content-type", "text/html");
      // A credentialed request first, so the browser has an HTTP/2 connection to the ticker
      // in this page's partition and sends the handshake on it.
      out.end(`<script>
        fetch(${JSON.stringify(h2Base + "/healthz")}, { mode: "no-cors", credentials: "include" }).catch(() => {})
          .then(() => {
            const s = new WebSocket(${JSON.stringify(wss)}, ["ticker.v1"]);
            s.onopen = () => { document.title = "opened"; };
            s.onclose = (e) => { if (document.title !== "opened") document.title = "refused " + e.code; };
          });
      </script>`);
    });
    await new Promise((r) => evil.listen(0, "127.0.0.1", r));
    const evilPage = await watchedPage();
    try {
      await page.goto(h2Base);
      // Session storage is per page: sign in again.
      await page.fill("#username", "alice");
      await page.fill("#password", "wonderland");
      await page.click("#login button[type=submit]");
      await page.waitForSelector("#status.live", { timeout: 15000 });
      const before = await metrics(page);

      const outcomes = await page.evaluate(async () => {
        const token = sessionStorage.getItem("ticker.token");
        const attempt = (protocols) => new Promise((resolve) => {
          const s = new WebSocket(`wss://${location.host}/ws`, protocols);
          s.onopen = () => resolve("open");
          s.onclose = () => resolve("refused");
        });
        // No ticket; then one more socket (the page holds the first of 2); then one too many.
        return [await attempt(["ticker.v1"]), await attempt(["ticker.v1", "bearer." + token]),
          await attempt(["ticker.v1", "bearer." + token])];
      });
      assert.deepEqual(outcomes, ["refused", "open", "refused"]);

      await evilPage.goto(`http://127.0.0.1:${evil.address().port}/`);
      await evilPage.waitForFunction(() => document.title.length > 0, null, { timeout: 10000 });
      assert.match(await evilPage.title(), /^refused/);

      // Four handshakes on HTTP/2 streams: the page's, the one that fitted (200) and three
      // refusals. Chromium names the status of the 429 and the 403; for the 401 (a
      // `WWW-Authenticate: Bearer` challenge) it reports no text, so the server's count says it.
      const seen = [...handshakes.values()];
      const summary = JSON.stringify(seen.map((h) => [h.status, h.error]));
      assert.equal(seen.filter((h) => h.status === 200).length, 2, summary);
      assert.equal(seen.filter((h) => h.error !== null).length, 3, summary);
      const codes = seen.map((h) => h.error?.match(/response code: (\d+)/)?.[1]).filter(Boolean).sort();
      assert.deepEqual(codes, ["403", "429"], summary);
      for (const h of seen) assert.ok(!hasKey(h), "every handshake went over HTTP/2: " + JSON.stringify(h.headers));

      const after = await metrics(page);
      const delta = (line) => counter(after, line) - counter(before, line);
      assert.equal(delta('ticker_rejections_total{cause="auth"}'), 1, after);
      assert.equal(delta('ticker_rejections_total{cause="rate_limited"}'), 1, after);
      // An http:// page against a TLS server: `origin_insecure_origin` (or `origin_not_allowed`).
      const origins = (text) => text.split("\n").filter((l) => l.startsWith('ticker_rejections_total{cause="origin_'))
        .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
      assert.equal(origins(after) - origins(before), 1, after);
      assert.equal(delta('ticker_sockets_opened_total{version="HTTP/2.0"}'), 1, after);
      assert.equal(counter(after, 'ticker_sockets_opened_total{version="HTTP/1.1"}'), 0, after);
    } finally {
      await evilPage.close();
      await page.close();
      evil.close();
    }
  });
});
