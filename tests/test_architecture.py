"""Layering the import-linter contracts cannot see: transports use the broker port's verbs,
never the router behind it (``port.router``), and the port really is implemented by the core."""

from __future__ import annotations

import ast
from pathlib import Path

from maitred.core.access import ANONYMOUS, Action, Identity, Rule, RuleTable
from maitred.core.clock import FakeClock
from maitred.core.port import CorePort
from maitred.core.routing.liveness import Liveness
from maitred.core.routing.model import BaseSink
from maitred.core.routing.router import Router
from maitred.core.transport import BrokerPort

ROOT = Path(__file__).resolve().parent.parent


def _router_uses(path: Path) -> list[str]:
    """Each ``X.router`` in ``path`` where X is not an aiohttp application (``app.router`` is
    its URL dispatcher)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "router":
            owner = ast.unparse(node.value)
            if owner.split(".")[-1] != "app":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.router")
    return found


def _plugin_sources() -> list[Path]:
    files = sorted((ROOT / "transports").rglob("*.py"))
    files += sorted((ROOT / "plugins").rglob("*.py"))
    files += sorted((ROOT / "examples" / "maitred-line-plugin" / "src").rglob("*.py"))
    return files


def test_transports_and_plugins_never_reach_behind_the_port() -> None:
    uses = [use for path in _plugin_sources() for use in _router_uses(path)]
    assert uses == []


def test_the_check_sees_a_router_use(tmp_path: Path) -> None:
    bad = ROOT / "transports" / "_probe_not_a_module.py"
    try:
        bad.write_text("def f(port):\n    return port.router.submit\n")
        assert _router_uses(bad) == ["transports/_probe_not_a_module.py:2: port.router"]
    finally:
        bad.unlink()


def test_the_core_implements_every_verb_of_the_port() -> None:
    port = CorePort(Router(), FakeClock(5.0), Liveness())
    verbs = [
        name
        for name, value in vars(BrokerPort).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    ]
    assert len(verbs) > 30
    assert [name for name in verbs if not hasattr(port, name)] == []
    assert not hasattr(port, "router")  # nothing behind the port is handed out
    assert port.clock() == 5.0
    assert port.journal is None


def test_trace_returns_its_own_unsubscribe_handle() -> None:
    router = Router()
    port = CorePort(router, FakeClock(), Liveness())
    seen: list[str] = []
    stop = port.trace(lambda event, request, detail, now: seen.append(event))
    session = port.open_session("t", BaseSink(), ANONYMOUS, 0.0)
    port.submit(session, "nobody", [b"x"], None, 0.0, on_no_worker="fail")
    assert seen == ["accepted", "failed"]
    stop()
    stop()  # twice is harmless
    port.submit(session, "nobody", [b"x"], None, 0.0, on_no_worker="fail")
    assert seen == ["accepted", "failed"]
    assert router.tracers == []


def test_request_stop_and_management_queries() -> None:
    stops: list[int] = []
    router = Router()
    port = CorePort(router, FakeClock(), Liveness(), request_stop=lambda: stops.append(1))
    port.request_stop()
    assert stops == [1]
    assert port.info() == {}
    assert port.authenticate("t", {}, None) is None
    who = Identity("w", frozenset())
    asked = CorePort(router, FakeClock(), Liveness(), authenticate=lambda t, c: who)
    assert asked.authenticate("t", {}, None) is who
    nobody = CorePort(router, FakeClock(), Liveness(), authenticate=lambda t, c: None)
    assert nobody.authenticate("t", {}, ANONYMOUS) is ANONYMOUS
    CorePort(router, FakeClock(), Liveness()).request_stop()  # no runtime: nothing to stop
    session = port.open_session("t", BaseSink(), ANONYMOUS, 0.0)
    port.register_worker(session, "echo", 0.0)
    assert port.service_exists("echo") and not port.service_exists("other")
    assert [s.name for s in port.services()] == ["echo"]
    assert port.service_policy("other") == port.service_policy("echo")
    assert port.snapshot()["workers"] == 1
    assert port.max_name_length == router.max_name_length
    assert not port.draining


def test_permits_answers_without_counting_a_denial() -> None:
    rules = RuleTable(
        [Rule(who=("g",), actions=(Action.CALL,), names=("public.*",))], default_allow=False
    )
    router = Router(access=rules)
    port = CorePort(router, FakeClock(), Liveness())
    guest = port.open_session("t", BaseSink(), Identity("g", frozenset({"guest"})), 0.0)
    assert port.permits(guest, Action.CALL, "public.x")
    assert not port.permits(guest, Action.CALL, "secret")
    assert router.stats["denied.call"] == 0
    assert not port.allowed(guest, Action.CALL, "secret")
    assert router.stats["denied.call"] == 1
    anyone = CorePort(Router(), FakeClock(), Liveness())
    s = anyone.open_session("t", BaseSink(), ANONYMOUS, 0.0)
    assert anyone.permits(s, Action.CALL, "secret")


#: the longest a module of the core or of a transport may be (split it along a seam beyond)
MAX_MODULE_LINES = 600


def test_no_module_of_the_core_or_a_transport_is_too_long() -> None:
    files = sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "transports").rglob("*.py"))
    too_long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in files
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert too_long == []
