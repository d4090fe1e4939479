"""``python -m maitred.core`` is the ``maitred`` command."""

import sys

from maitred.core.cli import main

sys.exit(main())
