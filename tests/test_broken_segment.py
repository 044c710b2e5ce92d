"""A process of the user (or of the group, under --group) shrinks a live tag's segment: the
daemon must neither die of SIGBUS nor keep the broken tag (review defect 2)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import protocol
from ndsharray.cli import main
from ndsharray.segment.files import segment_path


def test_ls_after_a_segment_was_truncated_to_nothing(daemon: Daemon) -> None:
    w = ndsharray.NdShArray("trunc/a", np.arange(1000.0), "w")
    name = w.ndarray_mmap_name
    assert name is not None
    w.close()  # the tag stays, with its last frame, for --orphan-ttl
    with ndsharray.NdShArray("trunc/ok", np.ones(4), "w"):
        os.truncate(segment_path(name), 0)
        out = CliRunner().invoke(main, ["ls"], catch_exceptions=False)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died:\n" + daemon.read_log()
        assert out.exit_code == 0, out.output
        tags = [line.split()[0] for line in out.output.splitlines()[1:] if not line.startswith("note:")]
        assert tags == ["trunc/ok"]
        assert f"note: tag 'trunc/a' was removed by the daemon because its segment {name} is broken" \
            in out.output
        assert "another process truncated it" in out.output
        assert not os.path.exists(segment_path(name))
        # and it goes on serving
        assert [t.tag for t in ndsharray.list_tags()] == ["trunc/ok"]
    assert "tag 'trunc/a' was removed by the daemon" in daemon.read_log()


def test_writer_and_reader_of_a_shrunk_segment_are_told(daemon: Daemon, caplog: Any) -> None:
    # Keep the header page (so that neither this process's writer nor its reader can fault on
    # the flags they check first) but drop every slot: the daemon notices on its next rate
    # sample (every second), without an ls.
    with ndsharray.NdShArray("trunc/b", np.arange(4096.0), "w") as w, \
            ndsharray.NdShArray("trunc/b", r_w="r") as r:
        assert r.read(copy=True)[0]
        name = w.ndarray_mmap_name
        assert name is not None
        header = os.stat(segment_path(name)).st_size - 3 * 4096 * 8
        os.truncate(segment_path(name), header)
        wait_until(lambda: not os.path.exists(segment_path(name)), what="the daemon to remove it")
        with pytest.raises(ndsharray.TagRemovedError, match="broke its segment"):
            w.write(np.arange(4096.0))
        # The daemon's own answer to that writer's next request for a segment says why.
        with pytest.raises(ndsharray.TagRemovedError, match=f"segment {name} is broken: its file is"):
            w._conn.request(protocol.GENERATION, tag="trunc/b", pid=os.getpid(), token=w._token,
                            dtype="'<f8'", shape=[5], slots=3)
        with caplog.at_level(logging.WARNING, logger="ndsharray"):
            assert r.read()[0] is False
        assert any("is broken: its file is" in m for m in caplog.messages), caplog.messages
    assert daemon.proc is not None and daemon.proc.poll() is None


RACE = r"""
import mmap, os, sys
from ndsharray import config
from ndsharrayd.pointers import Pointers
from ndsharrayd.registry import TagRecord
from ndsharrayd.segment_files import SegmentFiles
from ndsharray.segment.files import segment_path

endpoint = sys.argv[1]
files = SegmentFiles(config.segment_prefix(endpoint), 0o600, Pointers(config.pointer_dir(endpoint)), -1)
name = files.create(TagRecord("t"), os.getpid(), "'<f8'", (1000,), 3)
real_mmap = mmap.mmap

def map_then_truncate(*args, **kwargs):  # another process shrinks the file just after
    mm = real_mmap(*args, **kwargs)       # the daemon looked at its size and mapped it
    os.truncate(segment_path(name), 0)
    return mm

mmap.mmap = map_then_truncate
files.retire_and_unlink(name, 2)
mmap.mmap = real_mmap
print("alive", os.path.exists(segment_path(name)))
"""


def test_retiring_survives_a_truncate_right_after_the_daemon_mapped_the_header(folder: str) -> None:
    # The store of the retired flag is the daemon's last touch of a segment's memory: it is
    # done by the kernel (FUTEX_WAKE_OP), where a vanished page is EFAULT, not SIGBUS.
    proc = subprocess.run([sys.executable, "-c", RACE, f"ipc://{folder}/d.sock"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-1000:]}"
    assert proc.stdout.strip() == "alive False"
    assert "truncated" in proc.stderr  # its warning: the flag could not be set


def test_the_daemons_retire_sets_the_flag_and_wakes_a_futex_sleeper(folder: str) -> None:
    import ctypes
    import mmap
    import struct
    import threading
    import time

    from ndsharray.layout import OFF_NOTIFY, OFF_RETIRED
    from ndsharray.segment.mapping import mapping_address
    from ndsharrayd import safe_retire

    sys_futex = safe_retire._SYS_FUTEX
    if sys_futex is None:
        pytest.skip("no futex syscall number for this machine: the fallback is _hot.retire")
    path = os.path.join("/dev/shm", f"ndst-retire-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, mmap.PAGESIZE)
        mm = mmap.mmap(fd, mmap.PAGESIZE)
        libc = ctypes.CDLL(None, use_errno=True)
        woke: list[float] = []

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        tids: list[int] = []

        def sleeper() -> None:  # FUTEX_WAIT on the notify word while it is 0, for up to 10 s
            tids.append(threading.get_native_id())
            t0 = time.monotonic()
            libc.syscall(ctypes.c_long(sys_futex), ctypes.c_void_p(mapping_address(mm) + OFF_NOTIFY),
                         ctypes.c_long(0), ctypes.c_long(0), ctypes.byref(Timespec(10, 0)), None, ctypes.c_long(0))
            woke.append(time.monotonic() - t0)

        def in_futex_wait(tid: int) -> bool:  # (a wake sent before it sleeps would prove nothing)
            with open(f"/proc/self/task/{tid}/syscall") as f:
                return f.read().split()[0] == str(sys_futex)

        # Three sleepers, one retire: every one must wake (the kernel wakes one even when
        # asked for none, so one sleeper would not tell).
        threads = [threading.Thread(target=sleeper) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(tids) == 3 and all(in_futex_wait(t) for t in tids), what="sleepers in FUTEX_WAIT")
        safe_retire.retire(fd, 2)
        for t in threads:
            t.join(30)
        assert len(woke) == 3 and max(woke) < 5, woke
        safe_retire.retire(fd, 1)  # "removed" stays: a flag is only ever raised
        assert struct.unpack_from("<II", os.pread(fd, 8, OFF_RETIRED)) == (2, 2)  # retired, notify
        mm.close()
    finally:
        os.close(fd)
