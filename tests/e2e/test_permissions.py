"""The permission conformance test: ONE ``[access]`` table and ONE list of cases, run over every
transport (docs/reference/access.md). Each transport's peer gets an identity with the role
``app`` (MDP and HTTP from ``[transports.*] identity/roles``, WebSocket from its key); each case
is an action on a name, allowed or denied by the table. An allowed action must be performed; a
denied one must get the transport's own denial form, must not be performed, must be counted in
the router's stats (``denied.<action>``) and published on ``$sys.auth.denied``.

What a transport cannot express is said in ``NOT_EXPRESSIBLE`` (and in access.md): MDP has no
publish/subscribe; maitred's REST API has no way to serve.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
import zmq
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.core.access import Identity
from maitred.core.local import LocalClient, LocalWorker
from maitred.core.routing.patterns import matches
from maitred.transports.ws.mm_codec import MmMessage, parse
from tests.e2e.auth_table import (
    AUTH_ROWS,
    RUNNERS,
    AuthRow,
    HttpBroker,
    Runner,
    WsRunner,
    row_id,
)
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until
from tests.e2e.tls_certs import make_pki

# -- the one table ----------------------------------------------------------------------------

ACCESS = """
[access]
# allow by default: with "deny", a trusted WebSocket connection's own MSG:<id> subscription is
# denied too (no rule can name it; see access.md)
default = "allow"

# first match decides: this deny comes before the allow below
[[access.rules]]
allow = false
who = ["role:app"]
actions = ["call"]
names = ["ok.secret"]

[[access.rules]]
who = ["role:app"]
names = ["ok.>"]

[[access.rules]]
allow = false
who = ["role:app"]
names = ["no.>"]

# subscriptions are decided on patterns: this allow on chat.* does not cover chat.>, whose
# deeper topics the next rule denies
[[access.rules]]
who = ["role:app"]
actions = ["subscribe"]
names = ["chat.*"]

[[access.rules]]
allow = false
who = ["role:app"]
actions = ["subscribe"]
names = ["chat.>"]

[[access.rules]]
allow = false
who = ["role:app"]
names = ["secret.>"]
"""

MDP_KEYS = """
identity = "mdp-app"
roles = ["app"]
"""

TRANSPORTS = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
identity = "http-app"
roles = ["app"]

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
grant_role = "guest"  # middleman EREQ/EPUB/ESUB open doors for the untrusted key

[[transports.ws.keys]]
key = "app-key"
trusted = true
identity = "ws-app"
roles = ["app"]

[[transports.ws.keys]]
key = "guest-key"
trusted = false
identity = "ws-guest"
roles = ["guest"]
"""


class Case(NamedTuple):
    action: str
    name: str
    allowed: bool


CASES = [
    Case("call", "ok.svc", True),
    Case("call", "ok.secret", False),  # the first rule (deny) wins over the second (allow)
    Case("call", "no.svc", False),  # the third rule
    Case("serve", "ok.new", True),
    Case("serve", "no.new", False),
    Case("publish", "ok.topic", True),
    Case("publish", "no.topic", False),
    Case("subscribe", "ok.topic", True),
    Case("subscribe", "no.topic", False),
]

#: transport → actions it has no way to express (the cases are not run there)
NOT_EXPRESSIBLE = {
    "mdp": {"publish", "subscribe"},  # MDP/0.1 and 0.2 have no pub/sub
    "http": {"serve"},  # the REST API only calls; serving over HTTP is the message switch's
    "middleman": set(),
    "json": set(),
    # the same two dialects with the untrusted key: a restricted identity (role guest), which
    # may do only what a rule explicitly allows it or a grant opens (here: nothing)
    "middleman-guest": set(),
    "json-guest": set(),
}
GUESTS = {"middleman-guest", "json-guest"}

IDENTITY = {
    "mdp": "mdp-app",
    "http": "http-app",
    "middleman": "ws-app",
    "json": "ws-app",
    "middleman-guest": "ws-guest",
    "json-guest": "ws-guest",
}
TRANSPORT_NAME = {t: "ws" if t in GUESTS or t in ("middleman", "json") else t for t in IDENTITY}


def allowed(transport: str, case: Case) -> bool:
    return case.allowed and transport not in GUESTS


OPS = Identity("ops", frozenset({"ops"}))
SERVICES = ("ok.svc", "ok.secret", "no.svc")


def cases_for(transport: str) -> list[Any]:
    return [
        pytest.param(
            transport,
            c,
            id=f"{transport}-{c.action}-{c.name}-{'ok' if allowed(transport, c) else 'no'}",
        )
        for c in CASES
        if c.action not in NOT_EXPRESSIBLE[transport]
    ]


ALL_CASES = [p for t in NOT_EXPRESSIBLE for p in cases_for(t)]


# -- the broker and its observers -------------------------------------------------------------


class Fixture:
    """The broker plus in-process helpers with the ``ops`` role: workers for the services the
    cases call (each answers ``served:<name>``) and an observer of ``$sys.auth.denied`` and of
    ``ok.topic`` / ``no.topic``."""

    def __init__(self, broker: BrokerThread) -> None:
        self.broker = broker

        async def setup() -> LocalClient:
            for service in SERVICES:

                async def handler(body: list[bytes], service: str = service) -> list[bytes]:
                    return [f"served:{service}".encode()]

                LocalWorker(broker.broker, service, handler, identity=OPS, label="ops")
            observer = LocalClient(broker.broker, OPS, label="observer")
            for pattern in ("$sys.auth.denied", "ok.topic", "no.topic"):
                observer.subscribe(pattern)
            return observer

        self.observer: LocalClient = broker.run(setup())
        self.seen: list[tuple[str, list[bytes]]] = []

    def stats(self) -> dict[str, int]:
        return self.broker.stats()

    def events(self, topic: str) -> list[list[bytes]]:
        def drain() -> None:
            while not self.observer.events.empty():
                t, body, _ = self.observer.events.get_nowait()
                self.seen.append((t, body))

        self.broker.call(drain)
        return [body for t, body in self.seen if t == topic]

    def denials(self) -> list[dict[str, Any]]:
        return [json.loads(b"".join(body)) for body in self.events("$sys.auth.denied")]

    def publish(self, topic: str, text: str) -> None:
        self.broker.call(lambda: self.observer.publish(topic, text.encode()))

    def subscriptions(self, identity: str) -> set[str]:
        """Every pattern a session of ``identity`` is subscribed to."""

        def patterns() -> set[str]:
            sessions = self.broker.broker.router.sessions.values()
            return {p for s in sessions if s.identity.name == identity for p in s.patterns}

        return self.broker.call(patterns)

    def grants(self) -> dict[str, dict[str, int]]:
        return self.broker.call(self.broker.broker.router.grants.listing)

    def workers(self, service: str) -> list[str]:
        def labels() -> list[str]:
            svc = self.broker.broker.router.services.get(service)
            return [w.label for w in svc.workers] if svc else []

        return self.broker.call(labels)


@pytest.fixture
def fx(make_broker: Callable[..., BrokerThread]) -> Fixture:
    # make_broker adds [transports.mdp] itself (with its endpoint): ours are its extra keys
    return Fixture(make_broker(ACCESS + TRANSPORTS, mdp=MDP_KEYS))


# -- one performer per transport ----------------------------------------------------------------
# Each returns None when the action was performed, else the transport's denial (its own form).


def mdp_perform(fx: Fixture, ctx: zmq.Context[Any], case: Case) -> Any:
    if case.action == "call":
        client = RawClient(ctx, fx.broker.endpoint, "majortomo")
        body = client.call(case.name.encode(), b"hi", timeout=5)
        if body == [f"served:{case.name}".encode()]:
            return None
        return body  # the error reply: [b"403", reason]
    assert case.action == "serve"
    worker = RawWorker(ctx, fx.broker.endpoint, "rfc", case.name.encode())
    worker.ready()
    if case.allowed:
        wait_until(lambda: len(fx.workers(case.name)) == 1, what="the MDP worker")
        return None
    worker.expect_disconnect(timeout=5)
    assert fx.workers(case.name) == []
    return "DISCONNECT"


def http_perform(fx: Fixture, case: Case) -> Any:
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        if case.action == "call":
            conn.request("POST", f"/v1/services/{case.name}", b"hi")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                assert body == f"served:{case.name}".encode()
                return None
        elif case.action == "publish":
            conn.request("POST", f"/v1/topics/{case.name}", b"from-http")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                assert json.loads(body) == {"delivered": 1}
                assert fx.events(case.name) == [[b"from-http"]]
                return None
        else:
            conn.request("GET", f"/v1/topics/{case.name}")
            resp = conn.getresponse()
            if resp.status == 200:
                assert resp.getheader("Content-Type") == "text/event-stream"
                assert resp.readline() == f": subscribed to {case.name}\n".encode()
                resp.readline()
                fx.publish(case.name, "to-http")
                lines = [resp.readline() for _ in range(3)]
                assert any(b"to-http" in line for line in lines), lines
                return None
            body = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, json.loads(body)
    finally:
        conn.close()


def mm_frame(command: str, target: str, body: str = "") -> str:
    return f"{command} {target}\r\n\r\n{body}\r\n.\r\n"


@contextmanager
def mm_connect(fx: Fixture, key: str) -> Iterator[ClientConnection]:
    with connect(fx.broker.endpoints["ws"][0], open_timeout=5) as ws:
        ws.send(key)
        assert ws.recv(5) == "MM OK"
        ws.recv(5)  # the connection id
        yield ws


MM_ERROR = "PUB ERROR\r\n\r\n"


def mm_error_text(frame: Any) -> str | None:
    assert isinstance(frame, str)
    if not frame.startswith(MM_ERROR):
        return None
    return frame[len(MM_ERROR) :].removesuffix("\r\n.\r\n")


def mm_perform(fx: Fixture, case: Case, key: str = "app-key") -> Any:
    with mm_connect(fx, key) as ws:
        if case.action == "call":
            ws.send(mm_frame("REQ", case.name, "hi"))
            frame = ws.recv(5)
            if frame.startswith(f"RES {case.name}\r\n"):
                assert f"\r\n\r\nserved:{case.name}\r\n.\r\n" in frame
                return None
            return mm_error_text(frame)
        if case.action == "serve":
            ws.send(mm_frame("EREQ", case.name))
            if case.allowed and key == "app-key":
                wait_until(lambda: len(fx.workers(case.name)) == 1, what="the EREQ worker")
                return None
            return mm_error_text(ws.recv(5))
        if case.action == "publish":
            ws.send(mm_frame("PUB", case.name, "from-mm"))
            if case.allowed and key == "app-key":
                wait_until(lambda: fx.events(case.name) == [[b"from-mm"]], what="the PUB")
                return None
            return mm_error_text(ws.recv(5))
        ws.send(mm_frame("SUB", case.name))
        if case.allowed and key == "app-key":
            # SUB has no answer; frames are handled in order, so a PUB of our own after it
            # comes back once the subscription is in place
            ws.send(mm_frame("PUB", case.name, "own"))
            frame = ws.recv(5)
            assert frame.startswith(f"PUB {case.name}\r\n") and "\r\n\r\nown\r\n.\r\n" in frame
            fx.publish(case.name, "to-mm")
            frame = ws.recv(5)
            assert frame.startswith(f"PUB {case.name}\r\n") and "\r\n\r\nto-mm\r\n.\r\n" in frame
            return None
        return mm_error_text(ws.recv(5))


@contextmanager
def json_connect(
    fx: Fixture, key: str = "app-key", **hello: Any
) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    url = fx.broker.endpoints["ws"][0]
    with connect(url, subprotocols=[Subprotocol("maitred.json")], open_timeout=5) as ws:
        ws.send(json.dumps({"type": "hello", "key": key, **hello}))
        welcome = json.loads(ws.recv(5))
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


def json_perform(fx: Fixture, case: Case, key: str = "app-key") -> Any:
    if case.action == "serve":
        with json_connect(fx, key, name=case.name, methods=[]) as (ws, welcome):
            if welcome.get("services"):
                assert welcome["services"] == [case.name]
                assert len(fx.workers(case.name)) == 1
                return None
            assert welcome.get("services", []) == []  # omitted when empty
            error = json.loads(ws.recv(5))
            # the broker omits a null id (ws-json.md): the same to a client as "id": null
            error.setdefault("id", None)
            return error
    with json_connect(fx, key, name="consumer") as (ws, _):
        if case.action == "call":
            ws.send(json.dumps({"type": "request", "id": "r1", "destination": case.name}))
            answer = json.loads(ws.recv(5))
            if answer["type"] == "reply":
                assert answer["id"] == "r1"
                assert base64.b64decode(answer["data"]) == f"served:{case.name}".encode()
                return None
            return answer
        if case.action == "publish":
            msg = {"type": "publish", "id": "p1", "topic": case.name, "payload": "from-json"}
            ws.send(json.dumps(msg))
            answer = json.loads(ws.recv(5))
            if answer["type"] == "ack":
                assert answer == {"type": "ack", "id": "p1", "count": 1}
                assert fx.events(case.name) == [[b'"from-json"']]
                return None
            return answer
        ws.send(json.dumps({"type": "subscribe", "id": "s1", "topic": case.name}))
        answer = json.loads(ws.recv(5))
        if answer["type"] == "ack":
            fx.publish(case.name, '"to-json"')
            event = json.loads(ws.recv(5))
            assert event["type"] == "event" and event["payload"] == "to-json", event
            return None
        return answer


# -- the denial forms ---------------------------------------------------------------------------

VERB = {"call": "call", "serve": "serve", "publish": "publish to", "subscribe": "subscribe to"}


def reason(transport: str, case: Case) -> str:
    return f"{IDENTITY[transport]} may not {VERB[case.action]} {case.name}"


def expected_denial(transport: str, case: Case) -> Any:
    why = reason(transport, case)
    if transport == "mdp":
        # a denied call: the error reply [code, reason]; a denied READY: DISCONNECT
        return [b"403", why.encode()] if case.action == "call" else "DISCONNECT"
    if transport == "http":
        return 403, {"error": {"code": "forbidden", "reason": why}}
    if transport == "middleman-guest" and case.action == "serve":
        return (
            f"Not trusted EREQ {case.name}"  # refused by the transport: untrusted keys never serve
        )
    if transport in ("middleman", "middleman-guest"):
        return {
            "call": f"Not trusted REQ {case.name}",
            "serve": f"Cannot serve EREQ {case.name}: {why}",
            "publish": f"Not trusted PUB {case.name}",
            "subscribe": f"Not trusted: SUB {case.name}",
        }[case.action]
    ids = {"call": "r1", "serve": None, "publish": "p1", "subscribe": "s1"}
    message = f"cannot serve {case.name}: {why}" if case.action == "serve" else why
    out = {"type": "error", "id": ids[case.action], "code": 403, "message": message}
    return out


@pytest.mark.parametrize(("transport", "case"), ALL_CASES)
def test_permission_table(transport: str, case: Case, fx: Fixture, ctx: zmq.Context[Any]) -> None:
    before = fx.stats()
    performers: dict[str, Callable[[], Any]] = {
        "mdp": lambda: mdp_perform(fx, ctx, case),
        "http": lambda: http_perform(fx, case),
        "middleman": lambda: mm_perform(fx, case),
        "json": lambda: json_perform(fx, case),
        "middleman-guest": lambda: mm_perform(fx, case, "guest-key"),
        "json-guest": lambda: json_perform(fx, case, "guest-key"),
    }
    denial = performers[transport]()
    check_outcome(fx, transport, case, denial, before)


def check_outcome(
    fx: Fixture, transport: str, case: Case, denial: Any, before: dict[str, int]
) -> None:
    """An allowed case was performed and reported nothing; a denied one got the transport's
    own denial, was counted as ``denied.<action>`` and published on ``$sys.auth.denied``, and
    was not performed."""
    after = fx.stats()
    counter = f"denied.{case.action}"
    if allowed(transport, case):
        assert denial is None
        assert after.get(counter, 0) == before.get(counter, 0)
        assert fx.denials() == []
        return
    assert denial == expected_denial(transport, case)
    if transport == "middleman-guest" and case.action == "serve":
        # the transport refuses EREQ from an untrusted key before asking the router; it reports
        # the refusal to the router all the same (denied.serve, $sys.auth.denied, checked below)
        assert after.get("ws.mm.not_trusted", 0) == before.get("ws.mm.not_trusted", 0) + 1
    assert after.get(counter, 0) == before.get(counter, 0) + 1
    assert fx.denials() == [
        {
            "identity": IDENTITY[transport],
            "session": fx.denials()[0]["session"],
            "transport": TRANSPORT_NAME[transport],
            "action": case.action,
            "name": case.name,
        }
    ]
    # not performed: nothing published, no worker added (a subscription: see the performers)
    if case.action == "publish":
        assert fx.events(case.name) == []
    if case.action == "serve":
        assert fx.workers(case.name) == []


def test_every_transport_has_cases() -> None:
    covered = {(p.values[0], p.values[1].action) for p in ALL_CASES}
    for transport, missing in NOT_EXPRESSIBLE.items():
        for action in ("call", "serve", "publish", "subscribe"):
            assert ((transport, action) in covered) == (action not in missing)


def test_grants_open_doors_for_the_untrusted_key(fx: Fixture) -> None:
    """Middleman's run-time half of the model: a trusted connection's EPUB/ESUB grants the
    untrusted key's role (``grant_role``) what no rule gives it; the JSON dialect sees the
    same grants (one model)."""
    with mm_connect(fx, "guest-key") as guest, mm_connect(fx, "app-key") as app:
        guest.send(mm_frame("PUB", "g.news", "early"))
        assert mm_error_text(guest.recv(5)) == "Not trusted PUB g.news"
        app.send(mm_frame("EPUB", "g.news"))
        app.send(mm_frame("ESUB", "g.news"))

        def granted() -> bool:
            listing = fx.broker.call(fx.broker.broker.router.grants.listing)
            return "g.news" in listing.get("subscribe", {}) and "g.news" in listing.get(
                "publish", {}
            )

        wait_until(granted, what="the grants")
        guest.send(mm_frame("SUB", "g.news"))
        guest.send(mm_frame("PUB", "g.news", "now"))
        frame = guest.recv(5)
        assert frame.startswith("PUB g.news\r\n") and "\r\n\r\nnow\r\n.\r\n" in frame
        with json_connect(fx, "guest-key", name="guest") as (ws, welcome):
            assert welcome.get("trusted", False) is False  # omitted when false
            ws.send(json.dumps({"type": "publish", "id": "p", "topic": "g.news", "payload": 1}))
            assert json.loads(ws.recv(5)) == {"type": "ack", "id": "p", "count": 1}
            ws.send(json.dumps({"type": "publish", "id": "q", "topic": "g.other", "payload": 1}))
            answer = json.loads(ws.recv(5))
            assert answer["type"] == "error" and answer["code"] == 403
    assert [d["name"] for d in fx.denials()] == ["g.news", "g.other"]


# -- wildcard subscriptions: decided by containment, on every transport that subscribes ---------


class Wild(NamedTuple):
    """A subscription ``pattern``; ``probe`` is a topic it matches: published after an allowed
    subscription (it must arrive), or one the rules deny (why the pattern is refused)."""

    pattern: str
    allowed: bool
    probe: str


WILD = [
    Wild("chat.*", True, "chat.room1"),
    Wild("chat.room1", True, "chat.room1"),
    Wild("chat.>", False, "chat.room1.private"),  # the allow on chat.* does not cover it
    Wild(">", False, "secret.plans"),  # intersects the deny on secret.> (and no.>)
    Wild("*.plans", False, "secret.plans"),
    Wild("*.*", False, "secret.plans"),
    Wild("secret.*", False, "secret.plans"),
    Wild("*.topic", False, "no.topic"),
    Wild("ok.>", True, "ok.topic.deep"),
    Wild("ok.*", True, "ok.topic"),
]
WILD_TRANSPORTS = ("middleman", "json", "http")


def wild_subscribe(fx: Fixture, transport: str, w: Wild) -> Any:
    """Subscribe with ``transport``; None when subscribed (and the probe arrived), else the
    transport's denial. While the connection is open, a refused pattern must not be held."""
    identity = IDENTITY[transport]
    if transport == "middleman":
        with mm_connect(fx, "app-key") as ws:
            ws.send(mm_frame("SUB", w.pattern))
            if w.allowed:
                wait_until(lambda: w.pattern in fx.subscriptions(identity), what="the SUB")
                fx.publish(w.probe, "probe")
                frame = ws.recv(5)
                assert frame.startswith(f"PUB {w.probe}\r\n") and "probe" in frame, frame
                return None
            denial = mm_error_text(ws.recv(5))
            assert w.pattern not in fx.subscriptions(identity)
            return denial
    if transport == "json":
        with json_connect(fx, "app-key", name="wild") as (ws, _):
            ws.send(json.dumps({"type": "subscribe", "id": "s1", "topic": w.pattern}))
            answer = json.loads(ws.recv(5))
            if answer["type"] == "ack":
                fx.publish(w.probe, '"probe"')
                event = json.loads(ws.recv(5))
                assert event["topic"] == w.probe and event["payload"] == "probe", event
                return None
            assert w.pattern not in fx.subscriptions(identity)
            return answer
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        conn.request("GET", "/v1/topics/" + urllib.parse.quote(w.pattern, safe=""))
        resp = conn.getresponse()
        if resp.status == 200:
            assert resp.readline() == f": subscribed to {w.pattern}\n".encode()
            resp.readline()
            fx.publish(w.probe, "probe")
            lines = [resp.readline() for _ in range(3)]
            assert any(b'"text":"probe"' in line for line in lines), lines
            return None
        body = resp.read()
        assert w.pattern not in fx.subscriptions(identity)
        return resp.status, json.loads(body)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("transport", "w"),
    [
        pytest.param(t, w, id=f"{t}-{w.pattern}-{'ok' if w.allowed else 'no'}")
        for t in WILD_TRANSPORTS
        for w in WILD
    ],
)
def test_wildcard_subscriptions_are_decided_by_containment(
    transport: str, w: Wild, fx: Fixture
) -> None:
    case = Case("subscribe", w.pattern, w.allowed)
    assert matches(w.pattern, w.probe)
    before = fx.stats()
    denial = wild_subscribe(fx, transport, w)
    check_outcome(fx, transport, case, denial, before)


# -- grants: bounded by the granter, withdrawn when it goes ------------------------------------


class Beyond(NamedTuple):
    """A trusted connection's grant that exceeds its own rights (role app, the table above)."""

    command: str
    target: str
    action: str  # the first action the granter may not do itself (the one reported)


BEYOND = [
    Beyond("ESUB", ">", "subscribe"),  # no.>, secret.> are not app's
    Beyond("ESUB", "chat.>", "subscribe"),
    Beyond("ESUB", "*.plans", "subscribe"),
    Beyond("ESUB", "no.topic", "subscribe"),
    Beyond("EPUB", "no.topic", "publish"),
    Beyond("EPUB", "*.topic", "publish"),
    Beyond("EREQ", "ok.secret", "call"),  # app may serve ok.secret, not call it
]


@pytest.mark.parametrize("b", BEYOND, ids=[f"{b.command}-{b.target}" for b in BEYOND])
def test_a_grant_beyond_the_granters_rights_is_refused(b: Beyond, fx: Fixture) -> None:
    before = fx.stats()
    with mm_connect(fx, "app-key") as app, mm_connect(fx, "guest-key") as guest:
        app.send(mm_frame(b.command, b.target))
        verb = VERB[b.action]
        assert mm_error_text(app.recv(5)) == (
            f"Cannot grant {b.command} {b.target}: ws-app may not {verb} {b.target}"
        )
        assert fx.grants() == {}
        after = fx.stats()
        assert after.get(f"denied.{b.action}", 0) == before.get(f"denied.{b.action}", 0) + 1
        [denial] = fx.denials()
        assert denial["identity"] == "ws-app" and denial["action"] == b.action
        assert denial["name"] == b.target and denial["transport"] == "ws"
        # nothing was opened for the untrusted key
        probe = b.target.replace(">", "x").replace("*", "no")
        if b.action == "subscribe":
            guest.send(mm_frame("SUB", b.target))
            assert mm_error_text(guest.recv(5)) == f"Not trusted: SUB {b.target}"
        elif b.action == "publish":
            guest.send(mm_frame("PUB", probe, "x"))
            assert mm_error_text(guest.recv(5)) == f"Not trusted PUB {probe}"
        else:
            guest.send(mm_frame("REQ", b.target, "x"))
            assert mm_error_text(guest.recv(5)) == f"Not trusted REQ {b.target}"


def test_the_grant_covers_only_its_pattern(fx: Fixture) -> None:
    """A grant ``ESUB news.*`` lets the untrusted key subscribe to news.* and news.eu, not to
    news.> (news.eu.x is not granted); refusals as in the table."""
    with mm_connect(fx, "app-key") as app, mm_connect(fx, "guest-key") as guest:
        app.send(mm_frame("ESUB", "news.*"))
        wait_until(lambda: "news.*" in fx.grants().get("subscribe", {}), what="the grant")
        before = fx.stats()
        guest.send(mm_frame("SUB", "news.>"))
        assert mm_error_text(guest.recv(5)) == "Not trusted: SUB news.>"
        check_outcome(
            fx,
            "middleman-guest",
            Case("subscribe", "news.>", False),
            "Not trusted: SUB news.>",
            before,
        )
        with json_connect(fx, "guest-key", name="g") as (ws, _):
            ws.send(json.dumps({"type": "subscribe", "id": "s1", "topic": "news.>"}))
            assert json.loads(ws.recv(5)) == {
                "type": "error",
                "id": "s1",
                "code": 403,
                "message": "ws-guest may not subscribe to news.>",
            }
            ws.send(json.dumps({"type": "subscribe", "id": "s2", "topic": "news.*"}))
            assert json.loads(ws.recv(5)) == {"type": "ack", "id": "s2"}
            fx.publish("news.eu", '"hello"')
            assert json.loads(ws.recv(5))["topic"] == "news.eu"
        assert fx.stats()["denied.subscribe"] == before.get("denied.subscribe", 0) + 2


def test_grants_end_when_the_granting_connection_closes(fx: Fixture) -> None:
    with mm_connect(fx, "guest-key") as guest:
        with mm_connect(fx, "app-key") as app, mm_connect(fx, "app-key") as app2:
            app.send(mm_frame("ESUB", "ok.topic"))
            app2.send(mm_frame("ESUB", "ok.topic"))  # the same grant, held twice
            app.send(mm_frame("EPUB", "ok.topic"))
            wait_until(lambda: "ok.topic" in fx.grants().get("publish", {}), what="the grants")
            guest.send(mm_frame("SUB", "ok.topic"))
            guest.send(mm_frame("PUB", "ok.topic", "mine"))
            assert "\r\n\r\nmine\r\n.\r\n" in guest.recv(5)
            app.close()
            wait_until(lambda: "publish" not in fx.grants(), what="app's grants to end")
            assert fx.grants() == {"subscribe": {"ok.topic": 1}}  # app2 still holds it
            guest.send(mm_frame("PUB", "ok.topic", "late"))
            assert mm_error_text(guest.recv(5)) == "Not trusted PUB ok.topic"
        wait_until(lambda: fx.grants() == {}, what="every grant to end")
        # the subscription is still there, but the topic is no longer the guest's to receive
        fx.publish("ok.topic", "withheld")
        guest.send(mm_frame("SUB", "ok.topic"))
        assert mm_error_text(guest.recv(5)) == "Not trusted: SUB ok.topic"
        assert fx.stats().get("delivered.withheld", 0) >= 1


# -- broker-owned headers: a client's Cid/Uid/Rid never reach a peer -------------------------------

#: mixed-case spoofs of the broker's headers, as a client sends them
SPOOFS = [("UID", "admin"), ("uId", "root"), ("RID", "999999"), ("rid", "888888"), ("CID", "x")]


def owned(msg: MmMessage) -> dict[str, list[str]]:
    """The broker-owned headers of a middleman message, every value under a lower-case name."""
    out: dict[str, list[str]] = {}
    for k, v in msg.headers:
        if k.lower() in ("cid", "uid", "rid"):
            out.setdefault(k.lower(), []).append(v)
    return out


def mm_frame_with(command: str, target: str, headers: list[tuple[str, str]], body: str) -> str:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"{command} {target}\r\n{lines}\r\n{body}\r\n.\r\n"


@contextmanager
def mm_responder(fx: Fixture, service: str) -> Iterator[ClientConnection]:
    with mm_connect(fx, "app-key") as ws:
        ws.send(mm_frame("EREQ", service))
        wait_until(lambda: len(fx.workers(service)) == 1, what="the EREQ responder")
        yield ws


def answer(responder: ClientConnection, service: str) -> MmMessage:
    """Read the REQ the responder got, answer it with its Rid, return the REQ."""
    req = parse(responder.recv(5))
    assert req.command == "REQ" and req.target == service
    [rid] = owned(req)["rid"]
    responder.send(mm_frame_with("RES", service, [("Rid", rid)], "answer"))
    return req


def assert_broker_owned(msg: MmMessage, cid: str, uid: str = "") -> None:
    heads = owned(msg)
    assert heads["cid"] == [cid] and heads["uid"] == [uid], msg.headers
    assert all(v not in ("admin", "root", "x") for vs in heads.values() for v in vs)
    if "rid" in heads:
        [rid] = heads["rid"]
        assert rid not in ("999999", "888888")


def test_headers_json_request_to_middleman(fx: Fixture) -> None:
    with mm_responder(fx, "ok.hsvc") as responder, json_connect(fx, name="c") as (ws, welcome):
        spoof = dict(SPOOFS) | {"Reqid": "r1"}
        msg = {"type": "request", "id": "q", "destination": "ok.hsvc", "headers": spoof}
        ws.send(json.dumps(msg))
        req = answer(responder, "ok.hsvc")
        assert_broker_owned(req, welcome["id"])
        assert ("Reqid", "r1") in req.headers
        reply = json.loads(ws.recv(5))
        assert reply["type"] == "reply" and reply["id"] == "q"


def test_headers_middleman_to_middleman(fx: Fixture) -> None:
    with mm_responder(fx, "ok.hsvc") as responder, mm_connect(fx, "app-key") as client:
        client.send(mm_frame_with("REQ", "ok.hsvc", SPOOFS, "hi"))
        req = answer(responder, "ok.hsvc")
        res = parse(client.recv(5))
        assert res.command == "RES" and res.body == "answer"
        assert owned(res)["cid"] and owned(res).get("rid") is None
        # the client's own Cid: what the responder saw
        assert_broker_owned(req, owned(req)["cid"][0])
        assert owned(req)["cid"][0] != "x"


def test_headers_rest_request_to_middleman(fx: Fixture) -> None:
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    with mm_responder(fx, "ok.hsvc") as responder:
        conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
        try:
            conn.request("POST", "/v1/services/ok.hsvc", b"hi", headers=dict(SPOOFS))
            req = answer(responder, "ok.hsvc")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"answer"
        finally:
            conn.close()
    heads = owned(req)
    assert len(heads["cid"]) == len(heads["uid"]) == len(heads["rid"]) == 1
    assert heads["uid"] == [""] and heads["rid"] not in (["999999"], ["888888"])


def test_headers_json_publish_to_middleman_subscriber(fx: Fixture) -> None:
    with mm_connect(fx, "app-key") as sub, json_connect(fx, name="p") as (ws, welcome):
        sub.send(mm_frame("SUB", "ok.news"))
        wait_until(lambda: "ok.news" in fx.subscriptions("ws-app"), what="the SUB")
        msg = {"type": "publish", "id": "p", "topic": "ok.news", "payload": 1}
        ws.send(json.dumps(msg | {"headers": dict(SPOOFS)}))
        event = parse(sub.recv(5))
        assert event.command == "PUB" and event.target == "ok.news"
        assert_broker_owned(event, welcome["id"])
        assert "rid" not in owned(event)


def test_headers_middleman_publish_to_json_subscriber(fx: Fixture) -> None:
    with json_connect(fx, name="s") as (ws, _), mm_connect(fx, "app-key") as pub:
        ws.send(json.dumps({"type": "subscribe", "id": "s", "topic": "ok.news"}))
        assert json.loads(ws.recv(5))["type"] == "ack"
        pub.send(mm_frame_with("PUB", "ok.news", [*SPOOFS, ("Reqid", "7")], "hello"))
        event = json.loads(ws.recv(5))
        headers = event["headers"]
        assert {k.lower() for k in headers} == {"cid", "uid", "reqid"}
        assert len(headers) == 3 and headers["Uid"] == "" and headers["Cid"] not in ("", "x")


def test_headers_json_publish_to_rest_sse_subscriber(fx: Fixture) -> None:
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        conn.request("GET", "/v1/topics/ok.news")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.readline()
        resp.readline()
        with json_connect(fx, name="p") as (ws, welcome):
            msg = {"type": "publish", "id": "p", "topic": "ok.news", "payload": 1}
            ws.send(json.dumps(msg | {"headers": {"uid": "admin", "CID": "x"}}))
            assert json.loads(ws.recv(5))["type"] == "ack"
        lines = [resp.readline() for _ in range(3)]
        data = next(line for line in lines if line.startswith(b"data:"))
        headers = json.loads(data[5:])["headers"]
        assert headers == {"Cid": welcome["id"], "Uid": ""}
    finally:
        conn.close()


# -- the reported case: a deny-by-default table ------------------------------------------------

DENY_BY_DEFAULT = """
[access]
default = "deny"

[[access.rules]]
who = ["role:ops"]

[[access.rules]]
who = ["role:chat"]
actions = ["subscribe"]
names = ["chat.*"]
"""

DENY_KEYS = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
identity = "http-chat"
roles = ["chat"]

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
grant_role = "guest"

[[transports.ws.keys]]
key = "nothing-key"  # trusted, but the rules give it nothing
trusted = true
identity = "ws-nothing"
roles = ["nobody"]

[[transports.ws.keys]]
key = "chat-key"
trusted = true
identity = "ws-chat"
roles = ["chat"]

[[transports.ws.keys]]
key = "guest-key"
trusted = false
identity = "ws-guest"
roles = ["guest"]
"""


def test_deny_by_default_grants_and_wildcards(make_broker: Callable[..., BrokerThread]) -> None:
    """A trusted key the rules deny everything grants nothing (``ESUB >``, ``EPUB svc.x``):
    the untrusted key gets no ``$sys`` events and its ``REQ svc.x`` is not served; an allow on
    ``chat.*`` does not admit ``chat.>`` on any transport."""
    fx = Fixture(make_broker(DENY_BY_DEFAULT + DENY_KEYS))

    async def serve() -> None:
        async def handler(body: list[bytes]) -> list[bytes]:
            return [b"served"]

        LocalWorker(fx.broker.broker, "svc.x", handler, identity=OPS, label="ops")

    fx.broker.run(serve())
    before = fx.stats()
    with mm_connect(fx, "nothing-key") as nothing, mm_connect(fx, "guest-key") as guest:
        nothing.send(mm_frame("ESUB", ">"))
        refused = "Cannot grant ESUB >: ws-nothing may not subscribe to >"
        assert mm_error_text(nothing.recv(5)) == refused
        nothing.send(mm_frame("EPUB", "svc.x"))
        assert (
            mm_error_text(nothing.recv(5))
            == "Cannot grant EPUB svc.x: ws-nothing may not publish to svc.x"
        )
        assert fx.grants() == {}
        guest.send(mm_frame("SUB", "$sys.>"))
        assert mm_error_text(guest.recv(5)) == "Not trusted: SUB $sys.>"
        guest.send(mm_frame("REQ", "svc.x", "hi"))
        assert mm_error_text(guest.recv(5)) == "Not trusted REQ svc.x"
    after = fx.stats()
    assert after["denied.subscribe"] == before.get("denied.subscribe", 0) + 2
    assert after["denied.publish"] == before.get("denied.publish", 0) + 1
    assert after["denied.call"] == before.get("denied.call", 0) + 1
    assert [(d["identity"], d["action"], d["name"]) for d in fx.denials()] == [
        ("ws-nothing", "subscribe", ">"),
        ("ws-nothing", "publish", "svc.x"),
        ("ws-guest", "subscribe", "$sys.>"),
        ("ws-guest", "call", "svc.x"),
    ]
    with mm_connect(fx, "chat-key") as chat:
        chat.send(mm_frame("SUB", "chat.>"))
        assert mm_error_text(chat.recv(5)) == "Not trusted: SUB chat.>"
    with json_connect(fx, "chat-key", name="c") as (ws, _):
        ws.send(json.dumps({"type": "subscribe", "id": "s", "topic": "chat.>"}))
        assert json.loads(ws.recv(5))["code"] == 403
    base = urllib.parse.urlsplit(fx.broker.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        conn.request("GET", "/v1/topics/chat.>")
        resp = conn.getresponse()
        assert resp.status == 403
        assert json.loads(resp.read())["error"]["reason"] == "http-chat may not subscribe to chat.>"
    finally:
        conn.close()
    assert fx.stats()["denied.subscribe"] == before.get("denied.subscribe", 0) + 5


# -- authentication: who gets in at all -----------------------------------------------------------
# One table (tests/e2e/auth_table.py: AUTH_ROWS) for the credentials every transport checks
# before any action: no credentials, wrong ones, valid ones of each role, with one runner per
# transport. A refusal gives no session, is counted (denied.authenticate.<transport>), is
# published on $sys.auth.denied (action "authenticate") and leaves a bystander served.


@pytest.fixture(scope="module")
def http_auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpBroker]:
    """One HTTPS broker for every HTTP row."""
    b = HttpBroker(make_pki(tmp_path_factory.mktemp("pki")))
    yield b
    b.thread.stop()


@pytest.fixture
def auth_runner(request: pytest.FixtureRequest) -> Iterator[Callable[[AuthRow], Runner]]:
    opened: list[Runner] = []

    def make(row: AuthRow) -> Runner:
        runner = RUNNERS[row.transport](request, row)
        opened.append(runner)
        return runner

    yield make
    for runner in opened:
        runner.close()


@pytest.mark.parametrize("row", AUTH_ROWS, ids=row_id)
def test_authentication_table(row: AuthRow, auth_runner: Callable[[AuthRow], Runner]) -> None:
    runner = auth_runner(row)
    obs = runner.obs
    before, published, sessions = obs.stats(), len(obs.denials()), obs.sessions()
    joins = len(obs.joins())
    seen = runner.attempt(row)
    assert seen.form == row.form
    assert seen.answered == (row.outcome == "allowed")
    if seen.identity is not None:
        assert seen.identity == ("" if row.outcome == "refused" else row.who)
    after = obs.stats()

    def more(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    refused = row.outcome == "refused"
    counted = more(f"denied.authenticate.{row.transport}")
    assert counted >= 1 if refused and runner.retries else counted == refused
    if refused:  # no session for a refused peer, not even for a moment
        assert obs.sessions() == sessions and len(obs.joins()) == joins
    assert more("denied.call") == (row.outcome == "denied")
    action = {"refused": "authenticate", "denied": "call", "allowed": None}[row.outcome]
    if action is None:
        assert len(obs.denials()) == published
    else:
        wait_until(lambda: len(obs.denials()) == published + 1, what="the denial event")
        event = obs.denials()[-1]
        assert (event["action"], event["transport"]) == (action, row.transport)
        if refused:
            assert (event["reason"], event["session"]) == (row.who, "")
        else:
            assert event["identity"] == row.who
        runner.check_event(row, event, before)
    assert runner.undisturbed()


def test_the_authentication_table_covers_every_transport_and_credential() -> None:
    assert set(RUNNERS) == {"mdp", "http", "ws"}
    for transport in RUNNERS:
        rows = [r for r in AUTH_ROWS if r.transport == transport]
        kinds = {r.credentials for r in rows}
        assert {"none", "wrong"} <= kinds and len(kinds) >= 4, transport
        assert {r.outcome for r in rows} == {"refused", "denied", "allowed"}, transport
    assert len({row_id(r) for r in AUTH_ROWS}) == len(AUTH_ROWS)


def test_ws_refusals_show_in_mmi_info_and_metrics(
    auth_runner: Callable[[AuthRow], Runner],
) -> None:
    (row,) = [r for r in AUTH_ROWS if row_id(r) == "ws-json-anonymous-token-wrong"]
    runner = auth_runner(row)
    assert isinstance(runner, WsRunner)
    assert runner.attempt(row).form == "close 1008 bad token"
    runner.bystander.send("REQ mmi.info\r\n\r\n\r\n.\r\n")
    frame = str(runner.bystander.recv(5))
    assert frame.startswith("RES mmi.info\r\n"), frame
    info = json.loads(frame.split("\r\n\r\n", 1)[1].removesuffix("\r\n.\r\n"))
    assert info["stats"]["denied.authenticate.ws"] == 1
    assert info["stats"]["ws.bad_token"] == 1
    base = urllib.parse.urlsplit(runner.obs.thread.endpoints["http"][0])
    conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert 'maitred_router_events_total{event="denied.authenticate.ws"} 1.0' in metrics
