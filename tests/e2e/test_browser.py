"""The example page (``/examples/json-dialect.html``, served by the http transport) in a real
browser: headless Chromium (Debian's ``chromium``) loads it from an embedded broker, the page
speaks the maitred.json dialect over the ws transport, calls a service served by a raw MDP
worker, and lists the ``$sys.`` events it sees.

Chromium is driven through the DevTools protocol by the shared helper ``tests/e2e/chromium.py``
(why not ``--dump-dom``, and the skip/fail rule without chromium, are explained there).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from tests.e2e.chromium import DevTools, chromium_fixture  # noqa: F401 (the fixture)
from tests.e2e.helpers import BrokerThread, RawWorker, wait_until

TOML = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""

PAGE = "json-dialect.html"


@pytest.fixture
def web_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(TOML)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_examples_are_served(web_broker: BrokerThread) -> None:
    http = web_broker.endpoints["http"][0]
    status, ctype, body = get(f"{http}/examples/{PAGE}")
    assert status == 200
    assert ctype.startswith("text/html")
    assert b"maitred.json" in body and b"new WebSocket" in body
    status, ctype, body = get(f"{http}/examples/")
    assert status == 200 and f'href="{PAGE}"'.encode() in body
    status, _, _ = get(f"{http}/examples/nope.html")
    assert status == 404
    status, _, _ = get(f"{http}/examples/..%2Fadapter.py")
    assert status == 404


def test_page_calls_a_service_and_lists_sys_events(
    web_broker: BrokerThread, ctx: zmq.Context[Any], chromium: DevTools
) -> None:
    worker = RawWorker(ctx, web_broker.endpoint, "rfc", b"echo")
    worker.ready()

    def has_worker() -> bool:
        svc = web_broker.broker.router.services.get("echo")
        return svc is not None and len(svc.workers) == 1

    wait_until(lambda: web_broker.call(has_worker), what="the MDP worker")
    http = web_broker.endpoints["http"][0]
    query = urllib.parse.urlencode(
        {"ws": web_broker.endpoints["ws"][0], "service": "echo", "payload": '{"n": 7}'}
    )
    chromium.open(f"{http}/examples/{PAGE}?{query}")

    # the page's request reaches the worker (an MDP/0.2 worker: one partial, then the final)
    addr, body = worker.request(timeout=10)
    assert json.loads(body[0]) == {"n": 7}
    worker.partial(addr, b'{"progress": 50}')
    worker.final(addr, b'{"echo": {"n": 7}, "from": "mdp"}')

    html = chromium.wait_for("#done", timeout=10)
    assert 'id="status" class="">replied</span>' in html, html
    assert '(partial) {"progress":50}' in html, html
    assert 'reply: {"echo":{"n":7},"from":"mdp"}' in html, html
    # the page subscribed to $sys.> and then broadcast once: it lists its own $sys.broadcast
    assert '<li class="event">$sys.broadcast {"from":"browser-example"' in html, html
