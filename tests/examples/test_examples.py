"""The clients in other languages under ``examples/`` (C with libzmq, Node.js with ``ws``, shell
with curl), built and run as real processes against an embedded broker with the MDP, HTTP and
WebSocket transports on ephemeral ports, calling each other across protocols.

The C programs are built with their Makefile (warnings are errors here) into a temporary
directory; the Node.js programs run from ``examples/node`` when its ``node_modules/`` is
installed, else from a temporary copy after ``npm ci``. When a tool is missing (a C compiler,
make, pkg-config or libzmq's headers; node or npm; curl) its tests are skipped, except under CI
(``CI`` set), where they fail: CI installs them (``.ci/run``).

Every subprocess has a timeout; the tests wait for conditions (a line printed, the broker's
state), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from maitred.core.local import LocalWorker
from maitred.transports.http.client import RestClient
from maitred.transports.mdp.client import Client, Worker
from tests.e2e.helpers import BrokerThread, recv, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TOML = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""

#: seconds any one run of an example may take before the test fails
RUN_TIMEOUT = 20.0
#: the time limit given to long-running examples (workers, services), a backstop only: the
#: tests end them earlier (request limits, the broker's DISCONNECT, or SIGTERM at teardown)
SERVE_SECONDS = "30"


# -- tools --------------------------------------------------------------------------------------


def require(problem: str | None, install: str) -> None:
    """Skip (fail under CI) when ``problem`` says a tool is missing."""
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}: CI installs it in .ci/run ({install})")
    pytest.skip(f"{problem} ({install})")


@dataclass(frozen=True)
class CPrograms:
    client: str
    worker: str
    subscriber: str


@pytest.fixture(scope="session")
def c_programs(tmp_path_factory: pytest.TempPathFactory) -> CPrograms:
    """examples/c built with its Makefile into a temporary directory."""
    install = "apt-get install build-essential pkg-config libzmq3-dev"
    missing = [tool for tool in ("cc", "make", "pkg-config") if shutil.which(tool) is None]
    require(f"{', '.join(missing)} not found" if missing else None, install)
    has_zmq = subprocess.run(
        ["pkg-config", "--exists", "libzmq"], check=False, capture_output=True, timeout=RUN_TIMEOUT
    )
    require("libzmq's development files not found" if has_zmq.returncode else None, install)
    out = tmp_path_factory.mktemp("c-examples")
    build = subprocess.run(
        ["make", "-C", str(EXAMPLES / "c"), f"OUT={out}", "WARNINGS=-Wall -Wextra -Werror"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return CPrograms(
        client=str(out / "mdp_client"),
        worker=str(out / "mdp_worker"),
        subscriber=str(out / "mdp_subscriber"),
    )


@pytest.fixture(scope="session")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with examples/node's scripts and its installed ``ws`` package."""
    install = "apt-get install nodejs npm"
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    require(f"{', '.join(missing)} not found" if missing else None, install)
    source = EXAMPLES / "node"
    if (source / "node_modules" / "ws" / "package.json").exists():
        return source
    work = tmp_path_factory.mktemp("node-examples")
    for name in ("package.json", "package-lock.json", "middleman_client.js", "json_service.js"):
        shutil.copy(source / name, work / name)
    env = dict(os.environ)
    if "HOME" not in env:  # npm keeps its cache in ~/.npm
        env["npm_config_cache"] = str(work / ".npm-cache")
    npm = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert npm.returncode == 0, f"npm ci failed:\n{npm.stdout}{npm.stderr}"
    return work


@pytest.fixture(scope="session")
def curl_dir() -> Path:
    require(None if shutil.which("curl") else "curl not found", "apt-get install curl")
    return EXAMPLES / "curl"


# -- processes ----------------------------------------------------------------------------------


def run(
    args: Sequence[str], *, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an example to its end (it must end within RUN_TIMEOUT)."""
    return subprocess.run(
        list(args),
        check=False,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=RUN_TIMEOUT,
    )


class Proc:
    """A long-running example; threads collect its stdout and stderr lines as they come, so a
    test can wait for a line. It runs in its own process group (a shell script's curl too)."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[bytes], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def __repr__(self) -> str:
        return f"<{' '.join(self.args)}: stdout {self.out}, stderr {self.err}>"

    def wait_for(
        self, check: Callable[[list[str]], bool], stream: str = "out", timeout: float = 10.0
    ) -> None:
        """Wait until ``check`` is true of the lines printed so far on ``stream``."""
        lines = self.out if stream == "out" else self.err

        def done() -> bool:
            if check(list(lines)):
                return True
            if self.popen.poll() is not None:
                self._join()
                if check(list(lines)):
                    return True
                raise AssertionError(f"exited with {self.popen.returncode}: {self!r}")
            return False

        wait_until(done, timeout=timeout, what=f"output of {self!r}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s: {self!r}") from None
        self._join()
        return code

    def terminate(self) -> None:
        """SIGTERM to the program itself (an example's own clean stop)."""
        self.popen.send_signal(signal.SIGTERM)

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def stop(self) -> None:
        """SIGTERM to the whole process group (SIGKILL if that is not enough); close pipes."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        try:  # what the group may have left behind (e.g. curl under a shell script)
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._join()
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.popen.stdout.close()
        self.popen.stderr.close()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(args: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


# -- broker state -------------------------------------------------------------------------------


@pytest.fixture
def web_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    """MDP, HTTP (REST, no message switch) and WebSocket on 127.0.0.1, ephemeral ports."""
    return make_broker(TOML)


def workers_of(broker: BrokerThread, service: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(service)
        return 0 if svc is None else len(svc.workers)

    return broker.call(count)


def wait_workers(broker: BrokerThread, service: str, n: int, timeout: float = 10.0) -> None:
    wait_until(
        lambda: workers_of(broker, service) == n, timeout=timeout, what=f"{n} workers of {service}"
    )


def start_c_worker(
    procs: Callable[..., Proc], programs: CPrograms, endpoint: str, service: str, *opts: str
) -> Proc:
    return procs([programs.worker, "-s", SERVE_SECONDS, *opts, endpoint, service])


# -- C ------------------------------------------------------------------------------------------


def test_c_client_calls_a_python_worker(
    web_broker: BrokerThread, c_programs: CPrograms, ctx: zmq.Context[Any]
) -> None:
    """mdp_client (RFC 18 and, with -1, MDP/0.1) → maitred → maitred's Python MDP worker, which
    streams one partial and a final reply; and an MMI call from C."""

    def upper(body: list[bytes]) -> Generator[list[bytes], None, list[bytes]]:
        yield [b"half way"]
        return [frame.upper() for frame in body]

    worker = Worker(web_broker.endpoint, "py-upper", upper, context=ctx)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_workers(web_broker, "py-upper", 1)
        got = run([c_programs.client, web_broker.endpoint, "py-upper", "hello", "world"])
        assert (got.returncode, got.stdout) == (0, "HELLO\nWORLD\n"), got
        assert got.stderr == "partial: half way\n"

        # MDP/0.1 has one reply per request: the broker drops the partial for this client
        got = run([c_programs.client, "-1", web_broker.endpoint, "py-upper", "hi"])
        assert (got.returncode, got.stdout, got.stderr) == (0, "HI\n", ""), got

        got = run([c_programs.client, web_broker.endpoint, "mmi.service", "py-upper"])
        assert (got.returncode, got.stdout) == (0, "200\n"), got
    finally:
        stop.set()
        thread.join(5)
        worker.close()
    assert not thread.is_alive()

    # no worker: the request waits in the broker's queue (30 s deadline by default); the client
    # gives up after its -t milliseconds with status 2
    got = run([c_programs.client, "-t", "200", web_broker.endpoint, "nobody", "x"])
    assert got.returncode == 2 and "no reply from nobody" in got.stderr, got


def test_c_client_over_curve(
    make_broker: Callable[..., BrokerThread],
    c_programs: CPrograms,
    ctx: zmq.Context[Any],
    tmp_path: Path,
) -> None:
    """mdp_client with -k/-c (libzmq's ZMQ_CURVE_* options, key files from maitred keygen's
    code) → a CURVE broker; the same client with a key the broker does not list gets nothing."""
    from maitred.transports.mdp.curve import write_certificate

    broker_key, broker_secret, _ = write_certificate(tmp_path, "broker")
    _, client_secret, client_public = write_certificate(tmp_path, "client")
    _, stranger_secret, _ = write_certificate(tmp_path, "stranger")
    broker = make_broker(
        mdp=f"""
curve_secret_key_file = "{broker_secret}"

[[transports.mdp.keys]]
public_key = "{client_public}"
identity = "c-client"
"""
    )

    async def serve() -> None:
        async def upper(body: list[bytes]) -> list[bytes]:
            return [frame.upper() for frame in body]

        LocalWorker(broker.broker, "c-curve", upper)

    broker.run(serve())
    curve = ["-k", str(broker_key), "-c", str(client_secret)]
    got = run([c_programs.client, *curve, broker.endpoint, "c-curve", "secret", "words"])
    assert (got.returncode, got.stdout) == (0, "SECRET\nWORDS\n"), got
    stranger = ["-t", "300", "-k", str(broker_key), "-c", str(stranger_secret)]
    got = run([c_programs.client, *stranger, broker.endpoint, "c-curve", "x"])
    assert got.returncode == 2 and "no reply" in got.stderr, got
    assert broker.stats()["denied.authenticate"] >= 1
    # without CURVE options on a CURVE endpoint: no reply either
    got = run([c_programs.client, "-t", "300", broker.endpoint, "c-curve", "x"])
    assert got.returncode == 2, got


def test_python_clients_call_the_c_worker(
    web_broker: BrokerThread,
    c_programs: CPrograms,
    procs: Callable[..., Proc],
    ctx: zmq.Context[Any],
) -> None:
    """maitred's Python MDP clients (RFC 18, MDP/0.1, majortomo's dialect) → mdp_worker; the
    worker stops after -n requests and says DISCONNECT, so the broker forgets it at once (not
    after 7.5 s of silence)."""
    worker = start_c_worker(procs, c_programs, web_broker.endpoint, "c-upper", "-n", "3", "-p")
    wait_workers(web_broker, "c-upper", 1)
    replies = {}
    for dialect in ("0.2", "0.1", "majortomo"):
        with Client(web_broker.endpoint, dialect=dialect, context=ctx, timeout=10) as client:
            stream = list(client.stream("c-upper", b"multi", b"frame body", b""))
            replies[dialect] = stream
    final = (True, [b"MULTI", b"FRAME BODY", b""])
    assert replies["0.2"] == [(False, [b"working on multi"]), final]
    assert replies["majortomo"] == [(False, [b"working on multi"]), final]
    assert replies["0.1"] == [final]

    assert worker.wait_exit() == 0, worker
    assert "mdp_worker: served 3 requests, exiting" in worker.err
    wait_workers(web_broker, "c-upper", 0, timeout=2)
    assert web_broker.stats().get("workers.expired", 0) == 0


def test_c_subscriber_prints_service_events(
    make_broker: Callable[..., BrokerThread],
    c_programs: CPrograms,
    procs: Callable[..., Proc],
    ctx: zmq.Context[Any],
) -> None:
    """mdp_subscriber, a plain libzmq SUB socket on the broker's pub_endpoints, subscribed to the
    pattern $sys.service.> and the prefix news.: it prints the service events of a C worker that
    comes and goes, then a message published over REST."""
    broker = make_broker(TOML, 'pub_endpoints = ["tcp://127.0.0.1:0"]\n')
    pub = broker.broker.transports["mdp"].pubsub.pub_bound[0]  # type: ignore[attr-defined]
    sub = procs([c_programs.subscriber, "-n", "3", "-t", "20000", pub, "$sys.service.>", "news."])
    wait_until(
        lambda: broker.stats().get("mdp.pub.subscribed", 0) == 2, what="the two subscriptions"
    )
    worker = start_c_worker(procs, c_programs, broker.endpoint, "c-events", "-n", "1")
    wait_workers(broker, "c-events", 1)
    with Client(broker.endpoint, context=ctx, timeout=10) as client:
        assert client.request("c-events", b"hi") == [b"HI"]
    assert worker.wait_exit() == 0, worker
    wait_workers(broker, "c-events", 0)
    with RestClient(broker.endpoints["http"][0]) as rest:
        assert rest.publish("news.c", b"from rest") == 1
    assert sub.wait_exit() == 0, sub
    assert sub.out == [
        '$sys.service.online {"service":"c-events"}',
        '$sys.service.offline {"service":"c-events"}',
        "news.c from rest",
    ]


def test_curl_publication_reaches_the_c_subscriber(
    make_broker: Callable[..., BrokerThread],
    c_programs: CPrograms,
    curl_dir: Path,
    procs: Callable[..., Proc],
) -> None:
    """curl publishes over REST; mdp_subscriber (a plain libzmq SUB) prints it."""
    broker = make_broker(TOML, 'pub_endpoints = ["tcp://127.0.0.1:0"]\n')
    pub = broker.broker.transports["mdp"].pubsub.pub_bound[0]  # type: ignore[attr-defined]
    sub = procs([c_programs.subscriber, "-n", "1", "-t", "20000", pub, "alerts.>"])
    wait_until(lambda: broker.stats().get("mdp.pub.subscribed", 0) == 1, what="subscribed")
    http = broker.endpoints["http"][0]
    got = run(["curl", "-sS", "--data-binary", "disk 91% full", f"{http}/v1/topics/alerts.disk"])
    assert got.returncode == 0 and json.loads(got.stdout) == {"delivered": 1}, got
    assert sub.wait_exit() == 0, sub
    assert sub.out == ["alerts.disk disk 91% full"]


def test_c_worker_frames_and_liveness(
    c_programs: CPrograms, procs: Callable[..., Proc], ctx: zmq.Context[Any]
) -> None:
    """mdp_worker against a bare ROUTER socket playing the broker, frame by frame (RFC 18 layouts,
    docs/reference/mdp.md): READY, REQUEST → PARTIAL + FINAL with the client address echoed,
    HEARTBEATs every interval (200 ms here); a silent broker is dead after 3 intervals and the
    worker reconnects with a new routing id and a new READY; on SIGTERM it says DISCONNECT and
    exits 0."""
    router = ctx.socket(zmq.ROUTER)
    try:
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        worker = start_c_worker(procs, c_programs, endpoint, "raw", "-h", "200", "-p", "-e")

        rid, *ready = recv(router, timeout=10)
        assert ready == [b"MDPW02", b"\x01", b"raw"]
        router.send_multipart([rid, b"MDPW02", b"\x02", b"tok-1", b"", b"ping", b"pong"])
        got = []
        while len(got) < 2:  # heartbeats may come in between
            frames = recv(router, timeout=5)
            assert frames[0] == rid
            if frames[1:3] != [b"MDPW02", b"\x05"]:
                got.append(frames[1:])
        assert got == [
            [b"MDPW02", b"\x03", b"tok-1", b"", b"working on ping"],
            [b"MDPW02", b"\x04", b"tok-1", b"", b"ping", b"pong"],  # -e: echoed
        ]
        # from now on the "broker" says nothing: heartbeats, then a new connection
        heartbeats = 0
        while True:
            frames = recv(router, timeout=5)
            if frames[0] != rid:
                break
            assert frames[1:] == [b"MDPW02", b"\x05"]
            heartbeats += 1
        assert frames[1:] == [b"MDPW02", b"\x01", b"raw"]
        assert heartbeats >= 1  # 3 intervals of 200 ms without a word, a heartbeat each
        worker.wait_for(lambda lines: "mdp_worker: broker silent, reconnecting" in lines, "err")

        new_rid = frames[0]
        worker.terminate()
        while (frames := recv(router, timeout=5))[1:] == [b"MDPW02", b"\x05"]:
            pass
        assert frames == [new_rid, b"MDPW02", b"\x06"]
        assert worker.wait_exit() == 0, worker
    finally:
        router.close(0)


def test_c_worker_heartbeats_with_maitred_and_leaves_on_disconnect(
    make_broker: Callable[..., BrokerThread], c_programs: CPrograms, procs: Callable[..., Proc]
) -> None:
    """mdp_worker and maitred heartbeat each other (250 ms here instead of 2.5 s) and neither
    takes the other for dead; when the broker stops it sends DISCONNECT and the worker exits."""
    broker = make_broker(mdp="heartbeat_interval = 0.25\n")
    worker = start_c_worker(procs, c_programs, broker.endpoint, "hb", "-h", "250", "-v")
    wait_workers(broker, "hb", 1)
    # 5 heartbeats each way: 1.25 s, more than the 0.75 s after which either side gives up
    worker.wait_for(lambda lines: lines.count("mdp_worker: received HEARTBEAT") >= 5, "err")
    worker.wait_for(lambda lines: lines.count("mdp_worker: sent HEARTBEAT") >= 5, "err")
    assert workers_of(broker, "hb") == 1
    assert broker.stats().get("workers.expired", 0) == 0
    assert "mdp_worker: broker silent, reconnecting" not in worker.err
    assert worker.err.count("mdp_worker: sent READY") == 1

    broker.stop(drain_timeout=0)
    assert worker.wait_exit() == 0, worker
    assert "mdp_worker: received DISCONNECT" in worker.err
    assert "mdp_worker: DISCONNECT from the broker, exiting" in worker.err


# -- Node.js ------------------------------------------------------------------------------------


def test_c_client_calls_the_node_json_service(
    web_broker: BrokerThread,
    c_programs: CPrograms,
    node_dir: Path,
    procs: Callable[..., Proc],
) -> None:
    """Across protocols: an MDP client in C → maitred → a maitred.json service in Node.js over
    WebSocket, partial replies included (RFC 18 client), by service and by method."""
    ws = web_broker.endpoints["ws"][0]
    service = procs(
        ["node", str(node_dir / "json_service.js"), "--url", ws, "--max", "2",
         "--seconds", SERVE_SECONDS]
    )  # fmt: skip
    service.wait_for(lambda lines: any(line.startswith("ready ") for line in lines))
    assert service.out[0].split()[2:] == ["shout", "shout:upper", "shout:lower"]

    got = run([c_programs.client, web_broker.endpoint, "shout:lower", "HeLLo NoDe"])
    assert got.returncode == 0, got
    assert json.loads(got.stdout) == {"from": "node", "method": "lower", "text": "hello node"}
    assert [json.loads(line.removeprefix("partial: ")) for line in got.stderr.splitlines()] == [
        {"progress": 50}
    ]

    got = run([c_programs.client, "-1", web_broker.endpoint, "shout", '{"n": 1}'])
    assert (got.returncode, got.stderr) == (0, ""), got
    assert json.loads(got.stdout) == {"from": "node", "method": "upper", "text": '{"N":1}'}

    assert service.wait_exit() == 0, service  # --max 2
    wait_workers(web_broker, "shout", 0, timeout=2)


def test_node_middleman_client_calls_the_c_worker_and_pubsub(
    web_broker: BrokerThread,
    c_programs: CPrograms,
    node_dir: Path,
    procs: Callable[..., Proc],
) -> None:
    """middleman text protocol in Node.js → maitred → an MDP worker in C (dot-stuffed lines
    survive the trip); the client's SUB/PUB demo; a bad key is refused."""
    ws = web_broker.endpoints["ws"][0]
    client = ["node", str(node_dir / "middleman_client.js"), "--url", ws]
    start_c_worker(procs, c_programs, web_broker.endpoint, "c-upper", "-n", "1")
    wait_workers(web_broker, "c-upper", 1)

    got = run([*client, "req", "c-upper", "first line\n.dotted line\n..two dots"])
    assert (got.returncode, got.stdout) == (0, "FIRST LINE\n.DOTTED LINE\n..TWO DOTS\n"), got

    got = run([*client, "pubsub", "news.eu", "good morning"])
    assert (got.returncode, got.stdout) == (0, "news.eu (from me): good morning\n"), got

    got = run([*client, "req", "nobody", "x"])
    assert got.returncode == 1 and "No responder for REQ nobody" in got.stderr, got

    got = run([*client, "--key", "wrong", "req", "c-upper", "x"])
    assert got.returncode == 1 and "1008 bad key" in got.stderr, got


def test_node_middleman_client_calls_a_python_worker(
    web_broker: BrokerThread, node_dir: Path, ctx: zmq.Context[Any]
) -> None:
    """middleman client → maitred's Python MDP worker (MDP/0.1 dialect): no C needed."""

    def reverse(body: list[bytes]) -> list[bytes]:
        return [frame[::-1] for frame in body]

    worker = Worker(web_broker.endpoint, "py-reverse", reverse, dialect="0.1", context=ctx)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_workers(web_broker, "py-reverse", 1)
        ws = web_broker.endpoints["ws"][0]
        got = run(
            ["node", str(node_dir / "middleman_client.js"), "req", "py-reverse", "stressed"],
            env={"MAITRED_WS": ws},
        )
        assert (got.returncode, got.stdout) == (0, "desserts\n"), got
    finally:
        stop.set()
        thread.join(5)
        worker.close()


# -- curl ---------------------------------------------------------------------------------------


def test_curl_calls_the_c_worker(
    web_broker: BrokerThread,
    c_programs: CPrograms,
    curl_dir: Path,
    procs: Callable[..., Proc],
) -> None:
    """REST with curl → maitred → an MDP worker in C; the MMI through REST; a deadline."""
    env = {"MAITRED_HTTP": web_broker.endpoints["http"][0]}
    worker = start_c_worker(procs, c_programs, web_broker.endpoint, "c-upper", "-n", "2")
    wait_workers(web_broker, "c-upper", 1)

    got = run([str(curl_dir / "mmi.sh"), "service", "c-upper"], env=env)
    assert got.returncode == 0, got
    row = json.loads(got.stdout)
    assert (row["workers"], row["worker_list"][0]["transport"]) == (1, "mdp")

    got = run([str(curl_dir / "call.sh"), "c-upper", "hello curl"], env=env)
    assert (got.returncode, got.stdout) == (0, "HELLO CURL"), got
    got = run([str(curl_dir / "call.sh"), "c-upper"], env=env, stdin="from stdin\n")
    assert (got.returncode, got.stdout) == (0, "FROM STDIN\n"), got
    assert worker.wait_exit() == 0, worker

    got = run([str(curl_dir / "call.sh"), "c-upper", "x"], env={**env, "MAITRED_TIMEOUT": "0.2"})
    assert got.returncode == 22, got
    assert json.loads(got.stdout)["error"]["code"] == "timeout"

    got = run([str(curl_dir / "mmi.sh"), "info"], env=env)
    assert got.returncode == 0, got
    assert sorted(json.loads(got.stdout)["transports"]) == ["http", "mdp", "ws"]


def test_curl_sse_subscription_sees_a_publication(
    web_broker: BrokerThread, curl_dir: Path, procs: Callable[..., Proc]
) -> None:
    """subscribe.sh (SSE) gets a publication made through REST; it ends by itself at its time
    limit with status 0."""
    http = web_broker.endpoints["http"][0]
    env = {"MAITRED_HTTP": http}
    sub = procs([str(curl_dir / "subscribe.sh"), "news.>", SERVE_SECONDS], env)
    sub.wait_for(lambda lines: ": subscribed to news.>" in lines)
    with RestClient(http) as rest:
        assert rest.publish("news.eu", b"hello sse") == 1
    sub.wait_for(lambda lines: any(line.startswith("data: ") for line in lines))
    data = next(line for line in sub.out if line.startswith("data: "))
    event = json.loads(data.removeprefix("data: "))
    assert (event["topic"], event["text"]) == ("news.eu", "hello sse")
    assert "event: message" in sub.out

    short = procs([str(curl_dir / "subscribe.sh"), "$sys.>", "1"], env)
    started = time.monotonic()
    assert short.wait_exit(timeout=10) == 0, short
    assert time.monotonic() - started >= 0.9
    assert short.out[0] == ": subscribed to $sys.>"
