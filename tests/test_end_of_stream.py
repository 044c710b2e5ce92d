"""End of stream through the public API: writer_state, writer_pid, blocking reads that
return when the writer closes or dies, frames(until_closed=...)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import sleepers, wait_until

import ndsharray


def reader_in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        t0 = time.monotonic()
        out.append((fn(), time.monotonic() - t0))

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_writer_state_follows_the_writer(daemon: Any, puppets: Any) -> None:
    with ndsharray.NdShArray("cam/state", r_w="r") as r:
        assert (r.writer_state, r.writer_pid) == ("none", 0)
        a = puppets()
        a.start_writer("cam/state", "uint8", [16], seed=1)
        assert r.read(timeout=10)[0]
        assert (r.writer_state, r.writer_pid) == ("alive", a.pid)
        a(op="close", name="w")
        assert (r.writer_state, r.writer_pid) == ("closed", a.pid)
        b = puppets()
        b.start_writer("cam/state", "uint8", [16], seed=2)  # the same shape: the same segment
        wait_until(lambda: r.writer_state == "alive", what="the new writer seen")
        assert r.writer_pid == b.pid
        b.kill()
        assert (r.writer_state, r.writer_pid) == ("died", b.pid)  # no daemon needed to say so


@pytest.mark.parametrize("how", ["close", "kill"])
@pytest.mark.parametrize("call", ["read", "wait"])
def test_a_blocked_read_returns_when_the_writer_goes_and_reads_its_successor(
        daemon: Any, puppets: Any, how: str, call: str) -> None:
    a = puppets()
    a.start_writer("cam/gone", "uint8", [32], seed=1)
    with ndsharray.NdShArray("cam/gone", r_w="r") as r:
        assert r.read(timeout=10)[0]
        first = r._last
        fn = (lambda: r.read(timeout=30)) if call == "read" else (lambda: r.wait(30))
        t, out = reader_in_thread(fn)
        if how == "close":
            a(op="close", name="w")
        else:
            a.kill()
        t.join(25)
        got, took = out[0]
        assert took < 10, took  # at the writer's end, not at the 30 s timeout
        if call == "read":
            assert got[0] is False and got[1] is first
        else:
            assert got is False
        ended = r.writer_state  # (a name, so mypy does not keep the narrowing to the end)
        assert ended == ("closed" if how == "close" else "died")
        # The end was reported once: the next blocking read waits for a new writer.
        t, out = reader_in_thread(lambda: r.read(timeout=30))
        b = puppets()
        b.start_writer("cam/gone", "uint8", [32], seed=2)
        t.join(25)
        (status, arr), took = out[0]
        assert status and took < 10 and r.writer_state == "alive" and r.writer_pid == b.pid


def test_frames_until_closed_ends_after_the_last_frame(daemon: Any, puppets: Any) -> None:
    p = puppets()
    p.start_writer("cam/finite", "uint8", [8], seed=0)
    with ndsharray.NdShArray("cam/finite", r_w="r") as r:
        got: list[int] = []

        def consume() -> None:
            for _ in r.frames(until_closed=True, timeout=30):
                got.append(r.write_count)

        t = threading.Thread(target=consume)
        t.start()
        for k in range(1, 6):
            wait_until(lambda k=k: len(got) >= k, what=f"frame {k} yielded")
            p(op="write", name="w", dtype="uint8", shape=[8], seed=k)
        p(op="close", name="w")  # right after the last write: that frame must still come
        t.join(20)
        assert not t.is_alive()
        assert got == [1, 2, 3, 4, 5, 6]


def test_frames_without_until_closed_waits_for_the_next_writer(daemon: Any, puppets: Any) -> None:
    a = puppets()
    a.start_writer("cam/relay", "uint8", [8], seed=0)
    with ndsharray.NdShArray("cam/relay", r_w="r") as r:
        frames = r.frames(timeout=30)
        assert next(frames) is not None
        a(op="close", name="w")
        b = puppets()
        b.start_writer("cam/relay", "uint8", [8], seed=1)
        assert next(frames) is not None and r.writer_pid == b.pid
        # A timeout with no frame ends the generator.
        assert list(r.frames(timeout=0.05)) == []


def test_plain_iteration_does_not_end_at_the_writers_close(daemon: Any, puppets: Any) -> None:
    a = puppets()
    a.start_writer("cam/iter", "uint8", [8], seed=0)
    r = ndsharray.NdShArray("cam/iter", r_w="r")
    got: list[int] = []

    def consume() -> None:
        for _ in r:
            got.append(r.write_count)

    t = threading.Thread(target=consume)
    t.start()
    wait_until(lambda: got, what="the first frame")
    a(op="close", name="w")
    b = puppets()
    b.start_writer("cam/iter", "uint8", [8], seed=1)
    wait_until(lambda: len(got) >= 2, what="the next writer's frame, through the close")
    assert t.is_alive()
    r.close()  # ends the iteration, as before
    t.join(20)
    assert not t.is_alive()


@pytest.mark.parametrize("how", ["close", "kill"])
def test_every_thread_blocked_on_one_handle_returns_when_the_writer_goes(
        daemon: Any, puppets: Any, how: str) -> None:
    """Not just the first to look: the end is news to each call that was waiting for it."""
    a = puppets()
    a.start_writer("cam/many", "uint8", [32], seed=1)
    with ndsharray.NdShArray("cam/many", r_w="r") as r:
        assert r.read(timeout=10)[0]
        calls: list[Any] = [lambda: r.read(timeout=30), lambda: r.wait(30), lambda: r.read(timeout=30)]
        if how == "close":  # a finite stream ends at the close, in its own thread too
            calls.append(lambda: list(r.frames(until_closed=True, timeout=30)))
        threads = [reader_in_thread(fn) for fn in calls]
        wait_until(lambda: sleepers(r) == len(calls), what="every thread asleep on the segment")
        if how == "close":
            a(op="close", name="w")
        else:
            a.kill()
        for t, _ in threads:
            t.join(25)
        took = [out[0][1] for _, out in threads]
        assert all(s < 10 for s in took), took  # each at the writer's end, none at its timeout
        results = [out[0][0] for _, out in threads]
        assert results[0][0] is False and results[1] is False and results[2][0] is False
        if how == "close":
            assert results[3] == []
        # Reported to every call that waited for it, and to none after: a new wait waits on.
        assert r.wait(0.2) is False
        t, out = reader_in_thread(lambda: r.read(timeout=30))
        b = puppets()
        b.start_writer("cam/many", "uint8", [32], seed=2)
        t.join(25)
        (status, _), took_next = out[0]
        assert status and took_next < 10 and r.writer_pid == b.pid
