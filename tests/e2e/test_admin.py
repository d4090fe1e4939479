"""The live dashboard (``GET /admin/``, ``transports/http/admin.py`` and ``static/admin.html``).

Plain HTTP: the page, the redirect, the endpoint list, the ``admin`` switch and the access gate.
In headless Chromium (``tests/e2e/chromium.py``): the page finds the ws transport by itself,
speaks the JSON dialect, and shows a raw MDP worker arriving, working and leaving, the rate and
totals of the calls it serves, and the ``$sys.`` events; a screenshot of it is saved to
``$MAITRED_ARTIFACTS`` (else the test's ``tmp_path``) as ``admin-dashboard.png``.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.e2e.chromium import DevTools, chromium_fixture  # noqa: F401 (the fixture)
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until

TOML = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
{extra}

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""

#: the REST identity may not call the MMI: the dashboard is refused
DENY_MMI = """
[[access.rules]]
allow = false
who = ["anonymous"]
actions = ["call"]
names = ["mmi.>"]
"""


def http_get(base: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects: (status, headers, body)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _client_port(endpoint: str) -> int:
    """The local port of the one established TCP connection to ``endpoint`` (tcp://HOST:PORT),
    read from the kernel's table: what the broker must report as its peer's address."""
    server = int(endpoint.rsplit(":", 1)[1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(remote.split(":")[1], 16) == server:
            ports.append(int(local.split(":")[1], 16))
    assert len(ports) == 1, ports
    return ports[0]


@pytest.fixture
def web_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(TOML.format(extra=""))


def test_dashboard_is_served(web_broker: BrokerThread) -> None:
    http = web_broker.endpoints["http"][0]
    status, headers, body = http_get(http, "/admin/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-cache"
    # only the page's own script runs (by hash; the browser test shows that it does run)
    assert "script-src 'sha256-" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert b"<title>maitred dashboard</title>" in body
    assert b'"maitred.json"' in body and b"mmi.services" in body and b"$sys.>" in body
    status, headers, _ = http_get(http, "/admin")
    assert status == 301 and headers["location"] == "/admin/"
    status, headers, body = http_get(http, "/admin/endpoints.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"ws": web_broker.endpoints["ws"]}


def test_dashboard_can_be_turned_off(make_broker: Callable[..., BrokerThread]) -> None:
    broker = make_broker(TOML.format(extra="admin = false"))
    http = broker.endpoints["http"][0]
    for path in ("/admin/", "/admin", "/admin/endpoints.json"):
        status, _, body = http_get(http, path)
        assert status == 404, (path, body)


def test_dashboard_needs_the_right_to_call_the_mmi(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(TOML.format(extra="") + DENY_MMI)
    http = broker.endpoints["http"][0]
    for path in ("/admin/", "/admin/endpoints.json"):
        status, headers, body = http_get(http, path)
        assert status == 403, (path, body)
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == {
            "error": {"code": "forbidden", "reason": "anonymous may not call mmi.services"}
        }
    assert broker.stats()["denied.call"] == 2
    # the redirect itself shows nothing
    status, _, _ = http_get(http, "/admin")
    assert status == 301


def _cell(service: str, column: str) -> str:
    """JavaScript: the text of one cell of the services table (or null)."""
    row = f'#services tr[data-service="{service}"] td.{column}'
    return f"document.querySelector({json.dumps(row)})?.textContent"


def test_dashboard_shows_workers_calls_and_events_live(
    web_broker: BrokerThread, ctx: zmq.Context[Any], chromium: DevTools, tmp_path: Path
) -> None:
    http = web_broker.endpoints["http"][0]
    # no ?ws=: the page finds the ws transport through /admin/endpoints.json
    chromium.open(f"{http}/admin/?refresh=0.25", width=1280, height=1000)
    chromium.wait_for('#status[data-state="live"]', timeout=10)
    # its own $sys.> subscription is in the topics table; no service yet
    html = chromium.wait_for('#topics tr[data-topic="$sys.>"]', timeout=5)
    assert "no service" in html, html

    worker = RawWorker(ctx, web_broker.endpoint, "rfc", b"echo")
    worker.ready()
    html = chromium.wait_for('#workers tr[data-service="echo"]', timeout=5)
    html = chromium.wait_js(
        f"{_cell('echo', 'workers')} === '1'"
        " && document.querySelector('#workers tr[data-service=\"echo\"] .state')"
        "?.textContent === 'idle'"
        " && document.querySelector('#events li[data-topic=\"$sys.worker.ready\"]')",
        timeout=5,
        what="the worker in the tables and its $sys.worker.ready event",
    )
    assert '<td class="transport text">mdp</td>' in html, html
    assert "service=echo" in html, html  # the event's payload
    # the worker is named by its transport and its address (the broker's id in the title)
    address = f"127.0.0.1:{_client_port(web_broker.endpoint)}"
    assert '<td class="worker text name" title="mdp worker mdp:' in html, html
    assert f' at {address} of anonymous">mdp · {address}</td>' in html, html

    # three calls from a raw MDP client: totals, and a request rate over the sliding window
    client = RawClient(ctx, web_broker.endpoint, "rfc")
    for n in range(3):
        client.send(b"echo", b"hello %d" % n)
        addr, body = worker.request(timeout=5)
        worker.final(addr, *body)
        assert client.recv(timeout=5) == (True, [b"hello %d" % n])
    chromium.wait_js(
        f"{_cell('echo', 'replies')} === '3' && {_cell('echo', 'requests')} === '3'"
        f" && Number({_cell('echo', 'req-rate')}) > 0"
        " && Number(document.getElementById('total-req-rate').textContent) > 0"
        " && Number(document.querySelector("
        "'#transports-table tr[data-transport=\"mdp\"] td.served-rate')?.textContent) > 0",
        timeout=5,
        what="the calls' totals and rates",
    )
    # latency (mmi.services' latency.mean_ms, p50_ms, p99_ms) in milliseconds
    assert chromium.evaluate(
        " && ".join(
            f"/^[0-9.]+ ms$/.test({_cell('echo', c)})" for c in ("lat-mean", "lat-p50", "lat-p99")
        )
    ), chromium.evaluate("document.querySelector('#services tbody').outerHTML")

    # a fourth call held by the worker: it shows as busy, the request as in flight
    client.send(b"echo", b"held")
    addr, body = worker.request(timeout=5)
    chromium.wait_js(
        "document.querySelector('#workers tr[data-service=\"echo\"] .state')"
        "?.textContent === 'busy'"
        f" && {_cell('echo', 'inflight')} === '1'"
        " && document.querySelector('#queues tr[data-queue=\"echo\"] td.inflight')"
        "?.textContent === '1'",
        timeout=5,
        what="the busy worker",
    )
    png = chromium.screenshot(
        Path(os.environ.get("MAITRED_ARTIFACTS") or tmp_path) / "admin-dashboard.png"
    )
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    worker.final(addr, *body)
    assert client.recv(timeout=5) == (True, [b"held"])

    # the worker leaves: its row goes, the service stays greyed with its last totals, the
    # events say so
    chromium.wait_js(f"{_cell('echo', 'replies')} === '4'", timeout=5, what="4 replies")
    worker.disconnect()
    wait_until(
        lambda: web_broker.call(lambda: "echo" not in web_broker.broker.router.services),
        what="the service to be forgotten",
    )
    html = chromium.wait_js(
        "!document.querySelector('#workers tr[data-worker]')"
        " && !document.querySelector('#services tr[data-service]:not(.gone)')"
        " && document.querySelector('#services tr.gone[data-service=\"echo\"] td.replies')"
        "?.textContent === '4'"
        " && document.querySelector('#events li[data-topic=\"$sys.service.offline\"]')",
        timeout=5,
        what="the worker's departure, the service's totals kept",
    )
    assert 'data-topic="$sys.worker.gone"' in html, html
    assert chromium.evaluate(_cell("echo", "requests")) == "4"


def test_dashboard_shows_what_its_key_may_not_see(
    web_broker: BrokerThread, chromium: DevTools
) -> None:
    # plugh: middleman's untrusted dev key, a restricted identity: no MMI, no $sys.> for it
    http = web_broker.endpoints["http"][0]
    chromium.open(f"{http}/admin/?refresh=0.25#key=plugh", width=1280, height=1000)
    # the page's own calls are refused: the badge is amber (degraded), not green
    html = chromium.wait_js(
        "document.getElementById('status').dataset.state === 'degraded'"
        " && /refused: mmi.services/.test(document.getElementById('status').textContent)"
        " && /403/.test(document.getElementById('services-note').textContent)"
        " && /403/.test(document.getElementById('workers-note').textContent)"
        " && /403/.test(document.getElementById('events-note').textContent)",
        timeout=10,
        what="the denials on the page",
    )
    assert "(untrusted key)" in html, html
    assert "client may not call mmi.services" in html, html
    assert not web_broker.call(lambda: web_broker.broker.router.services)
    assert web_broker.stats()["denied.call"] >= 5


def test_dashboard_shows_the_first_page_of_a_long_listing(
    make_broker: Callable[..., BrokerThread], ctx: zmq.Context[Any], chromium: DevTools
) -> None:
    # mmi_max_items = 2: three services make mmi.services answer in its page form
    broker = make_broker("[broker]\nmmi_max_items = 2\n" + TOML.format(extra=""))
    workers = [RawWorker(ctx, broker.endpoint, "rfc", name) for name in (b"a1", b"a2", b"a3")]
    for worker in workers:
        worker.ready()
    wait_until(
        lambda: broker.call(lambda: len(broker.broker.router.services)) == 3,
        what="three services",
    )
    http = broker.endpoints["http"][0]
    chromium.open(f"{http}/admin/?refresh=0.25", width=1280, height=800)
    html = chromium.wait_js(
        "document.querySelectorAll('#services tr[data-service]').length === 2"
        " && /showing 2 of 3/.test(document.getElementById('services-note').textContent)",
        timeout=10,
        what="the first page of services and a note that says so",
    )
    assert chromium.evaluate("document.getElementById('queues-note').textContent") == (
        "mmi.queues: showing 2 of 3"
    )
    assert 'data-service="a1"' in html and 'data-service="a3"' not in html, html
    for worker in workers:
        worker.disconnect()


def status_of(chromium: DevTools) -> tuple[str, str]:
    value = chromium.evaluate(
        "[document.getElementById('status').dataset.state,"
        " document.getElementById('status').textContent]"
    )
    return value[0], value[1]


def test_dashboard_without_a_ws_transport_says_so_and_connects_nowhere(
    make_broker: Callable[..., BrokerThread], chromium: DevTools
) -> None:
    broker = make_broker('[transports.http]\nlisten = ["127.0.0.1:0"]\nswitch = false\n')
    http = broker.endpoints["http"][0]
    chromium.open(f"{http}/admin/?refresh=0.25", width=1000, height=600)
    chromium.wait_js(
        "document.getElementById('status').dataset.state === 'error'",
        timeout=10,
        what="the error state",
    )
    _, text = status_of(chromium)
    assert "this broker has no WebSocket transport" in text, text
    assert "enable [transports.ws]" in text
    # no guessed URL: the page never tried another port
    assert chromium.evaluate("document.getElementById('settings').elements.ws.value") == ""


def test_dashboard_says_when_its_key_is_refused(
    web_broker: BrokerThread, chromium: DevTools
) -> None:
    http = web_broker.endpoints["http"][0]
    chromium.open(f"{http}/admin/?refresh=0.25#key=wrong", width=1000, height=600)
    chromium.wait_js(
        "/refused the key/.test(document.getElementById('status').textContent)",
        timeout=10,
        what="the refused key",
    )
    state, text = status_of(chromium)
    assert state == "error" and "(bad key)" in text and "Settings" in text, text


def test_dashboard_over_an_untrusted_wss_certificate_says_why(
    make_broker: Callable[..., BrokerThread], chromium: DevTools, tmp_path: Path
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    broker = make_broker(TOML.format(extra="") + f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    http = broker.endpoints["http"][0]
    (wss,) = broker.endpoints["ws"]
    assert wss.startswith("wss://")
    chromium.open(f"{http}/admin/?refresh=0.25", width=1000, height=600)
    chromium.wait_js(
        "/not trusted by this browser/.test(document.getElementById('status').textContent)",
        timeout=15,
        what="the TLS hint",
    )
    state, text = status_of(chromium)
    assert state == "error"
    assert f"cannot open {wss}" in text and wss.replace("wss:", "https:") in text, text


def test_dashboard_badge_turns_amber_on_denied_calls(
    make_broker: Callable[..., BrokerThread],
    ctx: zmq.Context[Any],
    chromium: DevTools,
    tmp_path: Path,
) -> None:
    deny = '[[access.rules]]\nallow = false\nwho = ["anonymous"]\nnames = ["secret.>"]\n'
    broker = make_broker(TOML.format(extra="") + deny)
    http = broker.endpoints["http"][0]
    chromium.open(f"{http}/admin/?refresh=0.25&window=30", width=1280, height=800)
    chromium.wait_for('#status[data-state="live"]', timeout=10)
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"secret.x", b"hi")
    _, body = client.recv(timeout=5)
    assert body[0] == b"403", body
    chromium.wait_js(
        "document.getElementById('status').dataset.state === 'degraded'",
        timeout=10,
        what="the amber badge",
    )
    _, text = status_of(chromium)
    assert "1 denied" in text and "in the last 30 s" in text, text
    png = chromium.screenshot(
        Path(os.environ.get("MAITRED_ARTIFACTS") or tmp_path) / "admin-degraded.png"
    )
    assert png.startswith(b"\x89PNG")
