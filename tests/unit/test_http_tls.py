"""The HTTP transport's TLS helpers (maitred.transports.http.tls) and the redaction of
credentials from malformed-request log lines, without sockets."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from maitred.core.errors import MaitredError
from maitred.transports.http.server import redact
from maitred.transports.http.tls import (
    common_name,
    fingerprint,
    reload_contexts,
    server_context,
    tls_problem,
)
from tests.e2e.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_good_files_have_no_problem_and_make_a_context(pki: Pki) -> None:
    assert tls_problem(str(pki.server.cert), str(pki.server.key), str(pki.ca.cert)) is None
    failures: list[ssl.SSLError] = []
    context = server_context(
        str(pki.server.cert), str(pki.server.key), str(pki.ca.cert), failures.append
    )
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_each_problem_names_its_file(pki: Pki, tmp_path: Path) -> None:
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca.cert)
    missing = str(tmp_path / "missing.key")
    assert f"tls_key {missing}: no such file" in str(tls_problem(cert, missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    garbage.chmod(0o600)
    assert f"cannot load tls_cert {garbage}" in str(tls_problem(str(garbage), key))
    # a certificate with another certificate's key
    assert "cannot load tls_cert" in str(tls_problem(cert, str(pki.billing.key)))
    assert f"cannot load tls_client_ca {garbage}" in str(tls_problem(cert, key, str(garbage)))
    with pytest.raises(MaitredError, match="http: tls_key"):
        server_context(cert, missing, ca, lambda exc: None)


def test_reload_contexts_keeps_the_old_certificate_when_the_new_one_does_not_load(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    context = server_context(str(pki.server.cert), str(pki.server.key), "", lambda exc: None)
    reload_contexts([context], str(tmp_path / "gone.pem"), str(pki.server.key))
    assert "cannot load the TLS cert/key" in caplog.text


def test_fingerprint_changes_with_the_contents(pki: Pki, tmp_path: Path) -> None:
    a = fingerprint(str(pki.server.cert), str(pki.server.key))
    assert a == fingerprint(str(pki.server.cert), str(pki.server.key))
    assert a != fingerprint(str(pki.server2.cert), str(pki.server2.key))
    assert fingerprint(str(tmp_path / "gone"), str(pki.server.key)) == ""


def test_common_name() -> None:
    subject = ((("countryName", "FR"),), (("commonName", "billing"),))
    assert common_name({"subject": subject}) == "billing"
    assert common_name({"subject": ((("organizationName", "x"),),)}) == ""
    assert common_name(None) == ""


@pytest.mark.parametrize(
    "message",
    [
        "400, message: Invalid header value char: b'Authorization: Bearer s3cr3t\\x00' ^",
        "400, message: Invalid char in url query: b'GET /x?access_token=s3cr3t\\x01 HTTP/1.1'",
        "400, message: Got more than 8190 bytes when reading: b'Bearer s3cr3tttt...'.",
        '400, message: bad: b"authorization: basic s3cr3t"',
    ],
)
def test_redact_leaves_out_quoted_credentials(message: str) -> None:
    out = redact(message)
    assert "s3cr3t" not in out and out.startswith("400, message: ")


def test_redact_keeps_messages_without_credentials() -> None:
    message = "400, message: Invalid method encountered: b'GE\\x00T' ^"
    assert redact(message) == message
