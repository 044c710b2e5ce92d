"""The reader's side of the slot protocol: a read-only mapping of a segment handing out
pinned zero-copy views (the protocol and why it is enough: the package docstring)."""

from __future__ import annotations

import fcntl
import functools
import math
import operator
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from .. import _hot, process
from ..errors import CorruptSegmentError, ResourceLimitError
from ..framecopy import copy_frame
from ..layout import OFF_PUBLISH, READER_ROWS, ROW_PINS, ROW_SIZE
from .header import U64, Header
from .mapping import MappedSegment, mapping_address, row_lock

RETIRED = -3  # what SegmentReader.latest() says of a segment a newer generation replaced
_LAST_PINNED = operator.attrgetter("count", "stamp", "read_ns")


def _view_of(c: _hot.Reader, name: str, h: Header, pin: _hot.Pin) -> np.ndarray[Any, Any]:
    """SegmentReader.view_of, of what it needs only (see read_new)."""
    try:
        got = c.array_of(pin)
    except ValueError as exc:
        raise CorruptSegmentError(f"segment {name}: {exc}") from None
    if not isinstance(got, _hot.Pin):
        return got
    # a frame of the header's structured dtype and shape
    nbytes = math.prod(h.shape) * h.dtype.itemsize
    arr: np.ndarray[Any, Any] = np.ndarray((nbytes,), np.uint8, buffer=pin)  # type: ignore[arg-type]
    return arr.view(h.dtype).reshape(h.shape)


def _read_via_pin(c: _hot.Reader, name: str, h: Header, last_count: int) -> np.ndarray[Any, Any] | int | None:
    """SegmentReader.read_new where C hands frames back as Pins (structured dtypes)."""
    got = c.pin(last_count)
    if got is None or isinstance(got, int):
        return got
    return _view_of(c, name, h, got)


class SegmentReader(MappedSegment):
    """A read-only mapping of a segment, handing out pinned zero-copy views."""

    def __init__(self, name: str) -> None:
        super().__init__(name, writable=False)
        self._closing = False
        self._owner_pid = process.pid()
        h = self.header
        lay = h.layout
        try:
            self.row = self._claim_row(mapping_address(self._rw))
        except BaseException:
            self._close_fd()
            raise
        # The C side counts pins per slot; each view's base is a _hot.Pin, a read-only
        # buffer of one slot that unpins it when the last array built on it is collected.
        # It keeps both mappings alive, so a view outlives this object safely.
        # Each view is built in C from its slot's own dtype and shape; a frame of the
        # header's structured dtype comes back as its Pin, and view_of() builds it here.
        self._via_bytes = h.dtype.names is not None or h.dtype.subdtype is not None
        # copy(): only a frame filling a skewed slot is copied elsewhere than view.copy()
        # (framecopy); decided here, not per copy (that cost a 1 KiB read(copy=True) ~7 %).
        self._skewed_nbytes = lay.nbytes if lay.skew else -1
        direct: dict[str, Any] = {} if self._via_bytes else {"shape": h.shape, "dtype": h.dtype}
        self._c = _hot.Reader(base=self.base_addr, row=self.row, nslots=self.nslots,
                              data_offset=lay.data_offset, stride=lay.stride, nbytes=lay.nbytes,
                              keep=(self.mm, self._rw), meta_capacity=lay.meta_capacity, **direct)
        # read_new(last_count): the view of a newer frame, pinned, in one C call (None:
        # nothing new; an int: retired or corrupt, which pin() tells apart). Where C hands
        # frames back as Pins (a header of a structured dtype), two calls: pin, view_of.
        self.read_new: Callable[[int], Any] = self._c.read
        if self._via_bytes:  # (a partial, not a bound method: no cycle to keep the fds open)
            self.read_new = functools.partial(_read_via_pin, self._c, self.name, h)
        # last_pinned(): (count, stamp_ns, read_ns) of the frame pinned last, in C calls only.
        self.last_pinned: Callable[[], tuple[int, int, int]] = functools.partial(_LAST_PINNED, self._c)

    def _claim_row(self, rw_addr: int) -> int:
        """Lock the first free reader row and return its address: the lock lasts as long as
        our fd, so the writer can tell a dead reader's row (lock free) from a live one."""
        for r in range(READER_ROWS):
            if self._try_lock(row_lock(r, fcntl.F_WRLCK)):
                row = rw_addr + self.layout.rows_offset + ROW_SIZE * r
                _hot.claim_row(rw_addr, row, r, process.pid())
                return row
        raise ResourceLimitError(
            f"segment {self.name} has {READER_ROWS} readers already, its limit; "
            "close readers of this tag that you do not use"
        )

    def latest(self, last_count: int) -> tuple[int, int, int] | int | None:
        """Pin the latest slot if its count differs from ``last_count``.

        Returns ``(count, slot, stamp_ns)`` with the slot pinned once, None when nothing
        newer was published, or RETIRED. The caller must :meth:`unpin` or :meth:`view`
        (an exception in between leaves the pin held: prefer :meth:`pin`).
        """
        got = self._c.latest(last_count)
        if got is None or isinstance(got, tuple) or got == RETIRED:
            return got
        self._corrupt(got)

    def pin(self, last_count: int) -> _hot.Pin | int | None:
        """The latest slot, pinned, if its count differs from ``last_count``: a Pin object
        that holds the pin until it (and every view built on it) is collected; None when
        nothing newer was published; RETIRED. Pinning and handing the pin to that object
        happen in one C call, so no exception (a KeyboardInterrupt) can come between them.
        :meth:`last_pinned` then describes the frame."""
        got = self._c.pin(last_count)
        if got is None or got == RETIRED or type(got) is not int:
            return got
        self._corrupt(got)

    def _corrupt(self, got: int) -> NoReturn:
        pub = self.publish_word()
        if got == -1:
            raise CorruptSegmentError(
                f"segment {self.name}: publish word names slot {pub & 0xFF} of {self.nslots}")
        raise CorruptSegmentError(
            f"segment {self.name}: publish word names write {pub >> 8} in slot {pub & 0xFF}, "
            "but that slot holds another write")

    def has_new(self, last_count: int) -> bool:
        count = int(U64.unpack_from(self.mm, OFF_PUBLISH)[0]) >> 8
        return count != last_count and count != 0

    def wait(self, last_count: int, timeout: float, expect: int = -1) -> None:
        """Sleep until something is published after ``last_count`` (or ``timeout``), or at
        once if the notify word moved from ``expect`` (from :meth:`notify`, taken before the
        caller looked at the writer: a close or death since then is not slept through).

        Lost wake-ups are impossible: see the blocking reader in the module docstring.
        """
        if _hot.FUTEX:
            self._c.wait(last_count, timeout, expect)
        else:
            time.sleep(min(timeout, 0.001))  # no futex: poll, gently

    def notify(self) -> int:
        """The notify word now (an acquire load): see :meth:`wait`."""
        return self._c.notify

    @property
    def pinned(self) -> int:
        """Pins this reader holds (views alive, and frames being read)."""
        return self._c.pinned

    def stop_waits(self) -> None:
        """End every :meth:`wait` on this reader in other threads, now and for good."""
        self._c.stop()

    def unpin(self, i: int) -> None:
        self._c.unpin(i)

    def view(self, i: int) -> np.ndarray[Any, Any]:
        """A read-only array of pinned slot ``i`` that keeps the pin until it is collected
        (with every array derived from it: numpy keeps the buffer's exporter as base)."""
        if not self._via_bytes:
            return self._c.array(i)
        return self.view_of(self._c.view(i))

    def view_of(self, pin: _hot.Pin) -> np.ndarray[Any, Any]:
        """A read-only array of the frame ``pin`` holds, of its own dtype and shape, keeping
        the pin (as its base)."""
        return _view_of(self._c, self.name, self.header, pin)

    def copy(self, pin: _hot.Pin) -> np.ndarray[Any, Any]:
        """An owned, writable copy of the frame ``pin`` holds (placed for a fast copy when
        it fills a skewed slot: see framecopy)."""
        view = self.view_of(pin)
        return view.copy() if view.nbytes != self._skewed_nbytes else copy_frame(view)

    @property
    def meta(self) -> tuple[int, bytes] | None:
        """(kind, bytes) of the metadata of the frame pinned last, or None."""
        return self._c.meta

    @property
    def shape_gen(self) -> int:
        """The writer's count of dtype/shape changes at the frame pinned last."""
        return int(self._c.shape_gen)

    def close(self) -> None:
        """Stop using the segment; the fd (and its row) goes when the last view does."""
        if self._closing:
            return
        self._closing = True
        if self._c.pinned:
            # Views still hold pins, so the row stays ours until they go; but this reader
            # stopped reading: `ls` must not count it, nor show it falling behind.
            off = self.row - mapping_address(self._rw)
            self._rw[off + 4 : off + ROW_PINS] = bytes(ROW_PINS - 4)
            self._c.on_idle = self._close_fd
        else:
            self._close_fd()

    def _close_fd(self) -> None:
        if getattr(self, "row", None) is not None and self.fd >= 0 and process.pid() == self._owner_pid:
            # A closing reader leaves its row clean (a crashed one leaves it for the
            # writer's reclaim); the row's lock goes with the fd, and another reader may
            # take the row at once: our C side must not touch it any more.
            _hot.clear_row(self.row)
            c = getattr(self, "_c", None)
            if c is not None:
                c.detach()
        super()._close_fd()

    _owner_pid = process.pid()
