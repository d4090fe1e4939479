"""The authentication conformance table (docs/reference/access.md, "Who each transport can
identify"): ONE list of rows, every transport × {no credentials, wrong credentials, valid
credentials of each role} → the outcome in that transport's own form, and one runner per
transport. ``tests/e2e/test_permissions.py`` runs the rows (``test_authentication_table``).

For every row the test checks, whatever the transport:

* ``refused`` (no or wrong credentials): the transport's refusal form (MDP: the CURVE handshake
  fails, no reply; HTTP: 401 with its challenge; WebSocket: close 1008 with the reason), no
  session opened, ``denied.authenticate.<transport>`` counted, ``$sys.auth.denied`` published
  with action ``authenticate``, the row's reason and an empty session;
* ``denied`` (a valid identity without the right): the transport's access denial, counted as
  ``denied.call`` and published with action ``call``;
* ``allowed``: the call is answered, nothing counted;

and in every case a bystander (a peer of the same transport connected before, which called
once) calls again undisturbed. Each runner adds what only its transport can say (MDP: the key a
refused peer presented; WebSocket: the ``ws.<reason>`` counter and the same event read by an
HTTP SSE subscriber).

Brokers are shared as before: one for every HTTP row (module scope), one per MDP and per
WebSocket row (the WebSocket rows differ in ``anonymous``).

To add a transport: its rows in ``AUTH_ROWS`` and a runner in ``RUNNERS``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import zmq
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.core.access import Identity
from maitred.core.credentials import new_token, token_digest
from maitred.core.local import LocalClient, LocalWorker
from maitred.transports.mdp.curve import write_certificate
from tests.e2e.helpers import BrokerThread, RawClient, nothing, wait_until
from tests.e2e.tls_certs import Pki


class AuthRow(NamedTuple):
    transport: str
    #: how the peer presents itself, in its runner's terms (a dialect, where the token goes)
    peer: str
    #: "none", "wrong" or "valid:<role>"
    credentials: str
    #: "refused", "denied" or "allowed"
    outcome: str
    #: what the peer sees: the transport's own form of the outcome
    form: str
    #: refused: the reason published on $sys.auth.denied; else the identity the peer gets
    who: str = ""


#: the WebSocket tokens (fresh per run) and a wrong one, never to be published
WS_CALLER_TOKEN, WS_CALLER_SHA = new_token()
WS_WATCHER_TOKEN, WS_WATCHER_SHA = new_token()
WS_WRONG_TOKEN = new_token()[0]
WS_KEY = "app-key"


def _ws_rows() -> list[AuthRow]:
    rows = []
    for dialect in ("middleman", "json"):
        mm = dialect == "middleman"
        error = '{"type": "error", "id": "r1", "code": 403, "message": "%s may not call echo"}'
        forbidden = "PUB ERROR Not trusted REQ echo" if mm else error % "watcher"
        bad_token = ("close 1008 bad token", "bad token")
        rows += [
            AuthRow(
                "ws", f"{dialect}", "none", "refused", "close 1008 no credentials", "no credentials"
            ),
            AuthRow(
                "ws",
                f"{dialect} anonymous",
                "none",
                "denied",
                "PUB ERROR Not trusted REQ echo" if mm else error % "anonymous",
                "anonymous",
            ),
            *(
                AuthRow("ws", f"{dialect} anonymous {how}", "wrong", "refused", *bad_token)
                for how in ("token", "token-query")
            ),
            AuthRow(
                "ws",
                f"{dialect} anonymous key",
                "wrong",
                "refused",
                "close 1008 bad key",
                "bad key",
            ),
            AuthRow("ws", f"{dialect} token", "valid:callers", "allowed", "echo:hi", "caller"),
            AuthRow(
                "ws", f"{dialect} token-query", "valid:callers", "allowed", "echo:hi", "caller"
            ),
            AuthRow("ws", f"{dialect} token", "valid:watchers", "denied", forbidden, "watcher"),
            AuthRow("ws", f"{dialect} key", "valid:callers", "allowed", "echo:hi", "ws-app"),
        ]
    return rows


AUTH_ROWS = [
    # MDP: CURVE keys ([[transports.mdp.keys]]); the peer calls ok.svc, then no.svc
    AuthRow(
        "mdp",
        "curve",
        "none",
        "refused",
        "no reply",  # a plain client on a CURVE endpoint: the handshake fails
        "failed CURVE handshake",
    ),
    AuthRow("mdp", "curve", "wrong", "refused", "no reply", "unknown CURVE key"),
    AuthRow(
        "mdp",
        "curve",
        "valid:app",
        "denied",
        "ok.svc served; no.svc: 403 mdp-key-app may not call no.svc",
        "mdp-key-app",
    ),
    AuthRow("mdp", "curve", "valid:ops", "allowed", "ok.svc served; no.svc served", "mdp-key-ops"),
    # HTTP: bearer tokens over HTTPS ([[transports.http.tokens]], anonymous = false)
    AuthRow(
        "http",
        "https",
        "none",
        "refused",
        '401 WWW-Authenticate: Bearer realm="maitred"',
        "no credentials",
    ),
    AuthRow(
        "http",
        "https",
        "wrong",
        "refused",
        '401 WWW-Authenticate: ...error="invalid_token"',
        "an unknown bearer token",
    ),
    AuthRow("http", "https", "valid:callers", "allowed", "200", "app"),
    AuthRow("http", "https", "valid:viewers", "denied", "403", "dash"),
    # WebSocket: both dialects, keys and tokens (header or query), anonymous off and on
    *_ws_rows(),
]


def row_id(row: AuthRow) -> str:
    return f"{row.transport}-{row.peer.replace(' ', '-')}-{row.credentials}"


class Seen(NamedTuple):
    """What a runner observed of one attempt: the form, whether the call was answered, and the
    identity of the session it got ("" none; None: the transport has no session to look at)."""

    form: str
    answered: bool
    identity: str | None = ""


OPS = Identity("ops", frozenset({"ops"}))


class Observed:
    """A broker and an in-process observer of ``$sys.auth.denied`` (and ``$sys.session.join``)."""

    def __init__(self, thread: BrokerThread, service: str = "", reply: bytes = b"") -> None:
        self.thread = thread

        async def setup() -> LocalClient:
            if service:

                async def handler(body: list[bytes]) -> list[bytes]:
                    return [reply + b"".join(body)]

                LocalWorker(thread.broker, service, handler, identity=OPS, label="ops")
            observer = LocalClient(thread.broker, OPS, label="observer")
            observer.subscribe("$sys.auth.denied")
            observer.subscribe("$sys.session.join")
            return observer

        self.observer: LocalClient = thread.run(setup())
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def _drain(self) -> None:
        def drain() -> None:
            while not self.observer.events.empty():
                topic, body, _ = self.observer.events.get_nowait()
                self.seen.append((topic, json.loads(b"".join(body))))

        self.thread.call(drain)

    def denials(self) -> list[dict[str, Any]]:
        self._drain()
        return [e for t, e in self.seen if t == "$sys.auth.denied"]

    def joins(self) -> list[dict[str, Any]]:
        self._drain()
        return [e for t, e in self.seen if t == "$sys.session.join"]

    def sessions(self) -> int:
        return self.thread.call(lambda: len(self.thread.broker.router.sessions))

    def stats(self) -> dict[str, int]:
        return self.thread.stats()


class Runner:
    """What the table asks of each transport's runner: ``obs``, its broker and observer."""

    obs: Observed
    #: the peer's library tries again by itself after a refusal (each try is counted)
    retries = False

    def attempt(self, row: AuthRow) -> Seen:
        raise NotImplementedError

    def undisturbed(self) -> bool:
        raise NotImplementedError

    def check_event(self, row: AuthRow, event: dict[str, Any], before: dict[str, int]) -> None:
        """What only this transport says about a refusal or a denial (``event``: its
        $sys.auth.denied; ``before``: the stats before the attempt)."""

    def close(self) -> None:
        pass


# -- MDP: CURVE keys ------------------------------------------------------------------------------

#: the [access] rules of the MDP and HTTP rows: ops may do anything; app (MDP) may call ok.svc,
#: callers (HTTP) svc.echo; viewers (HTTP) may only observe
ACCESS = """
[access]
default = "deny"

[[access.rules]]
who = ["role:ops"]

[[access.rules]]
who = ["role:app"]
actions = ["call"]
names = ["ok.svc"]

[[access.rules]]
who = ["role:callers"]
actions = ["call"]
names = ["svc.echo"]

[[access.rules]]
who = ["role:viewers"]
actions = ["observe"]
names = [">"]
"""


class MdpRunner(Runner):
    """A CURVE broker (every tcp:// endpoint) with one client key per role, ``ok.svc`` and
    ``no.svc`` served in process; the peers are plain pyzmq sockets (libzmq reconnects after
    a failed handshake: a refused peer may be counted more than once)."""

    retries = True

    def __init__(self, make_broker: Callable[..., BrokerThread], tmp: Path, ctx: Any) -> None:
        _, secret_file, public = write_certificate(tmp, "broker")
        self.server = public.encode()
        self.roles = {role: zmq.curve_keypair() for role in ("app", "ops")}
        lines = [f'curve_secret_key_file = "{secret_file}"']
        for role, (key, _) in self.roles.items():
            lines += [
                "[[transports.mdp.keys]]",
                f'public_key = "{key.decode()}"',
                f'identity = "mdp-key-{role}"',
                f'roles = ["{role}"]',
            ]
        self.obs = Observed(make_broker(ACCESS, mdp="\n".join(lines) + "\n"))
        self.thread = self.obs.thread
        self.ctx = ctx

        async def workers() -> None:
            for service in ("ok.svc", "no.svc"):

                async def handler(body: list[bytes], name: str = service) -> list[bytes]:
                    return [f"served:{name}".encode()]

                LocalWorker(self.thread.broker, service, handler, identity=OPS, label="ops")

        self.thread.run(workers())
        self.bystander = self._client("valid:app")
        assert self.bystander.call(b"ok.svc", b"hi", timeout=5) == [b"served:ok.svc"]
        self.presented = b""

    def _client(self, credentials: str) -> RawClient:
        keys = None
        if credentials != "none":
            public, secret = (
                zmq.curve_keypair() if credentials == "wrong" else self.roles[credentials[6:]]
            )
            keys = (self.server, public, secret)
            self.presented = public
        return RawClient(self.ctx, self.thread.endpoint, "majortomo", keys)

    def attempt(self, row: AuthRow) -> Seen:
        self.presented = b""
        client = self._client(row.credentials)
        if row.outcome == "refused":
            client.send(b"ok.svc", b"hi")
            wait_until(
                lambda: self.obs.stats().get("denied.authenticate", 0) >= 1, 5, "the refusal"
            )
            return Seen("no reply" if nothing(client.sock) else "a reply", False)
        assert client.call(b"ok.svc", b"hi", timeout=5) == [b"served:ok.svc"]
        reply = client.call(b"no.svc", b"hi", timeout=5)
        if reply == [b"served:no.svc"]:
            return Seen("ok.svc served; no.svc served", True, self._identity())
        assert reply[0] == b"403", reply
        return Seen(f"ok.svc served; no.svc: 403 {reply[1].decode()}", False, self._identity())

    def _identity(self) -> str:
        # the clients' session of each identity heard from: the newest one is this peer's
        def names() -> list[str]:
            sessions = self.thread.broker.router.sessions.values()
            return [s.identity.name for s in sessions if s.identity.name.startswith("mdp-key-")]

        return self.thread.call(names)[-1]

    def undisturbed(self) -> bool:
        return self.bystander.call(b"ok.svc", b"again", timeout=5) == [b"served:ok.svc"]

    def check_event(self, row: AuthRow, event: dict[str, Any], before: dict[str, int]) -> None:
        if row.outcome == "refused":
            # what it claimed: the key it presented (a public key), nothing without one
            assert event["identity"] == self.presented.decode()
            counter = f"mdp.rejected.{row.who}"
            assert self.obs.stats()[counter] >= before.get(counter, 0) + 1
        else:
            assert event["name"] == "no.svc"


# -- HTTP: bearer tokens over HTTPS ---------------------------------------------------------------

HTTP_CALLER_TOKEN = "caller-token-0123456789abcdefghijklmnopqrstuvwx"
HTTP_VIEWER_TOKEN = "viewer-token-0123456789abcdefghijklmnopqrstuvwx"
HTTP_CREDENTIALS = {
    "none": None,
    "wrong": "not-a-token-anyone-was-given-0123456789abcdef",
    "valid:callers": HTTP_CALLER_TOKEN,
    "valid:viewers": HTTP_VIEWER_TOKEN,
}


class HttpBroker(Observed):
    """The HTTPS broker of the HTTP rows (one for all of them: module scope)."""

    def __init__(self, pki: Pki) -> None:
        super().__init__(BrokerThread(http_toml(pki)), "svc.echo", b"echo:")
        self.pki = pki


def http_toml(pki: Pki) -> str:
    return (
        '[transports.mdp]\nenabled = false\n[store]\nbackend = "memory"\n'
        '[transports.http]\nlisten = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
        f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n'
        "[[transports.http.tokens]]\n"
        f'sha256 = "{token_digest(HTTP_CALLER_TOKEN)}"\nidentity = "app"\nroles = ["callers"]\n'
        "[[transports.http.tokens]]\n"
        f'sha256 = "{token_digest(HTTP_VIEWER_TOKEN)}"\nidentity = "dash"\nroles = ["viewers"]\n'
        + ACCESS
    )


class HttpRunner(Runner):
    """A keep-alive HTTPS connection (the bystander) calls once before and once after each
    row's attempt, made on a new connection."""

    def __init__(self, broker: HttpBroker) -> None:
        self.obs = broker
        self.pki = broker.pki
        self.other = self._https()
        assert self._call(self.other, HTTP_CALLER_TOKEN)[0] == 200

    def _https(self) -> http.client.HTTPSConnection:
        (endpoint,) = self.obs.thread.endpoints["http"]
        host, _, port = endpoint.removeprefix("https://").rpartition(":")
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        return http.client.HTTPSConnection(host, int(port), context=context, timeout=5)

    @staticmethod
    def _call(conn: http.client.HTTPConnection, token: str | None) -> tuple[int, str, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request("POST", "/v1/services/svc.echo", body=b"hi", headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("WWW-Authenticate") or "", resp.read()

    def attempt(self, row: AuthRow) -> Seen:
        conn = self._https()
        try:
            status, challenge, body = self._call(conn, HTTP_CREDENTIALS[row.credentials])
        finally:
            conn.close()
        if status == 401:
            form = "401 WWW-Authenticate: " + (
                '...error="invalid_token"' if 'error="invalid_token"' in challenge else challenge
            )
        else:
            form = str(status)
        # no session per request to look at: the identity of a denied call is in its event
        return Seen(form, body == b"echo:hi", None)

    def undisturbed(self) -> bool:
        return self._call(self.other, HTTP_CALLER_TOKEN) == (200, "", b"echo:hi")

    def close(self) -> None:
        self.other.close()


# -- WebSocket: keys and tokens, both dialects ----------------------------------------------------

WS_TOML = """
[access]
default = "allow"

[[access.rules]]
who = ["role:callers"]
actions = ["call"]
names = ["echo"]

[[access.rules]]
allow = false
who = ["role:watchers"]
actions = ["call"]
names = [">"]

[transports.http]
listen = ["127.0.0.1:0"]
switch = false

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
anonymous = {anonymous}

[[transports.ws.keys]]
key = "app-key"
trusted = true
identity = "ws-app"
roles = ["callers"]

[[transports.ws.tokens]]
sha256 = "{caller}"
identity = "caller"
roles = ["callers"]

[[transports.ws.tokens]]
sha256 = "{watcher}"
identity = "watcher"
roles = ["watchers"]
"""


class WsRunner(Runner):
    """A broker (``anonymous`` as the row says) with ``echo`` in process, an HTTP SSE stream
    of ``$sys.auth.denied`` (a subscriber on another transport), and a bystander: a middleman
    client (key) connected before anything else happens."""

    def __init__(self, make_broker: Callable[..., BrokerThread], row: AuthRow) -> None:
        anonymous = "anonymous" in row.peer.split()
        toml = WS_TOML.format(
            anonymous=str(anonymous).lower(), caller=WS_CALLER_SHA, watcher=WS_WATCHER_SHA
        )
        self.obs = Observed(make_broker(toml), "echo", b"echo:")
        self.url = self.obs.thread.endpoints["ws"][0]
        base = urllib.parse.urlsplit(self.obs.thread.endpoints["http"][0])
        self.sse = http.client.HTTPConnection(base.hostname or "", base.port, timeout=5)
        self.sse.request("GET", "/v1/topics/$sys.auth.denied")
        self.stream = self.sse.getresponse()
        assert self.stream.status == 200
        assert self.stream.readline().startswith(b": subscribed to")
        self.stream.readline()
        self.exits = contextlib.ExitStack()
        self.bystander = self.exits.enter_context(connect(self.url, open_timeout=5))
        self.bystander.send(WS_KEY)
        assert self.bystander.recv(5) == "MM OK"
        self.bystander.recv(5)

    def close(self) -> None:
        self.exits.close()
        self.sse.close()

    def _open(self, dialect: str, how: set[str], token: str) -> ClientConnection:
        url, headers = self.url, {}
        if "token-query" in how:
            url += "/?" + urllib.parse.urlencode({"access_token": token})
        elif "token" in how:
            headers["Authorization"] = f"Bearer {token}"
        protocols = [Subprotocol("maitred.json")] if dialect == "json" else None
        return connect(url, additional_headers=headers, subprotocols=protocols, open_timeout=5)

    def attempt(self, row: AuthRow) -> Seen:
        dialect, *rest = row.peer.split()
        how = set(rest)
        wrong = row.credentials == "wrong"
        token = ""
        if how & {"token", "token-query"}:
            token = WS_WRONG_TOKEN if wrong else WS_CALLER_TOKEN
            if row.credentials == "valid:watchers":
                token = WS_WATCHER_TOKEN
        key = ("wrong" if wrong else WS_KEY) if "key" in how else ""
        joins = len(self.obs.joins())
        with self._open(dialect, how, token) as ws:
            try:
                self._handshake(ws, dialect, key, bool(token))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                return Seen(f"close {closed.rcvd.code} {closed.rcvd.reason}", False)
            wait_until(lambda: len(self.obs.joins()) == joins + 1, what="the session")
            identity = str(self.obs.joins()[-1]["identity"])
            answered, form = self._call_echo(ws, dialect)
            return Seen(form, answered, identity)

    @staticmethod
    def _handshake(ws: ClientConnection, dialect: str, key: str, token: bool) -> None:
        """The dialect's handshake (raises ConnectionClosed when refused)."""
        if dialect == "middleman":
            if not token:  # with a token there is no key frame: MM OK comes at once
                ws.send(key)
            ok = ws.recv(5)
            assert ok == "MM OK", ok
            ws.recv(5)  # the connection id
            return
        hello: dict[str, Any] = {"type": "hello", "name": "t"}
        if key:
            hello["key"] = key
        ws.send(json.dumps(hello))
        welcome = json.loads(ws.recv(5))
        assert welcome["type"] == "welcome", welcome

    @staticmethod
    def _call_echo(ws: ClientConnection, dialect: str) -> tuple[bool, str]:
        """(whether ``echo`` answered, the answer or the refusal in the dialect's form)."""
        if dialect == "middleman":
            ws.send("REQ echo\r\n\r\nhi\r\n.\r\n")
            frame = str(ws.recv(5))
            if frame.startswith("RES echo\r\n"):
                assert frame.endswith("\r\n\r\necho:hi\r\n.\r\n"), frame
                return True, "echo:hi"
            assert frame.startswith("PUB ERROR\r\n\r\n"), frame
            return False, "PUB ERROR " + frame[len("PUB ERROR\r\n\r\n") :].removesuffix("\r\n.\r\n")
        ws.send(json.dumps({"type": "request", "id": "r1", "destination": "echo", "data": "aGk="}))
        answer = json.loads(ws.recv(5))
        if answer["type"] == "reply":
            return True, base64.b64decode(answer["data"]).decode()
        assert answer["type"] == "error", answer
        return False, json.dumps(answer)

    def undisturbed(self) -> bool:
        self.bystander.send("REQ echo\r\n\r\nstill here\r\n.\r\n")
        frame = str(self.bystander.recv(5))
        return frame.startswith("RES echo\r\n") and "\r\n\r\necho:still here\r\n" in frame

    def check_event(self, row: AuthRow, event: dict[str, Any], before: dict[str, int]) -> None:
        if row.outcome == "refused":
            counter = f"ws.{row.who.replace(' ', '_')}"
            assert self.obs.stats()[counter] == before.get(counter, 0) + 1
            assert event["name"].startswith("127.0.0.1:")
            assert WS_WRONG_TOKEN not in json.dumps(event)
        # the same event, read by a subscriber on another transport (an HTTP SSE stream)
        assert self.next_sse_denial() == event

    def next_sse_denial(self) -> dict[str, Any]:
        while True:
            line = self.stream.readline()
            assert line, "the SSE stream ended"
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                assert event["topic"] == "$sys.auth.denied"
                return dict(json.loads(event["text"]))


#: each transport's runner, from the test's fixtures (``request.getfixturevalue``) and the row
RUNNERS: dict[str, Callable[[pytest.FixtureRequest, AuthRow], Runner]] = {
    "mdp": lambda request, row: MdpRunner(
        request.getfixturevalue("make_broker"),
        request.getfixturevalue("tmp_path"),
        request.getfixturevalue("ctx"),
    ),
    "http": lambda request, row: HttpRunner(request.getfixturevalue("http_auth_broker")),
    "ws": lambda request, row: WsRunner(request.getfixturevalue("make_broker"), row),
}
