"""Build the plugin manager: hook specs, built-in and third-party plugins, disable-by-name.

Nothing happens at import time; each broker builds its own manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from maitred.plugins import hookspecs

log = logging.getLogger("maitred.plugins")

ENTRY_POINT_GROUP = "maitred"


def make_plugin_manager(
    *,
    disabled: Iterable[str] = (),
    plugins: Iterable[object] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A manager with maitred's hook specs, ``plugins`` registered, then every installed entry
    point of group ``maitred`` except those named in ``disabled``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = list(disabled)
    for name in disabled:
        pm.set_blocked(name)
    for plugin in plugins:
        pm.register(plugin)
    if load_entry_points:
        known = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name in disabled:
            if name not in known:
                log.warning("plugins.disable names %r, which is not an installed plugin", name)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            plugin = ep.load()
            if pm.is_registered(plugin):
                continue  # also passed in ``plugins``: one registration is enough
            pm.register(plugin, name=ep.name)
    return pm


def installed_plugins() -> list[str]:
    """Names of the entry points of group ``maitred`` (for ``maitred plugins``)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
