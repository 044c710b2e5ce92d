"""Map a new segment's slots into the writer's page tables before its first writes.

The daemon reserves every page of a segment (``posix_fallocate``), but each process that
maps it still takes one page fault per 4 KiB page on first touch: the first write into each
slot of a new generation paid 0.59-0.83 s for 256 MiB (0.02 s later) and 3-9 ms for a 1080p
frame (0.4 ms later). ``MADV_POPULATE_WRITE`` (Linux 5.14+) fills the page tables in one
call, several times faster than faulting page by page (256 MiB: 0.07 s), so:

- the slot the first write will use is populated at once, in the writer's thread: that
  delays the write that created the generation by less than the faults it saves;
- the other slots of slots of 16 MiB and more, in the order the writer will use them, in
  a short-lived thread: the ``madvise`` runs without the GIL (ctypes lets it go). Smaller
  slots fault on their first write as before (the thread cost the first write more).

Where the kernel lacks ``MADV_POPULATE_WRITE`` (EINVAL), the fallback reads one byte per
page: on a shared tmpfs mapping a read fault maps the page writable, around its neighbours
too (fault-around), and a read never races with a write into the slot. Slots below
:data:`MIN_BYTES` are left alone (a few faults; not worth a call). ``NDSHARRAY_PREFAULT=0``
turns it off (to measure the difference: benchmarks/first_frame.py).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np

from . import _hot, _waitv
from .layout import OFF_PUBLISH

MADV_POPULATE_WRITE = 23
MIN_BYTES = 64 * 1024  # a slot this large is page aligned (see segment.Layout.stride)
# The other slots go to a thread only from this size: for smaller ones, starting the thread
# and populating beside the first copy delayed that first write (1080p: +2.4 ms, median of
# 15 alternating trials) by more than the faults it saved the second (-2 ms).
THREAD_MIN_BYTES = 16 * 1024 * 1024
ENV = "NDSHARRAY_PREFAULT"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


class _Kernel:
    populate = True  # until the kernel says EINVAL: then touch pages instead


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def _madvise(addr: int, length: int) -> bool:
    """MADV_POPULATE_WRITE at ``addr``; False where the kernel lacks it (then the caller
    touches the pages instead). Best effort: any other failure means the writes fault as
    before (ENOMEM, EFAULT: the file was shrunk; the write then says so, or faults)."""
    if _libc.madvise(addr, length, MADV_POPULATE_WRITE) == 0:  # (without the GIL)
        return True
    if ctypes.get_errno() != errno.EINVAL:
        return True
    _Kernel.populate = False
    return False


def _touch(mm: mmap.mmap, offset: int, length: int) -> None:
    pages = np.frombuffer(mm, np.uint8, length, offset)[:: mmap.PAGESIZE]
    int(pages.sum())  # one read per page; the sum is only there to make numpy read


def populate(mm: mmap.mmap, offset: int, length: int) -> None:
    """Map ``length`` bytes of ``mm`` from ``offset`` (page aligned) into our page tables,
    writable."""
    if length <= 0:
        return
    if not (_Kernel.populate and _madvise(_hot.address(mm) + offset, length)):
        _touch(mm, offset, length)


def prefault_slots(mm: mmap.mmap, offsets: Sequence[int], length: int) -> threading.Thread | None:
    """Populate the slot at ``offsets[0]`` now and the others in a background thread
    (returned, for tests).

    The thread keeps no reference to ``mm``: the mapping (and the fd an mmap object keeps)
    must go when the writer's last array does, not when the thread ends. It looks the
    mapping up through a weak reference before each slot and madvises by address: if the
    mapping went meanwhile, the kernel finds the range unmapped (ENOMEM), or mapped by
    another object, which populating changes nothing in.
    """
    if length < MIN_BYTES or not offsets or not enabled():
        return None
    populate(mm, offsets[0], length)
    rest = list(offsets[1:])
    if not rest or length < THREAD_MIN_BYTES:
        return None
    ref, addr = weakref.ref(mm), _hot.address(mm)
    start = _publish_word(ref, addr)

    def run() -> None:
        # Not beside the first copy: populating then competed with it (256 MiB: the first
        # write took 0.4 s instead of 0.3). Wait (up to 1 s) for the first publish.
        deadline = time.monotonic() + 1.0
        while _publish_word(ref, addr) == start and time.monotonic() < deadline:
            time.sleep(0.002)
        for off in rest:
            if _Kernel.populate and ref() is not None and _madvise(addr + off, length):
                continue
            held = ref()  # the fallback reads through the mapping: hold it meanwhile
            if held is not None:
                _touch(held, off, length)
            del held

    t = threading.Thread(target=run, name="ndsharray-prefault", daemon=True)
    t.start()
    return t


def _publish_word(ref: weakref.ref[mmap.mmap], addr: int) -> int | None:
    """The low half of the segment's publish word (it moves with every publish); None once
    the mapping is gone. Held while loaded: never a load from an unmapped address."""
    held = ref()
    if held is None:
        return None
    value = _waitv.load(addr + OFF_PUBLISH)
    del held
    return value


def slot_order(nslots: int, latest: int) -> list[int]:
    """The slots in the order a writer takes them (see _hot.c, writer_order): after the
    latest, round the ring; slot 0 first in a segment nobody published in yet."""
    first = latest + 1 if latest >= 0 else 0
    return [(first + k) % nslots for k in range(nslots) if latest < 0 or (first + k) % nslots != latest]
