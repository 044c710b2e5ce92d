"""What the first writes of a new generation cost, with and without prefaulting its slots.

Each trial is a fresh process that opens a writer of a new tag and times its first
``--writes`` writes of one frame size (the first creates the generation: daemon request,
segment, mapping, prefault of slot 0, copy). Trials with prefault on and off
(``NDSHARRAY_PREFAULT=0``) alternate, so the machine's load falls on both alike; the table
gives the median of each write over ``--trials`` trials.

    python benchmarks/first_frame.py [--trials 5] [--writes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from private_daemon import private_daemon

SIZES = {"256 MiB": (256, 1024, 1024), "1080p rgb": (1080, 1920, 3)}

TRIAL = r"""
import json, os, sys, time
import numpy as np, ndsharray

shape, writes = tuple(json.loads(sys.argv[1])), int(sys.argv[2])
a = np.ones(shape, np.uint8)
w = ndsharray.NdShArray(f"first-frame/{os.getpid()}", r_w="w")
out = []
for _ in range(writes):
    t = time.perf_counter(); w.write(a); out.append(time.perf_counter() - t)
w.close()
print(json.dumps(out))
"""


def trial(shape: tuple[int, ...], writes: int, prefault: bool) -> list[float]:
    env = dict(os.environ, NDSHARRAY_PREFAULT="1" if prefault else "0")
    out = subprocess.run([sys.executable, "-c", TRIAL, json.dumps(shape), str(writes)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return [float(x) for x in json.loads(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--writes", type=int, default=4)
    args = ap.parse_args()
    with private_daemon("nds-ff-"):
        print(f"median ms of write k (k=1 creates the generation), {args.trials} alternating trials")
        print(f"{'':<22}" + "".join(f"{'write ' + str(k + 1):>10}" for k in range(args.writes)))
        for label, shape in SIZES.items():
            got: dict[bool, list[list[float]]] = {True: [], False: []}
            for _ in range(args.trials):
                for on in (False, True):
                    got[on].append(trial(shape, args.writes, on))
            for on in (False, True):
                med = [statistics.median(t[k] for t in got[on]) * 1e3 for k in range(args.writes)]
                name = f"{label}, prefault {'on' if on else 'off'}"
                print(f"{name:<22}" + "".join(f"{m:>10.2f}" for m in med))



if __name__ == "__main__":
    main()
