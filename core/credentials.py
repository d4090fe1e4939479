"""Credentials every transport shares: bearer tokens, and secrets read from files or the
environment.

A **token table** (``[[transports.http.tokens]]``, ``[[transports.ws.tokens]]``) holds the
SHA-256 of each token, never the token: the config file can be read by more people than the
tokens should be. :meth:`TokenTable.identify` hashes what a peer presented and compares it with
every entry in constant time, so neither a wrong token's length nor the position of its first
wrong byte shows in the time taken.

**Secrets on disk** (TLS keys, CURVE secret keys, token files) must not be readable by anyone
but their owner: :func:`secret_file_problem` names the file and the fix, as ssh does, and the
broker refuses to start on such a file. :func:`read_secret` takes a secret from a value, a file
or an environment variable.

Everything here is pure (no sockets); reading files is the only I/O.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import msgspec

from maitred.core.access import Identity
from maitred.core.errors import ConfigError

#: tokens longer than this are refused before hashing (a header of 64 KiB costs nothing then)
MAX_TOKEN_LENGTH = 4096

_HEX = frozenset("0123456789abcdef")


class TokenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One accepted bearer token: the SHA-256 of the token (64 hex digits), who it is, and
    the roles the ``[access]`` rules see."""

    sha256: str
    identity: str
    roles: tuple[str, ...] = ()


def token_digest(token: str | bytes) -> str:
    """The hex SHA-256 of a token, as the token table stores it."""
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def new_token() -> tuple[str, str]:
    """A new random token (43 URL-safe characters, 256 bits) and its SHA-256."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_problems(tokens: Iterable[TokenConfig], where: str = "tokens") -> list[str]:
    """What is wrong with a token table, one sentence each (empty when it is usable)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(tokens):
        digest = entry.sha256.lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            out.append(
                f"{where}[{i}].sha256: expected the 64 hex digits of the token's SHA-256 "
                f"(maitred token prints one), got {len(entry.sha256)} characters"
            )
        elif digest in seen:
            out.append(f"{where}[{i}].sha256: the same token as {where}[{seen[digest]}]")
        else:
            seen[digest] = i
        if not entry.identity:
            out.append(f"{where}[{i}].identity: empty")
    return out


class TokenTable:
    """Bearer tokens to identities, compared in constant time."""

    def __init__(self, tokens: Iterable[TokenConfig] = ()) -> None:
        self._entries: list[tuple[bytes, Identity]] = [
            (
                bytes.fromhex(t.sha256.lower()),
                Identity(t.identity, roles=frozenset(t.roles)),
            )
            for t in tokens
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str | bytes) -> Identity | None:
        """The identity of ``token``, or None when no entry has it.

        Every entry is compared (no early exit), each with :func:`hmac.compare_digest`, so the
        time does not depend on which entry matched or how much of a wrong token was right.
        """
        raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
        if not raw or len(raw) > MAX_TOKEN_LENGTH:
            return None
        digest = hashlib.sha256(raw).digest()
        found: Identity | None = None
        for stored, identity in self._entries:
            if hmac.compare_digest(stored, digest):
                found = identity
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when the header is
    absent, of another scheme, empty, or holds characters a token cannot have (control
    characters, spaces, non-ASCII)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    if not token.isascii() or not token.isprintable() or " " in token:
        return None
    return token


def secret_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot hold a secret, or None when it can: it must exist, be a regular file,
    and give no permission to group or others (mode 0600 or 0400)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"{p}: no such file"
    except OSError as exc:
        return f"{p}: cannot read it ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return f"{p}: not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"{p}: a secret readable by others (mode {mode:04o}); "
            f"run 'chmod 600 {p}' so that only its owner can read it"
        )
    return None


class SecretError(ConfigError, ValueError):
    """A secret that cannot be read; ``reason`` names where it was looked for. A configuration
    error (it stops ``check`` and ``serve``), and a ValueError as it was first written."""


def read_secret(
    *,
    value: str | None = None,
    file: str | None = None,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    what: str = "secret",
) -> str | None:
    """A secret from ``value``, else the file ``file`` (checked by :func:`secret_file_problem`,
    trailing newline removed), else the environment variable ``env``; None when none is set."""
    if value:
        return value
    if file:
        problem = secret_file_problem(file)
        if problem:
            raise SecretError(f"{what}: {problem}")
        return Path(file).read_text().rstrip("\r\n")
    if env:
        found = (os.environ if environ is None else environ).get(env)
        if found is None:
            raise SecretError(f"{what}: environment variable {env} is not set")
        return found
    return None


def token_entry(digest: str, identity: str, roles: Iterable[str], table: str) -> str:
    """The TOML lines of one token table entry (``table``: e.g. ``transports.http.tokens``)."""
    return (
        f"[[{table}]]\n"
        f'sha256 = "{digest}"\n'
        f"identity = {json.dumps(identity)}\n"
        f"roles = {json.dumps(list(roles))}\n"
    )


def print_new_token(args: argparse.Namespace) -> int:
    """``maitred token``: a new random token on the first line (give it to the client), then
    the lines to paste into the broker's config (its SHA-256 only)."""
    token, digest = new_token()
    print(token)
    print("# the token above goes to the client; the broker's config holds only its SHA-256:")
    print(token_entry(digest, args.identity, args.role, args.table), end="")
    return 0


#: the environment variables a client reads its credentials from
TOKEN_ENV = "MAITRED_TOKEN"
CACERT_ENV = "MAITRED_CACERT"


@contextlib.contextmanager
def client_env(token: str | None, cacert: str | None) -> Iterator[None]:
    """``MAITRED_TOKEN`` and ``MAITRED_CACERT`` set to a command line's ``--token`` and
    ``--cacert`` while a transport's client is made (the clients read them), and put back
    after, so that programs the command runs do not inherit the token."""
    saved = {name: os.environ.get(name) for name in (TOKEN_ENV, CACERT_ENV)}
    try:
        for name, value in ((TOKEN_ENV, token), (CACERT_ENV, cacert)):
            if value:
                os.environ[name] = value
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
