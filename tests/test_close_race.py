"""close() from another thread while a write still fills a slot (review defects 1 and 7).

A write copies large frames without the GIL (the C one-call path's memcpy, numpy's
copyto), and a loan() block fills its slot for as long as the user likes. If close() hands
the tag back meanwhile, a successor writer takes over the same segment, picks the slot
still being filled, and a reader gets a mixed frame whose pinned view keeps changing.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import generations, writer
from ndsharray.registrar import registrar
from ndsharray.segment.writer import SegmentWriter

ROWS, COLS = 4096, 2048  # 64 MiB of float64: a copy takes milliseconds (numpy's transposing one, far more)

# A reader in its own process (no GIL shared with the race): every frame it gets must be
# one value throughout (one complete write), and must still be when the next one arrives.
WATCHER = textwrap.dedent("""
    import json, select, sys, numpy as np, ndsharray
    r = ndsharray.NdShArray(sys.argv[1], r_w="r")
    print("ready", flush=True)
    frames, torn, changed, values = 0, [], [], set()
    held = None
    while not select.select([sys.stdin], [], [], 0)[0]:
        status, v = r.read(timeout=0.02)
        if not status:
            continue
        if held is not None and (held[0].min() != held[1] or held[0].max() != held[1]):
            changed.append(held[1])  # a pinned view changed under us
        frames += 1
        lo, hi = float(v.min()), float(v.max())
        if lo != hi:
            torn.append((lo, hi))
        values.add(lo)
        held = (v, lo)
    print(json.dumps({"frames": frames, "torn": torn, "changed": changed, "values": sorted(values)}), flush=True)
""")


def _successor(tag: str) -> ndsharray.NdShArray:
    """A new writer of ``tag``, as soon as the daemon grants it (close() may leave the
    release to a write still copying, if that copy outlasts CLOSE_DRAIN)."""
    def claim() -> ndsharray.NdShArray | None:
        try:
            return ndsharray.NdShArray(tag, r_w="w", slots=3)
        except ndsharray.TagBusyError:
            return None
    return wait_until(claim, what="the tag handed back")  # type: ignore[no-any-return]


HERE = os.path.dirname(os.path.abspath(__file__))


def in_child(call: str) -> None:
    """Run ``call`` (a function of this module) in a child process: a crash of the code under
    test (as before the fix: a segfault) fails this test instead of the whole run."""
    script = f"import sys; sys.path.insert(0, {HERE!r}); import test_close_race as t; t.{call}; print('ok')"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr[-3000:])


@pytest.mark.parametrize("path", ["c_one_call", "numpy_copyto"])
def test_close_waits_for_a_copy_in_flight_so_a_successor_never_shares_its_slot(daemon: Daemon, path: str) -> None:
    in_child(f"race_close_with_copy_in_flight({path!r})")


def race_close_with_copy_in_flight(path: str) -> None:
    b_val = np.full((ROWS, COLS), 2.0)
    # C-contiguous: the C one-call path, one memcpy without the GIL; Fortran order: np.copyto,
    # transposing (slowly), without the GIL.
    a_val = np.full((ROWS, COLS), 1.0, order="C" if path == "c_one_call" else "F")
    overtaken = 0
    for rnd in range(8):  # 3 rounds, and more (bounded) until close() overtook a copy once
        if rnd >= 3 and overtaken:
            break
        tag = f"race{rnd}"
        w = ndsharray.NdShArray(tag, r_w="w", slots=3)
        for k in range(3):  # slots 0, 1, 0: the next write fills slot 1, which a successor picks first
            w.write(np.full((ROWS, COLS), 0.5 + k / 8))
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, tag], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert watcher.stdout is not None and watcher.stdin is not None
            assert watcher.stdout.readline().strip() == "ready"
            segment = w.ndarray_mmap_name
            started = threading.Event()
            outcome: list[str] = []

            def write_a(w: ndsharray.NdShArray = w, started: threading.Event = started,
                        outcome: list[str] = outcome) -> None:
                started.set()
                try:
                    w.write(a_val)  # the copy runs without the GIL: close() comes meanwhile
                    outcome.append("published")
                except ndsharray.HandleClosedError as exc:
                    # Overtaken only if close() came while the copy ran; it may also have
                    # come before the write started (review item 5).
                    outcome.append("overtaken" if "while this write copied" in str(exc) else "closed first")

            t = threading.Thread(target=write_a)
            t.start()
            started.wait()
            w.close()  # most likely while the other thread copies
            w2 = _successor(tag)
            try:
                w2.write(b_val)
                assert w2.ndarray_mmap_name == segment  # it took over the very segment
                t.join()
                with ndsharray.NdShArray(tag, r_w="r") as r:
                    status, last = r.read(timeout=5)
                    assert status and float(last[0, 0]) == 2.0 and float(last.min()) == 2.0
                    del last
            finally:
                w2.close()
            watcher.stdin.write("stop\n")
            watcher.stdin.flush()
            report = json.loads(watcher.stdout.readline())
        finally:
            if watcher.returncode is None and watcher.stdin is not None and not watcher.stdin.closed:
                watcher.stdin.close()  # (ends its loop if the test failed before "stop")
            watcher.wait(30)
        assert not report["torn"], f"round {rnd}: mixed frames {report['torn'][:3]} ({outcome})"
        assert not report["changed"], f"round {rnd}: pinned views changed {report['changed'][:3]} ({outcome})"
        if outcome == ["overtaken"]:
            overtaken += 1
        if outcome != ["published"]:
            assert outcome in (["overtaken"], ["closed first"])
            assert 1.0 not in report["values"], f"a write close() stopped was published ({outcome})"
    # The race this test is about happened (close() came while the copy ran) at least once.
    assert overtaken >= 1, f"close() never came while a copy ran, in {rnd + 1} rounds"


def test_close_during_a_loan_in_another_thread_hands_the_tag_back_when_the_block_ends(daemon: Daemon) -> None:
    in_child("race_close_with_loan_open()")


def race_close_with_loan_open() -> None:
    writer.CLOSE_DRAIN = 0.2  # close() stops waiting for the block soon (this child only)
    w = ndsharray.NdShArray("lent", np.zeros(1024), "w", slots=3)
    r = ndsharray.NdShArray("lent", r_w="r")
    lent, go = threading.Event(), threading.Event()
    outcome: list[str] = []

    def fill() -> None:
        try:
            with w.loan() as buf:
                buf[:512] = 1.0
                lent.set()
                go.wait(30)
                buf[512:] = 1.0
            outcome.append("published")
        except ndsharray.HandleClosedError:
            outcome.append("overtaken")

    t = threading.Thread(target=fill)
    t.start()
    try:
        assert lent.wait(10)
        w.close()  # returns after CLOSE_DRAIN; the tag stays ours while the block fills its slot
        with pytest.raises(ndsharray.TagBusyError):
            ndsharray.NdShArray("lent", r_w="w")
    finally:
        go.set()
        t.join()
    assert outcome == ["overtaken"]
    w2 = _successor("lent")  # handed back by the block's end
    try:
        w2.write(np.full(1024, 2.0))
        status, v = r.read(timeout=5)
        assert status and (v == 2.0).all() and r.write_count == 2  # the lent slot was never published
    finally:
        w2.close()
        r.close()


def test_close_inside_this_threads_own_loan_does_not_wait_and_publishes_nothing(daemon: Daemon) -> None:
    w = ndsharray.NdShArray("own", np.zeros(8), "w")
    t0 = time.monotonic()
    with pytest.raises(ndsharray.HandleClosedError):
        with w.loan() as buf:
            buf[:] = 1.0
            w.close()  # nobody else can end this block: no point waiting for it
    assert time.monotonic() - t0 < writer.CLOSE_DRAIN
    w2 = _successor("own")
    try:
        with ndsharray.NdShArray("own", r_w="r") as r:
            status, v = r.read()
            assert status and (v == 0.0).all()  # the loan's frame was not published
    finally:
        w2.close()


RECLAIM = textwrap.dedent("""
    import fcntl, os, signal, subprocess, sys, numpy as np, ndsharray
    from ndsharray.segment.mapping import FLOCK, F_OFD_SETLK, LOCKS
    # A reader dies holding a pin on each slot but the latest: the writer must reclaim rows.
    w = ndsharray.NdShArray("reclaim", np.zeros(8), "w", slots=2, max_slots=2, write_timeout=1.0)
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    w.write(np.ones(8))  # the other slot; the reader pins the first one
    child.kill(); child.wait()
    real = fcntl.fcntl
    armed = [True]
    def racing_fcntl(fd, cmd, arg=0):
        out = real(fd, cmd, arg)
        if armed[0] and cmd == F_OFD_SETLK and isinstance(arg, bytes):
            kind, _, start, _, _ = FLOCK.unpack(arg)
            if kind == fcntl.F_WRLCK and start >= LOCKS:
                # The row lock was just taken, with the GIL released: another thread's
                # close() runs now (here, in this thread, for a deterministic interleaving).
                armed[0] = False
                w.close()
        return out
    fcntl.fcntl = racing_fcntl
    try:
        w.write(np.full(8, 2.0))  # every slot but the latest is pinned by the dead reader
        print("wrote")
    except ndsharray.HandleClosedError:
        print("closed")
    assert not armed[0], "the race was not set up: reclaim_rows never locked a row"
""")


DEAD_READER = textwrap.dedent("""
    import sys, ndsharray
    r = ndsharray.NdShArray("reclaim", r_w="r")
    held = r.read(timeout=5)[1]
    print("held", flush=True)
    sys.stdin.read()
""")


def test_reclaiming_a_dead_readers_row_while_another_thread_closes_does_not_crash(daemon: Daemon) -> None:
    # In a child process, so that a crash fails this test instead of the whole run.
    out = subprocess.run([sys.executable, "-c", RECLAIM, DEAD_READER], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "closed", (out.returncode, out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize("dtype, copy", [([("x", "<f8"), ("n", "<u4")], False), ("<f8", True),
                                         ([("x", "<f8"), ("n", "<u4")], True)])
def test_a_keyboard_interrupt_in_a_read_never_leaves_a_pin_behind(daemon: Daemon, dtype: Any, copy: bool) -> None:
    # read(copy=True) and structured dtypes build their arrays in Python after the C reader
    # pinned the slot: a KeyboardInterrupt (here from SIGALRM, at moments that sweep
    # through the read) landing in between must not leave a pin nobody owns.
    frames = [np.zeros(16, dtype) for _ in range(2)]
    armed = [False]

    def interrupt(signum: int, frame: Any) -> None:
        if armed[0]:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    # 3 slots: the reader's last view (kept for read()'s (False, last)) pins one.
    w = ndsharray.NdShArray("kbd", frames[0], "w", slots=3, max_slots=3, write_timeout=0.5)
    r = ndsharray.NdShArray("kbd", r_w="r")
    interrupted = 0
    try:
        assert r.read(copy=copy)[0]  # past the first read's lookups
        seg = r._seg
        assert seg is not None
        rng = np.random.default_rng(7)
        for k in range(3000):
            w.write(frames[k % 2])
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(1e-6, 60e-6)))
                r.read(copy=copy)  # (the array goes at once)
                armed[0] = False
            except KeyboardInterrupt:
                armed[0] = False
                interrupted += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        r.close()  # drops the last view: nothing of this reader holds a pin now
        w.close()
    assert interrupted > 100  # the interrupts did land inside reads
    assert seg._c.pinned == 0  # (a pin nobody owns would also keep the reader's row forever)


class _ClosedAtTheCheck(writer.Writer):
    """A writer whose first look at ``_ended`` in the armed thread (the check before a new
    segment is installed) lets another thread's close() run right there: the window of
    review item 1, which is a few bytecodes wide in the real code."""

    armed: threading.Thread | None = None
    closer: threading.Thread | None = None

    @property
    def _ended(self) -> bool:
        ended: bool = self.__dict__.get("_ended_v", False)
        if self.armed is not None and threading.current_thread() is self.armed:
            self.armed = None
            closer = threading.Thread(target=self.close)
            self.closer = closer
            watched = self.__dict__.get("_swap")
            closer.start()
            # Until close() is done, or waits for this thread to finish the switch (the
            # fix); either way it runs no earlier than in the window.
            wait_until(lambda: not closer.is_alive() or (isinstance(watched, _Watched) and watched.contended.is_set()),
                       what="close() done or waiting")
        return ended

    @_ended.setter
    def _ended(self, value: bool) -> None:
        self.__dict__["_ended_v"] = value


class _Watched:
    """A lock that notes when another thread has to wait for it."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.contended = threading.Event()

    def __enter__(self) -> _Watched:
        if not self.lock.acquire(blocking=False):
            self.contended.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _segment_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "/nds-" in target:
            out.append(target)
    return out


@pytest.mark.parametrize("when", ["first_write", "new_shape", "ring_growth"])
def test_close_racing_a_switch_to_a_new_segment_leaves_no_writer_behind(daemon: Daemon, when: str) -> None:
    # Review item 1: close() in another thread right after the writer checked _ended and
    # before it installed its new segment took the old one, handed the tag back and
    # returned; the "closed" handle then published into the new segment, which the next
    # writer of the tag took over.
    # (Only this test's segments count: an earlier test's handle still waiting for the
    # garbage collector held 3 fds of its deleted segment here once, in a full run.)
    gc.collect()
    before = set(_segment_fds())
    w = _ClosedAtTheCheck("nsw", r_w="w", slots=2, max_slots=3)
    if "_swap" in w.__dict__:
        w.__dict__["_swap"] = _Watched(w.__dict__["_swap"])
    held = []
    reader = None
    if when != "first_write":
        w.write(np.full(1000, 1, np.int64))
    if when == "ring_growth":
        # A reader keeps both slots pinned: the next write grows the ring (a new segment).
        reader = ndsharray.NdShArray("nsw", r_w="r")
        held.append(reader.read(timeout=5)[1])
        w.write(np.full(1000, 1, np.int64))
        held.append(reader.read(timeout=5)[1])
        assert len(held) == 2 and held[1] is not held[0]
    frame = np.full(2000 if when == "new_shape" else 1000, 1, np.int64)
    outcome: list[str] = []

    def write() -> None:
        try:
            w.write(frame)
            outcome.append("published")  # before close() took the segment: allowed
        except ndsharray.HandleClosedError:
            outcome.append("closed")

    t = threading.Thread(target=write)
    w.armed = t
    t.start()
    t.join(30)
    assert w.armed is None and w.closer is not None, "the race was not set up"
    w.closer.join(30)
    assert w.closed and len(outcome) == 1
    del held[:]
    if reader is not None:
        reader.close()
    # Nothing of the closed handle is left: no segment fd, no writer that still publishes.
    assert w._direct is None and w._seg is None and not set(_segment_fds()) - before
    with pytest.raises(ndsharray.HandleClosedError):
        w.write(frame)
    w2 = _successor("nsw")
    try:
        w2.write(np.full(frame.shape, 9, np.int64))
        with ndsharray.NdShArray("nsw", r_w="r") as r:
            status, v = r.read(timeout=5)
            assert status and (v == 9).all()
            count = r.write_count
            with pytest.raises(ndsharray.HandleClosedError):
                w.write(frame)
            assert not r.read()[0] and r.write_count == count  # the closed handle published nothing
    finally:
        w2.close()


@pytest.mark.parametrize("write_ends", ["after_the_interrupt", "before_the_interrupt"])
def test_a_keyboard_interrupt_while_close_waits_for_a_write_still_hands_the_tag_back(
        daemon: Daemon, write_ends: str) -> None:
    in_child(f"interrupted_close({write_ends!r})")  # (a stray KeyboardInterrupt stays there)


def interrupted_close(write_ends: str) -> None:
    # Review item 2: a KeyboardInterrupt while close() waited for a write in flight left
    # the tag with this process for good (no hand_over, no release, no second close()),
    # and the segment's fd open with our pid still in its header.
    from ndsharray.segment import writer as segment_writer
    w = ndsharray.NdShArray("kbc", np.zeros(1024), "w", slots=3)
    lent, go = threading.Event(), threading.Event()
    outcome: list[str] = []

    def fill() -> None:
        try:
            with w.loan() as buf:
                lent.set()
                go.wait(30)
                buf[:] = 1.0
            outcome.append("published")
        except ndsharray.HandleClosedError:
            outcome.append("overtaken")

    t = threading.Thread(target=fill)
    t.start()
    assert lent.wait(10)
    real_time = time  # (SegmentWriter's module's own time; set through vars(), its namespace)

    def interrupting_sleep(seconds: float) -> None:
        vars(segment_writer)["time"] = real_time  # (once)
        if write_ends == "before_the_interrupt":
            go.set()
            t.join()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while close() waits for the loan
        real_time.sleep(seconds)

    vars(segment_writer)["time"] = type("T", (), {"monotonic": staticmethod(real_time.monotonic),
                                           "sleep": staticmethod(interrupting_sleep)})
    try:
        w.close()
        raise AssertionError("close() was not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        vars(segment_writer)["time"] = real_time
    assert w.closed
    go.set()
    t.join()
    assert outcome == ["overtaken"]
    assert not _segment_fds()  # close()'s end ran: the fd went (and our pid from the header)
    w2 = _successor("kbc")  # handed back by the write, or by close()'s handler
    try:
        w2.write(np.full(1024, 2.0))
        with ndsharray.NdShArray("kbc", r_w="r") as r:
            status, v = r.read(timeout=5)
            assert status and (v == 2.0).all() and r.write_count == 2  # the lent slot was never published
    finally:
        w2.close()


def test_close_between_a_new_segment_and_its_first_slot_says_closed(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the test above under load: close() in another thread right after a write
    # installed its new segment unmapped it, and the write's check of the segment's
    # retired word raised "ValueError: mmap closed or invalid".
    w = ndsharray.NdShArray("nsw2", r_w="w")
    real = writer.Writer._acquire

    def closed_first(self: writer.Writer, seg: Any) -> Any:
        t = threading.Thread(target=self.close)
        t.start()
        t.join(30)
        return real(self, seg)

    monkeypatch.setattr(writer.Writer, "_acquire", closed_first)
    with pytest.raises(ndsharray.HandleClosedError):
        w.write(np.zeros(1000))
    assert w.closed and not _segment_fds()


DUP_RACE = textwrap.dedent("""
    import os, subprocess, sys, threading, time, numpy as np, ndsharray
    sys.path.insert(0, sys.argv[2])
    from test_close_race import _Watched
    # A reader dies holding a pin on each slot but the latest: the writer must reclaim rows.
    w = ndsharray.NdShArray("reclaim", np.zeros(8), "w", slots=2, max_slots=2, write_timeout=1.0)
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    w.write(np.ones(8))  # the other slot; the reader pins the first one
    child.kill(); child.wait()
    seg = w._seg
    number, inode = seg.fd, os.fstat(seg.fd).st_ino
    if hasattr(seg, "_fd_lock"):
        seg._fd_lock = _Watched(seg._fd_lock)
    real_dup, duplicated = os.dup, []
    def racing_dup(fd):
        if fd != number or duplicated:
            return real_dup(fd)
        # os.dup lets other threads run: one closes the writer, and its fd number is
        # taken by the next file another thread opens (here /dev/null, at that number).
        def close_and_reuse():
            null = os.open("/dev/null", os.O_RDWR)
            w.close()
            os.dup2(null, number)
            os.close(null)
        t = threading.Thread(target=close_and_reuse)
        t.start()
        watched = getattr(seg, "_fd_lock", None)
        deadline = time.monotonic() + 30
        while t.is_alive() and not (isinstance(watched, _Watched) and watched.contended.is_set()):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        try:
            out = real_dup(fd)
        except OSError:
            duplicated.append("EBADF")  # closed first: reclaim_rows gives up, fine
            raise
        duplicated.append(os.fstat(out).st_ino)
        return out
    os.dup = racing_dup
    try:
        w.write(np.full(8, 2.0))  # every slot but the latest is pinned by the dead reader
    except ndsharray.HandleClosedError:
        pass
    os.dup = real_dup
    assert duplicated, "the race was not set up: reclaim_rows never duplicated the fd"
    assert duplicated[0] in ("EBADF", inode), "reclaim_rows duplicated another file's fd"
    w.close()
    print("ok")
""")


def test_reclaim_rows_never_duplicates_a_reused_fd_number(daemon: Daemon) -> None:
    # Review item 3: close() in another thread closed the segment's fd (os.close lets
    # other threads run) while reclaim_rows was about to duplicate it; a file opened
    # meanwhile got the number, and reclaim_rows locked that file instead.
    out = subprocess.run([sys.executable, "-c", DUP_RACE, DEAD_READER, HERE], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stdout, out.stderr[-2000:])


def _interrupt_after_acquire(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the next slot acquire raise KeyboardInterrupt just after the C writer took the
    slot: where a Ctrl-C lands when the eval loop checks for signals as the call returns."""
    real = SegmentWriter.try_acquire
    taken: list[int] = []

    def try_acquire(seg: Any) -> int:
        i = real(seg)
        if not taken and i >= 0:
            taken.append(i)
            raise KeyboardInterrupt
        return i

    monkeypatch.setattr(SegmentWriter, "try_acquire", try_acquire)
    return taken


@pytest.mark.parametrize("how", ["write", "loan", "write_inside_a_loan"])
def test_an_interrupt_right_after_a_slot_is_taken_gives_it_back(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # Review item 4: a KeyboardInterrupt between the C acquire and the code that publishes
    # or gives back the slot left it busy for good: close() then waited CLOSE_DRAIN for it
    # and never handed the tag back.
    w = ndsharray.NdShArray("kbs", np.zeros(1000), "w", slots=3)
    fast = w._direct
    odd = np.zeros(2000)[::2]  # not contiguous: write() takes its Python path
    if how == "write_inside_a_loan":
        with w.loan() as buf:
            taken = _interrupt_after_acquire(monkeypatch)
            with pytest.raises(KeyboardInterrupt):
                w.write(odd)
            assert taken and fast.busy == 1  # the lent slot only
            buf[:] = 7.0
        with ndsharray.NdShArray("kbs", r_w="r") as r:
            status, v = r.read(timeout=5)
            assert status and (v == 7.0).all()  # the loan still published
    else:
        taken = _interrupt_after_acquire(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            if how == "write":
                w.write(odd)
            else:
                with w.loan():
                    raise AssertionError("the loan never starts")
        assert taken
    assert fast.busy == 0
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < writer.CLOSE_DRAIN  # nothing left to wait for
    ndsharray.NdShArray("kbs", r_w="w").close()  # handed back by close() itself


def test_close_while_a_write_asks_for_its_new_segment_leaves_no_fd_of_it(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # The other side of review item 1: close() in another thread ran to its end while the
    # write asked the daemon for a new segment; the write must close that segment itself
    # (its fd, and our pid in its header) and say the handle was closed.
    w = ndsharray.NdShArray("ncs", r_w="w")
    real = SegmentWriter  # (what generations opens)
    made: list[Any] = []

    def segment_then_close(*args: Any, **kw: Any) -> Any:
        seg = real(*args, **kw)
        made.append(seg)
        t = threading.Thread(target=w.close)
        t.start()
        t.join(30)
        assert not t.is_alive()
        return seg

    monkeypatch.setattr(generations, "SegmentWriter", segment_then_close)
    with pytest.raises(ndsharray.HandleClosedError):
        w.write(np.zeros(1000))
    assert made and made[0].closed and w._seg is None and w._direct is None
    del made[:]  # (an mmap keeps an fd of its own while it lives)
    assert not _segment_fds()
    ndsharray.NdShArray("ncs", r_w="w").close()  # the tag went back


def test_a_loan_array_kept_past_close_stays_readable(daemon: Daemon) -> None:
    in_child("loan_kept_past_close()")  # (before the fix: SIGSEGV)


def loan_kept_past_close() -> None:
    w = ndsharray.NdShArray("kept", np.zeros(1000), "w")
    with w.loan() as buf:
        buf[:] = 1.0
    w.close()
    assert float(buf.sum()) == 1000.0  # read-only now, and still mapped


# ---- found by the second review: a tag that stayed busy until the process exited ----------

def _claim_again(tag: str) -> Any:
    """A new writer of ``tag`` once the old one's release reached the daemon, else None."""
    try:
        return ndsharray.NdShArray(tag, np.zeros(4), "w")
    except ndsharray.TagBusyError:
        return None


def test_a_loan_ended_by_an_exception_in_another_thread_gives_its_slot_back(daemon: Daemon) -> None:
    # (A loan's generator may also be finalized by the collector in another thread.) The
    # slot went back only if this thread had taken it, so it stayed busy: close() waited
    # its full drain and nobody ever handed the tag back.
    w = ndsharray.NdShArray("lx", np.zeros(4), "w")
    cm = w.loan()
    cm.__enter__()

    def end_it() -> None:
        try:
            cm.__exit__(RuntimeError, RuntimeError("failed in the block"), None)
        except RuntimeError:
            pass

    t = threading.Thread(target=end_it)
    t.start()
    t.join()
    assert w._seg is not None and w._seg.fast.busy == 0
    w.close()
    w2 = wait_until(lambda: _claim_again("lx"), timeout=5, what="the tag to be handed back")
    w2.close()


def test_an_interrupt_early_in_close_still_frees_the_tag_and_the_segment_fds(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # A KeyboardInterrupt (Ctrl-C in a Jupyter kernel) before close() had stopped the writer
    # and closed the segments: the tag stayed taken and the fds open until the process ended.
    w = ndsharray.NdShArray("ei", np.zeros(4), "w")
    r = ndsharray.NdShArray("ei", r_w="r")
    assert r.read()[0]
    name = w.ndarray_mmap_name
    assert name is not None and any(name in f for f in _segment_fds())

    def interrupted(handle: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(registrar, "untrack", interrupted)
        for h in (r, w):
            with pytest.raises(KeyboardInterrupt):
                h.close()
    assert h.closed and not [f for f in _segment_fds() if name in f]
    w2 = wait_until(lambda: _claim_again("ei"), timeout=5, what="the tag to be handed back")
    w2.close()


def test_an_interrupt_right_after_an_overtaken_loan_gave_its_slot_back_still_frees_the_tag(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() in another thread stopped waiting for the open loan; the loan's publish() then
    # gave the slot back itself, and an interrupt landing as it returned left nothing to
    # abandon: nobody asked whether the tag was now this write's to hand back.
    monkeypatch.setattr(writer, "CLOSE_DRAIN", 0.05)
    w = ndsharray.NdShArray("ol", np.zeros(4), "w")
    closer = threading.Thread(target=w.close)

    def interrupt_after_publish(frame: Any, event: str, arg: Any) -> None:
        if event == "c_return" and getattr(arg, "__name__", "") == "publish":
            sys.setprofile(None)
            raise KeyboardInterrupt  # as Ctrl-C at the next check after the C call

    with pytest.raises(KeyboardInterrupt):
        with w.loan() as buf:
            closer.start()
            closer.join(10)  # close() gave up waiting for this loan
            assert not closer.is_alive()
            buf[:] = 1
            sys.setprofile(interrupt_after_publish)
    sys.setprofile(None)
    w2 = wait_until(lambda: _claim_again("ol"), timeout=5, what="the tag to be handed back")
    w2.close()
