"""Limits: the byte quota, a full /dev/shm, --max-tags and --max-clients are clear errors at
creation (never a SIGBUS later), and what exists keeps working.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, our_segments

import ndsharray
from ndsharray import config
from ndsharray.segment.files import shm_dir


def test_byte_quota_refuses_with_needed_and_free_bytes(folder: str, monkeypatch: Any) -> None:
    d = Daemon(folder, "--max-bytes", str(1 << 20)).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        with ndsharray.NdShArray("small", np.zeros(1000), "w") as small, \
                ndsharray.NdShArray("big", r_w="w") as big:
            with pytest.raises(ndsharray.DaemonLimitError, match=r"needs [\d.]+ \S+ \(3 slots x .* quota") as info:
                big.write(np.zeros(1 << 20, np.uint8))
            assert info.value.code == "NO_SPACE"
            small.write(np.ones(1000))  # existing tags keep working
            assert ndsharray.NdShArray("small", r_w="r").read()[1][0] == 1.0
    finally:
        assert d.stop() == 0


def test_full_shm_is_an_error_at_creation_not_a_sigbus(daemon: Daemon) -> None:
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with ndsharray.NdShArray("huge", r_w="w") as w:
        with pytest.raises(ndsharray.ResourceLimitError, match="shm-size") as info:
            with w.loan(shape=(free // 8 + 1,), dtype=np.float64):
                pass
        assert "free" in str(info.value)
        with w.loan(shape=(4,), dtype=np.float64) as buf:  # the writer still works
            buf[...] = 1
    assert not our_segments(daemon.prefix) or all(
        os.path.getsize(f"{shm_dir()}/{n}") < 1 << 20 for n in our_segments(daemon.prefix))


def test_tag_and_handle_limits_are_clear_errors(folder: str, monkeypatch: Any, caplog: Any) -> None:
    d = Daemon(folder, "--max-tags", "2", "--max-clients", "3").start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        a = ndsharray.NdShArray("a", np.zeros(2), "w")
        b = ndsharray.NdShArray("b", r_w="r")
        with pytest.raises(ndsharray.ResourceLimitError, match="--max-tags"):
            ndsharray.NdShArray("c", r_w="w")
        c = ndsharray.NdShArray("a", r_w="r")
        # A reader of a tag with no segment yet must register first: it is refused.
        with pytest.raises(ndsharray.ResourceLimitError, match="--max-clients"):
            ndsharray.NdShArray("b", r_w="r")
        # One that finds its segment through the tag's pointer needs nothing of the daemon:
        # it reads, its refused registration is logged, and its row still counts it.
        over = ndsharray.NdShArray("a", r_w="r")
        assert over.read()[0]
        info = ndsharray.tag_info("a")  # (the request sends the posted registration first)
        assert "--max-clients" in caplog.text
        assert info.readers == 2 and info.reader_pids == (os.getpid(),)
        over.close()
        c.close()
        ndsharray.NdShArray("b", r_w="r").close()  # room again
        a.write(np.ones(2))  # what exists keeps working
        a.close()
        b.close()
    finally:
        assert d.stop() == 0


@pytest.fixture
def small_tmpfs(folder: str) -> Any:
    """A 4 MiB tmpfs, like Docker's small /dev/shm (needs root, as in CI)."""
    mnt = os.path.join(folder, "shm")
    os.mkdir(mnt)
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "tmpfs", mnt],
                        capture_output=True, text=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN: {rc.stderr.strip()}); "
                    "the quota test covers part of this")
    yield mnt
    subprocess.run(["umount", mnt], check=True)


def test_small_tmpfs_full_is_a_clear_error_not_a_sigbus(small_tmpfs: str, folder: str,
                                                        monkeypatch: Any) -> None:
    monkeypatch.setenv("NDSHARRAY_SHM_DIR", small_tmpfs)
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        with ndsharray.NdShArray("fits", np.ones(32 * 1024), "w") as fits, \
                ndsharray.NdShArray("fits", r_w="r") as r, \
                ndsharray.NdShArray("big", r_w="w") as big:
            assert os.listdir(small_tmpfs)  # the segment lives on the small tmpfs
            with pytest.raises(ndsharray.ResourceLimitError, match=r"needs \d+ bytes but .* has \d+ free") as e:
                big.write(np.zeros(1 << 20))  # 8 MiB per slot on a 4 MiB tmpfs
            assert "--shm-size" in str(e.value)
            fits.write(np.full(32 * 1024, 2.0))  # the tag that fits keeps working
            assert r.read()[1][0] == 2.0
    finally:
        assert d.stop() == 0
    assert os.listdir(small_tmpfs) == []


def test_a_segment_whose_setup_fails_is_not_left_behind(folder: str, monkeypatch: Any) -> None:
    # The daemon's file layer, in this process: the segment is created, then setting it up
    # fails (the daemon ran out of fds, say). Nothing may stay in /dev/shm.
    from ndsharrayd.pointers import Pointers
    from ndsharrayd.registry import TagRecord
    from ndsharrayd.segment_files import SegmentFiles

    endpoint = f"ipc://{folder}/d.sock"
    files = SegmentFiles(config.segment_prefix(endpoint), 0o600, Pointers(config.pointer_dir(endpoint)),
                         os.getgid())  # (a --group daemon: it gives the segment to the group)

    def no_more_fds(*args: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "fchown", no_more_fds)  # (the daemon's first call after creating it)
    with pytest.raises(OSError, match="Too many open files"):
        files.create(TagRecord("t"), os.getpid(), "'<f8'", (4,), 3)
    assert not our_segments(config.segment_prefix(endpoint))
