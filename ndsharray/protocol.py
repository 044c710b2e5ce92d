"""The client <-> daemon message codec. Pure: no zmq, no I/O, no clock, no pids.

Rule 1: every request is one JSON object ``{"v": PROTOCOL, "id": int, "op": str, ...}``
and gets exactly one reply ``{"v": PROTOCOL, "id": same, "ok": true, "result": {...}}`` or
``{"v": PROTOCOL, "id": same, "ok": false, "error": {"code": ErrorCode, "message": str}}``.

Rule 2: a request is checked completely here, field by field, before anything acts on it;
what is rejected names the field and the value received.

Rule 3: the protocol version is independent of the package version; a daemon answers a
request of another version with ``BAD_VERSION`` and changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ErrorCode as ErrorCode  # (the codes are the errors' contract; requests use them)
from .errors import ProtocolError, UsageError
from .replies import (
    Claimed,
    Empty,
    Listing,
    Lookup,
    NewGeneration,
    Ping,
    Removed,
    Stats,
    Wire,
)

PROTOCOL = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_TAG_LEN = 200
MAX_NDIM = 64

#: Tags: 1..200 characters of letters, digits and ``_ . - : @ + =``, with ``/`` between
#: non-empty parts (``camera/left``), none of them ``.`` or ``..``. Tags never name a file:
#: segments get random names.
TAG_RE = re.compile(r"[A-Za-z0-9_.:@+=-]+(/[A-Za-z0-9_.:@+=-]+)*\Z")
_TOKEN_RE = re.compile(r"[0-9a-f]{8,64}\Z")


class RequestError(Exception):
    """A request that cannot be acted on; becomes an error reply."""

    def __init__(self, code: ErrorCode, message: str, req_id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id


def check_tag(tag: object) -> str:
    """Return ``tag`` if it follows the tag rules, else raise :class:`UsageError` (a
    ``ValueError``) saying which; ``TypeError`` for a tag that is not a str."""
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a str, got {type(tag).__name__}")
    if not 0 < len(tag) <= MAX_TAG_LEN:
        raise UsageError(f"tag must be 1..{MAX_TAG_LEN} characters, got {len(tag)}")
    if not TAG_RE.match(tag):
        raise UsageError(
            f"tag {tag[:60]!r} has characters outside letters, digits, '_.-:@+=' or an empty "
            "part between '/' separators"
        )
    if any(part in (".", "..") for part in tag.split("/")):
        raise UsageError(f"tag {tag[:60]!r} has a '.' or '..' part; name parts plainly")
    return tag


# ---- field checkers: each returns the value or raises ValueError with the reason ------


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"expected an integer in {lo}..{hi}, got {v!r:.60}")
        return v

    return check


def _tag(v: Any) -> str:
    try:
        return check_tag(v)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _token(v: Any) -> str:
    if not isinstance(v, str) or not _TOKEN_RE.match(v):
        raise ValueError(f"expected 8..64 lowercase hex digits, got {v!r:.60}")
    return v


def _short_str(v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 4096:
        raise ValueError(f"expected a string of 1..4096 characters, got {v!r:.60}")
    return v


def _shape(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > MAX_NDIM:
        raise ValueError(f"expected a list of at most {MAX_NDIM} integers, got {v!r:.60}")
    for n in v:
        if type(n) is not int or not 0 <= n < 2**63:
            raise ValueError(f"expected non-negative integers, got {n!r:.60}")
    return tuple(v)


_pid = _int_in(1, 2**31 - 1)
_slots = _int_in(1, 255)

R = TypeVar("R", bound=Wire)


@dataclass(frozen=True)
class Op(Generic[R]):
    """One operation: its request's fields (each with its checker) and its reply's class.
    The table below is the only list of operations: the daemon registers a handler for each
    (``op_<name>``), and a client asks with the ``Op`` and gets an ``R`` back."""

    name: str
    fields: dict[str, Callable[[Any], Any]]
    reply: type[R]

    def reply_from(self, result: Any) -> R:
        """The typed reply to this op from a decoded ``result``; :class:`ProtocolError`
        naming the op and field when it does not fit."""
        return self.reply.from_wire(result, self.name)


_WRITER = {"tag": _tag, "pid": _pid, "token": _token}
PING = Op("ping", {}, Ping)
STATS = Op("stats", {}, Stats)
LIST = Op("list", {}, Listing)
CLAIM = Op("claim", _WRITER, Claimed)
GENERATION = Op("generation", {**_WRITER, "dtype": _short_str, "shape": _shape, "slots": _slots},
                NewGeneration)
RELEASE = Op("release", {"tag": _tag, "token": _token}, Empty)
ATTACH = Op("attach", {"tag": _tag, "pid": _pid, "token": _token}, Claimed)
DETACH = Op("detach", {"tag": _tag, "token": _token}, Empty)
LOOKUP = Op("lookup", {"tag": _tag}, Lookup)
REMOVE = Op("remove", {"tag": _tag}, Removed)

OPS: dict[str, Op[Any]] = {op.name: op for op in (
    PING, STATS, LIST, CLAIM, GENERATION, RELEASE, ATTACH, DETACH, LOOKUP, REMOVE)}

# op -> optional fields and their checkers (absent: the daemon's default)
OPTIONAL: dict[str, dict[str, Callable[[Any], Any]]] = {
    # bytes per slot for a frame (default: the shape's), metadata bytes per slot (default 0)
    "generation": {"capacity": _int_in(0, 2**63 - 1), "meta_capacity": _int_in(0, 16 << 20)},
}


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, Any]


def decode_request(data: bytes) -> Request:
    """Parse and check one request; raise :class:`RequestError` naming what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise RequestError(
            ErrorCode.BAD_REQUEST, f"message is {len(data)} bytes, limit {MAX_MESSAGE_BYTES}"
        )
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, f"expected a JSON object, got {type(msg).__name__}")
    req_id = msg.get("id")
    if type(req_id) is not int or not 0 <= req_id < 2**63:
        raise RequestError(ErrorCode.BAD_REQUEST, f"field 'id': expected an integer, got {req_id!r:.60}")
    if msg.get("v") != PROTOCOL:
        raise RequestError(
            ErrorCode.BAD_VERSION,
            f"protocol version {msg.get('v')!r:.20} not supported; this daemon speaks {PROTOCOL}"
            " - upgrade the older of client and daemon",
            req_id,
        )
    op = msg.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r:.60}", req_id)
    args: dict[str, Any] = {}
    for field, check in OPS[op].fields.items():
        if field not in msg:
            raise RequestError(ErrorCode.BAD_REQUEST, f"op {op!r}: field {field!r} missing", req_id)
        try:
            args[field] = check(msg[field])
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"op {op!r}: field {field!r}: {exc}", req_id) from None
    for field, check in OPTIONAL.get(op, {}).items():
        if field in msg:
            try:
                args[field] = check(msg[field])
            except ValueError as exc:
                raise RequestError(ErrorCode.BAD_REQUEST, f"op {op!r}: field {field!r}: {exc}", req_id) from None
    return Request(req_id, op, args)


def encode_request(req_id: int, op: str, **args: Any) -> bytes:
    return json.dumps({"v": PROTOCOL, "id": req_id, "op": op, **args}).encode()


def encode_result(req_id: int, result: Wire) -> bytes:
    return json.dumps({"v": PROTOCOL, "id": req_id, "ok": True, "result": result.to_wire()}).encode()


def encode_error(req_id: int, code: ErrorCode, message: str) -> bytes:
    return json.dumps(
        {"v": PROTOCOL, "id": req_id, "ok": False, "error": {"code": code.value, "message": message}}
    ).encode()


@dataclass(frozen=True)
class Reply:
    """A reply's envelope; ``result`` is still the JSON object: ``Op.reply_from`` types it
    once the id says it answers the request in hand."""

    id: int
    ok: bool
    result: Any
    code: str = ""
    message: str = ""


def decode_reply(data: bytes) -> Reply:
    """Parse a daemon reply's envelope; raises :class:`ProtocolError` naming what is wrong."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(msg, dict) or type(msg.get("id")) is not int:
        raise ProtocolError("reply is not an object with an integer id")
    if msg.get("v") != PROTOCOL:
        raise ProtocolError(f"reply has protocol version {msg.get('v')!r:.20}, expected {PROTOCOL}"
                            " - upgrade the older of client and daemon")
    if msg.get("ok") is True and "result" in msg:
        return Reply(msg["id"], True, msg["result"])
    err = msg.get("error")
    if msg.get("ok") is False and isinstance(err, dict):
        return Reply(msg["id"], False, None, str(err.get("code")), str(err.get("message")))
    raise ProtocolError("reply has neither a result nor an error")
