"""The authentication conformance table for the WebSocket transport (docs/reference/access.md,
docs/reference/ws.md): both dialects (middleman text, maitred.json) × {no credentials with
``anonymous`` off and on, a wrong token, a wrong key, a valid token of a role that may call,
one of a role that may not, a valid key} → the outcome in the dialect's own form.

Every refusal must: close the connection with 1008 and its reason, before any session exists
(no ``$sys.session.join``); be counted (``denied.authenticate.ws`` and ``ws.<reason>``); be
published on ``$sys.auth.denied`` with action ``authenticate`` and read there by a subscriber on
another transport (an HTTP SSE stream); and leave another connected WebSocket client working.
Over real sockets (127.0.0.1, port 0)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.core.access import Identity
from maitred.core.credentials import new_token
from maitred.core.local import LocalClient, LocalWorker
from tests.e2e.helpers import BrokerThread, wait_until

CALLER_TOKEN, CALLER_SHA = new_token()
WATCHER_TOKEN, WATCHER_SHA = new_token()
WRONG_TOKEN = new_token()[0]
KEY = "app-key"

TOML = """
[access]
default = "allow"

[[access.rules]]
who = ["role:callers"]
actions = ["call"]
names = ["echo"]

[[access.rules]]
allow = false
who = ["role:watchers"]
actions = ["call"]
names = [">"]

[transports.http]
listen = ["127.0.0.1:0"]
switch = false

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
anonymous = {anonymous}

[[transports.ws.keys]]
key = "app-key"
trusted = true
identity = "ws-app"
roles = ["callers"]

[[transports.ws.tokens]]
sha256 = "{caller}"
identity = "caller"
roles = ["callers"]

[[transports.ws.tokens]]
sha256 = "{watcher}"
identity = "watcher"
roles = ["watchers"]
"""

OPS = Identity("ops", frozenset({"ops"}))


class Creds(NamedTuple):
    """What a connection presents: a key (its first frame / in its hello; "" none) and a token
    (on the opening handshake: ``header`` or ``query``; "" none)."""

    key: str = ""
    token: str = ""
    via: str = "header"


class Row(NamedTuple):
    name: str
    creds: Creds
    anonymous: bool
    #: None: accepted; else the close reason (code 1008)
    refused: str | None
    #: accepted: the identity, and whether it may call ``echo``
    identity: str = ""
    may_call: bool = False


ROWS = [
    Row("no-credentials", Creds(), False, "no credentials"),
    Row("no-credentials-anonymous", Creds(), True, None, "anonymous", False),
    Row("wrong-token", Creds(token=WRONG_TOKEN), True, "bad token"),
    Row("wrong-token-query", Creds(token=WRONG_TOKEN, via="query"), True, "bad token"),
    Row("wrong-key", Creds(key="wrong"), True, "bad key"),
    Row("token-may-call", Creds(token=CALLER_TOKEN), False, None, "caller", True),
    Row(
        "token-query-may-call", Creds(token=CALLER_TOKEN, via="query"), False, None, "caller", True
    ),
    Row("token-may-not-call", Creds(token=WATCHER_TOKEN), False, None, "watcher", False),
    Row("key", Creds(key=KEY), False, None, "ws-app", True),
]
DIALECTS = ["middleman", "json"]


class Fixture:
    """A broker with an ``echo`` service (in process), an in-process observer of
    ``$sys.session.join``, an HTTP SSE stream of ``$sys.auth.denied``, and a bystander: a
    WebSocket client (key) connected before anything else happens."""

    def __init__(self, broker: BrokerThread) -> None:
        self.broker = broker
        self.url = broker.endpoints["ws"][0]

        async def setup() -> LocalClient:
            async def echo(body: list[bytes]) -> list[bytes]:
                return [b"echo:" + b"".join(body)]

            LocalWorker(broker.broker, "echo", echo, identity=OPS, label="ops")
            observer = LocalClient(broker.broker, OPS, label="observer")
            observer.subscribe("$sys.session.join")
            return observer

        self.observer: LocalClient = broker.run(setup())
        base = urllib.parse.urlsplit(broker.endpoints["http"][0])
        self.sse = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
        self.sse.request("GET", "/v1/topics/$sys.auth.denied")
        self.stream = self.sse.getresponse()
        assert self.stream.status == 200
        assert self.stream.readline().startswith(b": subscribed to")
        self.stream.readline()
        self.exits = contextlib.ExitStack()
        self.bystander = self.exits.enter_context(connect(self.url, open_timeout=5))
        self.bystander.send(KEY)
        assert self.bystander.recv(5) == "MM OK"
        self.bystander.recv(5)
        self.joins_seen: list[dict[str, Any]] = []

    def close(self) -> None:
        self.exits.close()
        self.sse.close()

    def stats(self) -> dict[str, int]:
        return self.broker.stats()

    def joins(self) -> list[dict[str, Any]]:
        def drain() -> None:
            while not self.observer.events.empty():
                _, body, _ = self.observer.events.get_nowait()
                self.joins_seen.append(json.loads(b"".join(body)))

        self.broker.call(drain)
        return list(self.joins_seen)

    def next_denial(self) -> dict[str, Any]:
        """The next ``$sys.auth.denied`` event on the SSE stream."""
        while True:
            line = self.stream.readline()
            assert line, "the SSE stream ended"
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                assert event["topic"] == "$sys.auth.denied"
                return dict(json.loads(event["text"]))

    def bystander_works(self) -> None:
        self.bystander.send("REQ echo\r\n\r\nstill here\r\n.\r\n")
        frame = self.bystander.recv(5)
        assert frame.startswith("RES echo\r\n") and "\r\n\r\necho:still here\r\n" in frame, frame


@pytest.fixture
def make_fx(make_broker: Callable[..., BrokerThread]) -> Iterator[Callable[[bool], Fixture]]:
    made: list[Fixture] = []

    def make(anonymous: bool) -> Fixture:
        toml = TOML.format(anonymous=str(anonymous).lower(), caller=CALLER_SHA, watcher=WATCHER_SHA)
        fx = Fixture(make_broker(toml))
        made.append(fx)
        return fx

    yield make
    for fx in made:
        fx.close()


def open_ws(fx: Fixture, dialect: str, creds: Creds) -> connect:
    url, headers = fx.url, {}
    if creds.token and creds.via == "query":
        url += "/?" + urllib.parse.urlencode({"access_token": creds.token})
    elif creds.token:
        headers["Authorization"] = f"Bearer {creds.token}"
    protocols = [Subprotocol("maitred.json")] if dialect == "json" else None
    return connect(url, additional_headers=headers, subprotocols=protocols, open_timeout=5)


def handshake(ws: ClientConnection, dialect: str, creds: Creds) -> str:
    """The dialect's handshake; the connection id (raises ConnectionClosed when refused)."""
    if dialect == "middleman":
        if not creds.token:  # with a token there is no key frame: MM OK comes at once
            ws.send(creds.key)
        ok = ws.recv(5)
        assert ok == "MM OK", ok
        return str(ws.recv(5))
    hello: dict[str, Any] = {"type": "hello", "name": "t"}
    if creds.key:
        hello["key"] = creds.key
    ws.send(json.dumps(hello))
    welcome = json.loads(ws.recv(5))
    assert welcome["type"] == "welcome", welcome
    return str(welcome["id"])


def call_echo(ws: ClientConnection, dialect: str) -> tuple[bool, str]:
    """(whether ``echo`` answered, the answer or the refusal in the dialect's form)."""
    if dialect == "middleman":
        ws.send("REQ echo\r\n\r\nhi\r\n.\r\n")
        frame = str(ws.recv(5))
        if frame.startswith("RES echo\r\n"):
            assert "\r\n\r\necho:hi\r\n.\r\n" in frame, frame
            return True, frame
        assert frame.startswith("PUB ERROR\r\n\r\n"), frame
        return False, frame.removeprefix("PUB ERROR\r\n\r\n").removesuffix("\r\n.\r\n")
    ws.send(json.dumps({"type": "request", "id": "r1", "destination": "echo", "data": "aGk="}))
    answer = json.loads(ws.recv(5))
    if answer["type"] == "reply":
        assert base64.b64decode(answer["data"]) == b"echo:hi"
        return True, json.dumps(answer)
    assert answer["type"] == "error", answer
    return False, json.dumps(answer)


def forbidden_form(dialect: str, identity: str) -> str:
    if dialect == "middleman":
        return "Not trusted REQ echo"
    return json.dumps(
        {"type": "error", "id": "r1", "code": 403, "message": f"{identity} may not call echo"}
    )


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_authentication_table(make_fx: Callable[[bool], Fixture], row: Row, dialect: str) -> None:
    fx = make_fx(row.anonymous)
    joins = len(fx.joins())  # the bystander's
    before = fx.stats()
    with open_ws(fx, dialect, row.creds) as ws:
        if row.refused is not None:
            with pytest.raises(ConnectionClosed) as closed:
                handshake(ws, dialect, row.creds)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, row.refused)
            after = fx.stats()
            reason = row.refused.replace(" ", "_")
            assert (
                after.get("denied.authenticate.ws", 0)
                == before.get("denied.authenticate.ws", 0) + 1
            )
            assert after.get(f"ws.{reason}", 0) == before.get(f"ws.{reason}", 0) + 1
            denial = fx.next_denial()
            assert denial["action"] == "authenticate" and denial["transport"] == "ws"
            assert denial["reason"] == row.refused and denial["session"] == ""
            assert denial["name"].startswith("127.0.0.1:")
            assert WRONG_TOKEN not in json.dumps(denial)
            fx.bystander_works()
            assert len(fx.joins()) == joins  # no session was ever opened for it
        else:
            handshake(ws, dialect, row.creds)
            wait_until(lambda: len(fx.joins()) == joins + 1, what="the session")
            assert fx.joins()[-1]["identity"] == row.identity
            answered, answer = call_echo(ws, dialect)
            assert answered == row.may_call, answer
            if not row.may_call:
                assert answer == forbidden_form(dialect, row.identity)
                assert fx.next_denial()["action"] == "call"
            assert fx.stats().get("denied.authenticate.ws", 0) == before.get(
                "denied.authenticate.ws", 0
            )
            fx.bystander_works()


def test_refusals_show_in_mmi_info_and_metrics(make_fx: Callable[[bool], Fixture]) -> None:
    fx = make_fx(False)
    with open_ws(fx, "json", Creds(token=WRONG_TOKEN)) as ws, pytest.raises(ConnectionClosed):
        handshake(ws, "json", Creds(token=WRONG_TOKEN))
    fx.bystander.send("REQ mmi.info\r\n\r\n\r\n.\r\n")
    frame = str(fx.bystander.recv(5))
    assert frame.startswith("RES mmi.info\r\n"), frame
    info = json.loads(frame.split("\r\n\r\n", 1)[1].removesuffix("\r\n.\r\n"))
    assert info["stats"]["denied.authenticate.ws"] == 1
    assert info["stats"]["ws.bad_token"] == 1
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert 'maitred_router_events_total{event="denied.authenticate.ws"} 1.0' in metrics
