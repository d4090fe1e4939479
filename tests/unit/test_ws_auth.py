"""What a WebSocket opening handshake presents as a bearer token (transports/ws/auth.py), and
how the handshake's DEBUG lines are kept free of it; without sockets."""

from __future__ import annotations

import logging

import pytest
from websockets.datastructures import Headers

from maitred.transports.ws.auth import presented_token, redact_path, redacting_logger

TOKEN = "abc-DEF_123"


@pytest.mark.parametrize(
    ("headers", "path", "expected"),
    [
        ([], "/", None),
        ([], "/?a=1", None),
        ([("Authorization", f"Bearer {TOKEN}")], "/", TOKEN),
        ([("Authorization", f"bearer   {TOKEN}  ")], "/", TOKEN),
        ([], f"/?x=1&access_token={TOKEN}", TOKEN),
        ([], "/?access_token=a%20b", ""),  # decoded: a space
        ([], "/?access_token=", ""),
        ([], "/?access_token=" + "t" * 4097, ""),
        ([], "/?access_token=caf%C3%A9", ""),
        ([("Authorization", "Bearer")], "/", ""),
        ([("Authorization", "Bearer a b")], "/", ""),
        ([("Authorization", "Basic dTpw")], "/", None),  # not ours
        ([("Authorization", "Basic dTpw")], f"/?access_token={TOKEN}", TOKEN),
        ([("Authorization", f"Bearer {TOKEN}")], f"/?access_token={TOKEN}", ""),
        ([("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")], "/", ""),
        ([], f"/?access_token={TOKEN}&access_token={TOKEN}", ""),
        ([], "http://[::1/?access_token=x", None),  # not a URL urlsplit takes: no token
    ],
)
def test_presented_token(headers: list[tuple[str, str]], path: str, expected: str | None) -> None:
    assert presented_token(Headers(headers), path) == expected


def test_redact_path() -> None:
    assert redact_path("/") == "/"
    assert redact_path(f"/x?a=1&access_token={TOKEN}&b=2") == "/x?a=1&access_token=***&b=2"
    assert redact_path(f"/?access_token={TOKEN}") == "/?access_token=***"


def test_the_handshake_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    logger = redacting_logger()
    with caplog.at_level(logging.DEBUG, "websockets.server"):
        assert logger.isEnabledFor(logging.DEBUG)
        logger.debug("< %s %s %s", "GET", f"/?access_token={TOKEN}", "HTTP/1.1")
        logger.debug("< %s: %s", "Authorization", f"Bearer {TOKEN}")
        logger.debug("< %s: %s", "Host", "h")
        logger.debug("> %s: %s", "Authorization", "kept: not a request line")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "< GET /?access_token=*** HTTP/1.1",
        "< Authorization: ***",
        "< Host: h",
        "> Authorization: kept: not a request line",
    ]
