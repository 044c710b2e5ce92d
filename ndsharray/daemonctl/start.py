"""Starting a daemon: the clients' start lock and the detached spawn.

Any client may start the endpoint's daemon (auto-start); concurrent starters serialise on
the start lock (``lockfile.start_lock_path``), so exactly one daemon is spawned, and the one
that got the lock second finds it running. ``ndsharrayd --detach`` returns once the daemon
serves, or with its reason for not starting.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

from .. import config, procs, safefs
from ..errors import DaemonUnavailableError
from .command import daemon_command
from .lockfile import daemon_running, parse, start_lock_path

_SPAWN_ATTEMPTS = 3  # a daemon killed while starting (the OOM killer) is tried again


def start_daemon(endpoint: str, timeout: float = 20.0) -> None:
    """Start a detached daemon for ``endpoint`` unless one runs; safe to race."""
    ipc = config.ipc_path(endpoint)
    group = _previous_group(endpoint)
    if ipc is not None:
        config.ensure_private_dir(os.path.dirname(ipc) or ".")  # a fresh endpoint's folder
        safefs.check_endpoint_folder(os.path.dirname(ipc) or ".", os.geteuid(), group)
    start_lock = start_lock_path(endpoint)
    fd = safefs.open_checked(start_lock, os.O_RDWR | os.O_CREAT)
    try:
        _lock_within(fd, start_lock, timeout)
        if daemon_running(endpoint):
            return
        shared = [] if group is None else ["--group", str(group)]
        cmd = daemon_command("--endpoint", endpoint, "--detach", *shared)
        for _attempt in range(_SPAWN_ATTEMPTS):
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=timeout, check=False, cwd="/")
            if proc.returncode != config.EXIT_DAEMON_KILLED_STARTING or daemon_running(endpoint):
                break
        if proc.returncode != 0 and not daemon_running(endpoint):
            # Nobody runs: the start lock is ours to remove (a daemon removes it when it
            # stops; one that never started must not leave it either).
            try:
                os.unlink(start_lock)
            except FileNotFoundError:
                pass
            raise DaemonUnavailableError(
                f"could not start ndsharrayd at {endpoint}: "
                f"{proc.stderr.decode(errors='replace').strip() or 'exit ' + str(proc.returncode)}"
            )
    finally:
        os.close(fd)


def _previous_group(endpoint: str) -> int | None:
    """The group a daemon of ours that died at ``endpoint`` shared with (its lock file is
    left, naming the group): a client restarting it shares with the same group, or the
    group's members would lose the daemon. None when there was none or it was private."""
    try:
        fd = safefs.open_checked(config.lock_path(endpoint), os.O_RDONLY, single_link=False)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        content = parse(os.pread(fd, 256, 0))
    finally:
        os.close(fd)
    if content.known:
        return content.group
    # Empty (killed before it wrote), or an older daemon's: its mode says (and a daemon
    # sets the mode before it writes).
    return st.st_gid if st.st_mode & 0o040 else None


def _lock_within(fd: int, path: str, timeout: float) -> None:
    """``flock(LOCK_EX)`` on the start lock, giving up after ``timeout``: a starter that
    hangs (or anyone holding the file) must not hang every client with it."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    holders = "; ".join(procs.describe(pid) for pid in safefs.flock_holders(os.fstat(fd))) or "an unknown process"
    raise DaemonUnavailableError(
        f"{path} stayed locked for {timeout:g} s, by {holders}: a client starting the daemon "
        f"is stuck; stop that process (or remove {path}) and try again")
