"""Worker process: one role of one implementation, driven by the orchestrator (run.py).

    python benchmarks/measure.py ROLE IMPL CTRL_FILE

ROLE is ``writer``, ``reader``, ``limit`` (the in-process copy, no reader), ``zygote``
(starts a fresh reader process per attach measurement and waits until its imports are
done, so neither interpreter start nor imports are timed) or ``fresh`` (that process).
Commands arrive as JSON lines on stdin; each gets one JSON line back on the original
stdout (the library's own prints go to stderr).

A writer and its reader meet in CTRL_FILE, a small shared file of int64 words: the reader
says it is ready for phase ``ph`` (READY), acknowledges latency frames (ACK), says it is
done (DONE); the writer says it stopped (STOP); the orchestrator ends an attach (SERVED).

Frames carry 64-bit words. Latency frames: word 0 is ``time.monotonic_ns()`` taken just
before ``write()``, word 1 the sequence number ``(ph << 32) + k``; ``(ph << 32) | 0xFFFFFFFF``
ends a blocking phase. Throughput frames: every word of frame n holds ``(ph << 32) + n``,
and the reader checks every word of every frame it receives.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from types import ModuleType
from typing import IO, Any

import numpy as np
from peers import load
from peers.base import Array, Reader, Spec, Writer

READY, ACK, STOP, DONE, SERVED = range(5)
CTRL_WORDS = 8
PAGE = os.sysconf("SC_PAGE_SIZE")
NONE_SAMPLES = 4096  # ring of the latest "nothing new" read times
now_ns = time.perf_counter_ns
Ctrl = np.ndarray[Any, Any]


def open_ctrl(path: str) -> Ctrl:
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    return np.frombuffer(mm, np.int64, CTRL_WORDS)


def words(a: Array) -> Array:
    return a.reshape(-1).view(np.uint64)


def term(ph: int) -> int:
    return (ph << 32) | 0xFFFFFFFF


def statm() -> tuple[int, int]:
    """Resident pages, and resident pages that are not file or shared memory (anonymous)."""
    with open("/proc/self/statm") as f:
        _, resident, shared, *_ = (int(x) for x in f.read().split())
    return resident, resident - shared


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.0001)


def drain(r: Reader) -> int:
    """Discard whatever an earlier phase left queued (pipes and sockets queue frames)."""
    n = 0
    for _ in range(3):
        while r.read() is not None:
            n += 1
        time.sleep(0.002)
    return n


# ---- writer ---------------------------------------------------------------------------


def write_latency(w: Writer, ctrl: Ctrl, ph: int, n: int, gap: float, ack_timeout: float,
                  blocking: bool) -> dict[str, Any]:
    """n frames, each sent once the reader acknowledged the previous one and ~gap later."""
    wait_for(lambda: ctrl[READY] == ph, 60, "the reader")
    write_ns, lost = [], 0
    for k in range(1, n + 1):
        buf = w.buffer()
        wd = words(buf)
        seq = (ph << 32) + k
        wd[1] = seq
        wd[0] = time.monotonic_ns()
        t0 = now_ns()
        w.write(buf)
        write_ns.append(now_ns() - t0)
        try:
            wait_for(lambda: ctrl[ACK] >= seq, ack_timeout, f"ack {k}")  # noqa: B023
        except TimeoutError:
            lost += 1  # the reader never got it (1.1.4 drops a frame whose tear it detected)
            if lost >= max(10, n // 10):
                break
        time.sleep(gap * random.uniform(0.5, 1.5))
    ctrl[STOP] = ph
    if blocking:  # wake the reader with a terminating frame
        buf = w.buffer()
        words(buf)[1] = term(ph)
        w.write(buf)
    wait_for(lambda: ctrl[DONE] == ph, 60, "the reader to finish")
    return {"write_ns": write_ns, "lost": lost}


def write_flat_out(w: Writer, ctrl: Ctrl, ph: int, secs: float) -> dict[str, Any]:
    """Fill frame n with the word (ph << 32) + n and write it, as fast as possible."""
    wait_for(lambda: ctrl[READY] == ph, 60, "the reader")
    base, n = ph << 32, 0
    t0 = time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        n += 1
        buf = w.buffer()
        words(buf).fill(base + n)
        w.write(buf)
    ctrl[STOP] = ph
    secs = time.monotonic() - t0
    wait_for(lambda: ctrl[DONE] == ph, 60, "the reader to finish")
    return {"written": n, "secs": secs}


def write_idle(w: Writer, ctrl: Ctrl, ph: int, secs: float) -> dict[str, Any]:
    """Leave the tag idle for secs, then wake the blocked reader."""
    wait_for(lambda: ctrl[READY] == ph, 60, "the reader")
    time.sleep(secs)
    buf = w.buffer()
    words(buf)[1] = term(ph)
    w.write(buf)
    wait_for(lambda: ctrl[DONE] == ph, 60, "the reader to finish")
    return {}


# ---- reader ---------------------------------------------------------------------------


def read_latency(r: Reader, ctrl: Ctrl, ph: int, blocking: bool, copy: bool) -> dict[str, Any]:
    """Busy-poll read() (timing each call) or block in read_blocking(), until STOP/term."""
    drain(r)
    lo, hi, end = (ph << 32) + 1, (ph << 32) + 0xFFFFFFFE, term(ph)
    lat_ns: list[int] = []
    new_ns: list[int] = []
    none_ns = np.zeros(NONE_SAMPLES, np.int64)
    nones = stale = 0
    frame = None
    ctrl[READY] = ph
    while True:
        if blocking:
            got = r.read_blocking()
            t = time.monotonic_ns()
            frame = got
        else:
            t0 = now_ns()
            got = r.read(copy)
            if got is None:
                none_ns[nones % NONE_SAMPLES] = now_ns() - t0
                nones += 1
                if ctrl[STOP] == ph:
                    break
                continue
            t = time.monotonic_ns()
            frame = got  # drops the previous frame: part of the cost of a new one
            new_ns.append(now_ns() - t0)
        if got is None:
            continue
        wd = words(got)
        seq = int(wd[1])
        if seq == end:
            break
        if not lo <= seq <= hi:
            stale += 1
            continue
        lat_ns.append(t - int(wd[0]))
        ctrl[ACK] = seq
    del frame
    ctrl[DONE] = ph
    return {"lat_ns": lat_ns, "new_ns": new_ns, "none_ns": none_ns[: min(nones, NONE_SAMPLES)].tolist(),
            "stale": stale}


def read_verified(r: Reader, ctrl: Ctrl, ph: int, secs: float) -> dict[str, Any]:
    """Busy-poll while the writer runs flat out; check every word of every frame.

    The loop is the usual one: the frame is dropped when the next read() returns.
    """
    drain(r)
    base = ph << 32
    last = base
    good = torn = stale = 0
    rss0 = anon0 = n0 = -1
    got = None
    warm_until = time.monotonic() + 0.25 * secs  # memory baseline after warm-up
    ctrl[READY] = ph
    t0 = time.monotonic()
    while ctrl[STOP] != ph:
        got = r.read()
        if got is None:
            continue
        wd = words(got)
        v = int(wd[0])
        if (wd != wd[0]).any():
            torn += 1
        elif v <= last:  # an earlier phase's frame, or one seen before
            stale += 1
        else:
            good += 1
            last = v
        if n0 < 0 and time.monotonic() > warm_until:
            (rss0, anon0), n0 = statm(), good
    secs = time.monotonic() - t0
    del got
    ctrl[DONE] = ph
    res = {"good": good, "torn": torn, "stale": stale, "secs": secs, **r.counters()}
    if n0 >= 0 and good > n0:
        rss1, anon1 = statm()
        res |= {"mem_per_read": (rss1 - rss0) * PAGE / (good - n0),
                "anon_per_read": (anon1 - anon0) * PAGE / (good - n0)}
    return res


def read_idle(r: Reader, ctrl: Ctrl, ph: int) -> dict[str, Any]:
    """Block on an idle tag until the writer's terminating frame; CPU time from os.times()."""
    drain(r)
    ctrl[READY] = ph
    c0, t0 = os.times(), time.monotonic()
    while True:
        got = r.read_blocking()
        if got is not None and int(words(got)[1]) == term(ph):
            break
    c1, t1 = os.times(), time.monotonic()
    del got
    ctrl[DONE] = ph
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"cpu_s": cpu, "secs": t1 - t0}


# ---- limit (one process) --------------------------------------------------------------


def limit_latency(w: Writer, n: int, gap: float) -> dict[str, Any]:
    buf = w.buffer()
    wd = words(buf)
    write_ns, lat_ns = [], []
    for _ in range(n):
        wd[0] = stamp = time.monotonic_ns()
        t0 = now_ns()
        w.write(buf)
        t1 = now_ns()
        lat_ns.append(time.monotonic_ns() - stamp)
        write_ns.append(t1 - t0)
        time.sleep(gap * random.uniform(0.5, 1.5))
    return {"write_ns": write_ns, "new_ns": write_ns, "lat_ns": lat_ns}


def limit_flat_out(w: Writer, secs: float) -> dict[str, Any]:
    buf, n = w.buffer(), 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        w.write(buf)
        n += 1
    return {"good": n, "torn": 0, "secs": time.monotonic() - t0}


# ---- attach (zygote) ------------------------------------------------------------------


def attach_child(mod: ModuleType, spec: Spec, timeout: float) -> dict[str, Any]:
    t0 = now_ns()
    r = mod.Reader()
    r.setup(spec)
    deadline = time.monotonic() + timeout
    got = r.read()
    while got is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no frame within {timeout:g} s")
        got = r.read()
    t1 = now_ns()
    if got.shape != spec.shape:
        raise ValueError(f"first frame has shape {got.shape}, expected {spec.shape}")
    del got
    r.close()
    return {"attach_ns": t1 - t0}


def attach(impl: str, spec: Spec, timeout: float) -> dict[str, Any]:
    """Start a fresh interpreter that imports the implementation, then (timed) attaches and
    reads once, like a user's program starting up.

    Not a fork of this process: a forked child pays a copy-on-write page fault for every
    page of the parent's heap it touches (about 300 faults, 2-3 ms, on a 2-vCPU VM, for any
    implementation), which says more about fork than about attaching.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "fresh", impl, "-"]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            return {"error": "attach child died while importing"}
        child.stdin.write(json.dumps({"spec": asdict(spec), "timeout": timeout}) + "\n")
        child.stdin.flush()
        line = child.stdout.readline()
        return json.loads(line or '{"error": "attach child died"}')  # type: ignore[no-any-return]
    finally:
        child.stdin.close()
        child.stdout.close()
        if child.wait(timeout + 30) != 0:
            raise RuntimeError(f"attach child exited with {child.returncode}")


def fresh(mod: ModuleType, out: IO[str]) -> None:
    """The attaching process: say when imports are done, then attach once when told."""
    print("ready", file=out, flush=True)
    cmd = json.loads(sys.stdin.readline())
    spec = Spec(**{**cmd["spec"], "shape": tuple(cmd["spec"]["shape"])})
    try:
        res = attach_child(mod, spec, cmd["timeout"])
    except Exception as exc:  # noqa: BLE001 - report it, whatever it is
        res = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(res), file=out, flush=True)


# ---- command loop ---------------------------------------------------------------------


def hello(mod: ModuleType) -> dict[str, Any]:
    """What this implementation can do; the orchestrator marks the rest n/a."""
    na = dict(getattr(mod, "NA", {}))
    reader = mod.Reader
    if reader is not None and not reader.blocking:
        na.setdefault("lat_block", "no blocking read (busy-poll only)")
        na.setdefault("idle_cpu", "no blocking read: a waiting reader polls, 100% of a core")
    return {"na": na, "copy_option": bool(reader and reader.copy_option)}


def handle(role: str, mod: ModuleType, ctrl: Ctrl | None, state: dict[str, Any],
           cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "hello":
        return hello(mod)
    if op in ("attach", "setup"):
        spec = Spec(**{**cmd["spec"], "shape": tuple(cmd["spec"]["shape"])})
        if op == "attach":
            return attach(state["impl"], spec, cmd["timeout"])
        state["obj"] = mod.Reader() if role == "reader" else mod.Writer()
        state["obj"].setup(spec)
        return {}
    obj: Any = state.get("obj")
    if op == "close":
        if obj is not None:
            state.pop("obj").close()
        return {}
    if op == "sync":
        obj.sync()
        return {}
    ph, kind = cmd.get("ph", 0), cmd.get("kind")
    if role == "limit":
        if kind == "lat_busy":
            return limit_latency(obj, cmd["n"], cmd["gap"])
        if kind == "sustained":
            return limit_flat_out(obj, cmd["secs"])
        raise ValueError(f"{role} cannot do {cmd}")
    assert ctrl is not None
    if role == "writer":
        if kind in ("lat_busy", "lat_copy", "lat_block"):
            return write_latency(obj, ctrl, ph, cmd["n"], cmd["gap"], cmd["ack_timeout"], kind == "lat_block")
        if kind == "sustained":
            return write_flat_out(obj, ctrl, ph, cmd["secs"])
        if kind == "idle":
            return write_idle(obj, ctrl, ph, cmd["secs"])
        if kind == "serve":
            c = ctrl
            obj.serve_attach(lambda: bool(c[SERVED] == ph))
            return {}
    elif role == "reader":
        if kind in ("lat_busy", "lat_copy", "lat_block"):
            return read_latency(obj, ctrl, ph, kind == "lat_block", kind == "lat_copy")
        if kind == "sustained":
            return read_verified(obj, ctrl, ph, cmd["secs"])
        if kind == "idle":
            return read_idle(obj, ctrl, ph)
    raise ValueError(f"{role} cannot do {cmd}")


def profiled(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Debugging aid (NDSB_PROFILE=<phase kind>): cProfile one phase into the worker log."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    res = prof.runcall(fn, *args)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    os.write(2, f"---- profile of {what}\n{text.getvalue()}".encode())  # one write: no interleaving
    return res


def main() -> None:
    role, impl, ctrl_path = sys.argv[1:4]
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to the log, not into the replies
    mod = load(impl)
    if role == "fresh":
        fresh(mod, out)
        return
    ctrl = open_ctrl(ctrl_path) if ctrl_path != "-" else None
    state: dict[str, Any] = {"impl": impl}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            if cmd.get("kind") and cmd.get("kind") == os.environ.get("NDSB_PROFILE"):
                res = profiled(f"{impl} {role} {cmd['kind']}", handle, role, mod, ctrl, state, cmd)
            else:
                res = handle(role, mod, ctrl, state, cmd)
        except Exception as exc:  # noqa: BLE001 - the orchestrator reports it
            traceback.print_exc()
            res = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(res) + "\n")
        out.flush()
    if state.get("obj") is not None:
        state.pop("obj").close()


if __name__ == "__main__":
    main()
