"""Topics of the router: subscriptions, publications and the broker's own ``$sys.`` events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from maitred.core.access import Action, refusal
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.headers import client_headers
from maitred.core.routing.model import Body, Headers, Session
from maitred.core.routing.patterns import is_pattern, validate_pattern
from maitred.core.routing.state import (
    CLIENT_SYS_TOPICS,
    SYS_PREFIX,
    PatternWatcher,
    RouterState,
    _json,
    log,
)


class TopicsMixin(RouterState):
    """Subscriptions, publications and ``$sys.`` events."""

    # -- topics -------------------------------------------------------------------------------

    def subscribe(self, session: Session, pattern: str, *, check: bool = True) -> bool:
        """Subscribe ``session`` to ``pattern``; False when it was already subscribed.
        Raises ``Denied``, a ``BAD_REQUEST`` error for an invalid pattern, or ``QUEUE_FULL``
        past ``max_subscriptions`` (or ``max_subscriptions_total``, which a ``check=False``
        subscription may pass: one per connection).

        A pattern is allowed only if every topic it can match is allowed (see
        :func:`~maitred.core.access.decide_pattern`): ``chat.>`` needs more than an allow on
        ``chat.*``, and ``>`` is refused while a deny rule takes any topic from it.
        ``check=False`` is for channels a transport owns for the session itself (e.g.
        middleman's private ``MSG:<id>``): the access policy is not asked, now or on delivery."""
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        problem = validate_pattern(pattern)
        if problem:
            raise MaitredError(problem, ErrorCode.BAD_REQUEST)
        if self.name_too_long(pattern):
            raise MaitredError(
                f"pattern longer than {self.max_name_length} bytes", ErrorCode.BAD_REQUEST
            )
        if check and not self.allowed(session, Action.SUBSCRIBE, pattern):
            raise Denied(refusal(session.identity, Action.SUBSCRIBE, pattern))
        if pattern in session.patterns:
            return False
        if len(session.patterns) >= self.max_subscriptions:
            self.stats["subscriptions.refused"] += 1
            raise MaitredError(
                f"too many subscriptions (at most {self.max_subscriptions} per session)",
                ErrorCode.QUEUE_FULL,
            )
        if check and self.topics.size >= self.max_subscriptions_total:
            self.stats["subscriptions.refused"] += 1
            raise MaitredError(
                f"too many subscriptions (at most {self.max_subscriptions_total} in all)",
                ErrorCode.QUEUE_FULL,
            )
        session.patterns.add(pattern)
        self.topics.add(pattern, session)
        if self._pattern_watchers and not session.local_only:
            self._pattern_ref(pattern, 1)
        if not check:
            self._unchecked.setdefault(session.id, set()).add(pattern)
        return True

    def unsubscribe(self, session: Session, pattern: str) -> bool:
        if pattern not in session.patterns:
            return False
        session.patterns.discard(pattern)
        self.topics.remove(pattern, session)
        if self._pattern_watchers and not session.local_only:
            self._pattern_ref(pattern, -1)
        unchecked = self._unchecked.get(session.id)
        if unchecked is not None:
            unchecked.discard(pattern)
            if not unchecked:
                del self._unchecked[session.id]
        return True

    def watch_patterns(self, watcher: PatternWatcher) -> Callable[[], None]:
        """Call ``watcher(pattern, True)`` when a pattern gets its first subscriber and
        ``watcher(pattern, False)`` when it loses its last one (``local_only`` sessions, a
        cluster fabric's own, do not count); at once for every pattern in use now. The
        result stops it (calling it twice is harmless)."""
        if not self._pattern_watchers:
            self._pattern_refs = Counter(
                p for s in self.sessions.values() if not s.local_only for p in s.patterns
            )
        self._pattern_watchers.append(watcher)
        for pattern in list(self._pattern_refs):
            watcher(pattern, True)

        def stop() -> None:
            if watcher in self._pattern_watchers:
                self._pattern_watchers.remove(watcher)

        return stop

    def _pattern_ref(self, pattern: str, delta: int) -> None:
        refs = self._pattern_refs
        refs[pattern] += delta
        n = refs[pattern]
        if n <= 0:
            del refs[pattern]
        if n == (1 if delta > 0 else 0):
            for watcher in list(self._pattern_watchers):
                try:
                    watcher(pattern, delta > 0)
                except Exception:  # a watcher must never break subscriptions
                    log.exception("pattern watcher %r failed", watcher)

    def _deliver(self, targets: set[Session], topic: str, body: Body, headers: Headers) -> int:
        """Hand a publication to each target that may receive it; the number reached."""
        check = not self._access_open
        key = (Action.SUBSCRIBE, topic)
        # nobody to check (no check asked, no restricted session open): skip the verdicts
        guard = check or bool(self._restricted)
        reached = 0
        for target in targets:
            if target.closed:
                continue
            if guard and (check or target.identity.restricted):
                # the cached verdict inline (the common case); else ask
                verdict = target.allow_cache.get(key)
                if not (verdict or (verdict is None and self.may_receive(target, topic))):
                    self.stats["delivered.withheld"] += 1
                    continue
            reached += 1
            try:
                target.sink.deliver_event(topic, body, headers)
            except Exception:
                log.exception("deliver_event failed for %s", target.label)
        return reached

    def publish(
        self,
        session: Session | None,
        topic: str,
        body: Body,
        headers: Headers | None = None,
        *,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Deliver to every session subscribed to a matching pattern (once per session) that
        may receive ``topic`` (:meth:`may_receive`). ``session`` None is the broker itself.
        Returns the number of sessions reached.

        ``headers`` are the publisher's: any broker-owned name in them (``Cid``, ``Uid``,
        ``Rid``, in any case) is dropped; ``stamp`` is the transport's own values of those
        (added last)."""
        if session is not None:
            if session.closed:
                raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
            problem = validate_pattern(topic)
            if problem or is_pattern(topic):
                raise MaitredError(problem or "cannot publish to a pattern", ErrorCode.BAD_REQUEST)
            if topic.startswith(SYS_PREFIX) and topic not in CLIENT_SYS_TOPICS:
                self.report_denied(session, Action.PUBLISH, topic)
                raise Denied(f"{topic} is reserved for the broker")
            if not self.allowed(session, Action.PUBLISH, topic):
                raise Denied(refusal(session.identity, Action.PUBLISH, topic))
        targets = self.topics.match(topic)
        hdrs = client_headers(headers, stamp) or {}
        reached = self._deliver(targets, topic, body, hdrs) if targets else 0
        self.stats["published"] += 1
        self.stats["delivered"] += reached
        return reached

    def set_node_name(self, name: str) -> None:
        """This broker is the node ``name`` of a cluster: every ``$sys`` event it emits says so
        in its payload (``"node"``); ``""`` (the default, no cluster) leaves them as they are."""
        self.node_name = name

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        if self.node_name and "node" not in payload:
            payload = {**payload, "node": self.node_name}
        if self._on_event is not None:
            try:
                self._on_event(topic, payload)
            except Exception:
                log.exception("system event hook failed for %s", topic)
        if self.topics:
            targets = self.topics.match(topic)
            if targets:
                self._deliver(targets, topic, (_json.encode(payload),), {})
