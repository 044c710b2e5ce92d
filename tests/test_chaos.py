"""Chaos: writers, readers and the daemon are SIGKILLed and restarted at random.

Every frame a reader accepts must be one some writer wrote (frame n is filled with n and
has the shape n implies), and at the end nothing of ours is left in /dev/shm.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import Daemon, our_segments, pid_gone, wait_until

from ndsharray import admin, config

SHAPES = "[(256,), (16, 32), (64, 64)]"
WRITER = f"""
import sys, time, numpy as np, ndsharray
SHAPES = {SHAPES}
tag, n = sys.argv[1], int(sys.argv[2])
w = ndsharray.NdShArray(tag, r_w="w")
while True:
    n += 1
    w.write(np.full(SHAPES[(n // 25) % 3], n, np.uint32))  # shape changes every 25 frames
    time.sleep(0.0005)
"""
READER = f"""
import sys, time, numpy as np, ndsharray
SHAPES = {SHAPES}
handles = [ndsharray.NdShArray(t, r_w="r") for t in sys.argv[1:]]
checked, t_report = 0, time.monotonic()
while True:
    for h in handles:
        status, a = h.read(timeout=0.01)
        if not status:
            continue
        n = int(a.flat[0])
        if a.shape != SHAPES[(n // 25) % 3] or not (a == n).all():
            print(f"BAD {{h.name}} frame {{n}} shape {{a.shape}}", flush=True)
            sys.exit(3)
        checked += 1
    if time.monotonic() - t_report > 0.2:
        print(f"checked {{checked}}", flush=True)
        t_report = time.monotonic()
"""

TAGS = ["chaos/a", "chaos/b"]


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_chaos(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    rng = random.Random(1234)
    writers = {tag: spawn(WRITER, tag, str(0)) for tag in TAGS}
    readers = [spawn(READER, *TAGS) for _ in range(3)]
    finished: list[subprocess.Popen[str]] = []
    kills = {"writer": 0, "reader": 0, "daemon": 0}
    try:
        end = time.monotonic() + 8
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 0.5))
            victim = rng.choice(["writer", "writer", "reader", "reader", "daemon"])
            if victim == "writer":
                tag = rng.choice(TAGS)
                writers[tag].kill()
                finished.append(writers[tag])
                # The successor continues far ahead, so its frames differ from the dead one's.
                writers[tag] = spawn(WRITER, tag, str(rng.randrange(10**6, 10**9)))
            elif victim == "reader":
                k = rng.randrange(len(readers))
                readers[k].kill()
                finished.append(readers[k])
                readers[k] = spawn(READER, *TAGS)
            else:
                pid = admin.daemon_pid(d.endpoint)
                if pid is None:
                    continue  # a successor is still starting
                os.kill(pid, signal.SIGKILL)
                if d.proc is not None and d.proc.pid == pid:
                    d.proc.wait()
                wait_until(lambda p=pid: pid_gone(p), what="killed daemon to be gone")
            kills[victim] += 1
        # Let the last incarnations run a moment under the final daemon, then stop everyone.
        wait_until(lambda: admin.daemon_pid(d.endpoint) is not None, what="a daemon at the end")
        time.sleep(0.5)
    finally:
        alive = list(writers.values()) + readers
        for p in alive:
            p.kill()
        procs = alive + finished
        outputs = [p.communicate(timeout=30) for p in procs]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        admin.stop_daemon(d.endpoint)
    bad = [line for out, _ in outputs for line in out.splitlines() if line.startswith("BAD")]
    reader_outs = [out for p, (out, _) in zip(procs, outputs, strict=True) if "checked" in out]
    checked = sum(int(out.split()[-1]) for out in reader_outs)
    print(f"chaos: killed {kills}, frames checked {checked}, bad {len(bad)}, "
          f"segments left {len(our_segments(d.prefix))}")
    assert not bad, bad[:5]
    assert checked > 200  # how many depends on the machine; every one of them was verified
    assert kills["daemon"] >= 1 and kills["writer"] >= 1 and kills["reader"] >= 1
    assert not our_segments(d.prefix)
    stderr = [err for _, err in outputs if "Traceback" in err and "KeyboardInterrupt" not in err]
    assert not stderr, stderr[0][-2000:]
