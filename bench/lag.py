"""An event-loop lag probe: how late does a short sleep wake up while the loop is busy?

A task sleeps ``interval`` seconds again and again and records by how much each wake-up came
late; the worst delay is what any other peer of the loop waited at most while something ran
(a /metrics scrape, an MMI listing, a large hello). Use it inside the loop under test::

    probe = LagProbe()
    probe.start()                  # on the loop (in a coroutine, or via call_soon_threadsafe)
    ...                            # load
    worst = await probe.stop()     # seconds

or, for a broker on another thread's loop (tests/e2e/helpers.BrokerThread)::

    probe = LagProbe.on(loop)      # starts it there
    ...
    worst = probe.stop_from_thread(loop)

Report the figure; do not assert on it in unit tests (the machine may be shared).
"""

from __future__ import annotations

import asyncio
import concurrent.futures


class LagProbe:
    """Measures the worst wake-up delay of ``asyncio.sleep(interval)`` on a loop."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.worst = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            late = loop.time() - before - self.interval
            self.samples += 1
            if late > self.worst:
                self.worst = late

    def start(self) -> None:
        """Start measuring (call it on the loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        """Stop; the worst delay in seconds."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        return self.worst

    def reset(self) -> None:
        """Forget what was measured so far (e.g. after a load phase that is not of interest)."""
        self.worst = 0.0
        self.samples = 0

    @classmethod
    def on(cls, loop: asyncio.AbstractEventLoop, interval: float = 0.001) -> LagProbe:
        """A probe started on ``loop``, which runs in another thread."""
        probe = cls(interval)

        async def begin() -> None:
            probe.start()

        asyncio.run_coroutine_threadsafe(begin(), loop).result(5)
        return probe

    def stop_from_thread(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> float:
        """Stop a probe started with :meth:`on`; the worst delay in seconds."""
        fut: concurrent.futures.Future[float] = asyncio.run_coroutine_threadsafe(self.stop(), loop)
        return fut.result(timeout)

    def reset_from_thread(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        async def do() -> None:
            self.reset()

        asyncio.run_coroutine_threadsafe(do(), loop).result(timeout)
