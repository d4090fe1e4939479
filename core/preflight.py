"""Checks that ``maitred check`` and ``maitred serve`` run before anything binds.

What the config types alone cannot see: whether an address can be bound (scheme, host, port
0-65535, the directory of a Unix socket), whether TLS material loads and matches, whether a store
file can be written. Transport plugins describe their own tables through
:attr:`maitred.core.transport.TransportSpec.preflight`, using the helpers here; each helper
returns the problem as one sentence with the fix, or None.

Pure of side effects apart from reading files and resolving host names: nothing is bound,
created or written.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from maitred.core.credentials import secret_file_problem

#: longest path of a Unix socket on Linux (sun_path is 108 bytes, with its NUL)
MAX_UNIX_PATH = 107


def _access(path: str | Path, mode: int) -> bool:
    """``os.access`` for the effective user (the one that will bind and open files)."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


@dataclass(frozen=True)
class Problem:
    """One thing ``serve`` would fail on: the key (relative to the transport's table, e.g.
    ``listen``), what is wrong with the fix, and the value concerned (an address, so a problem
    with an address given as ``--NAME ADDR`` can name the flag)."""

    key: str
    text: str
    value: str | None = None


def check_each(
    key: str, values: Iterable[str], check: Callable[[str], str | None]
) -> list[Problem]:
    """One :class:`Problem` under ``key`` for each of ``values`` (e.g. the addresses of
    ``listen``) that ``check`` finds wrong, naming the value."""
    return [Problem(key, problem, value) for value in values if (problem := check(value))]


def check_file(key: str, path: str, check: Callable[[str], str | None]) -> list[Problem]:
    """The :class:`Problem` under ``key`` that ``check`` finds with the file ``path``, if any
    (none when ``path`` is not set)."""
    problem = check(path) if path else None
    return [Problem(key, problem)] if problem else []


def check_port(port: str, addr: str) -> str | None:
    if not port.isdigit():
        return f"{addr!r}: the port {port!r} is not a number; write HOST:PORT, e.g. 127.0.0.1:8080"
    if int(port) > 65535:
        return (
            f"{addr!r}: port {int(port)} is out of range; use a port from 0 to 65535 "
            "(0: any free port)"
        )
    return None


def check_host(host: str, addr: str) -> str | None:
    """A host a listener can bind: an IP address, ``*``, ``localhost`` or a name that resolves."""
    if host in ("", "*", "0.0.0.0", "::"):
        return None
    try:
        socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return (
            f"{addr!r}: the host {host!r} does not resolve ({reason}); use an IP address "
            "such as 127.0.0.1 or 0.0.0.0, or a name of this machine"
        )
    return None


def check_host_port(addr: str, *, schemes: tuple[str, ...] = ()) -> str | None:
    """``HOST:PORT`` (``[v6]:PORT``), optionally after one of ``schemes`` (e.g. ``ws://``)."""
    rest = addr
    for scheme in schemes:
        if rest.startswith(scheme):
            rest = rest[len(scheme) :].rstrip("/")
            break
    else:
        if "://" in rest:
            scheme, _, tail = rest.partition("://")
            allowed = f" (allowed: {', '.join(schemes)})" if schemes else ""
            return (
                f"{addr!r}: no {scheme}:// here{allowed}; "
                f"write HOST:PORT, e.g. {tail.rstrip('/') or '127.0.0.1:8080'}"
            )
    host, sep, port = rest.rpartition(":")
    if not sep or not port:
        example = f"{host or '127.0.0.1'}:8080" if sep else f"{rest or '127.0.0.1'}:8080"
        return f"{addr!r}: not HOST:PORT (no port); write e.g. {example}"
    if host.startswith("[") != host.endswith("]"):
        return f"{addr!r}: unbalanced brackets; write an IPv6 host as [::1]:PORT"
    return check_port(port, addr) or check_host(host.strip("[]"), addr)


def check_unix_path(path: str, addr: str) -> str | None:
    """A Unix socket path: not empty, short enough, in a directory that exists and that this
    process may write, not an existing file that is not a socket."""
    if not path:
        return f"{addr!r}: empty socket path; write unix:/run/maitred/maitred.sock"
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        return (
            f"{addr!r}: the socket path is {len(os.fsencode(path))} bytes, longer than the "
            f"{MAX_UNIX_PATH} a Unix socket allows; use a shorter path"
        )
    p = Path(path)
    parent = p.parent
    if not parent.is_dir():
        return f"{addr!r}: the directory {str(parent)!r} does not exist; create it first"
    if not _access(parent, os.W_OK | os.X_OK):
        return (
            f"{addr!r}: the directory {str(parent)!r} is not writable by this user; "
            "choose another directory or change its permissions"
        )
    if p.exists() and not p.is_socket():
        return f"{addr!r}: {path!r} exists and is not a socket; remove it or choose another path"
    return None


def check_readable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return f"{path!r}: no such file"
    except IsADirectoryError:
        return f"{path!r}: is a directory, not a PEM file"
    except PermissionError:
        return f"{path!r}: not readable by this user (permission denied); fix its permissions"
    except OSError as exc:
        return f"{path!r}: cannot read: {exc.strerror or exc}"
    return None


def check_secret_files(files: Iterable[tuple[str, str]], skip: Iterable[str] = ()) -> list[Problem]:
    """Each file that holds a secret, given as (config key, path), must exist and be readable
    by its owner only (:func:`~maitred.core.credentials.secret_file_problem`): one
    :class:`Problem` per file that is not, naming the file and the fix (``chmod 600 FILE``).
    Keys in ``skip`` (already reported, e.g. by :func:`check_tls`) are not checked again.

    Transports declare their secret files with
    :attr:`maitred.core.transport.TransportSpec.secret_files`; ``maitred check`` and ``serve``
    call this for them."""
    skipped = set(skip)
    out: list[Problem] = []
    for key, path in files:
        if not path or key in skipped:
            continue
        problem = secret_file_problem(path)
        if problem is not None:
            out.append(Problem(key, problem))
    return out


def check_tls(
    cert: str, key: str, cert_key: str = "tls_cert", key_key: str = "tls_key"
) -> list[Problem]:
    """Both PEM files readable, the certificate a certificate, the key its key."""
    out: list[Problem] = []
    if bool(cert) != bool(key):
        missing = key_key if cert else cert_key
        return [Problem(missing, f"{cert_key} and {key_key} go together; set {missing} too")]
    if not cert:
        return out
    for name, path in ((cert_key, cert), (key_key, key)):
        problem = check_readable(path)
        if problem:
            out.append(Problem(name, problem))
    if out:
        return out
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if _loads(key, cert):
            return [
                Problem(
                    cert_key,
                    f"{cert!r} and {key!r} are swapped ({cert_key} holds the key); exchange "
                    f"{cert_key} and {key_key}",
                )
            ]
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            return [
                Problem(
                    key_key,
                    f"{key!r} is not the key of the certificate {cert!r}; give the key the "
                    "certificate was made with",
                )
            ]
        if not _has_pem(cert, "CERTIFICATE"):
            return [Problem(cert_key, f"{cert!r} holds no PEM certificate ({exc.reason})")]
        return [Problem(key_key, f"{key!r} holds no usable PEM private key ({exc.reason})")]
    except OSError as exc:
        return [Problem(cert_key, f"{cert!r}: cannot load: {exc.strerror or exc}")]
    return out


def _loads(cert: str, key: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        return False
    return True


def _has_pem(path: str, label: str) -> bool:
    try:
        return f"-----BEGIN {label}-----".encode() in Path(path).read_bytes()
    except OSError:
        return False


def check_writable_file(path: Path) -> str | None:
    """A file this process could create or open for writing (its directory created as needed,
    as the SQLite stores do)."""
    try:
        return _writable_file(path)
    except OSError as exc:  # a directory on the way that may not be searched
        return f"{str(path)!r} cannot be reached: {exc.strerror or exc}; check the permissions"


def _writable_file(path: Path) -> str | None:
    if path.exists():
        if path.is_dir():
            return f"{str(path)!r} is a directory; give a file name"
        if not _access(path, os.R_OK | os.W_OK):
            return f"{str(path)!r} is not writable by this user; fix its permissions"
        return None
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is not a directory; {str(path)!r} cannot be created under it"
    if not _access(ancestor, os.W_OK | os.X_OK):
        made = "" if ancestor == path.parent else f" (to create {str(path.parent)!r})"
        return (
            f"{str(path)!r} cannot be created: {str(ancestor)!r} is not writable by this "
            f"user{made}; choose a writable path or create the directory for this user"
        )
    return None
