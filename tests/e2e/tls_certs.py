"""Test certificates made with the ``openssl`` command (as tests/e2e/test_ws_tls.py does): a CA,
a server certificate for 127.0.0.1 signed by it, and client certificates (mutual TLS). Private
keys are written mode 0600, as the broker requires of its own key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple


class Pair(NamedTuple):
    cert: Path
    key: Path


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _key_and_csr(where: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, csr = where / f"{name}.key", where / f"{name}.csr"
    _run(
        *("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr)),
    )
    os.chmod(key, 0o600)
    return key, csr


def make_ca(where: Path, name: str = "ca") -> Pair:
    """A self-signed CA (its key signs the other certificates)."""
    where.mkdir(parents=True, exist_ok=True)
    key, cert = where / f"{name}.key", where / f"{name}.pem"
    _run(
        *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN=maitred test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        *("-keyout", str(key), "-out", str(cert)),
    )
    os.chmod(key, 0o600)
    return Pair(cert, key)


def issue(ca: Pair, where: Path, name: str, cn: str, *, server: bool) -> Pair:
    """A certificate for ``cn`` signed by ``ca``: a server's (for 127.0.0.1 and localhost) or
    a client's."""
    key, csr = _key_and_csr(where, name, cn)
    ext = where / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        if server
        else "extendedKeyUsage=clientAuth\n"
    )
    cert = where / f"{name}.pem"
    _run(
        *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key)),
        *("-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)),
    )
    return Pair(cert, key)


class Pki(NamedTuple):
    ca: Pair
    server: Pair
    #: a second server certificate from the same CA (a reload's new certificate)
    server2: Pair
    #: client certificates: CN=billing (has a [[clients]] entry in the tests), CN=nobody
    billing: Pair
    nobody: Pair
    #: a client certificate from a CA the broker does not trust
    rogue: Pair


def make_pki(where: Path) -> Pki:
    ca = make_ca(where / "ca")
    other = make_ca(where / "other", "other")
    return Pki(
        ca,
        issue(ca, where, "server", "localhost", server=True),
        issue(ca, where, "server2", "localhost-2", server=True),
        issue(ca, where, "billing", "billing", server=False),
        issue(ca, where, "nobody", "nobody", server=False),
        issue(other, where, "rogue", "billing", server=False),
    )
