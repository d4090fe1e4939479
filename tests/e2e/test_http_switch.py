"""The message switch (docs/reference/wire.md) over a real Unix socket and TCP: the RPC transcript
byte for byte, diagnostics, trace, bad input, sessions, and queues as services across protocols."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from maitred.core.local import LocalClient
from maitred.transports.http import switch_views
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until
from tests.e2e.http_helpers import (
    RawHttp,
    connect,
    endpoint_of,
    http_toml,
    short_socket_path,
)

Ctx = zmq.Context[Any]


SECRET = "switch-test-secret"


@pytest.fixture
def sw(make_broker: Callable[..., BrokerThread], monkeypatch: pytest.MonkeyPatch) -> BrokerThread:
    path = short_socket_path()
    monkeypatch.setenv("MAITRED_TEST_SWITCH_SECRET", SECRET)
    return make_broker(
        http_toml(
            ["127.0.0.1:0", f"unix:{path}"],
            'shutdown_tokens = ["admin:*"]\nshutdown_secret_env = "MAITRED_TEST_SWITCH_SECRET"',
        )
    )


@pytest.mark.parametrize("kind", ["unix:", "http://"])
def test_rpc_transcript_byte_for_byte(sw: BrokerThread, conns: list[RawHttp], kind: str) -> None:
    ep = endpoint_of(sw, kind)
    serve_main, serve_poll = connect(conns, ep, "cli:1"), connect(conns, ep, "cli:1")
    assert serve_main.do("GET", "/persistent/foo") == (200, b"foo")
    serve_poll.send("POST", "/transfer", b'{"timeout":30.0,"queues":["foo"]}')
    call_main, call_poll = connect(conns, ep, "cli:2"), connect(conns, ep, "cli:2")
    assert call_main.do("GET", "/transient/cli:2") == (200, b"cli:2")
    call_poll.send("POST", "/transfer", b'{"timeout":30.0,"queues":["cli:2"]}')
    assert call_main.do("GET", "/persistent/foo") == (200, b"foo")
    assert call_main.do("POST", "/request/foo/cli:2", b"hello") == (200, b'[["foo",0]]')
    status, _headers, body = serve_poll.read()
    assert (status, body) == (
        200,
        b'{"messages":[[["foo",0],{"payload":"hello","kind":["Request","cli:2"]}]],"next":"0"}',
    )
    assert serve_main.do("POST", "/response/cli:2/foo/0", b"hello") == (200, b'[["cli:2",0]]')
    assert serve_main.do("GET", "/ack/foo/0") == (200, b"")
    status, _, body = call_poll.read()
    assert (status, body) == (
        200,
        b'{"messages":[[["cli:2",0],{"payload":"hello","kind":["Response",["foo",0]]}]],'
        b'"next":"0"}',
    )
    assert call_main.do("GET", "/ack/cli:2/0") == (200, b"")

    # diagnostics: nothing left, foo expected to transfer again, cli:2 a transient queue
    status, body = call_main.do("GET", "/")
    assert status == 200
    assert re.fullmatch(
        rb'\{"start_time":0,"current_time":\d+,"permanent_queues":\{"foo":\{'
        rb'"next_transfer_expected":\d+,"queue_contents":\[\]\}\},'
        rb'"transient_queues":\{"cli:2":\{"next_transfer_expected":\d+,"queue_contents":\[\]\}\}\}',
        body,
    ), body

    # trace: send, transfer, send (response), ack, transfer, ack
    status, body = call_main.do("GET", "/trace/-1/0")
    events = json.loads(body)["events"]
    shapes = [(e["queue"], e["message"][0], e.get("input"), e.get("output")) for _, e in events]
    # (the caller's transfer and the server's ack race: compare per queue)
    assert [s for s in shapes if s[0] == "foo"] == [
        ("foo", "Message", "cli:2", None),
        ("foo", "Message", None, "cli:1"),
        ("foo", "Ack", "cli:1", None),
    ]
    assert [s for s in shapes if s[0] == "cli:2"] == [
        ("cli:2", "Message", "cli:1", None),
        ("cli:2", "Message", None, "cli:2"),
        ("cli:2", "Ack", "cli:2", None),
    ]
    assert events[0][1]["message"] == [
        "Message",
        ["foo", 0],
        {"payload": "hello", "kind": ["Request", "cli:2"]},
    ]
    assert isinstance(events[0][1]["time"], float)
    assert "processing_time" in next(e for _, e in events if e["message"][0] == "Ack")
    assert [i for i, _ in events] == list(range(6))


def test_diagnostics_show_waiting_messages(sw: BrokerThread, conns: list[RawHttp]) -> None:
    c = connect(conns, endpoint_of(sw, "unix:"), "cli:42")
    c.do("GET", "/persistent/foo")
    c.do("GET", "/transient/cli:42")
    assert c.do("POST", "/request/foo/cli:42", b"hi") == (200, b'[["foo",0]]')
    body = json.loads(c.do("GET", "/")[1])
    assert body["permanent_queues"]["foo"]["queue_contents"] == [
        [
            ["foo", 0],
            {
                "origin": ["Name", "cli:42"],
                "time": body["permanent_queues"]["foo"]["queue_contents"][0][1]["time"],
                "message": {"payload": "hi", "kind": ["Request", "cli:42"]},
            },
        ]
    ]
    # never transferred: the optional field is omitted
    assert "next_transfer_expected" not in body["permanent_queues"]["foo"]
    assert body["transient_queues"] == {"cli:42": {"queue_contents": []}}


def test_trace_long_poll_wakes_on_an_event(sw: BrokerThread, conns: list[RawHttp]) -> None:
    ep = endpoint_of(sw, "http://")
    watcher = connect(conns, ep)
    status, body = watcher.do("GET", "/trace/-1/0")
    assert status == 200
    last = max((i for i, _ in json.loads(body)["events"]), default=-1)
    watcher.send("GET", f"/trace/{last}/30")
    c = connect(conns, ep, "t:1")
    c.do("GET", "/persistent/q")
    c.do("POST", "/request/q/nowhere", b"x")
    status, _, body = watcher.read()
    events = json.loads(body)["events"]
    assert events and events[0][0] == last + 1 and events[0][1]["queue"] == "q"


def test_trace_follows_other_protocols_and_detaches_when_nobody_reads(
    sw: BrokerThread, conns: list[RawHttp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace reader attaches the switch's tracer through the port (once, however often it
    reads), so REST calls show up; with no reader for a while the tracer stops itself, and a
    reader coming back attaches it again."""
    ep = endpoint_of(sw, "http://")
    reader, rest = connect(conns, ep), connect(conns, ep)

    def tracers() -> int:
        return sw.call(lambda: len(sw.broker.router.tracers))

    def rest_call() -> None:
        status, _ = rest.do("POST", "/v1/services/nobody", b"x", {"X-Maitred-Timeout": "0.05"})
        assert status >= 400  # no worker: it times out

    assert tracers() == 0
    assert reader.do("GET", "/trace/-1/0")[0] == 200
    assert reader.do("GET", "/trace/-1/0")[0] == 200
    assert tracers() == 1
    rest_call()
    status, body = reader.do("GET", "/trace/-1/0")
    assert status == 200
    assert any(e["queue"] == "nobody" for _, e in json.loads(body)["events"])
    monkeypatch.setattr(switch_views, "ROUTER_TRACE_IDLE", 0.0)  # the reader is gone now
    rest_call()
    assert tracers() == 0
    assert reader.do("GET", "/trace/-1/0")[0] == 200
    assert tracers() == 1


def test_bad_input_answers(sw: BrokerThread, conns: list[RawHttp]) -> None:
    c = connect(conns, endpoint_of(sw, "unix:"))
    assert c.do("GET", "/persistent/foo") == (404, b"Please log in.")
    assert c.do("POST", "/transfer", b"{}") == (404, b"Please log in.")
    assert c.do("GET", "/nonsense/a/b?x=1") == (404, b"Not found: /nonsense/a/b?x=1")
    assert c.do("POST", "/login/x") == (404, b"Not found: /login/x")
    assert c.do("GET", "/login/cli:9") == (200, b"")
    assert c.do("POST", "/transfer", b"{not json") == (500, b"Internal Server Error")
    assert c.do("POST", "/transfer", b'{"from":"x","queues":[]}') == (
        500,
        b"Internal Server Error",
    )
    assert c.do("GET", "/ack/foo/notanumber") == (500, b"Internal Server Error")
    assert c.do("POST", "/response/a/b/c", b"") == (500, b"Internal Server Error")
    assert c.do("POST", "/request/missing/cli:9", b"x") == (200, b"[]")
    assert c.do("GET", "/ack/missing/3") == (200, b"")
    assert c.do("POST", "/shutdown") == (403, b"Forbidden: wrong or missing shutdown secret")
    # percent-decoded segments; the connection still works after all of that
    assert c.do("GET", "/persistent/a%20b") == (200, b"a b")
    assert c.do("GET", "/list/a%20") == (200, b'["a b"]')


def test_transfer_timeout_and_cursor(sw: BrokerThread, conns: list[RawHttp]) -> None:
    c = connect(conns, endpoint_of(sw, "http://"), "cur:1")
    c.do("GET", "/transient/r")
    assert c.do("POST", "/transfer", b'{"timeout":0.0,"queues":["r"]}') == (
        200,
        b'{"messages":[],"next":"-1"}',
    )
    for i in range(3):
        c.do("POST", "/request/r/r", b"m%d" % i)
    _status, body = c.do("POST", "/transfer", b'{"from":"0","timeout":0.0,"queues":["r"]}')
    got = json.loads(body)
    # ids above the cursor, newest first within the queue
    assert [m[0] for m in got["messages"]] == [["r", 2], ["r", 1]]
    assert got["next"] == "2"
    _status, body = c.do("POST", "/transfer", b'{"from":"2","timeout":0.0,"queues":["r"]}')
    assert json.loads(body) == {"messages": [], "next": "2"}


def test_list_alive_destroy_and_transient_lifetime(sw: BrokerThread, conns: list[RawHttp]) -> None:
    ep = endpoint_of(sw, "unix:")
    a1, a2 = connect(conns, ep, "app:1"), connect(conns, ep, "app:1")
    a1.do("GET", "/persistent/svc.a")
    a1.do("GET", "/persistent/svc.b")
    a1.do("GET", "/transient/app:1")
    assert a1.do("GET", "/list/svc.") == (200, b'["svc.a","svc.b"]')
    assert a1.do("GET", "/list/") == (200, b'["app:1","svc.a","svc.b"]')
    assert a1.do("GET", "/list/alive/") == (200, b"[]")
    a2.send("POST", "/transfer", b'{"timeout":30.0,"queues":["svc.b"]}')
    wait_until(lambda: a1.do("GET", "/list/alive/")[1] == b'["svc.b"]', what="svc.b alive")
    assert a1.do("GET", "/destroy/svc.b") == (200, b"")
    assert a1.do("GET", "/list/svc.") == (200, b'["svc.a"]')
    assert json.loads(a2.read()[2])["messages"] == []  # its queue went away: the poll ends
    # the transient queue lives while any connection of its token is open
    a1.close()
    other = connect(conns, ep, "watch:1")
    assert b"app:1" in other.do("GET", "/list/")[1]
    a2.close()
    wait_until(
        lambda: b"app:1" not in other.do("GET", "/list/")[1], what="transient queue destroyed"
    )


def test_long_poll_does_not_block_other_sessions(sw: BrokerThread, conns: list[RawHttp]) -> None:
    ep = endpoint_of(sw, "http://")
    pollers = []
    for i in range(5):
        p = connect(conns, ep, f"poll:{i}")
        p.do("GET", f"/transient/poll:{i}")
        p.send("POST", "/transfer", b'{"timeout":30.0,"queues":["poll:%d"]}' % i)
        pollers.append(p)
    c = connect(conns, ep, "busy:1")
    for _ in range(20):
        assert c.do("GET", "/list/")[0] == 200
    c.do("POST", "/request/poll:3/x", b"wake")
    _status, _, body = pollers[3].read()
    assert json.loads(body)["messages"][0][1]["payload"] == "wake"


def test_shutdown_by_an_authorised_token(sw: BrokerThread, conns: list[RawHttp]) -> None:
    c = connect(conns, endpoint_of(sw, "unix:"), "admin:1")
    assert c.do("POST", "/shutdown")[0] == 403  # the token name alone is no credential
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert c.do("POST", "/shutdown", b"", auth) == (200, b"")
    wait_until(lambda: sw.broker.state == "stopped", timeout=10, what="broker stopped")


def test_switch_call_answered_by_mdp_worker(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    worker = RawWorker(ctx, b.endpoint, "rfc", b"foo")
    worker.ready()
    ep = endpoint_of(b, "unix:")
    main, poll = connect(conns, ep, "cli:7"), connect(conns, ep, "cli:7")
    main.do("GET", "/transient/cli:7")
    poll.send("POST", "/transfer", b'{"timeout":30.0,"queues":["cli:7"]}')
    main.do("GET", "/persistent/foo")
    assert main.do("POST", "/request/foo/cli:7", b"ping") == (200, b'[["foo",0]]')
    addr, body = worker.request()
    assert body == [b"ping"]
    worker.final(addr, b"pong")
    _status, _, body = poll.read()
    assert body == (
        b'{"messages":[[["cli:7",0],{"payload":"pong","kind":["Response",["foo",0]]}]],"next":"0"}'
    )
    # answered by a worker of another protocol: the reply was the ack
    diag = json.loads(main.do("GET", "/")[1])
    assert diag["permanent_queues"]["foo"]["queue_contents"] == []


def test_mdp_client_answered_by_switch_server(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml(["127.0.0.1:0"]))
    ep = endpoint_of(b, "http://")
    main, poll = connect(conns, ep, "srv:1"), connect(conns, ep, "srv:1")
    main.do("GET", "/persistent/foo")
    poll.send("POST", "/transfer", b'{"timeout":30.0,"queues":["foo"]}')
    wait_until(
        lambda: b.call(lambda: "foo" in b.broker.router.services), what="switch worker of foo"
    )
    client = RawClient(ctx, b.endpoint, "majortomo")
    client.send(b"foo", b"question")
    _status, _, body = poll.read()
    got = json.loads(body)
    ((qid, msg),) = got["messages"]
    assert qid == ["foo", 0]
    assert msg["payload"] == "question" and msg["kind"][0] == "Request"
    assert main.do("POST", f"/response/{msg['kind'][1]}/foo/0", b"answer")[0] == 200
    assert main.do("GET", "/ack/foo/0") == (200, b"")
    final, frames = client.recv()
    assert final and frames == [b"answer"]


def test_lease_returns_when_the_consumer_goes(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    b = make_broker(http_toml(["127.0.0.1:0"]))
    ep = endpoint_of(b, "http://")
    sender = connect(conns, ep, "snd:1")
    sender.do("GET", "/persistent/jobs")
    sender.do("POST", "/request/jobs/nobody", b"job")
    first = connect(conns, ep, "w:1")
    got = json.loads(first.do("POST", "/transfer", b'{"timeout":5.0,"queues":["jobs"]}')[1])
    assert got["messages"][0][0] == ["jobs", 0]
    second = connect(conns, ep, "w:2")
    # leased to w:1: w:2 sees nothing
    assert (
        json.loads(second.do("POST", "/transfer", b'{"timeout":0.0,"queues":["jobs"]}')[1])[
            "messages"
        ]
        == []
    )
    second.send("POST", "/transfer", b'{"timeout":30.0,"queues":["jobs"]}')
    first.close()  # w:1 goes without acking: the message comes back, to w:2
    _status, _, body = second.read()
    assert json.loads(body)["messages"][0][0] == ["jobs", 0]


def test_sqlite_is_the_default_store(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    """No ``store`` key: the SQLite store at the XDG default path (a temporary directory under
    the tests, see tests/conftest.py) keeps a persistent queue across a restart."""
    from maitred.core.store import default_store_path

    table = '[transports.http]\nlisten = ["127.0.0.1:0"]\n'
    b = make_broker(table)
    c = connect(conns, endpoint_of(b, "http://"), "snd:1")
    queue = f"defaults.{id(c)}"  # the default file is shared by the whole test session
    assert c.do("GET", f"/persistent/{queue}") == (200, queue.encode())
    assert c.do("POST", f"/request/{queue}/nobody", b"kept") == (
        200,
        b'[["%s",0]]' % queue.encode(),
    )
    assert default_store_path().is_file()
    c.close()
    b.stop(drain_timeout=0)
    again = make_broker(table)
    d = connect(conns, endpoint_of(again, "http://"), "w:1")
    diag = json.loads(d.do("GET", "/")[1])
    ((qid, entry),) = diag["permanent_queues"][queue]["queue_contents"]
    assert qid == [queue, 0] and entry["message"]["payload"] == "kept"
    assert d.do("GET", f"/destroy/{queue}") == (200, b"")


def _transfer_ids(c: RawHttp, queue: str) -> list[int]:
    req = b'{"timeout":5.0,"queues":["%s"]}' % queue.encode()
    status, body = c.do("POST", "/transfer", req)
    assert status == 200
    return [qid[1] for qid, _ in json.loads(body)["messages"]]


def test_failed_deliveries_count_across_a_restart_then_dead_letter(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp], tmp_path: Path
) -> None:
    """A consumer that goes away without an ack fails one delivery; the count is stored, so
    after a restart the second failed delivery (the queue's service policy says
    ``max_deliveries = 2``: one setting for every durable queue) dead-letters it."""
    table = http_toml(["127.0.0.1:0"]).replace(
        '[store]\nbackend = "memory"\n',
        f'[store]\npath = "{tmp_path / "s.db"}"\n\n[services.jobs]\nmax_deliveries = 2\n',
    )
    b = make_broker(table)
    ep = endpoint_of(b, "http://")
    snd = connect(conns, ep, "snd:1")
    assert snd.do("GET", "/persistent/jobs") == (200, b"jobs")
    assert snd.do("POST", "/request/jobs/nobody", b"poison") == (200, b'[["jobs",0]]')
    w = connect(conns, ep, "w:1")
    assert _transfer_ids(w, "jobs") == [0]
    w.close()  # the lease ends without an ack: one failed delivery
    wait_until(
        lambda: b.call(lambda: "w:1" not in b.broker.transports["http"].switch.tokens),
        what="w:1 gone",
    )
    assert json.loads(snd.do("GET", "/v1/dead-letters")[1]) == []
    snd.close()
    b.stop(drain_timeout=0)

    again = make_broker(table)
    ep = endpoint_of(again, "http://")
    w2 = connect(conns, ep, "w:2")
    assert _transfer_ids(w2, "jobs") == [0]  # back after the restart
    w2.close()  # the second failed delivery
    c = connect(conns, ep, "admin:1")
    wait_until(lambda: json.loads(c.do("GET", "/v1/dead-letters")[1]) != [], what="the dead letter")
    (dead,) = json.loads(c.do("GET", "/v1/dead-letters")[1])
    assert (dead["queue"], dead["id"], dead["deliveries"]) == ("jobs", 0, 2)
    assert "delivered 2 times without an ack" in dead["reason"]


def test_requests_parked_by_a_full_service_queue_go_out_as_it_drains(
    make_broker: Callable[..., BrokerThread], conns: list[RawHttp]
) -> None:
    """Stored requests the router refuses because callers of another protocol filled the
    service's queue (``max_queue``) are parked, still stored, and submitted again as the worker
    makes room — with the worker connected all along (a regression: they used to wait for a
    *new* worker). The switch queue itself holds ``max_queue`` waiting messages: one more is
    refused (429)."""
    b = make_broker(
        "[services.default]\nmax_queue = 2\n" + http_toml(["127.0.0.1:0"], "switch_credit = 1")
    )
    ep = endpoint_of(b, "http://")
    w = connect(conns, ep, "w:1")
    snd = connect(conns, ep, "snd:1")
    assert snd.do("GET", "/persistent/jobs") == (200, b"jobs")
    assert w.do("POST", "/transfer", b'{"timeout":0.0,"queues":["jobs"]}')[0] == 200  # a worker
    calls: list[asyncio.Future[list[bytes]]] = []

    async def local_calls() -> None:
        client = LocalClient(b.broker, label="local")
        for i in range(3):  # one with the worker, two fill the router's queue
            calls.append(asyncio.ensure_future(client.request("jobs", b"l%d" % i, timeout=20)))
            await asyncio.sleep(0)

    b.run(local_calls())
    wait_until(lambda: b.call(lambda: b.broker.router.services["jobs"].queued) == 2, what="full")
    for i in range(2):
        # (id 0 went to the message of the local caller the worker holds)
        sent = snd.do("POST", "/request/jobs/nobody", b"j%d" % i)
        assert sent == (200, b'[["jobs",%d]]' % (i + 1))
    assert b.stats()["http.switch.parked"] == 2
    status, body = snd.do("POST", "/request/jobs/nobody", b"j2")
    assert status == 429 and body.startswith(b"Too Many Requests: "), body
    got = []
    cursor = -1
    while len(got) < 5:
        req = b'{"timeout":5.0,"queues":["jobs"],"from":"%d"}' % cursor
        status, body = w.do("POST", "/transfer", req)
        assert status == 200
        reply = json.loads(body)
        assert reply["messages"], f"stuck after {got}"
        for (_, n), msg in reply["messages"]:
            got.append(msg["payload"])
            if msg["payload"].startswith("l"):  # a local caller waits for its answer
                assert w.do("POST", f"/response/local/jobs/{n}", b"done")[0] == 200
            else:
                assert w.do("GET", f"/ack/jobs/{n}") == (200, b"")
        cursor = int(reply["next"])
    assert sorted(got) == ["j0", "j1", "l0", "l1", "l2"]
    b.run(asyncio.wait_for(asyncio.gather(*calls), 5))


def test_a_worker_error_worded_like_an_ack_is_not_taken_for_one(
    sw: BrokerThread, conns: list[RawHttp]
) -> None:
    """A worker of another protocol that answers a stored switch request with an error is
    dead-lettered whatever the error's wording: the switch knows an ack of its own by the
    message, not by the reason string (which any worker may send)."""
    from maitred.core.errors import ErrorCode, MaitredError
    from maitred.core.local import LocalWorker

    c = connect(conns, endpoint_of(sw, "http://"), "snd:1")
    assert c.do("GET", "/persistent/jobs") == (200, b"jobs")

    async def fail(body: list[bytes]) -> list[bytes]:
        raise MaitredError("acknowledged without a response", ErrorCode.INTERNAL)

    async def serve() -> LocalWorker:
        return LocalWorker(sw.broker, "jobs", fail, label="other")

    worker = sw.run(serve())
    assert c.do("POST", "/request/jobs/nobody", b"job") == (200, b'[["jobs",0]]')
    wait_until(lambda: json.loads(c.do("GET", "/v1/dead-letters")[1]) != [], what="dead letter")
    (dead,) = json.loads(c.do("GET", "/v1/dead-letters")[1])
    assert (dead["queue"], dead["id"], dead["reason"]) == (
        "jobs",
        0,
        "acknowledged without a response",
    )
    diag = json.loads(c.do("GET", "/")[1])
    assert diag["permanent_queues"]["jobs"]["queue_contents"] == []  # not stuck in the queue
    sw.call(worker.close)


@pytest.mark.allow_error_logs("Error handling request")
def test_a_switch_bug_is_not_answered_as_bad_input(
    sw: BrokerThread, conns: list[RawHttp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad input is what the codec says is bad (SwitchError); a KeyError or IndexError from
    inside the switch is a bug: logged with its traceback, not counted as the client's fault."""
    from maitred.transports.http.switch import Switch

    def broken(self: Switch, token: object, prefix: str, alive: bool) -> list[str]:
        raise KeyError("a bug")

    monkeypatch.setattr(Switch, "list_names", broken)
    c = connect(conns, endpoint_of(sw, "http://"), "cli:1")
    assert c.do("GET", "/ack/q/notanumber") == (500, b"Internal Server Error")
    assert sw.stats()["http.switch.bad_input"] == 1
    status, _ = c.do("GET", "/list")
    assert status == 500
    assert sw.stats()["http.switch.bad_input"] == 1  # not counted as bad input


def test_the_store_counters_are_shown_once(sw: BrokerThread, conns: list[RawHttp]) -> None:
    """Persistent queues write through the broker's one store: its counters (mmi.info's
    ``store``, ``maitred_store`` in /metrics) count the switch's messages, and the switch keeps
    no commit or dead letter counters of its own."""
    c = connect(conns, endpoint_of(sw, "http://"), "snd:1")
    assert c.do("GET", "/persistent/jobs") == (200, b"jobs")
    assert c.do("POST", "/request/jobs/nobody", b"one") == (200, b'[["jobs",0]]')
    status, body = c.do("POST", "/v1/services/mmi.info", b"")
    assert status == 200
    store = json.loads(body)["store"]
    assert store["appended"] == 1 and store["commits"] >= 1 and store["dead_lettered"] == 0
    status, body = c.do("GET", "/metrics")
    text = body.decode()
    assert 'maitred_store_total{counter="appended"} 1.0' in text
    assert "http.switch.commits" not in text and "http.switch.dead_letters" not in text
