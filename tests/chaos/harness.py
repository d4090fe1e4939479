"""The chaos harness: a ``maitred serve`` subprocess with MDP, HTTP and WebSocket; load from
every protocol; MDP worker processes killed (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted;
the broker itself killed (SIGKILL) and restarted on the same ports and store. Then a checker
reads the history and proves the delivery guarantees.

Two services:

- ``amo.echo`` (at most once; the default ``redeliver = false``): called by an MDP client, a
  REST client and a WebSocket ``maitred.json`` client. Every request carries a unique id as its
  body. The checker proves that each request got **exactly one outcome** (the reply, or an error
  such as 504 for a worker that died or stalled holding it) unless the broker was killed while
  it was pending, that no request was delivered to a worker twice, that no reply belongs to
  another request, and that no caller got two outcomes for one request.
- ``durable.jobs`` (``on_no_worker = "store"``): REST ``Prefer: respond-async`` posts; a 202
  means the request is on disk. The checker proves that every accepted request was delivered to
  a worker **at least once** (across worker and broker kills), and counts duplicates.

Workers (tests/chaos/worker.py) log each delivery to a file before answering. Bounded: the
chaos runs ``seconds`` seconds, each load thread at most ``max_requests`` requests, every wait
has a timeout. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.plugins.testing import ServeProcess
from maitred.transports.mdp.client import Client, MdpTimeout

ROOT = Path(__file__).resolve().parents[2]
AMO, DURABLE = "amo.echo", "durable.jobs"
#: the at-most-once service's deadline, and how long a caller waits beyond it for an outcome
AMO_DEADLINE = 2.0
WAIT = AMO_DEADLINE + 4.0
WS_KEY = "chaos-key"
#: seconds between two broker kills at least (and from the start to the first)
BROKER_GAP = 5.0
#: seconds the checker waits, after the chaos, for every accepted durable request to arrive
SETTLE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(tmp: Path, store: str = "") -> str:
    """``store``: a ``[store]`` section (empty: the SQLite file of ``store_path``)."""
    mdp, http_port, ws = free_port(), free_port(), free_port()
    return f"""
{store}
[broker]
store_path = "{tmp / "services.sqlite3"}"
drain_timeout = 0.5
log_level = "warning"

[liveness]
heartbeat_interval = 0.5
liveness = 3
# a worker killed or paused while it holds a request is found dead after this long
busy_timeout = 4.0

[services."amo.>"]
request_timeout = {AMO_DEADLINE}

[services."durable.>"]
on_no_worker = "store"
request_timeout = 600.0

[transports.mdp]
endpoints = ["tcp://127.0.0.1:{mdp}"]

[transports.http]
listen = ["127.0.0.1:{http_port}"]
store = "memory"
switch = false

[transports.ws]
listen = "127.0.0.1:{ws}"
ping_interval = 0

[[transports.ws.keys]]
key = "{WS_KEY}"
trusted = true
identity = "chaos"
"""


# -- the history ---------------------------------------------------------------------------------


@dataclass
class Call:
    """One at-most-once request as its caller saw it."""

    rid: str
    protocol: str
    sent: float
    ended: float = 0.0
    #: "reply", "error:<code>", "timeout" (no outcome within WAIT), "conn" (connection lost
    #: before an outcome), "refused" (no connection: the broker is down; never accepted),
    #: "late:<type>" (a second outcome, after the caller had given up)
    outcomes: list[str] = field(default_factory=list)
    mismatched: bool = False


@dataclass
class History:
    calls: list[Call] = field(default_factory=list)
    #: durable requests the broker accepted (202) / posts refused or cut off (not accepted)
    accepted: list[str] = field(default_factory=list)
    not_accepted: int = 0
    #: (killed at, ready again at) of each broker restart
    outages: list[tuple[float, float]] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)


def one_outcome(call: Call) -> bool:
    return len([o for o in call.outcomes if o.startswith(("reply", "error:", "late:"))]) == 1


def interrupted(call: Call, outages: list[tuple[float, float]]) -> bool:
    """The broker was killed (or not yet back) while the call was pending."""
    return any(killed <= call.ended and call.sent <= back for killed, back in outages)


# -- the processes -------------------------------------------------------------------------------


class Workers:
    """MDP worker processes (tests/chaos/worker.py) of a service; each logs to its own file."""

    def __init__(self, service: str, count: int, endpoint: str, logdir: Path, seed: int) -> None:
        self.service = service
        self.endpoint = endpoint
        self.logdir = logdir
        self.rng = random.Random(seed)
        self.serial = itertools.count()
        self.procs: list[subprocess.Popen[bytes]] = [self._spawn() for _ in range(count)]
        self.paused: set[int] = set()

    def _spawn(self) -> subprocess.Popen[bytes]:
        n = next(self.serial)
        log = self.logdir / f"{self.service}.{n}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
            "PYTHONPATH", "")]).rstrip(os.pathsep), "PYTHONWARNINGS": "ignore"}  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.worker", self.endpoint, self.service, str(log),
             str(self.rng.randrange(1 << 30))],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill_one(self) -> None:
        """SIGKILL a worker and start a new one in its place."""
        i = self.rng.randrange(len(self.procs))
        proc = self.procs[i]
        proc.kill()
        proc.wait(10)
        self.paused.discard(proc.pid)
        self.procs[i] = self._spawn()

    def pause_one(self) -> subprocess.Popen[bytes] | None:
        running = [p for p in self.procs if p.pid not in self.paused and p.poll() is None]
        if not running:
            return None
        proc = self.rng.choice(running)
        proc.send_signal(signal.SIGSTOP)
        self.paused.add(proc.pid)
        return proc

    def resume(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self.paused.discard(proc.pid)

    def resume_all(self) -> None:
        for proc in self.procs:
            if proc.pid in self.paused:
                self.resume(proc)

    def stop(self) -> None:
        self.resume_all()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def deliveries(self) -> Counter[str]:
        seen: Counter[str] = Counter()
        for log in self.logdir.glob(f"{self.service}.*.log"):
            for line in log.read_bytes().splitlines():
                seen[line.decode()] += 1
        return seen


# -- load ------------------------------------------------------------------------------------------


class Load:
    """Load threads, one per protocol, each bounded by ``until`` and ``max_requests``."""

    def __init__(
        self, endpoints: dict[str, list[str]], history: History, until: float, max_requests: int
    ) -> None:
        self.endpoints = endpoints
        self.history = history
        self.until = until
        self.max_requests = max_requests
        self.ids = itertools.count()
        self.ids_lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guard, args=(fn,), name=fn.__name__, daemon=True)
            for fn in (self.mdp, self.rest, self.ws_json, self.durable)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(WAIT + 30)
            assert not t.is_alive(), f"load thread {t.name} did not end"
        if self.errors:
            raise self.errors[0]

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def next_id(self, prefix: str) -> str:
        with self.ids_lock:
            return f"{prefix}-{next(self.ids)}"

    def running(self, n: int) -> bool:
        return n < self.max_requests and time.monotonic() < self.until

    def pace(self) -> None:
        time.sleep(0.01)  # pacing of the load (not synchronisation): ~50 requests/s per thread

    # at most once, over MDP
    def mdp(self) -> None:
        with zmq.Context() as ctx, Client(
            self.endpoints["mdp"][0], context=ctx, timeout=WAIT
        ) as client:  # fmt: skip
            n = 0
            while self.running(n):
                n += 1
                call = Call(self.next_id("mdp"), "mdp", time.monotonic())
                try:
                    reply = client.request(AMO, call.rid.encode())
                except MdpTimeout:
                    call.outcomes.append("timeout")
                else:
                    if len(reply) == 2 and len(reply[0]) == 3 and reply[0].isdigit():
                        call.outcomes.append(f"error:{reply[0].decode()}")
                    else:
                        call.outcomes.append("reply")
                        call.mismatched = reply != [b"ok:" + call.rid.encode()]
                call.ended = time.monotonic()
                self.history.add(call)
                self.pace()
            client.close()

    def _http(self) -> http.client.HTTPConnection:
        host, _, port = self.endpoints["http"][0].removeprefix("http://").rpartition(":")
        return http.client.HTTPConnection(host, int(port), timeout=WAIT)

    # at most once, over REST
    def rest(self) -> None:
        n = 0
        while self.running(n):
            n += 1
            call = Call(self.next_id("rest"), "rest", time.monotonic())
            conn = self._http()
            try:
                conn.request("POST", f"/v1/services/{AMO}", call.rid.encode(),
                             {"Content-Type": "application/octet-stream"})  # fmt: skip
                resp = conn.getresponse()
                body = resp.read()
            except TimeoutError:
                call.outcomes.append("timeout")
            except ConnectionRefusedError:  # the broker is down: never accepted
                call.outcomes.append("refused")
            except OSError:  # reset: the broker went down
                call.outcomes.append("conn")
            except http.client.HTTPException:
                call.outcomes.append("conn")
            else:
                if resp.status == 200:
                    call.outcomes.append("reply")
                    call.mismatched = body != b"ok:" + call.rid.encode()
                else:
                    call.outcomes.append(f"error:{resp.status}")
            finally:
                conn.close()
            call.ended = time.monotonic()
            self.history.add(call)
            self.pace()

    # at most once, over the WebSocket maitred.json dialect
    def ws_json(self) -> None:
        n = 0
        while self.running(n):
            with contextlib.ExitStack() as stack:
                ws = self._ws_connect(stack)
                if ws is None:
                    self.pace()
                    continue
                while self.running(n):  # on this connection until it breaks
                    n += 1
                    call = Call(self.next_id("ws"), "ws", time.monotonic())
                    try:
                        ws.send(
                            json.dumps(
                                {
                                    "type": "request",
                                    "id": call.rid,
                                    "destination": AMO,
                                    "responder": "chaos",
                                    "data": base64.b64encode(call.rid.encode()).decode(),
                                }
                            )
                        )
                        self._ws_outcome(ws, call)  # fmt: skip
                    except ConnectionClosed:
                        call.outcomes.append("conn")
                    call.ended = time.monotonic()
                    self.history.add(call)
                    self.pace()
                    if call.outcomes[-1] == "conn":
                        break

    def _ws_connect(self, stack: contextlib.ExitStack) -> ClientConnection | None:
        try:
            ws = stack.enter_context(connect(
                self.endpoints["ws"][0], subprotocols=[Subprotocol("maitred.json")],
                open_timeout=5, close_timeout=1, compression=None, proxy=None))  # fmt: skip
            ws.send(json.dumps({"type": "hello", "key": WS_KEY, "name": "chaos-load"}))
            welcome = json.loads(ws.recv(5))
        except (OSError, TimeoutError, ConnectionClosed):
            return None
        assert welcome.get("type") == "welcome", welcome
        return ws

    def _ws_outcome(self, ws: ClientConnection, call: Call) -> None:
        deadline = call.sent + WAIT
        while True:
            left = deadline - time.monotonic()
            try:
                frame = ws.recv(max(0.0, left))
            except TimeoutError:
                call.outcomes.append("timeout")
                return
            msg = json.loads(frame)
            if msg.get("type") not in ("reply", "error"):
                continue
            if msg.get("id") != call.rid:
                # a late outcome of an earlier request (its caller gave up): a second outcome
                self._late(msg)
                continue
            if msg["type"] == "error":
                call.outcomes.append(f"error:{msg.get('code')}")
            else:
                call.outcomes.append("reply")
                data = base64.b64decode(msg.get("data", "")) if "data" in msg else b""
                call.mismatched = data != b"ok:" + call.rid.encode()
            return

    def _late(self, msg: dict[str, Any]) -> None:
        with self.history.lock:
            for call in reversed(self.history.calls):
                if call.rid == msg.get("id"):
                    call.outcomes.append("late:" + str(msg.get("type")))
                    return

    # durable, over REST: 202 = on disk
    def durable(self) -> None:
        n = 0
        while self.running(n):
            n += 1
            rid = self.next_id("dur")
            conn = self._http()
            try:
                conn.request(
                    "POST",
                    f"/v1/services/{DURABLE}",
                    rid.encode(),
                    {"Prefer": "respond-async", "Content-Type": "application/octet-stream"},
                )
                resp = conn.getresponse()  # fmt: skip
                resp.read()
            except (OSError, http.client.HTTPException):
                with self.history.lock:
                    self.history.not_accepted += 1
            else:
                with self.history.lock:
                    if resp.status == 202:
                        self.history.accepted.append(rid)
                    else:
                        self.history.not_accepted += 1
            finally:
                conn.close()
            self.pace()


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Report:
    counts: dict[str, Any]
    problems: list[str]

    def text(self) -> str:
        lines = [f"  {k}: {v}" for k, v in self.counts.items()]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "chaos report:\n" + "\n".join(lines)


class Chaos:
    def __init__(
        self, tmp: Path, seconds: float, seed: int, max_requests: int = 20_000, store: str = ""
    ) -> None:
        self.tmp = tmp
        self.seconds = seconds
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_requests = max_requests
        self.cfg = tmp / "maitred.toml"
        self.cfg.write_text(config(tmp, store))
        self.logdir = tmp / "deliveries"
        self.logdir.mkdir()
        self.history = History()
        self.broker_logs: list[str] = []
        self.broker: ServeProcess = self._serve()
        mdp = self.broker.endpoint("mdp")
        self.amo = Workers(AMO, 3, mdp, self.logdir, self.rng.randrange(1 << 30))
        self.durable = Workers(DURABLE, 2, mdp, self.logdir, self.rng.randrange(1 << 30))

    def _serve(self) -> ServeProcess:
        return ServeProcess("-c", str(self.cfg), env={"PYTHONWARNINGS": "ignore"})

    def restart_broker(self) -> None:
        killed = time.monotonic()
        self.broker.kill()
        self.broker.close()
        self.broker_logs.append(self.broker.log())
        self.broker = self._serve()
        self.history.outages.append((killed, time.monotonic()))

    def run(self) -> Report:
        until = time.monotonic() + self.seconds
        load = Load(self.broker.endpoints, self.history, until, self.max_requests)
        load.start()
        try:
            self._strike(until)
        finally:
            self.amo.resume_all()
            self.durable.resume_all()
            load.join()
        return self.check()

    def _strike(self, until: float) -> None:
        # every kind of blow at least once (in this order), then random ones
        plan = ["kill", "pause", "broker", "kill", "pause"]
        last_broker = time.monotonic()
        while time.monotonic() < until - 1.0:
            time.sleep(0.3 + self.rng.random())  # pacing of the blows (not synchronisation)
            action = plan.pop(0) if plan else self.rng.choice(["kill", "kill", "pause", "pause",
                                                               "broker"])  # fmt: skip
            if action == "broker":
                if time.monotonic() - last_broker < BROKER_GAP:
                    if not self.history.actions["broker"]:
                        plan.insert(0, action)  # the first one is owed: as soon as allowed
                    continue  # give the load time to flow between broker restarts
                self.restart_broker()
                last_broker = time.monotonic()
            elif action == "kill":
                self.rng.choice([self.amo, self.durable]).kill_one()
            else:
                workers = self.rng.choice([self.amo, self.durable])
                proc = workers.pause_one()
                if proc is None:
                    continue
                time.sleep(0.5 + self.rng.random() * 2.5)  # how long it stays stopped
                workers.resume(proc)
            self.history.actions[action] += 1

    def check(self) -> Report:
        h = self.history
        problems: list[str] = []
        # durable: every accepted request delivered at least once (wait, bounded, for the rest)
        deadline = time.monotonic() + SETTLE
        accepted = set(h.accepted)
        while True:
            durable = self.durable.deliveries()
            missing = accepted - set(durable)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling the workers' files (bounded by SETTLE)
        if missing:
            problems.append(f"durable: {len(missing)} accepted requests never delivered, e.g. "
                            f"{sorted(missing)[:5]}")  # fmt: skip
        dur_dups = sum(n - 1 for rid, n in durable.items() if n > 1)
        # at most once
        amo = self.amo.deliveries()
        outcomes: Counter[str] = Counter()
        lost, interrupted_n, two_outcomes, mismatched, phantom = [], 0, [], [], []
        per_protocol: Counter[str] = Counter()
        refused = 0
        for call in h.calls:
            per_protocol[call.protocol] += 1
            if call.outcomes == ["refused"]:
                refused += 1
                continue
            final = [o for o in call.outcomes if o.startswith(("reply", "error:"))]
            late = [o for o in call.outcomes if o.startswith("late:")]
            for o in call.outcomes:
                outcomes[o.split(":")[0] if o.startswith("late") else o] += 1
            if len(final) + len(late) > 1:
                two_outcomes.append(call.rid)
            if call.mismatched:
                mismatched.append(call.rid)
            if final and final[0] == "reply" and amo[call.rid] == 0:
                phantom.append(call.rid)
            if not final and not late:
                if interrupted(call, h.outages):
                    interrupted_n += 1
                else:
                    lost.append(f"{call.rid}:{call.outcomes}")
        amo_dups = {rid: n for rid, n in amo.items() if n > 1}
        if lost:
            problems.append(f"at-most-once: {len(lost)} requests got no outcome with the broker "
                            f"up, e.g. {lost[:5]}")  # fmt: skip
        if two_outcomes:
            problems.append(f"at-most-once: {len(two_outcomes)} requests got two outcomes, e.g. "
                            f"{two_outcomes[:5]}")  # fmt: skip
        if amo_dups:
            problems.append(f"at-most-once: {len(amo_dups)} requests delivered more than once, "
                            f"e.g. {list(amo_dups.items())[:5]}")  # fmt: skip
        if mismatched:
            problems.append(f"{len(mismatched)} replies were not their request's: {mismatched[:5]}")
        if phantom:
            problems.append(f"{len(phantom)} replies no worker logged: {phantom[:5]}")
        tracebacks = sum(log.count("Traceback") for log in [*self.broker_logs, self.broker.log()])
        if tracebacks:
            problems.append(f"{tracebacks} tracebacks in the broker's logs")
        counts: dict[str, Any] = {
            "seed": self.seed,
            "seconds": self.seconds,
            "blows": dict(h.actions),
            "amo sent (per protocol)": dict(per_protocol),
            "amo refused at connect (broker down)": refused,
            "amo accepted": len(h.calls) - refused,
            "amo with exactly one outcome": sum(1 for c in h.calls if one_outcome(c)),
            "amo outcomes (kinds)": dict(outcomes),
            "amo delivered to workers": sum(amo.values()),
            "amo lost": len(lost),
            "amo interrupted by a broker kill": interrupted_n,
            "amo duplicated deliveries": len(amo_dups),
            "amo two outcomes": len(two_outcomes),
            "durable accepted": len(accepted),
            "durable not accepted (refused or cut off)": h.not_accepted,
            "durable accepted and delivered": len(set(durable) & accepted),
            "durable lost": len(missing),
            "durable duplicated deliveries": dur_dups,
        }
        return Report(counts, problems)

    def close(self) -> None:
        self.amo.stop()
        self.durable.stop()
        self.broker.close()


@contextlib.contextmanager
def chaos(tmp: Path, seconds: float, seed: int, store: str = "") -> Iterator[Chaos]:
    c = Chaos(tmp, seconds, seed, store=store)
    try:
        yield c
    finally:
        c.close()
