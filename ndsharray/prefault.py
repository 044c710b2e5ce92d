"""Map a new segment's slots into the writer's page tables before its first writes.

The daemon reserves every page of a segment (``posix_fallocate``), but each process that
maps it still takes one page fault per 4 KiB page on first touch: the first write into each
slot of a new generation cost 115-126 ms of CPU at 256 MiB (20 ms later) and 3-4 ms for a
1080p frame (0.6 ms later). ``MADV_POPULATE_WRITE`` (Linux 5.14+) fills the page tables in
one call, without a trap per page: populating and then copying took 20-30 % less of the
writing thread's CPU than copying through the faults (benchmarks/first_frame.py), so:

- the slot the first write will use is populated at once, in the writer's thread: that
  costs the write that created the generation less than the faults it saves;
- the other slots, in the order the writer will use them, in a bare background thread
  that waits for the first publish (started beside the first copy, it competed with it),
  then populates each slot from its end back, 2 MiB at a time without the GIL (ctypes lets
  it go): a write that comes meanwhile copies from the slot's start, faulting towards it,
  and each page is mapped once, not by both in step. A camera's second frame then costs
  what later ones do (1080p at 30 fps: 0.7 ms, not 3.1). A bare thread
  (``_thread.start_new_thread``): ``threading.Thread.start()`` waits until the new thread
  has run, which on a loaded machine took up to 124 ms of the creating write.

Where the kernel lacks ``MADV_POPULATE_WRITE`` (EINVAL), the fallback reads one byte per
page: on a shared tmpfs mapping a read fault maps the page writable, around its neighbours
too (fault-around), and a read never races with a write into the slot. Slots below
:data:`MIN_BYTES` are left alone (a few faults; not worth a call). ``NDSHARRAY_PREFAULT=0``
turns it off (to measure the difference: benchmarks/first_frame.py).
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import mmap
import os
import time
import weakref
from collections.abc import Sequence

import numpy as np

from . import _hot, _waitv
from .layout import OFF_PUBLISH, PAGED_SLOT

MADV_POPULATE_WRITE = 23
MIN_BYTES = PAGED_SLOT  # a slot this large is page strided (see segment.Layout.stride)
PIECE = 2 * 1024 * 1024  # the background thread populates this much per madvise call
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


def prefault_slots(mm: mmap.mmap, offsets: Sequence[int], length: int) -> None:
    """Populate the slot at ``offsets[0]`` now and the others in a background thread.

    Each slot's data starts a little into a page (layout.SLOT_SKEW): its range is widened
    to the page it starts in (madvise takes page-aligned addresses only; EINVAL otherwise).

    The thread keeps no reference to ``mm``: the mapping (and the fd an mmap object keeps)
    must go when the writer's last array does, not when the thread ends. It looks the
    mapping up through a weak reference before each piece and madvises by address: if the
    mapping went meanwhile, the kernel finds the range unmapped (ENOMEM), or mapped by
    another object, which populating changes nothing in.
    """
    if length < MIN_BYTES or not offsets or not enabled():
        return
    skew = offsets[0] % mmap.PAGESIZE
    offsets, length = [off - off % mmap.PAGESIZE for off in offsets], length + skew
    populate(mm, offsets[0], length)
    rest = list(offsets[1:])
    if not rest:
        return
    ref, addr = weakref.ref(mm), _hot.address(mm)
    job = (os.getpid(), object())
    _jobs.add(job)
    # A bare thread: threading.Thread.start() waits until the new thread has run, which on
    # a loaded machine took up to 124 ms of the write that created the generation.
    _thread.start_new_thread(_populate_later, (job, ref, addr, _publish_word(ref, addr), rest, length))


# The background populations of this process not finished yet: (pid, token) each, so that
# a forked child, which has none of its parent's threads, counts none of them. (Set adds
# and discards are atomic: no lock a fork could leave held.)
_jobs: set[tuple[int, object]] = set()


def running() -> int:
    """Background populations of this process not finished yet (tests, diagnostics)."""
    pid = os.getpid()
    return sum(1 for p, _ in list(_jobs) if p == pid)


def _populate_later(job: tuple[int, object], ref: weakref.ref[mmap.mmap], addr: int, start: int | None,
                    rest: list[int], length: int) -> None:
    try:
        # Not beside the first copy: populating then competed with it (256 MiB: the first
        # write took 0.4 s instead of 0.3). Wait (up to 1 s) for the first publish.
        deadline = time.monotonic() + 1.0
        while _publish_word(ref, addr) == start and time.monotonic() < deadline:
            time.sleep(0.002)
        for off in rest:
            # From the slot's end back, a piece at a time: a write that comes meanwhile
            # copies from the start, faulting its way towards us, so each page is mapped
            # once, by whichever gets there first (not by both, one behind the other).
            for piece in reversed(range(off, off + length, PIECE)):
                # Held across the madvise too (it runs without the GIL): were the mapping
                # collected meanwhile, the address could be another mapping's by then.
                held = ref()
                if held is None:
                    return
                size = min(PIECE, off + length - piece)
                if not (_Kernel.populate and _madvise(addr + piece, size)):
                    _touch(held, piece, size)
                del held
    finally:
        _jobs.discard(job)


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
