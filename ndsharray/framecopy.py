"""``read(copy=True)``: an owned copy of a frame, placed where a big copy runs fast.

glibc's memcpy of a frame past its non-temporal threshold (240 MiB on the benchmark
machine) is 15-25 % slower when the destination sits at, or just behind, the source's
offset within a page (4K aliasing between its loads and stores) than when it sits a few
cache lines ahead: benchmarks/README.md, "Where a big slot starts". A big slot's data sits
at page + layout.SLOT_SKEW and numpy puts a fresh array's data at page + 16 (malloc's
header), 176 bytes behind it: the slow case. So a big frame's copy goes into a buffer one
page larger, at an offset SLOT_SKEW past the source's within a page (64-byte aligned
whatever the source's alignment, as the source is). Below BIG bytes a copy is cached or
short, where the offset was measured to make no difference: a plain ``ndarray.copy()``.

The big copy is a normal writable, C-contiguous array of the frame's dtype and shape; its
``base`` is the uint8 buffer it lives in (``flags.owndata`` is False), which shares memory
with nothing else.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from .layout import SLOT_SKEW

BIG = 16 << 20  # bytes from which a copy is placed (far below any glibc's non-temporal threshold)


def copy_frame(view: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An owned, writable, C-contiguous copy of the C-contiguous frame ``view``."""
    n = view.nbytes
    if n < BIG:
        return view.copy()
    buf = np.empty(n + mmap.PAGESIZE, np.uint8)
    start = (view.ctypes.data + SLOT_SKEW - buf.ctypes.data) % mmap.PAGESIZE
    out: np.ndarray[Any, Any] = np.ndarray(view.shape, view.dtype, buffer=buf, offset=start)
    np.copyto(out, view, casting="no")
    return out
