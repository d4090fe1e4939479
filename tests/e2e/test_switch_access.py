"""The message switch under the access model and its storage limits, over real sockets.

Every switch operation is an action of the one ``[access]`` policy (docs/reference/access.md,
"What each switch operation needs"): a refusal is the switch's own error form (a plain-text
status line body), counted as ``denied.<action>`` and published on ``$sys.auth.denied``. A message
leased to one token is acked, answered and read by that token only. Shutdown needs a secret.
Queues are bounded (messages, bytes, queues per token and overall); bad numbers get no traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maitred.core.access import Identity
from maitred.core.local import LocalClient
from maitred.transports.http.switch import Queue
from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.http_helpers import (
    RawHttp,
    connect,
    endpoint_of,
    http_toml,
    short_socket_path,
)

OPS = Identity("ops", frozenset({"ops"}))

#: default deny: the http identity (role app) may call and serve ok.>, nothing else
DENY = """
[access]
default = "deny"

[[access.rules]]
who = ["ops"]
actions = ["subscribe", "call", "serve"]
names = [">"]

[[access.rules]]
who = ["role:app"]
actions = ["call", "serve"]
names = ["ok.>", "reply.>"]
"""

HTTP_APP = """
identity = "http-app"
roles = ["app"]
"""


class Observer:
    """An in-process subscriber of ``$sys.auth.denied`` with the ops identity."""

    def __init__(self, broker: BrokerThread) -> None:
        self.broker = broker

        async def setup() -> LocalClient:
            client = LocalClient(broker.broker, OPS, label="observer")
            client.subscribe("$sys.auth.denied")
            return client

        self.client: LocalClient = broker.run(setup())
        self.seen: list[dict[str, Any]] = []

    def denials(self) -> list[dict[str, Any]]:
        def drain() -> None:
            while not self.client.events.empty():
                _topic, body, _ = self.client.events.get_nowait()
                self.seen.append(json.loads(b"".join(body)))

        self.broker.call(drain)
        return list(self.seen)


def denied(broker: BrokerThread, obs: Observer, action: str, name: str, before: int) -> None:
    """One more ``denied.<action>`` than ``before`` and a ``$sys.auth.denied`` event for it."""
    wait_until(lambda: broker.stats().get(f"denied.{action}", 0) > before, what=f"denied.{action}")
    wait_until(
        lambda: any(d["action"] == action and d["name"] == name for d in obs.denials()),
        what=f"$sys.auth.denied for {action} {name}",
    )


# -- issue 10: under default deny, every switch operation asks the policy ------------------------


@pytest.fixture
def deny(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    path = short_socket_path()
    return make_broker(DENY + http_toml(["127.0.0.1:0", f"unix:{path}"], HTTP_APP))


def test_deny_closes_diagnostics_trace_list_destroy_and_admin(
    deny: BrokerThread, conns: list[RawHttp]
) -> None:
    obs = Observer(deny)
    ep = endpoint_of(deny, "unix:")
    c = connect(conns, ep, "app:1")
    assert c.do("GET", "/persistent/ok.q") == (200, b"ok.q")
    assert c.do("POST", "/request/ok.q/reply.1", b"kept") == (200, b'[["ok.q",0]]')
    cases = [
        ("GET", "/", "observe", "$switch.diagnostics"),
        ("GET", "/trace/-1/0", "observe", "$switch.trace"),
        ("GET", "/list/", "observe", "$switch.list"),
        ("GET", "/admin/switch", "observe", "$switch.list"),  # the switch's page
        ("GET", "/destroy/ok.q", "manage", "ok.q"),
    ]
    for method, path, action, name in cases:
        before = deny.stats().get(f"denied.{action}", 0)
        status, body = c.do(method, path)
        assert status == 403, (path, status, body)
        assert body.startswith(b"Forbidden: "), body
        assert b"kept" not in body
        denied(deny, obs, action, name, before)
    # the queue and its message are still there
    assert deny.call(lambda: len(_switch(deny).queues["ok.q"].messages)) == 1


def test_deny_refuses_send_transfer_and_create_outside_the_rules(
    deny: BrokerThread, conns: list[RawHttp]
) -> None:
    obs = Observer(deny)
    c = connect(conns, endpoint_of(deny, "http://"), "app:2")
    before = deny.stats().get("denied.call", 0)
    status, body = c.do("GET", "/persistent/no.q")
    assert (status, body[:11]) == (403, b"Forbidden: ")
    denied(deny, obs, "call", "no.q", before)
    # a queue made by someone allowed to: app:2 may neither send into it nor read it
    deny.call(lambda: _switch(deny).queues.setdefault("no.x", Queue("no.x", True, None)))
    before = deny.stats().get("denied.call", 0)
    assert c.do("POST", "/request/no.x/reply.2", b"x")[0] == 403
    denied(deny, obs, "call", "no.x", before)
    before = deny.stats().get("denied.serve", 0)
    assert c.do("POST", "/transfer", b'{"timeout":0,"queues":["no.x"]}')[0] == 403
    denied(deny, obs, "serve", "no.x", before)
    assert deny.call(lambda: len(_switch(deny).queues["no.x"].messages)) == 0


def test_deny_closes_metrics_and_dead_letters(deny: BrokerThread, conns: list[RawHttp]) -> None:
    obs = Observer(deny)
    c = connect(conns, endpoint_of(deny, "http://"))
    for path, name in (("/metrics", "$sys.metrics"), ("/v1/dead-letters", "$switch.dead-letters")):
        before = deny.stats().get("denied.observe", 0)
        status, body = c.do("GET", path)
        assert status == 403, (path, body)
        assert json.loads(body)["error"]["code"] == "forbidden"
        denied(deny, obs, "observe", name, before)


def test_observe_rule_opens_diagnostics_without_payloads_of_uncallable_queues(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    rules = (
        DENY
        + """
[[access.rules]]
who = ["role:app"]
actions = ["observe"]
names = ["$switch.>"]

[[access.rules]]
who = ["role:app"]
actions = ["serve"]
names = ["secret.>"]
"""
    )
    b = make_broker(rules + http_toml([f"unix:{short_socket_path()}"], HTTP_APP))
    c = connect(conns, endpoint_of(b, "unix:"), "srv:1")
    assert c.do("GET", "/persistent/secret.q") == (200, b"secret.q")  # serve is enough
    assert c.do("GET", "/trace/-1/0")[0] == 200  # attaches the router trace
    # an ops caller (another protocol) sends a secret to the switch worker of secret.q
    c.send("POST", "/transfer", b'{"timeout":10,"queues":["secret.q"]}')
    wait_until(lambda: bool(b.call(lambda: _switch(b).tokens["srv:1"].workers)), what="worker")

    calls: list[asyncio.Future[list[bytes]]] = []

    async def call() -> None:
        client = LocalClient(b.broker, OPS, label="ops-caller")
        calls.append(asyncio.ensure_future(client.request("secret.q", b"TOPSECRET", timeout=5)))

    b.run(call())
    status, _, body = c.read()
    assert status == 200 and b"TOPSECRET" in body  # the worker itself gets it
    other = connect(conns, endpoint_of(b, "unix:"), "peek:1")
    status, body = other.do("GET", "/")
    assert status == 200
    assert b"TOPSECRET" not in body
    entries = json.loads(body)["permanent_queues"]["secret.q"]["queue_contents"]
    assert [e[0] for e in entries] == [["secret.q", 0]]
    assert entries[0][1]["message"]["payload"] == ""
    status, body = other.do("GET", "/trace/-1/0")
    assert status == 200 and b"TOPSECRET" not in body
    assert b"secret.q" in body  # the events are there, without their payloads
    c.close()  # the worker goes without an answer: the ops caller learns it (read here)
    wait_until(lambda: b.call(calls[0].done), what="the call to end")
    assert b.call(calls[0].exception) is not None


# -- issue 10: leases -----------------------------------------------------------------------------


def test_a_leased_message_is_acked_answered_and_read_by_its_token_only(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    obs = Observer(b)
    ep = endpoint_of(b, "unix:")
    caller, caller_poll = connect(conns, ep, "cli:1"), connect(conns, ep, "cli:1")
    caller.do("GET", "/transient/cli:1")
    alice, mallory = connect(conns, ep, "alice"), connect(conns, ep, "mallory")
    alice.do("GET", "/persistent/foo")
    alice.send("POST", "/transfer", b'{"timeout":10,"queues":["foo"]}')
    wait_until(lambda: bool(b.call(lambda: _switch(b).tokens["alice"].workers)), what="worker")
    assert caller.do("POST", "/request/foo/cli:1", b"question") == (200, b'[["foo",0]]')
    status, _, body = alice.read()
    assert json.loads(body)["messages"][0][0] == ["foo", 0]

    before = b.stats().get("denied.manage", 0)
    status, body = mallory.do("GET", "/ack/foo/0")
    assert (status, body[:11]) == (403, b"Forbidden: ")
    denied(b, obs, "manage", "foo", before)
    before = b.stats().get("denied.manage", 0)
    status, body = mallory.do("POST", "/response/cli:1/foo/0", b"FORGED")
    assert (status, body[:11]) == (403, b"Forbidden: ")
    denied(b, obs, "manage", "foo", before)
    # the message is still alice's: she answers, the caller gets her answer only
    assert alice.do("POST", "/response/cli:1/foo/0", b"answer")[0] == 200
    assert alice.do("GET", "/ack/foo/0") == (200, b"")
    before = b.stats().get("denied.serve", 0)
    status, body = mallory.do("POST", "/transfer", b'{"timeout":0,"queues":["cli:1"]}')
    assert (status, body[:11]) == (403, b"Forbidden: ")
    denied(b, obs, "serve", "cli:1", before)
    status, body = caller_poll.do("POST", "/transfer", b'{"timeout":5,"queues":["cli:1"]}')
    messages = json.loads(body)["messages"]
    assert [m[1]["payload"] for m in messages] == ["answer"]


# -- issue 10: shutdown needs a secret --------------------------------------------------------


def test_shutdown_needs_the_secret_not_a_token_name(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-0123456789\n")
    b = make_broker(
        http_toml(
            [f"unix:{short_socket_path()}"],
            f'shutdown_tokens = ["ops-*"]\nshutdown_secret_file = "{secret}"',
        )
    )
    obs = Observer(b)
    c = connect(conns, endpoint_of(b, "unix:"), "ops-1")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cr3t-0123456789"}):
        before = b.stats().get("denied.manage", 0)
        status, body = c.do("POST", "/shutdown", b"", headers)
        assert (status, body[:9]) == (403, b"Forbidden"), headers
        denied(b, obs, "manage", "$sys.shutdown", before)
    assert b.broker.state == "running"
    # the right secret, but a token outside shutdown_tokens
    other = connect(conns, endpoint_of(b, "unix:"), "dev-1")
    status, _ = other.do("POST", "/shutdown", b"", {"Authorization": "Bearer s3cr3t-0123456789"})
    assert status == 403 and b.broker.state == "running"
    status, body = c.do("POST", "/shutdown", b"", {"Authorization": "Bearer s3cr3t-0123456789"})
    assert (status, body) == (200, b"")
    wait_until(lambda: b.broker.state == "stopped", timeout=10, what="broker stopped")


def test_shutdown_secret_from_the_environment(
    make_broker: Callable[..., BrokerThread],
    conns: list[RawHttp],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAITRED_TEST_SHUTDOWN", "env-secret-value")
    b = make_broker(
        http_toml([f"unix:{short_socket_path()}"], 'shutdown_secret_env = "MAITRED_TEST_SHUTDOWN"')
    )
    c = connect(conns, endpoint_of(b, "unix:"), "anyone")
    assert c.do("POST", "/shutdown")[0] == 403
    status, _ = c.do("POST", "/shutdown", b"", {"Authorization": "Bearer env-secret-value"})
    assert status == 200
    wait_until(lambda: b.broker.state == "stopped", timeout=10, what="broker stopped")


# -- issue 11: limits -------------------------------------------------------------------------


def test_switch_queues_are_bounded(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    extra = """
switch_max_queue = 3
switch_max_queue_bytes = 100
switch_max_queues = 6
switch_max_queues_per_token = 4
"""
    services = """
[services."svc.small"]
max_queue = 2
"""
    b = make_broker(services + http_toml([f"unix:{short_socket_path()}"], extra))
    c = connect(conns, endpoint_of(b, "unix:"), "fill:1")
    # a persistent queue: the service's max_queue (2)
    assert c.do("GET", "/persistent/svc.small")[0] == 200
    assert c.do("POST", "/request/svc.small/r", b"a")[0] == 200
    assert c.do("POST", "/request/svc.small/r", b"b")[0] == 200
    status, body = c.do("POST", "/request/svc.small/r", b"c")
    assert (status, body[:19]) == (429, b"Too Many Requests: "), body
    # a transient queue: switch_max_queue (3) and switch_max_queue_bytes (100)
    assert c.do("GET", "/transient/t")[0] == 200
    assert c.do("POST", "/request/t/r", b"x" * 90)[0] == 200
    assert c.do("POST", "/request/t/r", b"x" * 20)[0] == 429  # 110 bytes > 100
    assert c.do("POST", "/request/t/r", b"y")[0] == 200
    assert c.do("POST", "/request/t/r", b"z")[0] == 200
    assert c.do("POST", "/request/t/r", b"w")[0] == 429  # 4 messages > 3
    # queues per token (4), then overall (6)
    assert c.do("GET", "/persistent/p.1")[0] == 200
    assert c.do("GET", "/transient/p.2")[0] == 200
    status, body = c.do("GET", "/persistent/p.3")
    assert (status, body[:19]) == (429, b"Too Many Requests: ")
    d = connect(conns, endpoint_of(b, "unix:"), "fill:2")
    assert d.do("GET", "/persistent/q.1")[0] == 200
    assert d.do("GET", "/persistent/q.2")[0] == 200
    assert d.do("GET", "/persistent/q.3")[0] == 429  # 7 queues > 6
    assert d.do("GET", "/persistent/p.1")[0] == 200  # exists: no new queue
    stats = b.stats()
    assert stats["http.switch.refused.queue_full"] == 3
    assert stats["http.switch.refused.queues"] == 2
    # destroying gives the room back
    assert c.do("GET", "/destroy/p.1") == (200, b"")
    assert d.do("GET", "/persistent/q.3")[0] == 200


def test_bad_numbers_get_answers_not_tracebacks(
    make_broker: Callable[..., BrokerThread],
    conns: list[RawHttp],
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    c = connect(conns, endpoint_of(b, "unix:"), "num:1")
    c.do("GET", "/transient/num:1")
    c.do("POST", "/request/num:1/num:1", b"ready")
    with caplog.at_level("ERROR"):
        for timeout in (b"1e300", b"1.7976931348623157e308"):
            status, body = c.do("POST", "/transfer", b'{"timeout":%s,"queues":["num:1"]}' % timeout)
            assert status == 200, (timeout, body)
            assert json.loads(body)["messages"][0][1]["payload"] == "ready"
        status, body = c.do("GET", "/trace/-1/1e300")
        assert status == 200 and json.loads(body)["events"]
        # the switch's bad-input form: 500 "Internal Server Error", counted, no traceback
        bad = b"Internal Server Error"
        for body in (
            b'{"timeout":-1,"queues":["num:1"]}',
            b'{"timeout":1e309,"queues":["num:1"]}',
            b'{"from":"99999999999999999999999","timeout":0,"queues":["num:1"]}',
        ):
            assert c.do("POST", "/transfer", body) == (500, bad), body
        assert c.do("GET", "/trace/99999999999999999999999/0") == (500, bad)
        assert c.do("GET", "/ack/num:1/99999999999999999999999999") == (500, bad)
        assert c.do("POST", "/response/num:1/num:1/99999999999999999999999", b"x") == (500, bad)
        assert c.do("POST", "/response/num:1/num:1/0", b"fine")[0] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# -- issue 11: diagnostics of a big switch do not stall the loop --------------------------------


def test_diagnostics_of_a_big_switch_are_capped_and_do_not_stall(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"], "diagnostics_messages = 50"))
    queues, per_queue, size = 20, 1000, 4096
    c = connect(conns, endpoint_of(b, "unix:"), "big:1")
    for i in range(queues):
        assert c.do("GET", f"/persistent/big.{i}")[0] == 200
    payload = b"p" * size

    def fill() -> None:
        sw = _switch(b)
        token = sw.tokens["big:1"]
        for i in range(queues):
            for _ in range(per_queue):
                sw.send(token, f"big.{i}", payload, ("Request", "r"))
        sw.journal.flush()

    b.call(fill, timeout=60)

    lag = {"max": 0.0, "run": True}

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while lag["run"]:
            t = loop.time()
            await asyncio.sleep(0.001)
            lag["max"] = max(float(lag["max"]), loop.time() - t - 0.001)

    task = b.call(lambda: asyncio.ensure_future(watch()))
    t0 = time.monotonic()
    status, body = c.do("GET", "/")
    elapsed = time.monotonic() - t0
    lag["run"] = False
    b.run(asyncio.wait_for(asyncio.shield(task), 5))
    assert status == 200
    doc = json.loads(body)
    assert sorted(doc["permanent_queues"]) == sorted(f"big.{i}" for i in range(queues))
    for q in doc["permanent_queues"].values():
        entries = q["queue_contents"]
        assert len(entries) == 50
        assert [e[0][1] for e in entries] == list(range(50))
        assert all(len(e[1]["message"]["payload"]) <= 256 for e in entries)
    print(
        f"\nGET / on {queues * per_queue} messages of {size} B: {len(body)} bytes in"
        f" {elapsed * 1000:.1f} ms, worst loop lag {float(lag['max']) * 1000:.2f} ms"
    )


def _switch(b: BrokerThread) -> Any:
    return b.broker.transports["http"].switch  # type: ignore[attr-defined]


# -- issue 10: the switch's page escapes what it shows and forbids scripts -------------------------


def test_switch_page_escapes_queue_names_and_sends_a_strict_csp(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"], "admin = false"))
    c = connect(conns, endpoint_of(b, "unix:"), "x:1")
    evil = "<script>alert(1)</script>&\"'"
    quoted = "%3Cscript%3Ealert(1)%3C%2Fscript%3E%26%22%27"
    assert c.do("GET", f"/persistent/{quoted}") == (200, evil.encode())
    c.send("GET", "/admin")
    status, headers, body = c.read()
    assert status == 200
    assert b"<script" not in body
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;" in body
    csp = headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "script-src" not in csp
    assert headers["x-content-type-options"] == "nosniff"


def test_rest_queue_view_lists_switch_queues_only_to_observers(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    rules = (
        DENY
        + """
[[access.rules]]
who = ["role:app"]
actions = ["call"]
names = ["mmi.queues"]
"""
    )
    b = make_broker(rules + http_toml([f"unix:{short_socket_path()}"], HTTP_APP))
    c = connect(conns, endpoint_of(b, "unix:"), "app:3")
    assert c.do("GET", "/transient/reply.hidden")[0] == 200  # not a service: switch only
    assert c.do("POST", "/request/reply.hidden/reply.3", b"x")[0] == 200
    status, body = c.do("GET", "/v1/queues")
    assert status == 200
    assert "switch" not in json.loads(body) and b"reply.hidden" not in body
    # an observer sees names and counts (leased ones counted as they change)
    open_broker = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    d = connect(conns, endpoint_of(open_broker, "unix:"), "app:4")
    d.do("GET", "/transient/mine")
    d.do("POST", "/request/mine/mine", b"a")
    d.do("POST", "/request/mine/mine", b"b")
    assert d.do("POST", "/transfer", b'{"timeout":0,"queues":["mine"]}')[0] == 200
    d.do("POST", "/request/mine/mine", b"c")
    status, body = d.do("GET", "/v1/queues")
    assert json.loads(body)["switch"]["mine"] == {
        "persistent": False,
        "messages": 3,
        "leased": 2,
    }
