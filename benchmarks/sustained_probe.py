"""Where a flat-out writer's reader spends its time, per implementation (issue 16).

    python benchmarks/sustained_probe.py [--impls ndsharray,iceoryx2] [--sizes 0,2,3]
                                         [--secs 1] [--rounds 3] [--trace]

One writer process writes flat out (fills frame n with the word n, then ``write()``); one
reader process busy-polls ``read()`` and checks every word of each new frame, as in
run.py's sustained figure. Besides frames/s it prints what run.py cannot tell apart:

- the reader's CPU time per received frame and its share of a CPU (when it is far below
  1, the machine, not the implementation, set the frame rate: the reader was waiting for
  a CPU, or ran while the writer did not and found nothing new);
- the writer's writes/s and CPU time per write, and p10/p50/p90 of its two steps: filling
  the frame (the same for every implementation) and the ``write()`` call (at 720p and
  1080p, where the reader receives nearly every frame, these two set the frame rate);
- with ``--trace``, which slot each of ndsharray's writes took (the slot written two
  writes before, its ping-pong, is the cache-warm one; see benchmarks/README.md);
- p10/p50/p90 of the reader's ``read()`` calls that returned a new frame, and of the check
  of that frame: the per-frame cost with a writer running, cache misses included.

Implementations run one after the other, the order alternating by round. Uses the
adapters in peers/ (ndsharray's daemon on a private endpoint, stopped at the end).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import ORDER, load  # noqa: E402
from peers.base import Array, Spec  # noqa: E402
from run import SIZES  # noqa: E402


def words(a: Array) -> Array:
    return a.reshape(-1).view(np.uint64)


def writer(impl: str, spec: Spec, trace: bool, ready: Any, stop: Any, out: Any) -> None:
    w = load(impl).Writer()
    w.setup(spec)
    buf = w.buffer()
    words(buf).fill(1)
    w.write(buf)
    deadline = time.monotonic() + 60
    while not ready.wait(0.01) and time.monotonic() < deadline:
        w.write(buf)  # again until the reader has a frame (iceoryx2 hands history over on a send)
    fill_ns: list[int] = []
    write_ns: list[int] = []
    slots: list[int] | None = [] if trace and impl == "ndsharray" else None
    clock = time.perf_counter_ns
    n, c0, t0 = 0, time.process_time(), time.monotonic()
    while not stop.is_set():
        n += 1
        a = clock()
        buf = w.buffer()
        words(buf).fill(n + 1)
        b = clock()
        w.write(buf)
        write_ns.append(clock() - b)
        if slots is not None:
            slots.append(w.h._direct.latest)  # the slot this write went to
        fill_ns.append(b - a)
    pct = [10, 50, 90]
    used = ""
    if slots:
        t = np.array(slots)
        used = (f" | slots written {np.bincount(t).tolist()}, the one written two writes before "
                f"{np.mean(t[2:] == t[:-2]) if len(t) > 2 else 0:.0%} of the time")
    out.put(("w", n, time.process_time() - c0, time.monotonic() - t0,
             (np.percentile(fill_ns, pct) / 1e3).round(2).tolist() if fill_ns else [],
             (np.percentile(write_ns, pct) / 1e3).round(2).tolist() if write_ns else [], used))
    time.sleep(0.2)  # (the reader closes first)
    w.close()


def reader(impl: str, spec: Spec, secs: float, ready: Any, stop: Any, out: Any) -> None:
    r = load(impl).Reader()
    r.setup(spec)
    deadline = time.monotonic() + 30
    while r.read() is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no first frame within 30 s")
        time.sleep(0.001)
    ready.set()
    good = torn = 0
    last = 0
    read_ns: list[int] = []
    check_ns: list[int] = []
    got = None
    clock = time.perf_counter_ns
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0, t0 = time.process_time(), time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        a = clock()
        got = r.read()
        b = clock()
        if got is None:
            continue
        wd = words(got)
        v = int(wd[0])
        if (wd != wd[0]).any():
            torn += 1
        elif v > last:
            good += 1
            last = v
        read_ns.append(b - a)
        check_ns.append(clock() - b)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    stop.set()
    del got
    pct = [10, 50, 90]
    out.put(("r", good, cpu, wall, torn, faults,
             (np.percentile(read_ns, pct) / 1e3).round(2).tolist() if read_ns else [],
             (np.percentile(check_ns, pct) / 1e3).round(2).tolist() if check_ns else []))
    r.close()


def probe(impl: str, si: int, secs: float, key: str, tmp: str, endpoint: str,
          trace: bool = False) -> dict[str, Any]:
    _, shape, dtype = SIZES[si]
    spec = Spec(key=key, shape=shape, dtype=dtype, tmpdir=tmp, endpoint=endpoint)
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    pw = ctx.Process(target=writer, args=(impl, spec, trace, ready, stop, out))
    pw.start()
    time.sleep(0.5)  # the writer exists before the reader looks for it
    pr = ctx.Process(target=reader, args=(impl, spec, secs, ready, stop, out))
    pr.start()
    res = {}
    try:
        for _ in range(2):
            item = out.get(timeout=120 + secs)
            res[item[0]] = item
    finally:
        stop.set()
        for p in (pr, pw):
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    _, good, rcpu, rwall, torn, faults, read_us, check_us = res["r"]
    _, n, wcpu, wwall, fill_us, write_us, used = res["w"]
    return {"fps": good / rwall, "reader_us_per_frame": 1e6 * rcpu / max(good, 1), "reader_cpu": rcpu / rwall,
            "writes_per_s": n / wwall, "writer_us_per_write": 1e6 * wcpu / max(n, 1), "writer_cpu": wcpu / wwall,
            "torn": torn, "faults_per_frame": faults / max(good, 1), "read_new_us": read_us, "check_us": check_us,
            "fill_us": fill_us, "write_us": write_us, "slots": used}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default="ndsharray,iceoryx2")
    ap.add_argument("--sizes", default="0,2,3", help="indexes into run.SIZES (0=1 KiB, 2=720p, 3=1080p)")
    ap.add_argument("--secs", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="which slot each of ndsharray's writes took")
    args = ap.parse_args()
    impls = args.impls.split(",")
    if set(impls) - set(ORDER) or "limit" in impls:
        ap.error(f"implementations with a reader: {', '.join(i for i in ORDER if i != 'limit')}")
    tmp = tempfile.mkdtemp(prefix="ndsb-", dir="/tmp")
    endpoint = f"ipc://{tmp}/d.sock"
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    k = 0
    try:
        for si in (int(s) for s in args.sizes.split(",")):
            for rnd in range(args.rounds):
                for impl in impls if rnd % 2 == 0 else impls[::-1]:
                    k += 1
                    r = probe(impl, si, args.secs, f"{os.getpid()}-p{k}", tmp, endpoint, args.trace)
                    print(f"{SIZES[si][0]:>6} {impl:<10} {r['fps']:9,.0f} frames/s | reader "
                          f"{r['reader_us_per_frame']:8.2f} us CPU/frame, {r['reader_cpu']:.2f} of a CPU, "
                          f"{r['faults_per_frame']:.1f} page faults/frame, read() "
                          f"p10/50/90 {r['read_new_us']} us, check {r['check_us']} us | writer "
                          f"{r['writes_per_s']:9,.0f} writes/s, {r['writer_us_per_write']:.2f} us CPU/write, "
                          f"fill p10/50/90 {r['fill_us']} us, write() {r['write_us']} us, "
                          f"{r['writer_cpu']:.2f} of a CPU | torn {r['torn']}{r['slots']}", flush=True)
    finally:
        if "ndsharray" in impls:
            from ndsharray.admin import stop_daemon

            stop_daemon(endpoint)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
