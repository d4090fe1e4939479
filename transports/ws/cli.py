"""The blocking client behind ``maitred call/worker/pub/sub/... -b ws://HOST:PORT`` (and
``wss://``): the ``maitred.json`` dialect, on an event loop of its own."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from maitred.core.credentials import CACERT_ENV, TOKEN_ENV
from maitred.core.transport import FrameHandler
from maitred.transports.ws import json_codec as jc
from maitred.transports.ws.client import JsonClient

T = TypeVar("T")

#: the key presented in ``hello`` (middleman's trusted development key unless set)
KEY_ENV = "MAITRED_WS_KEY"
DEFAULT_KEY = "xyzzy"


class WsCliClient:
    """``token`` (default: ``$MAITRED_TOKEN``, which ``--token`` sets) logs in with a bearer
    token instead of a key; ``cacert`` (default: ``$MAITRED_CACERT``, ``--cacert``) is the CA
    file a ``wss://`` broker's certificate is checked against."""

    def __init__(
        self,
        url: str,
        timeout: float,
        key: str | None = None,
        *,
        token: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.token = token or os.environ.get(TOKEN_ENV) or None
        default_key = "" if self.token else DEFAULT_KEY  # a token and a key: refused
        self.key = key if key is not None else os.environ.get(KEY_ENV, default_key)
        cafile = cacert or os.environ.get(CACERT_ENV)
        self.ssl = (
            ssl.create_default_context(cafile=cafile)
            if cafile and url.startswith("wss://")
            else None
        )
        self._loop = asyncio.new_event_loop()
        self._client: JsonClient | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def _connect(self, methods: Sequence[str] | None = None) -> JsonClient:
        if self._client is None:
            self._client = self._run(
                JsonClient.connect(
                    self.url,
                    self.key,
                    token=self.token,
                    name="maitred-cli",
                    methods=methods,
                    timeout=self.timeout,
                    ssl=self.ssl,
                )
            )
        return self._client

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        client = self._connect()
        reply = self._run(client.request(service, frames=list(body), timeout=timeout))
        return list(jc.body_of(reply))

    def publish(self, topic: str, body: bytes) -> int:
        return self._run(self._connect().publish(topic, data=body, timeout=self.timeout))

    def subscribe(self, pattern: str) -> Iterator[tuple[str, list[bytes]]]:
        client = self._connect()
        self._run(client.subscribe(pattern, timeout=self.timeout))
        while True:
            event = self._run(client.events.get())
            yield event.topic, list(jc.body_of(event))

    def serve(
        self, service: str, handler: FrameHandler, *, max_requests: int | None = None
    ) -> None:
        client = self._connect(methods=[service])
        served = 0
        while max_requests is None or served < max_requests:
            request = self._run(client.requests.get())
            frames = handler(list(jc.body_of(request)))
            self._run(client.reply(request, frames=frames))
            served += 1

    def close(self) -> None:
        if self._client is not None:
            self._run(self._client.close())
            self._client = None
        self._loop.close()
