"""Handles and daemons coming and going: takeovers, restarts, stops and closes (issue 10)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from click.testing import CliRunner
from conftest import Daemon, our_segments, wait_until
from test_crash import waiting_for_a_reply

import ndsharray
from ndsharray import admin, config
from ndsharray.cli import main
from ndsharray.registrar import registrar
from ndsharray.segment.files import segment_path


def kill_daemon(d: Daemon) -> int:
    """SIGKILL the daemon that serves ``d``'s endpoint now (the first, or a successor a
    client started); returns its pid once it is gone."""
    pid = admin.daemon_pid(d.endpoint)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    if d.proc is not None and d.proc.pid == pid:
        d.proc.wait()
    wait_until(lambda: admin.daemon_pid(d.endpoint) != pid, what="the daemon's lock to go")
    return pid


def tag_row(tag: str) -> Any:
    return next((t for t in ndsharray.list_tags() if t.tag == tag), None)


# ---- a takeover writer whose offered segment went (review defects 3 and 4) ----------------


def test_a_takeover_writer_of_a_removed_tag_gets_tag_removed(daemon: Daemon) -> None:
    first = ndsharray.NdShArray("offer", np.zeros(4), "w")
    first.close()  # the tag keeps its segment: the next writer is offered it
    with ndsharray.NdShArray("offer", r_w="w") as second:
        admin.remove_tag("offer")  # before the second writer opened the offered segment
        with pytest.raises(ndsharray.TagRemovedError, match="removed"):
            second.write(np.ones(4))


def test_a_takeover_writers_first_write_after_a_daemon_crash_succeeds(
        crashable: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ndsharray.NdShArray("offer", np.zeros(4), "w")
    first.close()
    with ndsharray.NdShArray("offer", r_w="w") as second:
        offered = second._offered
        assert offered is not None
        monkeypatch.setenv(config.ENV_AUTOSTART, "0")  # this test starts the successor
        kill_daemon(crashable)
        # A successor that does not keep the offered segment (its retention ran out):
        os.unlink(segment_path(offered.name))
        crashable.proc = Daemon(crashable.folder).start().proc
        second.write(np.ones(4))  # the first write after the restart publishes
        with ndsharray.NdShArray("offer", r_w="r") as r:
            status, a = r.read(timeout=10)
            assert status and a.tolist() == [1.0] * 4


# ---- one writer per tag across a daemon restart (review defect 5) --------------------------


def test_after_a_daemon_restart_only_the_adopted_writer_gets_its_tag_back(
        crashable: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ndsharray.NdShArray("adopt", np.zeros(16), "w")
    try:
        seg = first.ndarray_mmap_name
        # Hold this process's registrar back, so the restarted daemon has adopted the segment
        # and the first writer has not re-registered yet (the window is a registrar round).
        with monkeypatch.context() as m:
            m.setattr(registrar, "_round", lambda: None)
            m.setenv(config.ENV_AUTOSTART, "0")
            kill_daemon(crashable)
            crashable.proc = Daemon(crashable.folder).start().proc
            assert tag_row("adopt").writer_pid == os.getpid()  # adopted, with no token yet
            with pytest.raises(ndsharray.TagBusyError):
                ndsharray.NdShArray("adopt", r_w="w")  # another handle of the same process
        first.write(np.ones(16))  # still the writer, in the same segment
        assert first.ndarray_mmap_name == seg
        with ndsharray.NdShArray("adopt", r_w="r") as r:
            status, a = r.read(timeout=10)
            assert status and a[0] == 1.0
        with pytest.raises(ndsharray.TagBusyError):
            ndsharray.NdShArray("adopt", r_w="w")
    finally:
        first.close()
    assert tag_row("adopt").writer_pid is None  # its release matched the adopted writer


def test_the_registry_knows_an_adopted_writer_by_its_key_not_its_pid() -> None:
    from ndsharray.segment.header import writer_key
    from ndsharrayd.registry import Registry

    reg = Registry()
    reg.adopt("t", segment="s", generation=1, dtype="'<f8'", shape=(2,), nbytes=16, slots=3,
              size=1, writer_pid=100, writer_key=writer_key("a" * 16))
    with pytest.raises(Exception, match="already has a writer"):
        reg.claim("t", 100, "b" * 16, alive=lambda pid: True)  # same pid, another handle
    with pytest.raises(Exception, match="not the writer"):
        reg.check_writer("t", "b" * 16)
    reg.release("t", "b" * 16, now=0.0)  # not the writer's: changes nothing
    assert reg.tags["t"].writer is not None
    assert reg.claim("t", 100, "a" * 16, alive=lambda pid: True).writer.token == "a" * 16  # type: ignore[union-attr]


# ---- a gone writer's last frame survives a daemon crash (soak finding) ---------------------


def test_a_closed_writers_last_frame_stays_readable_across_a_daemon_crash(
        crashable: Daemon, monkeypatch: pytest.MonkeyPatch, puppets: Any) -> None:
    with ndsharray.NdShArray("kept", np.arange(4.0), "w") as w:
        seg = w.ndarray_mmap_name
    dead = puppets()
    dead_seg = dead.start_writer("died", "u1", [3], 5)
    dead.kill()
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    kill_daemon(crashable)
    crashable.proc = Daemon(crashable.folder).start().proc
    closed, died = tag_row("kept"), tag_row("died")
    assert (closed.segment, closed.writer_pid, closed.writer_left) == (seg, None, "closed")
    assert (died.segment, died.writer_pid, died.writer_left) == (dead_seg, None, "died")
    assert (closed.last_writer_pid, died.last_writer_pid) == (os.getpid(), dead.pid)  # (ls: who)
    with ndsharray.NdShArray("kept", r_w="r") as r:  # a late reader gets the last frame
        status, a = r.read()
        assert status and a.tolist() == [0.0, 1.0, 2.0, 3.0]
    with ndsharray.NdShArray("kept", np.full(4, 7.0), "w") as again:  # the tag is free
        assert again.ndarray_mmap_name == seg  # and continued in the same segment


def test_a_recovered_orphan_expires_after_the_retention_time(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    with ndsharray.NdShArray("brief", np.zeros(2), "w") as w:
        seg = w.ndarray_mmap_name
    kill_daemon(d)
    d = Daemon(folder, "--orphan-ttl", "0.5").start()
    try:
        assert tag_row("brief") is not None and seg in our_segments(d.prefix)
        wait_until(lambda: tag_row("brief") is None, what="the recovered orphan to expire")
        assert seg not in our_segments(d.prefix)
    finally:
        assert d.stop() == 0


# ---- a notebook re-running its writer cell (first-time user, item 2) -----------------------


def test_a_writer_cell_run_twice_is_told_which_handle_of_this_process_holds_the_tag(
        daemon: Daemon, puppets: Any) -> None:
    cell = compile("w = ndsharray.NdShArray('jup/x', np.zeros(3), 'w')", "<cell 1>", "exec")
    ns: dict[str, Any] = {"np": np, "ndsharray": ndsharray}
    exec(cell, ns)
    with pytest.raises(ndsharray.TagBusyError) as err:
        exec(cell, ns)  # the same cell again: `w` still holds the tag
    msg = str(err.value)
    assert f"this same process (pid {os.getpid()})" in msg, msg
    assert "created at <cell 1>:1, bound to w" in msg and "w.close()" in msg, msg
    assert "ndsharray.close_all()" in msg, msg
    ndsharray.close_all()  # the way out it names
    assert ns["w"].closed
    exec(cell, ns)  # now the cell runs
    ns["w"].close()
    other = puppets()
    other(op="open", name="w", tag="jup/x", rw="w")
    with pytest.raises(ndsharray.TagBusyError) as err:
        ndsharray.NdShArray("jup/x", r_w="w")  # held by another process: the daemon's words
    assert f"pid {other.pid}" in str(err.value) and "same process" not in str(err.value)


# ---- close() never waits for a daemon that is down or restarting (soak finding) ------------


def test_a_close_in_flight_when_the_daemon_dies_returns_at_once(crashable: Daemon, puppets: Any) -> None:
    with ndsharray.NdShArray("cam", np.zeros(4), "w") as w:
        reader = puppets()
        reader(op="open", name="r", tag="cam", rw="r")
        assert reader(op="read", name="r", wait=10)["status"]
        # (its registration is posted; a request of that process sends it first)
        reader(op="open", name="other", tag="other", rw="r")
        assert crashable.proc is not None
        crashable.proc.send_signal(signal.SIGSTOP)  # the detach gets no answer...
        assert reader.proc.stdin is not None
        reader.proc.stdin.write('{"op": "close", "name": "r"}\n')
        reader.proc.stdin.flush()
        wait_until(lambda: waiting_for_a_reply(reader.pid), what="the reader's detach request")
        t0 = time.monotonic()
        crashable.proc.kill()  # ...and the daemon dies with it unanswered
        crashable.proc.wait()
        out = reader._line(30)
        took = time.monotonic() - t0
        print(f"close() returned {took * 1000:.0f} ms after the daemon died")
        assert "error" not in out, out
        assert took < 1.5, f"close() waited {took:.1f} s for a dead daemon (request timeout 3 s)"
        # A camera loop reopening now loses no more than the restart: the reopen starts a
        # new daemon, and frames flow again.
        reader(op="open", name="r", tag="cam", rw="r")
        w.write(np.ones(4))
        got = reader(op="read", name="r", wait=10)
        assert got["status"] and got["segment"] == w.ndarray_mmap_name
        wait_until(lambda: (row := tag_row("cam")) and row.writer_pid == os.getpid(),
                   what="a new daemon that knows the writer")


def test_a_close_while_a_daemon_starts_does_not_wait_and_releases_before_the_next_claim(
        crashable: Daemon, monkeypatch: pytest.MonkeyPatch, puppets: Any) -> None:
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")  # (the puppet's registrar starts no daemon)
    writer = puppets()
    writer.start_writer("cam", "u1", [4], 1)
    kill_daemon(crashable)
    crashable.proc = proc = Daemon(crashable.folder).start().proc  # adopts the writer's segment
    assert proc is not None
    wait_until(lambda: (row := tag_row("cam")) and row.writer_pid == writer.pid, what="adoption")
    # Make it a daemon that holds the lock but does not serve yet (recovering, say): stopped,
    # and its lock file without the "serving" line it adds once it answers.
    proc.send_signal(signal.SIGSTOP)
    lock = config.lock_path(crashable.endpoint)
    with open(lock) as f:
        ident, serving = f.read().split("\n", 1)
    assert serving == "serving\n"
    os.truncate(lock, len(ident) + 1)
    try:
        t0 = time.monotonic()
        writer(op="close", name="w")
        took = time.monotonic() - t0
        print(f"close() with the daemon not serving: {took * 1000:.0f} ms")
        assert took < 1.0, f"close() waited {took:.1f} s for a daemon that was not serving"
    finally:
        proc.send_signal(signal.SIGCONT)
    # The release was kept, not dropped: it reaches the daemon before the same process's
    # next claim of the tag, which is granted.
    writer(op="open", name="w", tag="cam", rw="w")
    assert tag_row("cam").writer_pid == writer.pid


# ---- `ndsharray daemon stop` with clients running (first-time user, item 3) ----------------


def test_after_a_daemon_stop_data_flows_and_ls_and_doctor_say_who_streams(
        daemon: Daemon, puppets: Any) -> None:
    writer, reader = puppets(), puppets()
    seg = writer.start_writer("cam", "u1", [4], 1)
    reader(op="open", name="r", tag="cam", rw="r")
    assert reader(op="read", name="r", wait=10)["status"]
    assert daemon.stop() == 0
    # The running clients go on without the daemon: frames keep flowing...
    writer(op="write", name="w", dtype="u1", shape=[4], seed=2)
    got = reader(op="read", name="r", wait=10)
    assert got["status"] and got["digest"] == digest(make_array("u1", (4,), 2))
    # ...which ls and doctor say, naming the tag and the processes (the daemon cannot).
    out = CliRunner().invoke(main, ["ls"]).output
    assert "no ndsharrayd runs" in out and "'cam'" in out and "ndsharray daemon start" in out, out
    row = next(line.split() for line in out.splitlines() if line.startswith("cam "))
    assert row[1:] == [str(writer.pid), str(reader.pid)], out
    listed = CliRunner().invoke(main, ["ls", "--json"])  # the same facts for scripts (was [])
    assert json.loads(listed.stdout) == [{"tag": "cam", "stranded": True, "segment": seg,
                                          "writer_pids": [writer.pid], "reader_pids": [reader.pid]}]
    assert "no ndsharrayd runs" in listed.stderr and "'cam'" in listed.stderr, listed.stderr
    doc = CliRunner().invoke(main, ["doctor"]).output
    assert doc.startswith("WARN  daemon") and "'cam'" in doc and str(writer.pid) in doc, doc
    # The next daemon (any new handle, or `ndsharray daemon start`, starts one) gets them
    # back within a second; the writer continues in a fresh segment and readers follow.
    daemon.proc = Daemon(daemon.folder).start().proc
    wait_until(lambda: (row := tag_row("cam")) and row.writer_pid == writer.pid and row.readers == 1,
               what="the running clients to re-register")
    writer(op="write", name="w", dtype="u1", shape=[4], seed=3)
    got = reader(op="read", name="r", wait=10)
    assert got["status"] and got["digest"] == digest(make_array("u1", (4,), 3))
    with ndsharray.NdShArray("cam", r_w="r") as late:
        status, a = late.read(timeout=10)
        assert status and digest(a) == digest(make_array("u1", (4,), 3))


def test_a_daemon_that_has_locked_but_not_yet_written_its_pid_is_not_taken_for_a_stranger(
        folder: str) -> None:
    # A starting daemon takes the lock first and writes its pid just after; a restart leaves
    # the dead predecessor's pid there meanwhile. Polling daemon_pid() across a restart (as
    # test_daemon_sigkill_data_keeps_flowing_and_registry_is_rebuilt does) hit that window
    # and got UnsafeFileError ("names pid N but is locked by ...").
    endpoint = f"ipc://{folder}/d.sock"
    fd = os.open(config.lock_path(endpoint), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"999999999 1\n")  # a predecessor's identity
        fcntl.flock(fd, fcntl.LOCK_EX)
        def write_identity() -> None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} 2\n".encode(), 0)

        writer = threading.Timer(0.1, write_identity)
        writer.start()
        try:
            assert admin.daemon_pid(endpoint) == os.getpid()
        finally:
            writer.join()
    finally:
        os.close(fd)
