"""A blocking client for the line protocol: what ``maitred call -b line://HOST:PORT`` uses.

It satisfies :class:`maitred.core.transport.BrokerClient` for the CLI verbs ``call`` and
``services``; the line protocol has no worker side, so ``serve`` (``maitred worker``) refuses.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import BinaryIO

from maitred.core.errors import ErrorCode, MaitredError
from maitred_line import codec
from maitred_line.transport import parse_listen

SCHEME = "line://"


def _error_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


class LineClient:
    """One TCP connection to a ``line`` transport, opened on the first request."""

    def __init__(self, url: str, timeout: float) -> None:
        if not url.startswith(SCHEME):
            raise ValueError(f"not a line:// URL: {url!r}")
        self.url = url
        self.address = parse_listen(url[len(SCHEME) :].rstrip("/"))
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def _connect(self, timeout: float) -> tuple[socket.socket, BinaryIO]:
        if self._sock is None or self._file is None:
            try:
                self._sock = socket.create_connection(self.address, timeout=timeout)
            except TimeoutError:
                raise TimeoutError(f"cannot connect to {self.url} within {timeout}s") from None
            except OSError as exc:
                raise MaitredError(
                    f"cannot connect to {self.url}: {exc.strerror or exc}", ErrorCode.INTERNAL
                ) from None
            self._file = self._sock.makefile("rb")
        return self._sock, self._file

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        """``CALL service <body frames joined by spaces>``; the reply text as one frame."""
        try:
            line = codec.call(service, body)
        except ValueError as exc:
            raise MaitredError(str(exc), ErrorCode.BAD_REQUEST) from None
        sock, file = self._connect(timeout)
        sock.settimeout(timeout)
        try:
            sock.sendall(line)
            while True:
                raw = file.readline()
                if not raw:
                    self.close()
                    raise MaitredError(f"{self.url} closed the connection", ErrorCode.INTERNAL)
                answer = codec.parse_answer(raw)
                if answer.kind == "OK":
                    return [answer.text]
                if answer.kind == "ERR":
                    reason = answer.text.decode("utf-8", "replace")
                    raise MaitredError(reason, _error_code(answer.code))
                # EVENT lines (none without SUB) are skipped
        except TimeoutError:
            self.close()  # the reply may still come; a fresh connection will not see it
            raise TimeoutError(f"no reply from {service} within {timeout}s") from None
        except ValueError as exc:
            self.close()
            raise MaitredError(f"{self.url}: {exc}", ErrorCode.INTERNAL) from None

    def serve(
        self,
        service: str,
        handler: Callable[[list[bytes]], list[bytes]],
        *,
        max_requests: int | None = None,
    ) -> None:
        raise MaitredError(
            "the line transport has no worker side; serve over another transport (e.g. mdp)",
            ErrorCode.NOT_IMPLEMENTED,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
