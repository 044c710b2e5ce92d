"""The hot path, in process: what one call of read() and write() costs.

Three cases per size (1 KiB and a 720p uint8 frame), each the best of ``--repeat`` runs of
``--calls`` calls (the best run is the one the machine disturbed least):

- ``read, nothing new``: ``r.read()`` when no write came since the last read;
- ``write, same shape``: ``w.write(a)`` (one copy into a free slot, no daemon call);
- ``write + read``: a write, then the zero-copy read of that new frame.

Without ``NDSHARRAY_ENDPOINT`` it uses a private daemon on a fresh ipc endpoint (started by
the first handle) and stops it at the end. Compare two builds by running them alternately, several times:
the figures move with the machine's load far more than with small code changes.

    python benchmarks/hotpath.py [--calls 3000] [--repeat 15] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES = {"1 KiB": (1024,), "720p u8": (720, 1280)}


def best_ns(fn: Callable[[], Any], calls: int, repeat: int) -> float:
    """Nanoseconds per call of the fastest of ``repeat`` runs of ``calls`` calls."""
    best = float("inf")
    loop = range(calls)
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in loop:
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls)
    return best


def measure(calls: int, repeat: int) -> dict[str, dict[str, float]]:
    import ndsharray

    out: dict[str, dict[str, float]] = {}
    for label, shape in SIZES.items():
        tag = f"hotpath/{label.replace(' ', '')}/{os.getpid()}"
        a = np.zeros(shape, np.uint8)
        with ndsharray.NdShArray(tag, a, r_w="w") as w, ndsharray.NdShArray(tag, r_w="r") as r:
            status, _ = r.read()
            assert status
            read = r.read
            write = functools.partial(w.write, a)

            def write_read(write: Callable[[], None] = write, read: Callable[[], Any] = read) -> None:
                write()
                read()

            for _ in range(200):  # warm up: the ring grown, caches and branch history settled
                write_read()
            out[label] = {
                "read, nothing new": best_ns(read, calls, repeat),
                "write, same shape": best_ns(write, calls, repeat),
                "write + read": best_ns(write_read, calls, repeat),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    folder = None
    if "NDSHARRAY_ENDPOINT" not in os.environ:
        # A private daemon, started by the first handle (auto-start) and stopped below: a
        # daemon started here as well could lose that race and leave the other running.
        folder = tempfile.mkdtemp(prefix="nds-hotpath-")
        os.environ["NDSHARRAY_ENDPOINT"] = f"ipc://{folder}/d.sock"
    try:
        res = measure(args.calls, args.repeat)
    finally:
        if folder is not None:
            import ndsharray
            from ndsharray import admin

            ndsharray.close_all()
            admin.stop_daemon(os.environ["NDSHARRAY_ENDPOINT"])
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(res))
        return
    cases = list(next(iter(res.values())))
    print(f"{'ns per call (best of ' + str(args.repeat) + ' x ' + str(args.calls) + ')':<34}"
          + "".join(f"{label:>12}" for label in res))
    for case in cases:
        print(f"{case:<34}" + "".join(f"{res[label][case]:>12.0f}" for label in res))


if __name__ == "__main__":
    main()
