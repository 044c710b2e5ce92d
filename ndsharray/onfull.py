"""What a write does when readers pin every slot it could use: ``NdShArray(tag, r_w='w',
on_full=...)``.

- ``"grow"`` (the default): wait a moment (a reader swapping views holds two pins for
  microseconds, for a scheduler slice or more when it is preempted in between: as long as
  growing would cost, 2 to 20 ms, :func:`ring.grow_grace`), then grow the ring (a new generation with more slots, up to
  ``max_slots``), then wait up to ``write_timeout`` and raise ``WriterStalledError``.
- ``"drop"``: after the short grace (2 ms), skip this frame: ``write()`` returns False at
  once, never raises for want of a slot, and the drop is counted in the segment header
  (``ls``, ``info``, ``--json``: DROPPED). A camera loop that must never stall uses it.
- ``"block"``: never grow; wait up to ``write_timeout`` for a slot to free.

``loan()`` must lend a slot, so it never drops: under ``"drop"`` it waits as ``"block"``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from . import ring
from .errors import DaemonUnavailableError, ResourceLimitError, WriterStalledError
from .segment.writer import SegmentWriter

log = logging.getLogger("ndsharray")

ON_FULL = ("grow", "drop", "block")


class Dropped(Exception):
    """on_full="drop": every slot stayed pinned past the short grace; skip this frame."""


def check_on_full(on_full: object) -> str:
    if on_full not in ON_FULL:
        raise ValueError(f"on_full must be one of {', '.join(map(repr, ON_FULL))}, got {on_full!r}: "
                         "what a write does when readers pin every slot (grow the ring, drop the "
                         "frame, or block until a slot frees)")
    return str(on_full)


class FullRing:
    """The writer's way out of a ring whose every slot is pinned (a part of Writer)."""

    _on_full: str
    _lending: bool
    _loaned: bool
    _max_slots: int
    _slots: int | None
    _tag: str
    _write_timeout: float

    def _try_acquire(self, seg: SegmentWriter) -> int:
        raise NotImplementedError

    def _new_generation(self, dtype: np.dtype[Any], shape: tuple[int, ...], slots: int,
                        capacity: int | None = None) -> SegmentWriter:
        raise NotImplementedError

    def _acquire_slow(self, seg: SegmentWriter) -> tuple[SegmentWriter, int]:
        """Every slot but the latest is pinned: free dead readers' pins, wait a moment, then
        by on_full: grow the ring ("grow"), give up on this frame ("drop"), or wait up to
        write_timeout for a slot ("block", and "grow" once the ring cannot grow)."""
        if seg.reclaim_rows():
            i = self._try_acquire(seg)
            if i >= 0:
                return seg, i
        # A reader holds two pins for a moment while it swaps views; that passes quickly.
        started = time.monotonic()
        spin_until = started + ring.MIN_GROW_GRACE
        while time.monotonic() < spin_until:
            os.sched_yield()
            i = self._try_acquire(seg)
            if i >= 0:
                return seg, i
        if self._on_full == "drop" and not self._lending:
            raise Dropped
        grow_failed = ""
        if self._on_full == "grow" and seg.nslots < self._max_slots and not self._loaned:
            # A reader preempted between pinning its new frame and dropping its old one
            # holds two pins for a scheduler slice or more (4 ms and over on a busy
            # machine). Wait that out for as long as growing would cost (ring.grow_grace):
            # a big ring's growth stalls this write for much longer; a small one's is cheap.
            h = seg.header
            slots = ring.grown_slots(seg.nslots, h.layout.nbytes, self._max_slots)
            grow_after = started + ring.grow_grace(slots, h.layout.stride)
            while time.monotonic() < grow_after:
                time.sleep(0.0005)
                i = self._try_acquire(seg)
                if i >= 0:
                    return seg, i
            # Pins that persist are views readers keep: give them more room (not under a
            # loan: the lent slot must stay in this segment to be published).
            try:
                seg = self._new_generation(h.dtype, h.shape, slots, h.layout.nbytes)
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
        grow_failed += f"; on_full={self._on_full!r} never grows the ring" if self._on_full != "grow" else ""
        raise WriterStalledError(
            f"tag {self._tag!r}: all {seg.nslots} slots stayed pinned by readers{lent} for "
            f"{self._write_timeout:g} s; readers hold on to old arrays - drop them, read with "
            f"copy=True, or raise max_slots{grow_failed}"
        )
