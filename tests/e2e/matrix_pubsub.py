"""Publishers and subscribers of every protocol for the pub/sub rows of the cross-protocol matrix
(tests/e2e/test_matrix.py): ZeroMQ (plain pyzmq PUB and SUB sockets on the MDP transport's
pub/sub endpoints, no maitred code), REST and SSE, WebSocket middleman and maitred.json, and the
in-process LocalClient.

Each subscriber runs in a daemon thread (the local one on the broker's loop) and collects
``(topic, body frames)`` of what it receives; each publisher has ``publish(topic, text)``.
Wire formats are written from docs/reference (mdp.md, http.md, ws.md, ws-json.md).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import zmq
from websockets.sync.client import ClientConnection

from maitred.core.local import LocalClient
from maitred.transports.http.client import HttpCliClient
from tests.e2e.helpers import BrokerThread
from tests.e2e.matrix_peers import http_conn, json_connect, json_frames, mm_connect, mm_decode
from tests.e2e.matrix_peers import mm_encode as mm_message

#: every subscriber subscribes to the topics under this prefix
PREFIX = "ps."


def pubsub_endpoints(broker: BrokerThread) -> tuple[str, str]:
    """(pub endpoint for SUB sockets, publish endpoint for PUB sockets)."""
    hub: Any = broker.broker.transports["mdp"].pubsub  # type: ignore[attr-defined]
    return hub.pub_bound[0], hub.publish_bound[0]


# -- subscribers -----------------------------------------------------------------------------------


class Subscriber:
    kind = ""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any]) -> None:
        self.broker = broker
        self.ctx = ctx
        self.got: list[tuple[str, list[bytes]]] = []
        self.failure: BaseException | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"sub-{self.kind}")

    def start(self) -> Subscriber:
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by the test
            if not self.stop_event.is_set():
                self.failure = exc

    def run(self) -> None:
        raise NotImplementedError

    def received(self, topic: str) -> list[list[bytes]]:
        return [body for t, body in list(self.got) if t == topic]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


class ZmqSubscriber(Subscriber):
    """A plain SUB socket; ``subscription`` a prefix or a pattern (mdp.md's two layouts)."""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any], subscription: str) -> None:
        self.kind = "zmq-pattern" if subscription.endswith(">") else "zmq-prefix"
        self.subscription = subscription.encode()
        #: pattern-form messages a prefix subscriber receives for another peer's pattern
        self.copies: list[tuple[str, list[bytes]]] = []
        super().__init__(broker, ctx)

    def run(self) -> None:
        sock = self.ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pubsub_endpoints(self.broker)[0])
            sock.setsockopt(zmq.SUBSCRIBE, self.subscription)
            while not self.stop_event.is_set():
                if not sock.poll(20):
                    continue
                frames = sock.recv_multipart()
                if frames[0].endswith(b">"):  # the pattern form (mdp.md)
                    assert frames[0] == b"ps.>", frames
                    if self.kind == "zmq-pattern":
                        self.got.append((frames[1].decode(), frames[2:]))
                    else:  # ZeroMQ's prefix filter lets the pattern subscriber's copy through
                        self.copies.append((frames[1].decode(), frames[2:]))
                else:
                    assert self.kind == "zmq-prefix", frames
                    self.got.append((frames[0].decode(), frames[1:]))
        finally:
            sock.close(0)


class SseSubscriber(Subscriber):
    """``GET /v1/topics/ps.>`` with ``Accept: text/event-stream``."""

    kind = "sse"

    def run(self) -> None:
        client = HttpCliClient(self.broker.endpoints["http"][0], 10)
        for topic, frames in client.subscribe(PREFIX + ">"):
            self.got.append((topic, frames))
            if self.stop_event.is_set():
                return


class MiddlemanSubscriber(Subscriber):
    """Middleman ``SUB ps.>``; publications come as ``PUB topic`` with a text body."""

    kind = "middleman"

    def run(self) -> None:
        with mm_connect(self.broker) as ws:
            ws.send(mm_message("SUB", PREFIX + ">", [], ""))
            self._read(ws)

    def _read(self, ws: ClientConnection) -> None:
        while not self.stop_event.is_set():
            try:
                frame = ws.recv(0.02)
            except TimeoutError:
                continue
            assert isinstance(frame, str)
            command, target, _, body = mm_decode(frame)
            if command == "PUB" and target != "ERROR":
                self.got.append((target, [body.encode()]))


class JsonSubscriber(Subscriber):
    """maitred.json ``subscribe``; publications come as ``event`` (data / payload / frames)."""

    kind = "json"

    def run(self) -> None:
        with json_connect(self.broker, name="matrix-subscriber") as (ws, _):
            ws.send(json.dumps({"type": "subscribe", "topic": PREFIX + ">", "id": "s1"}))
            while not self.stop_event.is_set():
                try:
                    frame = ws.recv(0.02)
                except TimeoutError:
                    continue
                msg = json.loads(frame)
                if msg["type"] == "event":
                    fields = dict(msg)
                    if "payload" in fields:
                        fields["payload"] = json.dumps(fields["payload"]).encode()
                    self.got.append((msg["topic"], json_frames(fields)))


class LocalSubscriber(Subscriber):
    """``LocalClient.subscribe`` in the broker's process (read on the broker's loop)."""

    kind = "local"

    def start(self) -> Subscriber:
        async def make() -> LocalClient:
            client = LocalClient(self.broker.broker, label="matrix-local-sub")
            client.subscribe(PREFIX + ">")
            return client

        self.client: LocalClient = self.broker.run(make())
        return super().start()

    def run(self) -> None:
        async def take() -> list[tuple[str, list[bytes]]]:
            out = []
            while not self.client.events.empty():
                topic, body, _ = self.client.events.get_nowait()
                out.append((topic, body))
            return out

        while not self.stop_event.is_set():
            self.got.extend(self.broker.run(take()))
            self.stop_event.wait(0.02)

    def stop(self) -> None:
        super().stop()
        self.broker.call(self.client.close)


def make_subscribers(broker: BrokerThread, ctx: zmq.Context[Any]) -> dict[str, Subscriber]:
    subs: list[Subscriber] = [
        ZmqSubscriber(broker, ctx, PREFIX),
        ZmqSubscriber(broker, ctx, PREFIX + ">"),
        SseSubscriber(broker, ctx),
        MiddlemanSubscriber(broker, ctx),
        JsonSubscriber(broker, ctx),
        LocalSubscriber(broker, ctx),
    ]
    return {s.kind: s.start() for s in subs}


# -- publishers ------------------------------------------------------------------------------------


class Publisher:
    kind = ""

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any]) -> None:
        self.broker = broker
        self.ctx = ctx

    def publish(self, topic: str, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None


class ZmqPublisher(Publisher):
    """A plain PUB socket on the publish endpoint: ``[topic, body]``. ZeroMQ drops what a PUB
    sends before the broker's subscription reached it, so :meth:`ready` sends probes until the
    broker counts a publication (a bounded wait)."""

    kind = "zmq-pub"

    def __init__(self, broker: BrokerThread, ctx: zmq.Context[Any]) -> None:
        super().__init__(broker, ctx)
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(pubsub_endpoints(broker)[1])

    def ready(self, timeout: float = 10.0) -> None:
        def published() -> int:
            return self.broker.stats().get("published", 0)

        before = published()
        deadline = time.monotonic() + timeout
        while published() == before:
            if time.monotonic() > deadline:
                raise AssertionError("the broker never took the PUB socket's probes")
            self.sock.send_multipart([b"probe.matrix", b""])
            time.sleep(0.02)  # between probes (the condition is the broker's count)

    def publish(self, topic: str, text: str) -> None:
        self.sock.send_multipart([topic.encode(), text.encode()])

    def close(self) -> None:
        self.sock.close(0)


class RestPublisher(Publisher):
    """``POST /v1/topics/{topic}`` with the body."""

    kind = "rest"

    def publish(self, topic: str, text: str) -> None:
        conn = http_conn(self.broker, 5)
        try:
            conn.request("POST", f"/v1/topics/{topic}", text.encode())
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        finally:
            conn.close()


class MiddlemanPublisher(Publisher):
    """Middleman ``PUB topic`` with a text body (a trusted key)."""

    kind = "middleman"

    def publish(self, topic: str, text: str) -> None:
        with mm_connect(self.broker) as ws:
            ws.send(mm_message("PUB", topic, [], text))  # read before the close that follows


class JsonPublisher(Publisher):
    """maitred.json ``publish`` (the body as ``data``), acknowledged by ``ack``."""

    kind = "json"

    def publish(self, topic: str, text: str) -> None:
        with json_connect(self.broker, name="matrix-publisher") as (ws, _):
            data = base64.b64encode(text.encode()).decode()
            ws.send(json.dumps({"type": "publish", "topic": topic, "data": data, "id": "p1"}))
            while True:
                msg = json.loads(ws.recv(5))
                if msg.get("id") == "p1":
                    assert msg["type"] == "ack", msg
                    return


class LocalPublisher(Publisher):
    """``LocalClient.publish`` in the broker's process."""

    kind = "local"

    def publish(self, topic: str, text: str) -> None:
        async def go() -> None:
            client = LocalClient(self.broker.broker, label="matrix-local-pub")
            try:
                client.publish(topic, text.encode())
            finally:
                client.close()

        self.broker.run(go())


def make_publishers(broker: BrokerThread, ctx: zmq.Context[Any]) -> dict[str, Publisher]:
    zmq_pub = ZmqPublisher(broker, ctx)
    zmq_pub.ready()
    pubs: list[Publisher] = [
        zmq_pub,
        RestPublisher(broker, ctx),
        MiddlemanPublisher(broker, ctx),
        JsonPublisher(broker, ctx),
        LocalPublisher(broker, ctx),
    ]
    return {p.kind: p for p in pubs}
