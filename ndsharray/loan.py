"""``Writer.loan()``: lend a free slot of the tag's segment as a writable array, to fill in
place (``np.add(a, b, out=buf)``: no extra copy), published when the block ends.

A part of :class:`~ndsharray.writer.Writer` (a mixin, as :class:`~ndsharray.onfull.FullRing`
is): the lent slot belongs to the current segment, so while a block is open nothing may
replace that segment (``_no_loan_open``), the ring does not grow and the slot is never
dropped (see onfull.py); the block may end in another thread, or in the collector.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from . import framemeta
from .errors import UsageError
from .segment.writer import SegmentWriter, acquisitions

if TYPE_CHECKING:
    from .release import TagRelease


class Lending:
    """The writer's loan() (a part of Writer)."""

    _loaned = False  # inside a loan() block
    _loan_thread: int | None = None  # the thread that opened it
    _lending = False  # loan() is taking its slot
    _tag: str
    _seg: SegmentWriter | None
    _meta_capacity: int
    _release: TagRelease
    _valid: bool

    if TYPE_CHECKING:  # (the Writer's and the handle's, at run time)
        def _check(self) -> None: ...

        def _segment_for(self, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int,
                         what: str) -> SegmentWriter: ...

        def _acquire(self, seg: SegmentWriter) -> tuple[SegmentWriter, int]: ...

    @contextmanager
    def loan(self, shape: tuple[int, ...] | None = None, dtype: Any = None,
             meta: dict[str, Any] | bytes | None = None) -> Iterator[np.ndarray[Any, Any]]:
        """Lend a free slot as a writable array; leaving the block publishes it (with ``meta``).

        ``with w.loan() as buf: np.add(a, b, out=buf)`` fills shared memory directly (no
        extra copy). The slot holds an older frame: overwrite all of it. Without arguments
        the last write's shape and dtype are kept; ones that do not fit the slots start a
        new generation. An exception inside the block publishes nothing. The array becomes
        read-only when the block ends: keep no reference to it."""
        self._check()
        self._no_loan_open("open a second loan()")
        data, kind = (None, 0) if meta is None else framemeta.encode(meta, self._meta_capacity)
        last = None if self._seg is None else framemeta.last_frame(self._seg)
        want_shape = tuple(shape) if shape is not None else (last[1] if last else None)
        want_dtype = np.dtype(dtype) if dtype is not None else (last[0] if last else None)
        if want_shape is None or want_dtype is None:
            raise UsageError("the first loan() of a writer needs shape= and dtype=")
        seg = self._segment_for(want_dtype, want_shape, math.prod(want_shape) * want_dtype.itemsize,
                                "change shape or dtype")
        mark = acquisitions()
        try:  # (see TagRelease.abandon)
            self._lending = True  # (must lend a slot: never dropped, see onfull.py)
            try:
                seg, i = self._acquire(seg)
            finally:
                self._lending = False
            buf = seg.slot_array(i, want_dtype, want_shape)
            self._loaned = True
            self._loan_thread = threading.get_ident()
        except BaseException:
            self._loaned = False
            self._loan_thread = None
            self._release.abandon(mark)
            raise
        try:
            yield buf
        except BaseException:
            # The lent slot, unpublished: by its index, since the block may end in another
            # thread (abandon() knows only this thread's slots), or in the collector.
            self._release.give_back(seg, i)
            raise
        finally:
            self._loaned = False
            self._loan_thread = None
            buf.flags.writeable = False
        try:
            seg.fast.describe(i, buf, data, kind)
            count = seg.fast.publish(i)
        except BaseException:
            self._release.abandon(mark)
            raise
        if not count:  # close() ran meanwhile (the block's writes are not shown)
            self._release.overtaken(seg.fast)
        self._valid = True

    def _no_loan_open(self, what: str) -> None:
        """The lent slot belongs to the current segment: nothing may replace it meanwhile."""
        if self._loaned:
            raise UsageError(
                f"cannot {what} of {self._tag!r} inside a loan() block; leave the block first")
