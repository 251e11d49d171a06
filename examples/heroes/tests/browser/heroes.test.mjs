// The heroes page in real headless Chromium: the login form, the hero buttons, the refusal
// message. Run after `cargo test --workspace --all-features` has built the example: `npm test`. HEROES_BIN and
// CHROMIUM_PATH override the defaults.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const ROOT = new URL("../../../..", import.meta.url).pathname;
const BIN = process.env.HEROES_BIN || join(ROOT, "target/debug/heroes");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/browser");
const WAIT = { timeout: 15000 };

let server, base, browser;

function startHeroes() {
  assert.ok(existsSync(BIN), `${BIN} missing: run cargo test --workspace --all-features (or cargo build -p heroes) first`);
  const child = spawn(BIN, ["--addr", "127.0.0.1:0", "--user", "alice:wonderland"],
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

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  [server, base] = await startHeroes();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.kill();
});

async function signIn(page, password) {
  await page.goto(base);
  await page.fill("#username", "alice");
  await page.fill("#password", password);
  await page.click("#connect");
}

test("heroes page: sign in, press heroes, get their names", async () => {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  await signIn(page, "wonderland");
  await page.waitForSelector("#heroes:not([hidden])", WAIT);
  for (const [hero, name] of [["hulk", "Bruce Banner"], ["blackPanther", "T'Challa"]]) {
    await page.click(`button[data-hero=${hero}]`);
    await page.waitForFunction((n) => document.getElementById("name").textContent === n, name, WAIT);
  }
  await page.screenshot({ path: join(SHOTS, "heroes.png") });
  await page.close();
});

test("heroes page: works under its Content-Security-Policy, with no violation", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation",
      (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await signIn(page, "wonderland");
  await page.waitForSelector("#heroes:not([hidden])", WAIT);
  await page.click("button[data-hero=hulk]");
  await page.waitForFunction(() => document.getElementById("name").textContent === "Bruce Banner", null, WAIT);
  // style.css applied: the body's max-width comes from it.
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).maxWidth), "640px");
  assert.deepEqual(await page.evaluate(() => window.__violations), []);
  assert.deepEqual(errors, []);
  // The listener does see a violation: an inline style injected now is blocked and reported.
  await page.evaluate(() => {
    const s = document.createElement("style");
    s.textContent = "body { max-width: 1px; }";
    document.head.append(s);
  });
  await page.waitForFunction(() => window.__violations.length > 0, null, WAIT);
  assert.match((await page.evaluate(() => window.__violations))[0], /^style-src/);
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).maxWidth), "640px");
  await page.close();
});

test("heroes page: a wrong password shows the server's refusal", async () => {
  const page = await browser.newPage();
  await signIn(page, "not-the-password");
  await page.waitForFunction(
    () => document.getElementById("status").textContent.includes("invalid username or password"), null, WAIT);
  assert.equal(await page.isHidden("#heroes"), true);
  await page.close();
});

test("heroes page: a page on another origin cannot connect", async () => {
  const evil = createServer((_req, out) => {
    out.setHeader("content-type", "text/html");
    out.end(`<script src="${base}/socket.io.min.js"></script><script>
      const s = io(${JSON.stringify(base)}, { auth: { username: "alice", password: "wonderland" },
        reconnection: false, transports: ["websocket"] });
      s.on("connect", () => { document.title = "connected"; });
      s.on("connect_error", (e) => { document.title = "refused " + e.message; });
    </script>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const page = await browser.newPage();
  try {
    await page.goto(`http://127.0.0.1:${evil.address().port}/`);
    await page.waitForFunction(() => document.title.length > 0, null, WAIT);
    assert.match(await page.title(), /^refused/);
  } finally {
    await page.close();
    evil.close();
  }
});
