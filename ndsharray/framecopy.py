"""Where big frames sit in a page: which slots are skewed, and where ``read(copy=True)`` of
a big frame puts its copy.

glibc's memcpy (x86) copies a block of at least its non-temporal threshold with
non-temporal stores, and that path is 15-20 % faster when the destination sits a few
cache lines ahead of the source within a page ((dst - src) mod 4096 = 176 or 192) than
when it sits at or just behind it (4K aliasing between its loads and stores). Below the
threshold (``rep movsb`` and the cached loops) the same placement is up to 19 % *slower*
(64-128 MiB here). Measured in benchmarks/README.md, "Where a big slot starts".

So a slot whose capacity is at least that threshold (:func:`skew_from`) gets its data
``layout.SLOT_SKEW`` (192) bytes into a page (the daemon decides when it plans a
generation; the header records it), where a numpy source (page + 16, malloc's header)
and a page-aligned one both copy fast; smaller slots stay page-aligned. And a copy out of
such a slot goes into a buffer one page larger, SLOT_SKEW past the source's page offset.

The threshold is glibc's own (``ld.so --list-tunables``, which applies GLIBC_TUNABLES),
asked once per daemon; where there is no such glibc (another libc, another
architecture) nothing is skewed. ``NDSHARRAY_SKEW_FROM`` (bytes) overrides it, read when
the daemon plans a generation (tests, benchmarks).
"""

from __future__ import annotations

import functools
import mmap
import os
import platform
import re
import subprocess
from typing import Any

import numpy as np

from .layout import SLOT_SKEW

ENV_SKEW_FROM = "NDSHARRAY_SKEW_FROM"
NEVER = 1 << 62  # a threshold no slot reaches
_LOADER = "/lib64/ld-linux-x86-64.so.2"
_TUNABLE = re.compile(r"glibc\.cpu\.x86_non_temporal_threshold:\s*(0x[0-9a-fA-F]+|\d+)")


def skew_from() -> int:
    """Slot capacity in bytes from which slots are skewed: glibc's non-temporal threshold,
    or ``NDSHARRAY_SKEW_FROM``. Raises ValueError naming the variable for a bad value."""
    env = os.environ.get(ENV_SKEW_FROM)
    if env is None:
        return _glibc_threshold()
    try:
        value = int(env)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{ENV_SKEW_FROM}={env!r} is not a number of bytes (0 or more): "
                         "unset it to use glibc's non-temporal copy threshold")
    return value


@functools.cache
def _glibc_threshold() -> int:
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists(_LOADER):
        return NEVER
    try:
        out = subprocess.run([_LOADER, "--list-tunables"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return NEVER
    m = _TUNABLE.search(out)
    return int(m.group(1), 0) if m else NEVER


def copy_frame(view: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An owned, writable, C-contiguous copy of the C-contiguous frame ``view``, which fills
    a skewed slot (so it is at least the non-temporal threshold; other frames take
    ``view.copy()``): the copy goes SLOT_SKEW bytes past the source's page offset (64-byte
    aligned, as the source is), into a uint8 buffer one page larger that becomes its
    ``base`` (``flags.owndata`` is then False; it shares memory with nothing else)."""
    buf = np.empty(view.nbytes + mmap.PAGESIZE, np.uint8)
    start = (view.ctypes.data + SLOT_SKEW - buf.ctypes.data) % mmap.PAGESIZE
    out: np.ndarray[Any, Any] = np.ndarray(view.shape, view.dtype, buffer=buf, offset=start)
    np.copyto(out, view, casting="no")
    return out
