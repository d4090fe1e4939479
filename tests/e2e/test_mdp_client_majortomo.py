"""maitred's Python MDP client and worker (transports/mdp/client.py) over real TCP sockets.

Part 1 runs them against the majortomo broker (in a thread; it speaks only its own dialect, so
the dialect is "majortomo" there) and against majortomo's own client and worker. Part 2 plays a
scripted broker on a raw ROUTER socket to check the exact frames of every dialect, heartbeats
and reconnection. Nothing sleeps to wait: every wait is on a socket, an event or a thread, with
a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
import zmq.asyncio
from majortomo import broker as mt_broker
from majortomo import client as mt_client
from majortomo import worker as mt_worker

from maitred.transports.mdp import codec
from maitred.transports.mdp.client import (
    DIALECTS,
    AsyncClient,
    AsyncWorker,
    Client,
    FinalReply,
    MdpFormatError,
    MdpTimeout,
    Worker,
    dialect_flags,
)

pytestmark = pytest.mark.timeout(20)

E = b""
WAIT = 5.0  # upper bound for anything that should happen "now"; never reached when all is well


# -- fixtures and helpers ----------------------------------------------------------------------


class MajortomoBroker(mt_broker.Broker):
    """majortomo's broker, bound to an ephemeral port (or a given endpoint), in a thread.

    Overrides bind/close only: majortomo binds the configured URL (no port 0) and its close()
    calls disconnect() on a bound socket, which fails."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str = "tcp://127.0.0.1:0") -> None:
        super().__init__(bind=endpoint, heartbeat_interval=0.05, zmq_context=ctx)
        self.endpoint = endpoint
        self.bound = threading.Event()
        self.thread = threading.Thread(target=self.run, name="majortomo-broker", daemon=True)

    def bind(self) -> None:
        sock = self._context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.rcvtimeo = int(self._heartbeat_interval * 1000)
        if self.endpoint.endswith(":0"):
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:
            sock.bind(self.endpoint)
        self._socket = sock
        self.bound.set()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None  # type: ignore[assignment]

    def start(self) -> MajortomoBroker:
        self.thread.start()
        assert self.bound.wait(WAIT)
        return self

    def shutdown(self) -> None:
        self.stop()  # type: ignore[no-untyped-call]
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def mt(zctx: zmq.Context[Any]) -> Iterator[MajortomoBroker]:
    b = MajortomoBroker(zctx).start()
    yield b
    b.shutdown()


@contextmanager
def serving(worker: Worker, **run_kwargs: Any) -> Iterator[threading.Thread]:
    """Run a sync worker in a thread; close it (DISCONNECT) and join the thread afterwards."""
    thread = threading.Thread(target=worker.run, kwargs=run_kwargs, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.close()
        thread.join(WAIT)
        assert not thread.is_alive()


def mt_worker_of(
    b: MajortomoBroker, zctx: zmq.Context[Any], service: str, handler: Callable[..., Any]
) -> Worker:
    return Worker(
        b.endpoint,
        service,
        handler,
        dialect="majortomo",
        context=zctx,
        heartbeat_interval=0.5,
        liveness=6,
    )


def echo(body: list[bytes]) -> list[bytes]:
    return [b"echo", *body]


# -- part 1: against the majortomo broker ------------------------------------------------------


def test_request_reply(mt: MajortomoBroker, zctx: zmq.Context[Any]) -> None:
    with (
        serving(mt_worker_of(mt, zctx, "echo", echo)),
        Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client,
    ):
        assert client.request("echo", b"a", b"", b"c") == [b"echo", b"a", b"", b"c"]
        assert client.request(b"echo", b"again") == [b"echo", b"again"]
        assert list(client.stream("echo", b"x")) == [(True, [b"echo", b"x"])]


def test_partial_replies(mt: MajortomoBroker, zctx: zmq.Context[Any]) -> None:
    def handler(body: list[bytes]) -> Generator[object, None, list[bytes] | None]:
        kind = body[0]
        yield [b"p1"]
        yield (b"p2", b"more")
        if kind == b"marker":
            yield FinalReply([b"final", *body])
            yield [b"never sent"]  # the generator is closed after a FinalReply
        elif kind == b"return":
            return [b"returned"]
        return None  # falling off the end: an empty FINAL

    with (
        serving(mt_worker_of(mt, zctx, "stream", handler)),
        Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client,
    ):
        partials = [(False, [b"p1"]), (False, [b"p2", b"more"])]
        got = list(client.stream("stream", b"marker"))
        assert got == [*partials, (True, [b"final", b"marker"])]
        assert list(client.stream("stream", b"return")) == [*partials, (True, [b"returned"])]
        assert list(client.stream("stream", b"end")) == [*partials, (True, [])]
        assert client.request("stream", b"marker") == [b"final", b"marker"]


@pytest.mark.allow_error_logs("handler failed")
def test_handler_error_is_answered_and_the_worker_goes_on(
    mt: MajortomoBroker, zctx: zmq.Context[Any]
) -> None:
    def handler(body: list[bytes]) -> Any:
        if body == [b"boom"]:
            raise ValueError("boom")
        if body == [b"bad"]:
            return b"not a list of frames"
        if body == [b"bad-partial"]:
            return iter([[b"ok"], ["str is not bytes"]])
        return body

    with (
        serving(mt_worker_of(mt, zctx, "svc", handler)),
        Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client,
    ):
        assert client.request("svc", b"boom") == [b"500", b"ValueError: boom"]
        code, reason = client.request("svc", b"bad")
        assert code == b"500" and reason.startswith(b"TypeError")
        got = list(client.stream("svc", b"bad-partial"))
        assert got[0] == (False, [b"ok"])
        assert got[1][0] is True and got[1][1][0] == b"500"
        assert client.request("svc", b"fine") == [b"fine"]


def test_client_timeout_and_no_late_reply_mixup(
    mt: MajortomoBroker, zctx: zmq.Context[Any]
) -> None:
    with Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client:
        # no worker yet: the request waits in majortomo's queue and the client gives up
        with pytest.raises(MdpTimeout) as info:
            client.request("late", b"first", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        # now a worker comes; it answers "first" (to the dropped connection), then "second"
        served = threading.Event()
        seen: list[bytes] = []

        def handler(body: list[bytes]) -> list[bytes]:
            seen.append(body[0])
            if len(seen) == 2:
                served.set()
            return body

        with serving(mt_worker_of(mt, zctx, "late", handler)):
            assert client.request("late", b"second") == [b"second"]
            assert served.wait(WAIT)
            assert seen == [b"first", b"second"]


def test_abandoned_stream_does_not_leak_into_the_next_request(
    mt: MajortomoBroker, zctx: zmq.Context[Any]
) -> None:
    go_on = threading.Event()

    def handler(body: list[bytes]) -> Iterator[object]:
        yield [b"first"]
        if body == [b"slow"]:
            assert go_on.wait(WAIT)
            yield [b"second"]
        yield FinalReply([b"done", *body])

    with (
        serving(mt_worker_of(mt, zctx, "s", handler)),
        Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client,
    ):
        for final, body in client.stream("s", b"slow"):
            assert (final, body) == (False, [b"first"])
            break  # the rest of this stream goes to a closed connection
        go_on.set()
        assert list(client.stream("s", b"next")) == [
            (False, [b"first"]),
            (True, [b"done", b"next"]),
        ]
        # a stream created but never iterated is abandoned by the next request as well
        client.stream("s", b"never read")
        assert client.request("s", b"last") == [b"done", b"last"]


def test_worker_stop_and_max_requests(mt: MajortomoBroker, zctx: zmq.Context[Any]) -> None:
    worker = mt_worker_of(mt, zctx, "count", echo)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run(max_requests=2)))
    thread.start()
    with Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client:
        assert client.request("count", b"1") == [b"echo", b"1"]
        assert client.request("count", b"2") == [b"echo", b"2"]
        thread.join(WAIT)
        assert result == [2]
        # run again on the same connection, until a stop event
        stop = threading.Event()
        with serving(worker, stop_event=stop) as t2:
            assert client.request("count", b"3") == [b"echo", b"3"]
            stop.set()
            t2.join(WAIT)
            assert not t2.is_alive()
    assert worker.served == 3


def test_worker_survives_a_broker_restart(zctx: zmq.Context[Any]) -> None:
    # the first broker has a context of its own: terminating it waits until its listening
    # socket is really closed (zmq closes sockets in the background), so the port is free
    first_ctx: zmq.Context[Any] = zmq.Context()
    try:
        _restart_under_a_worker(first_ctx, zctx)
    finally:
        first_ctx.destroy(linger=0)  # (terminated already unless the test failed)


def _restart_under_a_worker(first_ctx: zmq.Context[Any], zctx: zmq.Context[Any]) -> None:
    first = MajortomoBroker(first_ctx).start()
    worker = Worker(
        first.endpoint,
        "phoenix",
        echo,
        dialect="majortomo",
        context=zctx,
        heartbeat_interval=0.1,
        liveness=3,
    )
    with serving(worker):
        with Client(first.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client:
            assert client.request("phoenix", b"before") == [b"echo", b"before"]
        first.shutdown()
        first_ctx.term()
        # a new broker on the same port knows nothing of the worker: the worker notices the
        # silence (or gets DISCONNECT for its heartbeat) and registers again with READY.
        # (A new client: a request sent while the old TCP connection dies may be lost, which
        # is why MDP clients time out and retry; that is not what this test is about.)
        second = MajortomoBroker(zctx, first.endpoint).start()
        try:
            with Client(second.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as c2:
                assert c2.request("phoenix", b"after") == [b"echo", b"after"]
        finally:
            second.shutdown()


def test_majortomo_client_and_worker_interoperate(
    mt: MajortomoBroker, zctx: zmq.Context[Any]
) -> None:
    def handler(body: list[bytes]) -> Iterator[object]:
        yield [b"part"]
        yield FinalReply([b"whole", *body])

    # majortomo's client -> our worker
    with serving(mt_worker_of(mt, zctx, "ours", handler)):
        theirs = mt_client.Client(mt.endpoint, zmq_context=zctx)
        try:
            theirs.connect()
            theirs.send(b"ours", b"hi")
            assert theirs.recv_all_as_list(timeout=WAIT) == [b"part", b"whole", b"hi"]
        finally:
            theirs.close()  # type: ignore[no-untyped-call]

    # our client -> majortomo's worker
    their_worker = mt_worker.Worker(mt.endpoint, b"theirs", zmq_context=zctx)
    done = threading.Event()

    def serve_one() -> None:
        their_worker.connect()
        address, body = their_worker.wait_for_request()
        their_worker.send_reply_partial(address, [b"p"])
        their_worker.send_reply_final(address, [b"f", *body])
        done.set()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with Client(mt.endpoint, dialect="majortomo", context=zctx, timeout=WAIT) as client:
            got = list(client.stream("theirs", b"x"))
        assert got == [(False, [b"p"]), (True, [b"f", b"x"])]
        assert done.wait(WAIT)
    finally:
        thread.join(WAIT)
        their_worker.close()  # type: ignore[no-untyped-call]


# -- part 1b: asyncio against majortomo --------------------------------------------------------


@contextmanager
def async_context() -> Iterator[zmq.asyncio.Context]:
    actx = zmq.asyncio.Context()
    try:
        yield actx
    finally:
        actx.destroy(linger=0)


def test_async_concurrent_requests_complete_out_of_order(mt: MajortomoBroker) -> None:
    """Two workers; the first request is answered only after the second one's reply has come
    back to the same AsyncClient. With one shared DEALER the replies would be swapped."""

    async def scenario(actx: zmq.asyncio.Context) -> None:
        slow_started = asyncio.Event()
        fast_replied = asyncio.Event()
        holders: list[int] = []
        both_held = asyncio.Event()

        async def handler(body: list[bytes]) -> list[bytes]:
            if body == [b"hold"]:  # proves both workers are registered
                holders.append(1)
                if len(holders) == 2:
                    both_held.set()
                await asyncio.wait_for(both_held.wait(), WAIT)
            elif body == [b"slow"]:
                slow_started.set()
                await asyncio.wait_for(fast_replied.wait(), WAIT)
            return [b"re", *body]

        workers = [
            AsyncWorker(mt.endpoint, "svc", handler, dialect="majortomo", context=actx)
            for _ in range(2)
        ]
        runs = [asyncio.create_task(w.run()) for w in workers]
        async with AsyncClient(mt.endpoint, dialect="majortomo", context=actx, timeout=WAIT) as c:
            held = await asyncio.gather(c.request("svc", b"hold"), c.request("svc", b"hold"))
            assert list(held) == [[b"re", b"hold"]] * 2
            slow = asyncio.create_task(c.request("svc", b"slow"))
            await asyncio.wait_for(slow_started.wait(), WAIT)
            assert await c.request("svc", b"fast") == [b"re", b"fast"]
            fast_replied.set()
            assert await slow == [b"re", b"slow"]
            # and many at once, each with its own reply
            many = await asyncio.gather(*(c.request("svc", b"%d" % i) for i in range(20)))
            assert many == [[b"re", b"%d" % i] for i in range(20)]
        for w in workers:
            await w.close()
        assert sorted(await asyncio.gather(*runs)) == sorted(w.served for w in workers)
        assert sum(w.served for w in workers) == 24

    with async_context() as actx:
        asyncio.run(asyncio.wait_for(scenario(actx), 15))


@pytest.mark.allow_error_logs("handler failed")
def test_async_streams_and_handler_kinds(mt: MajortomoBroker) -> None:
    async def scenario(actx: zmq.asyncio.Context) -> None:
        async def agen(body: list[bytes]) -> AsyncIterator[object]:
            for i in range(3):
                yield [b"%d" % i]
            yield FinalReply([b"end", *body])

        async def coro(body: list[bytes]) -> list[bytes]:
            await asyncio.sleep(0)
            return [b"awaited", *body]

        def gen(body: list[bytes]) -> Generator[object, None, list[bytes]]:
            yield [b"sync partial"]
            return [b"sync final"]

        async def failing(body: list[bytes]) -> list[bytes]:
            raise KeyError("nope")

        handlers: dict[str, Callable[[list[bytes]], Any]] = {
            "agen": agen,
            "coro": coro,
            "gen": gen,
            "plain": echo,
            "failing": failing,
        }
        workers = [
            AsyncWorker(mt.endpoint, name, h, dialect="majortomo", context=actx)
            for name, h in handlers.items()
        ]
        runs = [asyncio.create_task(w.run()) for w in workers]
        async with AsyncClient(mt.endpoint, dialect="majortomo", context=actx, timeout=WAIT) as c:
            got = [r async for r in c.stream("agen", b"x")]
            assert got == [
                (False, [b"0"]),
                (False, [b"1"]),
                (False, [b"2"]),
                (True, [b"end", b"x"]),
            ]
            assert await c.request("agen", b"y") == [b"end", b"y"]
            assert await c.request("coro", b"z") == [b"awaited", b"z"]
            assert [r async for r in c.stream("gen", b"")] == [
                (False, [b"sync partial"]),
                (True, [b"sync final"]),
            ]
            assert await c.request("plain", b"p") == [b"echo", b"p"]
            assert await c.request("failing", b"f") == [b"500", b"KeyError: 'nope'"]
        for w in workers:
            w.stop()
        await asyncio.gather(*runs)
        for w in workers:
            await w.close()

    with async_context() as actx:
        asyncio.run(asyncio.wait_for(scenario(actx), 15))


def test_async_client_timeout(mt: MajortomoBroker) -> None:
    async def scenario(actx: zmq.asyncio.Context) -> None:
        async with AsyncClient(mt.endpoint, dialect="majortomo", context=actx) as c:
            with pytest.raises(MdpTimeout):
                await c.request("nobody", b"x", timeout=0.2)
            with pytest.raises(MdpTimeout):
                async for _ in c.stream("nobody", b"y", timeout=0.1):
                    pass  # pragma: no cover
            worker = AsyncWorker(mt.endpoint, "nobody", echo, dialect="majortomo", context=actx)
            run = asyncio.create_task(worker.run())
            # the two timed-out requests are served first, to connections that are gone
            assert await c.request("nobody", b"z", timeout=WAIT) == [b"echo", b"z"]
            await worker.close()
            assert await run == 3

    with async_context() as actx:
        asyncio.run(asyncio.wait_for(scenario(actx), 15))


# -- part 2: a scripted broker on a raw ROUTER: exact frames per dialect -------------------------


@pytest.fixture
def router(zctx: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[Any], str]]:
    sock: zmq.Socket[Any] = zctx.socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def recv(sock: zmq.Socket[Any], timeout: float = WAIT) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), "nothing received in time"
    frames: list[bytes] = sock.recv_multipart()
    return frames


WORKER_WIRE = {
    # dialect: (READY, HEARTBEAT, DISCONNECT, REQUEST to send, header prefix of replies)
    "0.1": (
        [E, b"MDPW01", b"\x01", b"svc"],
        [E, b"MDPW01", b"\x04"],
        [E, b"MDPW01", b"\x05"],
        [E, b"MDPW01", b"\x02", b"tok", E, b"in"],
        [E, b"MDPW01"],
    ),
    "0.2": (
        [b"MDPW02", b"\x01", b"svc"],
        [b"MDPW02", b"\x05"],
        [b"MDPW02", b"\x06"],
        [b"MDPW02", b"\x02", b"tok", E, b"in"],
        [b"MDPW02"],
    ),
    "rfc-envelope": (
        [E, b"MDPW02", b"\x01", b"svc"],
        [E, b"MDPW02", b"\x05"],
        [E, b"MDPW02", b"\x06"],
        [E, b"MDPW02", b"\x02", b"tok", E, b"in"],
        [E, b"MDPW02"],
    ),
    "majortomo": (
        [E, b"MDPW02", b"\x01", b"svc"],
        [E, b"MDPW02", b"\x05"],
        [E, b"MDPW02", b"\x06"],
        [E, b"MDPW02", b"\x02", b"tok", E, b"in"],
        [E, b"MDPW02"],
    ),
}


@pytest.mark.parametrize("dialect", list(WORKER_WIRE))
def test_worker_frames(
    router: tuple[zmq.Socket[Any], str], zctx: zmq.Context[Any], dialect: str
) -> None:
    sock, endpoint = router
    ready, heartbeat, disconnect, request, head = WORKER_WIRE[dialect]
    v2 = dialect != "0.1"

    def handler(body: list[bytes]) -> Any:
        if v2:
            return iter([[b"part", *body], FinalReply([b"out", *body])])
        return [b"out", *body]

    worker = Worker(
        endpoint,
        "svc",
        handler,
        dialect=dialect,
        heartbeat_interval=0.05,
        liveness=1000,  # this scripted broker does not heartbeat: never give it up here
        context=zctx,
    )
    with serving(worker):
        rid, *frames = recv(sock)
        assert frames == ready
        rid2, *frames = recv(sock)  # idle: a HEARTBEAT every interval
        assert (rid2, frames) == (rid, heartbeat)
        sock.send_multipart([rid, *codec.worker_heartbeat(dialect_flags(dialect))])
        sock.send_multipart([rid, *request])
        replies = []
        while True:
            _, *frames = recv(sock)
            if frames != heartbeat:
                replies.append(frames)
            if len(replies) == (2 if v2 else 1):
                break
        if v2:
            assert replies == [
                [*head, b"\x03", b"tok", E, b"part", b"in"],
                [*head, b"\x04", b"tok", E, b"out", b"in"],
            ]
        else:
            assert replies == [[*head, b"\x03", b"tok", E, b"out", b"in"]]
    # close() said goodbye
    while True:
        rid3, *frames = recv(sock)
        if frames != heartbeat:
            break
    assert (rid3, frames) == (rid, disconnect)


def next_ready(sock: zmq.Socket[Any], previous: bytes, ready: list[bytes]) -> bytes:
    """Skip heartbeats of the old connection until READY comes from a new one."""
    while True:
        rid, *frames = recv(sock)
        if frames == ready:
            assert rid != previous
            return rid
        assert rid == previous


@pytest.mark.parametrize("dialect", ["0.1", "majortomo"])
def test_worker_reconnects_on_disconnect(
    router: tuple[zmq.Socket[Any], str], zctx: zmq.Context[Any], dialect: str
) -> None:
    sock, endpoint = router
    ready, heartbeat, disconnect, request, head = WORKER_WIRE[dialect]
    worker = Worker(
        endpoint,
        "svc",
        echo,
        dialect=dialect,
        heartbeat_interval=0.05,
        liveness=1000,
        context=zctx,
    )

    def reply() -> list[bytes]:
        while True:
            _, *frames = recv(sock)
            if frames != heartbeat:
                return frames

    final = b"\x03" if dialect == "0.1" else b"\x04"
    with serving(worker):
        rid, *frames = recv(sock)
        assert frames == ready
        # DISCONNECT from the broker: a new socket (new routing id) and READY again
        sock.send_multipart([rid, *disconnect])
        rid = next_ready(sock, rid, ready)
        # the new connection works
        sock.send_multipart([rid, *request])
        assert reply() == [*head, final, b"tok", E, b"echo", b"in"]
        # garbage (and a command for the other MDP version) is dropped; the worker goes on
        sock.send_multipart([rid, b"garbage"])
        sock.send_multipart([rid, *codec.worker_heartbeat(codec.V2 ^ dialect_flags(dialect))])
        sock.send_multipart([rid, *request])
        assert reply() == [*head, final, b"tok", E, b"echo", b"in"]


@pytest.mark.parametrize("dialect", ["0.2", "majortomo"])
def test_worker_gives_up_a_silent_broker(
    router: tuple[zmq.Socket[Any], str], zctx: zmq.Context[Any], dialect: str
) -> None:
    sock, endpoint = router
    ready, *_ = WORKER_WIRE[dialect]
    worker = Worker(
        endpoint, "svc", echo, dialect=dialect, heartbeat_interval=0.05, liveness=2, context=zctx
    )
    with serving(worker):
        rid, *frames = recv(sock)
        assert frames == ready
        # nothing from the broker for liveness x interval: a new socket says READY again
        rid2 = next_ready(sock, rid, ready)
        next_ready(sock, rid2, ready)


@pytest.mark.parametrize("dialect", ["0.1", "0.2", "majortomo"])
def test_async_worker_frames_disconnect_and_silence(
    router: tuple[zmq.Socket[Any], str], dialect: str
) -> None:
    sock, endpoint = router
    ready, heartbeat, disconnect, request, head = WORKER_WIRE[dialect]
    final = b"\x03" if dialect == "0.1" else b"\x04"

    async def handler(body: list[bytes]) -> list[bytes]:
        return [b"echo", *body]

    async def scenario(actx: zmq.asyncio.Context) -> None:
        loop = asyncio.get_running_loop()

        async def arecv() -> list[bytes]:
            return await loop.run_in_executor(None, recv, sock)

        async def next_ready(previous: bytes) -> bytes:
            while True:
                rid, *frames = await arecv()
                if frames == ready:
                    assert rid != previous
                    return rid
                assert (rid, frames) == (previous, heartbeat)

        # a broker that talks: exact frames, DISCONNECT -> READY on a new socket
        worker = AsyncWorker(
            endpoint,
            "svc",
            handler,
            dialect=dialect,
            heartbeat_interval=0.05,
            liveness=1000,
            context=actx,
        )
        run = asyncio.create_task(worker.run())
        rid, *frames = await arecv()
        assert frames == ready
        rid2, *frames = await arecv()
        assert (rid2, frames) == (rid, heartbeat)
        sock.send_multipart([rid, *disconnect])
        rid = await next_ready(rid)
        sock.send_multipart([rid, b"garbage"])
        sock.send_multipart([rid, *request])
        while True:
            _, *frames = await arecv()
            if frames != heartbeat:
                break
        assert frames == [*head, final, b"tok", E, b"echo", b"in"]
        await worker.close()
        assert await run == 1
        while True:
            rid3, *frames = await arecv()
            if frames != heartbeat:
                break
        assert (rid3, frames) == (rid, disconnect)

        # a silent broker is given up after liveness x interval
        worker = AsyncWorker(
            endpoint,
            "svc",
            handler,
            dialect=dialect,
            heartbeat_interval=0.05,
            liveness=2,
            context=actx,
        )
        run = asyncio.create_task(worker.run())
        rid, *frames = await arecv()
        assert frames == ready
        await next_ready(rid)
        worker.stop()
        assert await run == 0
        await worker.close()

    with async_context() as actx:
        asyncio.run(asyncio.wait_for(scenario(actx), 10))


CLIENT_WIRE = {
    # dialect: (REQUEST sent, PARTIAL to send or None, FINAL to send)
    "0.1": ([E, b"MDPC01", b"svc", b"in"], None, [E, b"MDPC01", b"svc", b"out"]),
    "0.2": (
        [b"MDPC02", b"\x01", b"svc", b"in"],
        [b"MDPC02", b"\x02", b"svc", b"part"],
        [b"MDPC02", b"\x03", b"svc", b"out"],
    ),
    "rfc-envelope": (
        [E, b"MDPC02", b"\x01", b"svc", b"in"],
        [E, b"MDPC02", b"\x02", b"svc", b"part"],
        [E, b"MDPC02", b"\x03", b"svc", b"out"],
    ),
    "majortomo": (
        [E, b"MDPC02", b"\x02", b"svc", b"in"],
        [E, b"MDPC02", b"\x03", b"part"],
        [E, b"MDPC02", b"\x04", b"out"],
    ),
}


@pytest.mark.parametrize("dialect", list(CLIENT_WIRE))
def test_client_frames(
    router: tuple[zmq.Socket[Any], str], zctx: zmq.Context[Any], dialect: str
) -> None:
    sock, endpoint = router
    request, partial, final = CLIENT_WIRE[dialect]
    expected = [(True, [b"out"])]
    with Client(endpoint, dialect=dialect, context=zctx, timeout=WAIT) as client:
        replies = client.stream("svc", b"in")
        rid, *frames = recv(sock)
        assert frames == request
        if partial is not None:
            sock.send_multipart([rid, *partial])
            expected.insert(0, (False, [b"part"]))
        sock.send_multipart([rid, *final])
        assert list(replies) == expected

    async def scenario(actx: zmq.asyncio.Context) -> None:
        async with AsyncClient(endpoint, dialect=dialect, context=actx, timeout=WAIT) as c:
            task = asyncio.create_task(c.request("svc", b"in"))
            loop = asyncio.get_running_loop()
            rid, *frames = await loop.run_in_executor(None, recv, sock)
            assert frames == request
            if partial is not None:
                sock.send_multipart([rid, *partial])
            sock.send_multipart([rid, *final])
            assert await task == [b"out"]

    with async_context() as actx:
        asyncio.run(asyncio.wait_for(scenario(actx), 10))


def test_client_rejects_a_reply_for_another_service_and_reconnects(
    router: tuple[zmq.Socket[Any], str], zctx: zmq.Context[Any]
) -> None:
    sock, endpoint = router
    with Client(endpoint, dialect="0.2", context=zctx, timeout=WAIT) as client:
        replies = client.stream("svc", b"in")
        rid, *_ = recv(sock)
        sock.send_multipart([rid, b"MDPC02", b"\x03", b"other", b"out"])
        with pytest.raises(MdpFormatError, match="other"):
            list(replies)
        replies = client.stream("svc", b"again")
        rid2, *frames = recv(sock)
        assert rid2 != rid and frames == [b"MDPC02", b"\x01", b"svc", b"again"]
        sock.send_multipart([rid2, b"MDPC02", b"\x01", b"svc", b"out"])  # not a reply
        with pytest.raises(MdpFormatError):
            list(replies)


# -- API checks without a broker -----------------------------------------------------------------


def test_dialect_names() -> None:
    assert dialect_flags("0.1") == codec.ENVELOPE
    assert dialect_flags("0.2") == dialect_flags("rfc") == codec.V2
    assert dialect_flags("rfc-envelope") == codec.V2 | codec.ENVELOPE
    assert dialect_flags("majortomo") == codec.V2 | codec.ENVELOPE | codec.SHORT
    assert dialect_flags(codec.V2) == codec.V2
    assert set(DIALECTS.values()) <= set(codec.DIALECT_NAMES)
    with pytest.raises(ValueError, match="unknown MDP dialect"):
        dialect_flags("0.3")
    with pytest.raises(ValueError):
        dialect_flags(0)
    with pytest.raises(TypeError):
        dialect_flags(True)


def test_worker_argument_checks(zctx: zmq.Context[Any]) -> None:
    def gen(body: list[bytes]) -> Iterator[list[bytes]]:
        yield body

    with pytest.raises(ValueError, match="partial"):
        Worker("tcp://127.0.0.1:1", "svc", gen, dialect="0.1", context=zctx)
    with pytest.raises(ValueError, match="mmi"):
        Worker("tcp://127.0.0.1:1", "mmi.service", echo, context=zctx)
    with pytest.raises(ValueError):
        Worker("tcp://127.0.0.1:1", "", echo, context=zctx)
    with pytest.raises(ValueError):
        Worker("tcp://127.0.0.1:1", "svc", echo, heartbeat_interval=0, context=zctx)
    w = Worker("tcp://127.0.0.1:1", "svc", echo, context=zctx)
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.run()


def test_async_worker_run_state(router: tuple[zmq.Socket[Any], str]) -> None:
    """A stop before run() ends it at once; run() twice at a time, or after close(), raises."""
    sock, endpoint = router

    async def main() -> None:
        actx = zmq.asyncio.Context()
        try:
            early = AsyncWorker(endpoint, "svc", echo, context=actx)
            early.stop()
            assert await early.run() == 0
            await early.close()
            worker = AsyncWorker(endpoint, "svc", echo, context=actx)
            run = asyncio.ensure_future(worker.run())
            await asyncio.sleep(0)  # run() starts
            with pytest.raises(RuntimeError, match="already running"):
                await worker.run()
            # the first message the broker gets is this READY: the early worker sent nothing
            rid, *ready = await asyncio.to_thread(recv, sock)
            assert ready == [b"MDPW02", b"\x01", b"svc"]
            worker.stop()
            assert await asyncio.wait_for(run, WAIT) == 0
            await worker.close()
            assert await asyncio.to_thread(recv, sock) == [rid, b"MDPW02", b"\x06"]
            with pytest.raises(RuntimeError, match="closed"):
                await worker.run()
        finally:
            actx.destroy(linger=0)

    asyncio.run(main())


def test_client_argument_checks(zctx: zmq.Context[Any]) -> None:
    with Client("tcp://127.0.0.1:1", context=zctx) as client:
        with pytest.raises(TypeError):
            client.request("svc", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.request(42, b"x")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        client.request("svc", b"x")
