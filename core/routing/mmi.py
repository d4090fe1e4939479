"""The ``mmi.`` services of the router: answered by the broker itself, never queued."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from maitred.core.access import Action
from maitred.core.errors import Denied
from maitred.core.routing.model import Body, Request
from maitred.core.routing.state import _FINAL, RouterState, log

if TYPE_CHECKING:
    from maitred.core.routing.router import Router


class MmiMixin(RouterState):
    """Requests to ``mmi.*`` services (answered by the ``mmi`` handler, usually
    :class:`~maitred.core.management.Management`)."""

    def add_mmi(self, name: str, handler: Callable[[Body], bytes]) -> Callable[[], None]:
        """Answer ``mmi.NAME`` with ``handler(body)`` (the last frame of the reply; a plugin's
        own management service, e.g. ``mmi.nodes``). The result removes it."""
        if not name.startswith("mmi."):
            raise ValueError(f"{name!r} is not an mmi. service")
        self._mmi_extra[name] = handler

        def remove() -> None:
            if self._mmi_extra.get(name) is handler:
                del self._mmi_extra[name]

        return remove

    def cluster_nodes(self, detail: bool = False) -> list[dict[str, Any]] | None:
        """The nodes of the cluster as the ``mmi.nodes`` a cluster fabric adds lists them
        (this node first, ``"self": true``; ``detail``: with what each peer announced), or None
        without a cluster. An answer that is not a list of objects is counted and taken as
        none (``mmi.bad_cluster_view``)."""
        handler = self._mmi_extra.get("mmi.nodes")
        if handler is None:
            return None
        try:
            rows = msgspec.json.decode(handler([b'{"services": true}' if detail else b""]))
        except Exception:  # a plugin's bug must not break mmi.info, /metrics or a listing
            rows = None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            self.stats["mmi.bad_cluster_view"] += 1
            return None
        return rows

    def _submit_mmi(self, request: Request) -> Request | None:
        """Answer ``request`` (made by :meth:`_new_request`, done) at once, or refuse it."""
        session = request.caller
        name = request.service
        body = request.body
        if not self.allowed(session, Action.CALL, name):
            session.sink.deliver_error(
                request, Denied(f"{session.identity.name} may not call {name}")
            )
            return None
        self.stats["mmi.requests"] += 1
        extra = self._mmi_extra.get(name)
        if extra is not None:
            try:
                answer = extra(body)
            except Exception:  # a plugin's handler must not break the caller's session
                log.exception("the handler of %s failed", name)
                answer = b"500"
            reply = [*body[:-1], answer] if body else [answer]
        elif self._mmi is None:
            reply = [*body[:-1], b"501"] if body else [b"501"]
        else:
            reply = self._mmi(cast("Router", self), name, body)
        session.sink.deliver_reply(request, _FINAL, reply, None)
        return request
