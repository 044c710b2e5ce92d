"""One handle used from several threads: no torn frame, no lost wake-up, no crash on close.

Found by review of the v2 slot protocol (the writer copies large frames without the GIL,
and a reader row has one may-sleep count for all the threads of its handle).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import numpy as np

import ndsharray

BIG = 64 * 1024  # float64 words: 512 KiB, copied without the GIL


def test_two_threads_writing_through_one_handle_never_tear_a_frame(daemon: Any) -> None:
    stop = threading.Event()
    errors: list[str] = []
    with ndsharray.NdShArray("tt", np.zeros(BIG), "w", slots=4) as w, \
            ndsharray.NdShArray("tt", r_w="r") as r:

        def writer(base: float) -> None:
            k = 0
            while not stop.is_set():
                k += 1
                w.write(np.full(BIG, base + k))

        threads = [threading.Thread(target=writer, args=(b,)) for b in (1e6, 2e6)]
        for t in threads:
            t.start()
        frames = 0
        try:
            while frames < 300:
                status, a = r.read(timeout=5)
                assert status
                if a[0] != a[-1] or not (a == a[0]).all():
                    errors.append(f"torn frame {r.write_count}: first {a[0]}, last {a[-1]}")
                frames += 1
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:3]


def test_a_thread_waiting_briefly_does_not_steal_another_threads_wake_ups(daemon: Any, monkeypatch: Any) -> None:
    # Thread B blocks for every frame; thread A keeps waiting for short times on the same
    # handle. Each frame is written only after B acknowledged the previous one: a lost
    # wake-up would leave B asleep past the writer's 10 s deadline (no 1 s safety net here).
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", 30.0)
    n = 200
    got = threading.Semaphore(0)
    seen: list[int] = []
    done = threading.Event()
    with ndsharray.NdShArray("tw", np.zeros(1), "w") as w, ndsharray.NdShArray("tw", r_w="r") as r:
        assert r.read()[0]

        def blocking() -> None:
            for _ in range(n):
                try:
                    status, a = r.read(timeout=30)  # longer than the writer waits for its ack
                except ndsharray.HandleClosedError:
                    return  # the test failed and closed the handle
                seen.append(int(a[0]) if status else -1)
                got.release()

        def fidgeting() -> None:
            try:
                while not done.is_set():
                    r.wait(0.002)
            except ndsharray.HandleClosedError:
                pass  # close() came between the look at `done` and the wait

        b, a = threading.Thread(target=blocking, daemon=True), threading.Thread(target=fidgeting, daemon=True)
        b.start()
        a.start()
        try:
            for k in range(1, n + 1):
                w.write(np.array([float(k)]))
                assert got.acquire(timeout=10), f"frame {k}: the blocked thread was not woken"
        finally:
            # A failure must end the test, not hang it on a thread asleep for 30 s a frame:
            # close() ends the waits of both threads.
            done.set()
            r.close()
            a.join(10)
            b.join(10)
        assert not a.is_alive() and not b.is_alive(), "close() did not end the waiting threads"
        assert seen == list(range(1, n + 1))


def test_closing_a_writer_while_another_thread_copies_a_large_frame_does_not_crash(daemon: Any) -> None:
    # In a child process, so that a crash fails this test instead of the whole run.
    script = textwrap.dedent("""
        import faulthandler, threading, numpy as np, ndsharray
        faulthandler.enable()
        a = np.ones((4096, 1024))  # 32 MiB: each copy takes milliseconds, without the GIL
        for round in range(5):
            w = ndsharray.NdShArray(f"tc{round}", a, "w")
            started = threading.Event()
            def write():
                started.set()
                try:
                    while True:
                        w.write(a)
                except ndsharray.HandleClosedError:
                    pass
            t = threading.Thread(target=write)
            t.start()
            started.wait()
            w.close()  # most likely while the other thread is inside a copy
            t.join()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_close_from_another_thread_ends_a_blocked_read_at_once(daemon: Any, monkeypatch: Any) -> None:
    # Lost wake-ups must show, and a slow machine must not pass for one: no 1 s safety net.
    monkeypatch.setattr(ndsharray.reader, "WAIT_SLICE", 30.0)
    # A wake-up sent between the waiting thread's last look and its FUTEX_WAIT is lost; close()
    # must still end the wait at once, not at the wait slice. Each round closes the reader
    # while its other thread is on its way into the wait, or in it.
    with ndsharray.NdShArray("tc", np.zeros(4), "w") as w:
        w.write(np.zeros(4))
        for k in range(150):
            r = ndsharray.NdShArray("tc", r_w="r")
            assert r.read()[0]  # the next read waits for a frame that never comes
            ended = threading.Event()
            entering = threading.Event()

            def block(r: ndsharray.NdShArray = r, ended: threading.Event = ended,
                      entering: threading.Event = entering) -> None:
                entering.set()
                try:
                    r.read(timeout=None)
                except ndsharray.HandleClosedError:
                    pass  # closed before this thread got into read(): ended at once too
                ended.set()

            t = threading.Thread(target=block)
            t.start()
            entering.wait()
            r.close()
            ended.wait(10)
            t.join(30)
            assert ended.is_set(), f"round {k}: close() left the wait running for 10 s or more"
