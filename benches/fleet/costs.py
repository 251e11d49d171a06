#!/usr/bin/env python3
"""Redis cost of the fleet, measured: commands per handshake and per socket-minute.

Starts the stock ticker (the real binary) in fleet mode against a running Redis, reads
`INFO commandstats` before and after (1) N handshakes, each socket opened and closed, and
(2) S sockets held open for T seconds, and prints the deltas per handshake and per
socket-minute, plus the instance's background traffic with no socket (T seconds idle).
Standard library only; a minimal WebSocket client that answers the server's pings.
Everything binds or connects to 127.0.0.1; every loop is bounded. See FLEET.md.

Run (after `cargo build -p stock-ticker --features redis`):
    redis-server --port 6394 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
    python3 benches/fleet/costs.py --redis-port 6394 --handshakes 200 --sockets 200 --hold 60
"""

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def commandstats(port):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        check=True, capture_output=True, text=True,
    ).stdout
    stats = {}
    for line in out.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            stats[m.group(1)] = int(m.group(2))
    return stats


def delta(before, after):
    # `info` and `client` are this script's own probes.
    return {
        k: after[k] - before.get(k, 0)
        for k in sorted(after)
        if after[k] != before.get(k, 0) and k not in ("info",)
    }


def show(title, d, per, unit):
    total = sum(d.values())
    print(f"\n{title}: {total} commands, {total / per:.2f} per {unit}")
    for k, v in sorted(d.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<22} {v:>8}  {v / per:8.3f} per {unit}")


async def http_login(host, port, user, password):
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"username": user, "password": password})
    writer.write(
        (f"POST /login HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    )
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise SystemExit(f"login failed: {head!r}")
    return json.loads(rest)["token"]


class Socket:
    """A minimal WebSocket client: handshake, answer pings, discard data, close."""

    async def open(self, host, port, token):
        self.reader, self.writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Origin: http://{host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        status = head.split(b"\r\n")[0]
        if b" 101 " not in status:
            raise RuntimeError(f"handshake refused: {status!r}")
        self.task = asyncio.create_task(self.pump())

    def send(self, opcode, payload=b""):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def pump(self):
        try:
            while True:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await self.reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await self.reader.readexactly(n)
                opcode = b0 & 0x0F
                if opcode == 9:
                    self.send(10, payload)
                elif opcode == 8:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def close(self):
        self.send(8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(self.task, 10)
        except asyncio.TimeoutError:
            self.task.cancel()
        self.writer.close()


def start_ticker(binary, redis_port, prefix, extra):
    tmp = tempfile.mkdtemp(prefix="wsguard-fleet-costs-")
    secret = os.path.join(tmp, "ticket.secret")
    with open(secret, "w") as f:
        f.write("a ticket secret for the fleet cost measurement\n")
    args = [
        binary, "--addr", "127.0.0.1:0", "--db", os.path.join(tmp, "ticker.db"),
        "--user", "alice:wonderland", "--tick-hz", "0",
        "--redis", f"redis://127.0.0.1:{redis_port}", "--redis-prefix", prefix,
        "--ticket-secret-file", secret,
        # Limits out of the way: the measurement opens many sockets from one address and user.
        "--connect-rate", "100000", "--connect-burst", "100000",
        "--max-conns-per-ip", "100000", "--max-conns-per-user", "100000",
    ] + extra
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    for line in proc.stdout:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1)), tmp
        if time.time() > deadline:
            break
    proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)
    raise SystemExit("the ticker did not name its address")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--ticker", default="target/debug/stock-ticker")
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--hold", type=float, default=60.0, help="seconds the sockets stay open")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds with no socket")
    ap.add_argument("--lease-ttl-ms", type=int, default=30_000)
    a = ap.parse_args()
    prefix = f"costs-{os.getpid()}"
    proc, port, tmp = start_ticker(a.ticker, a.redis_port, prefix, ["--lease-ttl-ms", str(a.lease_ttl_ms)])
    host = "127.0.0.1"
    try:
        token = await http_login(host, port, "alice", "wonderland")
        # Warm up: scripts loaded, connections made.
        s = Socket()
        await s.open(host, port, token)
        await s.close()
        await asyncio.sleep(1)

        before = commandstats(a.redis_port)
        t0 = time.monotonic()
        for _ in range(a.handshakes):
            s = Socket()
            await s.open(host, port, token)
            await s.close()
        await asyncio.sleep(1)  # the last release reaches Redis
        elapsed = time.monotonic() - t0
        show(f"{a.handshakes} handshakes (open + close, one at a time, {elapsed:.1f} s)",
             delta(before, commandstats(a.redis_port)), a.handshakes, "handshake")

        sockets = []
        for _ in range(a.sockets):
            s = Socket()
            await s.open(host, port, token)
            sockets.append(s)
        await asyncio.sleep(0.5)
        before = commandstats(a.redis_port)
        t0 = time.monotonic()
        await asyncio.sleep(a.hold)
        held = time.monotonic() - t0
        after = commandstats(a.redis_port)
        minutes = a.sockets * held / 60
        show(f"{a.sockets} sockets held {held:.1f} s ({minutes:.1f} socket-minutes, lease TTL "
             f"{a.lease_ttl_ms} ms)", delta(before, after), minutes, "socket-minute")
        await asyncio.gather(*(s.close() for s in sockets))
        await asyncio.sleep(1)

        before = commandstats(a.redis_port)
        await asyncio.sleep(a.idle)
        show(f"no socket, {a.idle:.0f} s (the instance's background)",
             delta(before, commandstats(a.redis_port)), a.idle / 60, "instance-minute")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
