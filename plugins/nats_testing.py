"""A real ``nats-server`` for tests: started on ephemeral ports, stopped after the test.

Tests of the cluster fabric and of the JetStream store run against the ``nats-server`` binary
(Debian's ``nats-server`` package; ``.ci/run`` installs it), never against a mock of it::

    from maitred.plugins.nats_testing import NatsServer, nats_server  # the fixture

    def test_cluster(nats_server):
        server = nats_server(jetstream=True)        # a NatsServer, accepting clients
        url = server.url                            # nats://127.0.0.1:<free port>

Three servers for a replicated JetStream (R3)::

    servers = nats_cluster(3, jetstream=True)       # the ``nats_cluster`` fixture

The client port is chosen by the server itself (``-p -1``) and read back from its ports file,
so two tests never race for a port. Cluster route ports must be known before the servers start
(each server names the others' routes), so those are taken from the kernel by binding port 0
and closing the socket just before the servers start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

#: how long a server may take to accept clients (a JetStream cluster waits for its routes)
NATS_START_TIMEOUT = 30.0


def nats_server_binary() -> str | None:
    """The ``nats-server`` program: on ``$PATH``, or in ``/usr/sbin`` where Debian puts it."""
    found = shutil.which("nats-server")
    if found:
        return found
    debian = Path("/usr/sbin/nats-server")
    return str(debian) if debian.exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for route ports only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _state(pid: int) -> str:
    """The process state letter from ``/proc/PID/stat`` ("" when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


class NatsServer:
    """One ``nats-server`` process on 127.0.0.1.

    ``jetstream`` turns JetStream on with its store in a temporary directory; ``cluster_port``
    and ``routes`` make it one server of a cluster named ``cluster_name``. The constructor
    returns once the server wrote its ports file (it accepts clients then); it raises
    ``RuntimeError`` with the server's log if the process exits first or is not ready in time.
    """

    def __init__(
        self,
        *,
        name: str = "n1",
        jetstream: bool = False,
        cluster_name: str = "maitred-test",
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        timeout: float = NATS_START_TIMEOUT,
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.name = name
        self.jetstream = jetstream
        self.cluster_port = cluster_port
        self._dir = Path(tempfile.mkdtemp(prefix=f"nats-{name}-"))
        self.store_dir = self._dir / "jetstream"
        self.log_path = self._dir / "server.log"
        args = [binary, "-a", "127.0.0.1", "-p", "-1", "-n", name]
        args += ["--ports_file_dir", str(self._dir), "-l", str(self.log_path)]
        if jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        if cluster_port is not None:
            args += [
                "--cluster_name",
                cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{cluster_port}",
            ]
            if routes:
                args += ["--routes", ",".join(routes)]
        args += list(extra_args)
        self.args = args
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        #: ``nats://127.0.0.1:PORT`` for clients, once started
        self.url = ""
        self.port = 0
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        ports_file = self._dir / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        wait = 0.005
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{self.log()}")
            if ports_file.exists():
                try:
                    urls = json.loads(ports_file.read_text())["nats"]
                except (ValueError, KeyError):
                    urls = []  # written but not complete yet
                if urls:
                    self.url = urls[0]
                    self.port = int(self.url.rsplit(":", 1)[1])
                    if self._accepts():
                        return
            time.sleep(wait)  # polling a file another process writes: no event to wait on
            wait = min(wait * 2, 0.1)
        raise RuntimeError(f"nats-server not ready in {timeout} s:\n{self.log()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    @property
    def route(self) -> str:
        """This server's route URL, for the other servers of its cluster."""
        return f"nats://127.0.0.1:{self.cluster_port}"

    def kill(self) -> None:
        """``kill -9``: the server is gone at once, its JetStream store stays on disk."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP, and return once the process is stopped: a signal takes effect when the
        process next leaves the kernel, and until then a running server can still answer."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while _state(self.proc.pid) not in ("T", "t", "") and time.monotonic() < deadline:
            time.sleep(0.001)  # the kernel's state of another process: nothing to wait on

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> int:
        """SIGTERM (SIGCONT first, in case it was paused), then the exit code."""
        if self.proc.poll() is None:
            try:
                self.resume()
                self.proc.terminate()
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def start_cluster(size: int, *, jetstream: bool = False, prefix: str = "n") -> list[NatsServer]:
    """``size`` servers routed to each other, started together (a JetStream cluster needs a
    quorum of its servers before any of them is ready)."""
    ports = [free_port() for _ in range(size)]
    routes = [f"nats://127.0.0.1:{p}" for p in ports]
    started: list[NatsServer] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        try:
            server = NatsServer(
                name=f"{prefix}{i + 1}",
                jetstream=jetstream,
                cluster_port=ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
            )
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            started.append(server)

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(NATS_START_TIMEOUT + 5)
    if errors or len(started) != size:
        for server in started:
            server.close()
        raise errors[0] if errors else RuntimeError("nats cluster did not start")
    return sorted(started, key=lambda s: s.name)


class NatsStarter(Protocol):
    def __call__(self, *, jetstream: bool = False, name: str = "n1") -> NatsServer: ...


class NatsClusterStarter(Protocol):
    def __call__(self, size: int = 3, *, jetstream: bool = False) -> list[NatsServer]: ...


def _skip_or_fail_without_binary() -> None:
    if nats_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is not installed; .ci/run installs it")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")


@pytest.fixture
def nats_server() -> Iterator[NatsStarter]:
    """Start ``nats-server`` processes on free ports; all are stopped after the test."""
    _skip_or_fail_without_binary()
    started: list[NatsServer] = []

    def start(*, jetstream: bool = False, name: str = "n1") -> NatsServer:
        server = NatsServer(name=name, jetstream=jetstream)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def nats_cluster() -> Iterator[NatsClusterStarter]:
    """Start clusters of ``nats-server`` processes routed to each other."""
    _skip_or_fail_without_binary()
    started: list[NatsServer] = []

    def start(size: int = 3, *, jetstream: bool = False) -> list[NatsServer]:
        servers = start_cluster(size, jetstream=jetstream, prefix=f"c{len(started)}n")
        started.extend(servers)
        return servers

    yield start
    for server in started:
        server.close()
