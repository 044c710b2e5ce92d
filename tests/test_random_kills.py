"""Writers, readers and the daemon SIGKILLed and restarted at random: no false frame, no leak.

Every frame a reader accepts must be one some writer wrote (frame n is filled with n and
has the shape n implies), and at the end nothing of ours is left in /dev/shm.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
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


class Proc:
    """A child running ``code``; a thread collects its stdout lines as they come."""

    def __init__(self, code: str, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.strip())

    def checked(self) -> int:
        """Frames this reader has verified, by its latest report."""
        counts = [int(x.split()[-1]) for x in self.lines if x.startswith("checked")]
        return counts[-1] if counts else 0

    def kill(self) -> None:
        self.p.kill()

    def finish(self) -> str:
        """Kill, reap, and return stderr (stdout is in ``lines``)."""
        self.p.kill()
        _, err = self.p.communicate(timeout=30)
        self._pump.join(30)
        return err


def test_random_sigkills_never_show_a_false_frame_nor_leak_a_segment(folder: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    rng = random.Random(1234)
    writers = {tag: Proc(WRITER, tag, str(0)) for tag in TAGS}
    readers = [Proc(READER, *TAGS) for _ in range(3)]
    finished: list[Proc] = []
    kills = {"writer": 0, "reader": 0, "daemon": 0}
    errors: list[str] = []
    try:
        # Frames flow before the chaos starts (a loaded machine starts Pythons slowly).
        wait_until(lambda: all(r.checked() for r in readers), timeout=60, what="first frames")
        end = time.monotonic() + 8
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 0.5))
            victim = rng.choice(["writer", "writer", "reader", "reader", "daemon"])
            if victim == "writer":
                tag = rng.choice(TAGS)
                writers[tag].kill()
                finished.append(writers[tag])
                # The successor continues far ahead, so its frames differ from the dead one's.
                writers[tag] = Proc(WRITER, tag, str(rng.randrange(10**6, 10**9)))
            elif victim == "reader":
                k = rng.randrange(len(readers))
                readers[k].kill()
                finished.append(readers[k])
                readers[k] = Proc(READER, *TAGS)
            else:
                pid = admin.daemon_pid(d.endpoint)
                if pid is None:
                    continue  # a successor is still starting
                os.kill(pid, signal.SIGKILL)
                if d.proc is not None and d.proc.pid == pid:
                    d.proc.wait()
                wait_until(lambda p=pid: pid_gone(p), what="killed daemon to be gone")
            kills[victim] += 1
        # After the chaos, every reader still running verifies new frames of both tags'
        # last writers, under the last daemon: everything recovered by itself.
        wait_until(lambda: admin.daemon_pid(d.endpoint) is not None, what="a daemon at the end")
        after = [r.checked() for r in readers]
        wait_until(lambda: all(r.checked() > n + 10 for r, n in zip(readers, after, strict=True)),
                   timeout=60, what="every reader to verify frames after the chaos")
    finally:
        procs = list(writers.values()) + readers + finished
        errors = [p.finish() for p in procs]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        admin.stop_daemon(d.endpoint)
    bad = [line for p in procs for line in p.lines if line.startswith("BAD")]
    checked = sum(p.checked() for p in procs)
    print(f"chaos: killed {kills}, frames checked {checked}, bad {len(bad)}, "
          f"segments left {len(our_segments(d.prefix))}")
    assert not bad, bad[:5]
    assert kills["daemon"] >= 1 and kills["writer"] >= 1 and kills["reader"] >= 1
    assert not our_segments(d.prefix)
    stderr = [err for err in errors if "Traceback" in err and "KeyboardInterrupt" not in err]
    assert not stderr, stderr[0][-2000:]
