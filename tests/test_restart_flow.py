"""Data keeps flowing while the daemon restarts: a same-shape writer and its readers, even
readers that open new handles meanwhile, never wait for the daemon (issue 10, "Found by a
10-minute soak": a camera loop that reopens its handle loses no more than the restart).

The restart is held up on purpose (the test holds the start lock every starter takes), so
that a client step waiting for it shows up as a multi-second stall, not as noise."""

from __future__ import annotations

import fcntl
import os
from typing import Any

from conftest import Daemon, wait_until

from ndsharray import admin, config, daemonctl


def has_open(pid: int, path: str) -> bool:
    """True while process ``pid`` has ``path`` open (compared by inode, not by name)."""
    st = os.stat(path)
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            other = os.stat(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def test_a_reader_opened_while_the_daemon_restarts_waits_for_nothing(crashable: Daemon, puppets: Any) -> None:
    writer, reader = puppets(), puppets()
    # Opened before the tag has data: registered by its own request, so nothing is left
    # for the registrar to send, and after the kill the registrar itself restarts the daemon.
    reader(op="open", name="r", tag="cam", rw="r")
    seg = writer.start_writer("cam", "u1", [8], 1)
    assert reader(op="read", name="r", wait=10)["status"]
    start_lock = daemonctl.start_lock_path(crashable.endpoint)
    hold = os.open(start_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(hold, fcntl.LOCK_EX)  # every starter now waits until we let go
        assert crashable.proc is not None
        crashable.proc.kill()
        crashable.proc.wait()
        # The reader's registrar notices within its round and starts a successor: it waits
        # for the start lock, holding whatever it holds while it restarts the daemon.
        wait_until(lambda: has_open(reader.pid, start_lock), what="the reader's registrar to start a daemon")
        writer(op="write", name="w", dtype="u1", shape=[8], seed=2)  # the hot path
        # A new handle found through the tag's pointer needs no daemon: it opens and reads
        # at once (a deadline far beyond noise, far below the start lock's 20 s).
        out = reader.send(timeout=5, op="open", name="r2", tag="cam", rw="r")
        assert "error" not in out, out
        got = reader.send(timeout=5, op="read", name="r2", wait=4)
        assert got["ok"]["status"] and got["ok"]["segment"] == seg
        assert admin.daemon_pid() is None  # all that without a daemon: we still hold it up
    finally:
        os.close(hold)
    wait_until(lambda: admin.daemon_pid() not in (None, crashable.proc.pid), what="the successor")


def test_a_daemon_restart_leaves_a_live_writers_tag_pointer_in_place(crashable: Daemon, puppets: Any) -> None:
    # A restarted daemon emptied the pointer folder before it recovered the segments: a
    # reader opening its handle in between found no pointer and asked the daemon, which
    # was not serving yet, so it waited for the rest of the restart. The folder (and in it
    # the pointer of every tag whose writer lives) must stay through the restart.
    writer = puppets()
    seg = writer.start_writer("cam", "u1", [8], 1)
    folder = config.pointer_dir(crashable.endpoint)
    link = os.path.join(folder, config.pointer_name("cam"))
    held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # (its inode stays ours to stat)
    try:
        assert crashable.proc is not None
        crashable.proc.kill()
        crashable.proc.wait()
        writer(op="write", name="w", dtype="u1", shape=[8], seed=2)  # the registrar restarts it
        wait_until(lambda: admin.daemon_pid() not in (None, crashable.proc.pid), what="the successor")
        wait_until(lambda: [t.writer_pid for t in admin.list_tags()] == [writer.pid],
                   what="the successor to adopt the writer's segment")
        st = os.fstat(held)
        assert st.st_nlink > 0, "the restarted daemon removed the tag pointer folder"
        assert (st.st_dev, st.st_ino) == (os.stat(folder).st_dev, os.stat(folder).st_ino)
        assert os.readlink(link) == seg
    finally:
        os.close(held)
