"""End of stream and asyncio for readers: ``writer_state``, ``writer_pid``, ``frames()``,
``aread()``, ``aframes()`` (a part of :class:`~ndsharray.reader.Reader`).

The writer's state comes from the segment header (liveness.py), never from the daemon; a
blocking read returns when the writer closes or dies (Reader._await asks the WriterWatch
before it sleeps); asyncio waits go through one waiter thread (aio.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import numpy as np

from . import aio as _aio
from .arguments import seconds
from .errors import DaemonUnavailableError, HandleClosedError
from .finder import SegmentFinder
from .liveness import ENDED, EndSeen, WriterState, WriterWatch
from .segment.reader import SegmentReader


class ReaderStream:
    """The reader's stream API; Reader supplies read(), its segment and its watch."""

    _watch: WriterWatch
    _finder: SegmentFinder
    _seg: SegmentReader | None
    _closed: bool
    _count: int
    _last: np.ndarray[Any, Any]

    def read(self, copy: bool = False, timeout: float | None = 0.0) -> tuple[bool, np.ndarray[Any, Any]]:
        raise NotImplementedError

    def _switch(self, seg: SegmentReader) -> SegmentReader:
        raise NotImplementedError

    def _follow_pointer(self) -> SegmentReader | None:
        """Switch to the live segment the tag's pointer names (no daemon call); None if none."""
        current = self._seg
        seg = self._finder.by_pointer(current)
        if seg is None:
            return None
        return seg if seg is current else self._switch(seg)

    def _await(self, take: Literal[True], copy: bool, timeout: float | None,
               ends: bool = True, seen: EndSeen | None = None) -> np.ndarray[Any, Any] | None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        """Yield every new array as it arrives (blocking); ends when the handle is closed
        (not when the writer closes: it waits for the next writer; see :meth:`frames`)."""
        while True:
            try:
                arr = self._await(True, False, None, ends=False)
            except HandleClosedError:
                return
            if arr is None:
                return
            yield arr

    def frames(self, until_closed: bool = False, timeout: float | None = None,
               copy: bool = False) -> Iterator[np.ndarray[Any, Any]]:
        """Yield each new frame as it arrives (a read-only view, or a copy with ``copy``).

        Ends when the handle is closed, when ``timeout`` seconds pass without a frame (None:
        never), and with ``until_closed=True`` once the writer has closed cleanly and the
        frame it published last before closing was yielded: ``for f in r.frames(until_closed=
        True)`` reads a finite stream to its end. A writer that dies (or, without
        ``until_closed``, closes) does not end it: it waits for the next writer. Frames a
        slow consumer did not take in time are skipped, as with read() (latest value).
        """
        timeout = seconds(timeout)
        seen = self._watch.since_now()  # (across its reads: an end another thread of this
        while True:                     # handle reported between two of them is news here)
            told = seen.key
            try:
                status, arr = self.read(copy)
                if not status and timeout != 0:
                    got = self._await(True, copy, timeout, seen=seen)
                    status, arr = got is not None, self._last if got is None else got
            except HandleClosedError:
                return
            if status:
                yield arr
                continue
            if seen.key == told:
                return  # the timeout passed, or the handle was closed
            if until_closed and seen.key is not None and seen.key[2] == "closed":
                yield from self._rest(copy)
                return

    def _rest(self, copy: bool) -> Iterator[np.ndarray[Any, Any]]:
        """What the writer published before it closed and was not read yet (the close is
        stored after its last publish, and read here after seeing it: nothing is missed)."""
        while True:
            try:
                status, arr = self.read(copy)
            except HandleClosedError:
                return
            if not status:
                return
            yield arr

    async def aread(self, timeout: float | None = None, copy: bool = False) -> tuple[bool, np.ndarray[Any, Any]]:
        """``read(copy, timeout)`` for asyncio: waits without blocking the event loop.

        ``timeout=None`` (the default here) waits for as long as it takes; like a blocking
        read it returns ``(False, <the last array>)`` at the timeout and as soon as the
        writer closes or dies. Many readers in a loop share one waiter thread
        (see ndsharray/aio.py); a cancelled aread leaves nothing pinned or registered.
        """
        return await _aio.aread(self, seconds(timeout), copy, self._watch.since_now())

    def aframes(self, until_closed: bool = False, timeout: float | None = None,
                copy: bool = False) -> AsyncIterator[np.ndarray[Any, Any]]:
        """:meth:`frames` for asyncio: ``async for frame in r.aframes(until_closed=True):``."""
        return _aio.aframes(self, until_closed, seconds(timeout), copy)

    @property
    def writer_state(self) -> WriterState:
        """The tag's writer: "none" (no writer has published it), "alive", "closed" (closed
        cleanly: end of stream) or "died" (killed or crashed; a new writer may come). Read
        from the segment header and the writer's pid, never from the daemon: cheap enough
        for every frame."""
        return self._watch.state(self._state_segment())[0]

    @property
    def writer_pid(self) -> int:
        """The pid of the writer (alive), or of the one that closed or died; 0: none."""
        return self._watch.state(self._state_segment())[1]

    def _state_segment(self) -> SegmentReader | None:
        """The segment whose header says who writes the tag: ours, or the one the tag's
        pointer names if ours was replaced (its writer moved on to a new generation)."""
        seg = self._seg
        if (seg is None or seg.retired()) and not self._closed:
            seg = self._follow_pointer() or seg
        return seg

    # (aio.py's view of this reader)
    def _sleep_target(self) -> SegmentReader | None:
        seg = self._seg
        return None if seg is None or seg.retired() else seg

    def _sleep_count(self) -> int:
        return self._count

    def _new_end(self, seg: SegmentReader, seen: EndSeen) -> bool:
        """True if the writer of ``seg`` closed or died and the blocking call ``seen`` is
        about was not told yet (now it is). Not while the tag's pointer names a newer
        segment: the tag has a new writer (a daemon restarted meanwhile, say); the reader
        switches to it instead."""
        if self._watch.state(seg)[0] not in ENDED:
            return False
        newer = self._follow_pointer()
        if newer is not None and newer is not seg:
            return False
        return self._watch.new_end(seg, seen) is not None

    def _since_now(self) -> EndSeen:
        return self._watch.since_now()

    def _restarting(self, exc: DaemonUnavailableError) -> bool:
        """Whether a blocking read waits on after a lookup raised ``exc``: no daemon held the
        endpoint when it looked, or none does now (a successor may have taken the endpoint
        since, and is then the one to ask next time). A daemon that runs and does not answer,
        or cannot be used, is not a restart."""
        return exc.absent or self._finder.no_daemon()

    def _last_array(self) -> np.ndarray[Any, Any]:
        return self._last
