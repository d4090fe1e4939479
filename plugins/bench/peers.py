"""The brokers the benchmark runs, and how to start each of them.

    python bench/peers.py proxy [--host 127.0.0.1] [--curve-secret-key-file FILE]

``proxy`` is the one-hop floor: ``zmq.proxy(ROUTER frontend, DEALER backend)``, all in C, no Python
per message. It binds both sockets to port 0 and prints one JSON line
``{"frontend": "tcp://127.0.0.1:P1", "backend": "tcp://127.0.0.1:P2"}`` before it starts proxying,
so the orchestrator learns the ports without a race. The client talks to the frontend exactly as it
talks to an MDP broker; the ``raw`` worker behind the backend answers in the client's dialect.

The other legs are commands: ``majortomo`` is the PyPI broker run the way its users run it
(``python -m majortomo.broker -b ENDPOINT``, at WARNING: ``majortomo-warning.yaml``), ``maitred`` is
``maitred serve --mdp ENDPOINT`` (or ``$MAITRED_CMD`` / ``--maitred-cmd``). In a command template
``{endpoint}`` is replaced by ``tcp://127.0.0.1:PORT`` with a free port and ``{python}`` by the
running interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

BIN_DIR = Path(sys.executable).parent

#: majortomo at WARNING (its default INFO logs a line per reply: that is not the broker's cost)
MAJORTOMO_CMD = "{python} -m majortomo.broker -b {endpoint} -c " + shlex.quote(
    str(Path(__file__).resolve().parent / "majortomo-warning.yaml")
)
DEFAULT_MAITRED_CMD = f"{shlex.quote(str(BIN_DIR / 'maitred'))} serve --mdp {{endpoint}}"


def maitred_cmd_template(cli_value: str | None = None) -> str:
    """``--maitred-cmd`` if given, else ``$MAITRED_CMD``, else ``<venv bin>/maitred serve ...``."""
    return cli_value or os.environ.get("MAITRED_CMD") or DEFAULT_MAITRED_CMD


def render_cmd(template: str, endpoint: str) -> list[str]:
    """Split a command template like a shell would (no shell runs) and fill in the placeholders."""
    if "{endpoint}" not in template:
        raise ValueError(f"command template has no {{endpoint}} placeholder: {template!r}")
    return [
        part.replace("{endpoint}", endpoint).replace("{python}", sys.executable)
        for part in shlex.split(template)
    ]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for commands that must be given a port to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_proxy(host: str = "127.0.0.1", curve_secret_key_file: str | None = None) -> int:
    """Bind ROUTER/DEALER on free ports, announce them, then ``zmq.proxy`` until killed.

    With ``curve_secret_key_file`` (a ZeroMQ secret certificate) both sockets are CURVE servers
    with that key pair: every frame is encrypted by libzmq on each of the four hops, as through
    a CURVE broker, and nothing else changes (no ZAP handler: libzmq accepts any client key
    then, which costs only the handshake, not each message)."""
    import zmq

    ctx = zmq.Context(io_threads=1)
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.DEALER)
    for s in (frontend, backend):
        s.linger = 0
    if curve_secret_key_file:
        import zmq.auth

        public, secret = zmq.auth.load_certificate(curve_secret_key_file)
        assert secret is not None, f"{curve_secret_key_file}: no secret key"
        for s in (frontend, backend):
            s.curve_publickey, s.curve_secretkey, s.curve_server = public, secret, True
    frontend.bind(f"tcp://{host}:0")
    backend.bind(f"tcp://{host}:0")
    endpoints = {
        "frontend": frontend.get_string(zmq.LAST_ENDPOINT),
        "backend": backend.get_string(zmq.LAST_ENDPOINT),
    }
    print(json.dumps(endpoints), flush=True)
    try:
        zmq.proxy(frontend, backend)  # returns only when the context is terminated
    except (KeyboardInterrupt, zmq.ContextTerminated):
        pass
    finally:
        frontend.close(linger=0)
        backend.close(linger=0)
    return 0


#: where a user gets zguide's broker (not on PyPI, and not copied into this repository)
MDBROKER_SOURCE = "https://github.com/booksbyus/zguide/tree/master/examples/Python"


def run_mdbroker(path: str, endpoint: str) -> int:
    """zguide's ``mdbroker.py`` (MDP/0.1) at ``path``, bound to ``endpoint``.

    Its ``main()`` binds ``tcp://*:5555``; this imports the module from its own directory (with
    the ``MDP.py`` and ``zhelpers.py`` beside it) and does what ``main()`` does on ``endpoint``.
    """
    import importlib.util

    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location("mdbroker", file)
    if spec is None or spec.loader is None:
        print(f"mdbroker: cannot load {file}", file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    broker = module.MajorDomoBroker(False)
    broker.bind(endpoint)
    broker.mediate()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark peers")
    sub = parser.add_subparsers(dest="peer", required=True)
    p = sub.add_parser("proxy", help="zmq.proxy(ROUTER, DEALER) on free ports")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--curve-secret-key-file", default=None, help="make both sockets CURVE servers")
    m = sub.add_parser("mdbroker", help=f"zguide's mdbroker.py ({MDBROKER_SOURCE})")
    m.add_argument("--path", required=True, help="mdbroker.py, with MDP.py and zhelpers.py beside")
    m.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    if args.peer == "proxy":
        return run_proxy(args.host, args.curve_secret_key_file)
    if args.peer == "mdbroker":
        return run_mdbroker(args.path, args.endpoint)
    return 2


if __name__ == "__main__":
    sys.exit(main())
