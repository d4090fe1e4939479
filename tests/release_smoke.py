"""The built wheel, installed as a user would: ``python tests/release_smoke.py DIST VENV``.

Makes a fresh virtual environment at VENV, installs the one wheel in DIST into it (its
dependencies from the package index), and checks that ``maitred --version`` prints the wheel's
version and that a broker started from it answers one call through a worker. Run by
``tox -e release`` after ``python -m build`` and ``twine check``; exits non-zero on any failure.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path


def main(dist: Path, env: Path) -> int:
    wheels = sorted(dist.glob("maitred-*.whl"))
    sdists = sorted(dist.glob("maitred-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    version = wheels[0].name.split("-")[1]
    if version not in sdists[0].name:
        print(f"the wheel ({wheels[0].name}) and the sdist ({sdists[0].name}) differ")
        return 1
    shutil.rmtree(env, ignore_errors=True)
    venv.create(env, with_pip=True)
    bin_dir = env / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", str(wheels[0])], check=True)
    maitred = str(bin_dir / "maitred")
    shown = subprocess.run([maitred, "--version"], capture_output=True, text=True, check=True)
    if shown.stdout.strip() != f"maitred {version}":
        print(f"maitred --version printed {shown.stdout!r}, expected 'maitred {version}'")
        return 1
    serve = subprocess.Popen(
        [maitred, "serve", "--mdp", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        for line in serve.stdout:
            if line.startswith("maitred: ready "):
                endpoint = json.loads(line.removeprefix("maitred: ready "))["mdp"][0]
                break
        else:
            print("the broker exited before it was ready")
            return 1
        worker = subprocess.Popen(
            [maitred, "worker", "echo", "--program", "cat", "--max-requests", "1", "-b", endpoint],
            stderr=subprocess.DEVNULL,
        )
        call = subprocess.run(
            [maitred, "call", "echo", "released", "-b", endpoint, "-t", "30"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        worker.wait(30)
        if call.returncode != 0 or call.stdout != "released\n":
            print(f"the call failed: {call.returncode} {call.stdout!r} {call.stderr!r}")
            return 1
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        if serve.stdout is not None:
            serve.stdout.close()
    print(f"release smoke: maitred {version} installed from {wheels[0].name} answers")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
