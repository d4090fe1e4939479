"""Exec a command so that it cannot outlive the benchmark.

    python bench/guard.py --ppid PID --max-seconds S -- CMD [ARG...]

Before ``execvp`` it
- asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to SIGKILL the process when its parent
  (the orchestrator) dies, even if the orchestrator itself is SIGKILLed;
- exits at once if the parent is already gone (the race the death signal cannot cover);
- arms ``alarm(S)``: a pending alarm survives ``execve`` and its default action ends the process,
  so every broker, worker and client has a hard lifetime whatever it does.

Both hold across ``exec`` because they are process attributes, so this works for commands we do not
control (``python -m majortomo.broker``, ``maitred serve``). Only the standard library is imported:
starting the guard costs a bare interpreter start-up.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` when the parent dies (Linux only; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppid", type=int, required=True, help="expected parent pid")
    parser.add_argument(
        "--max-seconds", type=int, required=True, help="hard lifetime (SIGALRM, kept over exec)"
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("no command given")
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.ppid:
        return 3  # the orchestrator is already gone
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; do not pass that on
    signal.alarm(max(1, args.max_seconds))
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        # 127 like a shell: "command not found / not executable"; the message goes to stderr
        # which the orchestrator shows when it skips the leg.
        print(f"guard: cannot execute {cmd[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127


if __name__ == "__main__":
    sys.exit(main())
