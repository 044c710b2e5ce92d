"""Isolation: two daemons, other users, other shm folders and a --group never see or touch
each other's tags, segments and files; readers map segments read-only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, our_segments

import ndsharray
from ndsharray import admin, config
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import create_segment


def test_tags_of_two_daemons_never_mix(daemon: Daemon, folder: str) -> None:
    os.mkdir(f"{folder}/b", 0o700)
    other = Daemon(f"{folder}/b").start()
    try:
        with ndsharray.NdShArray("same", np.zeros(2), "w", endpoint=daemon.endpoint), \
                ndsharray.NdShArray("same", np.ones(3), "w", endpoint=other.endpoint):
            a = ndsharray.NdShArray("same", r_w="r", endpoint=daemon.endpoint)
            b = ndsharray.NdShArray("same", r_w="r", endpoint=other.endpoint)
            assert a.read()[1].tolist() == [0, 0] and b.read()[1].tolist() == [1, 1, 1]
            assert our_segments(daemon.prefix).isdisjoint(our_segments(other.prefix))
            a.close()
            b.close()
    finally:
        assert other.stop() == 0


FAULT = """
import ctypes, ndsharray
r = ndsharray.NdShArray("ro", r_w="r")
status, a = r.read()
assert status and not a.flags.writeable
try:
    a[0] = 5
except ValueError:
    print("numpy refused", flush=True)
ctypes.memset(a.ctypes.data, 0xFF, a.nbytes)   # bypass numpy: the mapping itself is read-only
print("wrote", flush=True)
"""


def test_readers_map_read_only(daemon: Daemon) -> None:
    with ndsharray.NdShArray("ro", np.arange(16, dtype=np.uint8), "w"), \
            ndsharray.NdShArray("ro", r_w="r") as r:
        child = subprocess.run([sys.executable, "-c", FAULT], capture_output=True, text=True, timeout=60)
        assert "numpy refused" in child.stdout and "wrote" not in child.stdout
        assert child.returncode == -11  # SIGSEGV in the careless reader only
        assert r.read()[1].tolist() == list(range(16))  # shared data untouched


OTHER_USER = """
import os, sys
import ndsharray  # before dropping privileges: the interpreter may live under /root
from ndsharray.protocol import LIST
from ndsharray.transport import Connection
os.setgid(65534); os.setuid(65534)
endpoint, segment = sys.argv[1], sys.argv[2]
results = []
try:
    Connection(endpoint, timeout=0.5, retries=0).request(LIST)
    results.append("listed")
except Exception as exc:
    results.append(type(exc).__name__)
try:
    open("/dev/shm/" + segment, "rb")
    results.append("opened")
except PermissionError:
    results.append("PermissionError")
print(" ".join(results))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid (CI runs as root)")
def test_another_uid_cannot_list_or_read(daemon: Daemon) -> None:
    with ndsharray.NdShArray("private", np.arange(3), "w") as w:
        seg = w.ndarray_mmap_name
        assert seg is not None
        assert os.stat(f"{shm_dir()}/{seg}").st_mode & 0o777 == 0o600
        assert os.stat(daemon.folder).st_mode & 0o777 == 0o700
        env = {**os.environ, config.ENV_AUTOSTART: "0"}
        child = subprocess.run([sys.executable, "-c", OTHER_USER, daemon.endpoint, seg],
                               capture_output=True, text=True, timeout=60, env=env)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["DaemonUnavailableError", "PermissionError"]


def test_a_daemon_on_another_shm_dir_is_named_as_the_cause(folder: str, monkeypatch: Any) -> None:
    # The daemon creates segments where NDSHARRAY_SHM_DIR says; a client that looks
    # elsewhere must say so, not that the segment "no longer exists".
    other = os.path.join(folder, "shm")
    os.mkdir(other, 0o700)
    monkeypatch.setenv("NDSHARRAY_SHM_DIR", other)
    d = Daemon(folder).start()
    monkeypatch.delenv("NDSHARRAY_SHM_DIR")  # this process uses /dev/shm
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        w = ndsharray.NdShArray("elsewhere", r_w="w")
        with pytest.raises(ndsharray.NdShArrayError, match="must agree on NDSHARRAY_SHM_DIR"):
            w.write(np.zeros(4))
        w.close()
    finally:
        assert d.stop() == 0
    assert os.listdir(other) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of another uid (CI runs as root)")
def test_a_daemon_never_adopts_or_trips_on_another_users_files(folder: str, monkeypatch: Any) -> None:
    # Segment names can be guessed. Another user plants a valid segment (its writer pid 1,
    # always alive) and a junk file under this endpoint's prefix: a starting daemon must
    # neither adopt the first (it would give the tag to pid 1 and its data to our readers)
    # nor fail on the second, and must leave both alone.
    d = Daemon(folder)
    planted = [f"{d.prefix}{'a' * 16}", f"{d.prefix}{'b' * 16}"]
    create_segment(planted[0], tag="camera/left", dtype_text="'|u1'", shape=(4,), nslots=2,
                           generation=1, writer_pid=1)
    with open(f"{shm_dir()}/{planted[1]}", "w") as f:
        f.write("junk")
    for name in planted:
        os.chown(f"{shm_dir()}/{name}", 65534, 65534)
    try:
        d.start()
        monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
        monkeypatch.setenv(config.ENV_AUTOSTART, "0")
        assert ndsharray.list_tags() == []
        with ndsharray.NdShArray("camera/left", np.arange(4, dtype=np.uint8), "w") as w:
            assert w.ndarray_mmap_name not in planted
        assert d.stop() == 0
        assert "not this daemon's" in d.read_log()
        assert all(os.path.exists(f"{shm_dir()}/{name}") for name in planted)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        for name in planted:
            os.unlink(f"{shm_dir()}/{name}")


def test_a_shared_folder_named_in_the_endpoint_keeps_its_mode(folder: str, monkeypatch: Any) -> None:
    # (Readable by all, writable by us alone. One that others can write is refused:
    # test_security.py.)
    shared = os.path.join(folder, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o755)
    endpoint = f"ipc://{shared}/d.sock"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        with ndsharray.NdShArray("t", np.zeros(2), "w"):  # starts the daemon in that folder
            assert os.stat(f"{shared}/d.sock").st_mode & 0o777 == 0o600
        assert os.stat(shared).st_mode & 0o7777 == 0o755
    finally:
        admin.stop_daemon(endpoint)


GROUP_MEMBER = """
import os, sys
import numpy as np
import ndsharray  # before dropping privileges: the interpreter may live under /root
from ndsharray import transport
endpoint = sys.argv[1]
ndsharray.list_tags(endpoint=endpoint)  # (imports whatever a request needs, as root)
transport.close_all()  # the member connects anew
os.setgid(int(sys.argv[2])); os.setuid(65534)
print(sorted(t.tag for t in ndsharray.list_tags(endpoint=endpoint)))
with ndsharray.NdShArray("mine", np.arange(3), "w", endpoint=endpoint):
    print(sorted(t.tag for t in ndsharray.list_tags(endpoint=endpoint)))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_a_daemon_shared_with_a_group_serves_its_members(folder: str, monkeypatch: Any) -> None:
    import grp
    groups = [g for g in grp.getgrall() if g.gr_gid == 65534] or [g for g in grp.getgrall() if g.gr_gid]
    assert groups, "this machine has no group but root's to share the daemon with"
    group = groups[0]
    os.chown(folder, -1, group.gr_gid)
    os.chmod(folder, 0o770)
    d = Daemon(folder, "--group", group.gr_name).start()
    try:
        with ndsharray.NdShArray("owners", np.zeros(2), "w", endpoint=d.endpoint):
            child = subprocess.run([sys.executable, "-c", GROUP_MEMBER, d.endpoint, str(group.gr_gid)],
                                   capture_output=True, text=True, timeout=60,
                                   env={**os.environ, config.ENV_AUTOSTART: "0"})
        assert child.returncode == 0, child.stderr
        assert child.stdout.split("\n")[:2] == ["['owners']", "['mine', 'owners']"]
    finally:
        assert d.stop() == 0
