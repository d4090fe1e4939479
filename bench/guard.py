"""Moved to ``maitred.plugins.bench.guard`` (installed with maitred, so ``maitred bench`` has it);
this name stays for the scripts in bench/ and for ``python bench/guard.py``."""

import sys

from maitred.plugins.bench import guard as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
