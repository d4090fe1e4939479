"""Python clients of maitred's ZeroMQ publish/subscribe endpoints, sync and asyncio.

::

    from maitred.transports.mdp.client import Publisher, Subscriber

    with Subscriber("tcp://127.0.0.1:5556") as sub:
        sub.subscribe("$sys.service.>")            # a maitred pattern
        sub.subscribe("news.")                     # a ZeroMQ prefix
        event = sub.recv(timeout=5.0)              # Event(topic, body, pattern)

    with Publisher("tcp://127.0.0.1:5557") as pub:  # waits until the broker listens
        pub.publish("news.today", b"hello")

Any plain libzmq SUB or PUB socket works as well (docs/reference/mdp.md, "Publish and
subscribe"); these add what is awkward by hand:

- :class:`Subscriber` skips what its SUB socket lets through for *other* peers' patterns (a
  prefix ``news.`` also matches the first frame of ``[b"news.*", topic, body…]`` sent for a peer
  that subscribed to ``news.*``) and tells the two layouts apart (:class:`Event`);
- :class:`Publisher` connects an XPUB socket (not PUB) and waits for the broker's subscription
  before its first publication, so nothing is lost to ZeroMQ's "slow joiner" race.

A subscription is asynchronous in ZeroMQ: it takes effect a moment after :meth:`subscribe`
returns, and messages published before that are not received.
"""

from __future__ import annotations

import time
from typing import Any, Generic, NamedTuple

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from maitred.core.routing.patterns import is_pattern
from maitred.transports.mdp.pubsub_codec import PubSubFormatError, decode_event
from maitred.transports.mdp.sockets import SocketT, connect_socket

__all__ = [
    "AsyncPublisher",
    "AsyncSubscriber",
    "Event",
    "Publisher",
    "Subscriber",
    "check_endpoint",
]

#: how long a closing publisher lets its last publications reach the broker (ms)
_PUBLISHER_LINGER_MS = 1000


class Event(NamedTuple):
    """One message a subscriber received."""

    topic: str
    body: list[bytes]
    #: the maitred pattern it was delivered for; None when it came through a prefix
    pattern: str | None = None


def _ms(timeout: float | None) -> int:
    return -1 if timeout is None else max(0, int(timeout * 1000))


def check_endpoint(
    endpoint: str, kind: int, timeout: float, context: zmq.Context[Any] | None = None
) -> None:
    """Whether a socket of ``kind`` (``zmq.SUB`` for ``pub_endpoints``, ``zmq.XPUB`` or
    ``zmq.PUB`` for ``publish_endpoints``) completes its ZeroMQ handshake at ``endpoint``:
    :class:`ConnectionError` when the other side drops the connection (a socket of another type,
    e.g. the MDP router), :class:`TimeoutError` when nothing answers within ``timeout``."""
    ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
    sock: zmq.Socket[Any] = ctx.socket(kind)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and monitor.poll(_ms(left)):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_DISCONNECTED:
                raise ConnectionError(
                    f"{endpoint}: the ZeroMQ socket there is not of the kind this needs (the MDP "
                    "router? subscribers use [transports.mdp] pub_endpoints, publishers "
                    "publish_endpoints)"
                )
        raise TimeoutError(f"{endpoint}: no ZeroMQ handshake within {timeout:g} s")
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


class _Subscriber(Generic[SocketT]):
    """What both subscribers share: the SUB socket, and what it was asked for, to keep only the
    messages meant for it."""

    def __init__(self, endpoint: str, context: zmq.Context[SocketT]) -> None:
        self.endpoint = endpoint
        self._socket = connect_socket(context, zmq.SUB, endpoint)
        self._prefixes: dict[str, int] = {}
        self._patterns: dict[str, int] = {}

    def subscribe(self, subscription: str) -> None:
        """A prefix (``news.``, ``""`` for everything) or a pattern (``news.*``, ``$sys.>``)."""
        table = self._patterns if is_pattern(subscription) else self._prefixes
        table[subscription] = table.get(subscription, 0) + 1
        self._socket.setsockopt(zmq.SUBSCRIBE, subscription.encode())

    def unsubscribe(self, subscription: str) -> None:
        for table in (self._patterns, self._prefixes):
            count = table.get(subscription, 0)
            if count > 1:
                table[subscription] = count - 1
            elif count:
                del table[subscription]
        self._socket.setsockopt(zmq.UNSUBSCRIBE, subscription.encode())

    def _event(self, frames: list[bytes]) -> Event | None:
        """The event in ``frames``, or None when it is not one of ours (or malformed)."""
        try:
            pattern, topic, body = decode_event(frames)
        except PubSubFormatError:
            return None
        if pattern is not None:
            return Event(topic, body, pattern) if pattern in self._patterns else None
        if any(topic.startswith(prefix) for prefix in self._prefixes):
            return Event(topic, body)
        return None

    def close(self) -> None:
        self._socket.close(linger=0)


class Subscriber(_Subscriber[zmq.Socket[Any]]):
    """A SUB socket on a broker's ``pub_endpoints``; not thread-safe (one per thread).
    ``context``: default ``zmq.Context.instance()``."""

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None) -> None:
        super().__init__(endpoint, context if context is not None else zmq.Context.instance())

    def recv(self, timeout: float | None = None) -> Event:
        """The next event; :class:`TimeoutError` when none comes within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not self._socket.poll(_ms(left)):
                raise TimeoutError(f"no event within {timeout} s")
            event = self._event(self._socket.recv_multipart())
            if event is not None:
                return event

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncSubscriber(_Subscriber[zmq.asyncio.Socket]):
    """:class:`Subscriber` for asyncio (``context``: default ``zmq.asyncio.Context.instance()``)."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None) -> None:
        super().__init__(
            endpoint, context if context is not None else zmq.asyncio.Context.instance()
        )

    async def recv(self, timeout: float | None = None) -> Event:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not await self._socket.poll(_ms(left)):
                raise TimeoutError(f"no event within {timeout} s")
            event = self._event(await self._socket.recv_multipart())
            if event is not None:
                return event

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class Publisher:
    """An XPUB socket connected to a broker's ``publish_endpoints``. Unless ``wait`` is 0, the
    constructor waits (at most ``wait`` seconds, else :class:`TimeoutError`) for the broker's
    subscription, so the first publication is not lost. ``context``: default
    ``zmq.Context.instance()``."""

    def __init__(
        self, endpoint: str, *, context: zmq.Context[Any] | None = None, wait: float = 10.0
    ) -> None:
        self.endpoint = endpoint
        ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._socket = connect_socket(ctx, zmq.XPUB, endpoint, linger=_PUBLISHER_LINGER_MS)
        if wait:
            try:
                if not self._socket.poll(_ms(wait)):
                    raise TimeoutError(f"no broker at {endpoint} within {wait} s")
                self._socket.recv()  # the broker's subscription: it takes everything
            except BaseException:
                self.close()
                raise

    def publish(self, topic: str, *body: bytes) -> None:
        """Send ``[topic, body…]`` (never blocks: past the high-water mark ZeroMQ drops it)."""
        self._socket.send_multipart([topic.encode(), *body], zmq.NOBLOCK)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPublisher:
    """:class:`Publisher` for asyncio; call ``await connect()`` (or use ``async with``) to wait
    for the broker's subscription before the first publication."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._socket = connect_socket(ctx, zmq.XPUB, endpoint, linger=_PUBLISHER_LINGER_MS)

    async def connect(self, timeout: float = 10.0) -> None:
        """Wait for the broker's subscription (:class:`TimeoutError` after ``timeout`` s)."""
        if not await self._socket.poll(_ms(timeout)):
            raise TimeoutError(f"no broker at {self.endpoint} within {timeout} s")
        await self._socket.recv()

    async def publish(self, topic: str, *body: bytes) -> None:
        await self._socket.send_multipart([topic.encode(), *body], zmq.NOBLOCK)

    def close(self) -> None:
        self._socket.close()

    async def __aenter__(self) -> AsyncPublisher:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
