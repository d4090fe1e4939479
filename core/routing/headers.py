"""Message headers: the broker's own names, and headers that keep their order and repeats.

Some header names carry what the broker says about a message, never what a client says:
``Cid`` (the connection that sent it), ``Uid`` (that connection's user id) and ``Rid`` (the
broker's request id a responder answers with). A client may not set them: every header a
client supplies goes through :func:`client_headers` on its way into the router (requests,
replies and publications from every transport), which drops those names in any letter case
(``UID``, ``uId``, ...) and then adds the transport's own values. Names are compared without
regard to case everywhere, since peers that canonicalise names (Go's ``textproto``) read
``uid`` and ``Uid`` as the same header.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

__all__ = ["BROKER_HEADERS", "HeaderPairs", "client_headers", "is_broker_header", "pairs_of"]

#: the names (lower case) only the broker sets
BROKER_HEADERS = frozenset({"cid", "uid", "rid"})


def is_broker_header(name: str) -> bool:
    """Whether ``name`` is one of :data:`BROKER_HEADERS`, in any letter case."""
    # every broker-owned name has three letters: most names are told apart by length alone
    return len(name) == 3 and name.lower() in BROKER_HEADERS


class HeaderPairs(Mapping[str, str]):
    """Headers in arrival order, repeats kept. As a Mapping (what the core's ``Headers`` is),
    a name maps to its *first* value, like Go's ``MIMEHeader.Get``; :attr:`pairs` keeps all."""

    __slots__ = ("_first", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        first = dict(self.pairs)
        if len(first) != len(self.pairs):  # a name repeats: its first value is the one
            first = {}
            for k, v in self.pairs:
                first.setdefault(k, v)
        self._first = first

    def __getitem__(self, key: str) -> str:
        return self._first[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.pairs)!r})"


def pairs_of(headers: Mapping[str, str] | None) -> Iterable[tuple[str, str]]:
    """Every (name, value) of ``headers``, repeats included when it keeps them."""
    if headers is None:
        return ()
    if isinstance(headers, HeaderPairs):
        return headers.pairs
    return headers.items()


def client_headers(
    headers: Mapping[str, str] | None, stamp: Iterable[tuple[str, str]] = ()
) -> Mapping[str, str] | None:
    """``headers`` from a client without any broker-owned name (any case), followed by
    ``stamp`` (the transport's own values of those names). The same object when there is
    nothing to drop or add."""
    own = stamp if isinstance(stamp, tuple) else tuple(stamp)
    if not headers:
        return HeaderPairs(own) if own else headers
    if isinstance(headers, HeaderPairs):
        pairs: Iterable[tuple[str, str]] = headers.pairs
        count = len(headers.pairs)
    else:
        pairs, count = headers.items(), len(headers)
    kept = [p for p in pairs if len(p[0]) != 3 or p[0].lower() not in BROKER_HEADERS]
    if not own and len(kept) == count:
        return headers
    return HeaderPairs((*kept, *own))
