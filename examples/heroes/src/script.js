// The heroes page: sign in with the Socket.IO `auth` payload, then each hero button emits
// `get_name` and the server answers this client only with `name`.
"use strict";

const $ = (id) => document.getElementById(id);
let socket = null;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(line);
}

function signedIn(yes) {
  $("heroes").hidden = !yes;
  $("connect").disabled = yes;
  $("disconnect").disabled = !yes;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket) socket.disconnect();
  // No automatic reconnection: a refused login should stay refused until the user retries.
  socket = io({
    auth: { username: $("username").value, password: $("password").value },
    reconnection: false,
  });
  status("Connecting…");
  socket.on("connect", () => {
    status(`Connected as ${$("username").value}.`);
    log(`connected (${socket.io.engine.transport.name})`);
    signedIn(true);
  });
  socket.on("connect_error", (err) => {
    // The server's refusal (bad credentials) or a transport failure (403 origin, 429 rate).
    status(`Connection refused: ${err.message}`, true);
    log(`connect_error: ${err.message}`);
    signedIn(false);
  });
  socket.on("disconnect", (reason) => {
    status(`Disconnected: ${reason}`, reason !== "io client disconnect");
    log(`disconnected: ${reason}`);
    signedIn(false);
  });
  socket.on("name", (data) => {
    $("name").textContent = data.hero_name;
    log(`name: ${data.hero_name}`);
  });
  socket.on("error", (data) => {
    status(`Error: ${data && data.error}`, true);
    log(`error: ${data && data.error}`);
  });
});

$("disconnect").addEventListener("click", () => {
  if (socket) socket.disconnect();
});

for (const button of document.querySelectorAll("#heroes button")) {
  button.addEventListener("click", () => {
    if (socket && socket.connected) socket.emit("get_name", { hero: button.dataset.hero });
  });
}
