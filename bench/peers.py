"""Moved to ``maitred.plugins.bench.peers`` (installed with maitred, so ``maitred bench`` has it);
this name stays for the scripts in bench/ and for ``python bench/peers.py``."""

import sys

from maitred.plugins.bench import peers as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
