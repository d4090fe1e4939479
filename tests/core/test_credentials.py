"""Token tables, bearer headers and secret files (maitred.core.credentials), without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.credentials import (
    MAX_TOKEN_LENGTH,
    SecretError,
    TokenConfig,
    TokenTable,
    bearer_token,
    new_token,
    read_secret,
    secret_file_problem,
    token_digest,
    token_problems,
)


def test_a_new_token_is_found_by_its_digest_and_nothing_else_is() -> None:
    token, digest = new_token()
    other, other_digest = new_token()
    assert token != other and len(token) >= 43
    table = TokenTable(
        [TokenConfig(digest, "ops", ("admin",)), TokenConfig(other_digest, "app", ("apps",))]
    )
    found = table.identify(token)
    assert found is not None and found.name == "ops" and found.roles == {"admin"}
    assert table.identify(other.encode()) is not None
    assert table.identify(other).name == "app"  # type: ignore[union-attr]
    assert table.identify(token[:-1]) is None
    assert table.identify(token + "x") is None
    assert table.identify(digest) is None  # the digest is not the token
    assert len(table) == 2


@pytest.mark.parametrize("length", [0, 1, MAX_TOKEN_LENGTH + 1, 64 * 1024])
def test_empty_and_oversized_tokens_are_refused(length: int) -> None:
    token = "a" * length
    table = TokenTable([TokenConfig(token_digest(token), "x")])
    assert (table.identify(token) is not None) == (0 < length <= MAX_TOKEN_LENGTH)


@given(st.binary(max_size=300))
def test_random_bytes_never_match_and_never_raise(raw: bytes) -> None:
    _token, digest = new_token()
    assert TokenTable([TokenConfig(digest, "ops")]).identify(raw) is None


def test_table_problems_name_the_entry() -> None:
    _, digest = new_token()
    problems = token_problems(
        [
            TokenConfig(digest, "a"),
            TokenConfig(digest.upper(), "b"),
            TokenConfig("abc", "c"),
            TokenConfig("z" * 64, ""),
        ],
        where="transports.http.tokens",
    )
    assert problems == [
        "transports.http.tokens[1].sha256: the same token as transports.http.tokens[0]",
        "transports.http.tokens[2].sha256: expected the 64 hex digits of the token's SHA-256 "
        "(maitred token prints one), got 3 characters",
        "transports.http.tokens[3].sha256: expected the 64 hex digits of the token's SHA-256 "
        "(maitred token prints one), got 64 characters",
        "transports.http.tokens[3].identity: empty",
    ]
    assert token_problems([TokenConfig(digest, "a")]) == []


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER a.b-c_d~e+f/g=", "a.b-c_d~e+f/g="),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic YWxhZGRpbjpvcGVu", None),
        ("Bearer a b", None),
        ("Bearer a\r\nX-Injected: 1", None),
        ("Bearer caf\u00e9", None),
        ("Bearer a\x00b", None),
        ("Bearer " + "a" * (MAX_TOKEN_LENGTH + 1), None),
    ],
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@given(st.text(max_size=200))
def test_bearer_header_never_raises(header: str) -> None:
    token = bearer_token(header)
    assert token is None or (token.isascii() and token.isprintable() and " " not in token)


def test_secret_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "broker.key_secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    problem = secret_file_problem(secret)
    assert problem == (
        f"{secret}: a secret readable by others (mode 0644); "
        f"run 'chmod 600 {secret}' so that only its owner can read it"
    )
    with pytest.raises(SecretError, match=r"tls_key: .*chmod 600"):
        read_secret(file=str(secret), what="tls_key")
    secret.chmod(0o640)
    assert secret_file_problem(secret) is not None
    secret.chmod(0o600)
    assert secret_file_problem(secret) is None
    assert read_secret(file=str(secret)) == "s3cret"
    secret.chmod(0o400)
    assert secret_file_problem(secret) is None
    assert secret_file_problem(tmp_path / "missing") == f"{tmp_path / 'missing'}: no such file"
    assert secret_file_problem(tmp_path) == f"{tmp_path}: not a regular file"


def test_secrets_from_a_value_a_file_or_the_environment() -> None:
    assert read_secret(value="v", file="/nonexistent", env="X") == "v"
    assert read_secret(env="MAITRED_T", environ={"MAITRED_T": "from-env"}) == "from-env"
    with pytest.raises(SecretError, match="environment variable MAITRED_T is not set"):
        read_secret(env="MAITRED_T", environ={})
    assert read_secret() is None


def test_client_env_sets_the_command_line_credentials_and_puts_back_the_old_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from maitred.core.credentials import client_env

    monkeypatch.setenv("MAITRED_TOKEN", "from-env")
    monkeypatch.delenv("MAITRED_CACERT", raising=False)
    with client_env("from-flag", "/ca.pem"):
        assert os.environ["MAITRED_TOKEN"] == "from-flag"
        assert os.environ["MAITRED_CACERT"] == "/ca.pem"
    assert os.environ["MAITRED_TOKEN"] == "from-env"
    assert "MAITRED_CACERT" not in os.environ
    with client_env(None, None):  # no flags: the environment as it is
        assert os.environ["MAITRED_TOKEN"] == "from-env"


def test_token_entry_is_toml_that_decodes_to_a_token_config() -> None:
    import tomllib

    import msgspec

    from maitred.core.credentials import TokenConfig, token_entry

    text = token_entry("ab" * 32, 'o"ps', ["admin", "x y"], "transports.http.tokens")
    (entry,) = tomllib.loads(text)["transports"]["http"]["tokens"]
    config = msgspec.convert(entry, TokenConfig)
    assert config == TokenConfig("ab" * 32, 'o"ps', ("admin", "x y"))
