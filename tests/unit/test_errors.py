"""The error tree: every error maitred raises on purpose is a MaitredError, split into the errors a
peer caused (PeerError) and the broker's own (BrokerError)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import maitred.core
import maitred.plugins
import maitred.transports
from maitred.core.errors import (
    BrokerError,
    ConfigError,
    Denied,
    ErrorCode,
    MaitredError,
    PeerError,
    ProtocolError,
)
from maitred.core.routing.patterns import TooComplex
from maitred.core.store import StoreLocked, StoreTooNew
from maitred.transports.http import client as http_client
from maitred.transports.http import codec as http_codec
from maitred.transports.mdp.client import MdpTimeout
from maitred.transports.mdp.codec import MdpFormatError
from maitred.transports.ws.json_codec import JsonBodyError
from maitred.transports.ws.mm_codec import ParseError

#: (class, its side of the split, the builtin it still is for older callers, its default code)
TREE: list[tuple[type[MaitredError], type[MaitredError], type[Exception] | None, ErrorCode]] = [
    (ConfigError, BrokerError, None, ErrorCode.BAD_REQUEST),
    (Denied, PeerError, None, ErrorCode.FORBIDDEN),
    (MdpFormatError, ProtocolError, ValueError, ErrorCode.BAD_REQUEST),
    (ParseError, ProtocolError, ValueError, ErrorCode.BAD_REQUEST),
    (JsonBodyError, ProtocolError, ValueError, ErrorCode.BAD_REQUEST),
    (http_codec.SwitchError, ProtocolError, None, ErrorCode.BAD_REQUEST),
    (StoreLocked, BrokerError, RuntimeError, ErrorCode.INTERNAL),
    (StoreTooNew, BrokerError, RuntimeError, ErrorCode.INTERNAL),
    (TooComplex, BrokerError, None, ErrorCode.INTERNAL),
    (MdpTimeout, BrokerError, TimeoutError, ErrorCode.TIMEOUT),
]


@pytest.mark.parametrize(("cls", "side", "builtin", "code"), TREE, ids=str)
def test_each_error_has_its_place(
    cls: type[MaitredError],
    side: type[MaitredError],
    builtin: type[Exception] | None,
    code: ErrorCode,
) -> None:
    assert issubclass(cls, side)
    assert issubclass(cls, MaitredError)
    if builtin is not None:
        assert issubclass(cls, builtin)
    err = cls("why")
    assert err.code is code
    assert err.reason == "why"


def test_the_two_sides_do_not_overlap() -> None:
    assert issubclass(ProtocolError, PeerError)
    assert not issubclass(PeerError, BrokerError)
    assert not issubclass(BrokerError, PeerError)


def test_protocol_errors_print_their_bare_reason_others_the_code() -> None:
    assert str(MdpFormatError("bad header")) == "bad header"
    assert str(ParseError("no terminator")) == "no terminator"
    assert str(StoreLocked("x: in use")) == "500 INTERNAL: x: in use"
    assert str(MdpTimeout("no reply")) == "504 TIMEOUT: no reply"


def test_switch_client_error_takes_the_status_as_its_code() -> None:
    err = http_client.SwitchError(404, b"queue q does not exist")
    assert isinstance(err, PeerError)
    assert err.code is ErrorCode.NOT_FOUND
    assert (err.status, err.body) == (404, b"queue q does not exist")
    assert http_client.SwitchError(418, b"").code is ErrorCode.INTERNAL


#: exception classes allowed outside the tree: owned by another change in progress
_ELSEWHERE = {"maitred.transports.http.switch.Refused"}


def _modules() -> list[str]:
    names: list[str] = []
    for pkg in (maitred.core, maitred.transports, maitred.plugins):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not info.name.endswith(".__main__"):  # runs the CLI when imported
                names.append(info.name)
    return names


def test_every_exception_class_maitred_defines_is_a_maitred_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)  # (a signal, like cli.Stopped, is no error)
                and obj.__module__ == name
                and not issubclass(obj, MaitredError)
                and f"{name}.{attr}" not in _ELSEWHERE
            ):
                strays.append(f"{name}.{attr}")
    assert strays == []


def test_error_code_of_a_number() -> None:
    """A peer's status number becomes its code; one maitred does not know is INTERNAL."""
    assert ErrorCode.of(404) is ErrorCode.NOT_FOUND
    assert ErrorCode.of(531) is ErrorCode.CANCELLED
    assert ErrorCode.of(418) is ErrorCode.INTERNAL
    assert ErrorCode.of(0) is ErrorCode.INTERNAL
