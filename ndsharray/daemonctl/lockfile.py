"""The endpoint's lock file: held by the daemon, read by clients; its content is written,
parsed and probed here and nowhere else.

The daemon holds an exclusive ``flock`` on ``config.lock_path(endpoint)`` for as long as it
runs: one daemon per endpoint, and a client knows one runs when a shared lock fails.

Line 1, written once the daemon holds the lock: ``<pid> <start ns> private|group=<gid>
pidns=<id>``. The whole line is the daemon's identity: it changes with every start, so a
client notices a restart. ``group=`` names the group a ``--group`` daemon shares with (a
client restarting a dead daemon shares with the same group); ``pidns=`` the daemon's pid
namespace (the inode of ``/proc/self/ns/pid``), since its pid means something only there.
Line 2, ``serving``, is added once the daemon has recovered and answers requests.

Files written before 2.0.0 may lack ``group=`` and ``pidns=``: those are then unknown.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from .. import config, safefs
from ..errors import DaemonUnavailableError, UnsafeFileError

SERVING = b"serving\n"
PRIVATE = "private"
_READ = 256  # bytes of the file read: its two lines are far shorter


def start_lock_path(endpoint: str) -> str:
    """The file clients starting a daemon serialise on (``flock``), beside the lock file:
    exactly one of them spawns a daemon. The daemon removes it when it stops."""
    return config.lock_path(endpoint) + ".start"


def identity_line(pid: int, start_ns: int, group: int | None, pidns: int | None) -> bytes:
    shared = PRIVATE if group is None else f"group={group}"
    ns = "" if pidns is None else f" pidns={pidns}"
    return f"{pid} {start_ns} {shared}{ns}\n".encode()


@dataclass(frozen=True)
class LockContent:
    ident: str  # the first line ("" while the daemon has not written it yet)
    pid: int  # 0 when the file names none
    serving: bool
    # The group the daemon shares with, None when private; ``known`` False when the file
    # does not say (empty, or written by an ndsharray before 2.0.0 recorded it).
    group: int | None
    known: bool
    pidns: int | None = None  # None when the file does not say


def parse(data: bytes) -> LockContent:
    text = data.decode(errors="replace")
    ident, _, rest = text.partition("\n")
    words = ident.split()
    try:
        pid = int(words[0]) if words else 0
    except ValueError:
        pid = 0
    group: int | None = None
    pidns: int | None = None
    known = False
    for word in words[2:]:
        if word == PRIVATE:
            known = True
        elif word.startswith("group=") and word[6:].isdigit():
            group, known = int(word[6:]), True
        elif word.startswith("pidns=") and word[6:].isdigit():
            pidns = int(word[6:])
    return LockContent(ident, pid, rest.startswith("serving"), group, known, pidns)


_own_pidns: tuple[int, int | None] = (0, None)  # (pid it was looked up by, namespace)


def own_pidns() -> int | None:
    """This process's pid namespace (the inode ``/proc/self/ns/pid`` names); None where
    /proc does not tell. Looked up once per process (a fork keeps it: only children of an
    ``unshare(CLONE_NEWPID)`` get a new one, and they are new processes)."""
    global _own_pidns
    pid = os.getpid()
    if _own_pidns[0] != pid:
        try:
            ns: int | None = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            ns = None
        _own_pidns = (pid, ns)
    return _own_pidns[1]


class DaemonState(NamedTuple):
    """What the lock file says of the daemon that holds it."""

    ident: str  # its identity (line 1); STARTING while it has not written it
    serving: bool  # it has recovered and answers requests
    pid: int  # as the file names it: a pid in the daemon's pid namespace
    # It runs in another pid namespace than this process (its pid is not ours to check or
    # signal, and it cannot check ours: it refuses our handles, see other_namespace()).
    elsewhere: bool = False


# daemon_state's identity of a daemon that holds the lock but has not written who it is.
STARTING = ""


def daemon_state(endpoint: str) -> DaemonState | None:
    """The state of the daemon holding the endpoint's lock, None if none does.

    A local check (an open, a few stat calls, a non-blocking ``flock``), no request.
    Raises :class:`UnsafeFileError` when the lock or its folder is not to be trusted, and
    :class:`DaemonUnavailableError` when the lock belongs to another user.
    """
    lock = config.lock_path(endpoint)
    try:
        fd = safefs.open_checked(lock, os.O_RDONLY, owners=safefs.ANYONE, single_link=False)
    except FileNotFoundError:
        return None
    except UnsafeFileError:
        raise
    except PermissionError:
        raise DaemonUnavailableError(
            f"permission denied on {lock}: the daemon at {endpoint} belongs to another user; "
            "use your own (unset NDSHARRAY_ENDPOINT) or ask its owner to share it with a group "
            "(ndsharrayd --group)"
        ) from None
    try:
        # Whose daemon this is, and who could have put it there: checked on every request
        # (a few stat calls), since the lock, socket and folder may change between two.
        safefs.check_daemon_files(lock, os.fstat(fd), config.ipc_path(endpoint))
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        content = parse(os.pread(fd, _READ, 0))
        ours = own_pidns()
        if content.pidns is not None and ours is not None and content.pidns != ours:
            # Its pid is not one we can look up: without this it read as "starting" for
            # good (kill(pid, 0) fails here), or worse, named an unrelated process of ours.
            return DaemonState(content.ident, content.serving, content.pid, elsewhere=True)
        if not _exists(content.pid):
            # Held, but by a daemon that has not written who it is yet: the file is empty or
            # still names its dead predecessor (maybe even "serving"). It is starting.
            return DaemonState(STARTING, False, 0)
        return DaemonState(content.ident, content.serving, content.pid)
    finally:
        os.close(fd)
    return None


def _exists(pid: int) -> bool:
    """One kill(pid, 0): False for a pid that no process has (a zombie still counts)."""
    if not 0 < pid < 1 << 22:
        return False  # (0 would mean our process group)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # (another user's: a --group daemon)
    return True


def daemon_running(endpoint: str) -> bool:
    """True when some process holds the endpoint's daemon lock."""
    return daemon_state(endpoint) is not None


def other_namespace(endpoint: str, state: DaemonState) -> DaemonUnavailableError:
    """The error for a daemon in another pid namespace (``state.elsewhere``)."""
    return DaemonUnavailableError(
        f"ndsharrayd at {endpoint} runs in another pid namespace (pid {state.pid} there), "
        "which cannot check this process's pid nor this process its: ndsharray knows its "
        "writers and readers by pid, so it cannot cross pid namespaces. Give each namespace "
        "its own endpoint (NDSHARRAY_ENDPOINT in a folder they do not share), or run this "
        "process in the daemon's namespace")


def crashed(endpoint: str) -> bool:
    """True when nobody holds the lock but its file is left: the daemon died (a daemon
    that stops removes it). A client restarts such a daemon, not one stopped on purpose."""
    return os.path.exists(config.lock_path(endpoint)) and not daemon_running(endpoint)


class AlreadyRunning(Exception):
    pass


class DaemonLock:
    """The daemon's side: an exclusive ``flock`` on the endpoint's lock file.

    ``group``: the --group the daemon shares with, recorded in the file's mode, group and
    content (a client restarting a dead daemon shares with the same group); None: private,
    and a file an earlier --group daemon left is made private again."""

    def __init__(self, endpoint: str, group: int | None = None) -> None:
        self.endpoint = endpoint
        self.path = path = config.lock_path(endpoint)
        while True:
            # Beside the socket, where a --group's members may write: a link planted there
            # (to ~/important.txt) must not be truncated, chowned or chmodded.
            fd = safefs.open_checked(path, os.O_RDWR | os.O_CREAT)
            # Clients probe liveness with a brief shared lock: only a lock held for half a
            # second means another daemon.
            deadline = time.monotonic() + 0.5
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                    holder = parse(os.pread(fd, _READ, 0)).pid or "?"
                    os.close(fd)
                    raise AlreadyRunning(f"a daemon (pid {holder}) already serves this endpoint") from None
            # The previous holder may have unlinked the file between our open and our lock.
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # Group members check the lock before each request (safefs.check_daemon_files), so
        # the mode goes before the content; a private daemon takes back a file a --group
        # predecessor left (0640 with its group), or it would be shared from then on.
        os.fchown(fd, -1, os.getegid() if group is None else group)
        os.fchmod(fd, 0o600 if group is None else 0o640)
        os.ftruncate(fd, 0)
        # Clients compare this line to notice a restarted daemon.
        os.pwrite(fd, identity_line(os.getpid(), time.time_ns(), group, own_pidns()), 0)
        self.fd = fd

    def mark_serving(self) -> None:
        """Add "serving" to the lock file: clients closing handles while a daemon starts
        queue their release instead of waiting for the answer (see daemon_state)."""
        os.pwrite(self.fd, SERVING, os.fstat(self.fd).st_size)

    def release(self) -> None:
        # (and the clients' start lock: a starter holding it goes on, and two starters
        # that both get one are settled by this lock, as always)
        for path in (self.path, start_lock_path(self.endpoint)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
