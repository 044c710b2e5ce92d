"""multiprocessing children (fork, spawn, forkserver) and the no-torn-frame guarantee."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import pytest

import ndsharray

START_METHODS = ["fork", "spawn", "forkserver"]


def _child_reads(tag: str, endpoint: str) -> list[float]:
    with ndsharray.NdShArray(tag, r_w="r", endpoint=endpoint) as r:
        status, a = r.read()
        assert status
        return a.tolist()  # type: ignore[no-any-return]


def _child_writes(tag: str, endpoint: str, value: float) -> int:
    with ndsharray.NdShArray(tag, np.full(3, value), "w", endpoint=endpoint):
        return os.getpid()


@pytest.mark.parametrize("method", START_METHODS)
def test_children_of_every_start_method(daemon: Any, method: str) -> None:
    ctx = mp.get_context(method)
    # The parent holds handles (and a daemon connection) while children come and go.
    with ndsharray.NdShArray("parent", np.arange(4.0), "w") as w, \
            ndsharray.NdShArray("parent", r_w="r") as r:
        assert r.read()[0]
        with ctx.Pool(2) as pool:
            assert pool.starmap(_child_reads, [("parent", daemon.endpoint)] * 4) == [[0, 1, 2, 3]] * 4
            pids = pool.starmap(_child_writes, [(f"child{k}", daemon.endpoint, k) for k in range(3)])
        assert os.getpid() not in pids
        # The parent's connection and pins are unharmed.
        w.write(np.arange(4.0) + 10)
        status, a = r.read()
        assert status and a.tolist() == [10, 11, 12, 13]
        assert {t.tag for t in ndsharray.list_tags()} >= {"parent"}


def test_forked_child_with_inherited_handles(daemon: Any) -> None:
    ctx = mp.get_context("fork")
    with ndsharray.NdShArray("inh", np.arange(3), "w") as w, ndsharray.NdShArray("inh", r_w="r") as r:
        status, held = r.read()
        q = ctx.Queue()

        def child() -> None:
            # An inherited reader works afresh; an inherited writer is refused clearly.
            status, a = r.read()
            try:
                w.write(np.zeros(3))
                msg = "wrote"
            except ndsharray.NdShArrayError as exc:
                msg = str(exc)
            r.close()
            del a
            q.put((status, msg))

        p = ctx.Process(target=child)
        p.start()
        status_child, msg = q.get(timeout=30)
        p.join(30)
        assert p.exitcode == 0
        assert status_child is True and "a forked child must open its own" in msg
        # The child's close and its dropped views did not release the parent's pin.
        w.write(np.arange(3) + 1)
        w.write(np.arange(3) + 2)
        assert held.tolist() == [0, 1, 2]
        assert r.read()[1].tolist() == [2, 3, 4]


WRITER = """
import sys, numpy as np, ndsharray
tag, n, size, seconds = sys.argv[1], 0, int(sys.argv[2]), float(sys.argv[3])
import time
w = ndsharray.NdShArray(tag, r_w="w")
frame = np.empty(size // 8, np.uint64)
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds
while time.monotonic() < end:
    n += 1
    frame.fill(n)  # every word of frame n is n: a torn frame mixes two values
    w.write(frame)
w.close()
print(n, flush=True)
"""


@pytest.mark.parametrize("size", [1024, 64 * 1024, 1280 * 720 * 3])
def test_no_torn_frames_under_a_flat_out_writer(daemon: Any, size: int) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", WRITER, f"torn{size}", str(size), "1.5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    checked = torn = 0
    last = 0
    with ndsharray.NdShArray(f"torn{size}", r_w="r") as r:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while proc.poll() is None:
            status, a = r.read()
            if not status:
                continue
            first = int(a[0])
            # Hold the view a little while the writer runs on: it must not change under us.
            if checked % 7 == 0:
                time.sleep(0.0005)
            if not (a == first).all():
                torn += 1
            assert first > last  # frames arrive in order, never a repeat
            last = first
            checked += 1
        written = int(proc.stdout.read().split()[-1])
    assert proc.wait() == 0
    assert torn == 0, f"{torn} torn frames of {checked}"
    assert checked > 10 and written >= checked


def _sum_of(reader: ndsharray.NdShArray) -> float:
    status, a = reader.read()
    assert status
    return float(a.sum())


def test_a_reader_handle_travels_to_spawned_workers(daemon: Any) -> None:
    import pickle

    with ndsharray.NdShArray("pickled", np.arange(10.0), "w") as w, \
            ndsharray.NdShArray("pickled", r_w="r") as r:
        with mp.get_context("spawn").Pool(2) as pool:
            assert pool.map(_sum_of, [r, r]) == [45.0, 45.0]
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(w)
