"""Starting, locking and stopping the daemon where the environment is unusual: dependencies
only on PYTHONPATH, a lock file a --group daemon left, a kernel without pidfd_open."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import ndsharray
from ndsharray import admin, config, daemonctl, transport

CLIENT = """
import sys
import numpy as np
from ndsharray import NdShArray, admin
w = NdShArray("t", np.arange(3.0), "w")
print(admin.daemon_pid(), flush=True)
w.close()
admin.stop_daemon()
"""


def module_folder(name: str) -> str:
    file = __import__(name).__file__
    assert file is not None
    return os.path.dirname(os.path.dirname(os.path.abspath(file)))


def test_autostart_finds_dependencies_that_only_pythonpath_names(folder: str) -> None:
    # Review of issue 11's fix: `python -I` dropped PYTHONPATH, so under ROS/colcon, Nix,
    # HPC modules or `pip install --target` the daemon died of ModuleNotFoundError: click.
    # A venv without any site-packages of ours: everything comes from PYTHONPATH.
    bare = os.path.join(folder, "bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True, timeout=120)
    path = [module_folder(m) for m in ("ndsharray", "zmq", "numpy", "click")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
           config.ENV_ENDPOINT: f"ipc://{folder}/d.sock", config.ENV_AUTOSTART: "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        run = subprocess.run([os.path.join(bare, "bin", "python"), "-c", CLIENT], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().isdigit()
    finally:
        admin.stop_daemon(f"ipc://{folder}/d.sock")
    assert os.listdir(folder) == ["bare"]  # no socket, lock or start lock left


def test_a_daemon_that_cannot_start_says_why_and_leaves_no_start_lock(folder: str) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    os.symlink(os.path.join(folder, "elsewhere"), config.log_path(endpoint))
    with pytest.raises(ndsharray.DaemonUnavailableError, match=r"could not start .*d\.sock\.log is a symbolic link"):
        daemonctl.start_daemon(endpoint)
    assert not os.path.exists(daemonctl.start_lock_path(endpoint))
    assert not daemonctl.daemon_running(endpoint)


def other_group() -> int:
    """A group other than ours the test can give a file to (any, as root)."""
    if os.geteuid() == 0:
        gids = [g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()]
    else:
        gids = [g for g in os.getgroups() if g != os.getegid()]
    if not gids:
        pytest.skip("needs root or a second group")
    return 65534 if 65534 in gids else gids[0]


def test_a_private_daemon_takes_back_a_lock_file_a_group_daemon_left(folder: str, monkeypatch: Any) -> None:
    # Review finding: a private daemon kept the 0640 group lock file a crashed --group daemon
    # left, and the next auto-start read "shared" from its mode and shared with that group.
    from conftest import Daemon
    gid = other_group()
    endpoint = f"ipc://{folder}/d.sock"
    lock = config.lock_path(endpoint)
    with open(lock, "w"):
        pass
    os.chown(lock, -1, gid)
    os.chmod(lock, 0o640)
    d = Daemon(folder).start()  # private: no --group
    assert d.proc is not None
    try:
        st = os.stat(lock)
        assert (st.st_mode & 0o777, st.st_gid) == (0o600, os.getegid())
        with open(lock) as f:
            assert f.readline().split()[2:3] == ["private"]
    finally:
        d.proc.kill()  # its lock file stays: the next client restarts it
        d.proc.wait(15)
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        with ndsharray.NdShArray("t", np.zeros(2), "w") as w:
            sock = os.stat(endpoint[len("ipc://"):])
            assert (sock.st_mode & 0o777, sock.st_gid) == (0o600, os.getegid())
            seg = os.stat(f"/dev/shm/{w.ndarray_mmap_name}")
            assert seg.st_mode & 0o777 == 0o600
            with open(lock) as f:
                assert f.readline().split()[2:3] == ["private"]
    finally:
        admin.stop_daemon(endpoint)


def test_a_client_restarts_a_group_daemon_by_the_group_its_lock_file_names(folder: str, monkeypatch: Any) -> None:
    from conftest import Daemon
    gid = other_group()
    os.chown(folder, -1, gid)
    os.chmod(folder, 0o750)
    d = Daemon(folder, "--group", str(gid)).start()
    assert d.proc is not None
    lock = config.lock_path(d.endpoint)
    try:
        with open(lock) as f:
            assert f.readline().split()[2:3] == [f"group={gid}"]
    finally:
        d.proc.kill()
        d.proc.wait(15)
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        with ndsharray.NdShArray("t", np.zeros(2), "w"):
            with open(lock) as f:
                assert f.readline().split()[2:3] == [f"group={gid}"]
            assert (os.stat(lock).st_mode & 0o777, os.stat(lock).st_gid) == (0o640, gid)
    finally:
        admin.stop_daemon(d.endpoint)


NO_PIDFD = """
import errno, os, sys
how = sys.argv.pop(1)
def pidfd_open(pid, flags=0):
    raise OSError(getattr(errno, how), os.strerror(getattr(errno, how)))
if how == "missing":
    del os.pidfd_open
else:
    os.pidfd_open = pidfd_open
from ndsharray.cli import main
main()
"""


@pytest.mark.parametrize("how", ["ENOSYS", "EPERM", "missing"])
def test_daemon_stop_works_without_pidfd_open(daemon: Any, how: str) -> None:
    # Review finding: `ndsharray daemon stop` crashed where pidfd_open is unavailable (ENOSYS
    # before Linux 5.3, EPERM under older Docker seccomp profiles).
    assert daemon.proc is not None
    stop = subprocess.run([sys.executable, "-c", NO_PIDFD, how, "--endpoint", daemon.endpoint, "daemon", "stop"],
                          capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert f"stopped ndsharrayd pid {daemon.proc.pid}" in stop.stdout
    assert daemon.proc.wait(15) == 0
    assert not daemonctl.daemon_running(daemon.endpoint)


# Runs ndsharrayd with one segment removed between the daemon's two opens of it during
# recovery (read its header, then open it for good): the race made certain, by the kernel's
# own ENOENT.
VANISHING = """
import os, sys
target = "/dev/shm/" + sys.argv.pop(1)
real_open = os.open
def racing_open(path, flags, *args, **kw):
    global target
    if path == target and flags & os.O_RDWR:
        target = None
        os.unlink(path)
    return real_open(path, flags, *args, **kw)
os.open = racing_open
sys.argv[0] = "ndsharrayd"
from ndsharrayd.__main__ import main
main()
"""


def test_a_segment_that_goes_away_during_recovery_costs_its_tag_not_the_daemon(
        folder: str, monkeypatch: Any) -> None:
    from conftest import Daemon, wait_until
    a = Daemon(folder).start()
    assert a.proc is not None
    monkeypatch.setenv(config.ENV_ENDPOINT, a.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    kept = ndsharray.NdShArray("kept", np.arange(4.0), "w")
    lost = ndsharray.NdShArray("lost", np.arange(4.0), "w")
    lost_seg = lost.ndarray_mmap_name
    assert lost_seg is not None
    a.proc.kill()
    a.proc.wait(15)
    log_path = os.path.join(folder, "b.log")
    with open(log_path, "wb") as log:
        b = subprocess.Popen([sys.executable, "-c", VANISHING, lost_seg, "--endpoint", a.endpoint],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        def read_log() -> str:
            with open(log_path) as f:
                return f.read()
        wait_until(lambda: f"(pid {b.pid})" in read_log() or b.poll() is not None, what="daemon serving")
        assert b.poll() is None, read_log()
        assert f"segment {lost_seg!r} went away" in read_log()
        assert not os.path.exists(f"/dev/shm/{lost_seg}")
        assert admin.tag_info("kept").writer_pid == os.getpid()  # the others are adopted as ever
        kept.write(np.ones(4))
        with ndsharray.NdShArray("kept", r_w="r") as r:
            ok, arr = r.read()
            assert ok and arr.tolist() == [1.0] * 4
    finally:
        kept.close()
        lost.close()
        transport.close_all()
        b.terminate()
        assert b.wait(15) == 0, read_log()


def test_a_user_private_group_folder_is_not_looked_up_on_every_request(folder: str, monkeypatch: Any) -> None:
    # Review finding: with the endpoint folder writable by the user's own group (umask 002),
    # every request and every 50 ms watch poll called getpwuid/getgrgid (sssd, LDAP: the
    # network). The answer is kept for a while.
    from ndsharray import safefs
    if [m for m in grp.getgrgid(os.getegid()).gr_mem if m != pwd_name()]:
        pytest.skip("our primary group has other members: not a user private group")
    os.chown(folder, -1, os.getegid())
    os.chmod(folder, 0o770)
    calls: list[int] = []
    real = pwd.getpwuid

    def counted(uid: int) -> pwd.struct_passwd:
        calls.append(uid)
        return real(uid)

    monkeypatch.setattr("ndsharray.safefs.pwd.getpwuid", counted)
    monkeypatch.setattr(safefs, "_private_groups", {}, raising=False)  # (a fresh cache)
    for _ in range(50):
        safefs.check_endpoint_folder(folder, os.geteuid(), None)  # (as each request does)
    assert calls == [os.geteuid()]


def pwd_name() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


# Runs ndsharrayd pausing right after it takes the endpoint's lock, before it writes who it
# is: the window in which the lock file still names its killed predecessor, as "serving".
SLOW_LOCK = """
import fcntl, sys, time
pause = float(sys.argv.pop(1))
real_flock = fcntl.flock
def flock(fd, op):
    global pause
    real_flock(fd, op)
    if op & fcntl.LOCK_EX and pause:
        time.sleep(pause)
        pause = 0
fcntl.flock = flock
sys.argv[0] = "ndsharrayd"
from ndsharrayd.__main__ import main
main()
"""


def test_a_close_while_the_next_daemon_takes_the_lock_reaches_that_daemon(
        folder: str, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Review suspicion: between a restarting daemon's flock and its write, the lock file still
    # named the dead predecessor as serving; close() sent its release to it, saw the identity
    # change, called the daemon gone and dropped the release (retries=0).
    from conftest import Daemon, wait_until
    caplog.set_level(logging.DEBUG, logger="ndsharray")
    a = Daemon(folder).start()
    assert a.proc is not None
    monkeypatch.setenv(config.ENV_ENDPOINT, a.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    w = ndsharray.NdShArray("t", np.arange(4.0), "w")
    a.proc.kill()
    a.proc.wait(15)
    lock = config.lock_path(a.endpoint)
    log_path = os.path.join(folder, "b.log")
    with open(log_path, "wb") as log:
        b = subprocess.Popen([sys.executable, "-c", SLOW_LOCK, "1.0", "--endpoint", a.endpoint],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def read_log() -> str:
        with open(log_path) as f:
            return f.read()
    try:
        wait_until(lambda: daemonctl.daemon_running(a.endpoint) or b.poll() is not None, what="lock taken")
        with open(lock) as f:
            assert f.read().split()[0] == str(a.proc.pid), "the daemon wrote its pid already: no window"
        w.close()
        wait_until(lambda: f"(pid {b.pid})" in read_log() or b.poll() is not None, what="daemon serving")
        assert b.poll() is None, read_log()
        conn = transport.connection(a.endpoint)
        wait_until(lambda: not conn.has_posted, what="the registrar to send what close() posted")
        # The release, then this (and maybe the registrar's re-registration of w, had its round
        # come before the close): nothing dropped on the way.
        assert admin.daemon_stats(a.endpoint).requests >= 2
        assert not [r for r in caplog.records if "could not release" in r.getMessage()]
    finally:
        w.close()
        transport.close_all()
        b.terminate()
        assert b.wait(15) == 0, read_log()


@pytest.mark.parametrize("mode", [0o755, 0o1777])
def test_the_daemon_gets_a_dependency_folder_only_if_not_everyones(folder: str, monkeypatch: Any, mode: int) -> None:
    # A dependency the client found ahead of the standard library (PYTHONPATH) goes first on
    # the daemon's sys.path; unless its folder is world-writable (/tmp as sys.path[0]): a
    # click.py planted there must not become the daemon's.
    from ndsharray.daemonctl import command as daemonpath
    where = os.path.join(folder, "deps")
    os.makedirs(os.path.join(where, "fakedep"))
    with open(os.path.join(where, "fakedep", "__init__.py"), "w"):
        pass
    os.chmod(where, mode)
    monkeypatch.syspath_prepend(where)
    monkeypatch.delitem(sys.modules, "fakedep", raising=False)
    monkeypatch.setattr(daemonpath, "DEPENDENCIES", (*daemonpath.DEPENDENCIES, "fakedep"))
    front, back = daemonpath.folders()
    assert front[0] == os.path.dirname(os.path.dirname(os.path.abspath(ndsharray.__file__)))
    assert (where in front) == (mode == 0o755)
    assert where not in back
