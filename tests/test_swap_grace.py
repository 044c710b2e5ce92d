"""A reader that holds one frame never makes the ring grow, even when it is preempted
between pinning its new frame and dropping its old one (two pins for milliseconds)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np

import ndsharray

# Reads flat out and keeps each new frame until the next one, as `for a in reader` does,
# but is "preempted" for 3 ms mid-swap every time: old and new frame both pinned.
SWAPPER = """
import sys, time, ndsharray
r = ndsharray.NdShArray(sys.argv[1], r_w="r")
held, swaps, deadline = None, 0, time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < deadline:
    ok, new = r.read()
    if ok:
        time.sleep(0.003)
        held, swaps = new, swaps + 1
del held, new
r.close()
print(swaps, flush=True)
"""


def test_a_reader_preempted_mid_swap_never_grows_the_ring(daemon: Any) -> None:
    frame = np.zeros(1024, np.uint8)
    with ndsharray.NdShArray("swap/grace", frame, r_w="w", slots=3) as w:
        gen = w.generation
        child = subprocess.Popen([sys.executable, "-c", SWAPPER, "swap/grace", "1.5"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            while child.poll() is None:  # flat out while the reader swaps
                w.write(frame)
            swaps = int(child.stdout.read().split()[-1])
        finally:
            child.kill()
            child.wait()
        assert swaps > 50  # the reader did swap, under a writer that never paused
        info = ndsharray.tag_info("swap/grace")
        assert (info.slots, w.generation) == (3, gen)
