"""The JetStream store: its pure parts (subject tokens, the settings diff, the size limit), and
the store itself against a real ``nats-server -js`` (each test starts its own): what is written
and committed is what a new store reads back; the journal's waiters resolve on JetStream's
acknowledgement and fail when it does not come; a deleted stream is refused and noticed when it
is back; ``maitred store migrate`` both ways with the counts checked, twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.cli import main
from maitred.core.config import Config, StoreSection
from maitred.core.durable import StoreJournal
from maitred.core.errors import BrokerError, ErrorCode, MaitredError
from maitred.core.store import SQLiteStore, StoredMessage
from maitred.core.store_jetstream import (
    JetStreamSettings,
    JetStreamStore,
    StreamMismatch,
    message_limit,
    open_jetstream,
    settings_diff,
    settings_from,
    subject_token,
    token_name,
    wanted_config,
)
from maitred.core.store_migrate import End, parse_end
from maitred.plugins.nats_testing import (  # noqa: F401  (fixtures)
    NatsServer,
    NatsStarter,
    nats_server,
)

T = TypeVar("T")

# -- pure parts -------------------------------------------------------------------------------


@given(st.text())
def test_a_queue_name_is_one_subject_token_and_comes_back(name: str) -> None:
    token = subject_token(name)
    assert token and not set(token) & set(".*> \t\r\n")
    assert token_name(token) == name


def test_names_subjects_cannot_hold_are_encoded() -> None:
    assert subject_token("") == "Q"
    assert subject_token("a.b") != subject_token("a b")
    with pytest.raises(ValueError, match="not a queue token"):
        token_name("X")


def test_the_settings_diff_names_each_difference() -> None:
    wanted = wanted_config("S", 3)
    assert settings_diff(wanted, {**wanted, "max_age": 5}) == []  # others are not ours
    found = {**wanted, "retention": "limits", "num_replicas": 1, "subjects": ("S.>",)}
    assert settings_diff(wanted, found) == [
        "retention: the stream has 'limits', maitred needs 'workqueue'",
        "num_replicas: the stream has 1, maitred needs 3",
    ]


def test_the_message_limit_is_the_smaller_one_less_the_overhead() -> None:
    assert message_limit(None, None) == 0
    assert message_limit(-1, 1 << 20) == (1 << 20) - 512
    assert message_limit(4096, 1 << 20) == 4096 - 512
    assert message_limit(100, 0) == 1


def test_settings_from_config_keys() -> None:
    s = settings_from([], "", 3, 1.0)
    assert (s.servers, s.stream, s.replicas) == (("nats://127.0.0.1:4222",), "MAITRED_DURABLE", 3)
    with pytest.raises(BrokerError, match="stream name"):
        settings_from([], "a.b", 1, 1.0)


def test_migrate_ends() -> None:
    config = Config(store=StoreSection(path="/x.db", jetstream_nats=["nats://h:1"]))
    assert parse_end("sqlite", config) == End("sqlite", "/x.db")
    assert parse_end("sqlite:/y.db", config) == End("sqlite", "/y.db")
    assert parse_end("jetstream", config) == End("jetstream", servers=("nats://h:1",))
    assert str(parse_end("jetstream:nats://a:1,nats://b:2", config)) == (
        "jetstream:nats://a:1,nats://b:2"
    )
    with pytest.raises(MaitredError, match="sqlite:PATH"):
        parse_end("redis:x", config)


def test_core_does_not_import_nats() -> None:
    code = (
        "import sys, maitred.core.cli, maitred.core.runtime, maitred.core.store_jetstream, "
        "maitred.core.store_migrate; assert 'nats' not in sys.modules, 'nats imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- against a server ---------------------------------------------------------------------------

pytest.importorskip("nats")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(factory(), 15))  # type: ignore[arg-type]


def msg(queue: str, n: int, payload: bytes = b"p", kind: bytes = b"k") -> StoredMessage:
    return StoredMessage(queue, n, payload, kind, "origin", 123, 0)


def settings(server: NatsServer, stream: str = "T", timeout: float = 2.0) -> JetStreamSettings:
    return JetStreamSettings((server.url,), stream, 1, timeout)


async def committed(store: JetStreamStore) -> None:
    journal = StoreJournal(store)
    store.flush()
    await journal.committed()


def test_what_is_committed_is_read_back(nats_server: NatsStarter) -> None:  # noqa: F811
    server = nats_server(jetstream=True)

    async def write() -> dict[str, Any]:
        store = await open_jetstream(settings(server))
        assert store.recover().queues == {}
        store.create_queue("sw.q", "switch")
        for n in range(5):
            store.append(msg("svc a", n))
        store.append(msg("sw.q", 0))
        store.ack("svc a", 4)  # appended and acked in one batch: never written
        store.delivered("svc a", 3, 2)  # folded into its append
        await committed(store)
        store.ack("svc a", 0)
        store.delivered("svc a", 1, 5)
        store.dead_letter(msg("svc a", 2), "too many deliveries")
        store.create_queue("gone", "switch")
        store.append(msg("gone", 0))
        store.destroy_queue("gone")
        store.raise_counter("old", 7)
        await committed(store)
        snap = store.snapshot()
        await store.drain()
        return snap

    snap = run(write)
    assert snap["published"] >= 9 and snap["purged"] == 3

    async def read() -> Any:
        store = await open_jetstream(settings(server))
        held = store.recover()
        await store.drain()
        return held

    held = run(read)
    assert {q: [(m.n, m.deliveries) for m in ms] for q, ms in held.queues.items()} == {
        "svc a": [(1, 5), (3, 2)],
        "sw.q": [(0, 0)],
    }
    assert held.owners == {"sw.q": "switch"}
    assert held.counters == {"svc a": 5, "sw.q": 1, "gone": 1, "old": 7}
    assert [(d.message.queue, d.message.n, d.reason) for d in held.dead] == [
        ("svc a", 2, "too many deliveries")
    ]
    m = held.queues["sw.q"][0]
    assert (m.payload, m.kind, m.origin, m.time) == (b"p", b"k", "origin", 123)


def test_a_deleted_stream_fails_the_waiters_and_refuses_until_it_is_back(
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)

    async def scenario() -> None:
        store = await open_jetstream(settings(server, timeout=1.0))
        assert store.refusal(10) is None
        await store._js.delete_stream("T")
        journal = StoreJournal(store)
        store.append(msg("q", 0))
        with pytest.raises(MaitredError) as failed:
            await journal.committed()
        assert failed.value.code is ErrorCode.NO_WORKER
        assert journal.failures == 1
        refused = store.refusal(10)
        assert refused is not None and refused.code is ErrorCode.NO_WORKER
        too_big = store.refusal(10 << 20)
        assert too_big is not None and too_big.code is ErrorCode.TOO_LARGE
        await store._check_stream()  # an operator makes it again
        while store.down is not None:  # the probe notices within a second
            await asyncio.sleep(0.05)
        store.append(msg("q", 1))
        await journal.committed()
        await store.drain()

    run(scenario)


def test_a_stream_of_other_settings_or_no_server_is_refused(
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)

    async def scenario() -> None:
        store = await open_jetstream(settings(server))
        await store._js.update_stream(name="T", subjects=["T.>"], retention="workqueue")
        await store.drain()
        with pytest.raises(StreamMismatch, match="max_msgs_per_subject: the stream has -1"):
            await open_jetstream(settings(server))
        server.kill()
        with pytest.raises(BrokerError, match="cannot reach NATS"):
            await open_jetstream(settings(server, timeout=0.5))

    run(scenario)


def test_migrate_both_ways_with_counts_twice(
    nats_server: NatsStarter,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = nats_server(jetstream=True)
    src = tmp_path / "src.sqlite3"
    store = SQLiteStore(src)
    store.create_queue("jobs.x", "switch")
    for n in range(200):
        store.append(msg("svc", n, b"m%d" % n))
    store.append(msg("jobs.x", 0))
    store.dead_letter(msg("svc", 500), "dead")
    store.raise_counter("svc", 900)
    store.create_queue("gone", "switch")  # destroyed: only its counter is left
    store.append(msg("gone", 0))
    store.append(msg("gone", 1))
    store.flush()
    store.destroy_queue("gone")
    store.flush()
    store.close()
    url = f"jetstream:{server.url}"
    for _ in range(2):  # idempotent: a second run changes nothing
        assert main(["store", "migrate", "--from", f"sqlite:{src}", "--to", url]) == 0
        out = capsys.readouterr().out
        assert out.count("201 messages in 2 queues, 1 dead letters, 3 id counters") == 2, out
    back = tmp_path / "back.sqlite3"
    assert main(["store", "migrate", "--from", url, "--to", f"sqlite:{back}"]) == 0
    assert "201 messages in 2 queues, 1 dead letters, 3 id counters" in capsys.readouterr().out
    first, second = SQLiteStore(src), SQLiteStore(back)
    a, b = first.recover(), second.recover()
    first.close()
    second.close()
    assert a.queues == b.queues and a.owners == b.owners
    assert [(d.message, d.reason) for d in a.dead] == [(d.message, d.reason) for d in b.dead]
    assert b.counters["svc"] == 900
    assert (b.counters["gone"], "gone" in b.queues) == (2, False)
    assert main(["store", "migrate", "--from", f"sqlite:{tmp_path / 'none'}", "--to", url]) == 2


def test_check_says_when_the_jetstream_store_lacks_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from maitred.core.app import preflight

    config = Config(
        store=StoreSection(backend="jetstream"),
        services={"jobs": {"on_no_worker": "store"}},
        transports={},
    )
    assert preflight(config, {}) == []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nats" else real(name, *a)
    )
    (problem,) = preflight(config, {})
    assert 'store: backend "jetstream" needs nats-py: pip install "maitred[jetstream]"' in problem


def test_a_server_gone_times_the_batch_out_and_refuses_until_it_is_back(
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)

    async def scenario() -> None:
        store = await open_jetstream(settings(server, timeout=0.5))
        journal = StoreJournal(store)
        server.pause()  # (SIGSTOP: the connection stays, nothing answers)
        try:
            store.append(msg("q", 0))
            with pytest.raises(MaitredError, match=r"did not acknowledge within 0\.5s"):
                await journal.committed()
            refused = store.refusal(1)
            assert refused is not None and "did not acknowledge" in refused.reason
        finally:
            server.resume()
        while store.down is not None:  # the probe finds the stream again
            await asyncio.sleep(0.05)
        assert store.refusal(1) is None
        store.close()  # without drain: the connection is closed in the background
        await asyncio.sleep(0)

    run(scenario)


def test_messages_of_the_stream_that_are_not_the_stores_are_left_alone(
    nats_server: NatsStarter,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = nats_server(jetstream=True)

    async def scenario() -> Any:
        store = await open_jetstream(settings(server))
        for subject, data in [
            ("T.m.Qxyz.1.body", b"\xc1"),  # not msgpack
            ("T.m", b"short"),
            ("T.q.QMFRGG", b"{}"),  # a record ("abc") without its keys
            ("T.other.thing", b"?"),
        ]:
            await store._js.publish(subject, data)
        store.append(msg("echo", 3))
        await committed(store)
        await store.drain()
        again = await open_jetstream(settings(server))
        held = again.recover()
        await again.drain()
        return held

    held = run(scenario)
    assert [(m.queue, m.n) for ms in held.queues.values() for m in ms] == [("echo", 3)]
    assert held.counters["echo"] == 4
    assert caplog.text.count("is not a maitred message, left alone") == 4
