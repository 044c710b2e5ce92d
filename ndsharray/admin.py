"""What the daemon knows, as typed objects: the library side of ``ndsharray ls``."""

from __future__ import annotations

import os
import signal
import time

from . import config, lockfile, procs, safefs, transport
from .errors import DaemonUnavailableError, TagNotFoundError, UnsafeFileError
from .protocol import LIST, REMOVE, STATS
from .replies import Removed, Stats
from .replies import TagInfo as TagInfo  # (the ls row: defined once, with the replies)


def list_tags(endpoint: str | None = None) -> list[TagInfo]:
    """Every tag the daemon at ``endpoint`` holds, sorted by tag; none when no daemon runs
    (looking never starts one)."""
    return list_tags_and_notes(endpoint)[0]


def list_tags_and_notes(endpoint: str | None = None) -> tuple[list[TagInfo], list[str]]:
    """:func:`list_tags`, and the daemon's notes on tags it removed by itself lately (a
    segment some process shrank: the daemon removes such a tag rather than crash)."""
    ep = config.resolve_endpoint(endpoint)
    try:
        res = transport.connection(ep).request(LIST, autostart=False)
    except DaemonUnavailableError:
        if transport.daemon_running(ep):
            raise  # one runs but does not answer: say so
        return [], []
    return list(res.tags), list(res.broken)


def daemon_stats(endpoint: str | None = None) -> Stats:
    """The daemon's counters: requests served, tags, bytes in use, uptime."""
    return transport.connection(endpoint).request(STATS)


def daemon_pid(endpoint: str | None = None) -> int | None:
    """Pid of the daemon serving ``endpoint``, or None when none runs (no daemon call).

    Only a pid that really holds the endpoint's lock: the file's content alone is anybody's
    word (whoever can write the folder can replace it)."""
    ep = config.resolve_endpoint(endpoint)
    if not transport.daemon_running(ep):
        return None
    found = _lock_holder(ep)
    return None if found is None else found[0]


def daemon_running(endpoint: str | None = None) -> bool:
    """True when a daemon holds the endpoint's lock (no daemon call; it may be starting)."""
    return transport.daemon_running(config.resolve_endpoint(endpoint))


def start_daemon(endpoint: str | None = None) -> int | None:
    """Start a detached daemon for ``endpoint`` unless one runs (safe to race); returns the
    pid of the one that serves it."""
    ep = config.resolve_endpoint(endpoint)
    transport.start_daemon(ep)
    return daemon_pid(ep)


LOCK_WRITE_GRACE = 0.5  # seconds a lock's holder may take to write its pid into it


def _lock_holder(ep: str) -> tuple[int, os.stat_result] | None:
    """(pid, the lock file's stat) of the process that holds ``ep``'s lock and is the one
    its content names; None when nobody holds it. Raises :class:`UnsafeFileError` when the
    content names a process that does not hold it."""
    path = config.lock_path(ep)
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
            pid = lockfile.parse(os.pread(fd, 256, 0)).pid
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


def stop_daemon(endpoint: str | None = None, timeout: float = 10.0) -> int | None:
    """SIGTERM the endpoint's daemon and wait until it has removed its segments and socket.

    Returns the stopped daemon's pid, or None if none was running. Clients keep working on
    what they have mapped. Only a process verified to be that daemon is signalled: it holds
    the endpoint's lock file, runs as the file's owner, and is signalled through a pidfd
    taken before the last check (so a reused pid is never hit).
    """
    ep = config.resolve_endpoint(endpoint)
    if not transport.daemon_running(ep):
        return None
    found = _lock_holder(ep)
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
                        f"{config.lock_path(ep)} belongs to uid {st.st_uid} but its holder, pid {pid}, "
                        f"runs as uid {owner}: not this endpoint's daemon; nothing was signalled")
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
    while transport.daemon_running(ep) or procs.alive(pid):
        if time.monotonic() > deadline:
            raise DaemonUnavailableError(f"ndsharrayd (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.01)
    transport.connection(ep).close()
    return pid


def tag_info(tag: str, endpoint: str | None = None) -> TagInfo:
    """One tag's :class:`TagInfo`; raises :class:`TagNotFoundError` if there is none."""
    for t in list_tags(endpoint):
        if t.tag == tag:
            return t
    raise TagNotFoundError("NOT_FOUND", f"no tag {tag!r} at {config.resolve_endpoint(endpoint)} (see ndsharray ls)")


def remove_tag(tag: str, endpoint: str | None = None) -> Removed:
    """Remove ``tag``: its segment is unlinked, its writer's next write raises
    :class:`TagRemovedError`, its readers keep the arrays they hold."""
    return transport.connection(endpoint).request(REMOVE, tag=tag, autostart=False)
