"""``NdShArray``, the facade: what a writer and a reader share, and which one you get.

``NdShArray(tag, array=None, r_w=...)`` returns a :class:`~ndsharray.writer.Writer`
(``r_w='w'``) or a :class:`~ndsharray.reader.Reader` (``r_w='r'``); both are
``NdShArray`` instances, so ndsharray 1.x code keeps working. This module holds their
common state (tag, endpoint, daemon connection, registration token), the properties of
the 1.x API, the lifetime (``close()``, context manager, collection) and the argument
checks; each role's module holds its own state and its one hot path.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, TypeVar, overload

import numpy as np

from . import config, process, transport
from .arguments import role_of
from .errors import HandleClosedError, TagBusyError, UsageError
from .holders import creation_site
from .protocol import Op, check_tag
from .replies import Claimed, SegmentInfo
from .segment.header import MAX_SLOTS

if TYPE_CHECKING:
    from .reader import Reader
    from .segment.mapping import MappedSegment
    from .writer import Writer

_live: weakref.WeakSet[NdShArray] = weakref.WeakSet()


_Handle = TypeVar("_Handle", bound="NdShArray")

class NdShArray:
    """A writer (``r_w='w'``) or reader (``r_w='r'``) of the array shared under ``tag``.

    Writer: ``NdShArray(tag, array, 'w')`` writes ``array`` at once when it is non-empty;
    ``write(a)`` publishes ``a`` (same shape and dtype: one copy, no daemon call; otherwise a
    new segment generation that readers follow by themselves). Only one writer per tag.

    Reader: ``status, array = NdShArray(tag, r_w='r').read()``. ``status`` is True when a
    complete write arrived since this handle's previous read; otherwise ``(False, <the
    array returned last time>)``, or an empty array if nothing was ever written. ``array``
    is a read-only view straight into shared memory; its contents never change for as long
    as you hold it (or any view derived from it), because the writer will not reuse a slot
    that a reader still references. ``read(copy=True)`` returns an owned copy instead.

    ``slots`` is the initial ring size (None: 3, or 2 for arrays over 64 MiB, see
    :mod:`ndsharray.ring`); the writer grows the ring (up to ``max_slots``) when readers
    keep old views alive, and raises :class:`WriterStalledError` after ``write_timeout``
    seconds if even that is not enough.

    The object is a :class:`~ndsharray.writer.Writer` or a
    :class:`~ndsharray.reader.Reader`, by ``r_w``.
    """

    _roles: ClassVar[dict[str, type[NdShArray]]] = {}
    _role: ClassVar[str] = ""  # 'w' or 'r': set by each role's class
    _ops: ClassVar[tuple[Op[Claimed], str]]  # its daemon requests to register, to leave
    _closed = True
    _ended = False  # close() ran (_closed is also True before the handle is open)
    _direct: Any = None  # the role's one-call hot path while nothing changed (see the role)
    _seg: MappedSegment | None = None  # the current segment
    _valid = False
    _stamp = 0  # reader: when the last array read was written (time.monotonic_ns() clock)
    _read_ns = 0  # reader: when it was read

    def __init_subclass__(cls, role: str = "", ops: tuple[Op[Claimed], str] | None = None,
                          **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if role and ops is not None:
            cls._role = role
            cls._ops = ops
            NdShArray._roles[role] = cls

    @overload
    def __new__(cls, tag: str, array: None, r_w: Literal["r", "R"], *, endpoint: str | None = ...,
                slots: int | None = ..., max_slots: int = ..., write_timeout: float = ...) -> Reader: ...
    @overload
    def __new__(cls, tag: str, *, r_w: Literal["r", "R"], endpoint: str | None = ...,
                slots: int | None = ..., max_slots: int = ..., write_timeout: float = ...) -> Reader: ...
    @overload
    def __new__(cls, tag: str, array: np.ndarray[Any, Any] | None, r_w: Literal["w", "W"], *,
                endpoint: str | None = ..., slots: int | None = ..., max_slots: int = ...,
                write_timeout: float = ..., meta_capacity: int = ...,
                on_full: Literal["grow", "drop", "block"] = ...) -> Writer: ...
    @overload
    def __new__(cls, tag: str, array: np.ndarray[Any, Any] | None = ..., *, r_w: Literal["w", "W"],
                endpoint: str | None = ..., slots: int | None = ..., max_slots: int = ...,
                write_timeout: float = ..., meta_capacity: int = ...,
                on_full: Literal["grow", "drop", "block"] = ...) -> Writer: ...
    @overload
    def __new__(cls, tag: str, array: np.ndarray[Any, Any] | None = ..., r_w: str | None = ..., *,
                endpoint: str | None = ..., slots: int | None = ..., max_slots: int = ...,
                write_timeout: float = ..., meta_capacity: int = ...,
                on_full: Literal["grow", "drop", "block"] = ...) -> NdShArray: ...

    def __new__(cls, tag: str, array: Any = None, r_w: str | None = None, **kw: Any) -> NdShArray:
        if cls._role:  # Writer(...), Reader(...)
            return object.__new__(cls)
        role = NdShArray._roles[role_of(tag, array, r_w)]
        # A subclass of the facade (1.x code may have one) gets the role's class too.
        return object.__new__(role if cls is NdShArray else _with_role(cls, role))

    # (No __init__ here: each role has its own, and mypy then takes the type a call of
    # NdShArray(...) returns from the overloads above.)

    def _init_common(self, tag: str, array: object, r_w: str | None, endpoint: str | None,
                     slots: int | None, max_slots: int) -> None:
        """The checks and the state both roles' constructors start with."""
        if r_w is not None and role_of(tag, array, r_w) != self._role:  # (Writer(tag) needs none)
            raise UsageError(f"{type(self).__name__} takes r_w={self._role!r}, got {r_w!r}")
        if (slots is not None and not 2 <= slots <= MAX_SLOTS) or not (slots or 2) <= max_slots <= MAX_SLOTS:
            raise UsageError(f"need 2 <= slots <= max_slots <= {MAX_SLOTS}, got {slots}, {max_slots}")
        if array is not None and self._role != "w":
            raise UsageError("array= is only for writers (r_w='w'); a reader gets arrays from read()")
        self._tag = check_tag(tag)
        self._endpoint = config.resolve_endpoint(endpoint)
        self._site = creation_site()  # where the user's code made it, for a TagBusyError
        self._stale = False  # set when a restarted daemon no longer knows our segment
        # Makes close() and a switch to a new segment one step each for other threads
        # (review of defect 1): see Writer._install. Reentrant: a signal handler of this
        # thread may close the handle while this thread is inside.
        self._swap = threading.RLock()

    def _register(self) -> None:
        """A fresh identity towards the daemon (at open, and again after a fork)."""
        self._pid = process.pid()
        self._token = secrets.token_hex(8)
        self._conn = transport.connection(self._endpoint)

    def _reregister(self) -> None:
        """After a daemon restart (the registrar calls it): tell the new daemon who we are."""
        if self._closed or self._pid != process.pid():
            return
        register, leave = self._ops
        try:
            info = self._conn.request(register, tag=self._tag, pid=self._pid, token=self._token).segment
            if self._closed:
                # close() ran meanwhile (it does not wait for the registrar): its release may
                # have reached the daemon before this claim, so send another after it.
                self._conn.post(leave, tag=self._tag, token=self._token)
                return
        except TagBusyError:
            # Another writer claimed the tag while the daemon was away: our next write asks
            # for a generation and gets TagRemovedError saying it was taken over.
            self._stale = True
            self._direct = None
            return
        seg = self._seg
        if seg is None:
            self._offer(info)
        elif info is None or info.name != seg.name:
            # The new daemon does not know our segment. A writer makes a new generation on
            # its next write (readers attaching now find the tag again); a reader asks the
            # daemon on its next read instead of waiting on a segment nobody writes.
            self._stale = True
            self._direct = None

    def _offer(self, segment: SegmentInfo | None) -> None:
        """What the new daemon offers a handle that has no segment yet (a writer's hook)."""

    # ---- properties of the original API ---------------------------------------------

    @property
    def name(self) -> str:
        """The tag."""
        return self._tag

    @property
    def tag(self) -> str:
        """The tag (also ``name``, as in ndsharray 1.x)."""
        return self._tag

    @property
    def access(self) -> str:
        """'r' or 'w'."""
        return self._role

    @property
    def endpoint(self) -> str:
        """The daemon endpoint this handle registered with."""
        return self._endpoint

    @property
    def ndarray_mmap_name(self) -> str | None:
        """Name of the current shared-memory segment (changes with shape or dtype)."""
        seg = self._seg
        return None if seg is None else seg.name

    @property
    def write_count(self) -> int:
        """Reader: the writer's count of the last array read (a gap between two reads is the
        number of writes this reader skipped). Writer: the count of its last write. Counts
        belong to a segment: a new generation (shape or dtype change, ring growth, a daemon
        restart) starts again at 1, and a writer taking over a segment continues its count."""
        raise NotImplementedError

    @property
    def read_time_ms(self) -> float:
        """Reader: milliseconds from the last read array's ``write()`` to its ``read()``."""
        return (self._read_ns - self._stamp) / 1e6 if self._stamp else 0.0

    @property
    def write_time_ns(self) -> int:
        """Reader: when the last array read was written (``time.monotonic_ns()`` clock)."""
        return self._stamp

    @property
    def is_valid(self) -> bool:
        """True once this handle has written, or read, at least one array."""
        return self._valid

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the current segment's arrays; None before there is one."""
        seg = self._seg
        return None if seg is None else seg.header.shape

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """Dtype of the current segment's arrays; None before there is one."""
        seg = self._seg
        return None if seg is None else seg.header.dtype

    @property
    def generation(self) -> int | None:
        """The tag's generation this handle is on (``GEN`` in ``ndsharray ls``). A new
        segment (shape or dtype change, ring growth) gets the next one, so a change of it
        explains a ``write_count`` that starts again. None before there is a segment."""
        seg = self._seg
        return None if seg is None else seg.header.generation

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    # ---- the other role's methods: a clear error, as in 1.x -------------------------

    def write(self, array: Any, meta: dict[str, Any] | bytes | None = None) -> bool:
        """Publish a copy of ``array`` (writers only: see :meth:`Writer.write`)."""
        self._wrong_role("w", "write")

    def loan(self, shape: tuple[int, ...] | None = None, dtype: Any = None,
             meta: dict[str, Any] | bytes | None = None) -> AbstractContextManager[np.ndarray[Any, Any]]:
        """Lend a free slot as a writable array (writers only: see :meth:`Writer.loan`)."""
        self._wrong_role("w", "loan")

    def read(self, copy: bool = False, timeout: float | None = 0.0) -> tuple[bool, np.ndarray[Any, Any]]:
        """The newest array (readers only: see :meth:`Reader.read`)."""
        self._wrong_role("r", "read")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a new write (readers only: see :meth:`Reader.wait`)."""
        self._wrong_role("r", "read")

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        self._wrong_role("r", "read")

    def frames(self, until_closed: bool = False, timeout: float | None = None,
               copy: bool = False) -> Iterator[np.ndarray[Any, Any]]:
        self._wrong_role("r", "frames")

    async def aread(self, timeout: float | None = None, copy: bool = False) -> tuple[bool, np.ndarray[Any, Any]]:
        self._wrong_role("r", "aread")

    def aframes(self, until_closed: bool = False, timeout: float | None = None,
                copy: bool = False) -> AsyncIterator[np.ndarray[Any, Any]]:
        self._wrong_role("r", "aframes")

    def _wrong_role(self, role: str, method: str) -> NoReturn:
        if self._closed:
            raise HandleClosedError(f"NdShArray {self._tag!r} is closed")
        raise UsageError(
            f"NdShArray {self._tag!r} was opened with r_w={self._role!r}; "
            f"{method}() needs r_w={role!r}"
        )

    # ---- lifetime ---------------------------------------------------------------------

    def _check(self) -> None:
        """Before a general (not one-call) read or write: open, and in the process that
        opened it (a forked child starts afresh, or is refused)."""
        if self._closed:
            raise HandleClosedError(f"NdShArray {self._tag!r} is closed")
        if self._pid != process.pid():
            self._after_fork()

    def _after_fork(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the tag (writer) or stop reading (reader). Idempotent.

        Arrays already returned by ``read()`` stay valid until they are dropped.
        """
        self._close(in_gc=False)

    def _close(self, in_gc: bool) -> None:
        raise NotImplementedError

    def _close_in_child(self) -> bool:
        """close() in a forked child of the opener: only mark it closed. The parent's
        registration and locks are not ours to release (nor its _swap: a thread of the
        parent may have held it at the fork)."""
        if self._closed:
            return True
        if self._pid == process.pid():
            return False
        self._closed = self._ended = True
        self._direct = None
        return True

    def __enter__(self: _Handle) -> _Handle:  # (a Writer stays a Writer in a with block)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close(in_gc=True)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writer" if self._role == "w" else "reader")
        seg = self._seg
        what = "no data yet" if seg is None else f"{seg.header.dtype} {seg.header.shape}"
        return f"<NdShArray {getattr(self, '_tag', '?')!r} {state}, {what}>"


_combined: dict[tuple[type[NdShArray], type[NdShArray]], type[NdShArray]] = {}


def _with_role(cls: type[NdShArray], role: type[NdShArray]) -> type[NdShArray]:
    """``cls``, a subclass of NdShArray without a role, combined with ``role``'s class."""
    made = _combined.get((cls, role))
    if made is None:
        made = _combined[cls, role] = type(cls.__name__, (cls, role), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return made


def _after_fork_in_child() -> None:
    # A handle belongs to the process that opened it: a forked child's calls must take the
    # general path, which refuses a writer and reopens a reader.
    for handle in list(_live):
        handle._direct = None
        handle._swap = threading.RLock()  # a parent's thread may have held it at the fork


process.on_fork("handles", _after_fork_in_child)


def close_all() -> None:
    """Close every open NdShArray of this process (as interpreter exit does): a notebook's
    way out of handles it no longer has names for."""
    for handle in list(_live):
        try:
            handle.close()
        except Exception:
            pass


process.on_exit("handles", close_all)
