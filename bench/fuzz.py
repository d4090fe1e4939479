"""Fuzz every pure codec with random and mutated inputs; count what each does, report crashes.

Not part of the test suite (a million inputs per codec take minutes); the property tests in
tests/unit/test_codec_properties.py run the same targets with a few hundred inputs each.

A **target** maps one byte string onto a codec's decoders, the way the transport hands them
peer input, and knows which exceptions are the codec's documented refusals:

- ``mm``: middleman frames (the bytes as UTF-8 text, with replacement, as a text frame
  arrives) → ``mm_codec.parse``; refusal: ``ParseError``;
- ``json``: maitred.json messages → ``json_codec.decode`` (both directions) and, for messages
  with a body, ``body_of``; refusals: ``msgspec.MsgspecError``, ``JsonBodyError``;
- ``mdp``: ZeroMQ multipart messages (the bytes cut into frames at ``0xff``) →
  ``codec.parse``, ``parse_client_reply`` and ``parse_worker_inbound`` for every dialect,
  ``parse_error_body``; refusal: ``MdpFormatError``;
- ``zap``: ZAP requests as the broker's handler reads them (the bytes cut into frames at
  ``0xff``) → ``zap.respond`` (which answers or drops anything and must never raise) and
  ``zap.z85_decode``/``public_key_problem`` on the first frame; refusal: ``ValueError`` of
  ``z85_decode`` (a key that is not Z85);
- ``http``: the HTTP transport's decoders (message-switch bodies, kinds, ids, paths, trace
  arguments, frames JSON, SSE, error bodies), one chosen by the first byte; refusals:
  ``SwitchError``, ``ValueError`` (documented by each).

Anything else raised is a **crash**: counted, the first few inputs printed (hex) and written
to ``--crash-dir``. Exit status 1 when any target crashed.

Engines: ``mutate`` (default; fast: each input is a seed, a valid encoding, mutated one to
eight times (bit flips, random bytes, insertions of protocol-significant tokens, deletions,
splices) or, one time in eight, random bytes) and ``hypothesis`` (``st.binary()`` and the
same seeds through Hypothesis, ``max_examples`` = N; slower). Both are deterministic for a
given ``--seed``. Usage::

    .venv/bin/python bench/fuzz.py                         # every target, 1,000,000 inputs each
    .venv/bin/python bench/fuzz.py --target mm -n 100000
    .venv/bin/python bench/fuzz.py --engine hypothesis -n 20000
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode
from maitred.transports.http import codec as http_codec
from maitred.transports.mdp import codec as mdp_codec
from maitred.transports.mdp import zap
from maitred.transports.ws import json_codec, mm_codec

# -- targets -----------------------------------------------------------------------------------


def _mm(data: bytes) -> str:
    msg = mm_codec.parse(data.decode("utf-8", "replace"))
    # what the transport does with a parsed message: read its fields and headers
    _ = (msg.command, msg.target, msg.body, [f"{k}: {v}" for k, v in msg.headers])
    return "ok"


def _json(data: bytes) -> str:
    outcome = "ok"
    try:
        msg = json_codec.decode(data)
    except msgspec.MsgspecError:
        outcome = "refused"
    else:
        if isinstance(msg, json_codec._WithBody):
            try:
                json_codec.body_of(msg)
            except json_codec.JsonBodyError:
                outcome = "bad body"
    try:
        json_codec.decode_server(data)
    except msgspec.MsgspecError:
        pass
    return outcome


_MDP_DIALECTS = sorted({0, *mdp_codec.DIALECT_NAMES})


def _frames(data: bytes) -> list[bytes]:
    return data.split(b"\xff") if data else []


def _mdp(data: bytes) -> str:
    frames = _frames(data)
    outcome = "ok"
    try:
        mdp_codec.parse(frames)
    except mdp_codec.MdpFormatError:
        outcome = "refused"
    for dialect in _MDP_DIALECTS:
        try:
            mdp_codec.parse_client_reply(dialect, frames)
        except mdp_codec.MdpFormatError:
            pass
        if dialect:
            try:
                mdp_codec.parse_worker_inbound(dialect, frames)
            except mdp_codec.MdpFormatError:
                pass
    mdp_codec.parse_error_body(frames)
    return outcome


_ZAP_KEY = bytes(range(32))
_ZAP_KEYS = {_ZAP_KEY: Identity("known")}


def _zap(data: bytes) -> str:
    frames = _frames(data)
    outcome = zap.respond(frames, _ZAP_KEYS)
    first = frames[0].decode("utf-8", "replace") if frames else ""
    zap.public_key_problem(first)
    try:
        zap.z85_decode(first)
    except ValueError:
        pass
    return "answered" if outcome[0] is not None else "dropped"


def _zap_seeds() -> list[bytes]:
    head = [b"peer", b"", zap.VERSION, b"1", b"maitred", b"127.0.0.1", b""]
    return [
        b"\xff".join([*head, b"CURVE", _ZAP_KEY]),
        b"\xff".join([*head, b"CURVE", bytes(32)]),
        b"\xff".join([*head, b"NULL"]),
        b"\xff".join([*head, b"PLAIN", b"user", b"pass"]),
        zap.z85_encode(_ZAP_KEY).encode(),
    ]


def _text(data: bytes) -> str:
    """Text as the HTTP server hands it over (a path or a segment: always valid UTF-8)."""
    return data.decode("utf-8", "replace")


_HTTP: list[tuple[str, Callable[[bytes], Any]]] = [
    ("parse_transfer", http_codec.parse_transfer),
    ("decode_kind", http_codec.decode_kind),
    ("parse_id", lambda d: http_codec.parse_id(_text(d), cursor=bool(d[:1] == b"-"))),
    ("split_path", lambda d: http_codec.split_path(_text(d))),
    ("parse_trace_args", lambda d: http_codec.parse_trace_args(_text(d).split("/"))),
    ("parse_frames_json", http_codec.parse_frames_json),
    ("parse_sse", http_codec.parse_sse),
    ("error_from_body", lambda d: http_codec.error_from_body(400 + len(d) % 200, d)),
    ("payload_text", lambda d: http_codec.payload_bytes(http_codec.payload_text(d))),
]


def _http(data: bytes) -> str:
    name, fn = _HTTP[data[0] % len(_HTTP)] if data else _HTTP[0]
    try:
        fn(data[1:])
    except (http_codec.SwitchError, ValueError):
        return f"{name}: refused"
    return f"{name}: ok"


class Target:
    def __init__(
        self,
        name: str,
        run: Callable[[bytes], str],
        refusals: tuple[type[BaseException], ...],
        seeds: list[bytes],
    ) -> None:
        self.name, self.run, self.refusals, self.seeds = name, run, refusals, seeds


def _mm_seeds() -> list[bytes]:
    return [
        mm_codec.encode("REQ", "echo", [("Reqid", "1")], "hello").encode(),
        mm_codec.encode("PUB", "chat.room", [("A", "b"), ("A", "c")], "a\r\n.\r\nb").encode(),
        mm_codec.encode("SUB", "chat.>", [], "").encode(),
        b"INT UID\r\nForcid: x\r\nSetuid: y\r\n\r\n.\r\n",
        b"RES echo\nRid: 3\n Folded: x\n\n..dot\n.\n",
    ]


def _json_seeds() -> list[bytes]:
    return [
        b'{"type":"hello","key":"k","name":"svc","methods":["a","b"]}',
        b'{"type":"request","id":1,"destination":"echo","payload":{"x":[1,2.5,null]}}',
        b'{"type":"request","id":"r","destination":"e","frames":["aGk=",""],"timeout":1.5}',
        b'{"type":"reply","id":7,"data":"aGVsbG8="}',
        b'{"type":"error","id":null,"code":403,"message":"no"}',
        b'{"type":"publish","topic":"t","payload":"x","headers":{"a":"b"}}',
        b'{"type":"subscribe","id":2,"topic":"a.*"}',
        b'{"type":"welcome","id":"c","services":["s"],"trusted":true}',
    ]


def _mdp_seeds() -> list[bytes]:
    out = []
    for dialect in (mdp_codec.ENVELOPE, mdp_codec.ENVELOPE | mdp_codec.V2):
        out.append(b"\xff".join(mdp_codec.client_request(dialect, b"echo", [b"a", b""])))
        out.append(b"\xff".join(mdp_codec.worker_ready(dialect, b"svc")))
        out.append(b"\xff".join(mdp_codec.worker_reply(dialect, b"tok", [b"x"])))
        out.append(b"\xff".join(mdp_codec.worker_heartbeat(dialect)))
        reply = mdp_codec.client_reply(dialect, True, b"echo", [b"r"])
        if reply:
            out.append(b"\xff".join(reply))
    out.append(b"\xff".join(mdp_codec.error_body(ErrorCode.NO_WORKER, "none")))
    return out


def _http_seeds() -> list[bytes]:
    bodies = [
        b'{"from":"12","timeout":3.5,"queues":["a","b"]}',
        b'["Request","reply.q"]',
        b"9223372036854775807",
        b"/request/q%20x/reply?x=1#y",
        b"12/5.0",
        b'{"frames":["aGk=",""]}',
        b"event: a\ndata: {}\n\n: c\n\nevent: b\n",
        b'{"error":{"code":"forbidden","reason":"no"}}',
        "caf\u00e9 \u2603".encode(),
    ]
    return [bytes([i]) + body for i, body in enumerate(bodies)]


TARGETS = {
    "mm": Target("mm", _mm, (mm_codec.ParseError,), _mm_seeds()),
    "json": Target("json", _json, (), _json_seeds()),
    "mdp": Target("mdp", _mdp, (), _mdp_seeds()),
    "http": Target("http", _http, (), _http_seeds()),
    "zap": Target("zap", _zap, (), _zap_seeds()),
}

# -- the mutation engine -------------------------------------------------------------------------

#: bytes that mean something to one of the codecs
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b":",
    b" ",
    b"\x00",
    b"\xff",
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x06",
    b"MDPC01",
    b"MDPW01",
    b"MDPC02",
    b"MDPW02",
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"null",
    b"true",
    b"1e999",
    b"-1",
    b"9" * 30,
    b"\\u0000",
    b"\\ud800",
    b'"type"',
    b'"hello"',
    b'"request"',
    b"%",
    b"%ff",
    b"%2F",
    b"/",
    b"?",
    b"#",
    b"data: ",
    b"event: ",
    b"\xc3\x28",
    b"\xf0\x9f\x98",
    b"\xe2\x82\xac",
    b"=",
    b"====",
    b"A" * 1000,
]


def _mutate(rng: random.Random, data: bytearray, seeds: list[bytes]) -> None:
    op = rng.randrange(7)
    n = len(data)
    if op == 0 and n:
        i = rng.randrange(n)
        data[i] ^= 1 << rng.randrange(8)
    elif op == 1 and n:
        data[rng.randrange(n)] = rng.randrange(256)
    elif op == 2:
        i = rng.randrange(n + 1)
        data[i:i] = rng.choice(TOKENS)
    elif op == 3 and n:
        i = rng.randrange(n)
        del data[i : i + rng.randrange(1, 16)]
    elif op == 4 and n:
        i = rng.randrange(n)
        j = rng.randrange(i, min(n, i + 64) + 1)
        k = rng.randrange(n + 1)
        data[k:k] = data[i:j]
    elif op == 5:
        other = rng.choice(seeds)
        i = rng.randrange(len(data) + 1)
        j = rng.randrange(len(other) + 1)
        data[i:] = other[j:]
    else:
        i = rng.randrange(n + 1)
        data[i:i] = rng.randbytes(rng.randrange(1, 8))


def mutated_inputs(target: Target, n: int, seed: int) -> Any:
    rng = random.Random(f"{seed}:{target.name}")
    for _ in range(n):
        if rng.randrange(8) == 0:
            yield rng.randbytes(rng.randrange(0, 64))
            continue
        data = bytearray(rng.choice(target.seeds))
        for _ in range(rng.randrange(1, 9)):
            _mutate(rng, data, target.seeds)
        yield bytes(data)


# -- running --------------------------------------------------------------------------------------


class Report:
    def __init__(self, target: Target, crash_dir: Path | None, show: int = 5) -> None:
        self.target = target
        self.inputs = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.crashes: collections.Counter[str] = collections.Counter()
        self.crash_dir = crash_dir
        self.show = show

    def feed(self, data: bytes) -> None:
        self.inputs += 1
        try:
            self.outcomes[self.target.run(data)] += 1
        except self.target.refusals as exc:
            self.outcomes[f"refused ({type(exc).__name__})"] += 1
        except Exception as exc:  # a crash: what the fuzz run is looking for
            kind = f"{type(exc).__name__}: {str(exc)[:80]}"
            self.crashes[kind] += 1
            if self.crashes[kind] == 1 and sum(self.crashes.values()) <= self.show:
                print(f"  CRASH {self.target.name}: {kind}\n    input: {data.hex()}", flush=True)
            if self.crash_dir is not None and self.crashes[kind] == 1:
                self.crash_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self.target.name}-{sum(self.crashes.values())}.bin"
                (self.crash_dir / name).write_bytes(data)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "inputs": self.inputs,
            "seconds": round(seconds, 1),
            "per_second": round(self.inputs / seconds) if seconds else None,
            "crashes": sum(self.crashes.values()),
            "crash_kinds": dict(self.crashes),
            "outcomes": dict(self.outcomes.most_common()),
        }


def run_mutate(target: Target, n: int, seed: int, report: Report, progress: int) -> None:
    for i, data in enumerate(mutated_inputs(target, n, seed), 1):
        report.feed(data)
        if progress and i % progress == 0:
            print(
                f"  {target.name}: {i:,} inputs, {sum(report.crashes.values())} crashes",
                file=sys.stderr,
                flush=True,
            )


def run_hypothesis(target: Target, n: int, seed: int, report: Report, progress: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    inputs = st.one_of(
        st.binary(max_size=256),
        st.builds(
            lambda base, cut, extra: base[:cut] + extra + base[cut:],
            st.sampled_from(target.seeds),
            st.integers(0, 256),
            st.binary(max_size=16) | st.sampled_from(TOKENS),
        ),
    )

    @hseed(seed)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=("generate",),
    )
    @given(inputs)
    def fuzz(data: bytes) -> None:
        report.feed(data)
        if progress and report.inputs % progress == 0:
            print(
                f"  {target.name}: {report.inputs:,} inputs, "
                f"{sum(report.crashes.values())} crashes",
                file=sys.stderr,
                flush=True,
            )

    fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("-n", "--inputs", type=int, default=1_000_000, help="per target")
    parser.add_argument("--engine", choices=("mutate", "hypothesis"), default="mutate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--progress", type=int, default=100_000, help="0: quiet")
    parser.add_argument("--crash-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the reports here")
    args = parser.parse_args(argv)
    reports = []
    for name in args.target or sorted(TARGETS):
        target = TARGETS[name]
        report = Report(target, args.crash_dir)
        started = time.perf_counter()
        engine = run_mutate if args.engine == "mutate" else run_hypothesis
        engine(target, args.inputs, args.seed, report, args.progress)
        summary = report.summary(time.perf_counter() - started)
        summary["engine"] = args.engine
        reports.append(summary)
        print(
            f"{name}: {summary['inputs']:,} inputs in {summary['seconds']} s, "
            f"{summary['crashes']} crashes; outcomes: {summary['outcomes']}",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    return 1 if any(r["crashes"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
