"""Where a flat-out writer's reader spends its time, per implementation (issue 16).

    python benchmarks/sustained_probe.py [--impls ndsharray,iceoryx2] [--sizes 0,2,3]
                                         [--secs 1] [--rounds 3] [--trace] [--alone]

One writer process writes flat out (fills frame n with the word n, then ``write()``); one
reader process busy-polls ``read()`` and checks every word of each new frame, as in
run.py's sustained figure. Besides frames/s it prints what run.py cannot tell apart:

- the reader's CPU time per received frame and its share of a CPU (when it is far below
  1, the machine, not the implementation, set the frame rate: the reader was waiting for
  a CPU, or ran while the writer did not and found nothing new);
- the writer's writes/s and CPU time per write, and p10/p50/p90 of its two steps: filling
  the frame (the same for every implementation) and the ``write()`` call (at 720p and
  1080p, where the reader receives nearly every frame, these two set the frame rate);
- with ``--trace``, which slot each of ndsharray's writes took and which chunk each of
  iceoryx2's loans got (the slot written two writes before, the ping-pong, is the
  cache-warm one; see benchmarks/README.md);
- p10/p50/p90 of the reader's ``read()`` calls that returned a new frame, and of the check
  of that frame: the per-frame cost with a writer running, cache misses included;
- each process's minor page faults and involuntary context switches (preemptions) per
  frame, and the slots in ndsharray's ring at the end;
- with ``--alone``, each side again without the other running: the writer's loop with no
  reader (and with ``np.copyto`` into two private arrays in turn on 2 MiB pages instead of
  ``write()``: what huge pages would save), and the reader checking one frame over and
  over with the writer idle (and a private copy of it): each side with the memory to itself.

Implementations run one after the other, the order alternating by round. Uses the
adapters in peers/ (ndsharray's daemon on a private endpoint, stopped at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import mmap
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import LIMITS, ORDER, load  # noqa: E402
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
    slots: list[int] | None = [] if trace else None
    if trace and impl == "iceoryx2":  # which of its chunks each loan got (its "slot")
        chunks: dict[int, int] = {}
        w.write = lambda a: iox2_write(w, a, chunks, slots)
    clock = time.perf_counter_ns
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    n, c0, t0 = 0, time.process_time(), time.monotonic()
    while not stop.is_set():
        n += 1
        a = clock()
        buf = w.buffer()
        words(buf).fill(n + 1)
        b = clock()
        w.write(buf)
        write_ns.append(clock() - b)
        if slots is not None and impl == "ndsharray":
            slots.append(w.h._direct.latest)  # the slot this write went to
        fill_ns.append(b - a)
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    pct = [10, 50, 90]
    used = ""
    if impl == "ndsharray":
        used = f" | ring of {w.h._seg.nslots} slots"
    if slots:
        t = np.array(slots)
        used += (f", slots written {np.bincount(t).tolist()}, the one written two writes before "
                f"{np.mean(t[2:] == t[:-2]) if len(t) > 2 else 0:.0%} of the time")
    out.put(("w", n, time.process_time() - c0, time.monotonic() - t0,
             (np.percentile(fill_ns, pct) / 1e3).round(2).tolist() if fill_ns else [],
             (np.percentile(write_ns, pct) / 1e3).round(2).tolist() if write_ns else [], used,
             u1.ru_minflt - u0.ru_minflt, u1.ru_nivcsw - u0.ru_nivcsw))
    time.sleep(0.2)  # (the reader closes first)
    w.close()


def iox2_write(w: Any, a: Array, chunks: dict[int, int], slots: Any) -> None:
    """peers.iox2.Writer.write, noting which chunk the loan got."""
    sample = w.pub.loan_slice_uninit(w.nbytes)
    slots.append(chunks.setdefault(sample.payload_ptr, len(chunks)))
    ctypes.memmove(sample.payload_ptr, a.ctypes.data, w.nbytes)
    sample.assume_init().send()


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
    u0 = resource.getrusage(resource.RUSAGE_SELF)
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
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    del got
    pct = [10, 50, 90]
    out.put(("r", good, cpu, wall, torn, u1.ru_minflt - u0.ru_minflt, u1.ru_nivcsw - u0.ru_nivcsw,
             (np.percentile(read_ns, pct) / 1e3).round(2).tolist() if read_ns else [],
             (np.percentile(check_ns, pct) / 1e3).round(2).tolist() if check_ns else []))
    r.close()


def _p50_us(ns: list[int]) -> float:
    return round(float(np.median(ns)) / 1e3, 2) if ns else float("nan")


def timed_loop(secs: float, step: Any) -> list[int]:
    clock, out = time.perf_counter_ns, []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        a = clock()
        step()
        out.append(clock() - a)
    return out


def huge_array(like: Array) -> Array:
    """A private array like ``like``, on transparent huge pages (as far as the kernel gives
    them: THP ``enabled`` is ``madvise`` here, and numpy advises only whole 2 MiB pages
    inside its allocation)."""
    huge = 2 << 20
    mm = mmap.mmap(-1, like.nbytes + 2 * huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(mm, np.uint8)
    start = -raw.ctypes.data % huge
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE, start, -(-like.nbytes // huge) * huge)
    out = raw[start:start + like.nbytes].view(like.dtype).reshape(like.shape)
    out.fill(0)
    return out


def writer_alone(impl: str, spec: Spec, secs: float, out: Any) -> None:
    """No reader: fill + write(), then fill + np.copyto into 2 private arrays in turn (numpy
    puts them on huge pages), the loop of writer() without a reader."""
    w = load(impl).Writer()
    w.setup(spec)
    buf = w.buffer()
    priv = [huge_array(buf), huge_array(buf)]
    for k in range(8):
        w.write(buf)
        np.copyto(priv[k & 1], buf)
    fill_ns: list[int] = []
    clock, n = time.perf_counter_ns, [0]

    def step(put: Any) -> Any:
        def fill_and_put() -> None:
            n[0] += 1
            a = clock()
            words(buf).fill(n[0])
            fill_ns.append(clock() - a)
            put(n[0])
        return fill_and_put

    t0 = time.monotonic()
    total_ns = timed_loop(secs, step(lambda k: w.write(buf)))
    rate = len(total_ns) / (time.monotonic() - t0)
    write_ns = [t - f for t, f in zip(total_ns, fill_ns, strict=True)]
    del fill_ns[:]
    total_ns = timed_loop(secs, step(lambda k: np.copyto(priv[k & 1], buf)))
    copy_ns = [t - f for t, f in zip(total_ns, fill_ns, strict=True)]
    out.put(("wa", _p50_us(fill_ns), _p50_us(write_ns), _p50_us(copy_ns), rate))
    w.close()


def reader_alone(impl: str, spec: Spec, secs: float, ready: Any, out: Any) -> None:
    """The writer idle: check one frame over and over, then a private copy of it."""
    r = load(impl).Reader()
    r.setup(spec)
    deadline = time.monotonic() + 30
    got = r.read()
    while got is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no first frame within 30 s")
        time.sleep(0.001)
        got = r.read()
    ready.set()
    shm_ns, priv_ns = check_loop(words(got), secs), check_loop(words(got).copy(), secs)
    out.put(("ra", _p50_us(shm_ns), _p50_us(priv_ns)))
    del got
    r.close()


def check_loop(wd: Array, secs: float) -> list[int]:
    def check() -> None:
        if (wd != wd[0]).any():
            raise AssertionError("torn frame with the writer idle")

    return timed_loop(secs, check)


def idle_writer(impl: str, spec: Spec, ready: Any, stop: Any) -> None:
    w = load(impl).Writer()
    w.setup(spec)
    buf = w.buffer()
    words(buf).fill(1)
    deadline = time.monotonic() + 60
    while not ready.wait(0.01) and time.monotonic() < deadline:
        w.write(buf)  # until the reader has a frame (iceoryx2 hands history over on a send)
    stop.wait(120)
    w.close()


def alone(impl: str, si: int, secs: float, key: str, tmp: str, endpoint: str) -> str:
    _, shape, dtype = SIZES[si]
    spec = Spec(key=key, shape=shape, dtype=dtype, tmpdir=tmp, endpoint=endpoint)
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    pw = ctx.Process(target=writer_alone, args=(impl, spec, secs, out))
    pw.start()
    _, fill, write, copy, rate = out.get(timeout=120 + 3 * secs)
    pw.join(30)
    spec = Spec(key=key + "a", shape=shape, dtype=dtype, tmpdir=tmp, endpoint=endpoint)
    with running_pair(ctx, stop, (idle_writer, (impl, spec, ready, stop)),
                      (reader_alone, (impl, spec, secs, ready, out))):
        _, shm, priv = out.get(timeout=120 + 3 * secs)
    return (f"alone: writer {rate:,.0f} writes/s, fill p50 {fill} us, write() {write} us, np.copyto "
            f"into 2 private arrays in turn {copy} us | reader check {shm} us, of a private copy {priv} us")



@contextlib.contextmanager
def running_pair(ctx: Any, stop: Any, writer_job: tuple[Any, tuple[Any, ...]],
                 reader_job: tuple[Any, tuple[Any, ...]]) -> Iterator[None]:
    """A writer process, then (once it exists) a reader process; on the way out, ``stop``
    is set and both are joined (killed after 30 s)."""
    pw = ctx.Process(target=writer_job[0], args=writer_job[1])
    pw.start()
    time.sleep(0.5)  # the writer exists before the reader looks for it
    pr = ctx.Process(target=reader_job[0], args=reader_job[1])
    pr.start()
    try:
        yield
    finally:
        stop.set()
        for p in (pr, pw):
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()


def probe(impl: str, si: int, secs: float, key: str, tmp: str, endpoint: str,
          trace: bool = False) -> dict[str, Any]:
    _, shape, dtype = SIZES[si]
    spec = Spec(key=key, shape=shape, dtype=dtype, tmpdir=tmp, endpoint=endpoint)
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    res = {}
    with running_pair(ctx, stop, (writer, (impl, spec, trace, ready, stop, out)),
                      (reader, (impl, spec, secs, ready, stop, out))):
        for _ in range(2):
            item = out.get(timeout=120 + secs)
            res[item[0]] = item
    _, good, rcpu, rwall, torn, faults, rpre, read_us, check_us = res["r"]
    _, n, wcpu, wwall, fill_us, write_us, used, wfaults, wpre = res["w"]
    return {"fps": good / rwall, "reader_us_per_frame": 1e6 * rcpu / max(good, 1), "reader_cpu": rcpu / rwall,
            "writes_per_s": n / wwall, "writer_us_per_write": 1e6 * wcpu / max(n, 1), "writer_cpu": wcpu / wwall,
            "torn": torn, "faults_per_frame": faults / max(good, 1),
            "preempted_per_frame": rpre / max(good, 1), "writer_faults_per_write": wfaults / max(n, 1),
            "writer_preempted_per_write": wpre / max(n, 1), "read_new_us": read_us, "check_us": check_us,
            "fill_us": fill_us, "write_us": write_us, "slots": used}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default="ndsharray,iceoryx2")
    ap.add_argument("--sizes", default="0,2,3", help="indexes into run.SIZES (0=1 KiB, 2=720p, 3=1080p)")
    ap.add_argument("--secs", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="which slot (chunk) each write took")
    ap.add_argument("--alone", action="store_true", help="also each side without the other running")
    args = ap.parse_args()
    impls = args.impls.split(",")
    if set(impls) - set(ORDER) or set(impls) & set(LIMITS):
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
                          f"{r['faults_per_frame']:.2f} faults, {r['preempted_per_frame']:.3f} preemptions/frame, "
                          f"read() "
                          f"p10/50/90 {r['read_new_us']} us, check {r['check_us']} us | writer "
                          f"{r['writes_per_s']:9,.0f} writes/s, {r['writer_us_per_write']:.2f} us CPU/write, "
                          f"fill p10/50/90 {r['fill_us']} us, write() {r['write_us']} us, "
                          f"{r['writer_cpu']:.2f} of a CPU, {r['writer_faults_per_write']:.2f} faults, "
                          f"{r['writer_preempted_per_write']:.3f} preemptions/write | torn {r['torn']}{r['slots']}",
                          flush=True)
                    if args.alone:
                        k += 1
                        print(f"{SIZES[si][0]:>6} {impl:<10} "
                              f"{alone(impl, si, args.secs, f'{os.getpid()}-p{k}', tmp, endpoint)}", flush=True)
    finally:
        if "ndsharray" in impls:
            from ndsharray.admin import stop_daemon

            stop_daemon(endpoint)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
