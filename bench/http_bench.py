"""HTTP transport benchmark: REST call rate and p99 vs a raw aiohttp echo server (same body size),
the switch RPC rate, and the durable path (persisted + acked messages/s, SQLite store).

    .venv/bin/python bench/http_bench.py [--runs 3] [--legs raw,rest,tls,rpc,store,...]

(legs: raw, rest, tls, rpc, store, durable, durable_unix.) ``tls``: the same REST calls as
``rest``, to a second broker whose listener speaks HTTPS and requires a bearer token (a
self-signed certificate made with openssl; keep-alive connections, so the handshakes are a
warm-up cost): TLS's cost is ``1 - tls/rest`` of the same run.

Each leg is bounded in count and time; the median of ``--runs`` is printed with the ratio.
The broker and the raw echo server run as subprocesses; the MDP echo worker is a thread of this
process on its own zmq socket; REST load comes from aiohttp clients in this process.

``store``: the SQLiteStore alone (append, delivery count, ack; a commit each, ``--store-batch``
messages per commit). ``durable`` / ``durable_unix``: the whole durable path over TCP / the Unix
socket (the switch's own transport), from a load-generator *process* (``durable-load`` role) with
a lean keep-alive HTTP/1.1 client: ``--senders`` sessions send into a persistent queue (one
request in flight each, answered after the commit), one consumer session transfers on one
connection and acks on ``--ackers`` more; the rate is messages sent *and* acked per second.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import zmq

PY = sys.executable
MAITRED = str(Path(PY).parent / "maitred")


def _echo_server() -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def start(
    cmd: list[str], marker: str, cfg: str | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("maitred: ") and " listening on " in line:
            name = line.split()[1]
            found[name] = line.split(" listening on ")[1].split()[0]
        elif line.startswith("http://"):
            found["echo"] = line.strip()
        if marker in found:
            return proc, found
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def mdp_echo_worker(endpoint: str, stop: threading.Event) -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    sock.send_multipart([b"MDPW02", b"\x01", b"echo"])
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames[1] == b"\x02":
                sock.send_multipart([b"MDPW02", b"\x04", frames[2], b"", *frames[4:]])
            elif frames[1] == b"\x05":
                sock.send_multipart([b"MDPW02", b"\x05"])
    sock.close()


async def load(
    url: str,
    n: int,
    concurrency: int,
    body: bytes,
    tls: ssl.SSLContext | None = None,
    token: str = "",
) -> tuple[float, float]:
    """(req/s, p99 ms) of ``n`` POSTs with ``concurrency`` in flight (keep-alive connections;
    ``tls``: over HTTPS, ``token``: with a bearer token)."""
    lat: list[float] = []
    left = n
    conn = aiohttp.TCPConnector(limit=concurrency, ssl=tls if tls is not None else True)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    data = await resp.read()
                    if resp.status != 200 or len(data) != len(body):
                        raise RuntimeError(f"bad reply {resp.status}")
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(concurrency))), 120)
        elapsed = time.perf_counter() - t0
    lat.sort()
    return n / elapsed, lat[int(len(lat) * 0.99) - 1] * 1000


def switch_rpc_rate(url: str, n: int) -> float:
    from maitred.transports.http.client import SwitchClient

    with SwitchClient(url, token="bench:srv") as srv, SwitchClient(url, token="bench:cli") as cli:
        srv.create("bench.rpc")
        t = threading.Thread(
            target=srv.serve,
            args=("bench.rpc", lambda p: p),
            kwargs={"max_requests": n, "poll": 1.0},
        )
        t.start()
        t0 = time.perf_counter()
        for _ in range(n):
            cli.rpc("bench.rpc", b"x" * 64, timeout=10)
        rate = n / (time.perf_counter() - t0)
        t.join(10)
    return rate


class RawConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with pre-encoded requests and a minimal response
    parser (the server always sends Content-Length): the client costs far less than aiohttp's,
    so the broker, not the load generator, is what the durable leg measures. Requests may be
    pipelined (answered in order)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiters: deque[asyncio.Future[tuple[int, bytes]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.waiters:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            j = head.find(b"content-length:")
            length = 0
            if j >= 0:
                end = head.find(b"\r\n", j)
                length = int(head[j + 15 : end if end >= 0 else len(head)])
            if len(buf) < i + 4 + length:
                return
            body = bytes(buf[i + 4 : i + 4 + length])
            del buf[: i + 4 + length]
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result((int(head[9:12]), body))

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            fut.set_exception(self.lost)
            return fut
        assert self.transport is not None
        self.waiters.append(fut)
        self.transport.write(raw)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def raw_request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def raw_login(url: str, token: str) -> RawConn:
    """``url``: ``http://HOST:PORT`` or ``unix:/path``."""
    loop = asyncio.get_running_loop()
    if url.startswith("unix:"):
        _, conn = await loop.create_unix_connection(RawConn, url[5:])
    else:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        _, conn = await loop.create_connection(RawConn, host, int(port))
    status, _ = await conn.send(raw_request("GET", f"/login/{token}"))
    assert status == 200, status
    return conn


async def durable_load(
    url: str, n: int, senders: int, ackers: int, size: int, limit: float
) -> dict[str, float]:
    """``senders`` sessions (one keep-alive connection each, one request in flight) send ``n``
    messages into the persistent queue ``bench.durable``; one consumer session transfers them on
    one connection and acks them on ``ackers`` more connections (each ack waits for its answer).
    A send is answered only after its message is committed, an ack only after the delete is.
    Returns the rate of messages sent *and* acked (n / time to the last ack) and the p50/p99 of
    the send round trip (ms). Bounded by ``limit`` seconds."""
    queue = f"bench.durable.{time.monotonic_ns()}"
    admin = await raw_login(url, "bench:admin")
    status, _ = await admin.send(raw_request("GET", f"/persistent/{queue}"))
    assert status == 200
    transfer_conn = await raw_login(url, "bench:consumer")
    ack_conns = [await raw_login(url, "bench:consumer") for _ in range(ackers)]
    send_conns = [await raw_login(url, f"bench:snd{i}") for i in range(senders)]
    payload = b"m" * size
    send_req = raw_request("POST", f"/request/{queue}/nobody", payload)
    lat: list[float] = []
    sent = 0
    acked = 0
    to_ack: asyncio.Queue[int] = asyncio.Queue()
    done = asyncio.get_running_loop().create_future()

    async def send(conn: RawConn) -> None:
        nonlocal sent
        while sent < n:
            sent += 1
            t0 = time.perf_counter()
            status, body = await conn.send(send_req)
            if status != 200 or not body.startswith(b'[["'):
                raise RuntimeError(f"send: {status} {body!r}")
            lat.append(time.perf_counter() - t0)

    async def transfer() -> None:
        cursor = -1
        while not done.done():
            req = json.dumps({"timeout": 1.0, "queues": [queue], "from": str(cursor)}).encode()
            status, body = await transfer_conn.send(raw_request("POST", "/transfer", req))
            if status != 200:
                raise RuntimeError(f"transfer: {status} {body!r}")
            got = json.loads(body)
            cursor = int(got["next"])
            for (_, m), _msg in got["messages"]:
                to_ack.put_nowait(m)

    async def ack(conn: RawConn) -> None:
        nonlocal acked
        while True:
            m = await to_ack.get()
            status, _ = await conn.send(raw_request("GET", f"/ack/{queue}/{m}"))
            if status != 200:
                raise RuntimeError(f"ack: {status}")
            acked += 1
            if acked >= n and not done.done():
                done.set_result(None)

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(send(c)) for c in send_conns]
    tasks += [asyncio.ensure_future(ack(c)) for c in ack_conns]
    tasks.append(asyncio.ensure_future(transfer()))

    def failed(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not done.done():
            done.set_exception(task.exception())  # type: ignore[arg-type]

    for t in tasks:
        t.add_done_callback(failed)
    try:
        try:
            await asyncio.wait_for(asyncio.shield(done), limit)
        except TimeoutError:
            raise RuntimeError(f"durable leg: only {acked}/{n} acked in {limit} s") from None
        elapsed = time.perf_counter() - t0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await admin.send(raw_request("GET", f"/destroy/{queue}"))
        for c in [admin, transfer_conn, *ack_conns, *send_conns]:
            c.close()
    lat.sort()
    return {
        "msg_per_s": n / elapsed,
        "send_p50_ms": lat[len(lat) // 2] * 1000,
        "send_p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
    }


def durable_rate(url: str, n: int, senders: int, ackers: int, size: int) -> dict[str, float]:
    """The durable leg in its own process (the load generator gets the other core)."""
    out = subprocess.run(
        [
            *(PY, __file__, "durable-load", "--url", url, "--durable", str(n)),
            *("--senders", str(senders), "--ackers", str(ackers), "--durable-size", str(size)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"durable load failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def store_rate(n: int, batch: int, size: int) -> float:
    """The SQLite store alone: append + commit, delivered + commit, ack + commit per message,
    ``batch`` messages per commit as the switch batches them (one flush per loop turn)."""
    from maitred.core.store import SQLiteStore, StoredMessage

    with tempfile.TemporaryDirectory(prefix="mhstore") as d:
        s = SQLiteStore(Path(d) / "store.sqlite3")
        s.create_queue("q")
        s.flush()
        payload = b"m" * size
        t0 = time.perf_counter()
        for base in range(0, n, batch):
            ids = range(base, min(n, base + batch))
            for i in ids:
                s.append(StoredMessage("q", i, payload, b'["Request","nobody"]', "snd", i))
            s.flush()
            for i in ids:
                s.delivered("q", i, 1)
            s.flush()
            for i in ids:
                s.ack("q", i)
            s.flush()
        rate = n / (time.perf_counter() - t0)
        s.close()
    return rate


LEGS = ("raw", "rest", "tls", "rpc", "store", "durable", "durable_unix")

#: the tls leg's token (its SHA-256 is in the TLS broker's config)
TOKEN = "bench-token-0123456789abcdefghijklmnopqrstuvwxyz"


def tls_broker_config(tmp: Path) -> Path:
    """A second broker's config: REST over HTTPS (a self-signed certificate made here with
    openssl), a bearer token required (``anonymous = false``)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    cfg = tmp / "tls.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    cfg.write_text(
        f"""[broker]
log_level = "warning"
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
anonymous = false
tls_cert = "{cert}"
tls_key = "{key}"
[[transports.http.tokens]]
sha256 = "{digest}"
identity = "bench"
"""
    )
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rpc", type=int, default=300)
    ap.add_argument("--durable", type=int, default=20000, help="messages per durable run")
    ap.add_argument("--senders", type=int, default=32, help="durable leg: sending sessions")
    ap.add_argument("--ackers", type=int, default=16, help="durable leg: ack connections")
    ap.add_argument("--durable-size", type=int, default=256, help="durable message bytes")
    ap.add_argument("--store-batch", type=int, default=32, help="store leg: messages per commit")
    ap.add_argument("--legs", default=",".join(LEGS), help="comma-separated subset of " + str(LEGS))
    ap.add_argument("--url", default="", help="(durable-load role) http://HOST:PORT or unix:PATH")
    ap.add_argument("_role", nargs="?", default="")
    args = ap.parse_args()
    if args._role == "echo-server":
        _echo_server()
        return 0
    if args._role == "durable-load":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        result = asyncio.run(
            durable_load(
                args.url, args.durable, args.senders, args.ackers, args.durable_size, 120.0
            )
        )
        print(json.dumps(result), flush=True)
        return 0
    legs = [leg for leg in args.legs.split(",") if leg]
    if unknown := set(legs) - set(LEGS):
        ap.error(f"unknown legs: {sorted(unknown)}")
    body = b"x" * args.size
    tmp = Path(tempfile.mkdtemp(prefix="mhbench"))
    cfg = tmp / "maitred.toml"
    cfg.write_text(
        f"""[broker]
log_level = "warning"
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[store]
backend = "sqlite"
path = "{tmp / "store.sqlite3"}"
[transports.http]
listen = ["127.0.0.1:0", "unix:{tmp / "sw.sock"}"]
switch_credit = 256
"""
    )
    echo, eps = start([PY, __file__, "echo-server"], "echo")
    broker, beps = start([MAITRED, "serve", "-c", str(cfg)], "http")
    unix_url = f"unix:{tmp / 'sw.sock'}"
    stop = threading.Event()
    wt = threading.Thread(target=mdp_echo_worker, args=(beps["mdp"], stop), daemon=True)
    wt.start()
    tls_broker: subprocess.Popen[str] | None = None
    tls_ctx: ssl.SSLContext | None = None
    if "tls" in legs:
        tls_broker, teps = start([MAITRED, "serve", "-c", str(tls_broker_config(tmp))], "http")
        tls_ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
        tls_url = f"{teps['http']}/v1/services/echo"
        threading.Thread(target=mdp_echo_worker, args=(teps["mdp"], stop), daemon=True).start()
    results: dict[str, list[Any]] = {leg: [] for leg in legs}
    try:
        if "rest" in legs:
            asyncio.run(load(f"{beps['http']}/v1/services/echo", 200, 8, body))  # warm-up
        if "tls" in legs:
            asyncio.run(load(tls_url, 200, 8, body, tls_ctx, TOKEN))  # warm-up
        if "durable" in legs or "durable_unix" in legs:
            durable_rate(beps["http"], 2000, args.senders, args.ackers, args.durable_size)
        for run in range(args.runs):
            if "raw" in legs:
                results["raw"].append(
                    asyncio.run(load(f"{eps['echo']}/echo", args.requests, args.concurrency, body))
                )
            if "rest" in legs:
                results["rest"].append(
                    asyncio.run(
                        load(
                            f"{beps['http']}/v1/services/echo",
                            args.requests,
                            args.concurrency,
                            body,
                        )
                    )
                )
            if "tls" in legs:
                results["tls"].append(
                    asyncio.run(
                        load(tls_url, args.requests, args.concurrency, body, tls_ctx, TOKEN)
                    )
                )
            if "rpc" in legs:
                results["rpc"].append(switch_rpc_rate(beps["http"], args.rpc))
            if "store" in legs:
                results["store"].append(store_rate(50_000, args.store_batch, args.durable_size))
            for leg, url in (("durable", beps["http"]), ("durable_unix", unix_url)):
                if leg in legs:
                    results[leg].append(
                        durable_rate(
                            url, args.durable, args.senders, args.ackers, args.durable_size
                        )
                    )
            print(f"run {run + 1}: " + json.dumps({k: v[-1] for k, v in results.items()}))
    finally:
        stop.set()
        broker.kill()
        echo.kill()
        broker.wait()
        echo.wait()
        if tls_broker is not None:
            tls_broker.kill()
            tls_broker.wait()
    med = statistics.median
    if "raw" in legs:
        raw_rate = med(r for r, _ in results["raw"])
        raw_p99 = med(p for _, p in results["raw"])
        print(f"raw aiohttp echo     {raw_rate:8.0f} req/s  p99 {raw_p99:6.2f} ms")
    if "rest" in legs:
        rest_rate = med(r for r, _ in results["rest"])
        rest_p99 = med(p for _, p in results["rest"])
        ratio = f"  ratio {rest_rate / raw_rate:.2f}" if "raw" in legs else ""
        print(f"maitred REST->MDP    {rest_rate:8.0f} req/s  p99 {rest_p99:6.2f} ms{ratio}")
    if "tls" in legs:
        tls_rate = med(r for r, _ in results["tls"])
        tls_p99 = med(p for _, p in results["tls"])
        cost = f"  TLS+token cost {1 - tls_rate / rest_rate:.0%}" if "rest" in legs else ""
        print(f"REST over HTTPS+token {tls_rate:7.0f} req/s  p99 {tls_p99:6.2f} ms{cost}")
    if "rpc" in legs:
        print(f"switch RPC (serial)  {med(results['rpc']):8.0f} calls/s")
    if "store" in legs:
        print(
            f"sqlite store alone   {med(results['store']):8.0f} msg/s "
            f"(append+delivered+ack, {args.store_batch} per commit)"
        )
    for leg, over in (("durable", "TCP"), ("durable_unix", "Unix socket")):
        if leg not in legs:
            continue
        d = results[leg]
        p50 = med(r["send_p50_ms"] for r in d)
        p99 = med(r["send_p99_ms"] for r in d)
        print(
            f"durable send+ack     {med(r['msg_per_s'] for r in d):8.0f} msg/s (sqlite, {over}; "
            f"{args.senders} senders, 1 consumer with {args.ackers} ack connections; "
            f"send p50 {p50:.2f} ms, p99 {p99:.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
