"""What the first writes of a new generation cost, with and without prefaulting its slots.

Each trial is a fresh process that opens a writer of a new tag and times its first
``--writes`` writes of one frame size (the first creates the generation: daemon request,
segment, mapping, prefault of slot 0, copy), ``--interval`` seconds apart (0: back to back,
as a flat-out writer; 0.033: a 30 fps camera, whose next frame finds the background thread
done). The tag is removed after each trial: kept for the daemon's --orphan-ttl, 40 trials of
256 MiB would fill the machine's memory and slow every later trial. Trials with prefault on
and off (``NDSHARRAY_PREFAULT=0``) alternate, in turns (off/on, then on/off), so the
machine's load falls on both alike. The table gives the median of each write over
``--trials`` trials, in wall time and, in brackets, the writing thread's CPU time (much less
sensitive to other load), and how many trials' write with prefault on was faster than the
same round's write without.

    python benchmarks/first_frame.py [--trials 8] [--writes 3] [--interval 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from private_daemon import private_daemon

SIZES = {"1080p rgb": (1080, 1920, 3), "64 MiB": (64, 1024, 1024), "256 MiB": (256, 1024, 1024)}

TRIAL = r"""
import json, os, sys, time
import numpy as np, ndsharray
from ndsharray import admin

shape, writes, interval = tuple(json.loads(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])
a = np.ones(shape, np.uint8)
tag = f"first-frame/{os.getpid()}"
w = ndsharray.NdShArray(tag, r_w="w")
wall, cpu = [], []
for _ in range(writes):
    time.sleep(interval)
    c, t = time.thread_time(), time.perf_counter()
    w.write(a)
    wall.append(time.perf_counter() - t); cpu.append(time.thread_time() - c)
w.close()
admin.remove_tag(tag)
print(json.dumps([wall, cpu]))
"""


def trial(shape: tuple[int, ...], writes: int, interval: float, prefault: bool) -> list[list[float]]:
    """[wall seconds of each write, CPU seconds of the writing thread in each write]"""
    env = dict(os.environ, NDSHARRAY_PREFAULT="1" if prefault else "0")
    out = subprocess.run([sys.executable, "-c", TRIAL, json.dumps(shape), str(writes), str(interval)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return [[float(x) for x in row] for row in json.loads(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--writes", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.0)
    args = ap.parse_args()
    with private_daemon("nds-ff-"):
        print(f"median ms of write k (k=1 creates the generation), {args.trials} alternating trials, "
              f"{args.interval:g} s apart: wall (writing thread's CPU) [rounds where prefault won]")
        print(f"{'':<24}" + "".join(f"{'write ' + str(k + 1):>26}" for k in range(args.writes)))
        for label, shape in SIZES.items():
            got: dict[bool, list[list[list[float]]]] = {True: [], False: []}
            for n in range(args.trials):
                for on in ((False, True) if n % 2 == 0 else (True, False)):
                    got[on].append(trial(shape, args.writes, args.interval, on))
            for on in (False, True):
                cells = []
                for k in range(args.writes):
                    wall = statistics.median(t[0][k] for t in got[on]) * 1e3
                    cpu = statistics.median(t[1][k] for t in got[on]) * 1e3
                    won = sum(a[0][k] < b[0][k] for a, b in zip(got[True], got[False], strict=True))
                    cells.append(f"{wall:>9.2f} ({cpu:6.2f})" + (f" [{won:>2}/{args.trials}]" if on else " " * 8))
                name = f"{label}, prefault {'on' if on else 'off'}"
                print(f"{name:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
