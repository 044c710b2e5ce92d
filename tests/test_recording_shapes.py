"""ndsharray record keeps every frame's shape, dtype and metadata; replay publishes them
again (issues 17 and 14)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
from conftest import Daemon

import ndsharray
from ndsharray import recording

FRAMES: list[tuple[np.ndarray[Any, Any], Any]] = [
    (np.arange(k, dtype=np.float32) if k % 3 else np.full((k, 2), k, np.int16), {"k": k} if k % 2 else b"b%d" % k)
    for k in range(1, 8)
] + [(np.zeros((0, 6), np.float32), None)]


def test_record_keeps_variable_shapes_and_metadata_and_replay_publishes_them(daemon: Daemon, tmp_path: Any) -> None:
    path = str(tmp_path / "rec.npz")
    recorded: queue.Queue[int] = queue.Queue()

    def write() -> None:
        with ndsharray.NdShArray("rec", r_w="w") as w:
            for k, (a, meta) in enumerate(FRAMES):
                w.write(a, meta=meta)
                assert recorded.get(timeout=20) == k + 1  # lockstep: none dropped

    t = threading.Thread(target=write)
    t.start()
    rec = recording.record("rec", path, frames=len(FRAMES), progress=recorded.put)
    t.join(30)
    assert rec.frames == len(FRAMES) and rec.dropped == 0
    frames, stamps, metas = recording.load_with_meta(path)
    assert stamps is not None and len(stamps) == len(FRAMES)
    assert metas == [m for _, m in FRAMES]
    for got, (a, _) in zip(frames, FRAMES, strict=True):
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)

    # replay, in lockstep with a reader: each frame with its own shape and metadata
    read: queue.Queue[Any] = queue.Queue()
    with ndsharray.NdShArray("again", r_w="r") as r:
        def step(n: int) -> None:
            ok, a = r.read(timeout=20)
            read.put((ok, a.copy(), r.meta))

        assert recording.replay(path, "again", rate=1000, progress=step) == len(FRAMES)
    for a, meta in FRAMES:
        ok, got, got_meta = read.get_nowait()
        assert ok and got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
        assert got_meta == meta
