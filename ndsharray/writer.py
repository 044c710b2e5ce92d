"""``Writer``: the one writer of a tag (``NdShArray(tag, array, r_w='w')``).

A write copies the array into a free slot of the tag's segment and publishes it: one C call
(``_direct``), no daemon call, for any frame that fits the slots (layout 3: each slot has its
frame's dtype, shape and ``meta=``; see framemeta.py); a larger frame, or a ring that must
grow, asks the daemon for a new generation, which readers follow by themselves.
``loan()`` lends a free slot to fill in place (loan.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, NoReturn

import numpy as np

from . import framemeta, process
from .arguments import check_array
from .errors import (
    ErrorCode,
    HandleClosedError,
    TagBusyError,
    TagRemovedError,
    UsageError,
)
from .generations import open_generation, slots_for
from .handle import NdShArray, _live
from .holders import busy_in_this_process
from .loan import Lending
from .onfull import Dropped, FullRing, check_on_full
from .protocol import CLAIM
from .registrar import registrar
from .release import TagRelease
from .replies import SegmentInfo
from .segment.writer import CLOSED, REMOVED, SegmentWriter, acquisitions

log = logging.getLogger("ndsharray")

# Longest close() waits for writes still copying in other threads before it hands the tag
# back; past it, the last of those writes hands it back when its copy ends.
CLOSE_DRAIN = 1.0


class Writer(FullRing, Lending, NdShArray, role="w", ops=(CLAIM, "release")):
    """The writer of a tag: see :class:`NdShArray`, :meth:`write` and :meth:`loan` (loan.py)."""

    # The current segment's C writer while writes may go straight to it: same handle, same
    # process, segment not replaced. None sends write() through the checks of its general path.
    _direct: Any = None
    _seg: SegmentWriter | None = None
    _written = 0  # its count when it closed

    def __init__(
        self,
        tag: str,
        array: np.ndarray[Any, Any] | None = None,
        r_w: str | None = None,
        *,
        endpoint: str | None = None,
        slots: int | None = None,
        max_slots: int = 32,
        write_timeout: float = 2.0,
        meta_capacity: int = framemeta.DEFAULT_META_CAPACITY,
        on_full: str = "grow",
    ) -> None:
        self._on_full = check_on_full(on_full)  # (see onfull.py)
        self._init_common(tag, array, r_w, endpoint, slots, max_slots)
        self._meta_capacity = framemeta.check_meta_capacity(meta_capacity)
        if array is not None:
            array = check_array(array, "NdShArray(array=...)")
        self._slots = slots  # None: by the array's size (ring.initial_slots)
        self._max_slots = max_slots
        self._write_timeout = write_timeout
        self._dropped = 0  # frames dropped (on_full="drop"); the segment header shows it to ls
        self._offered: SegmentInfo | None = None  # a dead writer's segment we may continue in
        self._shrink_window_ns = framemeta.shrink_window_ns()  # (see framemeta.ENV_SHRINK_WINDOW)
        self._claim()
        _live.add(self)
        if array is not None and array.size:
            self.write(array)

    def _claim(self) -> None:
        self._register()
        try:
            res = self._conn.request(CLAIM, tag=self._tag, pid=self._pid, token=self._token)
        except TagBusyError as exc:
            mine = busy_in_this_process(self._tag, self._endpoint, _live)
            if mine is not None:
                raise mine from exc
            raise
        self._closed = False
        self._release = TagRelease(self._conn, self._tag, self._token)
        self._offered = res.segment
        registrar.track(self, Writer._reregister)

    def _offer(self, segment: SegmentInfo | None) -> None:
        self._offered = segment  # what the new daemon offers (an orphan it recovered, or none)

    @property
    def write_count(self) -> int:
        seg = self._seg
        return self._written if seg is None else int(seg.fast.count)

    @property
    def ndarray_mmap_name(self) -> str | None:
        """Name of the current segment, with ``:<n>`` once the frames' shape or dtype
        changed ``n`` times in it (as in 1.x it changes with every change of them)."""
        return None if self._seg is None else framemeta.mmap_name(self._seg.name, self._seg.fast.shape_gen)

    shape = property(lambda self: self._seg and framemeta.last_frame(self._seg)[1], doc="The last frame's shape.")
    dtype = property(lambda self: self._seg and framemeta.last_frame(self._seg)[0], doc="The last frame's dtype.")
    on_full = property(lambda self: self._on_full, doc="When readers pin every slot: grow, drop or block.")

    # ---- writing ----------------------------------------------------------------------

    def write(self, array: Any, meta: dict[str, Any] | bytes | None = None) -> bool:
        """Publish a copy of ``array`` as the tag's latest value, with ``meta`` (a JSON-
        serialisable dict, or bytes: ``reader.meta`` gets exactly this frame's); True when it
        did, False only under ``on_full="drop"``. Any layout works; any shape and dtype that
        fit the slots cost what a same-shape write costs; a larger frame makes a new
        generation with headroom. Any object numpy views without a copy works too (a buffer,
        ``__array_interface__``, a CPU ``__dlpack__`` tensor). ``TypeError`` for dtypes
        holding Python objects and for lists, str or None, ``ValueError`` for a ``meta``
        larger than ``meta_capacity``."""
        direct = self._direct
        if direct is not None:
            # A C-contiguous frame that fits: one C call acquires, copies, describes, publishes.
            # It takes plain ndarrays only (0 for anything else): another object is viewed
            # as one first (foreign.py), then takes the same call. (The type check before
            # the call instead cost ~40 ns of a 1 KiB write's ~188.)
            count = direct.write(array) if meta is None else 0
            if not count and (meta is not None or type(array) is not np.ndarray):
                array = array if type(array) is np.ndarray else check_array(array)
                count = direct.write(array) if meta is None else direct.write(
                    array, *framemeta.encode(meta, self._meta_capacity))
            if count > 0:
                self._valid = True
                return True
            self._unwritten(direct, count)
        return self._write_at(array, meta, 0)

    def _write_stamped(self, array: np.ndarray[Any, Any], meta: dict[str, Any] | bytes | None, stamp_ns: int) -> bool:
        """write() with this write time (monotonic ns, not 0): a bridge's importer gives the
        source writer's (bridge/clocks.py). One C call when the frame fits, as write()."""
        direct = self._direct
        if direct is not None and type(array) is np.ndarray:
            data, kind = (None, 0) if meta is None else framemeta.encode(meta, self._meta_capacity)
            count = direct.write(array, data, kind, stamp_ns)
            if count > 0:
                self._valid = True
                return True
            self._unwritten(direct, count)
        return self._write_at(array, meta, stamp_ns)

    def _unwritten(self, direct: Any, count: int) -> None:
        """The C write published nothing (``count`` <= 0): the tag was removed (raises),
        or the handle's close() overtook it; else the general path takes the frame."""
        if count == REMOVED:
            self._removed()
        if count == CLOSED:
            self._release.overtaken(direct)

    def _write_at(self, array: Any, meta: dict[str, Any] | bytes | None, stamp_ns: int) -> bool:
        """write()'s general path; ``stamp_ns`` (monotonic ns, 0: now) is the write time
        readers see. A bridge's importer gives the source writer's (bridge/clocks.py)."""
        if self._closed or self._pid != process.pid():
            self._check()  # raises
        arr = array if type(array) is np.ndarray else check_array(array)
        data, kind = (None, 0) if meta is None else framemeta.encode(meta, self._meta_capacity)
        seg = self._segment_for(arr.dtype, arr.shape, arr.nbytes, "change shape or dtype")
        mark = acquisitions()
        try:  # (the acquire too: see TagRelease.abandon)
            seg, i = self._acquire(seg)
            dst = seg.slot_array(i, arr.dtype, arr.shape)
            np.copyto(dst, arr, casting="no")  # (without the GIL when large)
            seg.fast.describe(i, dst, data, kind)
            count = seg.fast.publish_at(i, stamp_ns) if stamp_ns else seg.fast.publish(i)
        except Dropped:
            self._dropped += 1
            seg.set_dropped(self._dropped)
            return False
        except BaseException:
            self._release.abandon(mark)
            raise
        if not count:
            self._release.overtaken(seg.fast)
        self._valid = True
        return True

    def _segment_for(self, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int, what: str) -> SegmentWriter:
        """The segment a frame goes into: the current one if it fits, else a new generation
        (see framemeta.capacity_for)."""
        seg = self._seg
        if seg is not None and not self._stale and framemeta.fits(seg, dtype, shape, nbytes, self._meta_capacity):
            return seg
        self._no_loan_open(what)
        capacity = framemeta.capacity_for(seg, dtype, shape, nbytes)
        return self._new_generation(dtype, shape, slots_for(capacity, self._slots, self._max_slots), capacity)

    def _acquire(self, seg: SegmentWriter) -> tuple[SegmentWriter, int]:
        """Lock a free slot of ``seg`` (or of a grown ring) for the next write (Dropped: a
        write under on_full="drop" found every slot pinned past the short grace)."""
        i = self._try_acquire(seg)
        if i < 0:
            return self._acquire_slow(seg)
        return seg, i

    def _try_acquire(self, seg: SegmentWriter) -> int:
        """A free slot of ``seg`` or -1. (Asks the C writer whether the tag was removed: a
        close() in another thread may have unmapped ``seg`` since this thread got it.)"""
        i = seg.try_acquire()
        if i == REMOVED:
            self._removed()
        return i

    def _removed(self) -> NoReturn:
        raise TagRemovedError(ErrorCode.NOT_WRITER,
            f"tag {self._tag!r} was removed (ndsharray rm, or by the daemon when another "
            "process broke its segment: see ndsharray ls) while this process wrote it; "
            "close this writer and open a new NdShArray to publish again"
        )

    def _new_generation(self, dtype: np.dtype[Any], shape: tuple[int, ...], slots: int,
                        capacity: int | None = None) -> SegmentWriter:
        """Switch to a new segment for frames of ``dtype`` and ``shape`` (up to ``capacity``
        bytes): see :mod:`ndsharray.generations`."""
        offer, self._offered = self._offered, None
        seg = open_generation(self._conn, tag=self._tag, pid=self._pid, token=self._token, offer=offer,
                              dtype=dtype, shape=shape, slots=slots, meta_capacity=self._meta_capacity,
                              capacity=capacity)
        self._stale = False
        seg.fast.shrink_window_ns = self._shrink_window_ns
        seg.set_dropped(self._dropped)  # (carried over: ls counts the tag's drops, not a generation's)
        old = self._install(seg)
        if old is not None:
            old.retire()  # the daemon does too, unless it lost track of it in a restart
            old.close()
        return seg

    def _install(self, seg: SegmentWriter) -> SegmentWriter | None:
        """Make ``seg`` the segment writes go to; returns the one it replaces.

        Under ``_swap``, as close() takes the segment and marks the handle ended: checking
        ``_ended`` and installing ``seg`` must be one step for other threads. Were they two,
        a close() between them would take the old segment, hand the tag back and return,
        and this handle would go on publishing into ``seg``, which a successor writer then
        takes over (defect 1 again). With the lock, close() either came first (we see
        ``_ended``, and ``seg``, which no other thread has seen, is closed here: its fd and
        writer pid go with it) or comes after (it takes ``seg`` and stops it).

        A signal handler of this very thread that closes the handle could still run inside
        (the lock is reentrant, or it would deadlock): ``_seg`` is stored before ``_direct``,
        so a handler running after that store takes and stops ``seg``, and a ``_direct`` stored
        after it is a stopped writer that refuses every write. Between the check and the
        store only attribute loads and stores run, where CPython runs no handler (it does
        at calls, function entry and backward jumps).
        """
        with self._swap:
            if not self._ended:
                old, self._seg = self._seg, seg
                self._direct = seg.fast
                return old
        # close() ran in another thread while this one asked for the segment (requests
        # let other threads run): it is not ours to use.
        seg.close()
        raise HandleClosedError(f"NdShArray {self._tag!r} was closed while it wrote")

    # ---- lifetime ---------------------------------------------------------------------

    def _after_fork(self) -> NoReturn:
        raise UsageError(
            f"this writer of {self._tag!r} belongs to pid {self._pid}; a forked child must "
            "open its own NdShArray (under another tag, or after the parent closes)"
        )

    def _close(self, in_gc: bool) -> None:
        if self._close_in_child():
            return
        with self._swap:  # one step for a writer installing a new segment (see _install)
            self._closed = self._ended = True
            self._direct = None
            seg, self._seg = self._seg, None
            if seg is not None:
                # Writes in flight publish nothing from now on, and hand_over() below means
                # something even if an interrupt comes before _let_go (one C call: no Python
                # signal handler runs inside it).
                seg.fast.stop()
        try:
            if not in_gc:
                registrar.untrack(self)  # (the registrar's weak set forgets collected handles)
            self._let_go(seg, in_gc)
        except BaseException:
            # Interrupted (a KeyboardInterrupt while close() waited up to CLOSE_DRAIN for a
            # write in flight, say; review item 2): _closed is set, so no later close() will
            # try again. The tag still goes back: by the registrar now if no write is in
            # flight, else by the last such write when its copy ends (hand_over(True) tells
            # it close() stopped waiting). Asking again is safe: hand_over(True) repeats
            # its answer to close(), and a second release is a no-op.
            if seg is None or seg.fast.hand_over(True):
                self._release.post()
            # The handle forgot its segment: close it here or its fd would stay until the
            # process exits.
            if seg is not None and not seg.closed:
                with contextlib.suppress(Exception):
                    seg.close(drain=0.0)
            raise

    def _let_go(self, seg: SegmentWriter | None, in_gc: bool) -> None:
        """close()'s work once the handle is marked closed: stop the segment, then hand the
        tag back to the daemon once no write is in flight any more."""
        if seg is not None:
            self._written = int(seg.fast.count)
            # Writes still copying into its slots in other threads publish nothing now, and
            # the tag goes back only once they are done (review defect 1): a successor
            # writer taking over this segment could pick a slot still being filled. (Not
            # waiting for a loan() open in this very thread, nor in the collector: then no
            # other thread can be writing through this handle.)
            own_loan = self._loan_thread == threading.get_ident()
            seg.close(drain=0.0 if in_gc or own_loan else CLOSE_DRAIN)
            if not seg.fast.hand_over(True):
                log.debug("closing the writer of %r: a write still copies in another thread; "
                          "it hands the tag back when its copy ends", self._tag)
                return
        self._release.send(in_gc)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"the writer of {self._tag!r} cannot be pickled: a tag has one writer; pass the "
            "tag and open a reader (or a writer of another tag) in the other process"
        )
