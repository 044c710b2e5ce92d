"""A new segment's slots are mapped into the writer's page tables before its first writes
(ndsharray/prefault.py): the first frames of a camera cost what later ones do."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import spy_segments, wait_until

import ndsharray
from ndsharray import prefault


def mapped_kib(name: str) -> int:
    """KiB of the segment ``name`` present in this process's page tables (Rss of its
    mappings, from /proc/self/smaps)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                ours = line.rstrip().endswith("/" + name)
            elif ours and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.mark.parametrize("enabled", [True, False])
def test_a_new_generation_is_in_the_writers_page_tables_before_it_writes(
        daemon: object, monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    if not enabled:
        monkeypatch.setenv(prefault.ENV, "0")
    frame = np.ones((4096, 4096), np.uint8)  # 16 MiB
    slot_kib = frame.nbytes // 1024
    made = spy_segments(monkeypatch)
    with ndsharray.NdShArray("cam/prefault", r_w="w", slots=3) as w:
        w.write(frame)  # creates the generation: slot 0 populated, 1 and 2 in the background
        seg = made[-1]
        wait_until(lambda: prefault.running() == 0, what="the background population to end")
        name = seg.name
        if enabled:
            # Every slot, though only slot 0 was written.
            assert mapped_kib(name) >= 3 * slot_kib
        else:
            assert mapped_kib(name) < 2 * slot_kib  # slot 0 only, by the write itself


def test_tiny_slots_are_left_to_fault_and_a_1080p_ring_is_populated_whole(daemon: object) -> None:
    with ndsharray.NdShArray("cam/small", np.ones(1000, np.uint8), r_w="w"):
        assert prefault.running() == 0  # (under MIN_BYTES: a few faults, no call)
    # A 1080p frame: its first slot at once, the others in the background after the first
    # publish (a camera's second frame costs what later ones do).
    frame = np.ones((1080, 1920, 3), np.uint8)
    with ndsharray.NdShArray("cam/1080p", frame, r_w="w", slots=3) as w:
        assert w.write_count == 1
        name = w.ndarray_mmap_name
        assert name is not None
        wait_until(lambda: prefault.running() == 0, what="the background population to end")
        assert mapped_kib(name.split(":")[0]) >= 3 * frame.nbytes // 1024


def test_slot_order_follows_the_writer() -> None:
    assert prefault.slot_order(3, -1) == [0, 1, 2]
    assert prefault.slot_order(3, 0) == [1, 2]
    assert prefault.slot_order(4, 2) == [3, 0, 1]


def test_the_fallback_touches_every_page(tmp_path: object) -> None:
    """Where the kernel has no MADV_POPULATE_WRITE: one read per page."""
    import mmap

    path = f"/dev/shm/ndst-prefault-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        mm = mmap.mmap(fd, 1 << 20)
        saved = prefault._Kernel.populate
        prefault._Kernel.populate = False
        try:
            prefault.populate(mm, 0, 1 << 20)
        finally:
            prefault._Kernel.populate = saved
        assert mapped_kib(os.path.basename(path)) == 1024
        mm.close()
    finally:
        os.close(fd)
        os.unlink(path)
