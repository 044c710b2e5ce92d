"""One exception tree (ndsharray.errors), used everywhere: every raise names its cause with
a class of the tree, every daemon error carries a code of ErrorCode, and usage mistakes are
UsageError (a ValueError)."""

from __future__ import annotations

import ast
import os
import pickle

import numpy as np
import pytest
import zmq
from conftest import Daemon

import ndsharray
from ndsharray import errors, protocol
from ndsharray.errors import (
    DaemonError,
    DaemonLimitError,
    ErrorCode,
    NdShArrayError,
    ProtocolError,
    ResourceLimitError,
    TagBusyError,
    UsageError,
    from_reply,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = {name: obj for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, NdShArrayError)}
# Exceptions that never leave the package, each turned into a reply or an error of the tree.
DAEMON_INTERNAL = {
    "RequestError": "the daemon's: becomes an error reply with its ErrorCode (checked below)",
    "ForeignFile": "the daemon's recovery: a file it leaves alone",
    "AlreadyRunning": "the daemon's start: becomes a click error",
    "_Bad": "the reply checker's: becomes a ProtocolError naming the op",
    "Dropped": "a write under on_full='drop': caught in Writer.write, which returns False",
}
WITH_CODE = {name for name, cls in TREE.items() if issubclass(cls, DaemonError)} | {"RequestError"}


def sources() -> list[tuple[str, ast.Module]]:
    out = []
    for pkg in ("ndsharray", "ndsharrayd"):
        for folder, _, names in sorted(os.walk(os.path.join(ROOT, pkg))):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path) as f:
                    out.append((os.path.relpath(path, ROOT), ast.parse(f.read(), path)))
    assert len(out) > 30 and "ndsharray/errors.py" in dict(out)
    return out


def callee(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def is_a_code(node: ast.expr | None) -> bool:
    """``ErrorCode.MEMBER``, or a code passed on (``exc.code``: typed ErrorCode, mypy checks)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ErrorCode":
        return node.attr in ErrorCode.__members__
    return isinstance(node, ast.Attribute) and node.attr == "code"


def test_every_library_error_raised_is_of_the_tree_with_a_code_from_error_code() -> None:
    problems = []
    defined = {}  # exception classes defined outside errors.py
    for where, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and where != "ndsharray/errors.py":
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & (set(TREE) | {"Exception", "BaseException"}) or any(b.endswith("Error") for b in bases):
                    defined[node.name] = where
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = callee(node.exc)
                if name in defined and name not in DAEMON_INTERNAL:
                    problems.append(f"{where}:{node.lineno}: raises {name}, not a class of ndsharray.errors")
            if isinstance(node, ast.Call) and callee(node) in TREE | {"RequestError": None}:
                name = callee(node)
                if name == "NdShArrayError":
                    problems.append(f"{where}:{node.lineno}: raises the root NdShArrayError; name the cause")
                if name in WITH_CODE:
                    code = node.args[0] if node.args else next(
                        (k.value for k in node.keywords if k.arg == "code"), None)
                    if code is None and name == "TagRemovedError":
                        continue  # (its one code is the default)
                    if not is_a_code(code):
                        problems.append(f"{where}:{node.lineno}: {name} with code "
                                        f"{ast.unparse(code) if code else 'missing'}, not an ErrorCode member")
    assert set(defined) <= set(DAEMON_INTERNAL), f"exception classes outside errors.py: {defined}"
    assert not problems, "\n".join(problems)


def test_each_error_code_raises_one_class() -> None:
    assert isinstance(from_reply("TAG_BUSY", "m"), TagBusyError)
    for code in ("NO_SPACE", "LIMIT"):
        exc = from_reply(code, "m")
        assert isinstance(exc, DaemonLimitError) and isinstance(exc, ResourceLimitError)
        assert isinstance(exc, DaemonError) and exc.code is ErrorCode(code)
    for code in ("BAD_VERSION", "UNKNOWN_OP"):
        exc = from_reply(code, "m")
        assert type(exc) is ProtocolError and exc.code is ErrorCode(code)
    for code in ("BAD_REQUEST", "FORBIDDEN", "INTERNAL"):
        exc = from_reply(code, "m")
        assert type(exc) is DaemonError and exc.code is ErrorCode(code)
    odd = from_reply("NEW_IN_V9", "m")
    assert type(odd) is ProtocolError and "NEW_IN_V9" in str(odd) and odd.code is None


def test_a_daemon_error_carries_its_code_as_the_enum_and_pickles(daemon: Daemon) -> None:
    with ndsharray.NdShArray("busy", np.zeros(2), "w"), pytest.raises(TagBusyError) as info:
        ndsharray.transport.Connection(daemon.endpoint).request(
            protocol.CLAIM, tag="busy", pid=os.getpid(), token="ab" * 8)
    exc = info.value
    assert exc.code is ErrorCode.TAG_BUSY and exc.code == "TAG_BUSY"  # (a str enum: old comparisons hold)
    assert str(exc.code) == f"{exc.code}" == "TAG_BUSY"  # (and it prints as the code, as before)
    again = pickle.loads(pickle.dumps(exc))  # (a pool worker's error reaches its parent)
    assert type(again) is TagBusyError and again.code is ErrorCode.TAG_BUSY and str(again) == str(exc)
    proto = pickle.loads(pickle.dumps(ProtocolError("m", ErrorCode.BAD_VERSION)))
    assert proto.code is ErrorCode.BAD_VERSION and str(proto) == "m"


def test_a_daemon_of_another_protocol_version_is_a_protocol_error(daemon: Daemon) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(daemon.endpoint)
        sock.send(b'{"v": 99, "id": 5, "op": "ping"}')
        assert sock.poll(10_000), "the daemon did not answer"
        reply = protocol.decode_reply(sock.recv())
    finally:
        sock.close(0)
        ctx.term()
    assert not reply.ok and reply.id == 5
    exc = from_reply(reply.code, reply.message)
    assert type(exc) is ProtocolError and exc.code is ErrorCode.BAD_VERSION
    assert "upgrade the older of client and daemon" in str(exc)


def test_usage_mistakes_are_usage_errors_and_value_errors(daemon: Daemon) -> None:
    assert issubclass(UsageError, ValueError) and issubclass(errors.HandleClosedError, UsageError)
    with ndsharray.NdShArray("use", np.zeros(2), "w") as w, ndsharray.NdShArray("use", r_w="r") as r:
        with pytest.raises(UsageError, match="needs r_w='w'"):
            r.write(np.zeros(2))
        with pytest.raises(UsageError, match="needs r_w='r'"):
            w.read()
        with w.loan() as buf:
            buf[...] = 1
            with pytest.raises(UsageError, match="inside a loan"):
                w.write(np.zeros(3))
    with pytest.raises(UsageError, match="r_w must be"):
        ndsharray.NdShArray("use", r_w="x")
    with pytest.raises(UsageError, match="tag"):
        ndsharray.NdShArray("a//b", r_w="r")
