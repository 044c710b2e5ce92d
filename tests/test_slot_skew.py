"""Where a slot's data sits in its page (layout.SLOT_SKEW), and where a big frame's copy goes.

Slots whose capacity reaches glibc's non-temporal copy threshold (framecopy.skew_from;
NDSHARRAY_SKEW_FROM here, so that 1 MiB slots stand for 256 MiB ones) start their data
SLOT_SKEW bytes into a page, others page-aligned (64 KiB and more) or 64-byte strided;
every view stays 64-byte aligned; the header records the data offset and a header that
says anything else is refused; the writer's prefault still populates whole pages;
``read(copy=True)`` of a frame filling a skewed slot lands SLOT_SKEW past the slot's page
offset (benchmarks/README.md, "Where a big slot starts").
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import segment_bytes_of, spy_segments, wait_until

import ndsharray
from ndsharray import _hot, framecopy, prefault
from ndsharray.dtypes import dtype_to_text
from ndsharray.errors import CorruptSegmentError
from ndsharray.layout import HEADER_OFF, PAGED_SLOT, SLOT_SKEW
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import parse_header, plan_layout

PAGE = mmap.PAGESIZE
U1 = dtype_to_text(np.dtype(np.uint8))


@pytest.fixture
def skew_from_64k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skew slots from 64 KiB (before the daemon starts: it plans the layouts)."""
    monkeypatch.setenv(framecopy.ENV_SKEW_FROM, str(PAGED_SLOT))


@pytest.mark.parametrize("frame, skew_env, skew", [
    (np.arange(1 << 18, dtype=np.float32).reshape(512, 512), True, SLOT_SKEW),  # 1 MiB, skewed
    (np.arange(1 << 18, dtype=np.float32).reshape(512, 512), False, 0),  # 1 MiB, below it
    (np.arange(100, dtype=np.complex128), True, 0),  # 1.6 KB (+ metadata): 64-byte strided
])
def test_slot_data_sits_where_the_layout_says_and_every_view_is_64_byte_aligned(
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, frame: np.ndarray,
        skew_env: bool, skew: int) -> None:
    # (Not the machine's own threshold: glibc's is 1-2 MiB on some machines.)
    monkeypatch.setenv(framecopy.ENV_SKEW_FROM, str(PAGED_SLOT if skew_env else 1 << 40))
    request.getfixturevalue("daemon")  # (started after the variable is set)
    made = spy_segments(monkeypatch)
    with ndsharray.NdShArray("cam/skew", r_w="w", slots=3) as w, \
            ndsharray.NdShArray("cam/skew", r_w="r") as r:
        w.write(frame)
        lay = made[-1].layout
        assert lay.skew == skew and lay.data_offset == lay.header_size + skew
        if lay.paged:
            assert [lay.slot_offset(i) % PAGE for i in range(lay.nslots)] == [skew] * lay.nslots
        where = {lay.slot_offset(i) % PAGE for i in range(lay.nslots)}
        for k in range(4):  # every slot at least once (the ring has 3)
            w.write(frame + k)
            ok, view = r.read()
            assert ok and np.array_equal(view, frame + k)
            assert view.ctypes.data % 64 == 0 and view.ctypes.data % PAGE in where
        with w.loan() as buf:
            assert buf.ctypes.data % 64 == 0 and buf.ctypes.data % PAGE in where
            buf[...] = frame
        with open(os.path.join(shm_dir(), made[-1].name), "rb") as f:
            head = f.read(lay.header_size)
        (recorded,) = struct.unpack_from("<I", head, HEADER_OFF["data_offset"])
        assert recorded == lay.data_offset


def test_slots_are_skewed_from_the_threshold_on_and_only_page_strided_ones() -> None:
    assert 0 < SLOT_SKEW < PAGE and SLOT_SKEW % 64 == 0  # off the page start, 64-byte aligned
    big = 1 << 20
    assert plan_layout("t", U1, (big,), 2, skew_from=big + 1).skew == 0
    at = plan_layout("t", U1, (big,), 2, skew_from=big)
    assert (at.skew, at.data_offset, at.stride % PAGE) == (SLOT_SKEW, at.header_size + SLOT_SKEW, 0)
    assert plan_layout("t", U1, (PAGED_SLOT - 1,), 2, skew_from=0).skew == 0  # 64-byte strided
    # The last slot's data and metadata fit the segment.
    meta = plan_layout("t", U1, (PAGED_SLOT,), 2, meta_capacity=4096, skew_from=0)
    assert meta.slot_offset(1) + meta.nbytes + meta.meta_capacity <= meta.total_size


def test_the_threshold_is_glibcs_unless_the_variable_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(framecopy.ENV_SKEW_FROM, "12345")
    assert framecopy.skew_from() == 12345
    monkeypatch.setenv(framecopy.ENV_SKEW_FROM, "lots")
    with pytest.raises(ValueError, match=framecopy.ENV_SKEW_FROM):
        framecopy.skew_from()
    monkeypatch.delenv(framecopy.ENV_SKEW_FROM)
    assert framecopy.skew_from() >= 0x4040  # glibc's (240 MiB here; its least is 0x4040), or never


def test_a_header_whose_data_offset_is_not_the_layouts_is_refused(skew_from_64k: None) -> None:
    lay, buf = segment_bytes_of(U1, (PAGED_SLOT,), 2)
    assert parse_header(buf, len(buf)).layout.data_offset == lay.header_size + SLOT_SKEW
    for wrong in (64, SLOT_SKEW + 64, PAGE):
        struct.pack_into("<I", buf, HEADER_OFF["data_offset"], lay.header_size + wrong)
        with pytest.raises(CorruptSegmentError, match="data offset"):
            parse_header(buf, len(buf), "nds-test-skew")


def test_the_writer_prefaults_whole_pages_of_skewed_slots(
        skew_from_64k: None, daemon: object, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    orig = prefault._madvise

    def spy(addr: int, length: int) -> bool:
        calls.append((addr, length))
        return orig(addr, length)

    monkeypatch.setattr(prefault, "_madvise", spy)
    made = spy_segments(monkeypatch)
    frame = np.ones((1 << 20,), np.uint8)
    with ndsharray.NdShArray("cam/skew-prefault", r_w="w", slots=3) as w:
        w.write(frame)
        wait_until(lambda: prefault.running() == 0, what="the background population to end")
        seg = made[-1]
        assert seg.layout.skew == SLOT_SKEW
        base = _hot.address(seg.mm)
        assert calls and all(addr % PAGE == 0 for addr, _ in calls)  # madvise takes nothing else
        covered: set[int] = set()
        for addr, length in calls:
            covered.update(range((addr - base) // PAGE, -(-(addr - base + length) // PAGE)))
        for i in range(seg.nslots):  # every page of every slot's frame
            off = seg.layout.slot_offset(i)
            assert set(range(off // PAGE, -(-(off + frame.nbytes) // PAGE))) <= covered


@pytest.mark.parametrize("skew_env", [True, False])
def test_a_copy_of_a_frame_filling_a_skewed_slot_sits_the_skew_past_it_and_is_an_ordinary_array(
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, skew_env: bool) -> None:
    monkeypatch.setenv(framecopy.ENV_SKEW_FROM, str(PAGED_SLOT if skew_env else 1 << 40))
    request.getfixturevalue("daemon")
    frame = np.arange(1 << 17, dtype=np.float64).reshape(-1, 1024)  # 1 MiB
    with ndsharray.NdShArray("cam/skew-copy", frame, r_w="w") as w, \
            ndsharray.NdShArray("cam/skew-copy", r_w="r") as r:
        w.write(frame)
        ok, view = r.read()
        assert ok
        w.write(frame)
        ok, copy = r.read(copy=True)
        assert ok and copy.dtype == frame.dtype and copy.shape == frame.shape
        assert copy.flags.writeable and copy.flags.c_contiguous and copy.flags.aligned
        assert np.array_equal(copy, frame) and not np.shares_memory(copy, view)
        slot_at = view.ctypes.data % PAGE  # (both slots of the ring sit alike)
        assert slot_at == (SLOT_SKEW if skew_env else 0)
        if skew_env:
            assert copy.ctypes.data % PAGE == (slot_at + SLOT_SKEW) % PAGE
        else:
            assert copy.flags.owndata  # a plain ndarray.copy()
        copy[0, 0] = -1.0  # it is the caller's: the slot is untouched
        assert view[0, 0] == 0.0


def test_a_daemon_refuses_to_start_with_a_bad_skew_threshold(folder: str) -> None:
    # (Before, it started, and each writer of a big array was refused with "field 'capacity'".)
    env = dict(os.environ, **{framecopy.ENV_SKEW_FROM: "lots"})
    done = subprocess.run([sys.executable, "-m", "ndsharrayd", "--endpoint", f"ipc://{folder}/d.sock"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"{framecopy.ENV_SKEW_FROM}='lots' is not a number of bytes" in done.stderr
