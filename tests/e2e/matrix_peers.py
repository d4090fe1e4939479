"""Peers for the cross-protocol matrix (tests/e2e/test_matrix.py): one worker kind and one caller
kind per protocol maitred speaks, each behind the same small interface, so the matrix can drive
every caller x worker pair through one broker.

Workers run in daemon threads (or, for ``maitred worker --program``, in subprocesses) and have
three behaviours, chosen by the service they serve:

- ``echo``: answer the request body unchanged (as the protocol lets the worker see it); a body
  starting with ``PARTIAL`` is preceded by the partial replies ``p1`` and ``p2`` when the worker's
  protocol has partial replies;
- ``stall``: hold the request ``STALL_HOLD`` seconds (longer than the service's deadline), then
  answer (the late answer frees the worker);
- ``die``: on the first request, go away while holding it (DISCONNECT, or close the connection).

Callers return a :class:`Outcome`: the partial bodies, the final body, or the error (code and the
text the protocol carried), each as the caller's protocol shows it. Raw wire formats are written
here from docs/reference (not with maitred's codecs) where that is short.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
from majortomo import client as mt_client
from majortomo import error as mt_error
from majortomo import worker as mt_worker
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.local import LocalClient
from maitred.transports.http.client import SwitchClient, SwitchError
from maitred.transports.mdp.client import Client as MdpClient
from tests.e2e.helpers import BrokerThread, RawClient

#: seconds a stalling worker holds a request (the stall services' deadline is shorter)
STALL_HOLD = 0.5
#: the partial replies an echo worker sends before a body that starts with this
PARTIAL_MARK = b"PARTIAL"
PARTIALS = [[b"p1"], [b"p2"]]
#: the header callers with headers send (middleman canonical form)
HEADER = ("X-Matrix", "hdr")
#: the WebSocket keys the matrix config defines (trusted, identity "ws")
WS_KEY = "matrix-key"


def behaviour(service: str) -> str:
    return service.split(".", 1)[0]


@dataclass
class Outcome:
    partials: list[Any] = field(default_factory=list)
    final: Any = None
    error: tuple[int, str] | None = None  # (code, text as carried by the protocol)
    timed_out: bool = False  # nothing came back within the caller's own wait
    headers: dict[str, str] | None = None  # the final reply's headers, where the protocol has any


# -- workers ---------------------------------------------------------------------------------------


class ThreadWorker:
    """A worker in a daemon thread; ``run`` loops until ``stop`` is set or the peer dies."""

    kind = ""

    def __init__(self, broker: BrokerThread, service: str) -> None:
        self.broker = broker
        self.service = service
        self.behaviour = behaviour(service)
        self.stop_event = threading.Event()
        self.died = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"w-{service}")

    def start(self) -> ThreadWorker:
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by the test, never raised in the thread
            if not self.stop_event.is_set():
                self.failure = exc

    def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


class RawMdpWorker(ThreadWorker):
    """A raw MDP worker (``dialect`` "0.1" or "rfc"): READY, heartbeats, replies frame by frame."""

    def __init__(self, broker: BrokerThread, service: str, ctx: zmq.Context[Any], dialect: str):
        super().__init__(broker, service)
        self.ctx = ctx
        self.dialect = dialect
        self.kind = "mdp01" if dialect == "0.1" else "rfc"

    def _send(self, sock: zmq.Socket[Any], *frames: bytes) -> None:
        if self.dialect == "0.1":
            sock.send_multipart([b"", b"MDPW01", *frames])
        else:
            sock.send_multipart([b"MDPW02", *frames])

    def run(self) -> None:
        v1 = self.dialect == "0.1"
        ready, request, partial, final, hb, dc = (
            (b"\x01", b"\x02", None, b"\x03", b"\x04", b"\x05")
            if v1
            else (b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06")
        )
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.broker.endpoint)
        held: list[tuple[float, bytes, list[bytes]]] = []
        try:
            self._send(sock, ready, self.service.encode())
            next_hb = time.monotonic() + 1.0
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_hb:
                    self._send(sock, hb)
                    next_hb = now + 1.0
                for item in [h for h in held if h[0] <= now]:
                    held.remove(item)
                    self._send(sock, final, item[1], b"", *item[2])
                if not sock.poll(20):
                    continue
                frames = sock.recv_multipart()
                if v1:
                    frames = frames[1:]
                assert frames[0] == (b"MDPW01" if v1 else b"MDPW02"), frames
                if frames[1] == dc:
                    return
                if frames[1] != request:
                    continue
                addr, body = frames[2], frames[4:]
                if self.behaviour == "die":
                    self._send(sock, dc)
                    self.died.set()
                    return
                if self.behaviour == "stall":
                    held.append((time.monotonic() + STALL_HOLD, addr, body))
                    continue
                if partial is not None and body[:1] and body[0].startswith(PARTIAL_MARK):
                    for p in PARTIALS:
                        self._send(sock, partial, addr, b"", *p)
                self._send(sock, final, addr, b"", *body)
        finally:
            sock.close(0)


class MajortomoWorker(ThreadWorker):
    """The ``majortomo`` package's own Worker."""

    kind = "majortomo"

    def __init__(self, broker: BrokerThread, service: str, ctx: zmq.Context[Any]) -> None:
        super().__init__(broker, service)
        self.ctx = ctx
        self.worker: mt_worker.Worker | None = None

    def run(self) -> None:
        w = mt_worker.Worker(
            self.broker.endpoint,
            self.service,
            heartbeat_interval=1.0,
            zmq_context=self.ctx,
            zmq_linger=0,
        )
        self.worker = w
        w.connect()
        try:
            while not self.stop_event.is_set():
                try:
                    addr, body = w.wait_for_request()
                except mt_error.Disconnected:
                    return
                if self.behaviour == "die":
                    w.close()  # DISCONNECT while holding the request
                    self.died.set()
                    return
                if self.behaviour == "stall":
                    # the worker "works" longer than the deadline (majortomo has no poll API)
                    self.stop_event.wait(STALL_HOLD)
                if body[:1] and body[0].startswith(PARTIAL_MARK):
                    for p in PARTIALS:
                        w.send_reply_partial(addr, p)
                w.send_reply_final(addr, body)
        finally:
            if w.is_connected():
                w._disconnect()


class SwitchWorker(ThreadWorker):
    """``message-switch serve``: a session transferring from the persistent queue ``service``."""

    kind = "switch"

    def run(self) -> None:
        url = self.broker.endpoints["http"][0]
        sw = SwitchClient(url, token=f"serve:{uuid.uuid4().hex[:8]}", timeout=10)
        held: list[tuple[float, str, str, int, bytes]] = []
        try:
            sw.create(self.service, persistent=True)
            start: int | None = None
            while not self.stop_event.is_set():
                now = time.monotonic()
                for item in [h for h in held if h[0] <= now]:
                    held.remove(item)
                    _, reply_to, q, n, payload = item
                    sw.respond(reply_to, q, n, payload)
                    sw.ack(q, n)
                msgs, start = sw.transfer([self.service], start, 0.05)
                for (q, n), payload, kind in reversed(msgs):
                    if str(kind[0]).lower() != "request":
                        sw.ack(q, n)
                        continue
                    if self.behaviour == "die":
                        self.died.set()
                        return  # closes both connections while the message is leased
                    if self.behaviour == "stall":
                        held.append((time.monotonic() + STALL_HOLD, str(kind[1]), q, n, payload))
                        continue
                    sw.respond(str(kind[1]), q, n, payload)
                    sw.ack(q, n)
        finally:
            sw.close()


def mm_encode(command: str, target: str, headers: list[tuple[str, str]], body: str) -> str:
    """One middleman message; the body is dot-stuffed, its lines joined by CRLF (a CR that ends a
    body line is kept: the decoder strips only one CR per line end)."""
    lines = ["." + ln if ln.startswith(".") else ln for ln in body.split("\n")]
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"{command} {target}\r\n{head}\r\n" + "\r\n".join(lines) + "\r\n.\r\n"


def mm_decode(frame: str) -> tuple[str, str, list[tuple[str, str]], str]:
    """(command, target, headers, body) of one middleman message, dot-decoded."""
    head, _, rest = frame.partition("\r\n\r\n")
    first, *header_lines = head.split("\r\n")
    command, _, target = first.partition(" ")
    headers = [(k, v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    assert rest.endswith("\r\n.\r\n"), frame
    lines = rest[: -len("\r\n.\r\n")].split("\r\n")
    body = "\n".join(ln[1:] if ln.startswith(".") else ln for ln in lines)
    return command, target, headers, body


def ws_url(broker: BrokerThread) -> str:
    return broker.endpoints["ws"][0]


@contextlib.contextmanager
def mm_connect(broker: BrokerThread) -> Iterator[ClientConnection]:
    with connect(ws_url(broker), open_timeout=5, compression=None, proxy=None) as ws:
        ws.send(WS_KEY)
        assert ws.recv(5) == "MM OK"
        ws.recv(5)  # the connection id
        yield ws


class MiddlemanWorker(ThreadWorker):
    """A middleman service: ``EREQ service``, then ``RES`` with the request's ``Rid``."""

    kind = "middleman"

    def run(self) -> None:
        held: list[tuple[float, str]] = []
        with mm_connect(self.broker) as ws:
            ws.send(mm_encode("EREQ", self.service, [], ""))
            while not self.stop_event.is_set():
                now = time.monotonic()
                for item in [h for h in held if h[0] <= now]:
                    held.remove(item)
                    ws.send(item[1])
                try:
                    frame = ws.recv(0.02)
                except TimeoutError:
                    continue
                assert isinstance(frame, str)
                command, target, headers, body = mm_decode(frame)
                if command != "REQ":
                    continue
                if self.behaviour == "die":
                    self.died.set()
                    return  # closes the connection while holding the request
                # echo the request's headers (not Cid/Uid; Rid routes the RES)
                out = [(k, v) for k, v in headers if k not in ("Cid", "Uid")]
                reply = mm_encode("RES", target, out, body)
                if self.behaviour == "stall":
                    held.append((time.monotonic() + STALL_HOLD, reply))
                    continue
                ws.send(reply)


@contextlib.contextmanager
def json_connect(
    broker: BrokerThread, **hello: Any
) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    with connect(
        ws_url(broker),
        subprotocols=[Subprotocol("maitred.json")],
        open_timeout=5,
        compression=None,
        proxy=None,
    ) as ws:
        ws.send(json.dumps({"type": "hello", "key": WS_KEY, **hello}))
        welcome = json.loads(ws.recv(5))
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


_RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])


def json_body(msg: dict[str, msgspec.Raw]) -> dict[str, msgspec.Raw]:
    """The body fields of a message, raw (so a payload's JSON text is echoed byte for byte)."""
    return {k: v for k, v in msg.items() if k in ("payload", "data", "frames")}


def json_frames(msg: dict[str, Any]) -> list[bytes]:
    """The body of a decoded JSON-dialect message as frames (ws-json.md: payload → its JSON
    text, data → one frame, frames → frames, none → no frame)."""
    if "frames" in msg:
        return [base64.b64decode(f) for f in msg["frames"]]
    if "data" in msg:
        return [base64.b64decode(msg["data"])]
    if "payload" in msg:
        return [bytes(msg["payload"])]
    return []


class JsonWorker(ThreadWorker):
    """A ``maitred.json`` service: hello with ``methods``, then ``partial``/``reply`` by id."""

    kind = "json"

    def run(self) -> None:
        held: list[tuple[float, bytes]] = []
        enc = msgspec.json.Encoder()
        with json_connect(self.broker, name=self.service, version="1", methods=[]) as (
            ws,
            welcome,
        ):
            assert welcome.get("services") == [self.service], welcome
            while not self.stop_event.is_set():
                now = time.monotonic()
                for item in [h for h in held if h[0] <= now]:
                    held.remove(item)
                    ws.send(item[1].decode())
                try:
                    frame = ws.recv(0.02)
                except TimeoutError:
                    continue
                assert isinstance(frame, str)
                msg = _RAW.decode(frame)
                if msgspec.json.decode(msg["type"]) != "request":
                    continue
                rid = msg["id"]
                if self.behaviour == "die":
                    self.died.set()
                    return
                body = json_body(msg)
                first = json_frames({k: _rawvalue(k, v) for k, v in body.items()})
                headers = msgspec.json.decode(msg["headers"]) if "headers" in msg else {}
                headers = {k: v for k, v in headers.items() if k not in ("Cid", "Uid")}
                reply = {"type": msgspec.Raw(b'"reply"'), "id": rid, **body}
                if headers:
                    reply["headers"] = msgspec.Raw(enc.encode(headers))
                if self.behaviour == "stall":
                    held.append((time.monotonic() + STALL_HOLD, enc.encode(reply)))
                    continue
                if first[:1] and first[0].startswith(PARTIAL_MARK):
                    for p in PARTIALS:
                        data = base64.b64encode(p[0]).decode()
                        ws.send(
                            json.dumps(
                                {"type": "partial", "id": msgspec.json.decode(rid), "data": data}
                            )
                        )
                ws.send(enc.encode(reply).decode())


def _rawvalue(key: str, raw: msgspec.Raw) -> Any:
    return bytes(raw) if key == "payload" else msgspec.json.decode(raw)


#: the program a ``maitred worker --program`` runs, per behaviour
PROGRAMS = {
    "echo": "cat",
    "stall": f"sh -c 'sleep {STALL_HOLD}; cat'",
    # SIGINT to the `maitred worker` process while it holds the request: it sends DISCONNECT
    "die": "sh -c 'kill -INT $PPID; sleep 5'",
}


class ProgramWorker:
    """``maitred worker SERVICE --program CMD -b tcp://…`` in a subprocess."""

    kind = "program"

    def __init__(self, broker: BrokerThread, service: str) -> None:
        self.broker = broker
        self.service = service
        self.failure: BaseException | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProgramWorker:
        cmd = [
            sys.executable, "-m", "maitred.core", "worker", self.service,
            "--program", PROGRAMS[behaviour(self.service)], "-b", self.broker.endpoint,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        return self

    def exited(self, timeout: float) -> int | None:
        """The process's exit code once it has ended (within ``timeout``), else None."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def make_worker(kind: str, broker: BrokerThread, service: str, ctx: zmq.Context[Any]) -> Any:
    if kind == "mdp01":
        return RawMdpWorker(broker, service, ctx, "0.1").start()
    if kind == "rfc":
        return RawMdpWorker(broker, service, ctx, "rfc").start()
    if kind == "majortomo":
        return MajortomoWorker(broker, service, ctx).start()
    if kind == "switch":
        return SwitchWorker(broker, service).start()
    if kind == "middleman":
        return MiddlemanWorker(broker, service).start()
    if kind == "json":
        return JsonWorker(broker, service).start()
    if kind == "program":
        return ProgramWorker(broker, service).start()
    raise AssertionError(kind)


# -- callers ----------------------------------------------------------------------------------

#: how long a caller waits for an answer it expects
WAIT = 5.0


def mdp_outcome(replies: list[tuple[bool, list[bytes]]], service: str) -> Outcome:
    """An MDP caller's replies: an error reply is a FINAL of two frames, a 4xx/5xx code and a
    reason (mdp.md#errors)."""
    out = Outcome(partials=[body for final, body in replies if not final])
    final = replies[-1][1]
    if (
        len(final) == 2
        and len(final[0]) == 3
        and final[0].isdigit()
        and final[0][:1] in (b"4", b"5")
        and not service.startswith("mmi.")
    ):
        out.error = (int(final[0]), final[1].decode())
    else:
        out.final = final
    return out


class Caller:
    kind = ""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any]) -> None:
        self.broker = broker
        self.ctx = ctx

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        return None


class RawMdpCaller(Caller):
    """Raw frames of one MDP client dialect (helpers.RawClient); a new socket per call, so a
    REQ socket is never left waiting for a reply that does not come."""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any], dialect: str) -> None:
        super().__init__(broker, ctx)
        self.dialect = dialect

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        client = RawClient(self.ctx, self.broker.endpoint, self.dialect)
        try:
            client.send(service.encode(), *body)
            replies: list[tuple[bool, list[bytes]]] = []
            deadline = time.monotonic() + wait
            while not replies or not replies[-1][0]:
                left = deadline - time.monotonic()
                if left <= 0 or not client.sock.poll(int(left * 1000)):
                    return Outcome(partials=[b for _, b in replies], timed_out=True)
                replies.append(client.recv(0.1))
                if self.dialect == "0.1-req" or self.dialect == "0.1-dealer":
                    break
            return mdp_outcome(replies, service)
        finally:
            client.close()


class MajortomoCaller(Caller):
    """The ``majortomo`` package's Client."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        client = mt_client.Client(self.broker.endpoint, zmq_context=self.ctx, zmq_linger=0)
        client.connect()
        try:
            client.send(service.encode(), *body)
            replies: list[tuple[bool, list[bytes]]] = []
            try:
                while True:
                    # majortomo's recv_part hides whether a part was final: ask its state after
                    part = client.recv_part(timeout=wait)
                    if part is None:
                        break
                    replies.append((not client._expect_reply, part))
                    if replies[-1][0]:
                        break
            except mt_error.Timeout:
                return Outcome(partials=[b for _, b in replies], timed_out=True)
            return mdp_outcome(replies, service)
        finally:
            client.close()


class MaitredMdpCaller(Caller):
    """maitred's own ``maitred.transports.mdp.client.Client`` (RFC 18 dialect), streaming."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        with MdpClient(self.broker.endpoint, context=self.ctx, timeout=wait) as client:
            try:
                replies = list(client.stream(service, *body))
            except TimeoutError:
                return Outcome(timed_out=True)
        return mdp_outcome(replies, service)


class SwitchCaller(Caller):
    """``message-switch call``: the RPC pattern of docs/reference/wire.md with SwitchClient
    (one payload, no error message: a request that cannot be served stays in its durable queue)."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        url = self.broker.endpoints["http"][0]
        with SwitchClient(url, token=f"call:{uuid.uuid4().hex[:8]}", timeout=wait + 5) as sw:
            try:
                return Outcome(final=sw.rpc(service, body, timeout=wait))
            except TimeoutError:
                return Outcome(timed_out=True)
            except SwitchError as exc:
                # refused by the switch (e.g. [access]): its plain-text error form
                return Outcome(error=(exc.status, exc.body.decode("utf-8", "replace")))


def http_conn(broker: BrokerThread, wait: float) -> http.client.HTTPConnection:
    host, _, port = broker.endpoints["http"][0].removeprefix("http://").rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=wait + 5)


def rest_request(body: list[bytes]) -> tuple[bytes, dict[str, str]]:
    if len(body) == 1:
        return body[0], {"Content-Type": "application/octet-stream"}
    frames = {"frames": [base64.b64encode(f).decode() for f in body]}
    return json.dumps(frames).encode(), {"Content-Type": "application/json"}


class RestCaller(Caller):
    """``POST /v1/services/{name}`` with ``Accept: application/json`` (the reply's frames)."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        conn = http_conn(self.broker, wait)
        data, headers = rest_request(body)
        try:
            conn.request(
                "POST", f"/v1/services/{service}", data, {**headers, "Accept": "application/json"}
            )
            resp = conn.getresponse()
            got = resp.read()
        except TimeoutError:
            return Outcome(timed_out=True)
        finally:
            conn.close()
        if resp.status == 200:
            return Outcome(final=[base64.b64decode(f) for f in json.loads(got)["frames"]])
        err = json.loads(got)["error"]
        return Outcome(error=(resp.status, f"{err['code']}: {err['reason']}"))


def parse_sse(data: bytes) -> list[tuple[str, str]]:
    events = []
    for block in data.decode().split("\n\n"):
        name, lines = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].strip())
        if lines:
            events.append((name, "\n".join(lines)))
    return events


class SseCaller(Caller):
    """The same call with ``Accept: text/event-stream``: ``partial`` … ``final`` events."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        conn = http_conn(self.broker, wait)
        data, headers = rest_request(body)
        try:
            conn.request(
                "POST", f"/v1/services/{service}", data, {**headers, "Accept": "text/event-stream"}
            )
            resp = conn.getresponse()
            got = resp.read()
        except TimeoutError:
            return Outcome(timed_out=True)
        finally:
            conn.close()
        if resp.status != 200:
            err = json.loads(got)["error"]
            return Outcome(error=(resp.status, f"status {err['code']}: {err['reason']}"))
        assert resp.getheader("Content-Type") == "text/event-stream"
        out = Outcome()
        for event, payload in parse_sse(got):
            value = json.loads(payload)
            if event == "error":
                name = value["error"]["code"]
                out.error = (int(ErrorCode[name.upper()]), f"event error {name}: "
                             f"{value['error']['reason']}")  # fmt: skip
                continue
            frames = [base64.b64decode(f) for f in value["frames"]]
            if event == "partial":
                out.partials.append(frames)
            else:
                out.final = frames
        return out


#: error texts of middleman → maitred's code (ws.md, "Error texts")
def mm_error_code(text: str) -> int:
    if text.startswith("No responder for REQ"):
        return 503
    if text.startswith("Timeout for REQ"):
        return 504
    if text.startswith("Not trusted"):
        return 403
    if text.startswith("Error "):
        return int(text.split()[1])
    return 0


class MiddlemanCaller(Caller):
    """A middleman client: ``REQ`` with a ``ReqID``; answers are ``RES`` or ``PUB ERROR``.
    The body is text: ``body`` is a ``str``."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        with mm_connect(self.broker) as ws:
            ws.send(mm_encode("REQ", service, [("ReqID", "m-1"), HEADER], body))
            deadline = time.monotonic() + wait
            while True:
                left = deadline - time.monotonic()
                try:
                    frame = ws.recv(max(0.0, left))
                except TimeoutError:
                    return Outcome(timed_out=True)
                assert isinstance(frame, str)
                command, target, headers, text = mm_decode(frame)
                if command == "RES":
                    assert target == service, frame
                    assert ("Reqid", "m-1") in headers, frame
                    return Outcome(final=text, headers=dict(headers))
                if command == "PUB" and target == "ERROR":
                    return Outcome(error=(mm_error_code(text), text))


class JsonCaller(Caller):
    """A ``maitred.json`` consumer: ``request`` → ``partial``* then ``reply`` or ``error``."""

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        with json_connect(self.broker, name="matrix-consumer") as (ws, _):
            req: dict[str, Any] = {"type": "request", "id": "j-1", "destination": service,
                                   "responder": "cb", "headers": dict([HEADER])}  # fmt: skip
            if len(body) == 1:
                req["data"] = base64.b64encode(body[0]).decode()
            else:
                req["frames"] = [base64.b64encode(f).decode() for f in body]
            ws.send(json.dumps(req))
            out = Outcome()
            deadline = time.monotonic() + wait
            while True:
                left = deadline - time.monotonic()
                try:
                    frame = ws.recv(max(0.0, left))
                except TimeoutError:
                    out.timed_out = True
                    return out
                assert isinstance(frame, str)
                msg = _RAW.decode(frame)
                kind = msgspec.json.decode(msg["type"])
                if kind not in ("partial", "reply", "error"):
                    continue
                assert msgspec.json.decode(msg["id"]) == "j-1", frame
                assert msgspec.json.decode(msg["responder"]) == "cb", frame
                fields = {k: _rawvalue(k, v) for k, v in json_body(msg).items()}
                if kind == "partial":
                    out.partials.append(json_frames(fields))
                elif kind == "reply":
                    out.final = json_frames(fields)
                    raw = msg.get("headers")
                    out.headers = msgspec.json.decode(raw) if raw is not None else {}
                    return out
                else:
                    out.error = (msgspec.json.decode(msg["code"]),
                                 msgspec.json.decode(msg["message"]))  # fmt: skip
                    return out


class LocalCaller(Caller):
    """maitred's in-process ``LocalClient`` on the broker's loop."""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any]) -> None:
        super().__init__(broker, ctx)

        async def make() -> LocalClient:
            return LocalClient(broker.broker, label="matrix-local")

        self.client: LocalClient = broker.run(make())

    def call(self, service: str, body: Any, wait: float = WAIT) -> Outcome:
        async def go() -> Outcome:
            out = Outcome()
            try:
                async with asyncio.timeout(wait):
                    async for final, frames in self.client.stream(service, *body):
                        if final:
                            out.final = frames
                        else:
                            out.partials.append(frames)
            except MaitredError as exc:
                out.error = (int(exc.code), exc.reason)
            except TimeoutError:
                out.timed_out = True
            return out

        result: Outcome = self.broker.run(go(), timeout=wait + 5)
        return result

    def close(self) -> None:
        self.broker.call(self.client.close)


def make_caller(kind: str, broker: BrokerThread, ctx: zmq.Context[Any]) -> Caller:
    raw = {"mdp01-req": "0.1-req", "mdp01-dealer": "0.1-dealer", "rfc": "rfc",
           "majortomo-raw": "majortomo"}  # fmt: skip
    if kind in raw:
        return RawMdpCaller(broker, ctx, raw[kind])
    classes: dict[str, type[Caller]] = {
        "majortomo": MajortomoCaller,
        "switch": SwitchCaller,
        "rest": RestCaller,
        "sse": SseCaller,
        "middleman": MiddlemanCaller,
        "json": JsonCaller,
        "mdp-client": MaitredMdpCaller,
        "local": LocalCaller,
    }
    return classes[kind](broker, ctx)
