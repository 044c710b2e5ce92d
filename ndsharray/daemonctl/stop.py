"""Which process the daemon is, and stopping it: only a process verified to hold the
endpoint's lock is ever named or signalled (the file's content alone is anybody's word:
whoever can write its folder can replace it)."""

from __future__ import annotations

import os
import signal
import time

from .. import config, procs, safefs
from ..errors import DaemonUnavailableError, UnsafeFileError
from .lockfile import daemon_running, daemon_state, other_namespace, parse

LOCK_WRITE_GRACE = 0.5  # seconds a lock's holder may take to write its pid into it


def daemon_pid(endpoint: str) -> int | None:
    """Pid of the daemon serving ``endpoint``, or None when none runs (no daemon call).

    Raises :class:`DaemonUnavailableError` for a daemon in another pid namespace (its pid
    means nothing here), :class:`UnsafeFileError` when the lock names a process that does
    not hold it."""
    found = _lock_holder(endpoint)
    return None if found is None else found[0]


def _lock_holder(endpoint: str) -> tuple[int, os.stat_result] | None:
    """(pid, the lock file's stat) of the process that holds the lock and is the one its
    content names; None when nobody holds it. Raises as :func:`daemon_pid` does."""
    state = daemon_state(endpoint)
    if state is None:
        return None
    if state.elsewhere:
        raise other_namespace(endpoint, state)
    path = config.lock_path(endpoint)
    try:
        fd = safefs.open_checked(path, os.O_RDONLY, owners=safefs.ANYONE, single_link=False)
    except FileNotFoundError:
        return None
    # A starting daemon takes the lock, then writes its pid: until then the file is empty or
    # names its dead predecessor. Give it a moment before calling the lock a stranger's.
    deadline = time.monotonic() + LOCK_WRITE_GRACE
    try:
        st = os.fstat(fd)
        while True:
            pid = parse(os.pread(fd, 256, 0)).pid
            holders = safefs.flock_holders(st)
            if not holders or pid in holders or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        os.close(fd)
    if not holders:
        return None
    if pid not in holders:
        raise UnsafeFileError(
            f"{path} names pid {pid} but is locked by {', '.join(map(procs.describe, holders))}: "
            "not a lock this endpoint's daemon made; someone who can write its folder may have "
            "replaced it. Nothing was signalled; stop the holder yourself if it is yours")
    return pid, st


_GONE = -1
_NO_PIDFD = -2


def _pidfd_open(pid: int) -> int:
    """A pidfd for ``pid``; ``_GONE`` if it exited; ``_NO_PIDFD`` where the kernel has none
    (ENOSYS before Linux 5.3, EPERM under older Docker seccomp profiles)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return _GONE
    except (OSError, AttributeError):
        return _NO_PIDFD


def stop_daemon(endpoint: str, timeout: float = 10.0) -> int | None:
    """SIGTERM the endpoint's daemon and wait until it has removed its segments and socket.

    Returns the stopped daemon's pid, or None if none was running. Only a process verified
    to be that daemon is signalled: it holds the endpoint's lock file, runs as the file's
    owner, and is signalled through a pidfd taken before the last check (so a reused pid is
    never hit). A daemon in another pid namespace is not signalled (see daemon_pid).
    """
    found = _lock_holder(endpoint)
    if found is None:
        return None
    pid, st = found
    pidfd = _pidfd_open(pid)
    try:
        if pidfd != _GONE:
            try:
                owner = os.stat(f"/proc/{pid}").st_uid
            except FileNotFoundError:
                owner = -1  # exited meanwhile: wait for its lock below
            if owner >= 0:
                if owner != st.st_uid or pid not in safefs.flock_holders(st):
                    raise UnsafeFileError(
                        f"{config.lock_path(endpoint)} belongs to uid {st.st_uid} but its holder, "
                        f"pid {pid}, runs as uid {owner}: not this endpoint's daemon; nothing was signalled")
                if pidfd == _NO_PIDFD:
                    # No pidfd on this kernel: the pid was checked just above (lock holder,
                    # owner); only a reuse within these microseconds could be hit.
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                else:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    deadline = time.monotonic() + timeout
    # The lock goes first, then the process: callers (systemd's ExecStop, scripts that
    # restart it) expect the daemon gone when this returns.
    while daemon_running(endpoint) or procs.alive(pid):
        if time.monotonic() > deadline:
            raise DaemonUnavailableError(f"ndsharrayd (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.01)
    return pid
