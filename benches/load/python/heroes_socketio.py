"""The python-socketio peer of the heroes round-trip scenario: the seed tutorial's app on
python-socketio's asyncio server (aiohttp). A client connects with auth {username, password};
`get_name` {hero} is answered to that client only with `name` {hero_name} (or `error`).
Started by the load harness (benches/load); binds 127.0.0.1 on an ephemeral port and prints
`listening on http://ADDR`."""

import asyncio
import socket

import socketio
from aiohttp import web

HEROES = {
    "ironMan": "Tony Stark",
    "hulk": "Bruce Banner",
    "wonderWoman": "Diana Prince",
    "batMan": "Bruce Wayne",
    "blackPanther": "T'Challa",
}
USERS = {"bench": "bench"}

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", max_http_buffer_size=2048)
app = web.Application()
sio.attach(app)


@sio.event
async def connect(sid, environ, auth):
    auth = auth or {}
    if USERS.get(auth.get("username")) != auth.get("password"):
        raise socketio.exceptions.ConnectionRefusedError("invalid credentials")


@sio.event
async def get_name(sid, request):
    name = HEROES.get((request or {}).get("hero")) if isinstance(request, dict) else None
    if name:
        await sio.emit("name", {"hero_name": name}, to=sid)
    else:
        await sio.emit("error", {"error": "unknown hero"}, to=sid)


async def main():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()
    print(f"listening on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
