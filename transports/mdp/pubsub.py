"""ZeroMQ publish/subscribe endpoints of the MDP transport (``pub_endpoints``,
``publish_endpoints``).

**Subscribers** connect a SUB (or XSUB) socket to the broker's XPUB socket. It runs with
XPUB_MANUAL, so libzmq applies no subscription by itself: each subscription message is read
here, checked by the access policy (the port's ``subscribe`` verb, as for every transport) and
applied to that peer's pipe with ``setsockopt(SUBSCRIBE)`` only when allowed. XPUB_VERBOSER
passes every subscribe and unsubscribe of every peer (also the unsubscribes libzmq makes up
when a peer disconnects), so identical subscriptions of many peers are counted: one core
subscription per (identity, subscription string), dropped with the last peer holding it.

Prefix subscriptions of one identity share one core session, which sends each matching
message once as ``[topic, body…]``; each wildcard subscription has a session of its own, which
sends ``[pattern, topic, body…]`` (see :mod:`~maitred.transports.mdp.pubsub_codec`). libzmq
then hands each message to the peers whose subscription strings are a prefix of its first
frame. A slow subscriber's queue is bounded by the socket's SNDHWM (``pub_sndhwm`` messages);
past it libzmq drops what is sent to that peer, silently.

**Publishers** connect a PUB (or XPUB) socket to the broker's XSUB socket, which subscribes
to everything; each message ``[topic, body…]`` is published through the port (access checks,
``$sys.`` reserved for the broker), so every transport's subscribers get it.

The identity of a peer is the transport's (``[transports.mdp] identity``), or the ZAP
``User-Id`` of the message when a security mechanism set one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import zmq
from zmq.backend import Socket as _BaseSocket

from maitred.core.access import Action, Identity
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import BaseSink, Body, Headers, Session
from maitred.core.transport import BrokerPort
from maitred.transports.mdp.config import MdpConfig
from maitred.transports.mdp.pubsub_codec import (
    SUBSCRIBE_ALL,
    PubSubFormatError,
    Subscription,
    event_frames,
    parse_publication,
    parse_subscription,
    parse_subscription_message,
)
from maitred.transports.mdp.sockets import bind_address

log = logging.getLogger("maitred.transports.mdp.pubsub")

_NOBLOCK = int(zmq.NOBLOCK)
# plain ints and the Cython base-class send (as the MDP router does): pyzmq's flag enums and
# send_multipart cost about a third of a publication's time in the broker
_NOBLOCK_MORE = _NOBLOCK | int(zmq.SNDMORE)
_send_frame = _BaseSocket.send
_POLLIN = int(zmq.POLLIN)


class _Delivery(BaseSink):
    """The sink of one core session: prefix subscriptions (``wire`` None) or one pattern."""

    __slots__ = ("hub", "wire")

    def __init__(self, hub: ZmqPubSub, wire: bytes | None) -> None:
        self.hub = hub
        self.wire = wire

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self.hub.send_event(self.wire, topic, body, headers)


class ZmqPubSub:
    """The XPUB and XSUB sockets of one MDP transport (see the module docstring)."""

    def __init__(
        self,
        config: MdpConfig,
        port: BrokerPort,
        context: zmq.Context[Any],
        identity: Identity,
    ) -> None:
        self.config = config
        self.port = port
        self.context = context
        self.identity = identity
        self.stats = port.stats
        self.xpub: zmq.Socket[Any] | None = None
        self.xsub: zmq.Socket[Any] | None = None
        #: where the sockets are bound (an ephemeral port shows its number)
        self.pub_bound: list[str] = []
        self.publish_bound: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fds: list[int] = []
        #: (identity name, pattern's subscription string or None for prefixes) -> core session
        self._sessions: dict[tuple[str, bytes | None], Session] = {}
        #: (identity name, subscription string) -> peers it is applied for / refused for
        self._applied: dict[tuple[str, bytes], int] = {}
        self._refused: dict[tuple[str, bytes], int] = {}
        #: identity name -> the session its publications come from
        self._publishers: dict[str, Session] = {}
        # one publication reaches a session per identity holding a match: sent once (a
        # publication's headers object is the same for every session it reaches)
        self._last_headers: Headers | None = None
        self._sent: set[bytes | None] = set()
        self._xpub_busy = False
        self._xpub_scheduled = False
        self._xsub_scheduled = False
        self._zap_publishers = False
        self.rejections = RejectionLog(
            log,
            {
                "subscription": "ZeroMQ subscriptions refused",
                "publication": "ZeroMQ publications dropped",
            },
        )

    # -- lifecycle --------------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        config = self.config
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, config.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_size + 4096)
        if config.zmtp_heartbeats:
            live = self.port.liveness
            interval = config.heartbeat_interval or live.heartbeat_interval
            timeout = interval * (config.liveness or live.liveness)
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(interval * 1000)))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(timeout * 1000)))
        return sock

    def _bind(self, sock: zmq.Socket[Any], endpoints: list[str], bound: list[str]) -> None:
        for endpoint in endpoints:
            try:
                sock.bind(bind_address(endpoint))
            except zmq.ZMQError as exc:
                raise MaitredError(
                    f"mdp: cannot bind {endpoint}: {exc.strerror}", ErrorCode.BAD_REQUEST
                ) from None
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        try:
            if self.config.pub_endpoints:
                xpub = self.xpub = self._socket(zmq.XPUB)
                xpub.setsockopt(zmq.XPUB_MANUAL, 1)
                try:
                    xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # unsubscribes too (libzmq >= 4.3)
                except (zmq.ZMQError, AttributeError):
                    raise MaitredError(
                        f"mdp: pub_endpoints need libzmq 4.3 or later (this is "
                        f"{zmq.zmq_version()}): it has no XPUB_VERBOSER",
                        ErrorCode.BAD_REQUEST,
                    ) from None
                xpub.setsockopt(zmq.SNDHWM, self.config.pub_sndhwm)
                self._bind(xpub, self.config.pub_endpoints, self.pub_bound)
            if self.config.publish_endpoints:
                xsub = self.xsub = self._socket(zmq.XSUB)
                xsub.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
                self._bind(xsub, self.config.publish_endpoints, self.publish_bound)
                # XSUB passes subscriptions upstream, to every publisher that connects now or
                # later: take everything, the access policy decides per message
                xsub.send(SUBSCRIBE_ALL)
                # a User-Id exists only where a ZAP handler is asked (a security mechanism, or
                # a ZAP domain): else the per-message question is skipped
                self._zap_publishers = bool(
                    xsub.getsockopt(zmq.MECHANISM) != zmq.NULL or xsub.getsockopt(zmq.ZAP_DOMAIN)
                )
        except BaseException:
            self._close_sockets()
            raise
        for sock, on_readable in ((self.xpub, self._on_xpub), (self.xsub, self._on_xsub)):
            if sock is not None:
                fd = cast(int, sock.getsockopt(zmq.FD))
                self._fds.append(fd)
                loop.add_reader(fd, on_readable)
                loop.call_soon(on_readable)
        for ep in self.pub_bound:
            log.info("mdp: subscribers connect to %s", ep)
        for ep in self.publish_bound:
            log.info("mdp: publishers connect to %s", ep)

    async def close(self) -> None:
        self.rejections.close()
        if self._loop is not None:
            for fd in self._fds:
                self._loop.remove_reader(fd)
        self._fds.clear()
        now = self.port.clock()
        for session in [*self._sessions.values(), *self._publishers.values()]:
            self.port.close_session(session, now, "broker closing")
        self._sessions.clear()
        self._publishers.clear()
        self._applied.clear()
        self._refused.clear()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self.xpub, self.xsub):
            if sock is not None:
                sock.close(self.config.linger_ms)
        self.xpub = self.xsub = None

    # -- who -------------------------------------------------------------------------------

    def _identity_of(self, frame: zmq.Frame) -> Identity:
        """The transport's identity, or the ZAP User-Id of ``frame`` when a security
        mechanism (CURVE, PLAIN) set one: then the authenticator plugins say who it is."""
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:  # no such property: no ZAP handler spoke for the connection
            return self.identity
        if not isinstance(user, str) or not user:
            return self.identity
        found = self.port.authenticate("mdp", {"user_id": user}, None)
        return found if found is not None else Identity(user)

    # -- subscriptions ----------------------------------------------------------------------

    def _on_xpub(self) -> None:
        self._xpub_scheduled = False
        sock = self.xpub
        if sock is None:
            return
        self._xpub_busy = True
        try:
            for _ in range(self.config.batch):
                try:
                    frame = sock.recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                last = frame
                while last.more:  # a subscription is one frame; an XSUB peer may send more
                    last = sock.recv(_NOBLOCK, copy=False)
                if last is not frame:
                    self._reject("subscription", "not a subscription message")
                    continue
                self._on_subscription(frame)
            else:
                self._schedule_xpub()
                return
            if cast(int, sock.getsockopt(zmq.EVENTS)) & _POLLIN:  # re-arms the edge-triggered FD
                self._schedule_xpub()
        except zmq.ZMQError as exc:
            log.warning("mdp: subscription socket error: %s", exc)
        finally:
            self._xpub_busy = False

    def _schedule_xpub(self) -> None:
        if not self._xpub_scheduled and self._loop is not None:
            self._xpub_scheduled = True
            self._loop.call_soon(self._on_xpub)

    def _on_subscription(self, frame: zmq.Frame) -> None:
        data = frame.bytes
        try:
            subscribe, wire = parse_subscription_message(data)
        except PubSubFormatError as exc:
            self._reject("subscription", exc.reason)
            return
        identity = self._identity_of(frame)
        if subscribe:
            self.subscribe(identity, wire)
        else:
            self.unsubscribe(identity, wire)

    def subscribe(self, identity: Identity, wire: bytes) -> bool:
        """A peer (the one whose message was read last) subscribes to ``wire``: applied for
        that peer when the broker holds the matching core subscription. False: refused."""
        key = (identity.name, wire)
        try:
            sub = parse_subscription(wire, self.port.max_name_length)
        except PubSubFormatError as exc:
            self._refuse(key, "rejected", exc.reason)
            return False
        session = self._session(identity, sub)
        count = self._applied.get(key)
        if count:  # held for other peers already: asked again (cached), for this one
            if not self.port.allowed(session, Action.SUBSCRIBE, sub.pattern):
                self._refuse(key, "denied", f"{identity.name} may not subscribe to {sub.pattern}")
                return False
            self._applied[key] = count + 1
            self._apply(zmq.SUBSCRIBE, wire)
            return True
        try:
            self.port.subscribe(session, sub.pattern)
        except Denied:  # counted and published on $sys.auth.denied by the port
            self._refuse(key, "denied", f"{identity.name} may not subscribe to {sub.pattern}")
            self._drop_if_empty(identity.name, sub)
            return False
        except MaitredError as exc:
            self._refuse(key, "refused", exc.reason)
            self._drop_if_empty(identity.name, sub)
            return False
        self._applied[key] = 1
        self._apply(zmq.SUBSCRIBE, wire)
        return True

    def unsubscribe(self, identity: Identity, wire: bytes) -> None:
        """A peer drops ``wire`` (or disconnected: libzmq unsubscribes for it)."""
        name = identity.name
        if (name, wire) not in self._refused and (name, wire) not in self._applied:
            # libzmq's unsubscribes for a peer that disconnected carry no User-Id: they are
            # some identity's that holds the string (which one libzmq does not say)
            name = next(
                (n for table in (self._refused, self._applied) for n, w in table if w == wire),
                name,
            )
        key = (name, wire)
        refused = self._refused.get(key)
        # it was never applied for one of the peers that asked (libzmq does not say which peer
        # this is: when rules changed between two subscriptions, the refused one goes first)
        if refused:
            if refused == 1:
                del self._refused[key]
            else:
                self._refused[key] = refused - 1
            return
        count = self._applied.get(key)
        if not count:
            return
        self._apply(zmq.UNSUBSCRIBE, wire)
        self.stats["mdp.pub.unsubscribed"] += 1
        if count > 1:
            self._applied[key] = count - 1
            return
        del self._applied[key]
        sub = parse_subscription(wire, self.port.max_name_length)  # parsed fine before
        session = self._sessions.get((name, sub.wire if sub.wildcard else None))
        if session is not None:
            self.port.unsubscribe(session, sub.pattern)
            self._drop_if_empty(name, sub)

    def _apply(self, option: int, wire: bytes) -> None:
        if self.xpub is not None:
            self.xpub.setsockopt(option, wire)
        if option == zmq.SUBSCRIBE:
            self.stats["mdp.pub.subscribed"] += 1

    def _refuse(self, key: tuple[str, bytes], kind: str, reason: str) -> None:
        self._refused[key] = self._refused.get(key, 0) + 1
        self.stats[f"mdp.pub.{kind}"] += 1
        self.rejections.note("subscription", key[0], f"{key[1]!r}: {reason}")

    def _session(self, identity: Identity, sub: Subscription) -> Session:
        key = (identity.name, sub.wire if sub.wildcard else None)
        session = self._sessions.get(key)
        if session is None:
            label = f"mdp:sub:{sub.pattern}" if sub.wildcard else "mdp:sub"
            session = self.port.open_session(
                "mdp",
                _Delivery(self, key[1]),
                identity,
                self.port.clock(),
                label=label,
                quiet=True,
            )
            self._sessions[key] = session
        return session

    def _drop_if_empty(self, name: str, sub: Subscription) -> None:
        key = (name, sub.wire if sub.wildcard else None)
        session = self._sessions.get(key)
        if session is not None and not session.patterns:
            del self._sessions[key]
            self.port.close_session(session, self.port.clock(), "unsubscribed")

    # -- deliveries -------------------------------------------------------------------------

    def send_event(self, wire: bytes | None, topic: str, body: Body, headers: Headers) -> None:
        """A publication the core delivers to one of our sessions: sent on the XPUB socket,
        once per publication and form, whichever identity's sessions it reached."""
        if headers is not self._last_headers:
            self._last_headers = headers
            self._sent.clear()
        elif wire in self._sent:
            return
        self._sent.add(wire)
        sock = self.xpub
        if sock is None:
            return
        frames = event_frames(wire, topic.encode(), body)
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                _send_frame(sock, frame, _NOBLOCK_MORE if i < last else _NOBLOCK)
        except zmq.ZMQError as exc:  # XPUB drops at a peer's mark itself; this is rare
            self.stats["mdp.pub.send_failed"] += 1
            log.debug("mdp: publishing %s failed: %s", topic, exc)
        if not self._xpub_busy:
            # a send may consume the FD's edge while subscriptions wait: look once more
            self._schedule_xpub()

    # -- publications -----------------------------------------------------------------------

    def _on_xsub(self) -> None:
        self._xsub_scheduled = False
        sock = self.xsub
        if sock is None:
            return
        try:
            for _ in range(self.config.batch):
                try:
                    first = sock.recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                frames = [first.bytes]
                frame = first
                while frame.more:
                    frame = sock.recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                self._on_publication(first, frames)
            else:
                self._schedule_xsub()
                return
            if cast(int, sock.getsockopt(zmq.EVENTS)) & _POLLIN:
                self._schedule_xsub()
        except zmq.ZMQError as exc:
            log.warning("mdp: publication socket error: %s", exc)

    def _schedule_xsub(self) -> None:
        if not self._xsub_scheduled and self._loop is not None:
            self._xsub_scheduled = True
            self._loop.call_soon(self._on_xsub)

    def _on_publication(self, first: zmq.Frame, frames: list[bytes]) -> None:
        config = self.config
        identity = self._identity_of(first) if self._zap_publishers else self.identity
        try:
            topic, body = parse_publication(
                frames, config.max_frames, config.max_message_size, self.port.max_name_length
            )
        except PubSubFormatError as exc:
            self.stats["mdp.publish.rejected"] += 1
            self.stats[f"mdp.publish.rejected.{exc.reason}"] += 1
            self.rejections.note("publication", identity.name, exc.reason)
            return
        session = self._publishers.get(identity.name)
        if session is None:
            session = self._publishers[identity.name] = self.port.open_session(
                "mdp", BaseSink(), identity, self.port.clock(), label="mdp:pub", quiet=True
            )
        try:
            self.port.publish(session, topic, body)
        except Denied:  # counted and published on $sys.auth.denied by the port
            self.stats["mdp.publish.denied"] += 1
            self.rejections.note("publication", identity.name, f"{topic}: denied")
        except MaitredError as exc:
            self.stats["mdp.publish.rejected"] += 1
            self.rejections.note("publication", identity.name, f"{topic}: {exc.reason}")

    def _reject(self, kind: str, reason: str) -> None:
        self.stats[f"mdp.pub.rejected.{reason}"] += 1
        self.stats["mdp.pub.rejected"] += 1
        self.rejections.note(kind, "", reason)
