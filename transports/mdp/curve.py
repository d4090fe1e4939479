"""CURVE on the MDP transport: the broker's key pair, the ZAP handler and who each message is from.

With ``curve_secret_key_file`` set, the ROUTER socket is a CURVE server on ``curve_endpoints``
(ZeroMQ takes a socket's security options when an endpoint is bound, so the other endpoints stay
plain). During each CURVE handshake libzmq asks the ZAP handler (RFC 27) at
``inproc://zeromq.zap.01`` of the socket's context whether the client's public key is accepted.
The handler is a socket on the broker's own event loop (no thread): it answers from the
``[[transports.mdp.keys]]`` table (:mod:`.zap` decides), 200 with the key's identity name as the
User-Id, or 400 for a key not in the table. A refused peer never gets a connection, so no
session: it is counted (``mdp.rejected.unknown CURVE key``, the ``curve`` rejection log) and
published on ``$sys.auth.denied`` (action ``authenticate``, the peer's address in ``name``, the
key it presented in ``identity``).

libzmq then puts the User-Id on every message of that connection. While CURVE is on, the adapter
reads it from the first frame of each message (:meth:`CurvePeers._handle_curve`) and handles the
message as that identity: clients of one identity share a quiet session, and a worker's session
carries its identity, so the ``[access]`` rules apply as on every other transport. With CURVE
off, none of this runs: not one extra step per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq
import zmq.asyncio

from maitred.core.access import Identity
from maitred.core.credentials import secret_file_problem
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import Session, SessionSink
from maitred.core.transport import BrokerPort, ReloadPlan
from maitred.transports.mdp import zap
from maitred.transports.mdp.config import MdpConfig

log = logging.getLogger("maitred.transports.mdp")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: the ZAP domain of the MDP socket: set so that the plain endpoints' connections are asked
#: about too (as NULL, accepted with an empty User-Id: the transport's own identity), and every
#: message read has a User-Id to look at (no exception per message for a plain peer)
ZAP_DOMAIN = b"maitred.mdp"
#: handshakes that fail before the ZAP handler is asked: a client without CURVE on a CURVE
#: endpoint (a mechanism mismatch), or a CURVE handshake that is not valid
_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) | int(
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
#: ``mdp.rejected.<reason>`` of a failed handshake (one reason: whether libzmq reports a
#: plain client as a mechanism mismatch or as a dropped connection depends on which side
#: closes first; the debug line has its error code)
BAD_HANDSHAKE = "failed CURVE handshake"

__all__ = [
    "CurvePeers",
    "ZapHandler",
    "load_secret_key",
    "read_public_key",
    "secret_key_problem",
    "write_certificate",
]


# -- certificates ------------------------------------------------------------------------------

_SECRET_BANNER = """#   ****  Generated on {0} by maitred keygen  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {0} by maitred keygen  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange.

"""


def _certificate(banner: str, public: str, secret: str | None) -> str:
    text = banner.format(datetime.datetime.now().replace(microsecond=0)) + "metadata\ncurve\n"
    text += f'    public-key = "{public}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret}"\n'
    return text


def write_certificate(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path, str]:
    """A new CURVE key pair as ZeroMQ's certificate files (the layout of czmq and pyzmq's
    ``zmq.auth``): ``NAME.key`` (the public key) and ``NAME.key_secret`` (both keys, created
    with mode 0600, never readable by others even for a moment). Refuses to overwrite either.
    Returns both paths and the public key (Z85)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a key name (a file name without '/')")
    public_b, secret_b = zmq.curve_keypair()
    public, secret = public_b.decode(), secret_b.decode()
    base = Path(directory)
    public_file, secret_file = base / f"{name}.key", base / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise FileExistsError(f"{path}: exists already (remove it or choose another name)")
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_certificate(_SECRET_BANNER, public, secret))
    public_file.write_text(_certificate(_PUBLIC_BANNER, public, None))
    return public_file, secret_file, public


def _read_keys(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """The public and secret key (Z85) in a certificate file, either None when absent."""
    keys: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            name, eq, value = line.strip().partition("=")
            name = name.strip()
            if eq and name in ("public-key", "secret-key"):
                keys[name] = value.strip().strip("'\"")
    return keys.get("public-key"), keys.get("secret-key")


def read_public_key(text: str) -> bytes:
    """A server's public key given as 40 Z85 characters or as a certificate file (public or
    secret: its ``public-key`` line), as the 40 bytes pyzmq's ``curve_serverkey`` takes."""
    if len(text) == 40 and zap.public_key_problem(text) is None:
        return text.encode()
    try:
        public, _ = _read_keys(text)
    except OSError as exc:
        raise ValueError(
            f"{text!r}: neither a Z85 public key (40 characters) nor a readable key file "
            f"({exc.strerror or exc})"
        ) from None
    if public is None or zap.public_key_problem(public):
        raise ValueError(f"{text}: no public-key line of 40 Z85 characters in it")
    return public.encode()


def secret_key_problem(path: str) -> str | None:
    """Why the secret certificate ``path`` cannot be used, with the fix, or None."""
    problem = secret_file_problem(path)
    if problem:
        return problem
    try:
        public, secret = _read_keys(path)
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc})"
    if secret is None:
        return f"{path}: no secret-key line (a public .key file? use the .key_secret file)"
    for what, key in (("secret-key", secret), ("public-key", public)):
        if key is None:
            return f"{path}: no {what} line"
        problem = zap.public_key_problem(key)
        if problem:
            return f"{path}: {what}: {problem}"
    return None


def load_secret_key(path: str) -> tuple[bytes, bytes]:
    """The ``(public, secret)`` keys (Z85 bytes) of a secret certificate; MaitredError naming
    the file and the fix when it cannot be used (readable by others, missing, not one)."""
    problem = secret_key_problem(path)
    if problem:
        raise MaitredError(f"mdp: curve_secret_key_file: {problem}", ErrorCode.BAD_REQUEST)
    public, secret = _read_keys(path)
    assert public is not None and secret is not None
    return public.encode(), secret.encode()


def client_keys(key_file: str) -> tuple[bytes, bytes]:
    """A client's own ``(public, secret)`` keys from its secret certificate (``maitred keygen``
    writes one); ValueError naming the file and the fix."""
    problem = secret_key_problem(key_file)
    if problem:
        raise ValueError(problem)
    public, secret = _read_keys(key_file)
    assert public is not None and secret is not None
    return public.encode(), secret.encode()


#: a CURVE client's keys: the server's public key, its own public and secret key (Z85)
ClientKeys = tuple[bytes, bytes, bytes]


def client_curve(server_key: str | bytes | None, key_file: str | None) -> ClientKeys | None:
    """The keys a CURVE client socket needs: the server's public key (``server_key``: Z85 or a
    certificate file) and its own pair from ``key_file`` (its secret certificate, as
    ``maitred keygen`` writes it; without one a fresh pair, which a broker that lists its
    keys refuses). None when ``server_key`` is None (no CURVE). ValueError naming the fix."""
    if server_key is None:
        if key_file:
            raise ValueError("a CURVE key file needs the server's key (--curve-server-key) too")
        return None
    text = server_key.decode() if isinstance(server_key, bytes) else server_key
    server = read_public_key(text)
    public, secret = client_keys(key_file) if key_file else zmq.curve_keypair()
    return server, public, secret


def apply_client_curve(sock: zmq.Socket[Any], keys: ClientKeys | None) -> None:
    """Make ``sock`` a CURVE client with ``keys`` (before it connects); nothing for None."""
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys


# -- ZAP ---------------------------------------------------------------------------------------


class ZapHandler:
    """Answers libzmq's ZAP requests from a key table, on the running event loop (a
    ``zmq.asyncio`` ROUTER socket bound at ``inproc://zeromq.zap.01`` of ``context``).

    Malformed requests (the wrong version, frame count or key size) are answered with 500 when
    they carry a request id, else dropped; each is counted (``mdp.zap.malformed``) and never
    stops the handler."""

    def __init__(
        self,
        context: zmq.Context[Any],
        keys: zap.KeyTable,
        stats: Counter[str],
        on_refused: Callable[[zap.ZapRequest, zap.Verdict], None],
    ) -> None:
        self.keys = keys
        self.stats = stats
        self.on_refused = on_refused
        self._context = zmq.asyncio.Context.shadow(context.underlying)
        self.socket: zmq.asyncio.Socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self.socket.close(0)
            raise MaitredError(
                f"mdp: cannot start the CURVE (ZAP) handler: {exc.strerror} (another ZAP handler "
                "in the same ZeroMQ context?)",
                ErrorCode.BAD_REQUEST,
            ) from None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mdp-zap")

    async def _run(self) -> None:
        sock = self.socket
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:  # the socket closed under us
                log.debug("mdp: ZAP handler stops: %s", exc)
                return
            reply = self.handle(frames)
            if reply is not None:
                try:
                    await sock.send_multipart(reply)
                except zmq.ZMQError as exc:
                    log.debug("mdp: ZAP reply not sent: %s", exc)

    def handle(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one message read from the socket (:func:`.zap.respond`), counted;
        None: drop it."""
        out = zap.respond(frames, self.keys.by_key)
        if out.malformed:
            self.stats["mdp.zap.malformed"] += 1
            log.debug("mdp: malformed ZAP request: %s", out.malformed)
        elif out.request is not None and out.verdict is not None:
            if out.verdict.status == b"200":
                self.stats[f"mdp.zap.{out.request.mechanism.decode().lower()}"] += 1
            else:
                self.on_refused(out.request, out.verdict)
        return out.reply

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.socket.close(0)


# -- the adapter's side ----------------------------------------------------------------------


class CurvePeers:
    """A mixin of :class:`~maitred.transports.mdp.adapter.MdpTransport`: CURVE on the socket,
    the ZAP handler, and a session per client identity (see the module docstring)."""

    config: MdpConfig
    port: BrokerPort
    context: zmq.Context[Any]
    stats: Counter[str]
    rejections: RejectionLog
    _clients: Session | None
    _identity: Identity
    _head: zmq.Frame | None
    _handle: Callable[[list[bytes], float], None]

    _zap: ZapHandler | None = None
    _curve_keys: tuple[bytes, bytes] | None = None
    #: identity name (the User-Id) -> its clients' session and identity
    _curve_sessions: dict[str, tuple[Session, Identity]]
    _plain: tuple[Session, Identity] | None = None
    _curve_user: str | None = None

    def _curve_prepare(self, sock: zmq.Socket[Any]) -> set[str]:
        """Before binding: load the broker's key and start the ZAP handler; the endpoints that
        use CURVE (none when it is off: then nothing else here runs)."""
        endpoints = set(self.config.curve_bound())
        self._curve_sessions = {}
        if not endpoints:
            return endpoints
        self._curve_keys = load_secret_key(self.config.curve_secret_key_file)
        self._zap = ZapHandler(
            self.context,
            zap.KeyTable(self.config.keys),
            self.stats,
            self._key_refused,
        )
        self._zap.start()
        self.rejections.kinds.setdefault("curve", "CURVE handshakes refused")
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        return endpoints

    def _curve_endpoint(self, sock: zmq.Socket[Any], curve: bool) -> None:
        """Set the socket's security for the next bind (libzmq copies it into the listener)."""
        if curve:
            assert self._curve_keys is not None
            sock.curve_secretkey = self._curve_keys[1]
            sock.curve_server = True
        else:
            sock.curve_server = False

    def _curve_started(self) -> None:
        """After the clients' session opened: it is the one for peers without a CURVE key."""
        assert self._clients is not None
        self._plain = (self._clients, self._identity)

    def _curve_monitor_events(self) -> int:
        """The socket monitor events CURVE adds to the adapter's (none when it is off)."""
        return _HANDSHAKE_FAILED if self._zap is not None else 0

    def _monitor_event(self, kind: int, value: int, endpoint: bytes) -> None:
        """A handshake failed before ZAP was asked (the monitor says so; a refused key is
        counted by :meth:`_key_refused` instead): counted, logged, published."""
        if not kind & _HANDSHAKE_FAILED:
            return
        reason = BAD_HANDSHAKE
        where = endpoint.decode("utf-8", "replace")
        self.stats["mdp.rejected"] += 1
        self.stats[f"mdp.rejected.{reason}"] += 1
        self.rejections.note("curve", where, f"{reason} (ZMTP error {value:#x})")
        self.port.report_auth_failure("mdp", where, reason)

    def _key_refused(self, request: zap.ZapRequest, verdict: zap.Verdict) -> None:
        key = zap.z85_encode(request.credentials[0]) if request.mechanism == b"CURVE" else ""
        address = request.address.decode("utf-8", "replace")
        reason = verdict.text.decode("utf-8", "replace")
        self.stats["mdp.rejected"] += 1
        self.stats[f"mdp.rejected.{reason}"] += 1
        self.rejections.note("curve", address, f"{reason} {key}")
        self.port.report_auth_failure("mdp", address, reason, key)

    def _handle_curve(self, frames: list[bytes], now: float) -> None:
        """Handle one message as the identity its connection authenticated as (the User-Id
        libzmq put on it), then as :meth:`_handle` does."""
        head = self._head
        try:
            user = str(head.get("User-Id")) if head is not None else ""
        except zmq.ZMQError:  # no ZAP for this connection (e.g. inproc)
            user = ""
        if user != self._curve_user:
            self._clients, self._identity = self._curve_session(user, now)
            self._curve_user = user
        self._handle(frames, now)

    def plan_reload(self, config: MdpConfig) -> ReloadPlan:
        """``keys`` apply to new CURVE handshakes when CURVE is on: a key taken out is refused
        from then on, a new one accepted. Open connections keep the identity they came with
        (also a removed key's: its name stays known to the running transport). Every other
        changed key waits for a restart (sockets and listeners are made at start)."""
        old = self.config
        changed = [f for f in old.__struct_fields__ if getattr(old, f) != getattr(config, f)]
        applied = ["keys"] if "keys" in changed and self._zap is not None else []
        restart = [f for f in changed if f not in applied]
        table = zap.KeyTable(config.keys)

        def apply() -> None:
            if not applied or self._zap is None:
                return
            self.config = msgspec.structs.replace(self.config, keys=config.keys)
            table.by_name = {**self._zap.keys.by_name, **table.by_name}
            self._zap.keys = table
            log.info("mdp: reloaded keys (%d CURVE keys, for new handshakes)", len(table))

        return ReloadPlan(applied, restart, apply)

    def _curve_session(self, user: str, now: float) -> tuple[Session, Identity]:
        found = self._curve_sessions.get(user)
        if found is not None:
            return found
        assert self._zap is not None and self._plain is not None
        identity = self._zap.keys.by_name.get(user)
        if identity is None:  # a plain endpoint's peer (User-Id "")
            return self._plain
        sink = cast(SessionSink, self)
        session = self.port.open_session(
            "mdp", sink, identity, now, label=f"mdp:clients:{user}", quiet=True
        )
        self._curve_sessions[user] = (session, identity)
        return session, identity

    async def _curve_close(self, now: float) -> None:
        """Close the identities' client sessions and the ZAP handler; the plain clients'
        session is the adapter's again (it closes it)."""
        if self._plain is not None:
            self._clients, self._identity = self._plain
        self._curve_user = None
        for session, _ in getattr(self, "_curve_sessions", {}).values():
            self.port.close_session(session, now, "broker closing")
        self._curve_sessions = {}
        if self._zap is not None:
            await self._zap.close()
            self._zap = None
