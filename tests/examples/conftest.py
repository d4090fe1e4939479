"""The end-to-end fixtures (an embedded broker per test, a zmq context), shared with tests/e2e.

(Imported rather than redefined; importing is the warning-free way, as in tests/plugins.)
"""

from tests.e2e.conftest import ctx, make_broker  # noqa: F401
