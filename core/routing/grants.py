"""Access checks of the router: the per-session verdict cache, denials and run-time grants."""

from __future__ import annotations

from maitred.core.access import AccessPolicy, Action, decide, decide_pattern, is_open, refusal
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.model import Session
from maitred.core.routing.patterns import matches, validate_pattern
from maitred.core.routing.state import RouterState, log


class GrantsMixin(RouterState):
    """Who may do what (see :mod:`maitred.core.access`), cached per session."""

    # -- access -----------------------------------------------------------------------------

    def allowed(self, session: Session, action: Action, name: str) -> bool:
        """Ask the access policy (cached per session); a denial is counted and published."""
        if self._access_open and not session.identity.restricted:
            return True
        key = (action, name)
        verdict = session.allow_cache.get(key)
        if verdict is None:
            # a pattern (a subscription) is allowed only if every name it matches is
            verdict = decide_pattern(self.access, self.grants, session.identity, action, name)
            if len(session.allow_cache) > 4096:
                session.allow_cache.clear()
            session.allow_cache[key] = verdict
        if not verdict:
            self.report_denied(session, action, name)
        return verdict

    def report_denied(self, session: Session, action: Action, name: str) -> None:
        """Count a denial and publish it on ``$sys.auth.denied``. The router calls it for what
        it refuses itself; a transport calls it for what its protocol refuses before asking the
        router (e.g. middleman's EREQ from an untrusted key)."""
        self.stats[f"denied.{action.value}"] += 1
        self._emit(
            "$sys.auth.denied",
            {
                "identity": session.identity.name,
                "session": session.label,
                "transport": session.transport,
                "action": action.value,
                "name": name,
            },
        )

    def report_auth_failure(
        self, transport: str, peer: str, reason: str, who: str = "", *, now: float
    ) -> None:
        """Count a peer refused before it had a session (no credentials, a wrong token, an
        unknown CURVE key, a failed TLS client certificate) and publish it on
        ``$sys.auth.denied`` with ``action = "authenticate"``. ``peer`` is the peer's address,
        ``who`` what it claimed to be (a key's or a certificate's name; never a secret).

        Every refusal is counted; at most one per transport, peer address and reason is
        published every :data:`~maitred.core.routing.throttle.AUTH_DENIED_INTERVAL` seconds (a
        peer that reconnects in a loop is one event, not ten a second; ``who`` is not part of
        the key, or a peer would get past it with a fresh key each time): the others are counted as
        ``denied.authenticate.suppressed`` and the next event published for that peer says
        how many were held back before it (``suppressed``)."""
        self.stats["denied.authenticate"] += 1
        self.stats[f"denied.authenticate.{transport}"] += 1
        held = self.auth_throttle.admit((transport, peer, reason), now)
        if held is None:
            self.stats["denied.authenticate.suppressed"] += 1
            return
        self._emit(
            "$sys.auth.denied",
            {
                "identity": who,
                "session": "",
                "transport": transport,
                "action": "authenticate",
                "name": peer,
                "reason": reason,
                "suppressed": held,
            },
        )

    def permits(self, session: Session, action: Action, name: str) -> bool:
        """The policy's answer for ``session`` on ``name``, not cached and never counted or
        published as a denial (e.g. to filter what a listing shows)."""
        if self._access_open and not session.identity.restricted:
            return True
        return decide(self.access, self.grants, session.identity, action, name)

    def may_grant(self, session: Session, action: Action, pattern: str) -> bool:
        """Whether ``session`` may grant ``action`` on ``pattern``: only what its identity may
        do itself, on every name the pattern matches (asked again when the rules change)."""
        return decide_pattern(self.access, self.grants, session.identity, action, pattern)

    def grant(self, role: str, action: Action, pattern: str, *, by: Session | None = None) -> bool:
        """Let restricted identities with ``role`` perform ``action`` on names matching
        ``pattern`` (run-time grants, e.g. middleman EPUB/EREQ/ESUB). True when the grant is
        new. Raises ValueError for a bad pattern.

        ``by`` is the session that grants: the grant must be within what it may do itself
        (:meth:`may_grant`; else a denial, counted and published, and ``Denied``), it is
        withdrawn when that session closes (or when the rules change and no longer let it),
        and lasts while any session that made it remains. Without ``by``, the broker grants
        (until :meth:`revoke`)."""
        problem = validate_pattern(pattern)
        if problem:
            raise ValueError(problem)
        holder = 0
        if by is not None:
            if by.closed:
                raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
            if not self.may_grant(by, action, pattern):
                self.report_denied(by, action, pattern)
                raise Denied(refusal(by.identity, action, pattern))
            holder = by.id
        self._grant_holders.setdefault((role, action, pattern), set()).add(holder)
        added = self.grants.grant(role, action, pattern)
        if added:
            self._clear_caches()
        return added

    def revoke(self, role: str, action: Action, pattern: str, *, by: Session | None = None) -> bool:
        """Withdraw a grant: ``by``'s share of it (the grant ends with its last holder), or,
        without ``by``, the grant whoever made it. True when the grant ended."""
        key = (role, action, pattern)
        holders = self._grant_holders.get(key)
        if by is not None:
            if holders is None or by.id not in holders:
                return False
            holders.discard(by.id)
            if holders:
                return False
        self._grant_holders.pop(key, None)
        removed = self.grants.revoke(role, action, pattern)
        if removed:
            self._clear_caches()
        return removed

    def _release_grants(self, session_id: int) -> None:
        """The session is gone: its grants end unless another holder keeps them."""
        ended = 0
        for key, holders in list(self._grant_holders.items()):
            if session_id in holders:
                holders.discard(session_id)
                if not holders:
                    del self._grant_holders[key]
                    ended += self.grants.revoke(*key)
        if ended:
            self.stats["grants.withdrawn"] += ended
            self._clear_caches()

    def _recheck_grants(self, session_id: int | None = None) -> None:
        """Drop each session's share of the grants it may no longer make (after the rules or
        its identity changed); a grant ends with its last holder."""
        ended = False
        for key, holders in list(self._grant_holders.items()):
            role, action, pattern = key
            for sid in list(holders):
                if sid == 0 or (session_id is not None and sid != session_id):
                    continue
                session = self.sessions.get(sid)
                if session is None or not self.may_grant(session, action, pattern):
                    holders.discard(sid)
                    self.stats["grants.dropped"] += 1
                    log.info(
                        "grant of %s on %s to %s dropped: %s no longer may",
                        action.value,
                        pattern,
                        role,
                        session.label if session else sid,
                    )
            if not holders:
                del self._grant_holders[key]
                ended |= self.grants.revoke(role, action, pattern)
        if ended:
            self._clear_caches()

    def _clear_caches(self) -> None:
        for session in self.sessions.values():
            session.allow_cache.clear()

    def set_access(self, access: AccessPolicy) -> None:
        """Replace the policy (e.g. when keys or rules change at run time)."""
        self.access = access
        self._access_open = is_open(access)
        for session in self.sessions.values():
            session.allow_cache.clear()
        self._recheck_grants()

    def may_receive(self, session: Session, topic: str) -> bool:
        """Whether a publication on ``topic`` may be delivered to ``session``: it must be a
        topic the session may subscribe to *now* (rules and grants change after a subscription
        was made). Cached per session and topic, like every verdict; never reported as a
        denial (the publisher did nothing wrong)."""
        if self._access_open and not session.identity.restricted:
            return True
        key = (Action.SUBSCRIBE, topic)
        verdict = session.allow_cache.get(key)
        if verdict is None:
            unchecked = self._unchecked.get(session.id)
            if unchecked and any(matches(p, topic) for p in unchecked):
                return True  # the transport's own channel (not cached: not a verdict)
            verdict = decide(self.access, self.grants, session.identity, Action.SUBSCRIBE, topic)
            if len(session.allow_cache) > 4096:
                session.allow_cache.clear()
            session.allow_cache[key] = verdict
        return verdict
