"""The core's implementation of :class:`~maitred.core.transport.BrokerPort`, the plugin API.

A thin layer over :class:`~maitred.core.routing.router.Router` plus the clock and a few runtime
services. The verbs on the per-message path (submit, reply, touch, publish, hold, release, ...)
are the router's own bound methods, so the port costs nothing per message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from maitred.core.access import Action, Identity
from maitred.core.clock import Clock
from maitred.core.errors import MaitredError
from maitred.core.routing.liveness import Liveness
from maitred.core.routing.model import (
    Body,
    Request,
    Service,
    ServicePolicy,
    Session,
    Worker,
)
from maitred.core.routing.router import Router
from maitred.core.routing.state import Tracer

if TYPE_CHECKING:
    from maitred.core.durable import StoreJournal


class CorePort:
    """What a transport may use of the broker (see :class:`~maitred.core.transport.BrokerPort`).
    Built once by the runtime."""

    # the router's own methods, bound in __init__ (no extra call per message)
    open_session: Callable[..., Session]
    close_session: Callable[..., None]
    set_identity: Callable[[Session, Identity], None]
    submit: Callable[..., Request | None]
    cancel: Callable[[Request, float], None]
    reply: Callable[..., bool]
    reply_error: Callable[[Worker, int, MaitredError, float], bool]
    held_by_worker: Callable[[Request], Worker | None]
    can_accept: Callable[[str], bool]
    register_worker: Callable[..., Worker]
    set_credit: Callable[[Worker, int, float], None]
    watch_patterns: Callable[[Callable[[str, bool], None]], Callable[[], None]]
    add_mmi: Callable[[str, Callable[[Body], bytes]], Callable[[], None]]
    set_node_name: Callable[[str], None]
    watch_cancels: Callable[[Callable[[Request, float], None]], Callable[[], None]]
    unregister_worker: Callable[..., None]
    touch: Callable[[Worker, float], None]
    subscribe: Callable[..., bool]
    unsubscribe: Callable[[Session, str], bool]
    publish: Callable[..., int]
    allowed: Callable[[Session, Action, str], bool]
    report_denied: Callable[[Session, Action, str], None]
    permits: Callable[[Session, Action, str], bool]
    may_grant: Callable[[Session, Action, str], bool]
    grant: Callable[..., bool]
    revoke: Callable[..., bool]
    hold: Callable[[int], None]
    release: Callable[[int], None]
    snapshot: Callable[[], Mapping[str, Any]]

    def __init__(
        self,
        router: Router,
        clock: Clock,
        liveness: Liveness,
        *,
        authenticate: Callable[[str, Mapping[str, Any]], Identity | None] | None = None,
        info: Callable[[], dict[str, Any]] | None = None,
        request_stop: Callable[[], None] | None = None,
        max_message_size: int = 1 << 20,
    ) -> None:
        self._router = router
        self._clock = clock
        self._liveness = liveness
        self._authenticate = authenticate
        self._info = info or (lambda: {})
        self._request_stop = request_stop
        self._max_message_size = max_message_size
        #: set by the runtime when the durable store is open
        self.journal: StoreJournal | None = None
        self.open_session = router.open_session
        self.close_session = router.close_session
        self.set_identity = router.set_identity
        self.submit = router.submit
        self.cancel = router.cancel
        self.reply = router.reply
        self.reply_error = router.reply_error
        self.held_by_worker = router.held_by_worker
        self.can_accept = router.can_accept
        self.register_worker = router.add_worker
        self.set_credit = router.set_credit
        self.watch_patterns = router.watch_patterns
        self.add_mmi = router.add_mmi
        self.set_node_name = router.set_node_name
        self.watch_cancels = router.watch_cancels
        self.unregister_worker = router.remove_worker
        self.touch = router.touch
        self.subscribe = router.subscribe
        self.unsubscribe = router.unsubscribe
        self.publish = router.publish
        self.allowed = router.allowed
        self.report_denied = router.report_denied
        self.permits = router.permits
        self.may_grant = router.may_grant
        self.grant = router.grant
        self.revoke = router.revoke
        self.hold = router.hold
        self.release = router.release
        self.snapshot = router.snapshot

    def report_auth_failure(self, transport: str, peer: str, reason: str, who: str = "") -> None:
        """The router's, at the runtime clock's ``now`` (it limits how often one peer is
        published)."""
        self._router.report_auth_failure(transport, peer, reason, who, now=self._clock())

    # -- runtime services -------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def liveness(self) -> Liveness:
        return self._liveness

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    @property
    def max_name_length(self) -> int:
        return self._router.max_name_length

    @property
    def stats(self) -> Counter[str]:
        return self._router.stats

    @property
    def draining(self) -> bool:
        return self._router.draining

    def authenticate(
        self, transport: str, credentials: Mapping[str, Any], default: Identity | None
    ) -> Identity | None:
        if self._authenticate is not None:
            identity = self._authenticate(transport, credentials)
            if identity is not None:
                return identity
        return default

    def info(self) -> dict[str, Any]:
        return self._info()

    def request_stop(self) -> None:
        if self._request_stop is not None:
            self._request_stop()

    # -- queries ------------------------------------------------------------------------------

    def service_exists(self, service_name: str) -> bool:
        return service_name in self._router.services

    def service_policy(self, service_name: str) -> ServicePolicy:
        service = self._router.services.get(service_name)
        if service is not None:
            return service.policy
        return self._router.policy_for(service_name)

    def services(self) -> list[Service]:
        return list(self._router.services.values())

    def trace(self, tracer: Tracer) -> Callable[[], None]:
        tracers = self._router.tracers
        tracers.append(tracer)

        def stop() -> None:
            if tracer in tracers:
                tracers.remove(tracer)

        return stop


if TYPE_CHECKING:
    from maitred.core.transport import BrokerPort

    def _implements(port: CorePort) -> BrokerPort:
        """mypy checks here that :class:`CorePort` implements the port."""
        return port


__all__ = ["CorePort"]
