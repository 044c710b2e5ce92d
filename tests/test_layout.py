"""Segment layout 3: the layout table is the single source, and each slot carries its own
frame's dtype, shape and metadata (issues 12 item 6, 17, 14's metadata), at the segment
level: a real segment file, a writer in this process, readers in other processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import secrets
from typing import Any

import numpy as np
import pytest

from ndsharray import _hot, layout
from ndsharray.errors import CorruptSegmentError
from ndsharray.layout import META_BYTES, META_JSON, OFF_DROPPED, OFF_PUBLISH, ROW_SIZE, SLOT_ENTRY, SLOT_TABLE
from ndsharray.segment.files import segment_path
from ndsharray.segment.header import create_segment
from ndsharray.segment.reader import SegmentReader
from ndsharray.segment.writer import SegmentWriter


def test_the_c_code_uses_the_offsets_of_the_layout_table() -> None:
    layout.check_c_offsets(_hot.OFFSETS)  # what ndsharray.segment does at import
    assert set(_hot.OFFSETS) <= set(layout.c_offsets())
    # every offset Python uses is the table's
    assert OFF_PUBLISH == layout.HEADER_OFF["publish"] == 64
    assert layout.HEADER_OFF["dropped"] == OFF_DROPPED
    assert SLOT_ENTRY == 128 and ROW_SIZE == 64


def test_an_offset_that_differs_from_the_table_refuses_the_import() -> None:
    for name in _hot.OFFSETS:
        wrong = dict(_hot.OFFSETS, **{name: _hot.OFFSETS[name] + 8})
        with pytest.raises(ImportError, match=name):
            layout.check_c_offsets(wrong)


def _name() -> str:
    return f"nds-{os.getuid()}-{'f' * 10}-{secrets.token_hex(8)}"


def frames(n: int, seed: int) -> list[tuple[np.ndarray[Any, Any], Any]]:
    """A stream whose dtype or shape changes on every frame: 0-d, empty, growing, a dtype
    change at the same byte size; each with its metadata (bytes, a dict or None)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray[Any, Any], Any]] = []
    for k in range(n):
        kind = k % 6
        if kind == 0:
            a: np.ndarray[Any, Any] = np.array(k, dtype=np.int64)  # 0-d
        elif kind == 1:
            a = np.zeros((0, 6), np.float32)  # empty
        elif kind == 2:
            a = rng.random((1 + k % 50, 6)).astype(np.float32)  # growing boxes
        elif kind == 3:
            a = rng.integers(0, 2**31, (1 + k % 50, 6), dtype=np.int32)  # same bytes, other dtype
        elif kind == 4:
            a = rng.integers(0, 255, (2, 3, 4, 1, 1, 1, 1, 5), dtype=np.uint8)  # 8 dims
        else:
            a = np.arange(k % 40, dtype=">u2")  # non-native byte order
        meta: Any = None if k % 3 == 0 else ({"k": k, "shape": list(a.shape)} if k % 3 == 1 else
                                             f"raw{k}".encode())
        out.append((a, meta))
    return out


def _read_all(name: str, n: int, seed: int, q: Any) -> None:
    """In another process: read frames as they come; check each against the stream."""
    want = frames(n, seed)
    r = SegmentReader(name)
    last, seen = 0, 0
    bad: list[tuple[Any, ...]] = []
    kept = []
    try:
        while last < n:
            got = r.read_new(last)
            if got is None:
                r.wait(last, 1.0)
                continue
            assert not isinstance(got, int), got
            last = r._c.count
            a, meta = want[last - 1]
            m = r.meta
            got_meta = None if m is None else (json.loads(m[1]) if m[0] == META_JSON else m[1])
            if (got.dtype != a.dtype or got.shape != a.shape or not np.array_equal(got, a)
                    or got_meta != meta):
                bad.append((last, str(got.dtype), got.shape, str(a.dtype), a.shape))
            seen += 1
            if seen % 7 == 0:
                kept.append((got, a))  # views of earlier frames keep their own shape
        for got, a in kept:
            if got.shape != a.shape or not np.array_equal(got, a):
                bad.append(("kept", got.shape, a.shape))
        q.put((seen, bad[:5], len(bad)))
    finally:
        del kept
        r.close()


def test_every_frame_keeps_its_own_dtype_shape_and_metadata_across_processes() -> None:
    """A writer whose dtype or shape changes on every frame, within one segment (no new
    generation): readers in other processes get each frame with exactly its dtype, shape,
    content and metadata, and views they keep keep theirs."""
    name = _name()
    n, seed = 600, 7
    stream = frames(n, seed)
    cap = max(a.nbytes for a, _ in stream)
    create_segment(name, tag="var", dtype_text="'<f4'", shape=(0, 6), nslots=4,
                           generation=1, writer_pid=os.getpid(), capacity=cap, meta_capacity=256)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    w = SegmentWriter(name, variable=True)
    readers = [ctx.Process(target=_read_all, args=(name, n, seed, q)) for _ in range(2)]
    try:
        for p in readers:
            p.start()
        for a, meta in stream:
            data = None if meta is None else (json.dumps(meta).encode() if isinstance(meta, dict) else meta)
            kind = META_JSON if isinstance(meta, dict) else META_BYTES
            args = () if data is None else (data, kind)
            while True:
                count = w.fast.write(a, *args)
                if count > 0:
                    break
                assert count == -1, (count, a.dtype, a.shape)  # all pinned: try again
        results = [q.get(timeout=60) for _ in readers]
    finally:
        w.close()
        for p in readers:
            p.join(30)
        os.unlink(segment_path(name))
    for seen, bad, nbad in results:
        assert nbad == 0, bad
        assert seen > 0
    assert w.fast.shape_gen == n  # every frame changed dtype or shape


def test_the_general_path_describes_what_it_copied() -> None:
    """acquire + copy + describe + publish (loan() and the general write) give readers the
    frame's own shape; a publish without describe gives the header's."""
    name = _name()
    create_segment(name, tag="var", dtype_text="'<u2'", shape=(4, 5), nslots=3,
                           generation=1, writer_pid=os.getpid(), capacity=400, meta_capacity=16)
    w = SegmentWriter(name, variable=True)
    r = SegmentReader(name)
    try:
        i = w.try_acquire()
        buf = w.slot_array(i, np.dtype("<f8"), (7, 2))
        buf[...] = np.arange(14).reshape(7, 2)
        w.fast.describe(i, buf, b"m1")
        w.publish(i)
        got = r.read_new(0)
        assert got.dtype == np.float64 and got.shape == (7, 2) and got[6, 1] == 13
        assert r.meta == (META_BYTES, b"m1")
        i = w.try_acquire()
        w.slots[i][...] = 3
        w.publish(i)
        got2 = r.read_new(1)
        assert got2.dtype == np.uint16 and got2.shape == (4, 5) and (got2 == 3).all()
        assert r.meta is None
        assert got.shape == (7, 2)  # the earlier view kept its shape
        with pytest.raises(ValueError, match="does not fit"):
            i = w.try_acquire()
            w.fast.describe(i, np.zeros(51, np.float64))
        w.release(i)
        with pytest.raises(ValueError, match="does not fit"):
            i = w.try_acquire()
            w.fast.describe(i, np.zeros(1), b"x" * 17)
        w.release(i)
        assert w.fast.write(np.zeros(51, np.float64)) == 0  # over capacity: the general path
        del got, got2
    finally:
        r.close()
        w.close()
        os.unlink(segment_path(name))


def test_a_corrupt_slot_descriptor_is_an_error_not_a_crash() -> None:
    name = _name()
    create_segment(name, tag="var", dtype_text="'<u2'", shape=(4,), nslots=2,
                           generation=1, writer_pid=os.getpid(), meta_capacity=8)
    w = SegmentWriter(name, variable=True)
    r = SegmentReader(name)
    entry = SLOT_TABLE + SLOT_ENTRY * 0
    try:
        for field, off, value in [
            ("dimensions", layout.ENTRY_OFF["ndim"], bytes([9])),
            ("dtype", layout.ENTRY_OFF["dtype"], b"O".ljust(16, b"\0")),
            ("larger", layout.ENTRY_OFF["shape"], (10**6).to_bytes(8, "little")),
        ]:
            assert w.fast.write(np.arange(4, dtype="<u2")) > 0
            slot = w.publish_word() & 0xFF
            e = SLOT_TABLE + SLOT_ENTRY * slot
            w.mm[e + off : e + off + len(value)] = value
            pin = r.pin(r._c.count)
            assert isinstance(pin, _hot.Pin)
            with pytest.raises(CorruptSegmentError, match=field):
                r.view_of(pin)
            del pin
        assert w.fast.write(np.arange(4, dtype="<u2")) > 0
        slot = w.publish_word() & 0xFF
        e = SLOT_TABLE + SLOT_ENTRY * slot
        w.mm[e + 16 : e + 20] = (9).to_bytes(4, "little")  # metadata longer than its capacity
        assert r.read_new(r._c.count) == -4
        del entry
    finally:
        r.close()
        w.close()
        os.unlink(segment_path(name))
