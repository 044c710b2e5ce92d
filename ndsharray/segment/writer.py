"""The writer's side of the slot protocol: a writable mapping of a segment, the single
writer's acquire / publish / retire, and giving back what an interrupted write held."""

from __future__ import annotations

import fcntl
import os
import time
from typing import Any

import numpy as np

from .. import _hot, prefault, process
from ..errors import HandleClosedError
from ..layout import OFF_CLOSED_PID, OFF_DROPPED, OFF_WRITER_KEY, OFF_WRITER_PID
from .header import KEY_BYTES, NO_KEY, RETIRED_SUPERSEDED, U32, U64, WAKE_ONLY, writer_key
from .mapping import F_OFD_SETLK, MappedSegment, open_segments, retire, row_lock
from .slot_entry import frame_in_slot, slot_dtype_text

REMOVED = -2  # what the C writer's acquire() says once the tag was removed
CLOSED = -3  # what the C writer's acquire() says once it is closed

acquisitions = _hot.mark  # the acquisition epoch: abandon(acquisitions(), token) after a failure


def abandon(mark: int, token: str) -> list[Any]:
    """Give back the slots this thread acquired since ``mark`` from the segments of the
    writer ``token`` and still holds; returns every C writer of that token, so the caller
    can ask each whether the tag is now its to hand back (an interrupt may also land after
    a stopped publish() gave its slot back itself, with nothing left to abandon)."""
    key = writer_key(token)
    out = []
    for m in list(open_segments):
        # (getattr: a SegmentWriter whose __init__ failed half-way has no key or writer)
        fast = getattr(m, "fast", None)
        if isinstance(m, SegmentWriter) and getattr(m, "_key", None) == key and fast is not None:
            fast.abandon(mark)
            out.append(fast)
    return out


class SegmentWriter(MappedSegment):
    """A writable mapping of a segment; the single writer's side of the protocol.

    ``variable``: the C fast path takes any frame that fits the slots' capacity and whose
    dtype and ndim a slot's entry can describe; otherwise only frames of the header's
    dtype and shape (ndsharray before layout 3)."""

    def __init__(self, name: str, token: str | None = None, variable: bool = False) -> None:
        super().__init__(name, writable=True)
        h = self.header
        self.dtype, self.shape = h.dtype, h.shape  # read on every write
        self.slots = [
            np.ndarray(h.shape, h.dtype, buffer=self.mm, offset=h.layout.slot_offset(i))
            for i in range(self.nslots)
        ]
        # numpy keeps the mmap as these arrays' base but holds no export of it, so close()'s
        # mm.close() would unmap the memory under an array still alive (a loan() array kept
        # past its block: SIGSEGV at its next access). This export makes mm.close() refuse;
        # the mapping then goes when the mmap object does, after the last array of it.
        self._keep_mapped = memoryview(self.mm)
        # A restarted daemon reads the live writer's pid and key here to decide what to keep
        # and whom to grant the tag (the key first: a pid without it would be a writer
        # nobody could re-register as).
        self._key = NO_KEY if token is None else writer_key(token)
        self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] = self._key
        U32.pack_into(self.mm, OFF_WRITER_PID, process.pid())
        pub = self.publish_word()
        count = pub >> 8  # a writer taking over a tag continues its count: readers see new frames
        lay = h.layout
        latest = pub & 0xFF
        # The C writer holds a buffer export of the mapping: it cannot be unmapped while
        # any thread still writes through it (close() lets it go after the last write).
        latest = latest if count and latest < self.nslots else -1
        shape_gen = 0
        if latest >= 0:  # a writer taking over continues the shape generations too
            try:
                shape_gen = frame_in_slot(self.mm, h, latest)[3]
            except ValueError:
                pass
        self.fast = _hot.Writer(
            mapping=self.mm, rows_offset=lay.rows_offset, nslots=self.nslots, nbytes=lay.nbytes,
            data_offset=lay.data_offset, stride=lay.stride, shape=h.shape,
            text=slot_dtype_text(h.dtype), count=count, latest=latest,
            meta_capacity=lay.meta_capacity, variable=variable, shape_gen=shape_gen,
        )
        # Our first write into each slot would fault page by page (see prefault.py).
        prefault.prefault_slots(self.mm, [lay.slot_offset(i) for i in prefault.slot_order(
            self.nslots, self.fast.latest)], lay.nbytes)

    def slot_array(self, i: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """A writable array of ``dtype`` and ``shape`` at the start of slot ``i`` (the
        caller checked that it fits the capacity)."""
        return np.ndarray(shape, dtype, buffer=self.mm, offset=self.layout.slot_offset(i))

    def try_acquire(self) -> int:
        """A slot that is neither the latest nor pinned, its count zeroed; -1 if none is free,
        REMOVED if the tag was removed. Raises HandleClosedError once the writer was closed
        (by another thread)."""
        i = self.fast.acquire()
        if i == CLOSED:
            raise HandleClosedError(
                f"the writer of {self.header.tag!r} was closed, or its segment replaced, by another "
                "thread while this write waited for a free slot")
        return i

    def reclaim_rows(self) -> int:
        """Clear the rows of readers that died holding pins; returns how many.

        Another thread may close this writer meanwhile (fcntl lets it run; review defect
        7): the locks are taken through a duplicate of our fd, so close() cannot close the
        file description (and drop a lock we rely on) under us, nor can its fd number be
        reused by another file while we lock; and the row is cleared by the C writer,
        which refuses once the writer is closed, so never through an unmapped mapping.
        The duplicate is made under ``_fd_lock``, which close() holds to close the fd: so
        it is of our segment's file, never of a file that reused the number (review item 3).
        """
        rows = self.fast.dirty_rows()  # ([] once closed)
        if not rows:
            return 0
        try:
            with self._fd_lock:
                fd = os.dup(self.fd)  # (-1 once closed: EBADF)
        except OSError:
            return 0  # closed by another thread
        freed = 0
        try:
            for r in rows:
                try:
                    fcntl.fcntl(fd, F_OFD_SETLK, row_lock(r, fcntl.F_WRLCK))
                except (BlockingIOError, PermissionError):
                    continue  # its reader lives
                if not self.fast.clear_row(r):
                    # Closed meanwhile: stop. Our lock goes with the description when fd
                    # closes (if self.fd was closed and its number reused before our dup,
                    # fd is another file's, and unlocking could drop a lock of its own).
                    return freed
                fcntl.fcntl(fd, F_OFD_SETLK, row_lock(r, fcntl.F_UNLCK))
                freed += 1
        finally:
            os.close(fd)
        return freed

    def set_dropped(self, n: int) -> None:
        """Record that ``n`` frames of the tag were dropped so far (for ls and info)."""
        if not self.closed:
            U64.pack_into(self.mm, OFF_DROPPED, n)

    def release(self, i: int) -> None:
        """Give back an acquired slot without publishing it (its count stays 0)."""
        self.fast.release(i)

    def publish(self, i: int) -> int:
        """Publish acquired slot ``i`` as the latest write; returns the write count."""
        return self.fast.publish(i)

    def retire(self) -> None:
        """Tell readers a newer generation replaced this segment, and wake blocked ones."""
        retire(self.mm, RETIRED_SUPERSEDED)

    def close(self, drain: float | None = None) -> None:
        """Stop writing. ``drain=None``: a newer generation replaced this segment; a write
        still in flight in another thread publishes here, harmlessly. Otherwise the handle
        closes and the tag will go back to the daemon: writes in flight publish nothing,
        and this waits up to ``drain`` seconds (without the GIL) for their copies to end;
        ``fast.hand_over(True)`` then says whether they did (see _hot.c, stop())."""
        if self.closed:
            return
        try:
            if drain is None:
                self.fast.close()
            else:
                self.fast.stop()
                deadline = time.monotonic() + drain
                pause = 0.0001
                while self.fast.busy and time.monotonic() < deadline:
                    time.sleep(pause)  # lets the copying threads take the GIL and finish
                    pause = min(pause * 2, 0.005)
        finally:
            # Also when a KeyboardInterrupt ends the wait (review item 2): the writes in
            # flight keep the mapping (they hold the C writer's export), not the fd.
            self._forget()

    def _forget(self) -> None:
        """The end of close(): clear our pid and key, close the fd and the mapping."""
        # A restarted daemon must not adopt this segment for a writer that has gone.
        if (U32.unpack_from(self.mm, OFF_WRITER_PID)[0] == process.pid()
                and self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] == self._key):
            U32.pack_into(self.mm, OFF_CLOSED_PID, process.pid())  # (who: for ls after a restart)
            U32.pack_into(self.mm, OFF_WRITER_PID, 0)
            self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] = NO_KEY
            # End of stream: wake blocked readers, who then find the writer closed.
            retire(self.mm, WAKE_ONLY)
        self._close_fd()
        # self.slots stays: a thread between acquiring a slot and copying into it still
        # indexes it. The mapping goes with the last of them (and of loaned arrays).
        try:
            self.mm.close()
        except BufferError:
            pass  # exported by the slot arrays (or a loan, or a write in flight): unmapped with them
