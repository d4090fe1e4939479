"""The liveness lists on their own: who is overdue, in the order they fell silent."""

from __future__ import annotations

from maitred.core.access import ANONYMOUS
from maitred.core.routing.liveness import Liveness, LivenessLists
from maitred.core.routing.model import BaseSink, Service, ServicePolicy, Session, Worker

SESSION = Session(1, "test", BaseSink(), ANONYMOUS, "s1", 0.0)
SERVICE = Service("svc", ServicePolicy())


def _worker(wid: int, now: float, idle: float = 3.0, busy: float = 10.0) -> Worker:
    return Worker(wid, SESSION, SERVICE, 1, None, "", now, idle, busy)


def test_overdue_workers_come_oldest_first_and_a_sign_of_life_moves_one_back() -> None:
    lists = LivenessLists()
    a, b, c = _worker(1, 0.0), _worker(2, 1.0), _worker(3, 2.0)
    for w in (a, b, c):
        lists.put(w, w.idle_timeout)
    assert lists.overdue(2.9) == []
    assert lists.overdue(4.0) == [a, b]
    a.touched = 4.0
    lists.seen(a)
    assert lists.overdue(5.5) == [b, c]
    assert lists.overdue(10.0) == [b, c, a]


def test_lists_per_timeout_and_unwatched_workers() -> None:
    lists = LivenessLists()
    short, long, none = _worker(1, 0.0, idle=1.0), _worker(2, 0.0, idle=5.0), _worker(3, 0.0)
    lists.put(short, 1.0)
    lists.put(long, 5.0)
    lists.put(none, 0.0)  # 0: the transport watches it
    assert none.live_key == 0.0
    assert lists.overdue(2.0) == [short]
    lists.move(short, 5.0)
    assert lists.overdue(2.0) == []
    lists.unwatch(long)
    assert lists.overdue(6.0) == [short]


def test_suspects_are_overdue_after_their_busy_timeout_and_empty_lists_are_pruned() -> None:
    lists = LivenessLists()
    w = _worker(1, 0.0, idle=3.0, busy=10.0)
    lists.put(w, 3.0)
    lists.add_suspect(w)
    assert w.live_key == 0.0
    assert lists.overdue(9.0) == []
    assert lists.overdue(10.0) == [w]
    lists.drop_suspect(w)
    assert lists.overdue(20.0) == []
    lists.prune()
    assert lists.live == {} and lists.suspects == {}


def test_a_suspect_without_busy_timeout_is_never_overdue() -> None:
    lists = LivenessLists()
    w = _worker(1, 0.0, idle=3.0, busy=0.0)
    lists.put(w, 3.0)
    lists.add_suspect(w)
    assert lists.overdue(1e9) == []


def test_liveness_settings_are_checked() -> None:
    assert Liveness().idle_timeout == 7.5
    bad = Liveness(heartbeat_interval=0, liveness=0, busy_timeout=-1)
    assert len(bad.problems()) == 3
