"""A read that fails (a corrupt publish word, a copy that raises, a segment unlinked under
it, a close from another thread) raises a clear error and leaves no pin and no fd behind.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from conftest import Daemon

import ndsharray
from ndsharray.layout import OFF_PUBLISH
from ndsharray.segment.files import segment_path
from ndsharray.segment.reader import SegmentReader


def test_corrupt_publish_word_raises_instead_of_spinning(daemon: Daemon) -> None:
    with ndsharray.NdShArray("bad", np.zeros(4), "w") as w, ndsharray.NdShArray("bad", r_w="r") as r:
        assert r.read()[0]
        w.write(np.ones(4))
        path = segment_path(w.ndarray_mmap_name)  # type: ignore[arg-type]
        fd = os.open(path, os.O_RDWR)
        try:
            pub = int.from_bytes(os.pread(fd, 8, OFF_PUBLISH), "little")
            # A count the named slot does not hold:
            os.pwrite(fd, (((pub >> 8) + 1000) << 8 | (pub & 0xFF)).to_bytes(8, "little"), OFF_PUBLISH)
            with pytest.raises(ndsharray.CorruptSegmentError, match="but that slot holds another write"):
                r.read()
            # A slot past the table (the C side must not index by it):
            os.pwrite(fd, (((pub >> 8) + 2000) << 8 | 200).to_bytes(8, "little"), OFF_PUBLISH)
            with pytest.raises(ndsharray.CorruptSegmentError, match="names slot 200 of 3"):
                r.read()
        finally:
            os.close(fd)


def test_a_failed_copy_read_gives_its_pin_back(daemon: Daemon, monkeypatch: Any) -> None:
    # MemoryError copying a big frame (or a KeyboardInterrupt landing there) must not leave
    # the slot pinned: with 2 slots the writer would stall for good.
    with ndsharray.NdShArray("cp", np.zeros(8), "w", slots=2, max_slots=2, write_timeout=0.5) as w, \
            ndsharray.NdShArray("cp", r_w="r") as r:
        assert r.read(copy=True)[0]
        w.write(np.ones(8))

        def failing_copy(self: SegmentReader, i: int) -> Any:
            raise MemoryError("simulated: the copy of a big frame fails")

        monkeypatch.setattr(SegmentReader, "copy", failing_copy)
        with pytest.raises(MemoryError):
            r.read(copy=True)
        monkeypatch.undo()
        for k in range(3):
            w.write(np.full(8, float(k)))  # both slots are free again
        assert r.read(copy=True)[1].tolist() == [2.0] * 8


def test_a_segment_unlinked_between_the_two_opens_is_gone_and_leaks_nothing(
        daemon: Daemon, monkeypatch: Any) -> None:
    with ndsharray.NdShArray("race", np.zeros(4), "w") as w:
        name = w.ndarray_mmap_name
        assert name is not None
        real_open = os.open
        opened: list[int] = []

        def open_then_lose_the_file(path: Any, flags: int, *args: Any) -> int:
            if opened:  # the second open: the daemon unlinked the segment just before
                raise FileNotFoundError(path)
            fd = real_open(path, flags, *args)
            opened.append(fd)
            return fd

        monkeypatch.setattr("ndsharray.segment.mapping.os.open", open_then_lose_the_file)
        with pytest.raises(ndsharray.SegmentGoneError):
            SegmentReader(name)
        monkeypatch.undo()
        with pytest.raises(OSError):
            os.fstat(opened[0])  # the first fd was closed


def test_a_reader_closed_while_it_opens_the_next_generation_keeps_nothing_open(
        daemon: Daemon, monkeypatch: Any) -> None:
    # Another thread closes the reader while this one opens the segment of a new generation
    # (simulated by closing it inside the open): the new segment's fd and row must go too.
    from ndsharray import finder

    def fds_on(name: str) -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
                    out.append(fd)
            except OSError:
                pass
        return out

    with ndsharray.NdShArray("gen2", np.zeros(4), "w") as w:
        r = ndsharray.NdShArray("gen2", r_w="r")
        assert r.read()[0]
        w.write(np.zeros(5))  # a new generation: the reader's next read opens it
        new = w.ndarray_mmap_name
        assert new is not None
        writers_fds = fds_on(new)
        real = SegmentReader  # (what the finder opens)

        def open_while_closed(name: str) -> SegmentReader:
            seg = real(name)
            r.close()
            return seg

        monkeypatch.setattr(finder, "SegmentReader", open_while_closed)
        with pytest.raises(ndsharray.HandleClosedError, match="closed while it read"):
            r.read()
        assert fds_on(new) == writers_fds
        monkeypatch.setattr(finder, "SegmentReader", real)
        row = next(t for t in ndsharray.list_tags() if t.tag == "gen2")
        assert all(s.get("pid") != os.getpid() for s in row.reader_stats)
