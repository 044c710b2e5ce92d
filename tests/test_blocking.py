"""Blocking reads (futex), iteration, zero-copy loans, and a daemon-free hot path."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import wait_until

import ndsharray
from ndsharray.layout import OFF_NOTIFY, READER_ROWS, ROW_SIZE

# The wake-up tests take away the reader's safety net (a waiting reader looks again every
# WAIT_SLICE seconds even if nobody wakes it) and expect the wake-up well before it ends:
# a reader that is never woken fails the test instead of passing a second late.
NO_SAFETY_NET = 60.0
WOKEN_WITHIN = 10.0  # generous for a loaded machine, far under NO_SAFETY_NET


def asleep(r: ndsharray.NdShArray, thread: threading.Thread) -> bool:
    """True once ``thread`` sleeps in FUTEX_WAIT on the notify word of ``r``'s segment: a
    write now must wake it (the next look of its own would be a minute away). Read from
    /proc: a thread that merely said it may sleep (its row's sleepers count) can still see
    the write before it sleeps, and then needs no wake-up."""
    seg = r._seg
    if seg is None or thread.native_id is None:
        return False
    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            fields = f.read().split()
    except OSError:  # no such file on this kernel: the sleepers count is the best we have
        rows = seg.layout.rows_offset
        return any(struct.unpack_from("@I", seg.mm, rows + ROW_SIZE * k)[0]
                   for k in range(READER_ROWS))
    # "<syscall number> <first argument> ...", or "running"
    return len(fields) > 1 and int(fields[1], 16) == seg.base_addr + OFF_NOTIFY


class Waiter(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result and its thread CPU time."""

    def __init__(self, fn: Any) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.cpu = 0.0
        self.started_wait = threading.Event()

    def run(self) -> None:
        t0 = time.thread_time()
        self.started_wait.set()
        self.result = self.fn()
        self.cpu = time.thread_time() - t0


def test_blocking_read_is_woken_by_a_write_from_another_process(daemon: Any, puppets: Any,
                                                                monkeypatch: Any) -> None:
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", NO_SAFETY_NET)
    writer = puppets()
    writer.start_writer("blk", "f4", [100], 1)
    with ndsharray.NdShArray("blk", r_w="r") as r:
        assert r.read()[0]
        waiter = Waiter(lambda: r.read(timeout=NO_SAFETY_NET))
        waiter.start()
        wait_until(lambda: asleep(r, waiter), what="the reader to fall asleep")
        writer(op="write", name="w", dtype="f4", shape=[100], seed=2)
        waiter.join(WOKEN_WITHIN)
        assert not waiter.is_alive(), f"the blocked reader was not woken within {WOKEN_WITHIN} s"
        status, arr = waiter.result
        assert status is True and digest(arr) == digest(make_array("f4", (100,), 2))


def test_blocking_read_times_out_without_cpu(daemon: Any) -> None:
    with ndsharray.NdShArray("idle", np.arange(3), "w"), ndsharray.NdShArray("idle", r_w="r") as r:
        status, first = r.read()
        waiter = Waiter(lambda: r.read(timeout=0.5))
        t0 = time.monotonic()
        waiter.start()
        waiter.join(30)
        assert time.monotonic() - t0 >= 0.5
        status, arr = waiter.result
        assert status is False and arr is first
        assert waiter.cpu < 0.05, f"a blocked reader used {waiter.cpu:.3f} s of CPU in 0.5 s"


def test_wait_does_not_consume(daemon: Any) -> None:
    with ndsharray.NdShArray("w8", np.arange(3), "w") as w, ndsharray.NdShArray("w8", r_w="r") as r:
        assert r.wait(5) is True and r.wait(5) is True  # the first write is still unread
        assert r.read()[0]
        assert r.wait(0.01) is False
        w.write(np.arange(3) + 1)
        assert r.wait(5) is True
        assert r.read()[1].tolist() == [1, 2, 3]


def test_blocking_reader_before_any_writer(daemon: Any, puppets: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", NO_SAFETY_NET)
    with ndsharray.NdShArray("late", r_w="r") as r:
        waiter = Waiter(lambda: r.read(timeout=NO_SAFETY_NET))
        waiter.start()
        waiter.started_wait.wait()
        writer = puppets()
        writer.start_writer("late", "u2", [2, 2], 5)
        waiter.join(WOKEN_WITHIN)  # (no segment to sleep on yet: it looks for one)
        assert not waiter.is_alive(), f"the waiting reader found no first frame within {WOKEN_WITHIN} s"
        status, arr = waiter.result
        assert status and digest(arr) == digest(make_array("u2", (2, 2), 5))
        # Now it sleeps on the writer's segment: the next write must wake it.
        waiter = Waiter(lambda: r.read(timeout=NO_SAFETY_NET))
        waiter.start()
        wait_until(lambda: asleep(r, waiter), what="the reader to fall asleep")
        writer(op="write", name="w", dtype="u2", shape=[2, 2], seed=6)
        waiter.join(WOKEN_WITHIN)
        assert not waiter.is_alive(), f"the blocked reader was not woken within {WOKEN_WITHIN} s"
        status, arr = waiter.result
        assert status and digest(arr) == digest(make_array("u2", (2, 2), 6))


def test_blocking_reader_follows_a_shape_change(daemon: Any, monkeypatch: Any) -> None:
    # The old segment's retirement wakes the reader (the new segment's write cannot: the
    # reader does not sleep on it yet).
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", NO_SAFETY_NET)
    with ndsharray.NdShArray("grow", np.zeros(2), "w") as w, ndsharray.NdShArray("grow", r_w="r") as r:
        assert r.read()[0]
        waiter = Waiter(lambda: r.read(timeout=NO_SAFETY_NET))
        waiter.start()
        wait_until(lambda: asleep(r, waiter), what="the reader to fall asleep")
        w.write(np.ones((3, 3), np.int16))
        waiter.join(WOKEN_WITHIN)
        assert not waiter.is_alive(), f"the blocked reader was not woken within {WOKEN_WITHIN} s"
        status, arr = waiter.result
        assert status and arr.shape == (3, 3) and arr.dtype == np.int16


def test_iteration_yields_each_frame_and_ends_on_close(daemon: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", NO_SAFETY_NET)
    w = ndsharray.NdShArray("it", r_w="w")
    r = ndsharray.NdShArray("it", r_w="r")
    seen: list[float] = []
    got_three = threading.Event()

    def consume() -> None:
        for frame in r:
            seen.append(float(frame[0]))
            if len(seen) == 3:
                got_three.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        for k in range(3):
            if k:  # (the first frame it finds by looking: there is no segment to sleep on)
                wait_until(lambda: asleep(r, t), what="the iterating reader to fall asleep")
            w.write(np.full(4, float(k)))
            wait_until(lambda k=k: len(seen) > k, timeout=WOKEN_WITHIN, what=f"frame {k} to reach the iterator")
        assert got_three.wait(WOKEN_WITHIN)
    finally:
        r.close()  # wakes the blocked iterator in the other thread
        t.join(30)
        w.close()
    assert not t.is_alive() and seen == [0.0, 1.0, 2.0]


def test_loan_publishes_on_exit_and_aborts_on_exception(daemon: Any) -> None:
    with ndsharray.NdShArray("loan", r_w="w") as w, ndsharray.NdShArray("loan", r_w="r") as r:
        with pytest.raises(ValueError, match="needs shape"):
            with w.loan():
                pass
        with w.loan((2, 3), np.float32) as buf:
            np.add(np.ones((2, 3), np.float32), 1, out=buf)
        assert not buf.flags.writeable  # a stale reference cannot scribble on shared memory
        status, arr = r.read()
        assert status and arr.tolist() == [[2.0] * 3] * 2
        with pytest.raises(RuntimeError, match="camera failed"):
            with w.loan() as buf:
                buf[...] = 7
                raise RuntimeError("camera failed")
        assert r.read()[0] is False  # nothing was published
        with w.loan() as buf:
            buf[...] = 3
        assert r.read()[1].tolist() == [[3.0] * 3] * 2
        with w.loan(dtype=np.uint8) as buf:  # same shape, new dtype: new generation
            buf[...] = 9
        status, arr = r.read()
        assert status and arr.dtype == np.uint8 and arr.shape == (2, 3) and (arr == 9).all()


def test_hot_path_never_calls_the_daemon(daemon: Any) -> None:
    frame = np.zeros((64, 64), np.float32)
    with ndsharray.NdShArray("hot", frame, "w") as w, ndsharray.NdShArray("hot", r_w="r") as r:
        r.read()
        before = ndsharray.daemon_stats().requests
        for k in range(10_000):
            frame[0, 0] = k
            w.write(frame)
            status, arr = r.read()
            assert status and arr[0, 0] == k
        with w.loan() as buf:
            buf[...] = 1
        assert r.read(timeout=1)[0]
        after = ndsharray.daemon_stats().requests
        assert after - before == 1  # the second daemon_stats() call itself


def test_no_wake_up_is_lost_in_a_ping_pong(daemon: Any, monkeypatch: Any) -> None:
    # Lost wake-ups must show, and a slow machine must not pass for one: no 1 s safety net.
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", 30.0)
    # A lost wake-up would leave the reader asleep until the end of its 1 s wait slice:
    # every round trip must complete well within that. Random pauses on both sides vary
    # who comes first.
    n = 1500
    acks: list[int] = []
    ready = threading.Event()
    failures: list[str] = []
    rng = np.random.default_rng(5)
    pauses = rng.integers(0, 200, size=n) * 1e-6

    with ndsharray.NdShArray("pp", np.zeros(2), "w") as w, ndsharray.NdShArray("pp", r_w="r") as r:
        assert r.read()[0]
        got = threading.Semaphore(0)

        def reader() -> None:
            ready.set()
            for k in range(1, n + 1):
                status, a = r.read(timeout=30)  # longer than the writer waits for its ack
                if not status or int(a[0]) != k:
                    failures.append(f"frame {k}: status {status}, got {a[:1]}")
                    got.release()
                    return
                acks.append(k)
                got.release()
                time.sleep(float(pauses[k - 1]) / 2)

        t = threading.Thread(target=reader)
        t.start()
        ready.wait()
        for k in range(1, n + 1):
            time.sleep(float(pauses[k - 1]))
            w.write(np.array([k, 0.0]))
            assert got.acquire(timeout=10), f"write {k}: the blocked reader was not woken"
            assert not failures, failures
        t.join()
        assert acks == list(range(1, n + 1))
        # Back to polling: no reader says it may sleep, so writes wake nobody.
        r.read()
        seg = w._seg
        assert seg is not None
        rows = seg.layout.rows_offset
        assert all(seg.mm[rows + 64 * k : rows + 64 * k + 4] == bytes(4) for k in range(4))


def test_writes_leave_the_notify_word_alone_while_no_reader_sleeps(daemon: Any, monkeypatch: Any) -> None:
    # The notify word shares a cache line with the retired word that every read() loads;
    # a write that stored it while nobody sleeps made that line bounce between the writer's
    # and the readers' cores (issue 16). It moves only for a write that wakes a sleeper.
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", NO_SAFETY_NET)
    frame = np.zeros(16)
    with ndsharray.NdShArray("quiet", frame, "w") as w, ndsharray.NdShArray("quiet", r_w="r") as r:
        seg = w._seg
        assert seg is not None

        def notify() -> int:
            return int(struct.unpack_from("<I", seg.mm, OFF_NOTIFY)[0])

        assert r.read()[0]
        before = notify()
        for k in range(1, 1001):
            frame[0] = k
            w.write(frame)
            assert r.read()[0]
        assert notify() == before, "writes with no sleeping reader moved the notify word"
        waiter = Waiter(lambda: r.read(timeout=NO_SAFETY_NET))
        waiter.start()
        wait_until(lambda: asleep(r, waiter), what="the reader to fall asleep")
        frame[0] = -1
        w.write(frame)
        waiter.join(WOKEN_WITHIN)
        assert not waiter.is_alive(), f"the blocked reader was not woken within {WOKEN_WITHIN} s"
        status, arr = waiter.result
        assert status and arr[0] == -1
        assert notify() != before
