"""Frames whose dtype and shape change on every write, with per-frame metadata (issues 17
and 14), through the public API: a flat-out writer in one process, readers in others,
across capacity growth, ring growth and a daemon restart; every frame checked."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, join_or_kill, wait_until

import ndsharray
from ndsharray import admin, config
from ndsharray.replies import TagInfo

N = 1500
# Frames the writer writes in step with the hoarding reader (it reads each before the next
# is written): it then holds six consecutive frames, within one generation, and the ring
# must grow. Flat out throughout, the writer could outrun it through capacity generations
# on a busy machine, and the ring then never grew (seen once in a full run under load).
IN_STEP = (range(N // 4, N // 4 + 40), range(3 * N // 4, 3 * N // 4 + 40))


def frame(i: int) -> tuple[np.ndarray[Any, Any], Any]:
    """Frame ``i`` and its metadata: 0-d, empty, growing boxes, a dtype change at the same
    byte size, 8 dimensions, other byte orders; the index is in the metadata (or, for the
    frames that carry none, in the first element)."""
    kind = i % 7
    grow = 1 + i // 4  # the largest frames grow: 24 B to 9 KB, a generation with headroom now and then
    if kind == 0:
        a: np.ndarray[Any, Any] = np.array([i, grow], np.int64)  # no metadata: i in a[0]
        return a, None
    if kind == 1:
        a = np.array(i * 0.5)  # 0-d
    elif kind == 2:
        a = np.zeros((0, 6), np.float32)  # empty
    elif kind == 3:
        a = (np.arange(grow * 6, dtype=np.float32) + i).reshape(grow, 6)  # N x 6 boxes
    elif kind == 4:
        a = (np.arange(grow * 6, dtype=np.int32) + i).reshape(grow, 6)  # same bytes, other dtype
    elif kind == 5:
        a = np.full((2, 1, 3, 1, 1, 2, 1, 2), i % 251, np.uint8)  # 8 dims
    else:
        a = np.arange(grow, dtype=">u2") + np.uint16(i % 1000)  # big-endian
    meta: Any = {"i": i, "shape": list(a.shape)} if i % 2 else f"i={i}".encode()
    return a, meta


def index_of(a: np.ndarray[Any, Any], meta: Any) -> int:
    if meta is None:
        return int(a[0])
    if isinstance(meta, dict):
        return int(meta["i"])
    return int(meta.decode().split("=")[1])


def _reader(endpoint: str, hoard: int, q: Any, progress: Any) -> None:
    """Read until the last frame; check each frame read against frame(index). What it
    raises goes to the parent too (which then fails at once, with it)."""
    try:
        _read_all(endpoint, hoard, q, progress)
    except BaseException:
        q.put(("error", traceback.format_exc()))
        raise


def _read_all(endpoint: str, hoard: int, q: Any, progress: Any) -> None:
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    bad: list[Any] = []
    seen = 0
    kept: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    with ndsharray.NdShArray("var", r_w="r") as r:
        q.put("ready")
        last = -1
        while last < N - 1:
            ok, a = r.read(timeout=30)
            if not ok:
                bad.append("timeout")
                break
            meta = r.meta
            i = index_of(a, meta)
            want, want_meta = frame(i)
            if (a.dtype != want.dtype or a.shape != want.shape or not np.array_equal(a, want)
                    or meta != want_meta or i <= last):
                bad.append((i, str(a.dtype), a.shape, str(want.dtype), want.shape, meta, want_meta))
            last = i
            seen += 1
            if hoard:
                progress.value = i  # (the writer keeps in step with this reader in IN_STEP)
                kept.append((a, want))  # views held: the ring must grow, old views keep their shape
                del kept[:-hoard]
        for a, want in kept:
            if a.shape != want.shape or not np.array_equal(a, want):
                bad.append(("kept view changed", a.shape, want.shape))
        kept.clear()
    q.put((seen, len(bad), bad[:5]))


def _answers(q: Any, procs: list[Any], n: int, timeout: float) -> list[Any]:
    """``n`` answers of the reader processes; a reader's error or death fails the test at
    once, with its traceback, instead of after ``timeout``."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            died = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not died, f"a reader process exited with {died} and said nothing"
            assert time.monotonic() < deadline, f"the readers gave {len(got)} of {n} answers in {timeout} s"
            continue
        assert not (isinstance(item, tuple) and item[0] == "error"), f"a reader process failed:\n{item[1]}"
        got.append(item)
    return got


def _run(endpoint: str, restart: Any = None) -> tuple[list[Any], TagInfo, TagInfo, int]:
    """The readers' results, the tag halfway (before ``restart``) and at the end, and the
    most slots any of its generations had (looked up at each change of generation: the
    last generation may come too late in the stream for the hoarding reader to pin two of
    its slots, and so start again from three)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    progress = ctx.Value("q", -1)  # the last frame the hoarding reader read
    readers = [ctx.Process(target=_reader, args=(endpoint, hoard, q, progress)) for hoard in (0, 6)]
    for p in readers:
        p.start()
    try:
        assert _answers(q, readers, 2, 60) == ["ready", "ready"]
        most, gen = 0, None
        with ndsharray.NdShArray("var", r_w="w") as w:
            for i in range(N):
                a, meta = frame(i)
                w.write(a, meta=meta)
                if any(i in span for span in IN_STEP):
                    wait_until(lambda i=i: progress.value >= i, 30, f"the hoarding reader to read frame {i}")
                if w.generation != gen:
                    gen, most = w.generation, max(most, admin.tag_info("var").slots)
                if i == N // 2:
                    mid = admin.tag_info("var")
                    if restart is not None:
                        restart()
            end = admin.tag_info("var")
            results = _answers(q, readers, 2, 120)
    finally:
        join_or_kill(readers)
    return results, mid, end, max(most, end.slots)


def check_growth(mid: TagInfo, end: TagInfo, most_slots: int) -> None:
    """The stream made generations of both kinds, some after the halfway mark (and so after
    a restart there): larger slots (the frames grew past the capacity, from 16 bytes) and
    more of them (the reader that holds six views pins more slots than the first three)."""
    assert 16 < mid.capacity < end.capacity, (mid.capacity, end.capacity)
    assert end.generation > mid.generation
    assert most_slots > 3, f"the ring never grew: at most {most_slots} slots"


def test_every_frame_arrives_with_its_own_dtype_shape_content_and_metadata(daemon: Daemon) -> None:
    results, mid, end, most_slots = _run(daemon.endpoint)
    for seen, nbad, bad in results:
        assert nbad == 0, bad
        assert seen > 0
    check_growth(mid, end, most_slots)


def test_frames_stay_right_across_a_daemon_restart(crashable: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")  # (the test starts the successor itself)

    def restart() -> None:
        assert crashable.proc is not None
        crashable.proc.kill()
        crashable.proc.wait()
        crashable.start()

    results, mid, end, most_slots = _run(crashable.endpoint, restart)
    for seen, nbad, bad in results:
        assert nbad == 0, bad
        assert seen > 0
    check_growth(mid, end, most_slots)


def test_a_shape_change_within_capacity_needs_no_new_segment(daemon: Daemon) -> None:
    """Same segment (no daemon call, no mapping), but ndarray_mmap_name still changes with
    every change of shape or dtype, as ndsharray 1.x documents it."""
    with ndsharray.NdShArray("cap", np.zeros((720, 1280, 3), np.uint8), "w") as w, \
            ndsharray.NdShArray("cap", r_w="r") as r:
        seg, gen = w.ndarray_mmap_name, w.generation
        assert seg is not None and gen is not None
        assert r.read()[0]
        names = {w.ndarray_mmap_name}
        for shape in [(480, 640, 3), (720, 1280, 3), (10, 6), ()]:
            w.write(np.ones(shape, np.uint8))
            ok, a = r.read()
            assert ok and a.shape == shape
            assert w.generation == gen
            names.add(w.ndarray_mmap_name)
            assert r.ndarray_mmap_name == w.ndarray_mmap_name
        assert len(names) == 5 and all(n is not None and n.split(":")[0] == seg for n in names)
        w.write(np.ones((721, 1280, 3), np.uint8))  # more than the capacity: a generation
        assert w.generation == gen + 1
        assert r.read()[1].shape == (721, 1280, 3)


def test_metadata_too_large_names_its_size_and_the_limit(daemon: Daemon) -> None:
    with ndsharray.NdShArray("m", r_w="w", meta_capacity=64) as w:
        with pytest.raises(ValueError, match=r"meta is 100 bytes, more than the 64 bytes"):
            w.write(np.zeros(3), meta=b"x" * 100)
        with pytest.raises(TypeError, match="dict"):
            w.write(np.zeros(3), meta=[1, 2])  # type: ignore[arg-type]
        w.write(np.zeros(3), meta={"exposure": 0.01})
        with ndsharray.NdShArray("m", r_w="r") as r:
            assert r.read()[0] and r.meta == {"exposure": 0.01}
            with w.loan(shape=(2,), dtype=np.float32, meta=b"loaned") as buf:
                buf[:] = 7
            ok, a = r.read()
            assert ok and a.tolist() == [7, 7] and r.meta == b"loaned"
            w.write(np.zeros(3))
            assert r.read()[0] and r.meta is None


def test_a_long_dtype_takes_the_slow_path_and_reads_right(daemon: Daemon) -> None:
    """A structured dtype and a 9-dimensional frame cannot be described by a slot: they get
    a generation of their own, and readers still see each frame right."""
    st = np.zeros(3, [("x", "<f4"), ("y", "<i2")])
    st["x"] = [1, 2, 3]
    nine = np.arange(2 ** 9, dtype=np.uint8).reshape((2,) * 9)
    with ndsharray.NdShArray("slow", r_w="w") as w, ndsharray.NdShArray("slow", r_w="r") as r:
        for a in [st, np.arange(4.0), nine, st, np.arange(3, dtype=np.int16)]:
            w.write(a, meta={"n": a.ndim})
            ok, got = wait_until(lambda: (lambda t: t if t[0] else None)(r.read()), what="a frame")
            assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
            assert r.meta == {"n": a.ndim}
