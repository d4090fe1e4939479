"""Remote (cluster proxy) workers in the core: local first, most free credit among remote ones,
local_only sessions never reach them, set_credit, pattern watchers and plugin mmi services."""

from __future__ import annotations

import pytest

from maitred.core.access import ANONYMOUS
from maitred.core.errors import ErrorCode
from maitred.core.routing.model import ReplyKind, RequestState, ServicePolicy
from tests.core.harness import Harness, sink_of


def test_a_free_local_worker_wins_over_a_free_remote_one(h: Harness) -> None:
    remote = h.worker("echo", remote=True, credit=8)
    local = h.worker("echo")
    client = h.session("client")
    first = h.call(client, "echo")
    assert first is not None and first.worker is local
    second = h.call(client, "echo")  # the local worker is busy: the remote one takes it
    assert second is not None and second.worker is remote
    h.reply(local, first, (b"ok",))
    third = h.call(client, "echo")  # local again as soon as it is free
    assert third is not None and third.worker is local


def test_queued_requests_go_to_local_workers_first(h: Harness) -> None:
    local = h.worker("echo")
    client = h.session("client")
    busy = h.call(client, "echo")
    waiting = h.call(client, "echo")
    assert busy is not None and waiting is not None
    assert waiting.state is RequestState.QUEUED
    remote = h.worker("echo", remote=True)  # a node announces the service: it takes the queue
    assert waiting.worker is remote
    assert local.inflight == {busy.id: busy}


def test_among_remote_workers_the_one_with_most_free_credit(h: Harness) -> None:
    small = h.worker("echo", remote=True, credit=2)
    big = h.worker("echo", remote=True, credit=5)
    client = h.session("client")
    picked = [h.call(client, "echo") for _ in range(4)]
    assert [r.worker for r in picked if r is not None] == [big, big, big, small]


def test_a_local_only_session_never_reaches_a_remote_worker(h: Harness) -> None:
    h.worker("echo", remote=True, credit=4)
    forwarded = h.router.open_session(
        "cluster", sink_of(h.session("x")), ANONYMOUS, h.now, local_only=True
    )
    request = h.call(forwarded, "echo")
    assert request is not None and request.state is RequestState.QUEUED
    local = h.worker("echo")
    assert request.worker is local


def test_a_local_only_request_at_the_head_keeps_its_place(h: Harness) -> None:
    local = h.worker("echo")
    remote = h.worker("echo", remote=True)
    client = h.session("client")
    held = h.call(client, "echo")  # the local worker is busy with it
    assert held is not None and held.worker is local
    other = h.call(client, "echo")  # the remote one takes a normal request
    assert other is not None and other.worker is remote
    forwarded = h.router.open_session(
        "cluster", sink_of(h.session("y")), ANONYMOUS, h.now, local_only=True
    )
    mine = h.call(forwarded, "echo")
    behind = h.call(client, "echo")
    assert mine is not None and behind is not None
    h.reply(remote, other, (b"r",))  # the remote worker is free; the head may not use it
    assert mine.state is RequestState.QUEUED and behind.state is RequestState.QUEUED
    h.reply(local, held, (b"l",))
    assert mine.worker is local
    assert behind.worker is remote


def test_set_credit_opens_and_closes_a_remote_worker(h: Harness) -> None:
    remote = h.worker("echo", remote=True)
    client = h.session("client")
    first = h.call(client, "echo")
    queued = h.call(client, "echo")
    assert first is not None and queued is not None
    assert queued.state is RequestState.QUEUED
    h.router.set_credit(remote, 3, h.now)
    assert queued.worker is remote and remote in remote.service.free
    h.router.set_credit(remote, 0, h.now)  # at least 1: holding two, it gets no more
    assert remote.credit == 1 and remote not in remote.service.free
    h.router.remove_worker(remote, h.now)
    h.router.set_credit(remote, 5, h.now)  # a worker gone: harmless
    assert remote.credit == 1


def test_a_remote_worker_that_leaves_fails_or_redelivers_like_a_local_one() -> None:
    h = Harness(policies={"idem": ServicePolicy(redeliver=True)})
    remote = h.worker("echo", remote=True)
    client = h.session("client")
    lost = h.call(client, "echo")
    h.router.remove_worker(remote, h.now, "node left")
    assert lost is not None and sink_of(client).code_for(lost) is ErrorCode.WORKER_DIED
    proxy = h.worker("idem", remote=True)
    again = h.call(client, "idem")
    h.router.remove_worker(proxy, h.now, "node left")
    local = h.worker("idem")
    assert again is not None and again.worker is local


def test_remote_workers_publish_no_worker_events(h: Harness) -> None:
    watcher = h.session("watcher")
    h.router.subscribe(watcher, "$sys.>")
    remote = h.worker("echo", remote=True)
    h.router.remove_worker(remote, h.now)
    topics = sink_of(watcher).topics()
    assert "$sys.worker.ready" not in topics and "$sys.worker.gone" not in topics
    assert "$sys.service.online" in topics


def test_pattern_watchers_see_first_and_last_subscriber(h: Harness) -> None:
    a = h.session("a")
    h.router.subscribe(a, "x.*")
    seen: list[tuple[str, bool]] = []
    stop = h.router.watch_patterns(lambda p, added: seen.append((p, added)))
    assert seen == [("x.*", True)]
    b = h.session("b")
    h.router.subscribe(b, "x.*")
    fabric = h.router.open_session(
        "cluster", sink_of(h.session("f")), ANONYMOUS, h.now, local_only=True
    )
    h.router.subscribe(fabric, ">", check=False)  # the fabric's own: not counted
    h.router.unsubscribe(a, "x.*")
    assert seen == [("x.*", True)]
    h.router.subscribe(b, "y.>")
    h.close(b)
    assert seen[:2] == [("x.*", True), ("y.>", True)]
    assert sorted(seen[2:]) == [("x.*", False), ("y.>", False)]
    stop()
    stop()
    h.router.subscribe(a, "z")
    assert len(seen) == 4


@pytest.mark.allow_error_logs("pattern watcher")
def test_a_failing_pattern_watcher_breaks_nothing(h: Harness) -> None:
    def boom(pattern: str, added: bool) -> None:
        raise RuntimeError("watcher bug")

    h.router.watch_patterns(boom)
    a = h.session("a")
    assert h.router.subscribe(a, "x") is True


def test_a_plugin_answers_its_own_mmi_service(h: Harness) -> None:
    remove = h.router.add_mmi("mmi.nodes", lambda body: b'[{"node":"a"}]')
    client = h.session("client")
    request = h.call(client, "mmi.nodes", (b"x", b""))
    assert request is not None
    assert sink_of(client).reply_bodies(request) == [(ReplyKind.FINAL, [b"x", b'[{"node":"a"}]'])]
    remove()
    remove()
    again = h.call(client, "mmi.nodes", ())
    assert again is not None
    assert sink_of(client).reply_bodies(again) == [(ReplyKind.FINAL, [b"501"])]


@pytest.mark.allow_error_logs("the handler of mmi.nodes failed")
def test_a_failing_mmi_handler_answers_500(h: Harness) -> None:
    def boom(body: object) -> bytes:
        raise RuntimeError("handler bug")

    h.router.add_mmi("mmi.nodes", boom)
    client = h.session("client")
    request = h.call(client, "mmi.nodes", ())
    assert request is not None
    assert sink_of(client).reply_bodies(request) == [(ReplyKind.FINAL, [b"500"])]


def test_add_mmi_refuses_a_name_outside_mmi(h: Harness) -> None:
    with pytest.raises(ValueError):
        h.router.add_mmi("nodes", lambda body: b"")


def test_cancel_watchers_hear_of_cancels_of_requests_a_worker_holds(h: Harness) -> None:
    seen: list[tuple[int, float]] = []
    stop = h.router.watch_cancels(lambda request, now: seen.append((request.id, now)))
    w = h.worker("svc", credit=1)
    caller = h.session("caller")
    held = h.router.submit(caller, "svc", (b"1",), 1, h.now)
    queued = h.router.submit(caller, "svc", (b"2",), 2, h.now)
    assert held is not None and queued is not None
    assert w.inflight.get(held.id) is held and queued.id not in w.inflight
    h.router.cancel(queued, h.now)  # still waiting: nobody holds it, nothing to tell
    assert seen == []
    h.router.cancel(held, h.now)
    assert seen == [(held.id, h.now)]
    h.router.cancel(held, h.now)  # twice: told once
    stop()
    stop()
    again = h.router.submit(caller, "svc", (b"3",), 3, h.now)
    assert again is not None
    h.router.reply(w, held.id, (b"late",), h.now, final=True)  # frees the worker for it
    assert w.inflight.get(again.id) is again
    h.router.cancel(again, h.now)
    assert seen == [(held.id, h.now)]
