"""Moved to ``maitred.plugins.bench.mdp`` (installed with maitred: ``maitred bench`` runs it);
this name stays for the scripts in bench/ and for ``python bench/run_mdp.py``."""

import sys

from maitred.plugins.bench import mdp as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
