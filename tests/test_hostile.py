"""Hostile or careless input: raw frames at the daemon, quotas, full memory, other users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import Daemon, our_segments

import ndsharray
from ndsharray import admin, config, protocol, segment


def raw_exchange(endpoint: str, frames: list[bytes], expect_reply: bool = True) -> Any:
    """Send raw frames from a DEALER socket; return the decoded reply or None."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(3000 if expect_reply else 300):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close(0)


HOSTILE: list[tuple[list[bytes], str | None]] = [
    ([b"\xff\xfe\x00garbage"], "BAD_REQUEST"),
    ([b'{"v": 1, "id": 3, "op": "list"'], "BAD_REQUEST"),  # truncated
    ([b"[]"], "BAD_REQUEST"),
    ([b'{"v": 1, "id": "x", "op": "list"}'], "BAD_REQUEST"),
    ([b'{"v": 2, "id": 1, "op": "list"}'], "BAD_VERSION"),
    ([b'{"v": 1, "id": 1, "op": "shutdown"}'], "UNKNOWN_OP"),
    ([json.dumps({"v": 1, "id": 1, "op": "claim", "tag": "a\u0000b", "pid": 1,
                  "token": "ab" * 8}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "claim", "tag": ["list"], "pid": 1,
                  "token": "ab" * 8}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": "ab" * 8,
                  "dtype": "'<f8'", "shape": [-5], "slots": 3}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": "ab" * 8,
                  "dtype": "'<f8'", "shape": [7] * 9000, "slots": 3}).encode()], "BAD_REQUEST"),
    ([b"{}", b"{}"], "BAD_REQUEST"),  # two frames
    ([b'{"v": 1, "id": 1, "op": "list", "pad": "' + b"x" * 2_000_000 + b'"}'], None),  # too big: dropped
    ([json.dumps({"v": 1, "id": 1, "op": "lookup", "tag": "t" * 1_000_000}).encode()], None),
]


def test_hostile_frames_get_errors_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    with ndsharray.NdShArray("keep", np.arange(4.0), "w") as w, ndsharray.NdShArray("keep", r_w="r") as r:
        before = [t.as_json() for t in ndsharray.list_tags()]
        for frames, code in HOSTILE:
            reply = raw_exchange(daemon.endpoint, frames, expect_reply=code is not None)
            if code is None:
                assert reply is None
            else:
                assert reply["ok"] is False and reply["error"]["code"] == code, (frames[0][:60], reply)
        after = [t.as_json() for t in ndsharray.list_tags()]
        for row in before + after:
            row.pop("last_write_age_s")
            row.pop("rate_hz")  # sampled by the daemon once a second: None, then 0.0
        assert after == before  # registry unchanged
        # And it still creates, serves and cleans up.
        w.write(np.zeros((2, 2)))
        assert r.read()[1].shape == (2, 2)
        with ndsharray.NdShArray("new", np.ones(3), "w"):
            assert {t.tag for t in ndsharray.list_tags()} == {"keep", "new"}
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_the_daemon_refuses_a_generation_whose_shape_numpy_cannot_index(daemon: Daemon) -> None:
    # (2**61, 2**61, 0) is 0 bytes, but no reader could build its view (review defect 6).
    with ndsharray.NdShArray("huge", r_w="w") as w:
        with pytest.raises(ndsharray.DaemonError, match="more than numpy can index") as err:
            w._conn.request("generation", tag="huge", pid=os.getpid(), token=w._token, dtype="'|u1'",
                            shape=[2**61, 2**61, 0], slots=3)
        assert err.value.code == "BAD_REQUEST"
        w.write(np.zeros((2, 0)))  # a zero-size array numpy can index is fine
        assert w.shape == (2, 0)


def test_daemon_error_replies_carry_the_request_id(daemon: Daemon) -> None:
    reply = raw_exchange(daemon.endpoint, [protocol.encode_request(42, "claim", tag="t", pid=0,
                                                                     token="ab" * 8)])
    assert reply["id"] == 42 and "field 'pid'" in reply["error"]["message"]


def test_byte_quota_refuses_with_needed_and_free_bytes(folder: str, monkeypatch: Any) -> None:
    d = Daemon(folder, "--max-bytes", str(1 << 20)).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        with ndsharray.NdShArray("small", np.zeros(1000), "w") as small, \
                ndsharray.NdShArray("big", r_w="w") as big:
            with pytest.raises(ndsharray.ResourceLimitError, match=r"needs [\d.]+ \S+ \(3 slots x .* quota") as info:
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
        os.path.getsize(f"{segment.shm_dir()}/{n}") < 1 << 20 for n in our_segments(daemon.prefix))


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
from ndsharray.transport import Connection
os.setgid(65534); os.setuid(65534)
endpoint, segment = sys.argv[1], sys.argv[2]
results = []
try:
    Connection(endpoint, timeout=0.5, retries=0).request("list")
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
        assert os.stat(f"{segment.shm_dir()}/{seg}").st_mode & 0o777 == 0o600
        assert os.stat(daemon.folder).st_mode & 0o777 == 0o700
        env = {**os.environ, config.ENV_AUTOSTART: "0"}
        child = subprocess.run([sys.executable, "-c", OTHER_USER, daemon.endpoint, seg],
                               capture_output=True, text=True, timeout=60, env=env)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["DaemonUnavailableError", "PermissionError"]


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


def test_garbage_in_the_reader_rows_does_not_stop_the_writer(daemon: Daemon) -> None:
    # Pins of readers that are gone (or bytes written by anyone with access to the file)
    # look like pins on every slot: the writer must find that no live reader holds those
    # rows and clear them, and a huge "rows in use" word must not send it past the table.
    from ndsharray import segment

    with ndsharray.NdShArray("rows", np.zeros(8), "w", slots=3, max_slots=3, write_timeout=1.0) as w, \
            ndsharray.NdShArray("rows", r_w="r") as r:
        status, held = r.read()  # a live reader keeps a pin: its row must survive
        assert status
        seg = w._wseg
        assert seg is not None
        lay = seg.layout
        fd = os.open(segment.segment_path(seg.name), os.O_RDWR)
        try:
            for row in range(1, 40):  # row 0 is the live reader's
                os.pwrite(fd, b"\xff" * segment.ROW_SIZE, lay.rows_offset + segment.ROW_SIZE * row)
            os.pwrite(fd, (0xFFFFFFFF).to_bytes(4, "little"), segment.OFF_ROWS_USED)
        finally:
            os.close(fd)
        (info,) = ndsharray.list_tags()  # the daemon reads the rows too: pid 0xFFFFFFFF is no process
        assert [s["pid"] for s in info.reader_stats] == [os.getpid()]
        for k in range(1, 6):
            w.write(np.full(8, float(k)))  # would stall (WriterStalledError) if it trusted them
            status, got = r.read()
            assert status and got.tolist() == [float(k)] * 8
        assert held.tolist() == [0.0] * 8  # the live reader's pinned view never changed
        assert w.ndarray_mmap_name == seg.name  # no new generation was needed


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
    segment.create_segment(planted[0], tag="camera/left", dtype_text="'|u1'", shape=(4,), nslots=2,
                           generation=1, writer_pid=1)
    with open(f"{segment.shm_dir()}/{planted[1]}", "w") as f:
        f.write("junk")
    for name in planted:
        os.chown(f"{segment.shm_dir()}/{name}", 65534, 65534)
    try:
        d.start()
        monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
        monkeypatch.setenv(config.ENV_AUTOSTART, "0")
        assert ndsharray.list_tags() == []
        with ndsharray.NdShArray("camera/left", np.arange(4, dtype=np.uint8), "w") as w:
            assert w.ndarray_mmap_name not in planted
        assert d.stop() == 0
        assert "not this daemon's" in d.read_log()
        assert all(os.path.exists(f"{segment.shm_dir()}/{name}") for name in planted)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        for name in planted:
            os.unlink(f"{segment.shm_dir()}/{name}")


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


def test_a_segment_whose_setup_fails_is_not_left_behind(folder: str, monkeypatch: Any) -> None:
    # The daemon's file layer, in this process: the segment is created, then setting it up
    # fails (the daemon ran out of fds, say). Nothing may stay in /dev/shm.
    from ndsharrayd.pointers import Pointers
    from ndsharrayd.registry import TagRecord
    from ndsharrayd.server import SegmentFiles

    endpoint = f"ipc://{folder}/d.sock"
    files = SegmentFiles(config.segment_prefix(endpoint), 0o600, Pointers(config.pointer_dir(endpoint)),
                         os.getgid())  # (a --group daemon: it gives the segment to the group)

    def no_more_fds(*args: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "fchown", no_more_fds)  # (the daemon's first call after creating it)
    with pytest.raises(OSError, match="Too many open files"):
        files.create(TagRecord("t"), os.getpid(), "'<f8'", (4,), 3)
    assert not our_segments(config.segment_prefix(endpoint))
