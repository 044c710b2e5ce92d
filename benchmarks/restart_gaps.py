"""How long do readers go without frames when the daemon is SIGKILLed and restarted?

    python benchmarks/restart_gaps.py [--kills 4] [--every 2.0] [--shape-change]

On a private endpoint with auto-start on, it runs a writer of 1 KiB frames at 200 Hz (frame
n holds the 64-bit word n), a reader doing ``read(timeout=0.5)`` in a loop, and a reader that
closes and reopens its handle after every few frames; then it SIGKILLs the daemon every
``--every`` seconds (the clients start a new one by themselves). ``--shape-change``: the
writer changes shape right after each kill (SIGUSR1), which needs the new daemon.

Each reader logs every gap over 100 ms between two frames it received, with when it began
relative to the last kill, and, if the gap lasted past 150 ms, where its main thread was
at that moment (a stack sampled by a watchdog thread): a daemon request, start_daemon, the
registrar's lock, ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

TAG = "gaps/cam"
GAP = 0.1


def _daemon_pid(endpoint: str) -> int | None:
    """The pid in the daemon's lock file if that process lives (no client internals: this
    script also measures older versions)."""
    from ndsharray import config
    try:
        with open(config.lock_path(endpoint)) as f:
            pid = int(f.readline().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None  # none runs, or one is starting and has not written its pid yet
    return pid


def writer(stop_after: float, reopen: bool, big: bool) -> None:
    import numpy as np

    from ndsharray import NdShArray
    change = [False]
    signal.signal(signal.SIGUSR1, lambda *a: change.__setitem__(0, True))
    shapes = [(128,), (256,)]  # 1 KiB and 2 KiB of uint64
    if big:
        shapes = [(720, 1280, 3 // 3), (360, 640)]  # 7.4 MB and 1.8 MB of uint64
    k = 0
    w = NdShArray(TAG, np.zeros(shapes[0], np.uint64), "w")
    n = 0
    t0 = time.monotonic()
    worst = 0.0
    while time.monotonic() - t0 < stop_after:
        if change[0]:
            change[0] = False
            if reopen:
                s = time.monotonic()
                w.close()
                w = NdShArray(TAG, np.zeros(shapes[k], np.uint64), "w")
                print(json.dumps({"who": "writer", "reopen_took": round(time.monotonic() - s, 3)}), flush=True)
            else:
                k ^= 1
        n += 1
        a = np.full(shapes[k], n, np.uint64)
        s = time.monotonic()
        w.write(a)
        took = time.monotonic() - s
        if took > GAP:
            print(json.dumps({"who": "writer", "write_took": round(took, 3), "at": round(s, 3)}), flush=True)
        worst = max(worst, took)
        time.sleep(0.005)
    print(json.dumps({"who": "writer", "frames": n, "worst_write": round(worst, 4)}), flush=True)
    w.close()


class Watchdog:
    """Samples the main thread's stack when no frame arrived for 150 ms (once per gap)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.sampled: str | None = None
        self.main = threading.main_thread().ident
        threading.Thread(target=self._run, daemon=True).start()

    def frame(self) -> None:
        self.last = time.monotonic()
        self.sampled = None

    def _run(self) -> None:
        while True:
            time.sleep(0.02)
            if self.sampled is None and time.monotonic() - self.last > 0.15:
                f = sys._current_frames().get(self.main)  # type: ignore[arg-type]
                if f is not None:
                    st = traceback.extract_stack(f)
                    self.sampled = " <- ".join(f"{os.path.basename(x.filename)}:{x.lineno} {x.name}"
                                               for x in reversed(st[-8:]))


def reader(stop_after: float, reopen: bool, every: int) -> None:
    from ndsharray import NdShArray
    wd = Watchdog()
    r = NdShArray(TAG, r_w="r")
    t0 = time.monotonic()
    last = time.monotonic()
    frames = 0
    reopens = 0
    while time.monotonic() - t0 < stop_after:
        ok, a = r.read(timeout=0.5)
        now = time.monotonic()
        if ok:
            frames += 1
            if now - last > GAP:
                print(json.dumps({"who": "reopener" if reopen else "reader", "gap": round(now - last, 3),
                                  "began": round(last, 3), "where": wd.sampled}), flush=True)
            last = now
            wd.frame()
            del a
            if reopen and frames % every == 0:
                s = time.monotonic()
                r.close()
                c = time.monotonic()
                r = NdShArray(TAG, r_w="r")
                o = time.monotonic()
                reopens += 1
                if o - s > 0.05:
                    print(json.dumps({"who": "reopener", "close_took": round(c - s, 3),
                                      "open_took": round(o - c, 3), "at": round(s, 3)}), flush=True)
    print(json.dumps({"who": "reopener" if reopen else "reader", "frames": frames, "reopens": reopens}),
          flush=True)
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--shape-change", action="store_true")
    ap.add_argument("--jitter", action="store_true", help="wait a random 0.05 s..--every between kills "
                    "(some kills then hit a daemon that is still starting)")
    ap.add_argument("--writer-reopen", action="store_true",
                    help="the writer closes and reopens its handle right after each kill")
    ap.add_argument("--big", action="store_true", help="720x1280 uint64 frames, not 1 KiB")
    ap.add_argument("--reopen-every", type=int, default=5, help="frames between a reader's reopens")
    ap.add_argument("--role", default="")
    ap.add_argument("--run", type=float, default=0)
    opt = ap.parse_args()
    if opt.role == "writer":
        return writer(opt.run, opt.writer_reopen, opt.big)
    if opt.role in ("reader", "reopener"):
        return reader(opt.run, opt.role == "reopener", opt.reopen_every)
    folder = tempfile.mkdtemp(prefix="ndsg")
    endpoint = f"ipc://{folder}/d.sock"
    env = dict(os.environ, NDSHARRAY_ENDPOINT=endpoint, NDSHARRAY_AUTOSTART="1")
    os.environ.update(env)
    run = 1.5 + opt.kills * opt.every + 1.5
    procs: list[subprocess.Popen[str]] = []
    kills: list[float] = []
    try:
        me = os.path.abspath(__file__)
        w = subprocess.Popen([sys.executable, me, "--role", "writer", "--run", str(run)]
                             + ["--writer-reopen"] * opt.writer_reopen + ["--big"] * opt.big,
                             env=env, stdout=subprocess.PIPE, text=True)
        procs.append(w)
        time.sleep(0.5)
        for role in ("reader", "reopener"):
            procs.append(subprocess.Popen([sys.executable, me, "--role", role, "--run", str(run - 0.5),
                                           "--reopen-every", str(opt.reopen_every)],
                                          env=env, stdout=subprocess.PIPE, text=True))
        time.sleep(1.0)
        for _ in range(opt.kills):
            pid = _daemon_pid(endpoint)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                kills.append(time.monotonic())
                if opt.shape_change or opt.writer_reopen:
                    w.send_signal(signal.SIGUSR1)
                t = time.monotonic()
                while _daemon_pid(endpoint) in (None, pid) and time.monotonic() - t < 10 and not opt.jitter:
                    time.sleep(0.005)
                print(f"kill at {kills[-1]:.3f}: new daemon after {time.monotonic() - t:.3f} s", flush=True)
            time.sleep(random.uniform(0.05, opt.every) if opt.jitter else opt.every)
        for p in procs:
            out, _ = p.communicate(timeout=60)
            for line in out.splitlines():
                rec: dict[str, Any] = json.loads(line)
                if "began" in rec:
                    since = [rec["began"] - k for k in kills if k <= rec["began"] + 0.2]
                    rec["began_after_kill"] = round(min(since), 3) if since else None
                    del rec["began"]
                print(json.dumps(rec))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pid = _daemon_pid(endpoint)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            t = time.monotonic()
            while _daemon_pid(endpoint) is not None and time.monotonic() - t < 10:
                time.sleep(0.01)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
