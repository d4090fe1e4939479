"""The authentication conformance table (docs/reference/access.md, "Who each transport can
identify"): every transport × {no credentials, wrong credentials, valid credentials of each
role} → the outcome in that transport's own form.

Each row is run by its transport's runner against one broker with one ``[access]`` table: the
role ``callers`` may call ``svc.echo``, the role ``viewers`` may only observe. For every row:

* ``refused`` (no or wrong credentials): the transport's refusal form, no session opened,
  ``denied.authenticate.<transport>`` counted, ``$sys.auth.denied`` published with action
  ``authenticate``;
* ``denied`` (a valid identity without the right): the transport's access denial, counted as
  ``denied.call`` and published with action ``call``;
* ``allowed``: the call is answered, nothing counted;

and in every case a peer connected before (a keep-alive connection that called once) calls
again undisturbed.

To add a transport: its rows in ``ROWS`` and a runner in ``RUNNERS``.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest

from maitred.core.access import Identity
from maitred.core.credentials import token_digest
from maitred.core.local import LocalClient, LocalWorker
from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.tls_certs import Pki, make_pki

#: valid credentials of each role, per transport
CALLER_TOKEN = "caller-token-0123456789abcdefghijklmnopqrstuvwx"
VIEWER_TOKEN = "viewer-token-0123456789abcdefghijklmnopqrstuvwx"
WORKERS = Identity("workers", frozenset({"workers"}))

ACCESS = """
[access]
default = "deny"

[[access.rules]]
who = ["role:workers"]

[[access.rules]]
who = ["role:callers"]
actions = ["call"]
names = ["svc.echo"]

[[access.rules]]
who = ["role:viewers"]
actions = ["observe"]
names = [">"]
"""


class Row(NamedTuple):
    transport: str
    #: "none", "wrong", or the role whose valid credentials are presented
    credentials: str
    #: "refused", "denied" or "allowed"
    outcome: str
    #: the transport's own form of the outcome (what the peer sees)
    form: str


ROWS = [
    Row("http", "none", "refused", '401 WWW-Authenticate: Bearer realm="maitred"'),
    Row("http", "wrong", "refused", '401 WWW-Authenticate: ...error="invalid_token"'),
    Row("http", "callers", "allowed", "200"),
    Row("http", "viewers", "denied", "403"),
]


class Seen(NamedTuple):
    """What a runner observed of one attempt."""

    form: str
    answered: bool


class Broker:
    """One broker for every transport's rows, with a worker for ``svc.echo`` and an observer
    of ``$sys.auth.denied``."""

    def __init__(self, pki: Pki) -> None:
        toml = (
            '[transports.mdp]\nenabled = false\n[store]\nbackend = "memory"\n'
            '[transports.http]\nlisten = ["127.0.0.1:0"]\nswitch = false\nanonymous = false\n'
            f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n'
            "[[transports.http.tokens]]\n"
            f'sha256 = "{token_digest(CALLER_TOKEN)}"\nidentity = "app"\nroles = ["callers"]\n'
            "[[transports.http.tokens]]\n"
            f'sha256 = "{token_digest(VIEWER_TOKEN)}"\nidentity = "dash"\nroles = ["viewers"]\n'
            + ACCESS
        )
        self.thread = BrokerThread(toml)
        self.pki = pki

        async def setup() -> LocalClient:
            async def echo(body: list[bytes]) -> list[bytes]:
                return [b"echo:" + b"".join(body)]

            LocalWorker(self.thread.broker, "svc.echo", echo, identity=WORKERS)
            observer = LocalClient(self.thread.broker, WORKERS, label="observer")
            observer.subscribe("$sys.auth.denied")
            return observer

        self.observer: LocalClient = self.thread.run(setup())
        self.published: list[dict[str, object]] = []

    def denials(self) -> list[dict[str, object]]:
        def drain() -> None:
            while not self.observer.events.empty():
                _, body, _ = self.observer.events.get_nowait()
                self.published.append(json.loads(b"".join(body)))

        self.thread.call(drain)
        return self.published

    def sessions(self) -> int:
        return self.thread.call(lambda: len(self.thread.broker.router.sessions))

    def stats(self) -> dict[str, int]:
        return self.thread.stats()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(make_pki(tmp_path_factory.mktemp("pki")))
    yield b
    b.thread.stop()


# -- HTTP -------------------------------------------------------------------------------------

HTTP_CREDENTIALS = {
    "none": None,
    "wrong": "not-a-token-anyone-was-given-0123456789abcdef",
    "callers": CALLER_TOKEN,
    "viewers": VIEWER_TOKEN,
}


def _https(broker: Broker) -> http.client.HTTPSConnection:
    (endpoint,) = broker.thread.endpoints["http"]
    host, _, port = endpoint.removeprefix("https://").rpartition(":")
    context = ssl.create_default_context(cafile=str(broker.pki.ca.cert))
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=5)


def _call(conn: http.client.HTTPConnection, token: str | None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request("POST", "/v1/services/svc.echo", body=b"hi", headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.getheader("WWW-Authenticate") or "", resp.read()


class HttpRunner:
    """A keep-alive HTTPS connection calls once before and once after each row's attempt."""

    def __init__(self, broker: Broker) -> None:
        self.other = _https(broker)
        assert _call(self.other, CALLER_TOKEN)[0] == 200
        self.broker = broker

    def attempt(self, row: Row) -> Seen:
        conn = _https(self.broker)
        try:
            status, challenge, body = _call(conn, HTTP_CREDENTIALS[row.credentials])
        finally:
            conn.close()
        if status == 401:
            form = "401 WWW-Authenticate: " + (
                '...error="invalid_token"' if 'error="invalid_token"' in challenge else challenge
            )
        else:
            form = str(status)
        return Seen(form, body == b"echo:hi")

    def undisturbed(self) -> bool:
        return _call(self.other, CALLER_TOKEN) == (200, "", b"echo:hi")

    def close(self) -> None:
        self.other.close()


RUNNERS: dict[str, Callable[[Broker], HttpRunner]] = {"http": HttpRunner}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.transport}-{r.credentials}")
def test_authentication(row: Row, broker: Broker) -> None:
    runner = RUNNERS[row.transport](broker)
    try:
        stats, published = broker.stats(), len(broker.denials())
        sessions = broker.sessions()
        seen = runner.attempt(row)
        assert seen.form == row.form
        assert seen.answered == (row.outcome == "allowed")
        after = broker.stats()

        def more(key: str) -> int:
            return after.get(key, 0) - stats.get(key, 0)

        if row.outcome == "refused":
            assert more(f"denied.authenticate.{row.transport}") == 1
            assert broker.sessions() == sessions  # no session for a refused peer
        else:
            assert more(f"denied.authenticate.{row.transport}") == 0
        assert more("denied.call") == (row.outcome == "denied")
        expected = {"refused": "authenticate", "denied": "call", "allowed": None}[row.outcome]
        if expected is None:
            assert len(broker.denials()) == published
        else:
            wait_until(lambda: len(broker.denials()) == published + 1, what="the denial event")
            event = broker.denials()[-1]
            assert (event["action"], event["transport"]) == (expected, row.transport)
        assert runner.undisturbed()
    finally:
        runner.close()


def test_the_table_covers_every_transport_and_credential(broker: Broker) -> None:
    for transport in RUNNERS:
        kinds = {r.credentials for r in ROWS if r.transport == transport}
        assert {"none", "wrong"} <= kinds and len(kinds) >= 4, transport
