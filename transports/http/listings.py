"""The HTTP transport's read-only routes: the MMI listings (``/v1/services``, ``/v1/queues``,
``/v1/topics``), the dead letters, ``/metrics`` and the health probes. A mixin of
:class:`~maitred.transports.http.adapter.HttpTransport`, which owns the state named below."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from maitred.core.access import Action, Identity
from maitred.core.durable import KIND, decode_request
from maitred.core.errors import ErrorCode
from maitred.core.routing.model import Session
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.config import HttpConfig
from maitred.transports.http.metrics import render_metrics
from maitred.transports.http.server import _error, _json
from maitred.transports.http.streams import _Call
from maitred.transports.http.switch import Switch
from maitred.transports.http.switch_model import DEAD_LETTERS, LIST

METRICS = "$sys.metrics"


class ListingRoutes:
    """What the REST API shows of the broker (each answer bounded by the MMI's limits)."""

    config: HttpConfig
    port: BrokerPort
    identity: Identity
    switch: Switch | None
    _rest: Session
    _accepting: bool

    #: the REST session of a request's identity (the transport's)
    _session_of: Callable[[web.Request], Session]

    def add_listing_routes(self, r: web.UrlDispatcher) -> None:
        """The listings (``GET /v1/services``, ``/v1/queues``, ...), metrics and health."""
        r.add_get("/v1/services", self._services)
        r.add_get("/v1/services/{name}", self._service)
        r.add_get("/v1/queues", self._queues)
        r.add_get("/v1/topics", self._topics)
        r.add_get("/v1/dead-letters", self._dead_letters)
        r.add_get("/metrics", self._metrics)
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)

    def _mmi(self, request: web.Request, name: str, arg: bytes = b"") -> Any:
        """Ask the MMI (answered at once) as the request's identity; its decoded JSON."""
        loop = asyncio.get_running_loop()
        call = _Call(loop.create_future(), None)
        self.port.submit(self._session_of(request), name, [arg], call, self.port.clock())
        assert call.fut is not None and call.fut.done()
        ok, value = call.fut.result()
        if not ok:
            raise value
        return msgspec.json.decode(value[-1])

    async def _services(self, request: web.Request) -> web.Response:
        # ?offset=&limit=: one page (the MMI's page form); otherwise the MMI's bounded listing
        query = {k: request.query[k] for k in ("offset", "limit") if k in request.query}
        if not query:
            return _json(self._mmi(request, "mmi.services"))
        try:
            page = {k: int(v) for k, v in query.items()}
        except ValueError:
            return _error(ErrorCode.BAD_REQUEST, "offset and limit are whole numbers")
        return _json(self._mmi(request, "mmi.services", msgspec.json.encode(page)))

    async def _service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        query = msgspec.json.encode({"service": name})
        rows = self._mmi(request, "mmi.services", query)["items"]
        if not rows:
            return _error(ErrorCode.NOT_FOUND, f"no service {name} (no worker, nothing queued)")
        row = dict(rows[0])
        row["worker_list"] = self._mmi(request, "mmi.workers", query)["items"]
        return _json(row)

    async def _queues(self, request: web.Request) -> web.Response:
        value = {"services": self._mmi(request, "mmi.queues")}
        switch = self.switch
        # the switch's queues only to an identity that may list them (not counted: a filter)
        session = self._session_of(request)
        if switch is not None and switch.permits(session, Action.OBSERVE, LIST):
            value["switch"] = {
                name: {
                    "persistent": q.persistent,
                    "messages": len(q.messages),
                    "leased": q.leased,
                }
                for name, q in sorted(switch.queues.items())
            }
        return _json(value)

    async def _topics(self, request: web.Request) -> web.Response:
        return _json(self._mmi(request, "mmi.topics"))

    def _observe(self, request: web.Request, name: str) -> web.Response | None:
        """None when the request's identity may ``observe`` ``name``; else the REST 403 (the
        denial is counted and published by the router)."""
        session = self._session_of(request)
        if self.port.allowed(session, Action.OBSERVE, name):
            return None
        return _error(ErrorCode.FORBIDDEN, f"{session.identity.name} may not observe {name}")

    async def _dead_letters(self, request: web.Request) -> web.Response:
        refused = self._observe(request, DEAD_LETTERS)
        if refused is not None:
            return refused
        journal = self.port.journal
        if journal is None:
            return _json([])
        queue = request.query.get("queue")
        if journal.dirty:
            await journal.committed()  # what is buffered is read back from the store
        shown: dict[str, bool] = {}

        def payload(q: str, data: bytes, kind: bytes) -> str:
            # the payload only to an identity that may call the queue (a preview-free view)
            if q not in shown:
                shown[q] = self.port.permits(self._session_of(request), Action.CALL, q)
            if not shown[q]:
                return ""
            if kind == KIND:  # a stored service request: its frames
                data = b"".join(decode_request(data)[0])
            return codec.payload_text(data)

        return _json(
            [
                {
                    "queue": d.message.queue,
                    "id": d.message.n,
                    "reason": d.reason,
                    "deliveries": d.message.deliveries,
                    "origin": d.message.origin,
                    "payload": payload(d.message.queue, d.message.payload, d.message.kind),
                }
                for d in journal.dead_letters(queue)
            ]
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        refused = self._observe(request, METRICS)
        if refused is not None:
            return refused
        journal = self.port.journal
        body, ctype = await render_metrics(
            self.port,
            self.switch,
            self.config.metrics_max_services,
            None if journal is None else journal.snapshot(),
        )
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._accepting and not self.port.draining:
            return _json({"status": "ready"})
        return _json({"status": "draining"}, status=503)
