// Browser test of the stock ticker in real headless Chromium (Debian's `chromium`, driven by
// playwright-core). Run after `cargo test --workspace --all-features` has built the example: `npm test`.
// CHROMIUM_PATH and TICKER_BIN override the defaults.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const ROOT = new URL("../../../..", import.meta.url).pathname;
const BIN = process.env.TICKER_BIN || join(ROOT, "target/debug/stock-ticker");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/browser");

let ticker, base, browser, dir;

function startTicker() {
  assert.ok(existsSync(BIN), `${BIN} missing: run cargo test --workspace --all-features (or cargo build -p stock-ticker) first`);
  dir = mkdtempSync(join(tmpdir(), "wsguard-browser-"));
  const child = spawn(BIN, ["--addr", "127.0.0.1:0", "--db", join(dir, "t.db"), "--tick-hz", "20",
    "--user", "alice:wonderland"], { stdio: ["ignore", "pipe", "ignore"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("ticker did not start in time")), 30000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const url = line.split(/\s+/).find((w) => w.startsWith("http://"));
      if (url) { clearTimeout(timer); resolve([child, url]); }
    });
    child.on("exit", (code) => reject(new Error(`ticker exited with ${code}`)));
  });
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  [ticker, base] = await startTicker();
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
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /ticker_rejections_total\{cause="origin_not_allowed"\} [1-9]/);
  } finally {
    await page.close();
    evil.close();
  }
});
