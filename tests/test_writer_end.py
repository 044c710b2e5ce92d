"""End of stream seen by a blocked reader: a writer that closes wakes it itself; a writer
that dies (SIGKILL) cannot, so the daemon does when it notices (ndsharray/liveness.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import ndsharray
from ndsharray.liveness import WriterWatch
from ndsharray.reader import Reader


def blocked_reader(tag: str) -> tuple[Reader, Any]:
    r = ndsharray.NdShArray(tag, r_w="r")
    status, _ = r.read(timeout=10)
    assert status
    seg = r._seg
    assert seg is not None
    return r, seg


def sleep_in_wait(seg: Any, count: int, expect: int) -> tuple[threading.Thread, list[float]]:
    """A thread asleep in the segment's futex wait for up to 30 s, unless the notify word
    moved from ``expect``; records how long it slept."""
    took: list[float] = []

    def run() -> None:
        t0 = time.monotonic()
        seg._c.wait(count, 30.0, expect)
        took.append(time.monotonic() - t0)

    t = threading.Thread(target=run)
    t.start()
    return t, took


@pytest.mark.parametrize("how", ["close", "kill"])
def test_a_blocked_wait_returns_when_the_writer_closes_or_dies(daemon: Any, puppets: Any, how: str) -> None:
    p = puppets()
    p.start_writer("cam/end", "uint8", [64], seed=1)
    r, seg = blocked_reader("cam/end")
    with r:
        watch = WriterWatch()
        assert watch.state(seg) == ("alive", p.pid)
        # As a blocking read does: the notify word first, then the writer's state, then sleep
        # unless the word moved (the thread may sleep before or after the writer goes).
        t, took = sleep_in_wait(seg, r._count, seg._c.notify)
        if how == "close":
            p(op="close", name="w")
        else:
            p.kill()
        t.join(20)
        assert took and took[0] < 10, took  # woken, not the 30 s timeout
        assert watch.state(seg) == ("closed" if how == "close" else "died", p.pid)
        watch.close()

