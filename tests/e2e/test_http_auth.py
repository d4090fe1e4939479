"""HTTP authentication over real sockets (docs/reference/http.md, "Authentication"): HTTPS with
the broker's certificate, bearer tokens, client certificates (mutual TLS), Unix socket peers by
``SO_PEERCRED``, ``anonymous``, ``public_paths``, certificate reload, and bad input (tokens of
every length, non-ASCII and CR/LF in headers, stalled TLS handshakes, plain text on a TLS port)."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from maitred.core.access import Identity
from maitred.core.cli import main as cli_main
from maitred.core.config import parse_config
from maitred.core.credentials import token_digest
from maitred.core.errors import MaitredError
from maitred.core.local import LocalClient, LocalWorker
from maitred.plugins.testing import ServeProcess
from maitred.transports.http.client import RestClient, SwitchClient
from maitred.transports.http.config import HttpConfig
from tests.e2e.chromium import DevTools, chromium_fixture  # noqa: F401 (the fixture)
from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.http_helpers import RawHttp, short_socket_path
from tests.e2e.tls_certs import Pki, make_pki

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


def _uvloop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


#: asyncio's own TLS layer and Unix sockets, and uvloop's (``[broker] uvloop``)
LOOPS = pytest.mark.parametrize("loop_factory", [None, _uvloop], ids=["asyncio", "uvloop"])

OPS_TOKEN = "ops-token-0123456789abcdefghijklmnopqrstuvwxyz"
VIEW_TOKEN = "viewer-token-0123456789abcdefghijklmnopqrstuvw"
#: in-process workers and observers
WORKERS = Identity("workers", frozenset({"admin"}))

ACCESS = """
[access]
default = "deny"

[[access.rules]]
who = ["role:admin"]

[[access.rules]]
who = ["role:viewers"]
actions = ["observe"]
names = [">"]
"""


def tokens_toml() -> str:
    return (
        "[[transports.http.tokens]]\n"
        f'sha256 = "{token_digest(OPS_TOKEN)}"\nidentity = "ops"\nroles = ["admin"]\n'
        "[[transports.http.tokens]]\n"
        f'sha256 = "{token_digest(VIEW_TOKEN)}"\nidentity = "viewer"\nroles = ["viewers"]\n'
    )


def broker_toml(http: str, *, tokens: bool = True) -> str:
    return (
        '[transports.mdp]\nenabled = false\n[store]\nbackend = "memory"\n'
        f"[transports.http]\n{http}\n" + (tokens_toml() if tokens else "") + ACCESS
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_http(pki: Pki, extra: str = "") -> str:
    return (
        'listen = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
        f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n{extra}'
    )


class Running:
    """A broker on a thread with an ``echo`` worker and an observer of ``$sys.auth.denied``."""

    def __init__(self, toml: str, loop_factory: LoopFactory = None) -> None:
        self.broker = BrokerThread(toml, loop_factory)

        async def setup() -> LocalClient:
            async def echo(body: list[bytes]) -> list[bytes]:
                return [b"echo:" + b"".join(body)]

            LocalWorker(self.broker.broker, "echo", echo, identity=WORKERS, label="echo")
            observer = LocalClient(self.broker.broker, WORKERS, label="observer")
            observer.subscribe("$sys.auth.denied")
            return observer

        self.observer: LocalClient = self.broker.run(setup())
        self.endpoints = self.broker.endpoints["http"]
        self.seen: list[dict[str, object]] = []
        #: client connections, closed by stop()
        self.conns: list[http.client.HTTPConnection | RawHttp] = []

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def hostport(self) -> tuple[str, int]:
        host, _, port = self.endpoint.split("://", 1)[1].rpartition(":")
        return host, int(port)

    def denials(self) -> list[dict[str, object]]:
        def drain() -> None:
            while not self.observer.events.empty():
                topic, body, _ = self.observer.events.get_nowait()
                if topic == "$sys.auth.denied":
                    self.seen.append(json.loads(b"".join(body)))

        self.broker.call(drain)
        return self.seen

    def sessions(self) -> int:
        return self.broker.call(lambda: len(self.broker.broker.router.sessions))

    def stats(self) -> dict[str, int]:
        return self.broker.stats()

    def http_stats(self) -> dict[str, int]:
        return self.broker.call(lambda: dict(self.broker.broker.transports["http"].stats))

    def stop(self) -> None:
        for conn in self.conns:
            conn.close()
        self.broker.stop()


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[list[Running]]:
    made: list[Running] = []
    yield made
    for r in made:
        r.stop()


def start(made: list[Running], toml: str, loop_factory: LoopFactory = None) -> Running:
    r = Running(toml, loop_factory)
    made.append(r)
    return r


def https(
    r: Running, pki: Pki, cert: tuple[Path, Path] | None = None
) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    host, port = r.hostport()
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    r.conns.append(conn)
    return conn


def ask(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def curl(*args: str) -> tuple[int, str]:
    """curl's HTTP status and body (``-sS``, no retries); the broker runs on another thread."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# -- HTTPS and bearer tokens -------------------------------------------------------------------


@needs_curl
def test_curl_calls_a_service_over_https_with_a_bearer_token(
    pki: Pki, running: list[Running]
) -> None:
    r = start(running, broker_toml(tls_http(pki)))
    assert r.endpoint.startswith("https://127.0.0.1:")
    url = f"{r.endpoint}/v1/services/echo"
    ca = ("--cacert", str(pki.ca.cert))
    status, body = curl(*ca, "-H", f"Authorization: Bearer {OPS_TOKEN}", "-d", "hello", url)
    assert (status, body) == (200, "echo:hello")
    # no token: 401 with the challenge, and nothing else happens
    sessions = r.sessions()
    status, head = curl(*ca, "-i", "-d", "hello", url)
    assert status == 401
    assert 'www-authenticate: bearer realm="maitred"\n' in head.lower()
    # a token whose role may not call: 403, as any access denial
    status, body = curl(*ca, "-H", f"Authorization: Bearer {VIEW_TOKEN}", "-d", "x", url)
    assert status == 403 and "viewer may not call echo" in body
    assert r.stats()["denied.authenticate.http"] == 1
    assert r.stats()["denied.call"] == 1
    wait_until(lambda: len(r.denials()) == 2, what="both denials published")
    assert [d["action"] for d in r.denials()] == ["authenticate", "call"]
    assert r.sessions() == sessions + 1  # the viewer's REST session; none for the refusal


def test_management_metrics_and_dashboard_api_need_a_token(
    pki: Pki, running: list[Running]
) -> None:
    r = start(running, broker_toml(tls_http(pki)))
    conn = https(r, pki)
    for path in ("/metrics", "/v1/services", "/v1/queues", "/admin/endpoints.json"):
        status, headers, _ = ask(conn, "GET", path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Bearer realm="maitred"'
    assert ask(conn, "GET", "/metrics", VIEW_TOKEN)[0] == 200
    assert ask(conn, "GET", "/v1/services", OPS_TOKEN)[0] == 200
    status, _, body = ask(conn, "GET", "/admin/endpoints.json", OPS_TOKEN)
    assert (status, json.loads(body)) == (200, {"ws": []})
    assert ask(conn, "GET", "/admin/endpoints.json", VIEW_TOKEN)[0] == 403
    # the page itself holds no data: served without credentials so that it can ask for a token
    status, _, page = ask(conn, "GET", "/admin/")
    assert status == 200 and b"sessionStorage" in page and b'name="token"' in page
    # public paths stay open
    assert ask(conn, "GET", "/healthz")[0] == 200
    assert ask(conn, "GET", "/readyz")[0] == 200
    assert r.stats()["denied.authenticate.http"] == 4


def test_sse_takes_the_token_as_access_token_only_for_subscriptions(
    pki: Pki, running: list[Running]
) -> None:
    r = start(running, broker_toml(tls_http(pki)))
    conn = https(r, pki)
    conn.request("GET", f"/v1/topics/news?access_token={OPS_TOKEN}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline() == b": subscribed to news\n"
    conn.close()
    conn = https(r, pki)
    status, headers, _ = ask(conn, "GET", "/v1/topics/news?access_token=wrong")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    # elsewhere the query parameter is no credential
    status, _, _ = ask(conn, "GET", f"/v1/services?access_token={OPS_TOKEN}")
    assert status == 401


BAD_TOKENS = [
    pytest.param("", id="empty"),
    pytest.param("x", id="1-char"),
    pytest.param("t" * 4096, id="4096"),
    pytest.param("t" * 4097, id="4097"),
    pytest.param(OPS_TOKEN[:-1], id="one-short"),
    pytest.param(OPS_TOKEN + "x", id="one-long"),
    pytest.param("a b", id="space"),
]


def test_wrong_tokens_are_401_counted_published_and_open_no_session(
    running: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = start(running, broker_toml('listen = ["127.0.0.1:0"]\nswitch = false'))
    endpoint = r.endpoint
    sessions = r.sessions()
    headers = [f"Bearer {p.values[0]}" for p in BAD_TOKENS] + [
        f"Basic {OPS_TOKEN}",  # another scheme
        "Bearer",
        f"bearer  {OPS_TOKEN}x",
    ]
    for n, header in enumerate(headers, 1):
        conn = RawHttp(endpoint)
        conn.send("POST", "/v1/services/echo", b"hi", {"Authorization": header})
        status, head, body = conn.read()
        conn.close()
        assert status == 401, header[:20]
        assert head["www-authenticate"] == 'Bearer realm="maitred", error="invalid_token"'
        assert json.loads(body)["error"]["reason"] == "the bearer token is not valid"
        assert r.stats()["denied.authenticate.http"] == n
    assert r.sessions() == sessions
    # published once per address and reason every 10 s (two reasons here), the rest counted
    wait_until(lambda: len(r.denials()) == 2, what="each reason published")
    assert {d["action"] for d in r.denials()} == {"authenticate"}
    assert {d["reason"] for d in r.denials()} == {
        "an unknown bearer token",
        "a malformed Authorization header",
    }
    assert r.stats()["denied.authenticate.suppressed"] == len(headers) - 2
    # a good token still works; the wrong ones never reached a log record
    with RestClient(endpoint, token=OPS_TOKEN) as client:
        assert client.call("echo", b"ok") == [b"echo:ok"]
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert OPS_TOKEN[:-1] not in logged and "t" * 64 not in logged


def test_without_a_token_table_the_header_is_not_looked_at(running: list[Running]) -> None:
    """No tokens and a 127.0.0.1 listener: today's behaviour (the default identity), whatever
    Authorization header a client sends."""
    toml = broker_toml('listen = ["127.0.0.1:0"]\nswitch = false\nroles = ["admin"]', tokens=False)
    r = start(running, toml)
    conn = RawHttp(r.endpoint)
    conn.send("POST", "/v1/services/echo", b"hi", {"Authorization": "Bearer whatever"})
    assert conn.read()[0] == 200
    conn.close()
    assert r.stats().get("denied.authenticate.http", 0) == 0


#: a credential in each bad request below: never logged
SECRET = b"s3cr3t-0123456789"
CALL, AUTH = b"/v1/services/echo", b"Authorization: Bearer "


@pytest.mark.parametrize(
    ("line", "raw"),
    [
        pytest.param(CALL, AUTH + b"caf\xc3\xa9" + SECRET, id="utf8"),
        pytest.param(CALL, AUTH + b"\xff\xfe" + SECRET, id="latin1"),
        pytest.param(CALL, AUTH + SECRET + b"\r\n x", id="fold"),
        pytest.param(CALL, AUTH + SECRET + b"\rb", id="cr"),
        pytest.param(CALL, AUTH + b"\x00" + SECRET, id="nul"),
        pytest.param(
            CALL,
            AUTH + SECRET + b"t" * 65536,
            id="64KiB",
        ),
        pytest.param(b"/v1/topics/x?access_token=" + SECRET + b"\x01", b"X-A: b", id="query"),
    ],
)
def test_bad_header_bytes_get_4xx_never_500_and_are_not_logged(
    line: bytes, raw: bytes, running: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = start(running, broker_toml('listen = ["127.0.0.1:0"]\nswitch = false'))
    host, port = r.hostport()
    with socket.create_connection((host, port), 5) as sock:
        sock.sendall(
            b"POST " + line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + raw + b"\r\n\r\nhi"
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401, 431), answer[:200]
    # the broker serves the next client as before
    with RestClient(r.endpoint, token=OPS_TOKEN) as client:
        assert client.call("echo", b"ok") == [b"echo:ok"]
    r.stop()  # writes the rejection summaries
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert SECRET.decode() not in logged


# -- anonymous ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "anonymous"),
    [
        (["127.0.0.1:8080"], True),
        (["[::1]:8080", "unix:/run/m.sock"], True),
        (["localhost:8080"], True),
        (["0.0.0.0:8080"], False),
        (["127.0.0.1:8080", "10.0.0.1:8080"], False),
    ],
)
def test_anonymous_auto_is_true_only_when_every_listener_is_local(
    listen: list[str], anonymous: bool
) -> None:
    config = msgspec.convert({"listen": listen}, HttpConfig)
    assert config.anonymous == "auto" and config.anonymous_allowed() is anonymous
    forced = msgspec.convert({"listen": listen, "anonymous": not anonymous}, HttpConfig)
    assert forced.anonymous_allowed() is (not anonymous)


def test_auth_config_problems() -> None:
    bad = msgspec.convert(
        {
            "tls_cert": "c.pem",
            "tls_client_ca": "ca.pem",
            "public_paths": ["healthz"],
            "unix_mode": "9999",
            "peers": [{"uid": 1, "identity": "a"}, {"uid": 1, "identity": ""}],
            "tokens": [{"sha256": "abc", "identity": "x"}],
            "clients": [{"cn": ""}],
            "tls_handshake_timeout": 0,
        },
        HttpConfig,
    )
    problems = "\n".join(bad.problems())
    for text in (
        "tls_cert and tls_key go together",
        "public_paths: 'healthz'",
        "unix_mode: '9999'",
        "peers[1].uid: 1 is given twice",
        "peers[1].identity: empty",
        "tokens[0].sha256",
        "clients[0].cn: empty",
        "tls_handshake_timeout",
    ):
        assert text in problems


# -- client certificates (mutual TLS) --------------------------------------------------------


@LOOPS
def test_client_certificate_subject_is_the_identity(
    pki: Pki, running: list[Running], loop_factory: LoopFactory
) -> None:
    extra = (
        f'tls_client_ca = "{pki.ca.cert}"\n'
        '[[transports.http.clients]]\ncn = "billing"\nroles = ["admin"]\n'
    )
    r = start(running, broker_toml(tls_http(pki, extra)), loop_factory)
    conn = https(r, pki, pki.billing)
    status, _, body = ask(conn, "POST", "/v1/services/echo", body=b"m")
    assert status == 200, body
    # a certificate the CA signed but with no [[clients]] entry: its CN, no roles -> 403
    status, _, body = ask(https(r, pki, pki.nobody), "POST", "/v1/services/echo", body=b"m")
    assert status == 403 and b"nobody may not call echo" in body
    # a bearer token on a certificate's connection speaks for itself
    status, _, _ = ask(https(r, pki, pki.nobody), "POST", "/v1/services/echo", OPS_TOKEN, b"m")
    assert status == 200
    # no certificate, or one from another CA: the handshake fails (counted), no request
    for cert in (None, pki.rogue):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ask(https(r, pki, cert), "GET", "/healthz")
    wait_until(lambda: r.http_stats().get("http.tls_failed") == 2, what="failed handshakes counted")
    # refused client certificates are authentication failures: counted and published
    assert r.stats()["denied.authenticate.http"] == 2

    def refused() -> list[dict[str, object]]:
        return [d for d in r.denials() if d["action"] == "authenticate"]

    wait_until(lambda: len(refused()) == 2, what="both published")
    assert all(str(d["reason"]).startswith("client certificate: ") for d in refused())


# -- Unix sockets: peer credentials, mode and group --------------------------------------------


@LOOPS
def test_unix_socket_peer_uid_is_the_identity_with_mode_and_group(
    running: list[Running], loop_factory: LoopFactory
) -> None:
    path = short_socket_path()
    uid, gid = os.getuid(), os.getgid()
    http = (
        f'listen = ["unix:{path}"]\nanonymous = false\nunix_mode = "0660"\n'
        f'unix_group = "{gid}"\n'
        f'[[transports.http.peers]]\nuid = {uid}\nidentity = "local-ops"\nroles = ["admin"]\n'
    )
    r = start(running, broker_toml(http, tokens=False), loop_factory)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    with RestClient(f"unix:{path}") as client:
        assert client.call("echo", b"u") == [b"echo:u"]
    # the message switch: its login session is the peer's identity, so it may serve
    with SwitchClient(f"unix:{path}", token="jobs-worker") as sw:
        assert sw.create("jobs") == "jobs"

        def owner() -> set[str]:
            router = r.broker.broker.router
            return {s.identity.name for s in router.sessions.values() if "switch:" in s.label}

        assert "local-ops" in r.broker.call(owner)


def test_unix_socket_peer_without_an_entry_is_refused_when_anonymous_is_off(
    running: list[Running],
) -> None:
    path = short_socket_path()
    http = (
        f'listen = ["unix:{path}"]\nanonymous = false\n'
        f'[[transports.http.peers]]\nuid = {os.getuid() + 1}\nidentity = "other"\n'
    )
    r = start(running, broker_toml(http, tokens=False))
    conn = RawHttp(f"unix:{path}")
    r.conns.append(conn)
    conn.send("GET", "/login/someone")  # the switch's login: no credentials either
    status, head, _ = conn.read()
    assert status == 401 and head["www-authenticate"] == 'Bearer realm="maitred"'
    assert r.stats()["denied.authenticate.http"] == 1


def test_a_switch_login_token_is_not_shared_across_identities(running: list[Running]) -> None:
    """Two callers the transport tells apart may not log in with the same token name (it
    would lend one's session, and so its identity, to the other)."""
    path = short_socket_path()
    http = (
        f'listen = ["unix:{path}"]\nanonymous = false\n'
        f'[[transports.http.peers]]\nuid = {os.getuid()}\nidentity = "local-ops"\n'
        'roles = ["admin"]\n'
    )
    r = start(running, broker_toml(http))
    with SwitchClient(f"unix:{path}", token="shared"):
        conn = RawHttp(f"unix:{path}")
        conn.send("GET", "/login/shared", headers={"Authorization": f"Bearer {VIEW_TOKEN}"})
        status, _, body = conn.read()
        conn.close()
        assert status == 403 and b"in use by another identity" in body
    assert r.sessions() > 0


# -- TLS: key files, reload, bad handshakes ------------------------------------------------------


def test_a_key_readable_by_others_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0o644)
    http = f'listen = ["127.0.0.1:0"]\ntls_cert = "{pki.server.cert}"\ntls_key = "{key}"\n'
    with pytest.raises(MaitredError) as err:
        BrokerThread(broker_toml(http))
    assert f"run 'chmod 600 {key}'" in str(err.value) and "tls_key" in str(err.value)


def test_reload_loads_a_new_certificate_and_keeps_open_connections(
    pki: Pki, running: list[Running], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    key.chmod(0o600)
    toml = broker_toml(
        'listen = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    r = start(running, toml)
    old = https(r, pki)
    assert ask(old, "GET", "/v1/services", OPS_TOKEN)[0] == 200

    def subject(conn: http.client.HTTPSConnection) -> str:
        assert conn.sock is not None
        peer = conn.sock.getpeercert()  # type: ignore[union-attr]
        return dict(x[0] for x in peer["subject"])["commonName"]

    assert subject(old) == "localhost"
    shutil.copy(pki.server2.cert, cert)
    shutil.copy(pki.server2.key, key)
    result = r.broker.call(lambda: r.broker.broker.reload(parse_config(toml, "a.toml")))
    assert "transports.http.tls_cert" in result["applied"], result
    new = https(r, pki)
    assert ask(new, "GET", "/v1/services", OPS_TOKEN)[0] == 200
    assert subject(new) == "localhost-2"
    # the connection opened before the reload is still up and served
    assert ask(old, "GET", "/v1/services", OPS_TOKEN)[0] == 200
    assert subject(old) == "localhost"


def test_reload_refuses_a_key_readable_by_others(
    pki: Pki, running: list[Running], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    key.chmod(0o600)
    http = f'listen = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    r = start(running, broker_toml(http))
    bad = tmp_path / "bad.key"
    shutil.copy(pki.server2.key, bad)
    bad.chmod(0o640)
    new = broker_toml(f'listen = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{bad}"\n')
    with pytest.raises(Exception, match=r"chmod 600"):
        r.broker.call(lambda: r.broker.broker.reload(parse_config(new, "a.toml")))


@LOOPS
def test_plain_http_on_the_https_port_is_counted_and_logged_once(
    pki: Pki, running: list[Running], caplog: pytest.LogCaptureFixture, loop_factory: LoopFactory
) -> None:
    toml = broker_toml(tls_http(pki, "tls_handshake_timeout = 0.3\n"))
    r = start(running, toml, loop_factory)
    for _ in range(3):
        conn = RawHttp("http://" + r.endpoint.removeprefix("https://"))
        conn.send("GET", "/healthz")
        with pytest.raises((ConnectionError, OSError)):
            conn.read()
        conn.close()
    wait_until(lambda: r.http_stats().get("http.tls_plaintext") == 3, what="plain text counted")
    assert r.http_stats().get("http.tls_failed", 0) == 0
    # an https client is served as before
    assert ask(https(r, pki), "GET", "/healthz")[0] == 200
    # once every accepted connection is settled, none of the three counts as incomplete too
    transport = r.broker.broker.transports["http"]
    wait_until(lambda: not r.broker.call(lambda: len(transport._handshaking)), timeout=5)
    assert r.http_stats().get("http.tls_incomplete", 0) == 0
    caplog.set_level(logging.WARNING, "maitred.transports.http")
    r.stop()
    summaries = [m for m in caplog.messages if "plain-text (not TLS)" in m]
    assert len(summaries) == 1 and "3 plain-text" in summaries[0]


@LOOPS
def test_stalled_tls_handshakes_are_closed_after_the_timeout(
    pki: Pki, running: list[Running], loop_factory: LoopFactory
) -> None:
    toml = broker_toml(tls_http(pki, "tls_handshake_timeout = 0.3\n"))
    r = start(running, toml, loop_factory)
    host, port = r.hostport()
    # nothing at all, and half a TLS record header (a slowloris on the handshake)
    for first in (b"", b"\x16\x03\x01"):
        with socket.create_connection((host, port), 5) as sock:
            sock.sendall(first)
            sock.settimeout(5)
            try:
                assert sock.recv(1024) == b""  # closed by the broker, long before 5 s
            except ConnectionResetError:
                pass
    # a good client is served while and after
    assert ask(https(r, pki), "GET", "/v1/services", OPS_TOKEN)[0] == 200
    wait_until(
        lambda: r.http_stats().get("http.tls_incomplete") == 2, timeout=5, what="both counted"
    )
    assert r.http_stats().get("http.tls_failed", 0) == 0


# -- the command line -----------------------------------------------------------------------


def test_maitred_call_over_https_with_token_and_cacert(
    pki: Pki, running: list[Running], capsys: pytest.CaptureFixture[str]
) -> None:
    r = start(running, broker_toml(tls_http(pki)))
    args = ["call", "-b", r.endpoint, "--cacert", str(pki.ca.cert), "echo", "hi"]
    assert cli_main([*args, "--token", OPS_TOKEN]) == 0
    assert capsys.readouterr().out.strip() == "echo:hi"
    assert cli_main(args) == 6  # 401: refused (EXIT_REFUSED)
    assert "credentials are needed" in capsys.readouterr().err
    assert "MAITRED_TOKEN" not in os.environ  # --token is not left for programs run later
    # the environment variable instead of --token
    os.environ["MAITRED_TOKEN"] = OPS_TOKEN
    try:
        assert cli_main(args) == 0
    finally:
        del os.environ["MAITRED_TOKEN"]


def test_maitred_token_prints_a_token_and_its_table_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["token", "--identity", "ops", "--role", "admin", "--role", "x"]) == 0
    token, comment, *toml = capsys.readouterr().out.splitlines()
    assert comment.startswith("#") and len(token) >= 43
    entry = parse_config("\n".join(toml), "t.toml").transports["http"]["tokens"][0]
    assert entry == {"sha256": token_digest(token), "identity": "ops", "roles": ["admin", "x"]}


def test_async_client_sends_the_token_over_https(pki: Pki, running: list[Running]) -> None:
    from maitred.transports.http.client import AsyncRestClient

    r = start(running, broker_toml(tls_http(pki)))

    async def main() -> list[bytes]:
        async with AsyncRestClient(r.endpoint, token=OPS_TOKEN, cacert=str(pki.ca.cert)) as c:
            return await c.call("echo", b"a")

    assert asyncio.run(main()) == [b"echo:a"]


# -- the dashboard ------------------------------------------------------------------------------


def test_dashboard_asks_for_a_token_when_its_api_answers_401(
    running: list[Running], chromium: DevTools
) -> None:
    toml = (
        '[transports.mdp]\nenabled = false\n[store]\nbackend = "memory"\n'
        '[transports.http]\nlisten = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
        + tokens_toml()
        + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
    )
    r = start(running, toml)
    chromium.open(f"{r.endpoint}/admin/?refresh=0.25", width=1000, height=700)
    chromium.wait_js(
        "/needs an HTTP token/.test(document.getElementById('status').textContent)",
        timeout=10,
        what="the token prompt",
    )
    assert r.stats()["denied.authenticate.http"] == 1  # endpoints.json; the page was served
    # the operator types the token and connects: the page goes live, and keeps the token for
    # this tab only
    chromium.evaluate(
        "(() => { const f = document.getElementById('settings');"
        f" f.elements.token.value = {json.dumps(OPS_TOKEN)}; f.requestSubmit(); }})()"
    )
    chromium.wait_js(
        "document.getElementById('status').dataset.state === 'live'",
        timeout=10,
        what="the live dashboard",
    )
    assert chromium.evaluate("window.sessionStorage.getItem('maitred.token')") == OPS_TOKEN
    assert r.stats()["denied.authenticate.http"] == 1


def test_dashboard_logs_in_to_the_websocket_transport_with_its_token(
    running: list[Running], chromium: DevTools
) -> None:
    """The WebSocket transport knows the token and no key the page has: the page goes live
    with the token alone (``?access_token=``, a hello without a key)."""
    ws_tokens = (
        "[[transports.ws.keys]]\nkey = 'a-key-the-page-does-not-know'\n"
        f'[[transports.ws.tokens]]\nsha256 = "{token_digest(OPS_TOKEN)}"\n'
        'identity = "ops"\nroles = ["admin"]\n'
    )
    toml = (
        '[transports.mdp]\nenabled = false\n[store]\nbackend = "memory"\n'
        '[transports.http]\nlisten = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
        + tokens_toml()
        + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\nanonymous = false\n'
        + ws_tokens
    )
    r = start(running, toml)
    chromium.open(f"{r.endpoint}/admin/?refresh=0.25", width=1000, height=700)
    # the page is loaded and asks for the token (its form handler is in place)
    chromium.wait_js(
        "/needs an HTTP token/.test(document.getElementById('status').textContent)",
        timeout=10,
        what="the token prompt",
    )
    chromium.evaluate(
        "(() => { const f = document.getElementById('settings');"
        f" f.elements.token.value = {json.dumps(OPS_TOKEN)}; f.requestSubmit(); }})()"
    )
    chromium.wait_js(
        "document.getElementById('status').dataset.state === 'live'",
        timeout=10,
        what="the live dashboard, logged in with the token",
    )
    assert r.stats().get("denied.authenticate.ws", 0) == 0  # the token, at the first try


def test_sighup_loads_a_renewed_certificate_without_dropping_connections(
    pki: Pki, tmp_path: Path
) -> None:
    """``maitred serve`` in a process: the certificate is renewed in place (same file names)
    and the process gets SIGHUP, as ``systemctl reload`` does."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    key.chmod(0o600)
    config = tmp_path / "maitred.toml"
    config.write_text(
        broker_toml(
            'listen = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
            f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        )
    )
    serve = ServeProcess("-c", str(config))
    try:
        endpoint = serve.endpoint("http")
        host, _, port = endpoint.removeprefix("https://").rpartition(":")
        context = ssl.create_default_context(cafile=str(pki.ca.cert))

        def connect() -> http.client.HTTPSConnection:
            conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
            conn.connect()
            return conn

        def cn(conn: http.client.HTTPSConnection) -> str:
            peer = conn.sock.getpeercert()  # type: ignore[union-attr]
            return str(dict(x[0] for x in peer["subject"])["commonName"])

        old = connect()
        try:
            assert ask(old, "GET", "/healthz")[0] == 200 and cn(old) == "localhost"
            shutil.copy(pki.server2.cert, cert)
            shutil.copy(pki.server2.key, key)
            serve.send_signal(signal.SIGHUP)

            def renewed() -> bool:
                conn = connect()
                try:
                    return cn(conn) == "localhost-2"
                finally:
                    conn.close()

            wait_until(renewed, timeout=10, what="the renewed certificate")
            assert ask(old, "GET", "/healthz")[0] == 200 and cn(old) == "localhost"
        finally:
            old.close()
    finally:
        assert serve.stop() == 0


def test_unix_group_by_an_unknown_name_is_refused_at_start() -> None:
    path = short_socket_path()
    http = f'listen = ["unix:{path}"]\nunix_group = "no-such-group-maitred"\n'
    with pytest.raises(MaitredError, match="unix_group 'no-such-group-maitred': no such group"):
        BrokerThread(broker_toml(http, tokens=False))
    assert not os.path.exists(path)  # the listener is closed and its file removed


def test_unix_group_by_name(running: list[Running]) -> None:
    import grp

    path = short_socket_path()
    name = grp.getgrgid(os.getgid()).gr_name
    start(running, broker_toml(f'listen = ["unix:{path}"]\nunix_group = "{name}"\n', tokens=False))
    assert os.stat(path).st_gid == os.getgid()


def test_check_names_tls_files_that_would_fail_at_start(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "maitred.toml"
    missing = tmp_path / "clients-ca.pem"
    config.write_text(
        broker_toml(
            f'listen = ["127.0.0.1:0"]\ntls_cert = "{pki.server.key}"\n'
            f'tls_key = "{pki.server.cert}"\ntls_client_ca = "{missing}"\n'
        )
    )
    assert cli_main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "transports.http.tls_cert:" in err and "are swapped" in err
    assert f"transports.http.tls_client_ca: '{missing}': no such file" in err


def test_switch_shutdown_with_its_secret_when_anonymous_is_off(pki: Pki, tmp_path: Path) -> None:
    """``POST /shutdown``'s Authorization header is the shutdown secret, not a bearer token:
    the connection logs in with a token, then shuts the broker down with the secret."""
    secret = tmp_path / "shutdown.secret"
    secret.write_text("stop-now-0123456789\n")
    secret.chmod(0o600)
    extra = f'shutdown_secret_file = "{secret}"\n'
    manage = '[[access.rules]]\nwho = ["role:admin"]\nactions = ["manage"]\nnames = ["$sys.>"]\n'
    config = tmp_path / "maitred.toml"
    config.write_text(broker_toml(tls_http(pki, extra).replace("switch = false\n", "")) + manage)
    serve = ServeProcess("-c", str(config))
    try:
        endpoint = serve.endpoint("http")
        # without a bearer token the switch's login is refused like any request
        with pytest.raises(Exception, match="401"):
            SwitchClient(endpoint, cacert=str(pki.ca.cert), timeout=5)
        with SwitchClient(endpoint, bearer=OPS_TOKEN, cacert=str(pki.ca.cert), timeout=5) as sw:
            sw.shutdown("stop-now-0123456789")
        assert serve.proc.wait(20) == 0
    finally:
        serve.close()
