"""Does a client's RSS level off? A long churn loop with tracemalloc snapshots.

    python benchmarks/rss_growth.py --minutes 30 [--tracemalloc] [--kill-every 60]

On a private endpoint, a child process writes a small frame at 60 Hz (it reopens its
handle every 7 s, as the soak's writer does); this process opens a reader, reads, checks
and closes it ``--churn-hz`` times a second. Every ``--every`` seconds it prints the
iterations so far, its anonymous RSS, and with ``--tracemalloc`` the memory Python has
allocated and still holds, and the sites that grew most since the first sample (after a
warm-up). ``--kill-every`` SIGKILLs the daemon now and then (clients start a new one).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

TAG = "rss/cam"


def anon_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def writer(ep: str) -> None:
    import numpy as np

    import ndsharray

    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    ppid = os.getppid()
    frame = np.zeros(64 * 1024, np.uint8)
    w = ndsharray.NdShArray(TAG, r_w="w", endpoint=ep)
    n = 0
    reopen = time.monotonic() + 7
    while not stop and os.getppid() == ppid:
        n += 1
        frame.view(np.uint64).fill(n)
        try:
            w.write(frame)
        except ndsharray.NdShArrayError:
            pass
        if time.monotonic() > reopen:
            w.close()
            w = ndsharray.NdShArray(TAG, r_w="w", endpoint=ep)
            reopen = time.monotonic() + 7
        time.sleep(1 / 60)
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--churn-hz", type=float, default=100)
    ap.add_argument("--every", type=float, default=60, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--kill-every", type=float, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        writer(args.child)
        return
    import numpy as np

    import ndsharray
    from ndsharray import admin

    folder = tempfile.mkdtemp(prefix="ndrss-", dir="/tmp")
    ep = f"ipc://{folder}/d.sock"
    admin.start_daemon(ep)
    wp = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", ep], start_new_session=True)
    if args.tracemalloc:
        tracemalloc.start(10)
    base: Any = None
    t0 = time.monotonic()
    next_sample = t0 + args.warmup
    next_kill = t0 + args.kill_every if args.kill_every else float("inf")
    it = 0
    errors = 0
    tick = t0
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            tick += 1 / args.churn_hz
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                tick = time.monotonic()
            try:
                r = ndsharray.NdShArray(TAG, r_w="r", endpoint=ep)
                ok, a = r.read(timeout=0.5)
                if ok:
                    w = a.view(np.uint64)
                    assert w.min() == w.max()
                r.close()
                it += 1
            except ndsharray.NdShArrayError:
                errors += 1
            now = time.monotonic()
            if now >= next_kill:
                next_kill += args.kill_every
                pid = admin.daemon_pid(ep)
                if pid:
                    os.kill(pid, signal.SIGKILL)
            if now >= next_sample:
                next_sample += args.every
                gc.collect()
                line = f"t {now - t0:7.0f} s  iterations {it:8d}  errors {errors}  anon RSS {anon_kib()} KiB"
                if args.tracemalloc:
                    cur, _peak = tracemalloc.get_traced_memory()
                    line += f"  traced {cur / 1024:.0f} KiB"
                    snap = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)])
                    if base is None:
                        base = snap
                    else:
                        top = snap.compare_to(base, "lineno")[:6]
                        line += "\n    " + "\n    ".join(str(s) for s in top)
                print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        wp.send_signal(signal.SIGTERM)
        wp.wait(20)
        admin.stop_daemon(ep)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
