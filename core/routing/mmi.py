"""The ``mmi.`` services of the router: answered by the broker itself, never queued."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from maitred.core.access import Action
from maitred.core.errors import Denied
from maitred.core.routing.model import NO_DEADLINE, Body, Headers, Request, Session
from maitred.core.routing.state import _DONE, _FINAL, RouterState

if TYPE_CHECKING:
    from maitred.core.routing.router import Router


class MmiMixin(RouterState):
    """Requests to ``mmi.*`` services (answered by the ``mmi`` handler, usually
    :class:`~maitred.core.management.Management`)."""

    def _submit_mmi(
        self,
        session: Session,
        name: str,
        body: Body,
        correlation: Any,
        now: float,
        headers: Headers | None,
    ) -> Request | None:
        request = Request(
            id=self._next_request,
            service=name,
            body=body,
            caller=session,
            correlation=correlation,
            deadline=NO_DEADLINE,
            accepted=now,
            headers=headers,
            state=_DONE,
        )
        if not self.allowed(session, Action.CALL, name):
            session.sink.deliver_error(
                request, Denied(f"{session.identity.name} may not call {name}")
            )
            return None
        self.stats["mmi.requests"] += 1
        if self._mmi is None:
            reply = [*body[:-1], b"501"] if body else [b"501"]
        else:
            reply = self._mmi(cast("Router", self), name, body)
        session.sink.deliver_reply(request, _FINAL, reply)
        return request
