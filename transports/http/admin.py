"""The live dashboard at ``/admin/`` (``[transports.http] admin``, on by default).

The page (``static/admin.html``, package data, no build step) holds no data itself: it connects
to the ws transport with the JSON dialect (``maitred.json``), asks the MMI (``mmi.services``,
``mmi.workers``, ``mmi.queues``, ``mmi.topics``, ``mmi.info``) every second, subscribes to
``$sys.>``, and computes rates from successive counter readings. What it may see is what the
``[access]`` policy lets the identity of the key it says hello with see.

Routes (registered only when ``admin = true``):

* ``GET /admin`` → 301 to ``/admin/``;
* ``GET /admin/`` → the page;
* ``GET /admin/endpoints.json`` → ``{"ws": [...]}``, the ws transport's bound endpoints (the
  page's WebSocket URL unless it is given ``?ws=``; an empty list makes the page say that this
  broker has no ws transport — it never falls back to a guessed port, which could be another
  broker's).

The message switch's own page (``GET /admin`` and below when the dashboard is off, or
``/admin/...`` paths the dashboard does not take) is :func:`switch_page`: one table of queue
names, kinds and lengths, every value HTML-escaped, with no script and a Content-Security-Policy
of ``default-src 'none'``. It needs ``observe`` on ``$switch.list``.

Access, as for the REST API's MMI views (``GET /v1/services`` asks ``mmi.services`` in the REST
session): both routes are answered only when the http identity may ``call`` ``mmi.services``;
otherwise 403 with the REST error body (the denial is counted and published on
``$sys.auth.denied`` like any other). Other ``/admin/...`` paths are left to the message switch
(its one-table page), as before.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Callable, Iterable
from importlib import resources

from aiohttp import web

from maitred.core.access import Action
from maitred.core.errors import ErrorCode
from maitred.core.routing.model import Session
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.server import IDENTITY

#: the page's file name in ``static/``
PAGE = "admin.html"
#: the MMI name whose ``call`` permission opens the dashboard
GATE = "mmi.services"


_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)
_NONE = "'none'"


def admin_page() -> bytes:
    """The dashboard's HTML (package data)."""
    return resources.files("maitred.transports.http").joinpath("static", PAGE).read_bytes()


def page_headers(page: bytes) -> dict[str, str]:
    """The page's response headers: no caching, no framing, no Referer (the page may carry a key
    in its URL), and a Content-Security-Policy that runs only the page's own inline scripts
    (by hash) and lets it connect only to its own origin and to WebSocket URLs."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
        for m in _SCRIPT.finditer(page)
    )
    csp = (
        f"default-src 'none'; script-src {hashes or _NONE}; "
        "style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }


#: the switch page has no script, style or image: nothing may load or run
SWITCH_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def switch_page(rows: Iterable[tuple[str, str, int]]) -> bytes:
    """The message switch's ``/admin`` page: (queue, kind, messages) rows, all escaped (queue
    names are chosen by clients)."""
    esc = html.escape
    body = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(kind)}</td><td>{int(count)}</td></tr>"
        for name, kind, count in rows
    )
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>maitred switch</title>'
        "<h1>maitred message switch</h1>"
        f"<table><tr><th>queue</th><th>kind</th><th>messages</th></tr>{body}</table></html>"
    ).encode()


def switch_page_headers() -> dict[str, str]:
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": SWITCH_CSP,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }


def add_admin_routes(
    router: web.UrlDispatcher,
    port: BrokerPort,
    session_of: Callable[[web.Request], Session],
) -> None:
    """``GET /admin``, ``/admin/`` and ``/admin/endpoints.json``; ``session_of`` gives a
    request's REST session, whose identity the access policy is asked about. The page itself
    is also served to a request without credentials that the transport would refuse (it holds
    no data, and asks for a token when its API calls are answered 401)."""
    page = admin_page()
    headers = page_headers(page)

    def denied(request: web.Request) -> web.Response | None:
        session = session_of(request)
        if port.allowed(session, Action.CALL, GATE):
            return None
        return web.Response(
            status=codec.status_for(ErrorCode.FORBIDDEN),
            body=codec.error_body(
                ErrorCode.FORBIDDEN, f"{session.identity.name} may not call {GATE}"
            ),
            content_type="application/json",
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/admin/")

    async def index(request: web.Request) -> web.Response:
        refused = None if IDENTITY in request and request[IDENTITY] is None else denied(request)
        if refused is not None:
            return refused
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def endpoints(request: web.Request) -> web.Response:
        refused = denied(request)
        if refused is not None:
            return refused
        transports = port.info().get("transports", {})
        ws = [str(e) for e in transports.get("ws", [])] if isinstance(transports, dict) else []
        return web.Response(
            body=codec.encode_json({"ws": ws}),
            content_type="application/json",
            headers={"Cache-Control": "no-cache"},
        )

    router.add_get("/admin", redirect)
    router.add_get("/admin/", index)
    router.add_get("/admin/endpoints.json", endpoints)
