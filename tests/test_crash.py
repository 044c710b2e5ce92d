"""Processes die, the daemon dies or stops: nothing is lost and nothing leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, our_segments, pid_gone, wait_until

import ndsharray
from ndsharray import admin, config


def tag_row(tag: str) -> Any:
    return next((t for t in ndsharray.list_tags() if t.tag == tag), None)


def test_writer_sigkill_is_noticed_and_the_tag_taken_over(daemon: Any, puppets: Any) -> None:
    writer = puppets()
    writer.start_writer("cam", "u1", [8], 1)
    with ndsharray.NdShArray("cam", r_w="r") as r:
        assert r.read()[0]
        t0 = time.monotonic()
        writer.kill()
        info = wait_until(lambda: (row := tag_row("cam")).writer_pid is None and row,
                          what="ls to show the writer gone")
        print(f"writer SIGKILL -> ls shows it gone: {(time.monotonic() - t0) * 1000:.1f} ms")
        assert info.last_writer_pid == writer.pid and info.readers == 1 and info.writer_left == "died"
        status, last = r.read()
        assert status is False and last.shape == (8,)  # readers keep the last frame
        with ndsharray.NdShArray("cam", np.arange(8, dtype=np.uint8), "w") as w:
            assert w.ndarray_mmap_name == r.ndarray_mmap_name == info.segment  # same segment
            status, a = r.read()
            assert status and a.tolist() == list(range(8))


def test_orphaned_tag_is_removed_after_the_retention_time(folder: str, monkeypatch: Any, puppets: Any) -> None:
    d = Daemon(folder, "--orphan-ttl", "0.3").start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        writer = puppets()
        seg = writer.start_writer("orphan", "f8", [4], 0)
        assert seg in our_segments(d.prefix)
        writer.kill()
        wait_until(lambda: tag_row("orphan") is None, what="orphaned tag to expire")
        assert seg not in our_segments(d.prefix)
    finally:
        assert d.stop() == 0


def test_reader_sigkill_frees_its_pins_and_its_registration(daemon: Any, puppets: Any) -> None:
    with ndsharray.NdShArray("pin", np.zeros(4), "w", slots=2, max_slots=2, write_timeout=0.2) as w:
        reader = puppets()
        reader(op="open", name="r", tag="pin", rw="r")
        assert reader(op="read", name="r", hold=True)["status"]  # pins slot 0 for good
        w.write(np.ones(4))  # slot 1
        with pytest.raises(ndsharray.WriterStalledError):
            w.write(np.ones(4))  # slot 0 is pinned, slot 1 is the latest
        # (a reader that found the segment by its pointer registers in the background)
        wait_until(lambda: tag_row("pin").readers == 1, what="the reader's registration")
        reader.kill()
        w.write(np.full(4, 2.0))  # the kernel dropped the dead reader's lock
        wait_until(lambda: tag_row("pin").readers == 0, what="dead reader to be dropped")


def test_daemon_sigkill_data_keeps_flowing_and_registry_is_rebuilt(crashable: Daemon, puppets: Any) -> None:
    writer, reader = puppets(), puppets()
    seg = writer.start_writer("cam", "u2", [16, 16], 1)
    reader(op="open", name="r", tag="cam", rw="r")
    assert reader(op="read", name="r")["status"]
    before = tag_row("cam")
    t0 = time.monotonic()
    crashable.proc.kill()  # type: ignore[union-attr]
    crashable.proc.wait()  # type: ignore[union-attr]
    # The hot path never needed the daemon.
    writer(op="write", name="w", dtype="u2", shape=[16, 16], seed=2)
    got = reader(op="read", name="r", wait=10)
    assert got["status"] and got["segment"] == seg
    # The clients' registrars start a new daemon, which adopts the segment; they re-register.
    wait_until(lambda: admin.daemon_pid() not in (None, crashable.proc.pid), what="a new daemon")  # type: ignore[union-attr]
    after = wait_until(lambda: (row := tag_row("cam")) and row.readers == 1 and row.writer_pid and row,
                       what="the registry to be rebuilt")
    print(f"daemon SIGKILL -> registry rebuilt: {(time.monotonic() - t0) * 1000:.0f} ms")
    assert (after.writer_pid, after.readers, after.segment, after.generation) == \
        (before.writer_pid, 1, before.segment, before.generation)
    assert after.writes >= 2
    writer(op="write", name="w", dtype="u2", shape=[16, 16], seed=3)
    assert reader(op="read", name="r", wait=10)["status"]


POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}  # poll, ppoll


def waiting_for_a_reply(pid: int) -> bool:
    """True while ``pid``'s main thread sleeps in poll(): a puppet does so only between
    sending a request to the daemon and its answer (it otherwise sleeps reading stdin)."""
    with open(f"/proc/{pid}/wchan") as f:
        wchan = f.read()
    if wchan not in ("", "0"):
        return "poll" in wchan
    with open(f"/proc/{pid}/syscall") as f:  # where the kernel hides wchan
        return f.read().split()[0] in POLL_SYSCALLS.get(os.uname().machine, set())


def test_a_request_retried_to_a_restarted_daemon_is_answered(crashable: Daemon, puppets: Any) -> None:
    # A writer asks for a new generation; the daemon dies with the request unanswered, and
    # the retry reaches its successor before the writer's registrar re-registered it. The
    # writer re-registers and asks again instead of failing with TagRemovedError.
    writer = puppets()
    writer.start_writer("cam", "u1", [8], 1)
    assert crashable.proc is not None
    crashable.proc.send_signal(signal.SIGSTOP)
    assert writer.proc.stdin is not None
    writer.proc.stdin.write('{"op": "write", "name": "w", "dtype": "u1", "shape": [16], "seed": 2}\n')
    writer.proc.stdin.flush()
    wait_until(lambda: waiting_for_a_reply(writer.pid), what="the writer's generation request")
    crashable.proc.kill()
    crashable.proc.wait()
    out = writer._line(30)  # the retry comes after the 3 s timeout; it starts a new daemon
    assert "error" not in out, out
    with ndsharray.NdShArray("cam", r_w="r") as r:
        status, a = r.read(timeout=10)
        assert status and a.shape == (16,) and r.ndarray_mmap_name == out["ok"]
    row = tag_row("cam")
    assert row.writer_pid == writer.pid and row.segment == out["ok"]


def test_daemon_clean_stop_then_clients_reregister(daemon: Daemon, monkeypatch: Any) -> None:
    w = ndsharray.NdShArray("cam", np.zeros((4, 4)), "w")
    r = ndsharray.NdShArray("cam", r_w="r")
    try:
        assert r.read()[0]
        assert daemon.stop() == 0
        assert not our_segments(daemon.prefix)  # a clean stop removes everything
        w.write(np.ones((4, 4)))  # mapped data keeps working
        status, a = r.read()
        assert status and a[0, 0] == 1.0
        again = Daemon(daemon.folder).start()
        daemon.proc = again.proc  # the fixture stops this one
        row = wait_until(lambda: (row := tag_row("cam")) and row.readers == 1 and row.writer_pid and row,
                         what="clients to re-register")
        assert row.writer_pid == os.getpid() and row.segment is None
        # The writer's next write makes a new segment; the reader follows by itself.
        w.write(np.full((4, 4), 2.0))
        status, a = r.read()
        assert status and a[0, 0] == 2.0
        assert tag_row("cam").segment == w.ndarray_mmap_name == r.ndarray_mmap_name
    finally:
        w.close()
        r.close()


def test_superseded_generation_memory_returns_when_the_last_view_goes(daemon: Any) -> None:
    with ndsharray.NdShArray("gen", np.zeros(1 << 16), "w") as w, ndsharray.NdShArray("gen", r_w="r") as r:
        status, held = r.read()
        old = r.ndarray_mmap_name
        assert old is not None
        w.write(np.zeros(1 << 17))  # larger than the slots: a new generation; the old one is unlinked at once
        assert old not in our_segments()
        assert r.read()[0]

        def mapped() -> bool:
            with open("/proc/self/maps") as f:
                return any(old in line for line in f)

        assert mapped() and held[0] == 0.0  # still readable: the view keeps it mapped
        del held
        wait_until(lambda: not mapped(), what="the unlinked segment to be unmapped")


@pytest.mark.parametrize("how, left", [
    ("stdin", "closed"),  # the interpreter runs out of input and exits normally
    ("sys.exit", "closed"),
    ("exception", "closed"),  # an uncaught exception ends it: atexit still runs
    ("os._exit", "died"),  # no atexit: the daemon learns it from the pidfd
])
def test_writer_exit_is_closed_or_died_as_the_readme_says(daemon: Any, puppets: Any, how: str, left: str) -> None:
    writer = puppets()
    writer.start_writer("bye", "u1", [3], 0)
    if how == "stdin":
        writer.stop()
    else:
        assert writer.proc.stdin is not None
        cmd = {"sys.exit": '{"op": "exit"}', "exception": '{"op": "raise"}',
               "os._exit": '{"op": "exit", "hard": true}'}[how]
        writer.proc.stdin.write(cmd + "\n")
        writer.proc.stdin.flush()
        writer.proc.wait(20)
    assert pid_gone(writer.proc.pid)
    row = wait_until(lambda: (r := tag_row("bye")) is not None and r.writer_pid is None and r, what="the tag freed")
    assert row.writer_left == left, f"{how}: ls says {row.writer_left!r}, the README promises {left!r}"
    assert row.last_writer_pid == writer.proc.pid
    with ndsharray.NdShArray("bye", r_w="w"):
        pass


def test_a_forked_child_does_not_keep_a_dead_readers_pins(daemon: Any) -> None:
    # A reader pins both slots, forks a child that never touches ndsharray, and is killed.
    # The child inherits file descriptors but must not keep the reader's row alive, or the
    # writer could never clear its pins.
    script = textwrap.dedent("""
        import os, signal, sys, time, ndsharray
        r = ndsharray.NdShArray("forked", r_w="r")
        held = [r.read(timeout=5)[1]]
        print("one", flush=True)
        sys.stdin.readline()
        held.append(r.read(timeout=5)[1])  # now both slots are pinned
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        print(child, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    with ndsharray.NdShArray("forked", np.zeros(8), "w", slots=2, max_slots=2, write_timeout=5.0) as w:
        p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdin is not None and p.stdout is not None
        child = None
        try:
            assert p.stdout.readline().strip() == "one"
            w.write(np.ones(8))
            p.stdin.write("\n")
            p.stdin.flush()
            child = int(p.stdout.readline())
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.wait(10) == -signal.SIGKILL
            w.write(np.full(8, 2.0))  # raises WriterStalledError if the dead reader's row looked alive
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if child is not None:
                os.kill(child, signal.SIGKILL)
                wait_until(lambda: pid_gone(child), what="the forked child to go")
