"""Every hook maitred calls, for project name ``maitred``.

A plugin is a module or object with functions marked ``@hookimpl`` (import it from
``maitred.plugins``), installed as an entry point of group ``maitred``::

    [project.entry-points.maitred]
    myplugin = "my_package.maitred_plugin"

Hooks are bound once at start-up into plain callables: a hook nobody implements costs nothing.
pluggy calls are synchronous; the lifecycle hooks may return awaitables, which the runtime awaits.
Each hook is documented in docs/reference/hooks.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from maitred.core.access import Action, Identity
    from maitred.core.config import Config
    from maitred.core.runtime import Broker
    from maitred.core.transport import BrokerClient, TransportSpec

PROJECT = "maitred"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def maitred_transports() -> Sequence[TransportSpec]:
    """Return the transports this plugin provides (called once when a broker is built).

    Every plugin's list is gathered; two transports with the same name are a configuration
    error. A transport runs when the config has an enabled ``[transports.NAME]`` table (or the
    CLI flag ``--NAME ADDR`` is given).
    """
    return []


@hookspec(historic=True)
def maitred_configure(config: Config) -> None:
    """Called once with the checked configuration, before the broker starts.

    Historic: a plugin registered later still gets the call. Raise
    :class:`~maitred.core.errors.ConfigError` to refuse the configuration.
    """


@hookspec(firstresult=True)
def maitred_authenticate(transport: str, credentials: Mapping[str, Any]) -> Identity | None:
    """Decide who presents ``credentials`` on ``transport`` (a key, a token, a CURVE key...).

    Return an :class:`~maitred.core.access.Identity`, or None to let the next plugin (and
    finally the transport's configured default) decide. The first non-None answer wins.
    """


@hookspec(firstresult=True)
def maitred_authorize(identity: Identity, action: Action, name: str) -> bool | None:
    """Allow (True) or deny (False) ``identity`` to call/serve/publish/subscribe ``name``.

    Return None to leave the decision to the ``[access]`` rules. Answers are cached per session,
    so the answer must depend only on its arguments.
    """


@hookspec
def maitred_system_event(topic: str, payload: dict[str, Any]) -> None:
    """Observe every system event (``$sys.service.online``, ``$sys.worker.ready``, ...) as the
    router emits it, whether or not any session subscribes. Must return quickly."""


@hookspec
def maitred_broker_started(broker: Broker) -> Awaitable[None] | None:
    """Called when every transport listens. May return an awaitable, which is awaited."""


@hookspec
def maitred_broker_stopping(broker: Broker) -> Awaitable[None] | None:
    """Called when a drain begins, before transports stop accepting. May return an awaitable."""


@hookspec
def maitred_add_commands(subparsers: Any) -> None:
    """Add verbs to the ``maitred`` command (called once while the CLI builds its parser).

    ``subparsers`` is the ``argparse`` sub-parsers action: call ``subparsers.add_parser(...)``
    and give each new parser a default ``run`` (``parser.set_defaults(run=fn)``) taking the
    parsed ``argparse.Namespace`` and returning the exit code. A verb that exists already is
    an error (argparse refuses it).
    """


@hookspec(firstresult=True)
def maitred_connect(url: str, timeout: float, options: Mapping[str, Any]) -> BrokerClient | None:
    """Return a blocking CLI client for a broker at ``url`` if this plugin speaks its scheme
    (``tcp://``, ``ipc://`` for MDP; later ``http://``, ``unix:``), else None.

    ``options``: the credentials given on the command line, by option name (e.g.
    ``curve_server_key``, ``curve_key_file``); those absent are not in it. An implementation
    may leave ``options`` out of its parameters."""
