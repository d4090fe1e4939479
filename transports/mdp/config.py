"""The ``[transports.mdp]`` settings: endpoints, liveness, limits and worker credit."""

from __future__ import annotations

from typing import Literal

import msgspec

from maitred.core.checks import at_least, finite
from maitred.transports.mdp.zap import CurveKey, key_problems


class MdpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transports.mdp]``: the ZeroMQ Majordomo front end."""

    enabled: bool = True
    #: ZeroMQ endpoints to bind: ``tcp://HOST:PORT`` (port 0 or ``*``: any free port),
    #: ``ipc:///path``, ``inproc://name``
    endpoints: list[str] = msgspec.field(default_factory=lambda: ["tcp://127.0.0.1:5555"])
    #: seconds between HEARTBEATs to workers; 0: the ``[liveness]`` value
    heartbeat_interval: float = 0.0
    #: intervals of silence before a worker is dead; 0: the ``[liveness]`` value
    liveness: int = 0
    #: ZMTP heartbeats on every connection (interval: the heartbeat interval; timeout: the
    #: liveness window): a peer whose libzmq answers nothing that long has its connection closed
    #: (libzmq < 4.2 peers do not answer them and are disconnected when idle that long)
    zmtp_heartbeats: bool = True
    #: largest accepted message body (sum of frame sizes, bytes)
    max_message_size: int = 1 << 20
    #: most body frames in one message
    max_frames: int = 64
    #: messages handled per wake-up before yielding to other work
    batch: int = 512
    #: ZeroMQ high-water marks: messages queued per peer (libzmq counts messages, not bytes:
    #: what one peer can hold is about ``sndhwm`` times its largest message). A message for a
    #: peer at its mark is dropped and counted (``mdp.peer_full``); a client that never reads
    #: loses replies instead of growing the broker
    sndhwm: int = 1000
    rcvhwm: int = 1000
    #: answer a failed request (no worker, timeout, worker died, denied) with a FINAL whose body
    #: is ``[b"<code>", b"<reason>"]`` (like MMI's status frames); false: drop it (the client
    #: times out, as MDP clients are used to)
    error_replies: bool = True
    #: the identity MDP peers get (MDP has no authentication of its own)
    identity: str = "anonymous"
    roles: list[str] = msgspec.field(default_factory=list)
    #: milliseconds to keep sending queued messages (e.g. DISCONNECTs) after close
    linger_ms: int = 500
    #: requests a worker may hold at once to start with. MDP's own rule is 1 (the default). 2
    #: or more pipelines: the next request already waits in the worker's socket while it works,
    #: which hides the broker round trip (much higher throughput for a busy service) at the
    #: price of strict LRU fairness, and a worker that dies loses (or, with redeliver, returns)
    #: them all
    worker_credit: int = 1
    #: adaptive pipelining: while requests wait for a service and a worker answers each within
    #: ``worker_pipeline_below`` seconds of receiving it, its credit grows by one per answer up
    #: to this; the first slower answer sets it back to ``worker_credit``. Equal to
    #: ``worker_credit`` (e.g. 1): off, every worker holds ``worker_credit`` requests at most
    worker_credit_max: int = 32
    #: seconds from sending a request to a worker to its final answer below which the answer
    #: counts as fast for adaptive pipelining (see ``worker_credit_max``)
    worker_pipeline_below: float = 0.002
    #: scheduling policy of libzmq's background threads, on Linux, when the transport makes its
    #: own ZeroMQ context: ``"batch"`` (SCHED_BATCH) keeps the I/O thread, woken for almost
    #: every message sent, from preempting the event loop that sends them on a machine with few
    #: cores (+8-20 % WebSocket → MDP throughput on 2 cores, in A/B runs); ``"default"``
    #: leaves them alone
    io_thread_sched: Literal["batch", "default"] = "batch"
    #: ZeroMQ endpoints of an XPUB socket the broker publishes on: SUB peers subscribe there to
    #: topics (a prefix, ZeroMQ's way) or maitred patterns (``news.*``, ``$sys.>``), each checked
    #: by ``[access]`` ([publish and subscribe](mdp.md#publish-and-subscribe)). Empty: off
    pub_endpoints: list[str] = msgspec.field(default_factory=list)
    #: ZeroMQ endpoints of an XSUB socket PUB peers publish into (``[topic, body…]``, to every
    #: transport's subscribers, checked by ``[access]``). Empty: off
    publish_endpoints: list[str] = msgspec.field(default_factory=list)
    #: messages queued per subscriber of ``pub_endpoints`` (the XPUB socket's SNDHWM); past it
    #: libzmq drops what that subscriber is sent, so a slow one holds at most about
    #: ``pub_sndhwm`` times the largest publication (plus the kernel's socket buffer)
    pub_sndhwm: int = 1000
    #: the broker's CURVE secret certificate (``maitred keygen`` writes one; mode 0600): CURVE
    #: encryption and authentication on ``curve_endpoints``. Empty: no CURVE
    curve_secret_key_file: str = ""
    #: the endpoints that use CURVE when ``curve_secret_key_file`` is set; empty: every
    #: ``tcp://`` endpoint (``ipc://`` stays plain unless listed)
    curve_endpoints: list[str] = msgspec.field(default_factory=list)
    #: the CURVE client keys accepted and who each is (``[[transports.mdp.keys]]``); a key not
    #: listed is refused during the handshake
    keys: list[CurveKey] = msgspec.field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if not self.endpoints:
            out.append("endpoints: at least one endpoint is needed")
        for ep in self.endpoints:
            if "://" not in ep:
                out.append(
                    f"endpoints: {ep!r} is not a ZeroMQ endpoint (tcp://, ipc://, inproc://)"
                )
        for key in ("pub_endpoints", "publish_endpoints"):
            for ep in getattr(self, key):
                if "://" not in ep:
                    out.append(
                        f"{key}: {ep!r} is not a ZeroMQ endpoint (tcp://, ipc://, inproc://)"
                    )
        out += at_least(self, 1, "pub_sndhwm", "max_message_size", "max_frames", "batch")
        out += at_least(self, 1, "worker_credit")
        out += finite(self, "heartbeat_interval", note="0: the [liveness] value")
        out += at_least(self, 0, "liveness", note="0: the [liveness] value")
        if self.sndhwm < 0 or self.rcvhwm < 0:
            out.append("sndhwm and rcvhwm must be >= 0 (0: no limit)")
        out += at_least(self, -1, "linger_ms", note="-1: wait forever")
        if self.worker_credit_max < self.worker_credit:
            out.append("worker_credit_max must be >= worker_credit")
        out += finite(self, "worker_pipeline_below", positive=True, note="seconds")
        return out + self.curve_problems()

    def curve_problems(self) -> list[str]:
        """The CURVE keys (the secret key file itself is checked by preflight and at start)."""
        out = key_problems(self.keys)
        if not self.curve_secret_key_file:
            if self.curve_endpoints:
                out.append("curve_endpoints: set curve_secret_key_file too (CURVE needs it)")
            return out
        for ep in self.curve_endpoints:
            if ep not in self.endpoints:
                out.append(f"curve_endpoints: {ep!r} is not one of endpoints")
            elif not ep.startswith(("tcp://", "ipc://")):
                out.append(f"curve_endpoints: {ep!r}: CURVE is for tcp:// and ipc:// endpoints")
        if not self.curve_bound():
            out.append("curve_secret_key_file: no endpoint uses CURVE (no tcp:// endpoint)")
        return out

    def curve_bound(self) -> list[str]:
        """The endpoints that use CURVE (none without ``curve_secret_key_file``)."""
        if not self.curve_secret_key_file:
            return []
        if self.curve_endpoints:
            return [ep for ep in self.endpoints if ep in self.curve_endpoints]
        return [ep for ep in self.endpoints if ep.startswith("tcp://")]
