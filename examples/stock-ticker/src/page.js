// The stock ticker page's script, served as /page.js (the page's CSP allows no inline script).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("ticker.token"), ws: null, rows: new Map(), retry: 0, timer: null };

const CLOSE_TEXT = {
  1000: "closed normally",
  1001: "the server is going away (shutdown, restart or socket lifetime reached)",
  1006: "the connection was lost",
  1008: "refused by policy",
  1009: "a message was too big",
  1011: "the server hit an error",
  1013: "the server is overloaded or this client fell too far behind",
};

function setStatus(kind, text) {
  $("status").className = "status " + kind;
  $("status-text").textContent = text;
}

function banner(text, kind) {
  const b = $("banner");
  b.textContent = text || "";
  b.className = kind || "";
  b.style.display = text ? "block" : "none";
}

function showLogin(message) {
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000); state.ws = null; }
  clearTimeout(state.timer);
  state.token = null;
  sessionStorage.removeItem("ticker.token");
  $("login").hidden = false;
  $("board").hidden = true;
  $("logout").hidden = true;
  setStatus("", "signed out");
  banner(message || "", message ? "" : "info");
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  banner("");
  let res;
  try {
    res = await fetch("/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
  } catch (err) {
    return banner("Cannot reach the server: " + err.message);
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const wait = res.headers.get("retry-after");
    return banner(`Sign-in refused (${res.status}): ${body.error || res.statusText}` + (wait ? ` — try again in ${wait} s` : ""));
  }
  state.token = body.token;
  sessionStorage.setItem("ticker.token", body.token);
  $("password").value = "";
  connect();
});

$("logout").addEventListener("click", () => showLogin());

function connect() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  setStatus("connecting", "connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The token travels as a subprotocol entry: browsers cannot set headers on a WebSocket,
  // and a query string would end up in access logs. The server selects only "ticker.v1".
  const ws = new WebSocket(`${scheme}://${location.host}/ws`, ["ticker.v1", "bearer." + state.token]);
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.retry = 0;
    banner("");
    setStatus("live", "live");
  };
  ws.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (msg.type === "snapshot") msg.prices.forEach((p) => upsert(p, false));
    else if (msg.type === "price") upsert(msg, true);
    else if (msg.type === "error") banner("Server: " + msg.error);
  };
  ws.onclose = async (e) => {
    state.ws = null;
    if (!opened) return diagnose();
    const text = CLOSE_TEXT[e.code] || "closed";
    const reason = e.reason ? ` (${e.reason})` : "";
    setStatus("closed", `closed ${e.code}`);
    if (e.code === 1008) {
      // Policy: expired or revoked credential. A new sign-in is needed.
      return showLogin(`The server closed the connection: ${e.code} ${text}${reason}. Please sign in again.`);
    }
    // A server shutting down says when to come back: `reconnect_after_ms=<N>` in the reason,
    // with a jitter of its own for each client.
    const hint = /(?:^|;)\s*reconnect_after_ms=(\d+)\s*(?:;|$)/.exec(e.reason || "");
    scheduleReconnect(`The server closed the connection: ${e.code} ${text}${reason}.`, null, hint ? Number(hint[1]) : null);
  };
}

// Browsers hide why a handshake failed. Ask the same route with a plain request: the guard
// layers answer it with the same status they gave the handshake (403, 401, 429, 503). The
// server uses a one-time token up only in a real handshake, so asking does not burn it.
async function diagnose() {
  let status = 0, wait = null, body = "";
  try {
    const res = await fetch("/ws", { headers: { authorization: "Bearer " + state.token } });
    status = res.status;
    wait = res.headers.get("retry-after");
    body = (await res.text()).trim();
  } catch { /* unreachable */ }
  setStatus("closed", status ? `refused ${status}` : "offline");
  if (status === 401) return showLogin(`The server refused the connection (401): ${body || "sign-in expired"}. Please sign in again.`);
  if (status === 403) return showLogin(`The server refused the connection (403): ${body || "origin not allowed"}.`);
  if (status === 429 || status === 503) {
    return scheduleReconnect(`The server refused the connection (${status}): ${body || "too many connections"}.`, wait);
  }
  scheduleReconnect(status ? `The connection failed (HTTP ${status}).` : "The server is unreachable.");
}

function scheduleReconnect(message, retryAfter, delayMs) {
  const delay = delayMs != null ? delayMs
    : retryAfter ? Number(retryAfter) * 1000 : Math.min(30000, 1000 * 2 ** state.retry++);
  banner(`${message} Reconnecting in ${Math.round(delay / 1000)} s…`);
  clearTimeout(state.timer);
  state.timer = setTimeout(() => state.token && connect(), delay);
}

function spark(history) {
  if (history.length < 2) return "";
  const min = Math.min(...history), max = Math.max(...history), span = max - min || 1;
  const points = history.map((v, i) => `${(i / (history.length - 1) * 138 + 1).toFixed(1)},${(28 - (v - min) / span * 26).toFixed(1)}`);
  const color = history[history.length - 1] >= history[0] ? "var(--up)" : "var(--down)";
  return `<polyline points="${points.join(" ")}" stroke="${color}"/>`;
}

function upsert(p, live) {
  let row = state.rows.get(p.symbol);
  if (!row) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = p.symbol;
    tr.innerHTML = `<td><input type="checkbox" checked aria-label="live updates"></td><td class="symbol"></td>
      <td class="price"></td><td class="change muted">—</td><td><svg class="spark" viewBox="0 0 140 30"></svg></td><td class="seq muted"></td>`;
    tr.querySelector(".symbol").textContent = p.symbol;
    tr.querySelector("input").addEventListener("change", (e) => {
      if (state.ws && state.ws.readyState === WebSocket.OPEN) {
        state.ws.send(JSON.stringify({ type: e.target.checked ? "subscribe" : "unsubscribe", symbols: [p.symbol] }));
      }
      tr.style.opacity = e.target.checked ? 1 : 0.45;
    });
    row = { tr, open: p.price, last: p.price, history: [], seq: p.seq };
    state.rows.set(p.symbol, row);
    const rows = [...state.rows.values()].sort((a, b) => a.tr.dataset.symbol.localeCompare(b.tr.dataset.symbol));
    rows.forEach((r) => $("rows").append(r.tr));
  }
  if (live && p.seq <= row.seq) return;
  const cell = row.tr.querySelector(".price");
  const dir = p.price > row.last ? "up" : p.price < row.last ? "down" : "";
  cell.textContent = p.price.toFixed(2);
  if (live && dir) {
    cell.classList.remove("flash-up", "flash-down");
    void cell.offsetWidth;
    cell.classList.add("flash-" + dir);
    setTimeout(() => cell.classList.remove("flash-" + dir), 600);
  }
  const change = (p.price - row.open) / row.open * 100;
  const ch = row.tr.querySelector(".change");
  ch.textContent = (change >= 0 ? "+" : "") + change.toFixed(2) + " %";
  ch.className = "change " + (change > 0 ? "up" : change < 0 ? "down" : "muted");
  row.last = p.price;
  row.seq = p.seq;
  row.history.push(p.price);
  if (row.history.length > 60) row.history.shift();
  row.tr.querySelector("svg").innerHTML = spark(row.history);
  row.tr.querySelector(".seq").textContent = "#" + p.seq;
}

if (state.token) connect(); else showLogin();
