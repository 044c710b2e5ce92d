"""A reader preempted between pinning its new frame and dropping its old one holds two pins
for milliseconds. The writer waits that out for as long as growing the ring would cost
(ring.grow_grace): a big ring does not grow, a small one grows rather than hold the writer
up at every such moment."""

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


def swap_against_a_flat_out_writer(tag: str, frame: np.ndarray[Any, Any]) -> tuple[int, bool]:
    """The ring's slot count, and whether it had a new generation, after a writer wrote
    ``frame`` flat out for 1.5 s while SWAPPER read it."""
    with ndsharray.NdShArray(tag, frame, r_w="w", slots=3) as w:
        gen = w.generation
        child = subprocess.Popen([sys.executable, "-c", SWAPPER, tag, "1.5"],
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
        return ndsharray.tag_info(tag).slots, w.generation != gen


def test_a_big_ring_waits_out_a_reader_preempted_mid_swap_instead_of_growing(daemon: Any) -> None:
    # 8 MiB frames: growing to 6 slots would cost ~25 ms, so the writer waits up to 20 ms
    # for the reader's 3 ms. (It grew to 6 with the former 2 ms grace.)
    assert swap_against_a_flat_out_writer("swap/big", np.zeros(8 << 20, np.uint8)) == (3, False)


def test_a_small_ring_grows_rather_than_wait_on_a_reader_preempted_mid_swap(daemon: Any) -> None:
    # 1 KiB frames: growing costs a daemon call, waiting 3 ms at every swap would cap the
    # writer at the reader's pace, so the ring grows once, to 6, after the 2 ms minimum.
    # (It stayed at 3, the writer waiting at every swap, with a fixed 20 ms grace.)
    assert swap_against_a_flat_out_writer("swap/small", np.zeros(1024, np.uint8)) == (6, True)
