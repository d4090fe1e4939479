"""The ``line`` transport: one asyncio stream server, one router session per TCP connection.

It uses only the broker's port (:class:`maitred.core.transport.BrokerPort`, the plugin API):
its verbs ``open_session`` / ``submit`` / ``publish`` / ``subscribe`` / ``unsubscribe`` /
``close_session``, its clock, authenticator hook and counters. Each connection is the
:class:`~maitred.core.routing.model.SessionSink` of its session (a
:class:`~maitred.core.routing.model.BaseSink`, overriding what a caller receives): the core calls
it synchronously, and it only queues bytes on the stream (never awaits).

Flow control: reading pauses while the peer does not read what it is sent (``drain``), and a
peer that lets more than ``max_output`` bytes of replies and events pile up is disconnected
(the slow-consumer policy). A line longer than ``max_line`` is answered with
``ERR 413 line too long`` and skipped; the connection stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from maitred.core.access import Identity
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.routing.model import BaseSink, ReplyKind
from maitred_line import codec

if TYPE_CHECKING:
    from maitred.core.routing.model import Body, Headers, Request, Session, Worker
    from maitred.core.transport import BrokerPort

log = logging.getLogger("maitred_line")

_READ_CHUNK = 65536
#: seconds ``close`` waits for connections to flush their last lines before cutting them
_CLOSE_GRACE = 2.0


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6ADDR]:PORT`` for IPv6; port 0: any free port) as (host, port)."""
    host, sep, port_raw = listen.rpartition(":")
    if not sep or not host or not port_raw.isdigit():
        raise ValueError(f"listen: {listen!r} is not HOST:PORT")
    port = int(port_raw)
    if port > 65535:
        raise ValueError(f"listen: port {port} is out of range (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LineConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transports.line]``: the plain TCP text front end."""

    enabled: bool = True
    #: ``HOST:PORT`` to listen on (port 0: any free port; the bound one is printed/logged)
    listen: str = "127.0.0.1:7070"
    #: longest accepted line in bytes, not counting the newline
    max_line: int = 65536
    #: the identity every connection gets (unless a ``maitred_authenticate`` plugin decides)
    identity: str = "anonymous"
    #: roles of that identity (for ``[access]`` rules such as ``who = ["role:ops"]``)
    roles: list[str] = msgspec.field(default_factory=list)
    #: bytes of unread replies and events a connection may hold before it is dropped
    max_output: int = 1 << 20

    def problems(self) -> list[str]:
        out = []
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            out.append(str(exc))
        if self.max_line < 16:
            out.append("max_line must be >= 16")
        if not self.identity:
            out.append("identity must not be empty")
        if self.max_output < 1024:
            out.append("max_output must be >= 1024")
        return out


def cli_addresses(addresses: Sequence[str]) -> dict[str, Any]:
    """``maitred serve --line HOST:PORT`` -> ``[transports.line] listen``."""
    if len(addresses) != 1:
        raise ConfigError("the line transport listens on exactly one HOST:PORT")
    return {"listen": addresses[0]}


class LineTransport:
    """The ``line`` transport (see the module docstring)."""

    name = "line"

    def __init__(self, config: LineConfig, port: BrokerPort) -> None:
        self.config = config
        self.port = port
        self.broker = port
        self.stats = port.stats
        self.default_identity = Identity(config.identity, frozenset(config.roles))
        self._server: asyncio.Server | None = None
        self._bound: list[str] = []
        self._connections: dict[LineConnection, asyncio.Task[Any] | None] = {}
        self._accepting = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = parse_listen(self.config.listen)
        try:
            self._server = await asyncio.start_server(self._on_connect, host, port)
        except OSError as exc:
            raise MaitredError(
                f"line: cannot listen on {self.config.listen}: {exc.strerror or exc}",
                ErrorCode.BAD_REQUEST,
            ) from None
        for sock in self._server.sockets:
            name = sock.getsockname()
            self._bound.append("line://" + _host_port(name[0], name[1]))
        self._accepting = True

    def endpoints(self) -> list[str]:
        return list(self._bound)

    async def stop_accepting(self) -> None:
        # no new connections; open ones stay (the router refuses their new requests while it
        # drains, and replies to earlier ones still flow)
        self._accepting = False
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.stop_accepting()
        for conn in list(self._connections):
            conn.close()
        tasks = [t for t in self._connections.values() if t is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
            if pending:
                for conn in list(self._connections):
                    conn.abort()
                await asyncio.wait(pending, timeout=_CLOSE_GRACE)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- connections --------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._accepting:
            writer.close()
            return
        conn = LineConnection(self, reader, writer)
        self._connections[conn] = asyncio.current_task()
        self.stats["line.connections"] += 1
        try:
            await conn.run()
        finally:
            self._connections.pop(conn, None)


class LineConnection(BaseSink):
    """One TCP connection: its reader loop, and the sink of its router session."""

    def __init__(
        self, transport: LineTransport, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.transport = transport
        self.config = transport.config
        self.broker = transport.broker
        self.port = transport.port
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = _host_port(str(peer[0]), int(peer[1])) if peer else "?"
        self.session: Session | None = None
        #: no more commands are read (QUIT, broker closing)
        self.closing = False
        #: nothing more is written (the peer is gone or was cut off)
        self.dead = False

    async def run(self) -> None:
        identity = self.port.authenticate(
            "line", {"peer": self.peer}, self.transport.default_identity
        )
        if identity is None:
            self.transport.stats["line.refused"] += 1
            self.send(codec.err(int(ErrorCode.UNAUTHORIZED), "not authenticated"))
            self._finish("not authenticated")
            return
        self.session = self.broker.open_session(
            "line", self, identity, self.port.clock(), label=f"line:{self.peer}"
        )
        reason = "disconnect"
        try:
            reason = await self._read_loop()
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        except Exception:  # a bug in this connection must not take the broker down
            log.exception("line: connection %s failed", self.peer)
            reason = "internal error"
        finally:
            self._finish(reason)

    async def _read_loop(self) -> str:
        max_line = self.config.max_line
        reader = self.reader
        buf = bytearray()
        skipping = False  # inside a line that was already answered with 413
        while not self.closing:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                return "disconnect"
            buf += chunk
            start = 0
            while not self.closing:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                if skipping:
                    skipping = False
                elif nl - start > max_line:
                    self._too_long()
                else:
                    self.handle(bytes(buf[start:nl]))
                start = nl + 1
            del buf[:start]
            if skipping:
                buf.clear()
            elif len(buf) > max_line:
                self._too_long()
                skipping = True
                buf.clear()
            if not self.dead:
                await self.writer.drain()
        return "quit"

    def _too_long(self) -> None:
        self.transport.stats["line.too_long"] += 1
        self.send(codec.err(int(ErrorCode.TOO_LARGE), "line too long"))

    def handle(self, line: bytes) -> None:
        """Act on one complete line (synchronously; answers are queued on the stream)."""
        try:
            command = codec.parse(line)
        except codec.LineError as exc:
            self.transport.stats["line.bad_command"] += 1
            self.send(codec.err(exc.code, exc.reason))
            return
        if command is None:
            return
        session = self.session
        if session is None:  # run() opens it before reading; closed: ignore the rest
            return
        verb = command.verb
        broker = self.broker
        try:
            if verb == "CALL":
                # the answer (OK/ERR) comes through deliver_reply / deliver_error
                broker.submit(session, command.name, (command.text,), None, self.port.clock())
            elif verb == "PUB":
                reached = broker.publish(session, command.name, (command.text,))
                self.send(b"OK %d\n" % reached)
            elif verb == "SUB":
                broker.subscribe(session, command.name)
                self.send(codec.ok())
            elif verb == "UNSUB":
                broker.unsubscribe(session, command.name)
                self.send(codec.ok())
            elif verb == "SERVICES":
                broker.submit(session, "mmi.services", (b"",), None, self.port.clock())
            elif verb == "HELP":
                self.send(codec.HELP)
            elif verb == "QUIT":
                self.send(codec.BYE)
                self.closing = True
        except MaitredError as exc:
            self.send(codec.err(int(exc.code), exc.reason))

    # -- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data``; cut the connection off if the peer lets too much pile up."""
        if self.dead:
            return
        writer = self.writer
        if writer.is_closing():
            self.dead = True
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() > self.config.max_output:
            self.transport.stats["line.slow_consumer"] += 1
            log.info("line: %s does not read its replies; disconnected", self.peer)
            self.abort()

    def close(self) -> None:
        """Stop reading; flush what is queued, then close (the reader loop then ends)."""
        self.closing = True
        if not self.writer.is_closing():
            self.writer.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding what is queued."""
        self.closing = True
        self.dead = True
        self.writer.transport.abort()

    def _finish(self, reason: str) -> None:
        if self.session is not None:
            self.broker.close_session(self.session, self.port.clock(), reason)
            self.session = None
        self.closing = True
        if not self.writer.is_closing():
            self.writer.close()
        self.dead = True

    # -- SessionSink --------------------------------------------------------------------------

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        # the line protocol has no partial replies: a caller sees only the final one
        if kind is ReplyKind.FINAL:
            self.send(codec.ok(body))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.send(codec.err(int(error.code), error.reason))

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self.send(codec.event(topic, body))

    def deliver_request(self, worker: Worker, request: Request) -> None:
        # never called: a line connection never becomes a worker (it has no SERVE command)
        log.error("line: the router handed a request to %s, which serves nothing", self.peer)
