"""Load generator for the MDP benchmark: one MDP/0.2 client, one echo worker, a readiness probe.

    python bench/loadgen.py worker --endpoint tcp://127.0.0.1:5555 [--dialect mdp|raw]
    python bench/loadgen.py client --endpoint tcp://127.0.0.1:5555 --inflight 64 --duration 3
    python bench/loadgen.py probe  --endpoint tcp://127.0.0.1:5555

Both sides speak the majortomo dialect of MDP/0.2 (docs/reference/mdp.md): every message
starts with an empty frame.

client  DEALER. Sends ``"" MDPC02 0x02 <service> <body>`` and expects ``"" MDPC02 0x04 <body>``
        (FINAL; PARTIAL 0x03 is read and ignored). The body's first 8 bytes are a little-endian
        sequence number; the send time of each outstanding request sits in a ring indexed by it, so
        the latency of every request is measured, whatever order the replies come in. It keeps
        ``--inflight`` requests outstanding, runs a warm-up phase, then a measured phase that ends
        at ``--duration`` seconds or ``--max-requests`` replies, whichever comes first, then reads
        the replies still outstanding (not counted) so the broker is left idle. Prints one JSON
        line with req/s, latency percentiles (µs) and CPU use of itself and of ``--watch`` pids.

worker  DEALER. ``--dialect mdp``: an MDP/0.2 worker. READY, then for each REQUEST
        ``"" MDPW02 0x02 <client> "" <body...>`` it sends FINAL
        ``"" MDPW02 0x04 <client> "" <body...>``;
        HEARTBEAT every 2.5 s when it has sent nothing else for that long; exits on DISCONNECT.
        ``--dialect raw``: the worker behind a bare ``zmq.proxy`` (no broker), so it answers in the
        client's dialect: ``<id> "" MDPC02 0x02 <service> <body>`` → ``<id> "" MDPC02 0x04 <body>``.
        Either way: 6 frames in, 6 (mdp) or 5 (raw) frames out, the body frame forwarded without a
        copy, so the per-message work of the worker is the same on every leg.

The hot loops use the Cython base-class ``send``/``recv`` bound once (a fraction of the cost of
``send_multipart``/``recv_multipart``), read the fixed frames of a message as bytes and only the
last one as a ``Frame`` to check "no more frames" (``getsockopt(RCVMORE)`` costs ~1 µs), take one
clock reading per reply, and allocate nothing but the outgoing body. Every loop is bounded by a
count and by a time limit; a reply that does not come within ``--timeout`` ends the run with an
error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import zmq
from zmq.backend import Socket as _BaseSocket

from maitred.core.errors import ErrorCode, MaitredError, PeerError

EMPTY = b""
CLIENT_HEADER = b"MDPC02"
WORKER_HEADER = b"MDPW02"
# MDP/0.1 (zguide's mdbroker.py): the client sends "" MDPC01 <service> <body> and gets
# "" MDPC01 <service> <body> back; the worker's commands are READY 1, REQUEST 2, REPLY 3,
# HEARTBEAT 4, DISCONNECT 5
CLIENT_HEADER_01 = b"MDPC01"
WORKER_HEADER_01 = b"MDPW01"
# majortomo dialect, client side
C_REQUEST = b"\x02"
C_PARTIAL = b"\x03"
C_FINAL = b"\x04"
# worker side (RFC 18 numbering, with the leading empty frame)
W_READY = b"\x01"
W_REQUEST = b"\x02"
W_PARTIAL = b"\x03"
W_FINAL = b"\x04"
W_HEARTBEAT = b"\x05"
W_DISCONNECT = b"\x06"

HEARTBEAT_INTERVAL = 2.5  # seconds; what every MDP peer expects (MDP's 2.5 s default)
DEFAULT_SERVICE = "echo"
DEFAULT_SIZE = 1024
SEQ = struct.Struct("<Q")
PROBE_SEQ_BASE = 1 << 62  # probe requests are numbered far away from any client's

SNDMORE = zmq.SNDMORE
NOBLOCK = zmq.NOBLOCK

SendFn = Callable[..., Any]
RecvFn = Callable[..., Any]


class ProtocolViolation(PeerError):
    """The peer sent something that is not the expected MDP message."""


class Stalled(MaitredError):
    """No reply arrived within the timeout."""

    code = ErrorCode.TIMEOUT


#: CURVE client keys for every socket made here, "SERVER_PUBLIC PUBLIC SECRET" (Z85), set by
#: bench/curve.py for its CURVE leg (the children inherit it); unset: plain connections
CURVE_ENV = "MAITRED_BENCH_CURVE"


def curve_client(sock: zmq.Socket[Any]) -> None:
    """Make ``sock`` a CURVE client when ``$MAITRED_BENCH_CURVE`` says so (before connect)."""
    keys = os.environ.get(CURVE_ENV)
    if keys:
        server, public, secret = keys.split()
        sock.curve_serverkey = server.encode()
        sock.curve_publickey = public.encode()
        sock.curve_secretkey = secret.encode()


def fast_io(sock: zmq.Socket[Any]) -> tuple[SendFn, RecvFn]:
    """The Cython base-class ``send``/``recv`` bound to ``sock`` (skips the Python wrappers)."""
    send: SendFn = _BaseSocket.send.__get__(sock)
    recv: RecvFn = _BaseSocket.recv.__get__(sock)
    return send, recv


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process (all its threads) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User+system CPU seconds of each thread of a process by thread name (``ZMQbg/IO/0``,
    libzmq's I/O thread, where CURVE encrypts and decrypts; the others summed under their
    names), from /proc; empty when it cannot be read."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        head, _, rest = stat.rpartition(b")")
        name = head.partition(b"(")[2].decode(errors="replace")
        fields = rest.split()
        try:
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (IndexError, ValueError):
            continue
    return out


def system_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs together from /proc/stat, or None."""
    try:
        with open("/proc/stat", "rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != b"cpu":
        return None
    ticks = [int(x) for x in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8])  # guest time is already in user


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _request_frames(send: SendFn, prefix: tuple[bytes, ...], body: bytes) -> None:
    for frame in prefix:
        send(frame, SNDMORE)
    send(body)


# --------------------------------------------------------------------------------------------------
# client


class _ClientState:
    """What the client pumps share; copied into locals inside the hot loops."""

    def __init__(
        self,
        send: SendFn,
        recv: RecvFn,
        inflight: int,
        size: int,
        service: bytes,
        dialect: str = "mdp",
        tags: list[int] | None = None,
    ) -> None:
        if size < SEQ.size + 1:
            raise ValueError(f"body size must be at least {SEQ.size + 1} bytes")
        if dialect == "mdp01":  # "" MDPC01 <service> <body>, the reply the same
            self.header, self.final = CLIENT_HEADER_01, service
            self.prefix: tuple[bytes, ...] = (EMPTY, CLIENT_HEADER_01, service)
        else:  # "" MDPC02 0x02 <service> <body> -> "" MDPC02 0x04 <body>
            self.header, self.final = CLIENT_HEADER, C_FINAL
            self.prefix = (EMPTY, CLIENT_HEADER, C_REQUEST, service)
        #: with several tagged workers: the tag (byte 8 of the body) of every measured reply
        self.tags = tags
        self.send = send
        self.recv = recv
        self.size = size
        self.pad = b"\xa5" * (size - SEQ.size)
        self.service = service
        # the send times sit in a ring indexed by sequence number; replies can come back far
        # out of order (several workers, one of them slow, or one the scheduler left waiting),
        # so the ring spans many times what is in flight: a request overtaken by a whole ring's
        # worth of others would find its slot reused (and fail the run as "not outstanding")
        ring = 1 << 16
        while ring < 64 * inflight:
            ring <<= 1
        self.mask = ring - 1
        self.sent_at = [0.0] * ring
        self.seq = 0  # next sequence number to send
        self.finals = 0  # FINAL replies received in total
        self.partials = 0

    @property
    def outstanding(self) -> int:
        return self.seq - self.finals

    def send_requests(self, count: int) -> None:
        send, prefix, pad, pack = self.send, self.prefix, self.pad, SEQ.pack
        sent_at, mask, perf = self.sent_at, self.mask, time.perf_counter
        seq = self.seq
        for _ in range(count):
            sent_at[seq & mask] = perf()
            _request_frames(send, prefix, pack(seq) + pad)
            seq += 1
        self.seq = seq


def _not_outstanding(body: Any) -> ProtocolViolation:
    return ProtocolViolation(
        f"reply for a request not outstanding (seq {SEQ.unpack_from(body)[0]})"
    )


def _bad_reply(f0: bytes, hdr: bytes, cmd: bytes, body: zmq.Frame) -> ProtocolViolation:
    return ProtocolViolation(
        f"unexpected reply: empty={f0[:16]!r} header={hdr[:16]!r} command={cmd[:16]!r} "
        f"body_len={len(body)} more_frames={body.more}"
    )


def pump_blocking(
    st: _ClientState, stop_at: float, limit: int, lats: list[float] | None, refill: bool
) -> float:
    """Handle replies one at a time with blocking reads (RCVTIMEO bounds each wait).

    Each FINAL frees a slot that is refilled at once when ``refill``. Stops after ``limit`` FINALs
    or at ``stop_at`` (perf_counter); returns the time of the last reply handled.
    """
    send, recv, prefix, pad, size = st.send, st.recv, st.prefix, st.pad, st.size
    sent_at, mask, pack, unpack_from = st.sent_at, st.mask, SEQ.pack, SEQ.unpack_from
    header, final = st.header, st.final
    perf = time.perf_counter
    record = lats.append if lats is not None else None
    tag = st.tags.append if st.tags is not None and lats is not None else None
    seq = st.seq
    n = 0
    partials = 0
    now = perf()
    try:
        while n < limit and now < stop_at:
            try:
                f0 = recv()
                hdr = recv()
                cmd = recv()
                body = recv(0, False)
            except zmq.Again:
                left = seq - st.finals - n
                raise Stalled(f"no reply within the timeout ({left} outstanding)") from None
            now = perf()
            if f0 or hdr != header or body.more:
                raise _bad_reply(f0, hdr, cmd, body)
            if cmd != final:
                if cmd == C_PARTIAL:
                    partials += 1
                    continue
                raise _bad_reply(f0, hdr, cmd, body)
            if len(body) != size:
                raise _bad_reply(f0, hdr, cmd, body)
            slot = unpack_from(body)[0] & mask
            t_sent = sent_at[slot]
            if not t_sent:
                raise _not_outstanding(body)
            sent_at[slot] = 0.0
            if record is not None:
                record(now - t_sent)
            if tag is not None:
                tag(body.buffer[SEQ.size])
            n += 1
            if refill:
                sent_at[seq & mask] = now
                _request_frames(send, prefix, pack(seq) + pad)
                seq += 1
    finally:
        st.seq = seq
        st.finals += n
        st.partials += partials
    return now


def pump_batch(
    st: _ClientState, stop_at: float, limit: int, lats: list[float] | None, refill: bool
) -> float:
    """Like :func:`pump_blocking`, but in batches: block (RCVTIMEO) for the first reply, read every
    further reply that is ready (NOBLOCK until EAGAIN, or until every outstanding request is
    answered), then send the refills of the whole batch."""
    recv, size, header, final = st.recv, st.size, st.header, st.final
    sent_at, mask, unpack_from = st.sent_at, st.mask, SEQ.unpack_from
    perf = time.perf_counter
    record = lats.append if lats is not None else None
    tag = st.tags.append if st.tags is not None and lats is not None else None
    n = 0
    now = perf()
    while n < limit and now < stop_at:
        batch_cap = min(limit - n, st.seq - st.finals)
        if batch_cap <= 0:
            break
        k = 0
        flags = 0
        while k < batch_cap:
            try:
                f0 = recv(flags)
                flags = NOBLOCK
            except zmq.Again:
                if flags:
                    break  # nothing more ready: the batch is complete
                left = st.outstanding
                raise Stalled(f"no reply within the timeout ({left} outstanding)") from None
            try:  # the rest of a multipart message is there once its first frame is
                hdr = recv()
                cmd = recv()
                body = recv(0, False)
            except zmq.Again:
                raise Stalled("truncated message") from None
            now = perf()
            if f0 or hdr != header or body.more:
                raise _bad_reply(f0, hdr, cmd, body)
            if cmd != final:
                if cmd == C_PARTIAL:
                    st.partials += 1
                    continue
                raise _bad_reply(f0, hdr, cmd, body)
            if len(body) != size:
                raise _bad_reply(f0, hdr, cmd, body)
            slot = unpack_from(body)[0] & mask
            t_sent = sent_at[slot]
            if not t_sent:
                raise _not_outstanding(body)
            sent_at[slot] = 0.0
            if record is not None:
                record(now - t_sent)
            if tag is not None:
                tag(body.buffer[SEQ.size])
            k += 1
        n += k
        st.finals += k
        if refill and k:
            st.send_requests(k)
        now = perf()
    return now


def run_client(
    endpoint: str,
    inflight: int,
    size: int = DEFAULT_SIZE,
    service: str = DEFAULT_SERVICE,
    warmup: float = 1.0,
    warmup_max: int = 200_000,
    duration: float = 3.0,
    max_requests: int = 500_000,
    timeout: float = 5.0,
    drain_timeout: float = 2.0,
    io: str = "batch",
    watch: dict[str, int] | None = None,
    dialect: str = "mdp",
    tagged: bool = False,
    slow_tags: Sequence[int] = (),
) -> dict[str, Any]:
    """Run one client; returns the result record (``ok`` False with ``error`` on failure)."""
    watch = dict(watch or {})
    result: dict[str, Any] = {
        "ok": False,
        "endpoint": endpoint,
        "inflight": inflight,
        "size": size,
        "io": io,
    }
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    curve_client(sock)
    sock.rcvtimeo = int(timeout * 1000)
    sock.sndtimeo = int(timeout * 1000)
    send, recv = fast_io(sock)
    tags: list[int] | None = [] if tagged else None
    st = _ClientState(send, recv, inflight, size, service.encode(), dialect, tags)
    lats: list[float] = []

    def pump(stop_at: float, limit: int, record: list[float] | None, refill: bool) -> float:
        if io == "batch":
            return pump_batch(st, stop_at, limit, record, refill)
        return pump_blocking(st, stop_at, limit, record, refill)

    gc_was_enabled = gc.isenabled()
    gc.disable()  # the loops create no reference cycles
    try:
        sock.connect(endpoint)
        perf = time.perf_counter
        # warm-up: fill the pipeline, run for a while
        t0 = perf()
        st.send_requests(inflight)
        pump(t0 + warmup, warmup_max, None, True)
        warm_replies = st.finals
        result["warmup"] = {"replies": warm_replies, "seconds": round(perf() - t0, 4)}

        # measured phase
        cpu0 = {name: cpu_seconds(pid) for name, pid in watch.items()}
        threads0 = {name: thread_cpu_seconds(pid) for name, pid in watch.items()}
        sys0 = system_cpu_ticks()
        proc0 = time.process_time()
        t_start = perf()
        t_end = pump(t_start + duration, max_requests, lats, True)
        proc1 = time.process_time()
        cpu1 = {name: cpu_seconds(pid) for name, pid in watch.items()}
        threads1 = {name: thread_cpu_seconds(pid) for name, pid in watch.items()}
        sys1 = system_cpu_ticks()
        elapsed = max(t_end - t_start, 1e-9)
        replies = len(lats)

        # read what is still outstanding so the broker ends idle (not counted, bounded)
        sock.rcvtimeo = int(drain_timeout * 1000)
        try:
            pump(perf() + drain_timeout, st.outstanding, None, False)
        except Stalled:
            pass
        undrained = st.outstanding

        if tags is not None:
            result["by_worker"] = by_worker(lats, tags, slow_tags)
        lats.sort()
        us = [x * 1e6 for x in (percentile(lats, q) for q in (50, 90, 99, 99.9))]
        cpu: dict[str, float | None] = {"client": round(100.0 * (proc1 - proc0) / elapsed, 1)}
        for name in watch:
            a, b = cpu0.get(name), cpu1.get(name)
            cpu[name] = None if a is None or b is None else round(100.0 * (b - a) / elapsed, 1)
        _sum_roles(cpu)
        if sys0 is not None and sys1 is not None and sys1[1] > sys0[1]:
            # every process on the machine, in "% of one CPU" like the others; what is not ours
            # (client + watched) is someone else's load competing with the benchmark
            ncpu = os.cpu_count() or 1
            cpu["machine"] = round(100.0 * ncpu * (sys1[0] - sys0[0]) / (sys1[1] - sys0[1]), 1)
        result.update(
            ok=True,
            replies=replies,
            seconds=round(elapsed, 4),
            req_per_s=round(replies / elapsed, 1),
            latency_us={
                "p50": round(us[0], 1),
                "p90": round(us[1], 1),
                "p99": round(us[2], 1),
                "p99.9": round(us[3], 1),
                "min": round(lats[0] * 1e6, 1) if lats else None,
                "max": round(lats[-1] * 1e6, 1) if lats else None,
                "mean": round(sum(lats) / replies * 1e6, 1) if lats else None,
            },
            cpu_percent=cpu,
            # per thread name of each watched process (the I/O thread apart from Python's)
            cpu_threads_percent={
                who: {
                    name: round(100.0 * (t1 - threads0[who].get(name, 0.0)) / elapsed, 1)
                    for name, t1 in threads1[who].items()
                }
                for who in watch
            },
            partials=st.partials,
            undrained=undrained,
        )
        if replies == 0:
            result.update(ok=False, error="no reply in the measured phase")
    except (Stalled, ProtocolViolation, zmq.ZMQError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if gc_was_enabled:
            gc.enable()
        sock.close(linger=0)
        ctx.term()
    return result


def by_worker(
    lats: Sequence[float], tags: Sequence[int], slow: Sequence[int] = ()
) -> dict[str, dict[str, float]]:
    """Per worker tag: its share of the replies and its latency p50/p99 (µs); ``fast``: the
    same over every reply from a worker whose tag is not in ``slow``."""
    groups: dict[int, list[float]] = {}
    fast: list[float] = []
    for lat, tag in zip(lats, tags, strict=False):
        groups.setdefault(tag, []).append(lat)
        if tag not in slow:
            fast.append(lat)
    if slow and fast:
        groups[-1] = fast
    total = max(1, len(lats))
    out: dict[str, dict[str, float]] = {}
    for tag, values in sorted(groups.items()):
        values.sort()
        out["fast" if tag == -1 else str(tag)] = {
            "share": round(len(values) / total, 4),
            "replies": len(values),
            "p50": round(percentile(values, 50) * 1e6, 1),
            "p99": round(percentile(values, 99) * 1e6, 1),
        }
    return out


def _sum_roles(cpu: dict[str, float | None]) -> None:
    """``worker0``, ``worker1``... watched separately: their sum is the ``worker`` role."""
    parts = [k for k in cpu if k.startswith("worker") and k[6:].isdigit()]
    if parts:
        vals = [cpu[k] for k in parts]
        nums = [v for v in vals if v is not None]
        cpu["worker"] = round(sum(nums), 1) if len(nums) == len(vals) else None


# --------------------------------------------------------------------------------------------------
# worker


def _fatal(msg: str) -> ProtocolViolation:
    return ProtocolViolation(msg)


def _drain_rest(sock: zmq.Socket[Any]) -> int:
    """Read and drop what is left of a multipart message; returns the frame count (bounded)."""
    n = 0
    while n < 10_000 and sock.get(zmq.RCVMORE):
        sock.recv()
        n += 1
    return n


class WorkerProto(NamedTuple):
    """The worker side of one MDP version: its header and command bytes."""

    header: bytes
    ready: bytes
    request: bytes
    reply: bytes
    heartbeat: bytes
    disconnect: bytes


#: MDP/0.2 (maitred, majortomo): the reply is FINAL 0x04
MDP02 = WorkerProto(WORKER_HEADER, W_READY, W_REQUEST, W_FINAL, W_HEARTBEAT, W_DISCONNECT)
#: MDP/0.1 (zguide's mdbroker.py): READY 1, REQUEST 2, REPLY 3, HEARTBEAT 4, DISCONNECT 5
MDP01 = WorkerProto(WORKER_HEADER_01, b"\x01", b"\x02", b"\x03", b"\x04", b"\x05")


def _tagged(body: Any, tag: int | None) -> Any:
    """The reply body: the request's frame as is, or (tagged) a copy with byte 8 set to the tag."""
    if tag is None:
        return body
    data = bytearray(body.buffer)
    data[SEQ.size] = tag
    return data


def _worker_mdp(
    sock: zmq.Socket[Any],
    service: bytes,
    deadline: float,
    max_requests: int,
    heartbeat: float,
    proto: WorkerProto = MDP02,
    tag: int | None = None,
    delay: float = 0.0,
) -> int:
    """The fast worker: base-class send/recv frame by frame, the body forwarded without a copy."""
    send, recv = fast_io(sock)
    mono = time.monotonic
    header, w_request, w_reply, w_heartbeat = (
        proto.header,
        proto.request,
        proto.reply,
        proto.heartbeat,
    )
    send(EMPTY, SNDMORE)
    send(header, SNDMORE)
    send(proto.ready, SNDMORE)
    send(service)
    last_sent = mono()
    n = 0
    while n < max_requests:
        try:
            f0 = recv()
        except zmq.Again:  # RCVTIMEO = heartbeat interval: idle
            now = mono()
            if now >= deadline:
                break
            if now - last_sent >= heartbeat:
                send(EMPTY, SNDMORE)
                send(header, SNDMORE)
                send(w_heartbeat)
                last_sent = now
            continue
        hdr = recv()
        cmd = recv()
        if f0 or hdr != header:
            raise _fatal(f"unexpected message from broker: {f0[:16]!r} {hdr[:16]!r} {cmd[:16]!r}")
        if cmd == w_request:
            client = recv()
            empty = recv()
            body = recv(0, False)
            if empty:
                raise _fatal("REQUEST without the empty frame after the client address")
            if delay:
                time.sleep(delay)
            send(EMPTY, SNDMORE)
            send(header, SNDMORE)
            send(w_reply, SNDMORE)
            send(client, SNDMORE)
            send(EMPTY, SNDMORE)
            while body.more:  # multi-frame body (not what our client sends): echo every frame
                send(body, SNDMORE)
                body = recv(0, False)
            send(_tagged(body, tag))
            n += 1
            last_sent = now = mono()
            if now >= deadline:
                break
        elif cmd == w_heartbeat:
            _drain_rest(sock)
            now = mono()
            if now - last_sent >= heartbeat:
                send(EMPTY, SNDMORE)
                send(header, SNDMORE)
                send(w_heartbeat)
                last_sent = now
            if now >= deadline:
                break
        elif cmd == proto.disconnect:
            print("worker: broker sent DISCONNECT", file=sys.stderr, flush=True)
            return 2
        else:
            raise _fatal(f"unexpected worker command from broker: {cmd[:16]!r}")
    return 0


def _worker_simple(
    sock: zmq.Socket[Any],
    service: bytes,
    deadline: float,
    max_requests: int,
    heartbeat: float,
    proto: WorkerProto = MDP02,
    tag: int | None = None,
    delay: float = 0.0,
) -> int:
    """The simple worker, written the way zguide's ``mdwrkapi`` and majortomo's ``Worker`` are:
    poll, ``recv_multipart``, handle one request, ``send_multipart`` the reply, poll again."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    mono = time.monotonic
    sock.send_multipart([EMPTY, proto.header, proto.ready, service])
    last_sent = mono()
    n = 0
    while n < max_requests:
        now = mono()
        if now >= deadline:
            break
        if now - last_sent >= heartbeat:
            sock.send_multipart([EMPTY, proto.header, proto.heartbeat])
            last_sent = now
        if not poller.poll(int(heartbeat * 1000)):
            continue
        msg = sock.recv_multipart(copy=True)
        if len(msg) < 3 or msg[0] or msg[1] != proto.header:
            raise _fatal(f"unexpected message from broker: {[m[:16] for m in msg[:3]]!r}")
        cmd = msg[2]
        if cmd == proto.request:
            if len(msg) < 6 or msg[4]:
                raise _fatal("REQUEST without the client address and the empty frame")
            if delay:
                time.sleep(delay)
            body = msg[5:]
            if tag is not None:
                body[-1] = _tagged(zmq.Frame(body[-1]), tag)
            sock.send_multipart([EMPTY, proto.header, proto.reply, msg[3], EMPTY, *body])
            n += 1
            last_sent = mono()
        elif cmd == proto.disconnect:
            print("worker: broker sent DISCONNECT", file=sys.stderr, flush=True)
            return 2
        elif cmd != proto.heartbeat:
            raise _fatal(f"unexpected worker command from broker: {cmd[:16]!r}")
    return 0


def _worker_raw(
    sock: zmq.Socket[Any],
    deadline: float,
    max_requests: int,
    tag: int | None = None,
    delay: float = 0.0,
) -> int:
    send, recv = fast_io(sock)
    mono = time.monotonic
    n = 0
    check = 0
    while n < max_requests:
        try:
            ident = recv()
        except zmq.Again:
            if mono() >= deadline:
                break
            continue
        empty = recv()
        hdr = recv()
        cmd = recv()
        _service = recv()
        body = recv(0, False)
        if empty or hdr != CLIENT_HEADER or cmd != C_REQUEST:
            raise _fatal(f"unexpected message from proxy: {empty[:16]!r} {hdr[:16]!r} {cmd[:16]!r}")
        if delay:
            time.sleep(delay)
        send(ident, SNDMORE)
        send(EMPTY, SNDMORE)
        send(CLIENT_HEADER, SNDMORE)
        send(C_FINAL, SNDMORE)
        while body.more:
            send(body, SNDMORE)
            body = recv(0, False)
        send(_tagged(body, tag))
        n += 1
        check += 1
        if check >= 1024:  # cheap enough to do per message, but there is no need
            check = 0
            if mono() >= deadline:
                break
    return 0


def run_worker(
    endpoint: str,
    dialect: str = "mdp",
    service: str = DEFAULT_SERVICE,
    max_seconds: float = 120.0,
    max_requests: int = 100_000_000,
    heartbeat: float = HEARTBEAT_INTERVAL,
    shape: str = "fast",
    tag: int | None = None,
    delay: float = 0.0,
) -> int:
    """Serve until ``max_seconds``, ``max_requests``, SIGTERM/SIGINT or DISCONNECT."""
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    curve_client(sock)
    sock.rcvtimeo = int(min(heartbeat, 1.0) * 1000) if dialect == "raw" else int(heartbeat * 1000)
    sock.connect(endpoint)
    deadline = time.monotonic() + max_seconds
    gc.disable()
    rc = 1
    try:
        if dialect in ("mdp", "mdp01"):
            proto = MDP01 if dialect == "mdp01" else MDP02
            loop = _worker_simple if shape == "simple" else _worker_mdp
            rc = loop(sock, service.encode(), deadline, max_requests, heartbeat, proto, tag, delay)
        elif dialect == "raw":
            rc = _worker_raw(sock, deadline, max_requests, tag, delay)
        else:
            raise ValueError(f"unknown dialect {dialect!r}")
    except ProtocolViolation as exc:
        print(f"worker: {exc}", file=sys.stderr, flush=True)
        rc = 3
    except (KeyboardInterrupt, SystemExit):
        rc = 0
    finally:
        if dialect in ("mdp", "mdp01"):
            try:  # polite goodbye; the broker may be gone already
                bye = MDP01 if dialect == "mdp01" else MDP02
                sock.send_multipart([EMPTY, bye.header, bye.disconnect], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        sock.close(linger=0)
        ctx.term()
    return rc


# --------------------------------------------------------------------------------------------------
# probe


def probe(
    ctx: zmq.Context[Any],
    endpoint: str,
    timeout: float,
    service: str = DEFAULT_SERVICE,
    size: int = DEFAULT_SIZE,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.25,
    dialect: str = "mdp",
) -> float:
    """One successful round trip through ``endpoint`` to the echo worker, in seconds.

    Sends a numbered request every ``interval`` until a FINAL for one of them arrives. Raises
    ``TimeoutError`` after ``timeout`` seconds, ``RuntimeError`` as soon as ``alive()`` says a
    process it depends on has exited.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    curve_client(sock)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    pad = b"\x5a" * max(0, size - SEQ.size)
    perf = time.perf_counter
    try:
        sock.connect(endpoint)
        start = perf()
        deadline = start + timeout
        sent: dict[int, float] = {}
        seq = PROBE_SEQ_BASE
        next_send = start
        for _ in range(100_000):  # bounded; the deadline normally ends it first
            now = perf()
            if now >= deadline:
                raise TimeoutError(f"no echo round trip through {endpoint} within {timeout:g} s")
            if alive is not None and not alive():
                raise RuntimeError("a process it needs has exited")
            if now >= next_send and len(sent) < 64:
                sent[seq] = now
                body = SEQ.pack(seq) + pad
                if dialect == "mdp01":
                    sock.send_multipart([EMPTY, CLIENT_HEADER_01, service.encode(), body])
                else:
                    sock.send_multipart([EMPTY, CLIENT_HEADER, C_REQUEST, service.encode(), body])
                seq += 1
                next_send = now + interval
            wait = max(0.0, min(next_send, deadline) - perf())
            if not poller.poll(int(wait * 1000) + 1):
                continue
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if (
                len(frames) >= 4
                and frames[0] == EMPTY
                and frames[1] == (CLIENT_HEADER_01 if dialect == "mdp01" else CLIENT_HEADER)
                and frames[2] == (service.encode() if dialect == "mdp01" else C_FINAL)
                and len(frames[-1]) >= SEQ.size
            ):
                t_sent = sent.get(SEQ.unpack_from(frames[-1])[0])
                if t_sent is not None:
                    return perf() - t_sent
        raise TimeoutError(f"no echo round trip through {endpoint}")
    finally:
        sock.close(linger=0)


# --------------------------------------------------------------------------------------------------
# command line


def _watch_arg(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not name or not pid.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=PID")
    return name, int(pid)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MDP benchmark load generator")
    sub = parser.add_subparsers(dest="role", required=True)

    c = sub.add_parser("client", help="MDP/0.2 client keeping N requests in flight")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--inflight", type=_positive_int, default=1)
    c.add_argument("--size", type=int, default=DEFAULT_SIZE, help="body bytes (>= 8)")
    c.add_argument("--service", default=DEFAULT_SERVICE)
    c.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds")
    c.add_argument("--warmup-max", type=_positive_int, default=200_000, help="warm-up reply cap")
    c.add_argument("--duration", type=float, default=3.0, help="measured seconds (upper bound)")
    c.add_argument("--max-requests", type=_positive_int, default=500_000, help="measured reply cap")
    c.add_argument("--timeout", type=float, default=5.0, help="stall timeout per reply, seconds")
    c.add_argument("--io", choices=("batch", "blocking"), default="batch")
    c.add_argument("--dialect", choices=("mdp", "mdp01"), default="mdp")
    c.add_argument("--tagged", action="store_true", help="report each worker's share (by tag)")
    c.add_argument("--slow-tag", type=int, action="append", default=[], help="a slow worker's tag")
    c.add_argument(
        "--watch",
        type=_watch_arg,
        action="append",
        default=[],
        metavar="NAME=PID",
        help="also report the CPU use of this process during the measured phase",
    )

    w = sub.add_parser("worker", help="echo worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--dialect", choices=("mdp", "mdp01", "raw"), default="mdp")
    w.add_argument("--shape", choices=("fast", "simple"), default="fast")
    w.add_argument("--tag", type=int, default=None, help="write this byte at body[8] of replies")
    w.add_argument("--delay-us", type=int, default=0, help="sleep this long per request")
    w.add_argument("--service", default=DEFAULT_SERVICE)
    w.add_argument("--max-seconds", type=float, default=120.0)
    w.add_argument("--max-requests", type=_positive_int, default=100_000_000)
    w.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL)

    p = sub.add_parser("probe", help="one round trip through a broker to an echo worker")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", default=DEFAULT_SERVICE)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--dialect", choices=("mdp", "mdp01"), default="mdp")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    if args.role == "client":
        result = run_client(
            args.endpoint,
            args.inflight,
            size=args.size,
            service=args.service,
            warmup=args.warmup,
            warmup_max=args.warmup_max,
            duration=args.duration,
            max_requests=args.max_requests,
            timeout=args.timeout,
            io=args.io,
            watch=dict(args.watch),
            dialect=args.dialect,
            tagged=args.tagged,
            slow_tags=args.slow_tag,
        )
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    if args.role == "worker":
        return run_worker(
            args.endpoint,
            dialect=args.dialect,
            service=args.service,
            max_seconds=args.max_seconds,
            max_requests=args.max_requests,
            heartbeat=args.heartbeat,
            shape=args.shape,
            tag=args.tag,
            delay=args.delay_us / 1e6,
        )
    ctx = zmq.Context()
    try:
        rtt = probe(ctx, args.endpoint, args.timeout, service=args.service, dialect=args.dialect)
    except (TimeoutError, RuntimeError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.term()
    print(f"round trip {rtt * 1e6:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
