"""Another local user must never run code as you, touch your files or stall you (issue 11).

Each test plants what an attacker could plant (a module in a shared working folder, a link
beside the socket, a file of another uid) and checks that ndsharray neither runs it,
follows it nor trusts it. Tests that need a second uid run as root and skip otherwise.
"""

from __future__ import annotations

import grp
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import ndsharray
from ndsharray import admin, config, daemonctl, safefs, transport
from ndsharray.segment.files import segment_path
from ndsharray.segment.header import create_segment
from ndsharray.segment.reader import SegmentReader
from ndsharray.segment.writer import SegmentWriter

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid (CI runs as root)")
NOBODY = 65534


def plant_daemon_module(where: str, kind: str, marker: str) -> None:
    """A fake ``ndsharrayd`` that leaves ``marker`` behind if anything runs it."""
    code = f"open({marker!r}, 'w').close()\nraise SystemExit(1)\n"
    if kind == "package":
        os.mkdir(os.path.join(where, "ndsharrayd"))
        for name in ("__init__.py", "__main__.py"):
            with open(os.path.join(where, "ndsharrayd", name), "w") as f:
                f.write(code)
    else:
        with open(os.path.join(where, "ndsharrayd.py"), "w") as f:
            f.write(code)


@pytest.mark.parametrize("kind", ["module", "package", "pythonpath"])
def test_autostart_never_runs_a_planted_ndsharrayd(folder: str, monkeypatch: Any, kind: str) -> None:
    # Issue 11 item 1: `python -m ndsharrayd` looked in the client's working folder first.
    plant = os.path.join(folder, "plant")
    os.mkdir(plant)
    marker = os.path.join(folder, "PWNED")
    plant_daemon_module(plant, "module" if kind == "pythonpath" else kind, marker)
    if kind == "pythonpath":
        monkeypatch.setenv("PYTHONPATH", plant)
    monkeypatch.chdir(plant)
    endpoint = f"ipc://{folder}/auto.sock"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        with ndsharray.NdShArray("t", np.zeros(2), "w"):
            pid = admin.daemon_pid(endpoint)
            assert pid is not None
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert b"ndsharrayd" in f.read().split(b"\0")
    finally:
        admin.stop_daemon(endpoint)
    assert not os.path.exists(marker)


def test_daemon_start_from_a_folder_holding_a_planted_ndsharrayd(folder: str) -> None:
    plant = os.path.join(folder, "plant")
    os.mkdir(plant)
    marker = os.path.join(folder, "PWNED")
    plant_daemon_module(plant, "package", marker)
    endpoint = f"ipc://{folder}/ctl.sock"
    env = {**os.environ, "PYTHONPATH": plant}
    try:
        cli = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", endpoint, "daemon", "start"],
                             cwd=plant, env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert admin.daemon_pid(endpoint) is not None
    finally:
        admin.stop_daemon(endpoint)
    assert not os.path.exists(marker)


def victim_file(folder: str) -> tuple[str, os.stat_result]:
    victim = os.path.join(folder, "bashrc")
    with open(victim, "w") as f:
        f.write("echo hello\n")
    os.chmod(victim, 0o644)
    return victim, os.stat(victim)


def unchanged(path: str, before: os.stat_result) -> bool:
    st = os.stat(path)
    with open(path) as f:
        content = f.read()
    return content == "echo hello\n" and (st.st_mode, st.st_uid, st.st_gid) == (
        before.st_mode, before.st_uid, before.st_gid)


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_the_detached_daemon_never_logs_into_a_planted_link(folder: str, plant: str) -> None:
    # Issue 11 item 2: <socket>.log -> ~/.bashrc got the daemon's log lines appended.
    victim, before = victim_file(folder)
    endpoint = f"ipc://{folder}/d.sock"
    (os.symlink if plant == "symlink" else os.link)(victim, config.log_path(endpoint))
    try:
        with pytest.raises(ndsharray.DaemonUnavailableError, match=r"d\.sock\.log .*(symbolic link|hard links)"):
            daemonctl.start_daemon(endpoint)
    finally:
        admin.stop_daemon(endpoint)
    assert unchanged(victim, before)


@needs_root
def test_the_detached_daemon_never_logs_into_another_users_file(folder: str) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    with open(config.log_path(endpoint), "w"):
        pass
    os.chown(config.log_path(endpoint), NOBODY, NOBODY)
    try:
        with pytest.raises(ndsharray.DaemonUnavailableError, match=r"d\.sock\.log belongs to uid 65534"):
            daemonctl.start_daemon(endpoint)
    finally:
        admin.stop_daemon(endpoint)
    assert os.path.getsize(config.log_path(endpoint)) == 0


INJECTED = "\n';cd;touch PWNED_by_member;#"


@needs_root
def test_planted_segment_names_are_logged_escaped(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 11 item 2: a name holding a newline and shell code became a line of its own.
    monkeypatch.setenv("NDSHARRAY_KEEP_LOG", "1")  # (a clean stop removes the log otherwise)
    endpoint = f"ipc://{folder}/d.sock"
    prefix = config.segment_prefix(endpoint)
    planted = [f"/dev/shm/{prefix}foreign{INJECTED}", f"/dev/shm/{prefix}junk{INJECTED}"]
    for path in planted:
        with open(path, "w") as f:
            f.write("junk")
    os.chown(planted[0], NOBODY, NOBODY)  # left alone and logged; the other is ours: removed
    try:
        daemonctl.start_daemon(endpoint)
        admin.stop_daemon(endpoint)
        with open(config.log_path(endpoint)) as f:
            log = f.read()
        assert "foreign\\n';cd;touch" in log and "junk\\n';cd;touch" in log
        assert not [line for line in log.splitlines() if line.startswith("';")], log
    finally:
        admin.stop_daemon(endpoint)
        for path in planted:
            if os.path.exists(path):
                os.unlink(path)


def any_group() -> grp.struct_group:
    groups = [g for g in grp.getgrall() if g.gr_gid == NOBODY] or [g for g in grp.getgrall() if g.gr_gid]
    assert groups, "this machine has no group but root's"
    return groups[0]


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
@pytest.mark.parametrize("group", [False, pytest.param(True, marks=needs_root)])
def test_the_daemon_lock_never_follows_a_planted_link(folder: str, plant: str, group: bool) -> None:
    # Issue 11 item 3: d.sock.lock -> ~/important.txt was truncated, got the daemon's pid,
    # and under --group the file's group and mode changed.
    victim, before = victim_file(folder)
    endpoint = f"ipc://{folder}/d.sock"
    (os.symlink if plant == "symlink" else os.link)(victim, config.lock_path(endpoint))
    args = ["--group", any_group().gr_name] if group else []
    if group:
        os.chown(folder, -1, any_group().gr_gid)
        os.chmod(folder, 0o750)
    proc = subprocess.Popen(daemonctl.daemon_command("--endpoint", endpoint, *args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
    assert proc.returncode != 0
    assert re.search(r"d\.sock\.lock (is a symbolic link|has 2 hard links)", err), err
    assert unchanged(victim, before)


def test_a_held_start_lock_times_out_naming_file_and_holder(folder: str) -> None:
    # Issue 11 item 7: a blocking flock on <socket>.lock.start had no timeout.
    endpoint = f"ipc://{folder}/d.sock"
    start_lock = daemonctl.start_lock_path(endpoint)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", start_lock],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ndsharray.DaemonUnavailableError,
                           match=rf"d\.sock\.lock\.start stayed locked for 1 s, by pid {holder.pid} \(uid"):
            daemonctl.start_daemon(endpoint, timeout=1.0)
    finally:
        holder.communicate("")
    assert admin.daemon_pid(endpoint) is None


@needs_root
def test_a_start_lock_of_another_user_is_refused(folder: str) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    start_lock = daemonctl.start_lock_path(endpoint)
    with open(start_lock, "w"):
        pass
    os.chown(start_lock, NOBODY, NOBODY)
    with pytest.raises(ndsharray.UnsafeFileError, match=r"d\.sock\.lock\.start belongs to uid 65534"):
        daemonctl.start_daemon(endpoint, timeout=1.0)


def test_the_socket_mode_is_set_on_the_socket_not_on_what_its_name_now_names(folder: str) -> None:
    # Issue 11 item 10: chmod/chown of the socket by path after bind follow a link that
    # replaced it in between. (The swap is done here by hand, between bind and the call.)
    import socket
    victim, before = victim_file(folder)
    path = os.path.join(folder, "d.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        safefs.chmod_socket(path, 0o660)
        assert os.stat(path).st_mode & 0o777 == 0o660
        os.rename(path, path + ".old")
        os.symlink(victim, path)
        with pytest.raises(OSError):
            safefs.chmod_socket(path, 0o666, os.getgid())
    assert unchanged(victim, before)


@needs_root
def test_the_tags_folder_mode_is_set_on_the_folder_the_daemon_made(folder: str, monkeypatch: Any) -> None:
    # Issue 11 item 10: Pointers.reset made the .tags folder, then chowned it by path.
    from ndsharrayd import pointers
    victim = os.path.join(folder, "victim")
    os.mkdir(victim, 0o700)
    tags = os.path.join(folder, "d.sock.tags")
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: str, mode: int = 0o777) -> None:  # an attacker wins the race
        real_mkdir(path, mode)
        os.rmdir(path)
        os.symlink(victim, path)

    monkeypatch.setattr("ndsharrayd.pointers.os.mkdir", mkdir_then_swap)
    with pytest.raises(OSError):
        pointers.Pointers(tags, 0o750, any_group().gr_gid).reset()
    st = os.stat(victim)
    assert (st.st_mode & 0o7777, st.st_gid) == (0o700, 0)


@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_doctor_does_not_hang_on_a_planted_fifo_or_follow_a_link(folder: str, plant: str) -> None:
    # Issue 11 item 9: doctor open()ed every file under the prefix: a FIFO blocked it.
    endpoint = f"ipc://{folder}/d.sock"
    path = f"/dev/shm/{config.segment_prefix(endpoint)}{'f' * 16}"
    if plant == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.symlink(victim_file(folder)[0], path)
    try:
        out = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", endpoint, "doctor"],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, config.ENV_AUTOSTART: "0"})
    finally:
        os.unlink(path)
    assert "0 segment(s) of" in out.stdout and "1 other file(s) under its prefix are not yours" in out.stdout, out


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{sys.argv[2]} 0\\n".encode(), 0)
print("held", flush=True)
sys.stdin.read()
"""


def test_daemon_stop_signals_only_the_process_holding_the_lock(folder: str) -> None:
    # Issue 11 item 5: a lock file held by someone's process, naming another of your
    # processes: `daemon stop` killed that process.
    endpoint = f"ipc://{folder}/d.sock"
    victim = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fake = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, config.lock_path(endpoint), str(victim.pid)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "held\n"
        with pytest.raises(ndsharray.UnsafeFileError, match=rf"names pid {victim.pid} but is locked by pid {fake.pid}"):
            admin.stop_daemon(endpoint)
        with pytest.raises(ndsharray.UnsafeFileError):
            admin.daemon_pid(endpoint)
        cli = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", endpoint, "daemon", "stop"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode != 0 and "Nothing was signalled" in cli.stderr, cli
        assert victim.poll() is None and fake.poll() is None
    finally:
        fake.communicate("")
        victim.communicate(b"")


@pytest.mark.parametrize("squat", ["file", pytest.param("folder of another uid", marks=needs_root)])
def test_a_squatted_runtime_folder_is_passed_by(folder: str, monkeypatch: Any, squat: str) -> None:
    # Issue 11 item 8: with XDG_RUNTIME_DIR unset, another uid's /tmp/ndsharray-<uid> made
    # every client and the CLI fail, and the user could not remove it from sticky /tmp.
    import tempfile
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", folder)
    usual = os.path.join(folder, f"ndsharray-{os.getuid()}")
    if squat == "file":
        with open(usual, "w"):
            pass
    else:
        os.mkdir(usual)
        os.chown(usual, NOBODY, NOBODY)
    spare = config.runtime_dir()
    assert spare == usual + ".1"
    st = os.lstat(spare)
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700
    assert config.runtime_dir() == spare
    os.unlink(usual) if squat == "file" else os.rmdir(usual)  # the squatter leaves:
    assert config.runtime_dir() == spare  # every client still agrees on the spare
    assert not os.path.exists(usual)


def test_when_every_runtime_folder_name_is_taken_the_error_says_what_to_do(folder: str, monkeypatch: Any) -> None:
    import tempfile
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", folder)
    names = [f"ndsharray-{os.getuid()}"] + [f"ndsharray-{os.getuid()}.{k}" for k in range(1, 16)]
    for name in names:
        os.symlink("/", os.path.join(folder, name))  # (links: never followed, never ours)
    with pytest.raises(PermissionError, match=r"set XDG_RUNTIME_DIR to a folder of your own .* NDSHARRAY_ENDPOINT="):
        config.default_endpoint()


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_an_endpoint_folder_every_user_can_write_is_refused(folder: str, monkeypatch: Any, mode: int) -> None:
    # Issue 11 item 4: in a 1777 endpoint folder another uid held its own lock, bound the
    # socket and answered with its own file as the segment. Nobody but you (and your
    # --group) may be able to write the folder.
    shared = os.path.join(folder, "shared")
    os.mkdir(shared)
    os.chmod(shared, mode)
    endpoint = f"ipc://{shared}/d.sock"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    with pytest.raises(ndsharray.UnsafeFileError, match=r"shared is writable by every user .* unset NDSHARRAY_"):
        ndsharray.NdShArray("t", np.zeros(2), "w")
    by_hand = subprocess.run(daemonctl.daemon_command("--endpoint", endpoint), capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    assert by_hand.returncode != 0 and "writable by every user" in by_hand.stderr
    assert os.listdir(shared) == [] and os.stat(shared).st_mode & 0o7777 == mode


@needs_root
def test_a_lock_of_another_user_is_not_trusted(folder: str, monkeypatch: Any) -> None:
    # A lock file (held) that another uid owns and does not share with our groups: not
    # our daemon, whatever answers on the socket.
    endpoint = f"ipc://{folder}/d.sock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, config.lock_path(endpoint), "1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        os.chown(config.lock_path(endpoint), NOBODY, NOBODY)
        os.chmod(config.lock_path(endpoint), 0o644)
        monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
        monkeypatch.setenv(config.ENV_AUTOSTART, "0")
        with pytest.raises(ndsharray.UnsafeFileError, match=r"d\.sock\.lock belongs to uid 65534 .* not shared"):
            ndsharray.NdShArray("t", r_w="r")
    finally:
        holder.communicate("")


def test_a_segment_name_from_a_reply_is_never_a_path(folder: str) -> None:
    # Issue 11 item 4: a fake daemon answered '/tmp/.../stolen' and the writer wrote there.
    stolen = os.path.join(folder, "stolen")
    create_segment(stolen, tag="t", dtype_text="'<f8'", shape=(4,), nslots=2, generation=1,
                           writer_pid=os.getpid())
    for name in (stolen, "../" + stolen, "nds-0-abc/../../" + stolen, "nds-0-" + "a" * 10 + "-" + "b" * 15):
        for cls in (SegmentWriter, SegmentReader):
            with pytest.raises(ndsharray.UnsafeFileError, match="is not a segment name ndsharrayd makes"):
                cls(name)


@needs_root
def test_a_segment_another_user_made_under_our_name_is_refused(folder: str) -> None:
    # Issue 11 items 4 and 10: an unlinked segment's name re-created by another uid between
    # a reader reading the tag's pointer and opening it; or a fake daemon's own file.
    name = f"{config.segment_prefix(f'ipc://{folder}/d.sock')}{'c' * 16}"
    create_segment(name, tag="t", dtype_text="'<f8'", shape=(4,), nslots=2, generation=1,
                           writer_pid=os.getpid(), mode=0o666)
    try:
        os.chown(segment_path(name), NOBODY, NOBODY)
        for cls in (SegmentWriter, SegmentReader):
            with pytest.raises(ndsharray.UnsafeFileError, match=r"belongs to uid 65534 .* not to uid 0"):
                cls(name)
    finally:
        os.unlink(segment_path(name))


@needs_root
def test_a_group_daemon_restarted_by_a_client_is_shared_again(folder: str, monkeypatch: Any) -> None:
    # Issue 11 item 10: auto-start never passed --group, so a group daemon that died came
    # back private and the group's members lost it.
    from conftest import Daemon, wait_until
    group = any_group()
    os.chown(folder, -1, group.gr_gid)
    os.chmod(folder, 0o750)
    d = Daemon(folder, "--group", group.gr_name).start()
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(15)
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        with ndsharray.NdShArray("t", np.zeros(2), "w") as w:
            sock = os.stat(d.endpoint[len("ipc://"):])
            assert (sock.st_mode & 0o777, sock.st_gid) == (0o660, group.gr_gid)
            seg = os.stat(segment_file(w.ndarray_mmap_name))
            assert (seg.st_mode & 0o777, seg.st_gid) == (0o660, group.gr_gid)
    finally:
        admin.stop_daemon(d.endpoint)
    wait_until(lambda: not os.path.exists(d.endpoint[len("ipc://"):]), what="socket removed")


def segment_file(name: str | None) -> str:
    assert name is not None
    return f"/dev/shm/{name}"


def raw_request(endpoint: str, op: str, **args: Any) -> Any:
    """One request from a bare DEALER socket of this process; the decoded reply."""
    import json

    import zmq

    from ndsharray import protocol
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(protocol.encode_request(7, op, **args))
        assert sock.poll(10_000), "no reply"
        return json.loads(sock.recv())
    finally:
        sock.close(0)


@pytest.mark.parametrize("op", ["claim", "attach"])
def test_a_registration_naming_another_process_is_refused(daemon: Any, op: str) -> None:
    # Issue 11 item 11: a claim with a made-up pid (pid 1 never dies) held a tag for good,
    # and naming a writer's pid took its tag over. On ipc the daemon knows the real pid.
    bad = raw_request(daemon.endpoint, op, tag="t", pid=1, token="ab" * 8)
    assert not bad["ok"] and bad["error"]["code"] == "BAD_REQUEST", bad
    assert f"field 'pid': 1 is not the process asking (pid {os.getpid()}" in bad["error"]["message"]
    good = raw_request(daemon.endpoint, op, tag="t", pid=os.getpid(), token="ab" * 8)
    assert good["ok"], good
    assert raw_request(daemon.endpoint, "release" if op == "claim" else "detach", tag="t", token="ab" * 8)["ok"]


GROUP_REMOVER = """
import os, sys
import numpy as np
import ndsharray
from ndsharray import transport
endpoint = sys.argv[1]
ndsharray.list_tags(endpoint=endpoint)  # (imports what a request needs, as root)
transport.close_all()
os.setgid(int(sys.argv[2])); os.setuid(65534)
try:
    ndsharray.remove_tag("owners", endpoint=endpoint)
    print("removed owners")
except ndsharray.DaemonError as exc:
    print(exc.code, exc)
with ndsharray.NdShArray("mine", np.arange(3), "w", endpoint=endpoint):
    pass
ndsharray.remove_tag("mine", endpoint=endpoint)
print("removed mine")
"""


@needs_root
def test_a_group_member_removes_only_its_own_tags(folder: str) -> None:
    # Issue 11 item 11: under --group any member could remove any tag.
    from conftest import Daemon
    group = any_group()
    os.chown(folder, -1, group.gr_gid)
    os.chmod(folder, 0o750)
    d = Daemon(folder, "--group", group.gr_name).start()
    try:
        with ndsharray.NdShArray("owners", np.zeros(2), "w", endpoint=d.endpoint):
            child = subprocess.run([sys.executable, "-c", GROUP_REMOVER, d.endpoint, str(group.gr_gid)],
                                   capture_output=True, text=True, timeout=60,
                                   env={**os.environ, config.ENV_AUTOSTART: "0"})
            assert child.returncode == 0, child.stderr
            lines = child.stdout.splitlines()
            assert lines[0].startswith("FORBIDDEN tag 'owners' was last written by another user (uid 0)"), lines
            assert lines[1] == "removed mine"
            assert [t.tag for t in ndsharray.list_tags(d.endpoint)] == ["owners"]
    finally:
        transport.close_all()
        assert d.stop() == 0


OUTSIDER = """
import os, socket, sys
os.setgid(65534); os.setgroups([]); os.setuid(65534)
for what, act in [("open", lambda: os.open(sys.argv[1], os.O_RDWR)), ("truncate", lambda: os.truncate(sys.argv[1], 0)),
                  ("connect", lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[2]))]:
    try:
        act()
        print(what, "allowed")
    except PermissionError:
        print(what, "denied")
"""


@needs_root
def test_by_default_another_user_can_neither_open_nor_truncate_a_segment(daemon: Any) -> None:
    # Issue 11 item 6: truncating a mapped segment kills its users (SIGBUS). What is
    # promised: by default nobody but you can; under --group every member can (README).
    with ndsharray.NdShArray("t", np.zeros(1000), "w") as w:
        seg = segment_file(w.ndarray_mmap_name)
        child = subprocess.run([sys.executable, "-I", "-c", OUTSIDER, seg, daemon.endpoint[len("ipc://"):]],
                               capture_output=True, text=True, timeout=60)
        assert child.stdout.split("\n")[:3] == ["open denied", "truncate denied", "connect denied"], child
        assert os.path.getsize(seg) > 0
