"""``Reader``: a reader of a tag (``NdShArray(tag, r_w='r')``).

A read pins the latest complete write of the tag's segment and returns a read-only view
of it (or a copy). While the segment it read last is still current, one C call does it
(``_direct``), with no daemon call; otherwise the reader finds the tag's current segment
through the tag's pointer in the file system, else by asking the daemon.

Reading has one loop, :meth:`Reader._await`: ``read()`` enters it when its one C call has
nothing to return, ``wait()`` uses it without taking the frame, and iteration is
``read(timeout=None)`` over and over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Literal, overload

import numpy as np

from . import aio as _aio
from . import framemeta
from .arguments import seconds
from .errors import (
    DaemonUnavailableError,
    HandleClosedError,
    SegmentGoneError,
)
from .finder import SegmentFinder
from .handle import NdShArray, _live
from .liveness import EndSeen, WriterWatch
from .protocol import ATTACH
from .registrar import registrar
from .segment.reader import SegmentReader
from .stream import ReaderStream

log = logging.getLogger("ndsharray")

# Longest single sleep of a waiting reader. Writes, retirement and close() wake it at once;
# the slice is the safety net that re-checks its segment and handle anyway.
WAIT_SLICE = 1.0

_EMPTY: np.ndarray[Any, Any] = np.empty((0,))
_EMPTY.flags.writeable = False


class Reader(ReaderStream, NdShArray, role="r", ops=(ATTACH, "detach")):
    """A reader of a tag: see :class:`NdShArray` and :meth:`read`."""

    # The segment a read may go straight to: found, checked and read from, and not seen
    # replaced since. None sends the next read through _await, which finds the segment.
    _direct: SegmentReader | None = None
    _seg: SegmentReader | None = None

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
        self._init_common(tag, array, r_w, endpoint, slots, max_slots)
        self._last: np.ndarray[Any, Any] = _EMPTY
        self._count = 0
        self._watch = WriterWatch()  # the writer's state, and the ends of stream reported
        self._attach()
        _live.add(self)

    def _attach(self) -> None:
        self._register()
        self._finder = SegmentFinder(self._tag, self._conn)
        found = self._finder.by_pointer(self._seg)
        if found is not None:
            if found is not self._seg:
                self._switch(found)
            self._stale = False
            # Found through the tag's pointer: register in the background, so a reader
            # attaches in well under a millisecond instead of a daemon round trip (the
            # first request of a process costs milliseconds). Every later request of
            # this process is sent after this one: the registrar thread sends it within its
            # round, or this process's next request first. Not at once: a fresh process's
            # first request builds the zmq context and socket while holding the GIL for
            # milliseconds, which would stall the caller's next steps (its first read).
            self._closed = False
            registrar.track(self, Reader._reregister, registered=False)
            self._conn.post("attach", autostart=True, tag=self._tag, pid=self._pid, token=self._token)
            return
        res = self._conn.request(ATTACH, tag=self._tag, pid=self._pid, token=self._token)
        self._closed = False
        if res.segment is not None:
            try:
                self._switch(SegmentReader(res.segment.name))
            except SegmentGoneError:
                pass  # replaced since the daemon answered: the first read resolves it again
        registrar.track(self, Reader._reregister)

    @property
    def write_count(self) -> int:
        return self._count

    # What the frame read last carried: the Pin it is a view of says (framemeta.carried);
    # for a copy, _record_frame noted it. (Nothing for the one-call read to do.)
    _meta_raw: tuple[int, bytes] | None = None
    _shape_gen = 0
    meta = property(lambda self: framemeta.decode(framemeta.carried(self._last, "meta", self._meta_raw)),
                    doc="The metadata of the frame read last (the dict or bytes given as meta=), or None.")
    ndarray_mmap_name = property(lambda self: None if self._seg is None else framemeta.mmap_name(
        self._seg.name, framemeta.carried(self._last, "shape_gen", self._shape_gen)),
        doc="The segment of the frame read last, and ':<n>' after n changes of shape or dtype in it.")
    shape = property(lambda self: self._last.shape if self._valid else self._seg and self._seg.header.shape,
                     doc="Shape of the frame read last (frames of a segment may differ).")
    dtype = property(lambda self: self._last.dtype if self._valid else self._seg and self._seg.header.dtype,
                     doc="Dtype of the frame read last.")

    # ---- reading ----------------------------------------------------------------------

    def read(self, copy: bool = False, timeout: float | None = 0.0) -> tuple[bool, np.ndarray[Any, Any]]:
        """Return ``(True, newest array)`` if a write arrived since the last read.

        Otherwise ``(False, <the array returned last time>)``, an empty array if none was
        ever written. The array is a read-only zero-copy view that stays unchanged while you
        hold it, or with ``copy=True`` an owned, writable copy. Never a torn array.

        ``timeout``: 0 (the default, as in ndsharray 1.x) returns at once; a number of
        seconds waits up to that long for the next write; None waits for as long as it takes.
        A waiting reader sleeps on a futex and uses no CPU. It also waits through a daemon
        restart; it raises DaemonUnavailableError only if, when its time is up, it still
        needs the daemon (to find a replaced segment) and none runs.
        """
        if timeout is not None and (timeout or type(timeout) not in (float, int)):
            timeout = seconds(timeout)  # (0, the default, and None need no check)
        direct = self._direct
        if direct is not None and not copy:
            # The common case in one C call (pin and view): a camera's reader comes here
            # once per frame interval, when little of this code is still in the cache.
            got = direct.read_new(self._count)
            if got is None:
                if timeout == 0:
                    return False, self._last
            elif type(got) is not int:  # (an int: retired, or corrupt: _await finds out which)
                # _record_frame, inlined: a call less per frame.
                self._count, self._stamp, self._read_ns = direct.last_pinned()
                self._last = got
                self._valid = True
                return True, got
        arr = self._await(True, copy, timeout)
        return (False, self._last) if arr is None else (True, arr)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a write this handle has not read yet exists; False on timeout or close.

        Does not consume the write: the next ``read()`` returns it.
        """
        return self._await(False, False, seconds(timeout)) is not None

    @overload
    def _await(self, take: Literal[True], copy: bool, timeout: float | None,
               ends: bool = True, seen: EndSeen | None = None) -> np.ndarray[Any, Any] | None: ...
    @overload
    def _await(self, take: Literal[False], copy: bool, timeout: float | None,
               ends: bool = True, seen: EndSeen | None = None) -> bool | None: ...

    def _await(self, take: bool, copy: bool, timeout: float | None,
               ends: bool = True, seen: EndSeen | None = None) -> np.ndarray[Any, Any] | bool | None:
        """The read loop: until a write this handle has not read exists, or ``timeout``
        seconds passed (0: look once; None: no limit), or the handle is closed, or (with
        ``ends``) the writer closed or died and that end is news to this call: not the end
        ``seen`` holds (by default, the one the handle had reported when the call began;
        see liveness.py). ``seen`` then holds the end returned at.

        ``take``: pin that write and return it (a view, or a copy with ``copy``), as
        ``read()``; otherwise return True and leave it for the next read, as ``wait()``.
        None at the deadline or when the handle was closed while it waited. A closed
        handle raises HandleClosedError when taking, and returns None when only waiting.
        A lookup that finds no daemon running (a restart) is tried again until the
        deadline, then raises its DaemonUnavailableError (at once when ``timeout`` is 0).
        """
        deadline = time.monotonic() + timeout if timeout else None
        if seen is None:
            seen = self._watch.since_now()
        idle = 0.001  # sleep between lookups while the tag has no segment
        away: DaemonUnavailableError | None = None  # (the last lookup found no daemon)
        while True:
            # wait() looks again each time (has_new() would not see a retirement).
            seg = self._direct if take else None
            if seg is None:
                if self._closed and not take:
                    return None
                self._check()
                try:
                    seg, away = self._current(), None
                except DaemonUnavailableError as exc:
                    if timeout == 0 or not self._restarting(exc):
                        raise
                    seg, away = None, exc  # restarting, most likely: look again in a moment
            if seg is not None:
                if not take:
                    if seg.has_new(self._count):
                        return True
                else:
                    # A Pin holds the pin from the moment it is taken: a KeyboardInterrupt
                    # anywhere below drops it with this frame, and the pin with it (review
                    # defect 7).
                    pin = seg.pin(self._count)
                    if pin is None:
                        self._direct = seg  # checked: later reads go straight to the C reader
                    elif isinstance(pin, int):
                        # Retired: a newer generation replaced it (or the tag was removed).
                        if self._direct is seg:
                            self._direct = None
                            continue  # look for the newer one at once
                        seg = None  # just looked up: the daemon knows nothing newer yet
                    else:
                        self._direct = seg
                        return self._record_frame(seg, seg.copy(pin) if copy else seg.view_of(pin))
            if timeout == 0:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if away is not None:
                    raise away  # no daemon came back in time to say where the tag is now
                return None
            if seg is None:  # no writer yet (or no daemon): ask again soon, not in a busy loop
                time.sleep(idle if left is None else min(idle, left))
                idle = min(idle * 2, 0.05)
            else:
                # The notify word before the writer's state: a close or death after this
                # look moves it, and the wait below returns at once (see liveness.py).
                expect = seg.notify()
                if ends and self._new_end(seg, seen):
                    return None
                if self._seg is not seg:
                    continue  # the tag's pointer names a newer segment: read that
                seg.wait(self._count, WAIT_SLICE if left is None else min(left, WAIT_SLICE), expect)
            if self._closed:
                return None

    def _record_frame(self, seg: SegmentReader, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Note the frame just read, and return it: its count, write time and read time
        are what the segment's C reader recorded when it pinned it."""
        self._count, self._stamp, self._read_ns = seg.last_pinned()
        self._meta_raw, self._shape_gen = seg.meta, seg.shape_gen
        self._last = arr
        self._valid = True
        return arr

    # ---- finding the tag's segment ----------------------------------------------------

    def _current(self) -> SegmentReader | None:
        """The segment to read, after asking the daemon if ours was replaced (a newer
        generation has the newer frames) or a restarted daemon does not know it."""
        seg = self._seg
        if seg is None or self._stale or seg.retired():
            return self._resolve()
        return seg

    def _resolve(self) -> SegmentReader | None:
        """Find the tag's current segment, through its pointer, else by asking the daemon
        (see :mod:`ndsharray.finder`), and switch to it if it changed."""
        current = self._seg
        seg = self._finder.by_pointer(current) or self._finder.by_daemon(current)
        if seg is None:
            return None
        self._stale = False
        return seg if seg is current else self._switch(seg)

    def _switch(self, seg: SegmentReader) -> SegmentReader:
        old, self._seg = self._seg, seg
        self._direct = None
        self._count = 0
        if old is not None:
            old.close()  # its mapping lives on while views of it do
        if self._ended:
            # close() ran in another thread while this one opened seg (the open lets other
            # threads run) and did not see it: close it here, or its fd and row would stay.
            self._seg = None
            seg.close()
            raise HandleClosedError(f"NdShArray {self._tag!r} was closed while it read")
        return seg

    # ---- lifetime ---------------------------------------------------------------------

    def _after_fork(self) -> None:
        """Inherited across fork: leave the parent's fds and locks alone, start afresh."""
        self._seg = None  # the parent's; its finalizers do nothing in this process
        self._last = _EMPTY
        self._count = 0
        self._attach()

    def _close(self, in_gc: bool) -> None:
        if self._close_in_child():
            return
        with self._swap:  # (as a writer's close: see Writer._install)
            self._closed = self._ended = True
            self._direct = None
            seg, self._seg = self._seg, None
        try:
            if not in_gc:
                registrar.untrack(self)  # (the registrar's weak set forgets collected handles)
            if seg is not None:
                seg.stop_waits()  # end a wait() or iteration in another thread
                _aio.wake(seg)  # and an aread() in any event loop
                seg.close()
            self._watch.close()
            self._last = _EMPTY
            if in_gc:
                # The collector may run inside a daemon request of this very thread: never
                # do blocking IPC here; the registrar thread sends it.
                self._conn.post("detach", tag=self._tag, token=self._token)
            else:
                # Never waits for a daemon that is down or restarting; never fails (the
                # daemon notices our death anyway).
                self._conn.send_or_post("detach", tag=self._tag, token=self._token)
        except BaseException:
            # Interrupted: _closed is set, so no later close() will try again. The detach
            # still goes (by the registrar; a second one is a no-op), and the segment this
            # handle forgot is closed here, or its fd and row lock would stay.
            self._conn.post("detach", tag=self._tag, token=self._token)
            if seg is not None:
                with contextlib.suppress(Exception):
                    seg.stop_waits()
                    seg.close()
            self._last = _EMPTY  # (its pin keeps the segment open)
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        """A reader pickles as its tag and endpoint: the receiving process (a spawned pool
        worker, say) opens a reader of its own."""
        return (_reader_from_pickle, (self._tag, self._endpoint))


def _reader_from_pickle(tag: str, endpoint: str) -> Reader:
    return Reader(tag, endpoint=endpoint)
