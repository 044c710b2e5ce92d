"""A segment far too big for its recent frames shrinks (issue 17; segment.py, "When a
segment shrinks"), with real reader processes: the capacity goes down, the old segment goes
(its name at once, its memory once no reader maps it), views of big frames stay intact, a
stream with an occasional big frame in every window never shrinks, and every frame of a
flat-out writer arrives right across the shrink.

The rule's window lasts 10 s by default; these tests set ``NDSHARRAY_SHRINK_WINDOW`` (read
when a writer opens) to a fraction of a second instead of sleeping. The rest of the rule
(256 writes per window, the quarter, the 1 MiB floor, 1.5x the largest frame) is the
production one."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import pytest
from conftest import SHM, Daemon, join_or_kill, wait_until

import ndsharray
from ndsharray import admin, framemeta

WINDOW = 0.2  # s, NDSHARRAY_SHRINK_WINDOW in these tests (the default is 10 s)
BIG = (512, 1024)  # float32: 2 MiB, a capacity the rule may shrink (>= 1 MiB)
BIG_VALUE = 7.0
CHECK_EVERY = 256  # writes between two checks of the rule (_hot.c, check_shrink)

Array = np.ndarray[Any, Any]


@pytest.fixture
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(framemeta.ENV_SHRINK_WINDOW, str(WINDOW))


def small(i: int) -> Array:
    """Small frame ``i``: 16..63 x 64 float32 (4-16 KiB, the largest every 48 frames), each
    element i plus its position."""
    rows = 16 + i % 48
    return (np.arange(rows * 64, dtype=np.float32) + i).reshape(rows, 64)


SMALL_MAX = small(47).nbytes  # 16 KiB: the largest frame of any window of small frames


def mapped_segments(pid: int | str, prefix: str) -> set[str]:
    """Names of the daemon's segments that process ``pid`` maps (deleted ones too)."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split("/dev/shm/")[1].split()[0] for line in f if f"/dev/shm/{prefix}" in line}


def _holder(endpoint: str, tag: str, prefix: str, conn: Any) -> None:
    """A reader process that holds the views it is told to hold and answers commands."""
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    held: list[tuple[Array, Array]] = []  # (view, a copy of what it showed when read)
    with ndsharray.NdShArray(tag, r_w="r") as r:
        conn.send("ready")
        while True:
            op = conn.recv()
            if op == "hold":  # the latest frame: keep its view
                ok, a = r.read(timeout=10)
                held.append((a, a.copy()))
                conn.send((ok, a.shape, str(a.dtype)))
            elif op == "check":  # do the held views still show what they showed?
                conn.send([v.shape == c.shape and v.dtype == c.dtype and np.array_equal(v, c) for v, c in held])
            elif op == "drop":
                held.clear()
                gc.collect()
                conn.send(None)
            elif op == "read":  # the latest frame (follows a new generation)
                ok, a = r.read(timeout=10)
                conn.send((ok, a.shape, float(a.flat[0]) if a.size else None))
                del a
            elif op == "maps":
                conn.send(mapped_segments("self", prefix))
            else:
                break
    conn.send("closed")


class Holder:
    def __init__(self, daemon: Daemon, tag: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_holder, args=(daemon.endpoint, tag, daemon.prefix, theirs))
        self.proc.start()
        assert self.ask(None, 60) == "ready"

    def ask(self, op: str | None, timeout: float = 30) -> Any:
        if op is not None:
            self.conn.send(op)
        assert self.conn.poll(timeout), f"the reader process did not answer {op!r}"
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send("exit")
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def shrunk(w: Any, tag: str, gen: int | None, capacity: int) -> bool:
    """Did the writer move to a generation of less capacity than ``capacity`` (and not just
    to a larger ring, which readers' pins may ask for)?"""
    return w.generation != gen and admin.tag_info(tag).capacity < capacity


def write_until_shrunk(w: Any, tag: str, frames: Any, deadline: float = 8) -> int:
    """Write ``frames(n)`` for n = 0, 1, ... until the writer's segment shrinks; returns how
    many. (The deadline is under the default window of 10 s: only the short window gets
    there.)"""
    gen, capacity, n = w.generation, admin.tag_info(tag).capacity, 0
    end = time.monotonic() + deadline
    while not shrunk(w, tag, gen, capacity):
        assert time.monotonic() < end, f"no smaller generation after {n} frames in {deadline} s"
        gen = w.generation  # (a grown ring: the same capacity)
        w.write(*frames(n))
        n += 1
    return n


def test_a_big_then_small_stream_shrinks_and_the_old_segment_goes(daemon: Daemon, short_window: None) -> None:
    h = Holder(daemon, "shrink")
    try:
        with ndsharray.NdShArray("shrink", r_w="w") as w:
            w.write(np.full(BIG, BIG_VALUE, np.float32))
            t_big = time.monotonic()
            before = admin.tag_info("shrink")
            assert before.capacity == 2 * 2**20  # the first generation: exactly the first frame
            assert h.ask("read")[1] == BIG  # the reader maps the big generation
            n = write_until_shrunk(w, "shrink", lambda i: (small(i),))
            took = time.monotonic() - t_big
            # Not before a window has passed and the window with the big frame was checked:
            # the window bounds how often a stream pays a generation.
            assert took >= WINDOW and n >= CHECK_EVERY, (took, n)
            after = admin.tag_info("shrink")
            assert after.capacity == SMALL_MAX + SMALL_MAX // 2  # 1.5x the window's largest
            assert after.generation == before.generation + 1 and after.segment != before.segment
            assert before.segment is not None and after.segment is not None
            # The old name goes at once (its memory lives on in whoever maps it) ...
            wait_until(lambda: not os.path.exists(os.path.join(SHM, before.segment or "")), what="old segment unlinked")
            assert os.path.exists(os.path.join(SHM, after.segment))
            assert before.segment not in mapped_segments(os.getpid(), daemon.prefix)  # (the writer let go)
            # ... and the reader lets go of the old mapping when it follows the new generation.
            assert before.segment in h.ask("maps")
            ok, shape, first = h.ask("read")
            assert ok and shape == small(n - 1).shape and first == n - 1
            assert h.ask("maps") == {after.segment}
            # The writer goes on in the small segment: no further generation.
            for i in range(n, n + 3 * CHECK_EVERY):
                w.write(small(i))
            assert w.generation == after.generation
    finally:
        h.stop()


def test_a_view_of_a_big_frame_stays_intact_across_the_shrink(daemon: Daemon, short_window: None) -> None:
    h = Holder(daemon, "keep")
    try:
        with ndsharray.NdShArray("keep", r_w="w") as w:
            w.write(np.full(BIG, BIG_VALUE, np.float32))
            ok, shape, dtype = h.ask("hold")
            assert ok and shape == BIG and dtype == "float32"
            gen = w.generation
            assert gen is not None
            n = write_until_shrunk(w, "keep", lambda i: (small(i),))
            assert admin.tag_info("keep").capacity < 2 * 2**20 // 4
            for i in range(n, n + 1000):  # the new generation's slots turn over many times
                w.write(small(i))
            assert w.generation == gen + 1
            assert h.ask("check") == [True]  # shape, dtype and every element as read
            h.ask("drop")
    finally:
        h.stop()


def test_an_occasional_big_frame_in_every_window_keeps_the_segment(daemon: Daemon, short_window: None) -> None:
    """No flapping: a big frame every 64 writes is in every window (>= 256 writes), so the
    rule never asks for a smaller generation that the next big frame would grow again."""
    h = Holder(daemon, "flap")
    try:
        with ndsharray.NdShArray("flap", r_w="w") as w:
            big = np.full(BIG, BIG_VALUE, np.float32)
            w.write(big)
            gen, capacity = w.generation, admin.tag_info("flap").capacity
            start, i = time.monotonic(), 0
            # Several windows by both measures: time and checks of the rule.
            while i < 8 * CHECK_EVERY or time.monotonic() - start < 5 * WINDOW:
                i += 1
                w.write(big if i % 64 == 0 else small(i))
            assert w.generation == gen, f"the segment changed generation in {i} writes"
            assert admin.tag_info("flap").capacity == capacity
            ok, shape, _ = h.ask("read")
            assert ok and shape in (BIG, small(i).shape)
    finally:
        h.stop()


# ---- a flat-out writer across shrinks and growths ----------------------------------------


def frame(i: int) -> Array:
    """Frame ``i`` of the flat-out stream, identified by its metadata: big frames of several
    shapes, then small ones (0-d, empty, a dtype change at the same byte size among them),
    then big again, then small: two shrinks and a growth in between."""
    kind = i % 5
    if kind == 0:
        return np.array(float(i))  # 0-d
    if kind == 1:
        return np.zeros((0, 6), np.float32)  # empty
    if kind == 2:
        return small(i)
    if kind == 3:
        return small(i).view(np.int32)  # the same bytes as a float32 frame, another dtype
    return (np.arange(64 * (i % 7 + 1), dtype=np.uint8) + np.uint8(i % 256)).reshape(-1, 8)


def big_frame(i: int) -> Array:
    rows = 256 + (i * 37) % 257  # 1-2 MiB, growing and shrinking
    return np.full((rows, 1024), i % 1000, np.float32)


def _verifier(endpoint: str, hoard: int, q: Any) -> None:
    """Read until the writer ends; check each frame against what its index says."""
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    bad: list[Any] = []
    seen = 0
    segments: set[str | None] = set()
    kept: list[tuple[Array, Array]] = []
    with ndsharray.NdShArray("flat", r_w="r") as r:
        q.put("ready")
        last = -1
        while True:
            ok, a = r.read(timeout=30)
            if not ok:
                break  # the writer closed (or nothing for 30 s: then seen is short)
            meta = r.meta
            if not isinstance(meta, dict):
                bad.append(("no metadata", meta))
                break
            i = int(meta["i"])
            want = big_frame(i) if meta["big"] else frame(i)
            if a.dtype != want.dtype or a.shape != want.shape or not np.array_equal(a, want) or i <= last:
                bad.append((i, str(a.dtype), a.shape, str(want.dtype), want.shape))
            segments.add(r.ndarray_mmap_name and r.ndarray_mmap_name.split(":")[0])
            last = i
            seen += 1
            if hoard:
                kept.append((a, want))  # views held across the shrinks keep their frames
                del kept[:-hoard]
        for a, want in kept:
            if a.shape != want.shape or not np.array_equal(a, want):
                bad.append(("kept view changed", a.shape, want.shape))
        kept.clear()
    q.put((seen, len(segments), len(bad), bad[:5]))


def test_every_frame_stays_right_across_shrinks_under_a_flat_out_writer(daemon: Daemon, short_window: None) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    readers = [ctx.Process(target=_verifier, args=(daemon.endpoint, hoard, q)) for hoard in (0, 4)]
    for p in readers:
        p.start()
    capacities = []
    try:
        assert [q.get(timeout=60) for _ in readers] == ["ready", "ready"]
        with ndsharray.NdShArray("flat", r_w="w") as w:
            i = 0
            for _phase in range(2):
                for _ in range(300):  # big frames: a generation of >= 1 MiB, grown with headroom
                    w.write(big_frame(i), meta={"i": i, "big": True})
                    i += 1
                capacities.append(admin.tag_info("flat").capacity)
                # small frames flat out until the segment shrinks
                i += write_until_shrunk(w, "flat", lambda n, i=i: (frame(i + n), {"i": i + n, "big": False}))
                for _ in range(2000):  # and on in the small generation
                    w.write(frame(i), meta={"i": i, "big": False})
                    i += 1
                capacities.append(admin.tag_info("flat").capacity)
        results = [q.get(timeout=120) for _ in readers]
    finally:
        join_or_kill(readers)
    assert capacities[0] >= 2**20 and capacities[1] < capacities[0] // 4, capacities
    assert capacities[2] >= 2**20 and capacities[3] < capacities[2] // 4, capacities
    for seen, nsegments, nbad, bad in results:
        assert nbad == 0, bad
        assert nsegments >= 3, f"a reader saw {nsegments} segments: not across the shrinks"
        assert seen > 0


def test_a_bad_shrink_window_names_the_variable(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(framemeta.ENV_SHRINK_WINDOW, "soon")
    with pytest.raises(ValueError, match=r"NDSHARRAY_SHRINK_WINDOW='soon' is not a number of seconds"):
        ndsharray.NdShArray("bad", r_w="w")
    monkeypatch.setenv(framemeta.ENV_SHRINK_WINDOW, "0.5")
    with ndsharray.NdShArray("bad", r_w="w") as w:  # the tag was not taken by the failed one
        w.write(np.zeros(3))
