"""How many slots a tag's ring gets: enough for a reader to hold a frame while the writer
goes on, without tripling the memory of very large arrays.

A segment costs its slot count times the array's size in ``/dev/shm``. Three slots let a
writer alternate between two while a reader holds the third (the latest it read); two are
enough while readers keep up (each drops its frame when it reads the next). Above
:data:`BIG_ARRAY_BYTES` an array starts with two slots (2x its size, as near the 1x of
ndsharray 1.1.4 as a ring that never tears gets), and the ring grows one slot at a time when
readers do hold frames, where smaller arrays double.

Growing maps the new ring beside the old one until the writer switches, so a 2-slot ring
of a big array needs room for 5 arrays at that moment. Where ``/dev/shm`` has room for 3
but not 5, a 2-slot start would leave a writer whose reader holds a frame with nowhere to
go (WriterStalledError) where 3 slots from the start never need to grow: such arrays start
with 3.
"""

from __future__ import annotations

#: Arrays larger than this start with 2 slots instead of 3 (``slots=None``, the default).
BIG_ARRAY_BYTES = 64 * 1024 * 1024


def initial_slots(nbytes: int, max_slots: int, free_bytes: int | None = None) -> int:
    """The slot count of a new ring for arrays of ``nbytes`` when the user gave none;
    ``free_bytes``: what ``/dev/shm`` has free now (None: unknown, as if plenty)."""
    two = nbytes > BIG_ARRAY_BYTES
    if two and free_bytes is not None and 3 * nbytes <= free_bytes < 5 * nbytes:
        two = False  # room for 3 slots, but not for growing from 2 to 3
    return min(max_slots, 2 if two else 3)


def grown_slots(nslots: int, nbytes: int, max_slots: int) -> int:
    """The slot count of the next ring when readers pin every slot the writer could use."""
    return min(max_slots, nslots + 1 if nbytes > BIG_ARRAY_BYTES else nslots * 2)


#: What a new generation costs per byte of its ring: the daemon's ``posix_fallocate`` and
#: the writer's prefault, ~2 GB/s here (a 768 MiB ring: a 0.34-0.48 s write, 115-126 ms of
#: it the prefault of one 256 MiB slot; benchmarks/README.md).
GROW_BYTES_PER_S = 2e9
#: The shortest and longest wait for a pinned slot to free before the ring grows (seconds).
MIN_GROW_GRACE, MAX_GROW_GRACE = 0.002, 0.02


def grow_grace(slots: int, stride: int) -> float:
    """How long a writer whose every usable slot is pinned waits for one to free before it
    grows the ring to ``slots`` slots of ``stride`` bytes: as long as the growth would cost.

    A reader pins its new frame before it drops its old one, so for that moment (a scheduler
    slice or more when it is preempted in between) it holds two. Waiting never costs more
    than the growth it may avoid, and growing never costs more than the wait it ends: at
    worst twice the better choice (the ski-rental rule). So a 1 KiB ring, whose growth is a
    daemon call, grows after the 2 ms minimum, and the writer is not held up by a reader's
    every preemption; a 256 MiB ring, whose growth stalls the writer for ~0.4 s and takes
    another slot of ``/dev/shm``, waits up to 20 ms first."""
    return min(MAX_GROW_GRACE, max(MIN_GROW_GRACE, slots * stride / GROW_BYTES_PER_S))
