"""The daemon's replies, one typed form each. Pure: no zmq, no I/O, no clock, no pids.

Rule 1: every ``result`` a daemon sends is one of the frozen dataclasses below; the daemon
builds it, :meth:`Wire.to_wire` turns it into JSON-ready values, and the client turns what
arrived back into the same class with :meth:`Wire.from_wire`. Nobody indexes a reply by hand.

Rule 2: ``from_wire`` checks every field against the class's annotations (``int``,
``float``, ``str``, ``X | None``, ``tuple[X, ...]``, nested reply classes and TypedDicts). A field that
is missing, or holds another type, raises :class:`~ndsharray.errors.ProtocolError` naming the
op, the field and the value received. A field with a default may be missing (an older
daemon did not send it); keys the class does not know are ignored (a newer daemon may add
figures without breaking older clients within one protocol version).

Which op answers with which class is written once, in ``protocol.OPS``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, cast

from .errors import ProtocolError

W = TypeVar("W", bound="Wire")


class Wire:
    """Base of every reply class: the codec between a dataclass and its JSON form."""

    @classmethod
    def from_wire(cls: type[W], value: Any, op: str) -> W:
        """Check ``value`` (a decoded JSON object) field by field and build ``cls``; raise
        :class:`ProtocolError` naming ``op`` and the first field that is wrong."""
        try:
            out: W = _converter(cast(Any, cls))(value, "")
        except _Bad as bad:
            raise ProtocolError(
                f"reply to {op!r}: field {bad.where or '(the result)'!r}: {bad.why}") from None
        return out

    def to_wire(self) -> dict[str, Any]:
        """The JSON form: a dict of plain values (lists for tuples, dicts for nested replies)."""
        out: dict[str, Any] = _plain(self)
        return out


class _Bad(Exception):
    def __init__(self, where: str, why: str) -> None:
        self.where = where
        self.why = why


def _plain(value: Any) -> Any:
    if isinstance(value, Wire):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@functools.cache
def _converter(hint: Any) -> Callable[[Any, str], Any]:
    """A function that checks a JSON value against ``hint`` and returns it typed (a tuple
    for a list, a reply class for an object); built once per type."""
    if isinstance(hint, type) and issubclass(hint, Wire):
        return _object_converter(hint)
    if typing.is_typeddict(hint):
        return _dict_converter(hint)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_converter(a) for a in typing.get_args(hint) if a is not type(None)]
        nullable = type(None) in typing.get_args(hint)
        (inner,) = options  # (only ``X | None`` is used)

        def optional(v: Any, where: str) -> Any:
            return None if v is None and nullable else inner(v, where)
        return optional
    if origin is tuple:
        item, dots = typing.get_args(hint)
        assert dots is Ellipsis, hint
        each = _converter(item)

        def sequence(v: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(v, list):
                raise _Bad(where, f"expected a list, got {v!r:.60}")
            return tuple(each(x, f"{where}[{i}]") for i, x in enumerate(v))
        return sequence
    if hint is float:
        def number(v: Any, where: str) -> float:
            if type(v) not in (int, float):  # (JSON writes 0.0 as 0 only if asked; accept both)
                raise _Bad(where, f"expected a number, got {v!r:.60}")
            return float(v)
        return number
    if hint in (int, str, bool):
        def exact(v: Any, where: str) -> Any:
            if type(v) is not hint:  # (so True is not an int, nor 1 a bool)
                raise _Bad(where, f"expected {hint.__name__}, got {v!r:.60}")
            return v
        return exact
    raise TypeError(f"no wire form for {hint!r}")  # a reply class uses an unsupported type


def _object_converter(cls: type[Wire]) -> Callable[[Any, str], Any]:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name]),
               f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
              for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return _fields_converter(fields, lambda args: cls(**args))


def _dict_converter(cls: Any) -> Callable[[Any, str], Any]:
    hints = typing.get_type_hints(cls)
    fields = [(name, _converter(hint), name not in cls.__required_keys__) for name, hint in hints.items()]
    return _fields_converter(fields, lambda args: args)


_Field = tuple[str, Callable[[Any, str], Any], bool]  # name, its converter, whether it may be absent


def _fields_converter(fields: list[_Field], build: Callable[[dict[str, Any]], Any]) -> Callable[[Any, str], Any]:
    """The check of a JSON object with these fields (a dataclass's or a TypedDict's): each
    present field converted, each absent one optional; ``build`` makes the result."""
    def obj(v: Any, where: str) -> Any:
        if not isinstance(v, dict):
            raise _Bad(where, f"expected an object, got {v!r:.60}")
        args = {}
        for name, convert, optional in fields:
            if name in v:
                args[name] = convert(v[name], _join(where, name))
            elif not optional:
                raise _Bad(_join(where, name), "missing")
        return build(args)
    return obj


# ---- the replies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Empty(Wire):
    """``release`` and ``detach``: nothing to say."""


@dataclass(frozen=True)
class Ping(Wire):
    daemon: str  # the daemon's package version
    protocol: int
    pid: int
    endpoint: str
    prefix: str  # of its segment names in /dev/shm
    layout: int = 1  # segment layout version (daemons before layout 2 did not say)


@dataclass(frozen=True)
class Stats(Wire):
    requests: int
    tags: int
    bytes: int  # in segments
    uptime_s: float


@dataclass(frozen=True)
class SegmentInfo(Wire):
    """A tag's current segment: where a writer continues or a reader maps."""

    name: str
    generation: int
    dtype: str  # numpy's descr text (dtypes.dtype_to_text)
    shape: tuple[int, ...]
    slots: int


@dataclass(frozen=True)
class Claimed(Wire):
    """``claim`` and ``attach``: the tag's segment, None before its first write."""

    segment: SegmentInfo | None


@dataclass(frozen=True)
class NewGeneration(Wire):
    """``generation``: the segment the daemon just made for the writer."""

    segment: SegmentInfo


@dataclass(frozen=True)
class Lookup(Wire):
    segment: SegmentInfo | None
    removed: str | None = None  # why the daemon removed the tag by itself lately, if it did


@dataclass(frozen=True)
class Removed(Wire):
    """``remove``: what was removed."""

    segment: str | None  # None: the tag had no data yet
    writer_pid: int | None  # its live writer, which gets TagRemovedError on its next write
    readers: int


class ReaderStat(TypedDict):
    """One live reader of a tag, from its row in the segment header (a dict, as ``ls
    --json`` prints it and as scripts index it)."""

    pid: int
    latency_s: float | None  # write-to-read time of the frame it read last; None: no read yet
    behind: int | None  # writes published since that frame
    read_age_s: float | None  # how long ago it read


@dataclass(frozen=True)
class TagInfo(Wire):
    """One tag as the daemon sees it (figures read from the segment header): a row of
    ``ndsharray ls``, built by the daemon and shown by the CLI as it arrived."""

    tag: str
    dtype: str | None  # numpy's name, e.g. "uint8"; None before the first write
    shape: tuple[int, ...] | None
    nbytes: int
    writer_pid: int | None  # None when no live writer holds the tag
    last_writer_pid: int | None
    readers: int
    reader_pids: tuple[int, ...]
    writes: int
    last_write_age_s: float | None
    generation: int
    segment: str | None
    slots: int
    size: int  # bytes of the segment in /dev/shm
    rate_hz: float | None = None  # writes per second over the daemon's last second
    # From the readers' rows in the segment header (each reader notes the frame it read
    # last): the worst write-to-read time of those frames, and the most writes any live
    # reader is behind now. None without readers that read.
    max_read_latency_s: float | None = None
    max_behind: int | None = None
    reader_stats: tuple[ReaderStat, ...] = ()
    writer_left: str | None = None  # how the last writer went: "closed" (close(), exit) or "died"
    writer_left_why: str | None = None  # why, when a bridge closed it (set by admin.list_tags: bridge/endings.py)
    descr: str | None = None  # the dtype exactly (dtypes.dtype_to_text), for structured ones
    dropped: int = 0  # frames the writer dropped (on_full="drop") because readers pinned every slot
    capacity: int = 0  # bytes a slot holds for a frame (frames of any shape up to it: layout 3)
    meta_capacity: int = 0  # bytes of metadata a slot holds beside its frame
    meta: str | None = None  # the latest frame's metadata: its JSON text, or "<n bytes> ..." (shortened)

    def as_json(self) -> dict[str, Any]:
        """What ``ndsharray ls --json`` prints for this tag."""
        return self.to_wire()


@dataclass(frozen=True)
class Listing(Wire):
    """``list``: every tag, sorted, and notes on tags the daemon removed by itself lately
    (a segment some process shrank: the daemon removes such a tag rather than crash)."""

    tags: tuple[TagInfo, ...]
    broken: tuple[str, ...] = ()
