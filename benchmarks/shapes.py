"""Shape changes against same-shape streams of the same bytes (issue 17).

    python benchmarks/shapes.py [--frames N] [--quick]

Streams, each against a same-shape stream of the same frames' byte sizes:

- ``720p/480p``: a writer alternating 720p and 480p (uint8, 3 channels);
- ``boxes``: N x 6 float32 boxes with N random in 0..200 on every frame;
- ``720p/10000x5000``: the original's example: three 720p frames, then a 10000 x 5000
  uint8 array, over and over.

A writer process and a reader process in lockstep (the writer writes one frame, the reader
waits for it with ``wait()``, times its ``read()``, and acks): write cost (``write()`` in
the writer), read cost (``read()`` of a frame known to be there), end-to-end latency
(``write()`` called to ``read()`` returned, same monotonic clock). Medians and p99 per
frame size, in microseconds; ``ratio`` is variable / same-shape (floors: write <= 1.2,
read <= 2). A private daemon on a temporary endpoint; nothing is installed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

BIG = (10000, 5000)


def stream(name: str, n: int, seed: int = 1) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    if name == "720p/480p":
        return [(720, 1280, 3) if k % 2 == 0 else (480, 640, 3) for k in range(n)]
    if name == "boxes":
        return [(int(rng.integers(0, 201)), 6) for _ in range(n)]
    return [BIG if k % 4 == 3 else (720, 1280, 3) for k in range(n)]


def dtype_of(name: str) -> Any:
    return np.float32 if name == "boxes" else np.uint8


def _reader(endpoint: str, tag: str, n: int, conn: Any) -> None:
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    import ndsharray

    reads, lats = [], []
    with ndsharray.NdShArray(tag, r_w="r") as r:
        conn.send("ready")
        for _ in range(n):
            conn.recv()  # the writer wrote
            if not r.wait(10):
                raise SystemExit("no frame")
            t0 = time.perf_counter_ns()
            ok, a = r.read()
            t1 = time.perf_counter_ns()
            now = time.monotonic_ns()
            assert ok
            reads.append(t1 - t0)
            lats.append((now, a.nbytes))
            del a
            conn.send(None)
    conn.send((reads, lats))


def run(endpoint: str, tag: str, shapes: list[tuple[int, ...]], dtype: Any) -> dict[str, Any]:
    import ndsharray

    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    p = ctx.Process(target=_reader, args=(endpoint, tag, len(shapes), theirs))
    frames = {s: np.ones(s, dtype) for s in set(shapes)}
    writes, starts = [], []
    with ndsharray.NdShArray(tag, r_w="w") as w:
        w.write(frames[shapes[0]])  # the first generation (as a real stream's first frame)
        p.start()
        assert mine.recv() == "ready"
        for s in shapes:
            a = frames[s]
            t_start = time.monotonic_ns()
            t0 = time.perf_counter_ns()
            w.write(a)
            t1 = time.perf_counter_ns()
            writes.append(t1 - t0)
            starts.append(t_start)
            mine.send(None)
            mine.recv()
        reads, lats = mine.recv()
        gens = w.generation
    p.join(30)
    sizes = [frames[s].nbytes for s in shapes]
    return {"write": writes, "read": reads, "lat": [lat[0] - t for lat, t in zip(lats, starts, strict=True)],
            "sizes": sizes, "generations": gens}


def summary(res: dict[str, Any], skip: int) -> dict[int, dict[str, float]]:
    """Per frame size: median and p99 of each figure (us), after ``skip`` warm-up frames."""
    out: dict[int, dict[str, float]] = {}
    by: dict[int, dict[str, list[int]]] = {}
    for k, size in enumerate(res["sizes"]):
        if k < skip:
            continue
        d = by.setdefault(size, {"write": [], "read": [], "lat": []})
        for f in ("write", "read", "lat"):
            d[f].append(res[f][k])
    for size, d in by.items():
        out[size] = {}
        for f, v in d.items():
            v.sort()
            out[size][f] = statistics.median(v) / 1000
            out[size][f + "_p99"] = v[min(len(v) - 1, int(len(v) * 0.99))] / 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="fewer frames, no 10000x5000 stream")
    args = ap.parse_args()
    n = 100 if args.quick else args.frames
    folder = tempfile.mkdtemp(prefix="ndss", dir="/tmp")
    endpoint = f"ipc://{folder}/d.sock"
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    import ndsharray
    from ndsharray import admin

    names = ["720p/480p", "boxes"] + ([] if args.quick else ["720p/10000x5000"])
    print(f"ndsharray {ndsharray.__version__}, {n} frames per stream, lockstep writer/reader "
          "processes; us, median (p99)\n")
    print("| stream | frame | bytes | write var | write same | ratio | read var | read same | ratio "
          "| latency var | latency same |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for name in names:
            shapes = stream(name, n)
            dtype = dtype_of(name)
            res = run(endpoint, f"var-{name}", shapes, dtype)
            if name == "boxes":  # one row: every N against a same-shape stream of N = 100
                res["sizes"] = [100 * 6 * 4] * len(res["sizes"])
            var = summary(res, skip=4)
            # The same-shape streams: each frame size of the variable stream on its own.
            for size in sorted(var):
                shape = (100, 6) if name == "boxes" else next(
                    s for s in shapes if int(np.prod(s)) * np.dtype(dtype).itemsize == size)
                reps = max(20, n // 4) if size < 10**8 else max(8, n // 16)
                same = summary(run(endpoint, f"same-{name}-{size}", [shape] * reps, dtype), skip=2)[size]
                v = var[size]
                label = "N x 6, N in 0..200" if name == "boxes" else "x".join(map(str, shape))
                print(f"| {name} | {label} | {size} | {v['write']:.1f} ({v['write_p99']:.0f}) | "
                      f"{same['write']:.1f} ({same['write_p99']:.0f}) | {v['write'] / same['write']:.2f} | "
                      f"{v['read']:.2f} ({v['read_p99']:.1f}) | {same['read']:.2f} ({same['read_p99']:.1f}) | "
                      f"{v['read'] / same['read']:.2f} | {v['lat']:.1f} | {same['lat']:.1f} |")
                sys.stdout.flush()
    finally:
        admin.stop_daemon(endpoint)


if __name__ == "__main__":
    main()
