"""The ``maitred`` client verbs as an operator meets them: an unreachable broker said at once,
distinct exit codes, pub/sub, the listings as tables and JSON, tail, --help examples. Each
broker is a real ``maitred serve`` subprocess; the verbs run as subprocesses too."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.core import cli, cli_listings
from maitred.plugins.testing import ServeProcess

MAITRED = [sys.executable, "-m", "maitred.core"]
HINT = "is maitred running? start it with `maitred serve`"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md"


def run(
    *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED, *args], capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    state = tmp_path_factory.mktemp("state")
    sock = tmp_path_factory.mktemp("sock") / "h.sock"
    s = ServeProcess(
        *("--mdp", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0", "--http", f"unix:{sock}"),
        *("--ws", "127.0.0.1:0"),
        env={"XDG_STATE_HOME": str(state)},
    )
    yield s
    s.close()


@pytest.fixture(scope="module")
def urls(broker: ServeProcess) -> dict[str, str]:
    http = next(e for e in broker.endpoints["http"] if e.startswith("http://"))
    unix = next(e for e in broker.endpoints["http"] if e.startswith("unix:"))
    return {
        "mdp": broker.endpoints["mdp"][0],
        "http": http,
        "unix": unix,
        "ws": broker.endpoints["ws"][0],
    }


@pytest.fixture(scope="module")
def echo(urls: dict[str, str]) -> Iterator[None]:
    worker = subprocess.Popen(
        [*MAITRED, "worker", "echo", "--program", "cat", "-b", urls["mdp"]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run("call", "echo", "warm", "-b", urls["mdp"], "-t", "20")
        assert result.returncode == 0, result.stderr
        yield
    finally:
        worker.terminate()
        worker.wait(10)


# -- an unreachable broker ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "verb",
    [
        ["call", "echo", "hi"],
        ["services"],
        ["workers"],
        ["queues"],
        ["info"],
        ["connections"],
        ["worker", "echo", "--program", "cat"],
    ],
)
@pytest.mark.parametrize(
    "scheme", ["tcp://127.0.0.1:{port}", "http://127.0.0.1:{port}", "ws://127.0.0.1:{port}"]
)
def test_unreachable_broker_is_said_at_once(verb: list[str], scheme: str) -> None:
    url = scheme.format(port=free_port())
    # -t 30: the answer must come from the probe (subprocess timeout 15 s), not the timeout
    result = run(*verb, "-b", url, "-t", "30", timeout=15)
    assert result.returncode == cli.EXIT_UNREACHABLE == 5
    assert result.stderr == (
        f"maitred: cannot reach the broker at {url}: Connection refused; {HINT}\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "verb", [["pub", "t", "x"], ["sub", "t"], ["list"], ["tail"], ["ack", "q", "1"]]
)
def test_unreachable_unix_socket_for_topics_and_switch_verbs(
    tmp_path: Path, verb: list[str]
) -> None:
    url = f"unix:{tmp_path}/none.sock"
    result = run(*verb, "-b", url, timeout=15)
    assert result.returncode == 5
    assert f"cannot reach the broker at {url}: No such file or directory; {HINT}" in result.stderr


def test_inproc_cannot_be_reached_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["call", "-b", "inproc://x", "echo"]) == 5
    assert "inproc:// reaches only a broker in the same process" in capsys.readouterr().err


# -- exit codes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_mmi_service_404_is_not_success(urls: dict[str, str], echo: None) -> None:
    for url in (urls["mdp"], urls["http"], urls["ws"]):
        missing = run("call", "mmi.service", "nobody", "-b", url)
        assert (missing.returncode, missing.stdout) == (cli.EXIT_ERROR_REPLY, "404\n"), url
        there = run("call", "mmi.service", "echo", "-b", url)
        assert (there.returncode, there.stdout) == (0, "200\n"), url


@pytest.mark.slow
def test_ack_and_destroy_of_a_missing_queue_are_errors(urls: dict[str, str]) -> None:
    for verb in (["ack", "no-such-queue", "1"], ["destroy", "no-such-queue"]):
        result = run(*verb, "-b", urls["http"])
        assert result.returncode == 4
        assert f"no queue 'no-such-queue' at {urls['http']}" in result.stderr


def test_worker_with_a_missing_program_does_not_start(capsys: pytest.CaptureFixture[str]) -> None:
    # no broker needed: the program is checked before anything connects
    assert (
        cli.main(["worker", "s", "--program", "/nonexistent/prog", "-b", "tcp://127.0.0.1:1"]) == 2
    )
    assert "'/nonexistent/prog' is not an executable program" in capsys.readouterr().err


def test_exit_codes_are_documented_in_one_table() -> None:
    text = DOCS.read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d) \| `(\w+)` \|", section, re.M))
    assert rows == {
        str(cli.EXIT_OK): "ok",
        str(cli.EXIT_FAIL): "failure",
        str(cli.EXIT_USAGE): "usage",
        str(cli.EXIT_TIMEOUT): "timeout",
        str(cli.EXIT_ERROR_REPLY): "remote_error",
        str(cli.EXIT_UNREACHABLE): "unreachable",
        str(cli.EXIT_REFUSED): "refused",
    }


# -- pub/sub --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["http", "unix", "ws"])
def test_pub_reaches_sub(urls: dict[str, str], transport: str) -> None:
    url = urls[transport]
    sub = subprocess.Popen(
        [*MAITRED, "sub", f"t.{transport}.*", "--count", "2", "--json", "-b", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # publish until the subscription is in place (pub says how many it reached)
        for _ in range(200):
            pub = run("pub", f"t.{transport}.a", "hello\x01", "-b", url)
            assert pub.returncode == 0, pub.stderr
            if "1 subscriber(s)" in pub.stderr:
                break
        else:
            pytest.fail("the subscriber never subscribed")
        assert run("pub", f"t.{transport}.b", "two", "-b", url).returncode == 0
        out, err = sub.communicate(timeout=20)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [
        {"topic": f"t.{transport}.a", "frames": ["hello\x01"]},
        {"topic": f"t.{transport}.b", "frames": ["two"]},
    ]


@pytest.mark.slow
def test_mdp_router_is_no_topic_endpoint_and_says_so(urls: dict[str, str]) -> None:
    # topics over ZeroMQ go to [transports.mdp] pub_endpoints / publish_endpoints (tested in
    # tests/e2e/test_mdp_pubsub.py); the router's endpoint is not one of them
    for verb in (["pub", "t", "x"], ["sub", "t"]):
        result = run(*verb, "-b", urls["mdp"])
        assert result.returncode == 2, result.stderr
        assert "is not of the kind this needs (the MDP router?" in result.stderr


# -- listings -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["mdp", "http", "unix", "ws"])
def test_listings_on_every_transport(urls: dict[str, str], echo: None, transport: str) -> None:
    url = urls[transport]
    workers = run("workers", "-b", url)
    assert workers.returncode == 0, workers.stderr
    head, *rows = workers.stdout.splitlines()
    assert head.split() == [
        "SERVICE",
        "PROTOCOL",
        "WORKER",
        "ADDRESS",
        "IDENTITY",
        "INFLIGHT",
        "SERVED",
        "IDLE_S",
        "UP_S",
    ]
    assert any(row.split()[:2] == ["echo", "mdp"] for row in rows), workers.stdout
    # the MDP worker's address: where its TCP connection comes from
    assert re.search(r"^echo\s+mdp\s+\S+\s+127\.0\.0\.1:\d+\s", workers.stdout, re.M), (
        workers.stdout
    )
    as_json = json.loads(run("workers", "--json", "-b", url).stdout)
    assert any(w["service"] == "echo" for w in as_json)

    queues = run("queues", "-b", url)
    assert queues.returncode == 0
    assert re.search(r"^echo\s+0\s+0$", queues.stdout, re.M), queues.stdout
    assert {"name": "echo", "queued": 0, "inflight": 0} in json.loads(
        run("queues", "--json", "-b", url).stdout
    )

    info = run("info", "-b", url)
    assert info.returncode == 0
    assert re.search(r"^state:\s+running$", info.stdout, re.M)
    assert json.loads(run("info", "--json", "-b", url).stdout)["state"] == "running"

    conns = run("connections", "-b", url)
    assert conns.returncode == 0, conns.stderr
    head, *rows = conns.stdout.splitlines()
    assert head.split() == [
        "ID",
        "TRANSPORT",
        "SESSION",
        "IDENTITY",
        "ADDRESS",
        "WORKERS",
        "SUBS",
        "QUEUED",
        "UP_S",
    ]
    # the echo worker's own connection, with its address, one line
    assert re.search(
        r"^\s*\d+\s+mdp\s+\S+\s+anonymous\s+127\.0\.0\.1:\d+\s+1\s+0\s+0\s", conns.stdout, re.M
    ), conns.stdout
    sessions = json.loads(run("connections", "--json", "-b", url).stdout)
    assert any(s["transport"] == "mdp" and s["workers"] == 1 for s in sessions), sessions
    only_mdp = json.loads(run("connections", "--transport", "mdp", "--json", "-b", url).stdout)
    assert only_mdp and {s["transport"] for s in only_mdp} == {"mdp"}
    traffic = run("connections", "--traffic", "-b", url)
    assert traffic.stdout.split()[:6] == [
        "TRANSPORT",
        "ENDPOINTS",
        "REQUESTS",
        "REPLIES",
        "ERRORS",
        "SERVED",
    ]
    assert {
        row["transport"]
        for row in json.loads(run("connections", "--traffic", "--json", "-b", url).stdout)
    } == {
        "mdp",
        "http",
        "ws",
    }


def test_table_columns_line_up(capsys: pytest.CaptureFixture[str]) -> None:
    cli_listings.print_table(
        [{"a": "x", "n": 1}, {"a": "longer", "n": 1234}], [("a", "NAME"), ("n", "N")]
    )
    assert capsys.readouterr().out == "NAME       N\nx          1\nlonger  1234\n"


# -- tail -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tail_shows_bodies_and_times_and_ends_quietly_on_a_closed_pipe(
    urls: dict[str, str], echo: None
) -> None:
    run("tail", "-b", urls["http"])  # attaches the router's trace
    assert run("call", "echo", "tail\x01me", "-b", urls["mdp"]).returncode == 0
    shown = run("tail", "-b", urls["http"])
    assert shown.returncode == 0
    assert '"tail\\x01me"' in shown.stdout, shown.stdout
    assert re.search(r"Response .* in \d+\.\d{3} ms", shown.stdout), shown.stdout

    tail = subprocess.Popen(
        [*MAITRED, "tail", "-f", "--poll", "1", "-b", urls["http"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert run("call", "echo", "one", "-b", urls["mdp"]).returncode == 0
        assert tail.stdout is not None
        assert tail.stdout.readline()
        tail.stdout.close()  # like `| head -1`
        # more traffic: tail's next write finds the pipe closed
        for _ in range(20):
            assert run("call", "echo", "two", "-b", urls["mdp"]).returncode == 0
            if tail.poll() is not None:
                break
        assert tail.wait(20) == 0
        assert tail.stderr is not None
        assert tail.stderr.read() == b""
    finally:
        tail.kill()
        tail.wait(10)
        for pipe in (tail.stdout, tail.stderr):
            if pipe is not None:
                pipe.close()


# -- help -----------------------------------------------------------------------------------


def test_every_verb_has_examples_in_its_help() -> None:
    pm, specs = cli._plugins()
    parser = cli.build_parser(specs, pm)
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "check", "call", "pub", "sub", "info", "workers", "queues", "tail"} <= set(
        verbs
    )
    for name, sub in verbs.items():
        assert re.search(r"examples:\n  (\S+=\S+ )?maitred ", sub.format_help()), name
