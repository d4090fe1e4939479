"""The message switch's HTTP routes (every path outside ``/v1/``, ``/metrics``, ``/healthz``,
``/readyz``, ``/examples`` and ``/admin/``): the request line is parsed here, the work is done by
:class:`~maitred.transports.http.switch.Switch`, and the answer is the switch's plain-text form.

Bad input (a bad id, timeout, queue name or Transfer body: :class:`~maitred.transports.http.codec.
SwitchError`) is answered ``500 Internal Server Error`` as the switch does, and counted
(``http.switch.bad_input``); a refusal (:class:`~maitred.transports.http.switch_model.Refused`)
403 or 429 with its reason. Anything else is a bug, and is not dressed up as bad input.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from maitred.core.access import Action
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.tracing import trace_in
from maitred.transports.http import codec
from maitred.transports.http.admin import switch_page, switch_page_headers
from maitred.transports.http.codec import SwitchError
from maitred.transports.http.server import IDENTITY
from maitred.transports.http.switch import Switch
from maitred.transports.http.switch_model import LIST, Refused, Token

log = logging.getLogger("maitred.transports.http.switch")


def _plain(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body)


class SwitchRoutes:
    """The switch's request handlers. ``read_body`` reads a request body within the
    transport's size limit (raising the transport's own error when it is too large);
    ``request_stop`` begins the broker's graceful stop (the port's)."""

    def __init__(
        self,
        switch: Switch,
        read_body: Callable[[web.Request], Awaitable[bytes]],
        request_stop: Callable[[], None],
    ) -> None:
        self.switch = switch
        self.read_body = read_body
        self.request_stop = request_stop
        self.stats = switch.stats

    async def handle(self, request: web.Request) -> web.StreamResponse:
        uri = request.raw_path
        parts = codec.split_path(uri)
        if parts is None:
            return _plain(codec.not_found(uri), 404)
        handler = self._switch_handler(request.method, parts)
        if handler is None:
            return _plain(codec.not_found(uri), 404)
        needs_login, fn = handler
        token = self.switch.token_of(request.protocol)
        if needs_login and token is None:
            return _plain(codec.PLEASE_LOG_IN, 404)
        try:
            return await fn(request, parts, token)
        except Refused as exc:
            return _plain(codec.refusal(exc.status, exc.reason), exc.status)
        except SwitchError as exc:
            self.stats["http.switch.bad_input"] += 1
            log.debug("switch: %s %s: %s", request.method, uri, exc.reason)
            return _plain(codec.INTERNAL_ERROR, 500)
        except MaitredError as exc:  # the durable store did not commit (JetStream down: 503)
            if exc.code is not ErrorCode.NO_WORKER:
                raise
            log.warning("switch: %s %s: %s", request.method, uri, exc.reason)
            return _plain(codec.refusal(int(exc.code), exc.reason), int(exc.code))

    _SwitchFn = Callable[[web.Request, list[str], Token | None], Awaitable[web.StreamResponse]]

    def _switch_handler(self, method: str, parts: list[str]) -> tuple[bool, _SwitchFn] | None:
        if not parts:
            return None
        op, n = parts[0], len(parts)
        if method == "GET":
            if n == 1 and op == "":
                return False, self._sw_diagnostics
            if op == "login" and n == 2:
                return False, self._sw_login
            if op in ("persistent", "transient") and n == 2:
                return True, self._sw_create
            if op == "destroy" and n == 2:
                return True, self._sw_destroy
            if op == "ack" and n == 3:
                return True, self._sw_ack
            if op == "list" and n <= 3:
                return True, self._sw_list
            if op == "trace" and n in (1, 3):
                return False, self._sw_trace
            if op == "admin":
                return False, self._sw_admin
        elif method == "POST":
            if op == "request" and n == 3:
                return True, self._sw_request
            if op == "response" and n == 4:
                return True, self._sw_response
            if op == "transfer" and n == 1:
                return True, self._sw_transfer
            if op == "shutdown" and n == 1:
                return True, self._sw_shutdown
        return None

    async def _sw_diagnostics(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        return _plain(await self.switch.diagnostics(token))

    async def _sw_login(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        self.switch.login(request.protocol, parts[1], request.get(IDENTITY))
        return _plain(b"")

    async def _sw_create(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        name = parts[1]
        if not name:
            raise SwitchError("empty queue name")
        self.switch.create(token, name, parts[0] == "persistent")
        await self.switch.committed()
        return _plain(name.encode("utf-8"))

    async def _sw_destroy(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        self.switch.destroy(token, parts[1])
        await self.switch.committed()
        return _plain(b"")

    async def _sw_ack(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        self.switch.ack(token, parts[1], codec.parse_id(parts[2]))
        await self.switch.committed()
        return _plain(b"")

    async def _sw_list(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        alive = len(parts) == 3 and parts[1] == "alive"
        if len(parts) == 3 and not alive:
            raise SwitchError("list takes /<prefix> or /alive/<prefix>")
        prefix = parts[-1] if len(parts) > 1 else ""
        return _plain(codec.names_body(self.switch.list_names(token, prefix, alive)))

    async def _sw_trace(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        start, timeout = codec.parse_trace_args(parts[1:])
        return _plain(await self.switch.get_trace(token, start, timeout))

    async def _sw_admin(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        self.switch.check(self.switch.session_of(token), Action.OBSERVE, LIST)
        rows = [
            (name, "persistent" if q.persistent else "transient", len(q.messages))
            for name, q in sorted(self.switch.queues.items())
        ]
        return web.Response(
            body=switch_page(rows),
            content_type="text/html",
            charset="utf-8",
            headers=switch_page_headers(),
        )

    async def _sw_request(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        payload = await self.read_body(request)
        sent = self.switch.send(
            token,
            parts[1],
            payload,
            codec.request_kind(parts[2]),
            headers=trace_in(request.headers),
        )
        await self.switch.committed()
        return _plain(codec.id_list(parts[1], None if sent is None else sent[1]))

    async def _sw_response(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        req_n = codec.parse_id(parts[3])
        payload = await self.read_body(request)
        sent = self.switch.respond(token, parts[1], parts[2], req_n, payload)
        await self.switch.committed()
        if sent is None:
            return _plain(b"[]")
        return _plain(codec.id_list(sent[0], sent[1]))

    async def _sw_transfer(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        start, timeout, queues = codec.parse_transfer(await self.read_body(request))
        body = await self.switch.transfer(token, start, timeout, queues)
        await self.switch.committed()  # delivery counts
        return _plain(body)

    async def _sw_shutdown(
        self, request: web.Request, parts: list[str], token: Token | None
    ) -> web.StreamResponse:
        assert token is not None
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        secret = value.strip().encode() if scheme.lower() == "bearer" and value.strip() else None
        self.switch.shutdown(token, secret)  # Refused: 403
        log.warning("switch: shutdown requested by %s", token.name)
        asyncio.get_running_loop().call_soon(self.request_stop)
        return _plain(b"")
