"""The optional compiled MDP frame loop (transports/mdp/_frames.pyx); everything else is in
pyproject.toml.

Built when Cython and a C compiler are at hand (pyproject's build requirements bring Cython);
when compiling fails for any reason the package installs without it and the MDP transport uses
its pure-Python loop (transports/mdp/frames.py chooses at import).
"""

from __future__ import annotations

import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on without the extension when it cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Cython, a compiler error, ...
            self._skipped(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skipped(exc)

    @staticmethod
    def _skipped(exc: BaseException) -> None:
        print(
            f"maitred: the compiled MDP frame loop was not built ({exc}); "
            "the pure-Python one is used",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "maitred.transports.mdp._frames",
            ["transports/mdp/_frames.pyx"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
