"""maitred's plugin system (pluggy): hook specs, the manager, and test fixtures for authors."""

from maitred.plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
