"""maitred's plugin system (pluggy): hook specs, the manager, and test fixtures for authors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from maitred.plugins.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from maitred.core.transport import TransportSpec

__all__ = ["hookimpl", "hookspec", "transports_hook"]


def transports_hook(*specs: TransportSpec) -> Callable[[], Sequence[TransportSpec]]:
    """A ``maitred_transports`` implementation that provides ``specs``, for a plugin module to
    bind to that name (pluggy finds hook implementations by their name in the module)::

        maitred_transports = transports_hook(TransportSpec(name="line", ...))

    It is the same as an ``@hookimpl`` function ``maitred_transports()`` returning them."""

    @hookimpl
    def maitred_transports() -> Sequence[TransportSpec]:
        return list(specs)

    return maitred_transports
