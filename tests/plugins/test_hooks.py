"""Every hook of maitred.plugins.hookspecs, exercised through a plugin object registered with
make_plugin_manager(plugins=[...]) / build_broker(...), with a fake in-memory transport."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import types
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import msgspec
import pytest
import zmq

from maitred.core import cli
from maitred.core.access import Action, Identity
from maitred.core.app import build_broker
from maitred.core.config import Config
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Session, Worker
from maitred.core.runtime import Broker
from maitred.core.transport import BrokerClient, BrokerPort, TransportSpec
from maitred.plugins import hookimpl, transports_hook
from maitred.plugins.manager import make_plugin_manager
from maitred.plugins.testing import config_from, running_broker
from maitred.transports.mdp import codec

# -- a fake in-memory transport


class FakeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    address: str = "memory"

    def problems(self) -> list[str]:
        return [] if self.address else ["address must not be empty"]


class Recorder:
    """A SessionSink that remembers what the router delivers."""

    def __init__(self) -> None:
        self.requests: list[tuple[Worker, Request]] = []
        self.replies: list[tuple[ReplyKind, list[bytes]]] = []
        self.errors: list[MaitredError] = []
        self.events: list[tuple[str, list[bytes]]] = []
        self.removed: list[str] = []

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self.requests.append((worker, request))

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        self.replies.append((kind, list(body)))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.errors.append(error)

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self.events.append((topic, list(body)))

    def worker_removed(self, worker: Worker, reason: str) -> None:
        self.removed.append(reason)


class FakeTransport:
    name = "fake"

    def __init__(self, config: FakeConfig, port: BrokerPort) -> None:
        self.config = config
        self.port = port
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    def endpoints(self) -> list[str]:
        return [f"fake://{self.config.address}"]

    async def stop_accepting(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

    def connect(
        self, credentials: Mapping[str, Any], default: Identity | None = None
    ) -> tuple[Session, Recorder] | None:
        """A peer presents ``credentials``: a session, or None when refused."""
        identity = self.port.authenticate("fake", credentials, default)
        if identity is None:
            return None
        sink = Recorder()
        return self.port.open_session("fake", sink, identity, self.port.clock()), sink


class FakeTransportPlugin:
    @hookimpl
    def maitred_transports(self) -> Sequence[TransportSpec]:
        return [
            TransportSpec(
                name="fake",
                config_type=FakeConfig,
                factory=FakeTransport,
                description="in memory, for tests",
                cli_addresses=lambda addrs: {"address": addrs[0]},
                extra={"ephemeral_address": "ephemeral"},
            )
        ]


FAKE_CONFIG = {"transports": {"fake": {"address": "here"}}}


def fake(broker: Broker) -> FakeTransport:
    transport = broker.transport("fake")
    assert isinstance(transport, FakeTransport)
    return transport


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


# -- maitred_transports


def test_maitred_transports_adds_a_transport_that_routes() -> None:
    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG, plugins=[FakeTransportPlugin()], load_entry_points=False
        ) as broker:
            transport = fake(broker)
            assert transport.started and not transport.closed
            assert broker.endpoints() == {"fake": ["fake://here"]}
            now = broker.clock()
            worker_conn = transport.connect({}, Identity("w"))
            client_conn = transport.connect({}, Identity("c"))
            assert worker_conn is not None and client_conn is not None
            (wsession, wsink), (csession, csink) = worker_conn, client_conn
            worker = broker.router.add_worker(wsession, "echo", now)
            broker.router.submit(csession, "echo", (b"hi",), None, now)
            [(got_worker, request)] = wsink.requests
            assert got_worker is worker and list(request.body) == [b"hi"]
            broker.router.reply(worker, request.id, [b"hi", b"back"], now)
            assert csink.replies == [(ReplyKind.FINAL, [b"hi", b"back"])]
        assert transport.closed

    run(main)


def test_maitred_transports_config_is_decoded_and_checked() -> None:
    pm = make_plugin_manager(plugins=[FakeTransportPlugin()], load_entry_points=False)
    with pytest.raises(ConfigError, match=r"transports\.fake: Object contains unknown field"):
        build_broker(config_from({"transports": {"fake": {"bogus": 1}}}), pm=pm)
    with pytest.raises(ConfigError, match=r"transports\.fake\.address: Expected `str`"):
        build_broker(config_from({"transports": {"fake": {"address": 5}}}), pm=pm)
    with pytest.raises(ConfigError, match=r"transports\.fake: address must not be empty"):
        build_broker(config_from({"transports": {"fake": {"address": ""}}}), pm=pm)
    # a disabled table is checked too, but does not run
    broker = build_broker(config_from({"transports": {"fake": {"enabled": False}}}), pm=pm)
    assert broker.endpoints() == {}


def test_maitred_transports_name_clash_and_unknown_name() -> None:
    pm = make_plugin_manager(
        plugins=[FakeTransportPlugin(), FakeTransportPlugin()], load_entry_points=False
    )
    with pytest.raises(ConfigError, match="two plugins provide a transport named 'fake'"):
        build_broker(config_from(FAKE_CONFIG), pm=pm)
    pm = make_plugin_manager(plugins=[FakeTransportPlugin()], load_entry_points=False)
    with pytest.raises(
        ConfigError, match=r"transports\.nope: no such transport \(installed: fake\)"
    ):
        build_broker(config_from({"transports": {"nope": {}}}), pm=pm)


def test_maitred_transports_cli_addresses_enable_the_transport() -> None:
    async def main() -> None:
        async with running_broker(
            plugins=[FakeTransportPlugin()], transports=["fake"], load_entry_points=False
        ) as broker:
            assert broker.endpoints() == {"fake": ["fake://ephemeral"]}
        async with running_broker(
            plugins=[FakeTransportPlugin()],
            transports={"fake": ["given"]},
            load_entry_points=False,
        ) as broker:
            assert broker.endpoints() == {"fake": ["fake://given"]}

    run(main)


def test_maitred_transports_declared_with_transports_hook() -> None:
    """``maitred_transports = transports_hook(spec, ...)`` in a plugin module is that hook."""
    spec = FakeTransportPlugin().maitred_transports()[0]
    plugin = types.SimpleNamespace(maitred_transports=transports_hook(spec))

    async def main() -> None:
        async with running_broker(FAKE_CONFIG, plugins=[plugin], load_entry_points=False) as b:
            assert fake(b).started
            assert b.endpoints() == {"fake": ["fake://here"]}

    run(main)
    assert plugin.maitred_transports() == [spec]
    assert transports_hook()() == []


# -- maitred_configure


class ConfigureRecorder:
    def __init__(self, refuse: bool = False) -> None:
        self.seen: list[Config] = []
        self.refuse = refuse

    @hookimpl
    def maitred_configure(self, config: Config) -> None:
        self.seen.append(config)
        if self.refuse:
            raise ConfigError("this plugin refuses the configuration")


def test_maitred_configure_sees_the_config_and_is_historic() -> None:
    early = ConfigureRecorder()
    pm = make_plugin_manager(plugins=[early], load_entry_points=False)
    config = config_from('[broker]\nname = "configured"\n')
    build_broker(config, pm=pm)
    assert [c.broker.name for c in early.seen] == ["configured"]
    # historic: a plugin registered after the call still gets it, with the same config
    late = ConfigureRecorder()
    pm.register(late)
    assert late.seen == early.seen
    assert len(early.seen) == 1


def test_maitred_configure_may_refuse_the_config() -> None:
    pm = make_plugin_manager(plugins=[ConfigureRecorder(refuse=True)], load_entry_points=False)
    with pytest.raises(ConfigError, match="refuses the configuration"):
        build_broker(config_from({}), pm=pm)


# -- maitred_authenticate


class TokenAuth:
    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def maitred_authenticate(
        self, transport: str, credentials: Mapping[str, Any]
    ) -> Identity | None:
        self.asked.append((transport, dict(credentials)))
        if credentials.get("token") == "s3cret":
            return Identity("alice", frozenset({"ops"}))
        return None


class NoOpinion:
    @hookimpl
    def maitred_authenticate(
        self, transport: str, credentials: Mapping[str, Any]
    ) -> Identity | None:
        return None


def test_maitred_authenticate_decides_who_a_peer_is() -> None:
    auth = TokenAuth()

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG,
            plugins=[FakeTransportPlugin(), auth, NoOpinion()],
            load_entry_points=False,
        ) as broker:
            transport = fake(broker)
            conn = transport.connect({"token": "s3cret"})
            assert conn is not None
            assert conn[0].identity == Identity("alice", frozenset({"ops"}))
            # nobody has an opinion: the transport's default decides (None: refused)
            assert transport.connect({"token": "wrong"}) is None
            conn = transport.connect({"token": "wrong"}, default=Identity("guest"))
            assert conn is not None and conn[0].identity.name == "guest"

    run(main)
    assert auth.asked[0] == ("fake", {"token": "s3cret"})


def test_maitred_authenticate_first_answer_wins() -> None:
    class Other:
        @hookimpl(tryfirst=True)
        def maitred_authenticate(
            self, transport: str, credentials: Mapping[str, Any]
        ) -> Identity | None:
            return Identity("first")

    pm = make_plugin_manager(plugins=[TokenAuth(), Other()], load_entry_points=False)
    assert pm.hook.maitred_authenticate(transport="fake", credentials={"token": "s3cret"}) == (
        Identity("first")
    )


# -- maitred_authorize


class DenyMallory:
    def __init__(self) -> None:
        self.asked: list[tuple[str, Action, str]] = []

    @hookimpl
    def maitred_authorize(self, identity: Identity, action: Action, name: str) -> bool | None:
        self.asked.append((identity.name, action, name))
        if identity.name == "mallory" and name == "secret":
            return False
        if name == "public":
            return True
        return None  # the [access] rules decide


def test_maitred_authorize_denial_makes_the_router_refuse_with_forbidden() -> None:
    policy = DenyMallory()

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG, plugins=[FakeTransportPlugin(), policy], load_entry_points=False
        ) as broker:
            transport = fake(broker)
            now = broker.clock()
            mallory = transport.connect({}, Identity("mallory"))
            alice = transport.connect({}, Identity("alice"))
            assert mallory is not None and alice is not None
            assert broker.router.submit(mallory[0], "secret", (b"x",), None, now) is None
            [error] = mallory[1].errors
            assert error.code is ErrorCode.FORBIDDEN
            # the same call by somebody else is accepted (it waits for a worker)
            assert broker.router.submit(alice[0], "secret", (b"x",), None, now) is not None
            assert alice[1].errors == []
            with pytest.raises(MaitredError) as denied:
                broker.router.add_worker(mallory[0], "secret", now)
            assert denied.value.code is ErrorCode.FORBIDDEN

    run(main)
    assert ("mallory", Action.CALL, "secret") in policy.asked
    assert ("mallory", Action.SERVE, "secret") in policy.asked


def test_maitred_authorize_none_falls_back_to_the_access_rules() -> None:
    async def main() -> None:
        config = {**FAKE_CONFIG, "access": {"default": "deny"}}
        async with running_broker(
            config, plugins=[FakeTransportPlugin(), DenyMallory()], load_entry_points=False
        ) as broker:
            transport = fake(broker)
            conn = transport.connect({}, Identity("bob"))
            assert conn is not None
            session, sink = conn
            now = broker.clock()
            # the hook allows "public" although the rules deny everything
            assert broker.router.submit(session, "public", (b"x",), None, now) is not None
            assert sink.errors == []
            # the hook has no opinion on "other": the rules' default (deny) decides
            assert broker.router.submit(session, "other", (b"x",), None, now) is None
            assert [e.code for e in sink.errors] == [ErrorCode.FORBIDDEN]

    run(main)


def test_maitred_authorize_denial_over_the_mdp_wire(maitred_broker: Any) -> None:
    """The same denial seen by a real MDP client: a FINAL with the error frames 403/reason."""

    class DenyAll:
        @hookimpl
        def maitred_authorize(self, identity: Identity, action: Action, name: str) -> bool | None:
            return False if name == "secret" else None

    running = maitred_broker(plugins=[DenyAll()], transports=["mdp"])
    dialect = codec.V2 | codec.ENVELOPE | codec.SHORT
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(running.endpoint("mdp"))
        sock.send_multipart(codec.client_request(dialect, b"secret", [b"x"]))
        assert sock.poll(5000), "no reply within 5s"
        final, _service, body = codec.parse_client_reply(dialect, sock.recv_multipart())
        assert final and body[0] == b"403", body
    finally:
        sock.close(0)
        ctx.term()


# -- maitred_system_event


class EventLog:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    @hookimpl
    def maitred_system_event(self, topic: str, payload: dict[str, Any]) -> None:
        self.events.append((topic, payload))
        if self.fail:
            raise RuntimeError("a broken observer")

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]


def test_maitred_system_event_sees_every_system_event() -> None:
    log = EventLog()

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG,
            plugins=[FakeTransportPlugin(), log, DenyMallory()],
            load_entry_points=False,
        ) as broker:
            transport = fake(broker)
            conn = transport.connect({}, Identity("w"))
            assert conn is not None
            now = broker.clock()
            worker = broker.router.add_worker(conn[0], "echo", now)
            assert log.topics() == ["$sys.session.join", "$sys.service.online", "$sys.worker.ready"]
            assert log.events[-1][1] == {
                "service": "echo",
                "worker": worker.label,
                "transport": "fake",
                "identity": "w",
            }
            mallory = transport.connect({}, Identity("mallory"))
            assert mallory is not None
            broker.router.submit(mallory[0], "secret", (b"",), None, now)
            assert log.topics()[-1] == "$sys.auth.denied"
            broker.router.close_session(conn[0], now, "bye")
            assert log.topics()[-3:] == [
                "$sys.worker.gone",
                "$sys.service.offline",
                "$sys.session.leave",
            ]

    run(main)


@pytest.mark.allow_error_logs("system event hook failed .*a broken observer")
def test_maitred_system_event_observer_failure_does_not_break_routing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = EventLog(fail=True)

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG, plugins=[FakeTransportPlugin(), log], load_entry_points=False
        ) as broker:
            conn = fake(broker).connect({}, Identity("w"))
            assert conn is not None
            broker.router.add_worker(conn[0], "echo", broker.clock())
            assert "echo" in broker.router.services

    with caplog.at_level(logging.ERROR, logger="maitred.core.router"):
        run(main)
    assert "$sys.worker.ready" in log.topics()
    assert "system event hook failed" in caplog.text


# -- maitred_broker_started / maitred_broker_stopping


class Lifecycle:
    """Returns coroutines, which the runtime must await (the record proves they ran)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def maitred_broker_started(self, broker: Broker) -> Awaitable[None] | None:
        async def started() -> None:
            await asyncio.sleep(0)
            self.calls.append(f"started:{broker.state}:{sorted(broker.endpoints())}")

        return started()

    @hookimpl
    def maitred_broker_stopping(self, broker: Broker) -> Awaitable[None] | None:
        async def stopping() -> None:
            await asyncio.sleep(0)
            self.calls.append(f"stopping:{broker.state}:closed={fake(broker).closed}")

        return stopping()


class PlainLifecycle:
    """Returns None: nothing to await."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def maitred_broker_started(self, broker: Broker) -> Awaitable[None] | None:
        self.calls.append("plain-started")
        return None

    @hookimpl
    def maitred_broker_stopping(self, broker: Broker) -> Awaitable[None] | None:
        self.calls.append("plain-stopping")
        return None


def test_maitred_broker_started_and_stopping_are_called_and_awaited() -> None:
    calls: list[str] = []

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG,
            plugins=[FakeTransportPlugin(), Lifecycle(calls), PlainLifecycle(calls)],
            load_entry_points=False,
        ) as broker:
            assert sorted(calls) == ["plain-started", "started:running:['fake']"]
            calls.clear()
            assert broker.state == "running"
        assert sorted(calls) == ["plain-stopping", "stopping:draining:closed=False"]

    run(main)


@pytest.mark.allow_error_logs("maitred_broker_stopping hook failed")
def test_maitred_broker_stopping_failure_does_not_stop_the_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        @hookimpl
        def maitred_broker_stopping(self, broker: Broker) -> Awaitable[None] | None:
            async def fail() -> None:
                raise RuntimeError("boom")

            return fail()

    async def main() -> None:
        async with running_broker(
            FAKE_CONFIG, plugins=[FakeTransportPlugin(), Broken()], load_entry_points=False
        ) as broker:
            transport = fake(broker)
        assert broker.state == "stopped" and transport.closed

    with caplog.at_level(logging.ERROR, logger="maitred.core.runtime"):
        run(main)
    assert "maitred_broker_stopping hook failed" in caplog.text


# -- maitred_connect


class FakeClient:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.closed = False

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        if service == "mmi.services":
            row = {"name": "echo", "workers": 1, "free": 1, "queued": 0, "inflight": 0}
            return [json.dumps([row]).encode()]
        if service == "fail":
            raise MaitredError("no worker for fail", ErrorCode.NO_WORKER)
        return [b"echo:" + b" ".join(body)]

    def serve(
        self,
        service: str,
        handler: Callable[[list[bytes]], list[bytes]],
        *,
        max_requests: int | None = None,
    ) -> None:
        for _ in range(max_requests or 0):
            handler([b"x"])

    def close(self) -> None:
        self.closed = True


class FakeConnect:
    def __init__(self) -> None:
        self.clients: list[FakeClient] = []

    @hookimpl
    def maitred_connect(self, url: str, timeout: float) -> BrokerClient | None:
        if not url.startswith("fake://"):
            return None
        client = FakeClient(url, timeout)
        self.clients.append(client)
        return client


class NeverConnects:
    @hookimpl
    def maitred_connect(self, url: str, timeout: float) -> BrokerClient | None:
        return None


def test_maitred_connect_first_non_none_answer_wins() -> None:
    connect = FakeConnect()
    pm = make_plugin_manager(plugins=[connect, NeverConnects()], load_entry_points=False)
    client = pm.hook.maitred_connect(url="fake://b", timeout=2.0, options={})
    assert isinstance(client, FakeClient) and client.timeout == 2.0
    assert pm.hook.maitred_connect(url="nope://b", timeout=2.0, options={}) is None


def test_maitred_connect_builtin_mdp_speaks_tcp_urls() -> None:
    pm = make_plugin_manager()
    client = pm.hook.maitred_connect(url="tcp://127.0.0.1:5555", timeout=1.0, options={})
    assert client is not None  # lazily connected: nothing is sent until a request
    client.close()
    assert pm.hook.maitred_connect(url="fake://x", timeout=1.0, options={}) is None


def test_maitred_connect_is_what_the_cli_uses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    connect = FakeConnect()

    def manager(**kwargs: Any) -> Any:
        return make_plugin_manager(plugins=[connect, NeverConnects()], load_entry_points=False)

    monkeypatch.setattr(cli, "make_plugin_manager", manager)
    assert cli.main(["call", "-b", "fake://b", "-t", "3", "echo", "a", "b"]) == 0
    assert capsys.readouterr().out == "echo:a b\n"
    assert connect.clients[-1].url == "fake://b" and connect.clients[-1].timeout == 3.0
    assert connect.clients[-1].closed

    assert cli.main(["services", "-b", "fake://b"]) == 0
    assert "echo" in capsys.readouterr().out

    assert cli.main(["call", "-b", "fake://b", "fail"]) == cli.EXIT_ERROR_REPLY
    assert "503" in capsys.readouterr().err

    assert cli.main(["call", "-b", "nope://b", "echo"]) == cli.EXIT_USAGE
    assert "no installed transport plugin speaks 'nope://b'" in capsys.readouterr().err


def test_maitred_broker_stopping_one_failure_does_not_skip_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a logged traceback would keep the never-awaited coroutine alive past this test
    monkeypatch.setattr(logging.getLogger("maitred.core.runtime"), "disabled", True)
    calls: list[str] = []

    class Fine:
        @hookimpl
        def maitred_broker_stopping(self, broker: Broker) -> Awaitable[None] | None:
            async def fine() -> None:
                calls.append("fine")

            return fine()

    class Broken:
        @hookimpl
        def maitred_broker_stopping(self, broker: Broker) -> Awaitable[None] | None:
            async def fail() -> None:
                raise RuntimeError("boom")

            return fail()

    async def main() -> None:
        # pluggy calls the last registered first: Broken's coroutine is awaited first
        async with running_broker(plugins=[Fine(), Broken()], load_entry_points=False):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
        run(main)
        gc.collect()
    assert calls == ["fine"]


@pytest.mark.allow_error_logs("maitred_broker_started hook failed")
def test_maitred_broker_started_failure_closes_the_transports() -> None:
    class Broken:
        @hookimpl
        def maitred_broker_started(self, broker: Broker) -> Awaitable[None] | None:
            async def fail() -> None:
                raise RuntimeError("cannot announce")

            return fail()

    seen: list[Broker] = []

    class Keep:
        @hookimpl
        def maitred_broker_started(self, broker: Broker) -> Awaitable[None] | None:
            seen.append(broker)
            return None

    async def main() -> None:
        with pytest.raises(RuntimeError, match="cannot announce"):
            async with running_broker(
                FAKE_CONFIG,
                plugins=[FakeTransportPlugin(), Keep(), Broken()],
                load_entry_points=False,
            ):
                pass
        [broker] = seen
        transport = fake(broker)
        try:
            assert transport.closed and broker.state == "stopped"
        finally:
            await broker.stop(0)

    run(main)


class AddsAVerb:
    @hookimpl
    def maitred_add_commands(self, subparsers: Any) -> None:
        p = subparsers.add_parser("ping", help="say pong")
        p.add_argument("--times", type=int, default=1)
        p.set_defaults(run=lambda args: print("pong " * args.times) or 7)


def test_maitred_add_commands_adds_a_verb_to_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def manager(**kwargs: Any) -> Any:
        return make_plugin_manager(plugins=[AddsAVerb()], load_entry_points=False)

    monkeypatch.setattr(cli, "make_plugin_manager", manager)
    assert cli.main(["ping", "--times", "2"]) == 7
    assert capsys.readouterr().out == "pong pong \n"
