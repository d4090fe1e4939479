"""The cross-protocol matrix: every caller kind calls a service of every worker kind, through ONE
broker with all three transports (mdp, http, ws) on 127.0.0.1 ephemeral ports.

The kinds and what each protocol can carry are Python data (``CALLERS``, ``WORKERS``); the
expected result of every check is computed from that data, and the same data renders the table
in docs/reference/matrix.md. ``test_docs_table_is_current`` fails when the file differs from the
rendering; regenerate it with::

    .venv/bin/python -m tests.e2e.test_matrix --write-docs

Per cell (caller x worker): the body round trip (all 256 byte values; several frames), partial
replies, the deadline (a worker that answers too late) and a worker that dies holding the
request. Per caller: no worker, denied, and the MMI (`mmi.service`, `mmi.services`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.e2e import matrix_peers as mp
from tests.e2e import matrix_pubsub as mps
from tests.e2e.helpers import BrokerThread, wait_until

# the module's fixture may wait REGISTER_BUDGET seconds for its workers (on a loaded machine),
# within the first test's time
pytestmark = pytest.mark.timeout(240)

# -- the broker --------------------------------------------------------------------------------

#: seconds: the deadline of the ``stall.*`` services (their workers answer after STALL_HOLD)
STALL_DEADLINE = 0.1
#: seconds the fixture waits for its workers to register (26 of them, 12 being subprocesses:
#: generous, for a loaded machine; an idle one needs about 2 s)
REGISTER_BUDGET = 120.0

CONFIG = f"""
[broker]
tick_interval = 0.02

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
pub_endpoints = ["tcp://127.0.0.1:0"]
publish_endpoints = ["tcp://127.0.0.1:0"]

[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0

[[transports.ws.keys]]
key = "{mp.WS_KEY}"
trusted = true
identity = "ws"

[services."nw.>"]
on_no_worker = "fail"

[services."stall.>"]
request_timeout = {STALL_DEADLINE}

[access]
default = "allow"

[[access.rules]]
allow = false
who = ["*"]
actions = ["call"]
names = ["denied.>"]
"""

# -- the table data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallerKind:
    name: str
    what: str
    #: how the caller's body maps to the router's frames: "frames" (any frames, exact),
    #: "switch" (one payload; a JSON string when it comes back), "text" (one text)
    body: str
    partials: bool  # receives partial replies
    deadline: bool  # its requests have a deadline (the service's request_timeout)
    errors: str  # the form errors take (docs)
    headers: bool  # sends and receives headers with calls


@dataclass(frozen=True)
class WorkerKind:
    name: str
    what: str
    #: what the worker sees of the router's frames and sends back: "frames" (exact),
    #: "joined" (one byte string, frames concatenated), "switch" (the same as a JSON string:
    #: non-UTF-8 bytes as one code point each), "text" (frames joined by LF, UTF-8)
    body: str
    partials: bool  # can send partial replies
    died: str  # how it dies holding a request (docs)
    headers: bool  # sees the request's headers and can answer with headers
    #: why a request with no body frame at all is not sent to it ("": it is)
    no_empty: str = ""


MDP_ERR = "a FINAL reply `[code, reason]` (two frames; mdp.md#errors)"
CALLERS = {
    c.name: c
    for c in [
        CallerKind("mdp01-req", "MDP/0.1 client on a REQ socket (raw frames)", "frames",
                   False, True, MDP_ERR, False),
        CallerKind("mdp01-dealer", "MDP/0.1 client on a DEALER socket (raw frames)", "frames",
                   False, True, MDP_ERR, False),
        CallerKind("rfc", "MDP/0.2 RFC 18 client (raw frames)", "frames", True, True, MDP_ERR,
                   False),
        CallerKind("majortomo-raw", "MDP/0.2 majortomo dialect (raw frames)", "frames", True,
                   True, MDP_ERR, False),
        CallerKind("majortomo", "`majortomo.Client` 0.2.0", "frames", True, True, MDP_ERR,
                   False),
        CallerKind("switch", "message-switch call (`SwitchClient.rpc`: transient reply queue, "
                   "send, transfer)", "switch", False, False,
                   "403 `Forbidden: <why>` when [access] denies (before anything is stored); "
                   "else none: the request is stored with no deadline and waits in its queue "
                   "(no worker, worker died); the caller's own wait ends", False),
        CallerKind("rest", "REST `POST /v1/services/{name}` (as `RestClient.call`: "
                   "`Accept: application/json`, several frames as `{\"frames\": [...]}`)",
                   "frames", False, True, "HTTP status + `{\"error\": {code, reason}}`", False),
        CallerKind("sse", "REST with `Accept: text/event-stream`", "frames", True, True,
                   "refused at once: HTTP status + error body; later: `event: error`", False),
        CallerKind("middleman", "middleman `REQ` (WebSocket text, trusted key)", "text", False,
                   True, "`PUB ERROR` with middleman's text, no code (ws.md#error-texts)", True),
        CallerKind("json", "maitred.json `request` (bodies as `payload`/`data`/`frames`, "
                   "ws-json.md#bodies)", "frames", True, True,
                   "`{\"type\": \"error\", \"id\", \"responder\", \"code\", \"message\"}`",
                   True),
        CallerKind("mdp-client", "`maitred.transports.mdp.client.Client` (RFC 18, `stream`)",
                   "frames", True, True, MDP_ERR, False),
        CallerKind("local", "`maitred.core.local.LocalClient` (in process, `stream`)", "frames",
                   True, True, "raises `MaitredError` with the code", False),
    ]
}  # fmt: skip

WORKERS = {
    w.name: w
    for w in [
        WorkerKind("mdp01", "MDP/0.1 worker (raw frames)", "frames", False, "DISCONNECT", False),
        WorkerKind("rfc", "MDP/0.2 RFC 18 worker (raw frames)", "frames", True, "DISCONNECT",
                   False),
        WorkerKind("majortomo", "`majortomo.Worker` 0.2.0", "frames", True,
                   "`close()` (DISCONNECT)", False,
                   no_empty="majortomo.Worker 0.2.0 raises ProtocolError on a REQUEST "
                   "without body frames (its own check; the broker forwards the request)"),
        WorkerKind("switch", "message-switch serve (`SwitchClient` transfer/respond/ack)",
                   "switch", False, "closes its connections while the message is leased",
                   False),
        WorkerKind("middleman", "middleman service (`EREQ`, `RES` by `Rid`)", "text", False,
                   "closes its WebSocket", True),
        WorkerKind("json", "maitred.json service (hello with `methods`)", "frames", True,
                   "closes its WebSocket", True),
        WorkerKind("program", "`maitred worker --program CMD` (subprocess, MDP RFC 18)", "joined",
                   False, "SIGINT to `maitred worker` (it sends DISCONNECT)", False),
    ]
}  # fmt: skip

#: cells that are known gaps: (caller, worker, check) → reason (xfail, strict)
GAPS: dict[tuple[str, str, str], str] = {}

# -- the model: what each check must see -------------------------------------------------------


def body_text(frames: list[bytes]) -> str:
    """The middleman body of router frames (ws.md, "Crossing protocols")."""
    raw = frames[0] if len(frames) == 1 else b"\n".join(frames)
    return raw.decode("utf-8", "replace")


def switch_bytes(payload: bytes) -> bytes:
    """A payload through the switch's JSON (http.md): UTF-8 text as is, other bytes as one code
    point per byte (latin-1), which a client reading the JSON string gets back as UTF-8."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1").encode("utf-8")
    return payload


def caller_input(c: CallerKind, frames: list[bytes]) -> tuple[Any, list[bytes]]:
    """What the caller sends for a body given as frames, and the router's frames for it."""
    if c.body == "frames":
        return frames, frames
    if c.body == "switch":
        return b"".join(frames), [b"".join(frames)]
    text = "\n".join(f.decode("latin-1") for f in frames)  # all code points 0..255
    return text, [text.encode()]


def worker_echo(w: WorkerKind, frames: list[bytes]) -> list[bytes]:
    """The router's frames of the reply of an echo worker of kind ``w``."""
    if w.body == "frames":
        return frames
    if w.body == "joined":
        return [b"".join(frames)]
    if w.body == "switch":
        return [switch_bytes(b"".join(frames))]
    return [body_text(frames).encode()]


def caller_output(c: CallerKind, frames: list[bytes]) -> Any:
    if c.body == "frames":
        return frames
    if c.body == "switch":
        return switch_bytes(b"".join(frames))
    return body_text(frames)


BINARY = [bytes(range(256))]
MULTI = [b"first", b"", b"\x00\xff\r\n.third", b"last"]
#: one frame that is JSON (a JSON-dialect peer gets it as `payload`, whitespace and all)
JSONISH = [b'{"a": [1, 2.50, "\\u00e9"],  "b":null}']
EMPTY: list[bytes] = []  # no body frame at all
PARTIAL_BODY = [mp.PARTIAL_MARK + b"-body"]


def expected_reply(c: CallerKind, w: WorkerKind, frames: list[bytes]) -> tuple[Any, Any]:
    """(what the caller sends, what it must receive) for an echo of ``frames``."""
    sent, routed = caller_input(c, frames)
    return sent, caller_output(c, worker_echo(w, routed))


def expected_partials(c: CallerKind, w: WorkerKind) -> list[Any]:
    if not (c.partials and w.partials):
        return []
    return [caller_output(c, p) for p in mp.PARTIALS]


def body_mapping(c: CallerKind, w: WorkerKind) -> str:
    """The body column of the docs table for a cell (derived from the kinds)."""
    steps = []
    if c.body == "switch":
        steps.append("caller sends one payload")
    elif c.body == "text":
        steps.append("caller sends one text (UTF-8)")
    if w.body == "joined":
        steps.append("worker gets the frames concatenated, answers one frame")
    elif w.body == "switch":
        steps.append(
            "worker gets the frames concatenated as a JSON string (non-UTF-8: one code point "
            "per byte), answers its UTF-8"
        )
    elif w.body == "text":
        steps.append("worker gets frames joined by LF as UTF-8 (bad bytes → U+FFFD), answers one")
    if c.body == "switch":
        if w.body == "frames":
            steps.append("reply frames concatenated")
        if w.body != "switch":
            steps.append("a non-UTF-8 reply reaches it as one code point per byte, i.e. as UTF-8")
    elif c.body == "text" and w.body != "text":
        steps.append("reply frames joined by LF, UTF-8 (bad bytes → U+FFFD)")
    text = "exact (all frames, all bytes)" if not steps else "; ".join(steps)
    if w.no_empty and caller_input(c, EMPTY)[1] == []:
        text += f"; a body of no frame at all is not sent: {w.no_empty}"
    return text


def partial_mapping(c: CallerKind, w: WorkerKind) -> str:
    if not w.partials:
        return "— (worker sends none)"
    if not c.partials:
        return "dropped (final only)"
    return "delivered, in order"


def header_mapping(c: CallerKind, w: WorkerKind) -> str:
    if not c.headers:
        return "—"
    return "round trip" if w.headers else "dropped (worker has none)"


# -- fixtures ----------------------------------------------------------------------------------


class Matrix:
    def __init__(self) -> None:
        self.broker = BrokerThread(CONFIG)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.workers: list[Any] = []
        self.callers: dict[str, mp.Caller] = {}
        self.program_die: dict[str, mp.ProgramWorker] = {}
        #: workers that had not registered when the fixture's wait ended
        self.missing: set[str] = set()

    def start(self) -> None:
        # long-lived echo and stall workers, and the program die-workers (slow to start)
        for wk in WORKERS:
            for beh in ("echo", "stall"):
                self.workers.append(mp.make_worker(wk, self.broker, f"{beh}.{wk}", self.ctx))
        for ck in CALLERS:
            svc = f"die.program.{ck}"
            self.program_die[ck] = mp.make_worker("program", self.broker, svc, self.ctx)
            self.workers.append(self.program_die[ck])
        for ck in CALLERS:
            self.callers[ck] = mp.make_caller(ck, self.broker, self.ctx)
        # wait (bounded) until every worker has registered; one that has not by then fails
        # only the tests that need it (need()), naming it, instead of erroring the whole module
        names = [f"{b}.{w}" for w in WORKERS for b in ("echo", "stall")]
        names += [f"die.program.{c}" for c in CALLERS]
        deadline = time.monotonic() + REGISTER_BUDGET
        missing = names
        while missing and time.monotonic() < deadline:
            missing = [n for n in missing if self.workers_of(n) < 1 and not self.gone(n)]
            time.sleep(0.05)  # polling the broker's state (a bounded wait), not synchronisation
        self.missing = {n for n in names if self.workers_of(n) < 1}

    def gone(self, service: str) -> bool:
        """The worker of ``service`` will not register any more (its thread failed, its
        process exited)."""
        for w in self.workers:
            if w.service == service:
                proc = getattr(w, "proc", None)
                return w.failure is not None or (proc is not None and proc.poll() is not None)
        return True

    def need(self, *services: str) -> None:
        """Fail (this test only) when a worker of ``services`` never registered."""
        missing = sorted(set(services) & self.missing)
        missing = [n for n in missing if self.workers_of(n) < 1]  # a late one is welcome
        if missing:
            why = {w.service: getattr(w, "failure", None) for w in self.workers}
            pytest.fail(
                f"worker(s) not registered within {REGISTER_BUDGET:.0f}s of the matrix start: "
                + ", ".join(f"{n} (failure: {why.get(n)!r})" for n in missing)
            )

    def workers_of(self, service: str) -> int:
        def count() -> int:
            svc = self.broker.broker.router.services.get(service)
            return len(svc.workers) if svc else 0

        return self.broker.call(count)

    def queued(self, service: str) -> int:
        def count() -> int:
            svc = self.broker.broker.router.services.get(service)
            return len(svc.queue) if svc else 0

        return self.broker.call(count)

    def dead_letters(self, queue: str) -> Any:
        conn = mp.http_conn(self.broker, 5)
        try:
            conn.request("GET", f"/v1/dead-letters?queue={queue}")
            resp = conn.getresponse()
            assert resp.status == 200
            return json.loads(resp.read())
        finally:
            conn.close()

    def check_workers(self, kind: str = "") -> None:
        for w in self.workers:
            if kind and w.kind != kind:
                continue
            assert getattr(w, "failure", None) is None, f"{w.service}: {w.failure!r}"

    def stop(self) -> None:
        for c in self.callers.values():
            c.close()
        self.broker.stop(drain_timeout=0)  # DISCONNECT to MDP workers, closes WebSockets
        for w in self.workers:
            w.stop()
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    m = Matrix()
    try:
        m.start()
        yield m
    finally:
        m.stop()


def cell_params(check: str) -> list[Any]:
    out = []
    for ck in CALLERS:
        for wk in WORKERS:
            marks = []
            gap = GAPS.get((ck, wk, check))
            if gap:
                marks.append(pytest.mark.xfail(strict=True, reason=gap))
            out.append(pytest.param(ck, wk, id=f"{ck}-{wk}", marks=marks))
    return out


# -- per cell ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ck", "wk"), cell_params("body"))
def test_body_and_partials(matrix: Matrix, ck: str, wk: str) -> None:
    """Binary (all 256 byte values) and multi-frame bodies, then partial replies."""
    c, w = CALLERS[ck], WORKERS[wk]
    matrix.need(f"echo.{wk}")
    caller = matrix.callers[ck]
    for frames in (BINARY, MULTI, JSONISH, EMPTY, PARTIAL_BODY):
        if w.no_empty and caller_input(c, frames)[1] == []:
            continue  # stated in the docs table (body column)
        sent, want = expected_reply(c, w, frames)
        got = caller.call(f"echo.{wk}", sent)
        assert got.error is None and not got.timed_out, (frames, got)
        assert got.final == want, f"{frames!r}: {got.final!r} != {want!r}"
        if frames is PARTIAL_BODY:
            assert got.partials == expected_partials(c, w)
        else:
            assert got.partials == []
        if c.headers:
            # the worker echoes the request's headers: they come back only if it saw them
            key, value = mp.HEADER
            assert got.headers is not None, got
            assert got.headers.get(key) == (value if w.headers else None), got.headers
    matrix.check_workers(wk)


@pytest.mark.parametrize(("ck", "wk"), cell_params("deadline"))
def test_deadline(matrix: Matrix, ck: str, wk: str) -> None:
    """A worker that answers after the service's deadline."""
    c, w = CALLERS[ck], WORKERS[wk]
    matrix.need(f"stall.{wk}")
    sent, want = expected_reply(c, w, [b"slow"])
    started = time.monotonic()
    got = matrix.callers[ck].call(f"stall.{wk}", sent)
    if c.deadline:
        assert_error(ck, got, 504, f"stall.{wk}")
        assert time.monotonic() - started < STALL_DEADLINE + 1.0
    else:
        # no deadline for message-switch requests: the late answer is the reply
        assert got.error is None and got.final == want, got


@pytest.mark.parametrize(("ck", "wk"), cell_params("died"))
def test_worker_died(matrix: Matrix, ck: str, wk: str) -> None:
    """A worker that goes away while it holds the request (the service does not redeliver)."""
    c = CALLERS[ck]
    service = f"die.{wk}.{ck}"
    if wk == "program":
        worker = matrix.program_die[ck]
        matrix.need(service)
    else:
        worker = mp.make_worker(wk, matrix.broker, service, matrix.ctx)
        matrix.workers.append(worker)
    wait_until(lambda: matrix.workers_of(service) == 1, 30, f"the worker of {service}")
    sent, _ = caller_input(c, [b"die"])
    got = matrix.callers[ck].call(service, sent, wait=mp.WAIT if c.deadline else SWITCH_WAIT)
    wait_until(lambda: matrix.workers_of(service) == 0, 5, f"{service} gone")
    if wk == "program":
        assert worker.exited(5) is not None, "maitred worker did not exit"
    else:
        assert worker.died.wait(5), "the worker did not get the request"
        assert worker.failure is None, worker.failure
    if c.deadline:
        assert_error(ck, got, 502, service)
    else:
        # the switch keeps the message: back in its queue for the next worker
        assert got.timed_out and got.error is None and got.final is None, got
        wait_until(lambda: matrix.queued(service) == 1, 5, "the request back in its queue")


# -- per caller --------------------------------------------------------------------------------

#: seconds a message-switch caller waits where no answer is expected
SWITCH_WAIT = 0.5

ERROR_NAMES = {403: "forbidden", 502: "worker_died", 503: "no_worker", 504: "timeout"}

#: middleman's error texts per code (ws.md#error-texts); {s} is the service. The text carries
#: no code: a worker that died and no worker read the same.
MM_TEXTS = {
    403: "Not trusted REQ {s}",
    502: "No responder for REQ {s}",
    503: "No responder for REQ {s}",
    504: "Timeout for REQ {s}",
}


def error_form(ck: str, code: int) -> str:
    """The docs' statement of how error ``code`` reaches caller kind ``ck``."""
    c = CALLERS[ck]
    if not c.deadline:
        return "none"
    if ck == "middleman":
        return "`PUB ERROR` `" + MM_TEXTS[code].format(s="k") + "`"
    if ck == "rest":
        return f"{code} `{ERROR_NAMES[code]}`"
    if ck == "sse":
        if code in (403, 503):  # refused at once, before the stream starts
            return f"{code} `{ERROR_NAMES[code]}`"
        return f"200 + `event: error` `{ERROR_NAMES[code]}`"
    if ck == "json":
        return f"`error` code {code}"
    if ck == "local":
        return f"`MaitredError` {code}"
    return f'`[b"{code}", reason]`'


def assert_error(ck: str, got: mp.Outcome, code: int, service: str) -> None:
    """``got`` is error ``code`` in caller ``ck``'s own form (the one error_form states)."""
    assert got.error is not None and got.final is None and not got.timed_out, got
    got_code, text = got.error
    if ck == "middleman":
        assert text == MM_TEXTS[code].format(s=service), text
        return
    assert got_code == code, got
    if ck == "rest":
        assert text.startswith(ERROR_NAMES[code] + ": "), text
    elif ck == "sse":
        form = "status" if code in (403, 503) else "event error"
        assert text.startswith(f"{form} {ERROR_NAMES[code]}: "), text
    else:
        assert text, got


def caller_params() -> list[Any]:
    return [pytest.param(ck, id=ck) for ck in CALLERS]


@pytest.mark.parametrize("ck", caller_params())
def test_no_worker(matrix: Matrix, ck: str) -> None:
    c = CALLERS[ck]
    sent, _ = caller_input(c, [b"anyone?"])
    got = matrix.callers[ck].call("nw.none", sent, wait=mp.WAIT if c.deadline else SWITCH_WAIT)
    if c.deadline:
        assert_error(ck, got, 503, "nw.none")
    else:
        # a switch request waits in its durable queue whatever the service's policy
        assert got.timed_out and got.error is None, got
        assert matrix.queued("nw.none") >= 1


@pytest.mark.parametrize("ck", caller_params())
def test_denied(matrix: Matrix, ck: str) -> None:
    c = CALLERS[ck]
    sent, _ = caller_input(c, [b"let me in"])
    got = matrix.callers[ck].call("denied.svc", sent, wait=mp.WAIT if c.deadline else SWITCH_WAIT)
    # (the switch refuses at once too: it asks [access] before it stores anything)
    assert_error(ck, got, 403, "denied.svc")
    if c.body == "switch":
        assert got.error is not None and "may not call denied.svc" in got.error[1], got
        assert matrix.dead_letters("denied.svc") == []


def final_bytes(c: CallerKind, got: mp.Outcome) -> bytes:
    assert got.error is None and not got.timed_out, got
    if c.body == "frames":
        assert len(got.final) == 1, got
        return bytes(got.final[0])
    if c.body == "switch":
        return bytes(got.final)
    return str(got.final).encode()


@pytest.mark.parametrize("ck", caller_params())
def test_mmi(matrix: Matrix, ck: str) -> None:
    """`mmi.service` and `mmi.services` answer the same to every caller kind."""
    c = CALLERS[ck]
    matrix.need(*(f"echo.{wk}" for wk in WORKERS))
    caller = matrix.callers[ck]
    asks = [(f"echo.{wk}", b"200") for wk in WORKERS] + [("nosuch", b"404")]
    for name, answer in asks:
        sent, _ = caller_input(c, [name.encode()])
        assert final_bytes(c, caller.call("mmi.service", sent)) == answer, name
    if c.body == "frames":
        # the last frame is the argument; the frames before it come back unchanged
        got = caller.call("mmi.service", [b"tag", b"echo.rfc"])
        assert got.error is None and got.final == [b"tag", b"200"], got
    sent, _ = caller_input(c, [b""])
    rows = json.loads(final_bytes(c, caller.call("mmi.services", sent)))
    echo = {r["name"]: r["workers"] for r in rows if r["name"].startswith("echo.")}
    assert echo == {f"echo.{wk}": 1 for wk in WORKERS}


# -- publish / subscribe -----------------------------------------------------------------------

#: publisher kinds: what they are
PUBLISHERS = {
    "zmq-pub": "plain pyzmq PUB socket on `[transports.mdp] publish_endpoints`: `[topic, body]`",
    "rest": "REST `POST /v1/topics/{topic}`",
    "middleman": "middleman `PUB topic` (WebSocket text, trusted key)",
    "json": "maitred.json `publish` (body as `data`)",
    "local": "`LocalClient.publish` (in process)",
}
#: subscriber kinds: what they are, and what they receive for a publication
SUBSCRIBERS = {
    "zmq-prefix": ("plain pyzmq SUB socket on `pub_endpoints`, subscribed to the prefix `ps.`",
                   "`[topic, body]`; and, as ZeroMQ filters by prefix, the "
                   "`[b\"ps.>\", topic, body]` sent for the pattern subscriber"),
    "zmq-pattern": ("plain pyzmq SUB socket on `pub_endpoints`, subscribed to the pattern `ps.>`",
                    "`[b\"ps.>\", topic, body]`"),
    "sse": ("REST `GET /v1/topics/ps.>` (`text/event-stream`)",
            "an SSE event `{topic, frames}`"),
    "middleman": ("middleman `SUB ps.>`", "`PUB topic` with the body as text, `Cid`/`Uid`"),
    "json": ("maitred.json `subscribe` to `ps.>`", "an `event` with `topic` and `data`"),
    "local": ("`LocalClient.subscribe(\"ps.>\")`", "`(topic, body, headers)` on `events`"),
}  # fmt: skip


class PubSubMatrix:
    """One broker (the matrix's config), a subscriber of every kind on ``ps.>`` (or the prefix
    ``ps.``), a publisher of every kind."""

    def __init__(self) -> None:
        self.broker = BrokerThread(CONFIG)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.subscribers: dict[str, mps.Subscriber] = {}
        self.publishers: dict[str, mps.Publisher] = {}

    def start(self) -> None:
        self.subscribers = mps.make_subscribers(self.broker, self.ctx)

        def sessions() -> int:
            return len(self.broker.broker.router.topics.match("ps.x"))

        # every subscription is in the broker (the two ZeroMQ ones are a prefix session and a
        # pattern session)
        wait_until(lambda: sessions() == len(SUBSCRIBERS), 30, "every subscriber subscribed")
        self.publishers = mps.make_publishers(self.broker, self.ctx)

    def stop(self) -> None:
        for p in self.publishers.values():
            p.close()
        for s in self.subscribers.values():
            if s.kind != "sse":
                s.stop()
        self.broker.stop(drain_timeout=0)  # ends the SSE stream
        self.subscribers["sse"].stop()
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def psmatrix() -> Iterator[PubSubMatrix]:
    m = PubSubMatrix()
    try:
        m.start()
        yield m
    finally:
        m.stop()


def pubsub_params() -> list[Any]:
    return [pytest.param(pk, sk, id=f"{pk}-{sk}") for pk in PUBLISHERS for sk in SUBSCRIBERS]


@pytest.mark.parametrize(("pk", "sk"), pubsub_params())
def test_pubsub(psmatrix: PubSubMatrix, pk: str, sk: str) -> None:
    """A publication of kind ``pk`` reaches a subscriber of kind ``sk``, body exact."""
    topic = f"ps.{pk}.{sk}"
    text = f"from {pk} to {sk}: caf\u00e9"
    psmatrix.publishers[pk].publish(topic, text)
    sub = psmatrix.subscribers[sk]
    wait_until(lambda: bool(sub.received(topic)) or sub.failure is not None, 10, topic)
    assert sub.failure is None, sub.failure
    assert sub.received(topic) == [[text.encode()]]
    if isinstance(sub, mps.ZmqSubscriber) and sub.kind == "zmq-prefix":
        wait_until(lambda: (topic, [text.encode()]) in sub.copies, 10, "the pattern's copy")


# -- the docs table ----------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "matrix.md"


def render() -> str:
    yes = {True: "yes", False: "no"}
    out = [
        "# The cross-protocol matrix",
        "",
        "<!-- generated from tests/e2e/test_matrix.py: edit the data there, then run",
        "     .venv/bin/python -m tests.e2e.test_matrix --write-docs -->",
        "",
        "Every caller kind calls a service of every worker kind through one broker with the",
        "`mdp`, `http` and `ws` transports. `tests/e2e/test_matrix.py` runs every cell and",
        "asserts exactly what this page says: the page is rendered from the test's data",
        "(`CALLERS`, `WORKERS`, `GAPS`), and a test fails when it is out of date.",
        "",
        f"{len(CALLERS)} caller kinds × {len(WORKERS)} worker kinds = "
        f"{len(CALLERS) * len(WORKERS)} cells.",
        "",
        "## Caller kinds",
        "",
        "| caller | what | body | partial replies | deadline | errors | headers |",
        "|---|---|---|---|---|---|---|",
    ]
    body_doc = {"frames": "frames, exact", "switch": "one payload (JSON string in Transfer)",
                "text": "one text (UTF-8)"}  # fmt: skip
    for c in CALLERS.values():
        out.append(
            f"| `{c.name}` | {c.what} | {body_doc[c.body]} | "
            f"{'yes' if c.partials else 'no (final only)'} | "
            f"{'the service policy' if c.deadline else 'none'} | {c.errors} | "
            f"{yes[c.headers]} |"
        )
    wbody = {"frames": "frames, exact", "joined": "one byte string (frames concatenated)",
             "switch": "one payload (frames concatenated; a JSON string in Transfer)",
             "text": "one text (frames joined by LF, UTF-8)"}  # fmt: skip
    out += [
        "",
        "## Worker kinds",
        "",
        "| worker | what | body | partial replies | dies by | headers |",
        "|---|---|---|---|---|---|",
    ]
    for w in WORKERS.values():
        out.append(
            f"| `{w.name}` | {w.what} | {wbody[w.body]} | {yes[w.partials]} | "
            f"{w.died} | {yes[w.headers]} |"
        )
    out += [
        "",
        "## Cells",
        "",
        "Checks per cell: the echo of all 256 byte values in one frame and of four frames "
        f"(`{MULTI!r}`); a JSON text (`{JSONISH[0].decode()}`); no frame at all; a body "
        "starting `PARTIAL`, for which partial-capable workers send "
        "`p1` and `p2` first; the header `X-Matrix` from callers that have headers (workers "
        f"echo the headers they see); a worker answering {mp.STALL_HOLD} s late under a "
        f'{STALL_DEADLINE} s deadline (`[services."stall.>"] request_timeout`); a worker '
        "that dies holding the request (`redeliver = false`). A middleman caller sends a body "
        "as text: the frames' bytes as code points 0–255, frames joined by LF. Errors: the "
        "caller's form of the code (`k` is the service).",
        "",
        "| caller | worker | body | partials | headers | late worker | worker died | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in CALLERS.values():
        for w in WORKERS.values():
            gaps = [f"{check}: {r}" for (ck, wk, check), r in GAPS.items()
                    if (ck, wk) == (c.name, w.name)]  # fmt: skip
            status = "xfail — " + "; ".join(gaps) if gaps else "pass"
            late = error_form(c.name, 504) if c.deadline else "the late reply (no deadline)"
            died = error_form(c.name, 502) if c.deadline else "no error: back in its queue"
            out.append(
                f"| `{c.name}` | `{w.name}` | {body_mapping(c, w)} | {partial_mapping(c, w)} | "
                f"{header_mapping(c, w)} | {late} | {died} | {status} |"
            )
    out += [
        "",
        "## Per caller",
        "",
        'No worker: a service with `on_no_worker = "fail"` and no worker. Denied: an '
        "`[access]` rule refusing `call`. MMI: `mmi.service` answers `200` for a live service "
        "of any worker kind and `404` for an unknown one, and `mmi.services` lists the same "
        "services and worker counts, to every caller kind.",
        "",
        "| caller | no worker | denied | `mmi.service` / `mmi.services` |",
        "|---|---|---|---|",
    ]
    for c in CALLERS.values():
        nw = error_form(c.name, 503) if c.deadline else "none: waits in its queue"
        dn = error_form(c.name, 403) if c.deadline else "none: dead-lettered (`/v1/dead-letters`)"
        out.append(f"| `{c.name}` | {nw} | {dn} | `200`/`404`; the same JSON list |")
    out += [
        "",
        "## Publish and subscribe",
        "",
        "A publisher of every kind publishes on `ps.<publisher>.<subscriber>` a body of one "
        "UTF-8 frame, and a subscriber of every kind, subscribed to `ps.>` (the ZeroMQ prefix "
        "subscriber to `ps.`), receives it exactly once, body unchanged "
        f"({len(PUBLISHERS)} × {len(SUBSCRIBERS)} = {len(PUBLISHERS) * len(SUBSCRIBERS)} "
        "cells, `test_pubsub`). The ZeroMQ layouts are in "
        "[publish and subscribe](mdp.md#publish-and-subscribe).",
        "",
        "| publisher | what |",
        "|---|---|",
    ]
    out += [f"| `{k}` | {what} |" for k, what in PUBLISHERS.items()]
    out += ["", "| subscriber | what | receives |", "|---|---|---|"]
    out += [f"| `{k}` | {what} | {gets} |" for k, (what, gets) in SUBSCRIBERS.items()]
    out += [
        "",
        "| publisher | " + " | ".join(f"`{k}`" for k in SUBSCRIBERS) + " |",
        "|---|" + "---|" * len(SUBSCRIBERS),
    ]
    for pk in PUBLISHERS:
        out.append(f"| `{pk}` | " + " | ".join("pass" for _ in SUBSCRIBERS) + " |")
    out.append("")
    return "\n".join(out)


def test_docs_table_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/reference/matrix.md is out of date: "
        "run .venv/bin/python -m tests.e2e.test_matrix --write-docs"
    )


def main(argv: list[str]) -> int:
    if argv == ["--write-docs"]:
        DOC.write_text(render())
        print(f"wrote {DOC}")
        return 0
    print("usage: python -m tests.e2e.test_matrix --write-docs", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
