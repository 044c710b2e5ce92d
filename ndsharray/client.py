"""``NdShArray``: share one numpy array by tag between processes.

A writer copies each array into a free slot of the tag's segment; a reader gets a
read-only, zero-copy view of the latest complete write. Both talk to the daemon only to
open, close or change shape/dtype/slot count: a same-shape write or read never does.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import logging
import math
import os
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np

from . import config, ring, transport
from . import keeper as _keeper
from .dtypes import dtype_to_text
from .errors import (
    CorruptSegmentError,
    DaemonUnavailableError,
    HandleClosedError,
    NdShArrayError,
    ResourceLimitError,
    SegmentGoneError,
    TagBusyError,
    TagRemovedError,
    WriterStalledError,
)
from .holders import busy_in_this_process, creation_site
from .protocol import check_tag
from .segment import (
    CLOSED,
    ENV_SHM_DIR,
    MAX_SLOTS,
    REMOVED,
    SegmentReader,
    SegmentWriter,
    abandon,
    acquisitions,
    current_pid,
    is_segment_name,
    process_pid_holder,
    shm_dir,
)

log = logging.getLogger("ndsharray")

# A reader that finds no writer for this long says so once (a misspelt tag waits forever).
MISSING_WARN_AFTER = 5.0

# Longest close() waits for writes still copying in other threads before it hands the tag
# back; past it, the last of those writes hands it back when its copy ends.
CLOSE_DRAIN = 1.0

# Longest single sleep of a waiting reader. Writes, retirement and close() wake it at once;
# the slice is the safety net that re-checks its segment and handle anyway.
WAIT_SLICE = 1.0

_EMPTY: np.ndarray[Any, Any] = np.empty((0,))
_EMPTY.flags.writeable = False
_live: weakref.WeakSet[NdShArray] = weakref.WeakSet()


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
    """

    _closed = True
    _ended = False  # close() ran (_closed is also True before the handle is open)
    _fast: Any = None  # the current segment's _hot.Writer while this writer may use it
    _loaned = False  # inside a loan() block
    _loan_thread: int | None = None  # the thread that opened it
    _rfast: SegmentReader | None = None  # a reader's segment, checked, while nothing changed
    _wseg: SegmentWriter | None = None
    _rseg: SegmentReader | None = None
    _written = 0  # writer: its count when it closed
    _missing_since: float | None = None  # reader: since when lookups find no segment
    _warned_missing = False

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
    ) -> None:
        if not isinstance(r_w, str) or r_w.lower() not in ("r", "w"):
            if isinstance(array, str) and array.lower() in ("r", "w"):
                # NdShArray('camera/left', 'r'): the second positional argument is array=.
                raise ValueError(
                    f"r_w must be 'r' (reader) or 'w' (writer), got {r_w!r}, and array={array!r}: "
                    f"did you mean r_w={array!r}? The second positional argument is the array: "
                    f"write NdShArray({tag!r}, r_w={array!r})")
            raise ValueError(f"r_w must be 'r' (reader) or 'w' (writer), got {r_w!r}")
        if (slots is not None and not 2 <= slots <= MAX_SLOTS) or not (slots or 2) <= max_slots <= MAX_SLOTS:
            raise ValueError(f"need 2 <= slots <= max_slots <= {MAX_SLOTS}, got {slots}, {max_slots}")
        if array is not None and r_w.lower() != "w":
            raise ValueError("array= is only for writers (r_w='w'); a reader gets arrays from read()")
        if array is not None:
            array = _check_array(array, "NdShArray(array=...)")
        self._tag = check_tag(tag)
        self._access = r_w.lower()
        self._endpoint = config.resolve_endpoint(endpoint)
        self._slots = slots  # None: by the array's size (ring.initial_slots)
        self._max_slots = max_slots
        self._write_timeout = write_timeout
        self._last: np.ndarray[Any, Any] = _EMPTY
        self._count = 0
        self._read_ns = 0  # when the last array read was read (time.monotonic_ns() clock)
        self._stamp = 0
        self._valid = False
        self._offered: dict[str, Any] | None = None
        self._stale = False  # set when a restarted daemon no longer knows our segment
        self._misses = 0  # reader: lookups in a row that found no segment
        self._last_lookup = 0.0
        self._site = creation_site()  # where the user's code made it, for a TagBusyError
        # Makes close() and a writer's switch to a new segment one step each for other
        # threads (review of defect 1): see _install. Reentrant: a signal handler of this
        # thread may close the handle while this thread is inside (see _install).
        self._swap = threading.RLock()
        self._open()
        _live.add(self)
        if array is not None and array.size:
            self.write(array)

    def _open(self) -> None:
        self._pid = os.getpid()
        self._token = secrets.token_hex(8)
        self._conn = transport.connection(self._endpoint)
        if self._access == "r":
            self._pointer = os.path.join(config.pointer_dir(self._endpoint), config.pointer_name(self._tag))
            if self._peek() is not None:
                # Found through the tag's pointer: register in the background, so a reader
                # attaches in well under a millisecond instead of a daemon round trip (the
                # first request of a process costs milliseconds). Every later request of
                # this process is sent after this one.
                self._closed = False
                _keeper.keeper.track(self, registered=False)
                _keeper.keeper.post(self._conn, "attach", tag=self._tag, pid=self._pid, token=self._token)
                return
        op = "claim" if self._access == "w" else "attach"
        try:
            res = self._conn.request(op, tag=self._tag, pid=self._pid, token=self._token)
        except TagBusyError as exc:
            mine = busy_in_this_process(self._tag, self._endpoint, _live)
            if mine is not None:
                raise mine from exc
            raise
        self._closed = False
        if self._access == "w":
            self._offered = res["segment"]  # a dead writer's segment we may continue in
        elif res["segment"] is not None:
            try:
                self._switch(SegmentReader(res["segment"]["name"]))
            except SegmentGoneError:
                pass  # replaced since the daemon answered: the first read resolves it again
        _keeper.keeper.track(self)

    def _reregister(self) -> None:
        """Called by the keeper after a daemon restart: tell the new daemon who we are."""
        if self._closed or self._pid != current_pid():
            return
        op = "claim" if self._access == "w" else "attach"
        try:
            info = self._conn.request(op, tag=self._tag, pid=self._pid, token=self._token)["segment"]
            if self._closed:
                # close() ran meanwhile (it does not wait for the keeper): its release may
                # have reached the daemon before this claim, so send another after it.
                self._conn.post("release" if self._access == "w" else "detach", tag=self._tag,
                                token=self._token)
                return
        except TagBusyError:
            # Another writer claimed the tag while the daemon was away: our next write asks
            # for a generation and gets TagRemovedError saying it was taken over.
            self._stale = True
            self._fast = self._rfast = None
            return
        seg = self._wseg or self._rseg
        if self._access == "w" and seg is None:
            self._offered = info  # what the new daemon offers (an orphan it recovered, or none)
        if seg is not None and (info is None or info["name"] != seg.name):
            # The new daemon does not know our segment. A writer makes a new generation on
            # its next write (readers attaching now find the tag again); a reader asks the
            # daemon on its next read instead of waiting on a segment nobody writes.
            self._stale = True
            self._fast = self._rfast = None

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
        return self._access

    @property
    def ndarray_mmap_name(self) -> str | None:
        """Name of the current shared-memory segment (changes with shape or dtype)."""
        seg = self._wseg or self._rseg
        return None if seg is None else seg.name

    @property
    def read_time_ms(self) -> float:
        """Milliseconds from the last read array's ``write()`` to its ``read()``."""
        return (self._read_ns - self._stamp) / 1e6 if self._stamp else 0.0

    @property
    def write_count(self) -> int:
        """Reader: the writer's count of the last array read (a gap between two reads is the
        number of writes this reader skipped). Writer: the count of its last write. Counts
        belong to a segment: a new generation (shape or dtype change, ring growth, a daemon
        restart) starts again at 1, and a writer taking over a segment continues its count."""
        if self._access == "w":
            seg = self._wseg
            return self._written if seg is None else int(seg.fast.count)
        return self._count

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
        seg = self._wseg or self._rseg
        return None if seg is None else seg.header.shape

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """Dtype of the current segment's arrays; None before there is one."""
        seg = self._wseg or self._rseg
        return None if seg is None else seg.header.dtype

    @property
    def generation(self) -> int | None:
        """The tag's generation this handle is on (``GEN`` in ``ndsharray ls``). A new
        segment (shape or dtype change, ring growth) gets the next one, so a change of it
        explains a ``write_count`` that starts again. None before there is a segment."""
        seg = self._wseg or self._rseg
        return None if seg is None else seg.header.generation

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    # ---- writing ----------------------------------------------------------------------

    def write(self, array: np.ndarray[Any, Any]) -> None:
        """Publish a copy of ``array`` as the tag's latest value.

        Any layout works (non-contiguous, Fortran order); a new shape or dtype makes a new
        segment generation. Raises ``TypeError`` for dtypes holding Python objects.
        """
        fast = self._fast
        if fast is not None:
            if type(array) is not np.ndarray:  # (the C call takes any buffer: check first)
                array = _check_array(array)
            # Same shape and dtype, C-contiguous: one C call acquires, copies, publishes.
            count = fast.write(array)
            if count > 0:
                self._valid = True
                return
            if count == REMOVED:
                self._removed()
            if count == CLOSED:
                self._overtaken(fast)
        if self._closed or self._access != "w" or self._pid != process_pid_holder.pid:
            self._check("w")  # raises, or reopens after a fork
        arr = array if type(array) is np.ndarray else _check_array(array)
        seg = self._wseg
        if seg is None or self._stale or arr.dtype != seg.dtype or arr.shape != seg.shape:
            self._no_loan_open("change shape or dtype")
            seg = self._new_generation(arr.dtype, arr.shape, self._slots_for(arr.nbytes))
        mark = acquisitions()
        try:  # (the acquire too: see _abandon)
            seg, i = self._acquire(seg)
            np.copyto(seg.slots[i], arr, casting="no")  # (without the GIL when large)
            count = seg.fast.publish(i)
        except BaseException:
            self._abandon(mark)
            raise
        if not count:
            self._overtaken(seg.fast)
        self._valid = True

    @contextmanager
    def loan(
        self, shape: tuple[int, ...] | None = None, dtype: Any = None
    ) -> Iterator[np.ndarray[Any, Any]]:
        """Lend a free slot as a writable array; leaving the block publishes it.

        ``with w.loan() as buf: np.add(a, b, out=buf)`` fills shared memory directly (no
        extra copy). The slot holds an older frame: overwrite all of it. Without arguments
        the shape and dtype of the last write are kept; giving ``shape``/``dtype`` starts a
        new generation when they differ. An exception inside the block publishes nothing.
        The array becomes read-only when the block ends: keep no reference to it.
        """
        self._check("w", "loan")
        self._no_loan_open("open a second loan()")
        seg = self._wseg
        if shape is not None or dtype is not None:
            want_shape = tuple(shape) if shape is not None else (seg.header.shape if seg else None)
            want_dtype = np.dtype(dtype) if dtype is not None else (seg.header.dtype if seg else None)
            if want_shape is None or want_dtype is None:
                raise ValueError("the first loan() of a writer needs both shape and dtype")
            if seg is None or want_dtype != seg.header.dtype or want_shape != seg.header.shape:
                nbytes = math.prod(want_shape) * want_dtype.itemsize
                seg = self._new_generation(want_dtype, want_shape, self._slots_for(nbytes))
        elif seg is None:
            raise ValueError("the first loan() of a writer needs shape= and dtype=")
        mark = acquisitions()
        try:  # (see _abandon)
            seg, i = self._acquire(seg)
            buf = seg.slots[i][...]
            self._loaned = True
            self._loan_thread = threading.get_ident()
        except BaseException:
            self._loaned = False
            self._loan_thread = None
            self._abandon(mark)
            raise
        try:
            yield buf
        except BaseException:
            # The lent slot, unpublished: by its index, since the block may end in another
            # thread (abandon() knows only this thread's slots), or in the collector.
            self._give_back(seg, i)
            raise
        finally:
            self._loaned = False
            self._loan_thread = None
            buf.flags.writeable = False
        try:
            count = seg.fast.publish(i)
        except BaseException:
            self._abandon(mark)
            raise
        if not count:  # close() ran meanwhile (the block's writes are not shown)
            self._overtaken(seg.fast)
        self._valid = True

    def _slots_for(self, nbytes: int) -> int:
        """The slot count of a new generation: as given, or as grown, or by the size."""
        if self._slots is not None:
            return self._slots
        free = None
        if nbytes > ring.BIG_ARRAY_BYTES:  # (a statvfs only where it can change the answer)
            try:
                st = os.statvfs(shm_dir())
                free = st.f_bavail * st.f_frsize
            except OSError:
                pass
        return ring.initial_slots(nbytes, self._max_slots, free)

    def _abandon(self, mark: int) -> None:
        """Give back, unpublished, the slots this thread acquired for this handle since
        ``mark`` and still holds: a copy or loan block failed, or an exception came between
        an acquire and the code that would publish or give back its slot (review item 4: a
        KeyboardInterrupt can land wherever Python code runs, and the slot index it carried
        is then lost, while the C writer still has the slot busy: no write would use it,
        and close() would wait for it and never hand the tag back)."""
        for fast in abandon(mark, self._token):
            self._hand_back_if_last(fast)

    def _give_back(self, seg: SegmentWriter, i: int) -> None:
        """Give lent slot ``i`` back unpublished, from whichever thread ends the loan."""
        with contextlib.suppress(ValueError):  # (not busy: nothing to give back)
            seg.fast.release(i)
        self._hand_back_if_last(seg.fast)

    def _hand_back_if_last(self, fast: Any) -> None:
        """After a write of a closed handle gave its slot back: if close() stopped waiting
        for writes in flight and this was the last, the tag goes back to the daemon now."""
        if fast.hand_over(False):
            _keeper.keeper.defer(self._conn, "release", self._tag, self._token)

    def _overtaken(self, fast: Any) -> NoReturn:
        """close() in another thread overtook this write (its copy ran without the GIL, or
        its loan() block was open): the slot went back unpublished, so that no successor
        writer finds a second writer's frame in it."""
        self._hand_back_if_last(fast)
        raise HandleClosedError(
            f"NdShArray {self._tag!r} was closed by another thread while this write copied; "
            "nothing was published")

    def _no_loan_open(self, what: str) -> None:
        """The lent slot belongs to the current segment: nothing may replace it meanwhile."""
        if self._loaned:
            raise NdShArrayError(
                f"cannot {what} of {self._tag!r} inside a loan() block; leave the block first")

    def _acquire(self, seg: SegmentWriter) -> tuple[SegmentWriter, int]:
        """Lock a free slot of ``seg`` (or of a grown ring) for the next write."""
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

    def _removed(self) -> None:
        raise TagRemovedError("NOT_WRITER",
            f"tag {self._tag!r} was removed (ndsharray rm, or by the daemon when another "
            "process broke its segment: see ndsharray ls) while this process wrote it; "
            "close this writer and open a new NdShArray to publish again"
        )

    def _new_generation(self, dtype: np.dtype[Any], shape: tuple[int, ...], slots: int) -> SegmentWriter:
        text = dtype_to_text(dtype)
        daemon = _keeper.keeper.check(self._endpoint)
        offer, self._offered = self._offered, None
        seg: SegmentWriter | None = None
        if offer and offer["dtype"] == text and tuple(offer["shape"]) == shape:
            seg = self._take_over(offer["name"])  # a previous writer's segment: readers keep going
        if seg is None:
            args: dict[str, Any] = dict(tag=self._tag, pid=self._pid, token=self._token, dtype=text,
                                        shape=list(shape), slots=slots)
            try:
                res = self._conn.request("generation", **args)
            except TagRemovedError:
                # The daemon died with our request and its successor got the retry before
                # this process re-registered: re-register, then ask once more.
                if _keeper.keeper.check(self._endpoint) == daemon:
                    raise
                res = self._conn.request("generation", **args)
            name = res["segment"]["name"]
            try:
                seg = SegmentWriter(name, self._token)
            except SegmentGoneError:
                raise NdShArrayError(
                    f"the daemon at {self._endpoint} just created segment {name}, but it is not in "
                    f"{shm_dir()}: the daemon and this process must agree on {ENV_SHM_DIR} (restart "
                    "the daemon with this process's environment, or set it alike here)"
                ) from None
        self._stale = False
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
        (the lock is reentrant, or it would deadlock): ``_wseg`` is stored before ``_fast``,
        so a handler running after that store takes and stops ``seg``, and a ``_fast`` stored
        after it is a stopped writer that refuses every write. Between the check and the
        store only attribute loads and stores run, where CPython runs no handler (it does
        at calls, function entry and backward jumps).
        """
        with self._swap:
            if not self._ended:
                old, self._wseg = self._wseg, seg
                self._fast = seg.fast
                return old
        # close() ran in another thread while this one asked for the segment (requests
        # let other threads run): it is not ours to use.
        seg.close()
        raise HandleClosedError(f"NdShArray {self._tag!r} was closed while it wrote")

    def _take_over(self, name: str) -> SegmentWriter | None:
        """Open the segment a previous writer of the tag left (offered by our claim), or None
        when it went since the claim: removed (``ndsharray rm``: the generation request then
        says the tag was removed) or dropped by a daemon that restarted meanwhile (the
        request gets a fresh segment). Either way the daemon, not the file system, decides."""
        try:
            seg = SegmentWriter(name, self._token)
        except SegmentGoneError:
            return None
        if seg.retired():  # replaced or removed between the claim and now
            seg.close()
            return None
        return seg

    def _acquire_slow(self, seg: SegmentWriter) -> tuple[SegmentWriter, int]:
        """Every slot but the latest is pinned: free dead readers' pins, wait a moment, then
        grow the ring."""
        if seg.reclaim_rows():
            i = self._try_acquire(seg)
            if i >= 0:
                return seg, i
        # A reader holds two pins for a moment while it swaps views; that passes quickly.
        spin_until = time.monotonic() + 0.002
        while time.monotonic() < spin_until:
            os.sched_yield()
            i = self._try_acquire(seg)
            if i >= 0:
                return seg, i
        grow_failed = ""
        if seg.nslots < self._max_slots and not self._loaned:
            # Pins that persist are views readers keep: give them more room (not under a
            # loan: the lent slot must stay in this segment to be published).
            h = seg.header
            try:
                seg = self._new_generation(h.dtype, h.shape,
                                           ring.grown_slots(seg.nslots, h.layout.nbytes, self._max_slots))
            except (DaemonUnavailableError, ResourceLimitError) as exc:
                log.debug("could not grow the ring of %r (%s); waiting for a free slot", self._tag, exc)
                grow_failed = f"; growing the ring to more slots failed: {exc}"
            else:
                self._slots = seg.nslots
                i = self._try_acquire(seg)
                if i >= 0:
                    return seg, i
        deadline = time.monotonic() + self._write_timeout
        tries = 0
        while time.monotonic() < deadline:
            time.sleep(0.0005)
            tries += 1
            if tries % 20 == 0:
                seg.reclaim_rows()  # a reader may have died meanwhile (or its last fd closed)
            i = self._try_acquire(seg)
            if i >= 0:
                return seg, i
        lent = " (one is lent out by the open loan() block)" if self._loaned else ""
        raise WriterStalledError(
            f"tag {self._tag!r}: all {seg.nslots} slots stayed pinned by readers{lent} for "
            f"{self._write_timeout:g} s; readers hold on to old arrays - drop them, read with "
            f"copy=True, or raise max_slots{grow_failed}"
        )

    # ---- reading ----------------------------------------------------------------------

    def read(self, copy: bool = False, timeout: float | None = 0.0) -> tuple[bool, np.ndarray[Any, Any]]:
        """Return ``(True, newest array)`` if a write arrived since the last read.

        Otherwise ``(False, <the array returned last time>)``, an empty array if none was
        ever written. The array is a read-only zero-copy view that stays unchanged while you
        hold it, or with ``copy=True`` an owned, writable copy. Never a torn array.

        ``timeout``: 0 (the default, as in ndsharray 1.x) returns at once; a number of
        seconds waits up to that long for the next write; None waits for as long as it takes.
        A waiting reader sleeps on a futex and uses no CPU.
        """
        if timeout is not None and (timeout or type(timeout) not in (float, int)):
            timeout = _seconds(timeout)  # (0, the default, and None need no check)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            seg = self._rfast
            if seg is not None and not copy and seg.read_new is not None:
                # The common case in one C call (pin and view): a camera's reader comes here
                # once per frame interval, when little of this code is still in the cache.
                got = seg.read_new(self._count)
                if got is None:
                    pass
                elif type(got) is not int:
                    return True, self._took(seg, got)
                else:
                    got = self._read_general(copy)  # retired, or corrupt: it finds out which
            else:
                got = self._read_general(copy)
            if got is not None:
                return True, got
            if timeout == 0:  # (None: wait for as long as it takes)
                return False, self._last
            left = None if deadline is None else deadline - time.monotonic()
            seg = self._rfast
            if seg is not None:  # the checked segment: sleep on it straight away
                if left is not None and left <= 0:
                    return False, self._last
                seg.wait(self._count, WAIT_SLICE if left is None else min(left, WAIT_SLICE))
                if self._closed:
                    return False, self._last
            elif not self.wait(None if left is None else max(0.0, left)):  # (a deadline passed: 0)
                return False, self._last

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a write this handle has not read yet exists; False on timeout or close.

        Does not consume the write: the next ``read()`` returns it.
        """
        timeout = _seconds(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = 0.001
        while True:
            if self._closed:
                return False
            self._check("r")
            seg = self._reader_segment()
            left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            if seg is not None and seg.has_new(self._count):
                return True
            if left <= 0:
                return False
            if seg is None:  # no writer yet: ask the daemon again soon, not in a busy loop
                time.sleep(min(idle, left))
                idle = min(idle * 2, 0.05)
            else:
                seg.wait(self._count, left)

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        """Yield every new array as it arrives (blocking); ends when the handle is closed."""
        while True:
            try:
                status, arr = self.read(timeout=None)
            except HandleClosedError:
                return
            if not status:
                return
            yield arr

    def _reader_segment(self) -> SegmentReader | None:
        """The segment to read, after asking the daemon if ours was replaced (a newer
        generation has the newer frames) or a restarted daemon does not know it."""
        seg = self._rseg
        if seg is None or self._stale or seg.retired():
            return self._resolve()
        return seg

    def _read_general(self, copy: bool) -> np.ndarray[Any, Any] | None:
        """A new frame or None, without read()'s one-call path: find the segment (asking
        the daemon if it was replaced), pin through latest(), then view or copy."""
        seg = self._rfast
        if seg is None:
            self._check("r")
            seg = self._reader_segment()
            if seg is None:
                return None
        # A Pin holds the pin from the moment it is taken: a KeyboardInterrupt anywhere
        # below drops it with this frame, and the pin with it (review defect 7).
        pin = seg.pin(self._count)
        if pin is None:
            self._rfast = seg
            return None
        if isinstance(pin, int):
            # Retired: a newer generation replaced it (or the tag was removed).
            if self._rfast is None:
                return None  # and the daemon knows nothing newer yet
            self._rfast = None
            return self._read_general(copy)
        self._rfast = seg  # checked: later reads go straight to the C reader
        arr = seg.copy(pin) if copy else seg.view_of(pin)
        return self._took(seg, arr)

    def _took(self, seg: SegmentReader, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Note the frame just read: its count, write time and read time are what the C
        reader recorded when it pinned it."""
        c = seg._c
        self._count, self._stamp, self._read_ns = c.count, c.stamp, c.read_ns
        self._last = arr
        self._valid = True
        return arr

    def _peek(self) -> SegmentReader | None:
        """Switch to the segment the tag's pointer names, if it is live; no request."""
        try:
            name = os.readlink(self._pointer)
        except OSError:
            return None  # no segment yet, or a daemon without pointers
        if not is_segment_name(name):
            return None  # not a segment name: never open what a planted link names
        seg = self._rseg
        if seg is None or seg.name != name:
            try:
                seg = SegmentReader(name)
            except (SegmentGoneError, CorruptSegmentError, OSError):
                return None  # replaced or removed since the pointer was read
            if seg.header.tag != self._tag:
                seg.close()
                return None
            if seg.retired():
                seg.close()
                return None
            self._switch(seg)
        elif seg.retired():
            return None
        self._misses = 0
        self._stale = False
        return seg

    def _resolve(self) -> SegmentReader | None:
        """Find the tag's current segment and switch to it if it changed: through the tag's
        pointer, else by asking the daemon.

        After a few lookups that found nothing, ask at most every 20 ms: a polling loop on
        a tag nobody writes must not hammer the daemon.
        """
        seg = self._peek()
        if seg is not None:
            return seg
        now = time.monotonic()
        if self._misses >= 3 and now - self._last_lookup < 0.02:
            return None
        self._last_lookup = now
        _keeper.keeper.check(self._endpoint)
        for _ in range(5):
            res = self._conn.request("lookup", tag=self._tag)
            info = res["segment"]
            if res.get("removed") and not self._warned_missing:  # (the daemon's own rm)
                self._warned_missing = True
                log.warning("reader of %r: %s", self._tag, res["removed"])
            if info is None or (self._rseg is not None and self._rseg.retired() and info["name"] == self._rseg.name):
                self._misses += 1
                if info is None and self._rseg is None:
                    self._warn_if_missing(now)
                return None
            self._misses = 0
            self._stale = False
            if self._rseg is not None and info["name"] == self._rseg.name:
                return self._rseg
            try:
                return self._switch(SegmentReader(info["name"]))
            except SegmentGoneError:
                continue  # replaced again while we looked: ask once more
        return self._rseg

    def _warn_if_missing(self, now: float) -> None:
        """Log once when no writer has published the tag for MISSING_WARN_AFTER seconds,
        naming the tags it may have been meant to be."""
        if self._missing_since is None:
            self._missing_since = now
        if self._warned_missing or now - self._missing_since < MISSING_WARN_AFTER:
            return
        self._warned_missing = True
        try:  # (the lookup just answered: no retries, so a read is never held long)
            tags = [t["tag"] for t in self._conn.request("list", retries=0)["tags"] if t["segment"]]
        except NdShArrayError:
            tags = []
        near = difflib.get_close_matches(self._tag, tags, n=3)
        if near:
            hint = "if it is misspelt, similar tags with data: " + ", ".join(map(repr, near))
        else:
            hint = f"{len(tags)} other tag(s) have data (ndsharray ls lists them)"
        log.warning("reader of %r: no writer has published this tag at %s for %.0f s (still "
                    "waiting); %s", self._tag, self._endpoint, now - self._missing_since, hint)

    def _switch(self, seg: SegmentReader) -> SegmentReader:
        old, self._rseg = self._rseg, seg
        self._rfast = None
        self._count = 0
        if old is not None:
            old.close()  # its mapping lives on while views of it do
        if self._ended:
            # close() ran in another thread while this one opened seg (the open lets other
            # threads run) and did not see it: close it here, or its fd and row would stay.
            self._rseg = None
            seg.close()
            raise HandleClosedError(f"NdShArray {self._tag!r} was closed while it read")
        return seg

    # ---- lifetime ---------------------------------------------------------------------

    def _check(self, access: str, method: str | None = None) -> None:
        if self._closed:
            raise HandleClosedError(f"NdShArray {self._tag!r} is closed")
        if self._access != access:
            method = method or ("write" if access == "w" else "read")
            raise NdShArrayError(
                f"NdShArray {self._tag!r} was opened with r_w={self._access!r}; "
                f"{method}() needs r_w={access!r}"
            )
        if self._pid != current_pid():
            self._after_fork()

    def _after_fork(self) -> None:
        """Inherited across fork: leave the parent's fds and locks alone, start afresh."""
        if self._access == "w":
            raise NdShArrayError(
                f"this writer of {self._tag!r} belongs to pid {self._pid}; a forked child must "
                "open its own NdShArray (under another tag, or after the parent closes)"
            )
        self._rseg = None  # the parent's; its finalizers do nothing in this process
        self._last = _EMPTY
        self._count = 0
        self._open()

    def close(self) -> None:
        """Release the tag (writer) or stop reading (reader). Idempotent.

        Arrays already returned by ``read()`` stay valid until they are dropped.
        """
        self._close(in_gc=False)

    def _close(self, in_gc: bool) -> None:
        if self._closed:
            return
        if self._pid != current_pid():
            # The parent's registration and locks are not ours to release (nor its _swap:
            # a thread of the parent may have held it at the fork).
            self._closed = self._ended = True
            self._fast = self._rfast = None
            return
        with self._swap:  # one step for a writer installing a new segment (see _install)
            self._closed = self._ended = True
            self._fast = self._rfast = None
            wseg, rseg, self._wseg, self._rseg = self._wseg, self._rseg, None, None
            if wseg is not None:
                # Writes in flight publish nothing from now on, and hand_over() below means
                # something even if an interrupt comes before _let_go (one C call: no Python
                # signal handler runs inside it).
                wseg.fast.stop()
        op = "release" if self._access == "w" else "detach"
        try:
            if not in_gc:
                _keeper.keeper.untrack(self)  # (the keeper's weak set forgets collected handles)
            self._let_go(wseg, rseg, op, in_gc)
        except BaseException:
            # Interrupted (a KeyboardInterrupt while close() waited up to CLOSE_DRAIN for a
            # write in flight, say; review item 2): _closed is set, so no later close() will
            # try again. The tag still goes back: by the keeper now if no write is in
            # flight, else by the last such write when its copy ends (hand_over(True) tells
            # it close() stopped waiting). Asking again is safe: hand_over(True) repeats
            # its answer to close(), and a second release or detach is a no-op.
            if wseg is None or wseg.fast.hand_over(True):
                _keeper.keeper.defer(self._conn, op, self._tag, self._token)
            # The handle forgot its segments: close them here or their fds (and a reader's
            # row lock) would stay until the process exits.
            if wseg is not None and not wseg.closed:
                with contextlib.suppress(Exception):
                    wseg.close(drain=0.0)
            if rseg is not None:
                with contextlib.suppress(Exception):
                    rseg.stop_waits()
                    rseg.close()
            self._last = _EMPTY  # (its pin keeps a reader's segment open)
            raise

    def _let_go(self, wseg: SegmentWriter | None, rseg: SegmentReader | None, op: str, in_gc: bool) -> None:
        """close()'s work once the handle is marked closed: stop the segments, then tell the
        daemon (a writer: once no write is in flight any more)."""
        handed = True
        if wseg is not None:
            self._written = int(wseg.fast.count)
            # Writes still copying into its slots in other threads publish nothing now, and
            # the tag goes back only once they are done (review defect 1): a successor
            # writer taking over this segment could pick a slot still being filled. (Not
            # waiting for a loan() open in this very thread, nor in the collector: then no
            # other thread can be writing through this handle.)
            own_loan = self._loan_thread == threading.get_ident()
            wseg.close(drain=0.0 if in_gc or own_loan else CLOSE_DRAIN)
            handed = wseg.fast.hand_over(True)
        if rseg is not None:
            rseg.stop_waits()  # end a wait() or iteration in another thread
            rseg.close()
        self._last = _EMPTY
        if not handed:
            log.debug("closing the writer of %r: a write still copies in another thread; it "
                      "hands the tag back when its copy ends", self._tag)
            return
        if in_gc:
            # The collector may run inside a daemon request of this very thread: never do
            # blocking IPC here; the keeper thread sends it.
            _keeper.keeper.defer(self._conn, op, self._tag, self._token)
            return
        # Never waits for a daemon that is down or restarting (a stopped one has nothing to
        # release, a restarting one gets it before this process's next request); never
        # fails (the daemon notices our death anyway).
        self._conn.send_or_post(op, tag=self._tag, token=self._token)

    def __enter__(self) -> NdShArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close(in_gc=True)
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        """A reader pickles as its tag and endpoint: the receiving process (a spawned pool
        worker, say) opens a reader of its own. A writer cannot be pickled: a tag has one."""
        if self._access != "r":
            raise TypeError(
                f"the writer of {self._tag!r} cannot be pickled: a tag has one writer; pass the "
                "tag and open a reader (or a writer of another tag) in the other process"
            )
        return (_reader_from_pickle, (self._tag, self._endpoint))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writer" if getattr(self, "_access", "") == "w" else "reader")
        seg = self._wseg or self._rseg
        what = "no data yet" if seg is None else f"{seg.header.dtype} {seg.header.shape}"
        return f"<NdShArray {getattr(self, '_tag', '?')!r} {state}, {what}>"


def _seconds(timeout: float | None) -> float | None:
    """A timeout: None (no limit) or seconds >= 0. A negative one is refused (1.x took it
    for 0, which hides a deadline computed wrongly), and so is NaN (every wait would
    return at once)."""
    if timeout is None:
        return None
    if type(timeout) is not float:
        if isinstance(timeout, (str, bytes, bool)):  # float() would take "1" and True
            raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
        try:
            timeout = float(timeout)  # int, numpy scalars, Decimal, 0-d arrays
        except (TypeError, ValueError):
            raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}") from None
    if timeout != timeout:
        raise ValueError("timeout is NaN; give None (wait as long as it takes) or seconds")
    if timeout < 0:
        raise ValueError(f"timeout is negative ({timeout:g} s); give 0 (do not wait), a number of "
                         "seconds, or None (wait as long as it takes)")
    return timeout


def _check_array(array: Any, what: str = "write()") -> np.ndarray[Any, Any]:
    """``array`` as a plain ndarray if it can be written; a clear TypeError if not."""
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{what} takes a numpy array, got {type(array).__name__}; convert it first, "
            "e.g. np.asarray(x, dtype=np.float32), so that you choose its dtype"
        )
    ma = sys.modules.get("numpy.ma")  # (not imported: no masked array exists, and np.ma
    if ma is not None and isinstance(array, ma.MaskedArray):  # would import it, ~10 ms)
        raise TypeError(
            f"{what} of a masked array would drop its mask; write array.filled(value), or "
            "its .data and np.ma.getmaskarray(array) under two tags"
        )
    return np.asarray(array)  # a subclass (np.memmap, np.matrix) as a plain array


def _reader_from_pickle(tag: str, endpoint: str) -> NdShArray:
    return NdShArray(tag, r_w="r", endpoint=endpoint)


def _after_fork_in_child() -> None:
    # A writer belongs to the process that opened it: a forked child's write() must take
    # the general path, which refuses it.
    for handle in list(_live):
        handle._fast = handle._rfast = None
        handle._swap = threading.RLock()  # a parent's thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def close_all() -> None:
    """Close every open NdShArray of this process (as interpreter exit does): a notebook's
    way out of handles it no longer has names for."""
    for handle in list(_live):
        try:
            handle.close()
        except Exception:
            pass


atexit.register(close_all)
