"""How fast a blocked reader learns that its writer is gone.

A writer process publishes one frame and waits; this process reads it and blocks in
``read(timeout=None)`` in a thread. Then the writer closes cleanly (it wakes its readers
itself) or is SIGKILLed (it cannot: the daemon, told by the writer's pidfd, moves the
segment's notify word and wakes them). The time from the close or the kill to the
reader's return, median and max over ``--trials``.

    python benchmarks/writer_end.py [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

from private_daemon import private_daemon

WRITER = r"""
import sys, numpy as np, ndsharray

w = ndsharray.NdShArray(sys.argv[1], np.zeros(1024, np.uint8), r_w="w")
print("ready", flush=True)
sys.stdin.readline()            # "close", or a SIGKILL while it waits here
t = __import__("time").monotonic()
w.close()
print(t, flush=True)
"""


def trial(tag: str, how: str) -> float:
    import ndsharray

    p = subprocess.Popen([sys.executable, "-c", WRITER, tag], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "ready"
    r = ndsharray.NdShArray(tag, r_w="r")
    assert r.read(timeout=10)[0]
    done: list[float] = []
    t = threading.Thread(target=lambda: (r.read(timeout=None), done.append(time.monotonic())))
    t.start()
    time.sleep(0.05)  # let it fall asleep (the figure is the wake-up, not the race)
    if how == "kill":
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
    else:
        p.stdin.write("close\n")
        p.stdin.flush()
        t0 = float(p.stdout.readline())
    t.join(30)
    p.wait(10)
    assert r.writer_state == ("died" if how == "kill" else "closed")
    r.close()
    return done[0] - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    with private_daemon("nds-end-"):
        for how in ("close", "kill"):
            got = [trial(f"end/{how}/{k}", how) for k in range(args.trials)]
            print(f"writer {how:5s}: reader returned after median {statistics.median(got) * 1e3:.2f} ms, "
                  f"max {max(got) * 1e3:.2f} ms ({args.trials} trials)")



if __name__ == "__main__":
    main()
