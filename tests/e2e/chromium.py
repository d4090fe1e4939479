"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the browser
tests (``test_browser.py``, ``test_admin.py``).

Chromium is started with ``--remote-debugging-port=0`` and the port is read from
``DevToolsActivePort``; the tests then wait on the page's own DOM (polled in the page), never on
time: ``--virtual-time-budget --dump-dom`` does not wait for WebSocket traffic, so the DOM was
sometimes dumped before the reply came (seen in about one run in five). Without chromium the
fixture skips, except under CI (``CI`` set), where it fails: CI installs it (``.ci/run``).

Use the fixture by importing it into the test module (pytest finds it by its name,
``chromium``)::

    from tests.e2e.chromium import DevTools, chromium_fixture  # noqa: F401
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.e2e.helpers import wait_until


class DevTools:
    """Just enough of the Chrome DevTools protocol: one page, evaluate JavaScript in it, take a
    screenshot of it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.session = ""

    def send(self, method: str, wait: float, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + wait
        while True:
            answer = json.loads(self.ws.recv(max(0.01, deadline - time.monotonic())))
            if answer.get("id") != self.next_id:
                continue  # an event
            if "error" in answer:
                raise AssertionError(f"{method}: {answer['error']}")
            result: dict[str, Any] = answer["result"]
            return result

    def open(self, url: str, width: int = 0, height: int = 0) -> None:
        """Open ``url`` in a new page (``width`` x ``height`` CSS pixels when given)."""
        sized = bool(width and height)
        target = self.send("Target.createTarget", 10, url="about:blank" if sized else url)
        attached = self.send("Target.attachToTarget", 10, targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        if sized:
            self.send(
                "Emulation.setDeviceMetricsOverride",
                10,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            self.send("Page.navigate", 10, url=url)

    def wait_js(self, condition: str, timeout: float, what: str = "") -> str:
        """The page's HTML once the JavaScript expression ``condition`` is truthy in the page
        (polled in the page every 20 ms, once the page is loaded over http)."""
        script = (
            "new Promise((resolve) => { const check = () => "
            f"(location.protocol === 'http:' && ({condition}))"
            " ? resolve(document.documentElement.outerHTML) : setTimeout(check, 20); check(); })"
        )
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what or condition} did not happen within {timeout}s")
            try:
                result = self.send(
                    "Runtime.evaluate",
                    left,
                    expression=script,
                    awaitPromise=True,
                    returnByValue=True,
                )
            except (AssertionError, TimeoutError):
                continue  # e.g. the context was replaced by the navigation: ask again
            value = result.get("result", {}).get("value")
            if isinstance(value, str):
                return value

    def wait_for(self, selector: str, timeout: float) -> str:
        """The page's HTML once ``selector`` matches (the page's own DOM, polled in the page)."""
        return self.wait_js(
            f"document.querySelector({json.dumps(selector)})", timeout, what=selector
        )

    def evaluate(self, expression: str, timeout: float = 5) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.send("Runtime.evaluate", timeout, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page (beyond the viewport), also written to ``path``."""
        metrics = self.send("Page.getLayoutMetrics", 10)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": max(1, int(size["width"])),
            "height": max(1, int(size["height"])),
            "scale": 1,
        }
        shot = self.send(
            "Page.captureScreenshot", 20, format="png", clip=clip, captureBeyondViewport=True
        )
        png = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png


@pytest.fixture(name="chromium")
def chromium_fixture(tmp_path: Path) -> Iterator[DevTools]:
    """A headless Chromium, driven over DevTools; skipped without chromium (failed under CI)."""
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (CI installs Debian's chromium in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited with {proc.returncode}")
            return len(port_file.read_text().splitlines()) >= 2 if port_file.exists() else False

        wait_until(ready, timeout=10, what="chromium's DevTools port")
        port, path = port_file.read_text().splitlines()[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
