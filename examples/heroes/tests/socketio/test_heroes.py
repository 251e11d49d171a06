"""The heroes example through the real PyPI `python-socketio` client.

Run after `cargo test --workspace --all-features` has built the example (target/debug/heroes):
`.venv/bin/python -m pytest examples/heroes/tests/socketio` (`scripts/test` makes the venv from
examples/heroes/tests/socketio/requirements.txt and runs this). HEROES_BIN overrides the path of the example.
"""

import os
import pathlib
import queue
import subprocess
import threading

import pytest
import requests
import socketio

ROOT = pathlib.Path(__file__).resolve().parents[4]
BIN = os.environ.get("HEROES_BIN", str(ROOT / "target/debug/heroes"))
MAX_PAYLOAD = 2048
HEROES = {
    "ironMan": "Tony Stark",
    "hulk": "Bruce Banner",
    "wonderWoman": "Diana Prince",
    "batMan": "Bruce Wayne",
    "blackPanther": "T'Challa",
}
# "Should arrive" waits are generous: the machine may be loaded.
WAIT = 15
TRANSPORTS = ["websocket", "polling"]
GOOD = {"username": "alice", "password": "wonderland"}


@pytest.fixture(scope="module")
def base():
    assert os.path.exists(BIN), f"{BIN} missing: run cargo test --workspace --all-features first"
    child = subprocess.Popen(
        [BIN, "--addr", "127.0.0.1:0", "--user", "alice:wonderland",
         "--max-payload", str(MAX_PAYLOAD), "--connect-rate", "1000", "--connect-burst", "1000",
         "--max-login-failures", "1000", "--ping-interval", "1", "--ping-timeout", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found = queue.Queue()

    def read():
        for line in child.stdout:
            for word in line.split():
                if word.startswith("http://"):
                    found.put(word)
        # Keep draining until the process ends so it never blocks on a full pipe.

    threading.Thread(target=read, daemon=True).start()
    try:
        url = found.get(timeout=30)
    except queue.Empty:
        child.kill()
        pytest.fail("heroes did not print its address in time")
    yield url
    child.kill()
    child.wait(timeout=10)


class Client:
    """A python-socketio client that records the events it gets."""

    def __init__(self, **kwargs):
        self.events = queue.Queue()
        self.sio = socketio.Client(reconnection=False, **kwargs)
        for event in ("connect", "connect_error", "disconnect", "name", "error"):
            self.sio.on(event, self._recorder(event))

    def _recorder(self, event):
        def record(*args):
            self.events.put((event, args[0] if args else None))
        return record

    def connect(self, base, transport, auth=GOOD, headers=None):
        self.sio.connect(base, auth=auth, transports=[transport], headers=headers or {},
                         wait_timeout=WAIT)

    def next(self, *events):
        """The next recorded event among `events` (others are skipped)."""
        while True:
            event, data = self.events.get(timeout=WAIT)
            if event in events:
                return event, data

    def close(self):
        self.sio.disconnect()


def connected(base, transport):
    client = Client()
    client.connect(base, transport)
    assert client.sio.connected
    return client


def ask(client, payload):
    client.sio.emit("get_name", payload)
    return client.next("name", "error", "disconnect")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_login_accepted_and_get_name_round_trip(base, transport):
    client = connected(base, transport)
    bystander = connected(base, transport)
    try:
        for hero, name in HEROES.items():
            assert ask(client, {"hero": hero}) == ("name", {"hero_name": name})
        # The answers went to the asking client only.
        assert bystander.events.qsize() == 1  # its own "connect"
        assert ask(bystander, {"hero": "hulk"}) == ("name", {"hero_name": "Bruce Banner"})
    finally:
        client.close()
        bystander.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_hero_gets_an_error_event(base, transport):
    client = connected(base, transport)
    try:
        for payload in ({"hero": "superMan"}, "hulk", {"hero": 42}):
            event, data = ask(client, payload)
            assert event == "error", payload
            assert isinstance(data["error"], str)
        assert ask(client, {"hero": "batMan"}) == ("name", {"hero_name": "Bruce Wayne"})
    finally:
        client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("auth,message", [
    ({"username": "alice", "password": "wrong"}, "invalid username or password"),
    ({"username": "mallory", "password": "wonderland"}, "invalid username or password"),
    (None, "missing credentials"),
])
def test_login_refused_with_a_message(base, transport, auth, message):
    client = Client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(base, transport, auth=auth)
    event, data = client.next("connect_error", "connect")
    assert event == "connect_error"
    assert message in data["message"], data
    connected(base, transport).close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forged_origin_refused(base, transport):
    if transport == "websocket":
        # websocket-client sends its own Origin: replace it rather than add a second one.
        client = Client(websocket_extra_options={"origin": "http://evil.test"})
        headers = None
    else:
        client = Client()
        headers = {"Origin": "http://evil.test"}
    with pytest.raises(socketio.exceptions.ConnectionError) as refused:
        client.connect(base, transport, headers=headers)
    assert not client.sio.connected
    if transport == "polling":
        assert "403" in str(refused.value) or "forbidden" in str(refused.value).lower(), refused.value
    res = requests.get(f"{base}/socket.io/?EIO=4&transport=polling",
                       headers={"Origin": "http://evil.test"}, timeout=WAIT)
    assert res.status_code == 403
    connected(base, transport).close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_payload_refused(base, transport):
    client = connected(base, transport)
    try:
        client.sio.emit("get_name", {"hero": "x" * (MAX_PAYLOAD * 4)})
        event, _ = client.next("disconnect", "name", "error")
        assert event == "disconnect"
    finally:
        client.close()
    other = connected(base, transport)
    try:
        assert ask(other, {"hero": "ironMan"}) == ("name", {"hero_name": "Tony Stark"})
    finally:
        other.close()
