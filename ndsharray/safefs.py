"""Opening files where other users may have put something first.

The endpoint's folder, /dev/shm and /tmp may be writable by others (a group under
``--group``, everyone for /dev/shm). A name there may be a symlink to one of our files, a
hard link to one, a FIFO that blocks ``open()``, or a file another uid made. Every open of
such a name goes through :func:`open_checked`: ``O_NOFOLLOW`` (no symlink), ``O_NONBLOCK``
(no FIFO wait), ``O_CLOEXEC``, then ``fstat`` on what was really opened: a regular file,
owned by someone we trust, with one link (a hard link to ``~/.bashrc`` has two). Checking
the opened fd, not the path, leaves no window between check and use.

These opens are never on the hot path: only when a handle opens a segment, and when the
daemon or a client looks at the endpoint's lock, log and start-lock files.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import time
from collections.abc import Collection

from .errors import UnsafeFileError

# O_NONBLOCK has no effect on a regular file; it only keeps open() from waiting on a FIFO.
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def user_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class _Anyone:
    def __contains__(self, uid: object) -> bool:
        return True


ANYONE: Collection[int] = _Anyone()  # type: ignore[assignment]  # owners= for "any owner, still no link"


def open_checked(path: str, flags: int, *, owners: Collection[int] | None = None,
                 mode: int = 0o600, single_link: bool = True) -> int:
    """Open ``path`` without following a link or blocking; return the fd of a regular file
    owned by one of ``owners`` (default: this process's euid).

    ``single_link``: refuse a file with other hard links (needed for what we write:
    a planted hard link to one of our files passes the owner check).
    Raises :class:`UnsafeFileError` naming the file, what is wrong and what to do;
    ``FileNotFoundError`` when it is missing and ``flags`` has no ``O_CREAT``.
    """
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(
                f"{path} is a symbolic link, which ndsharray never follows there: someone "
                "with write access to its folder may have planted it; remove it") from None
        raise
    try:
        check_fd(fd, path, owners=owners, single_link=single_link)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_fd(fd: int, path: str, *, owners: Collection[int] | None = None,
             single_link: bool = True) -> os.stat_result:
    """The checks of :func:`open_checked` on an already open fd; returns its ``fstat``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file (mode {st.st_mode:o}); remove it")
    allowed = (os.geteuid(),) if owners is None else owners
    if st.st_uid not in allowed:
        raise UnsafeFileError(
            f"{path} belongs to {user_name(st.st_uid)}, not to "
            f"{' or '.join(user_name(u) for u in allowed)}: another user made it; remove it "
            "(or ask its owner or root to) and use an endpoint in a folder only you can write")
    if single_link and st.st_nlink > 1:  # (0: unlinked since we opened it)
        raise UnsafeFileError(
            f"{path} has {st.st_nlink} hard links: it may be another of your files linked "
            "there by someone else; remove it")
    return st


def chmod_socket(path: str, mode: int, gid: int = -1) -> None:
    """Set the mode (and group) of the unix socket the caller just bound at ``path``.

    A socket cannot be opened, so it is reached through an ``O_PATH|O_NOFOLLOW`` fd,
    checked (a socket of ours, one link), and changed through ``/proc/self/fd``, which
    names that very inode: a name swapped for a link after ``bind`` changes nothing else.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink > 1:
            raise UnsafeFileError(f"{path} was replaced after the daemon bound it (now mode "
                                  f"{st.st_mode:o}, {user_name(st.st_uid)}); remove it and "
                                  "make the endpoint's folder writable only by trusted users")
        via = f"/proc/self/fd/{fd}"
        if gid >= 0:
            os.chown(via, -1, gid)
        os.chmod(via, mode)
    finally:
        os.close(fd)


def flock_holders(st: os.stat_result) -> list[int]:
    """Pids holding a ``flock`` on the file ``st`` describes, from ``/proc/locks`` (pids
    as this process's pid namespace sees them; empty where /proc is not mounted)."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; waiters have "->"
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
                    pids.append(int(parts[4]))
    except (OSError, ValueError):
        pass
    return pids


def my_groups() -> frozenset[int]:
    return frozenset([os.getegid(), *os.getgroups()])


def check_daemon_files(lock: str, lock_st: os.stat_result, socket_path: str | None) -> None:
    """Refuse to trust a daemon that is not ours (or shared with one of our groups), or
    whose endpoint folder users beyond it can write.

    ``lock_st``: the endpoint's lock file, opened with :func:`open_checked`. Its owner is
    the daemon's owner; under ``ndsharrayd --group`` it is group-readable (0640) with the
    shared group. Whoever can write the socket's folder can replace socket and lock with
    their own (a fake daemon naming their own files as segments): such a folder is
    refused unless only the owner, root, or the shared group can write it.
    """
    owner = lock_st.st_uid
    shared_gid = lock_st.st_gid if lock_st.st_mode & 0o040 else None
    if owner != os.geteuid() and (shared_gid is None or shared_gid not in my_groups()):
        raise UnsafeFileError(
            f"{lock} belongs to {user_name(owner)} and is not shared with a group of yours: "
            "the daemon at this endpoint is not yours to use; use your own endpoint (unset "
            "NDSHARRAY_ENDPOINT) or ask its owner to share it (ndsharrayd --group)")
    if socket_path is None:
        return  # (tcp: the lock lives in our private runtime folder)
    check_endpoint_folder(os.path.dirname(socket_path) or ".", owner, shared_gid)
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return  # a daemon takes its lock before it binds
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
        raise UnsafeFileError(
            f"{socket_path} is not a socket of {user_name(owner)}, who holds the endpoint's "
            f"lock (it is mode {st.st_mode:o}, {user_name(st.st_uid)}): someone replaced it; "
            "remove it and make the folder writable only by you")


def check_endpoint_folder(folder: str, owner: int, shared_gid: int | None) -> None:
    """Refuse an endpoint folder that users other than ``owner`` (the daemon's), root,
    and the group the daemon shares with (``shared_gid``, under --group) can write."""
    st = os.stat(folder)
    mode = stat.S_IMODE(st.st_mode)
    way_out = ("put the endpoint in a folder only you can write (the default: unset "
               "NDSHARRAY_ENDPOINT), or one only you and the daemon's --group can write")
    if mode & stat.S_IWOTH:
        raise UnsafeFileError(
            f"{folder} is writable by every user (mode {mode:o}): anyone could put their own "
            f"socket and lock file there and answer in the daemon's place; {way_out}")
    if st.st_uid not in (owner, os.geteuid(), 0):
        raise UnsafeFileError(f"{folder} belongs to {user_name(st.st_uid)}, who could replace "
                              f"the daemon's socket and lock file; {way_out}")
    if mode & stat.S_IWGRP and st.st_gid != shared_gid and not _private_group(st.st_gid, st.st_uid):
        raise UnsafeFileError(
            f"{folder} is writable by group {_group_name(st.st_gid)} (mode {mode:o}), which this "
            f"daemon does not share with (ndsharrayd --group): its members could replace the "
            f"daemon's socket and lock file; chmod g-w {folder}, or {way_out}")


# _private_group's answers: (gid, uid) -> (answer, until when). check_endpoint_folder runs
# on every request and every WATCH poll (20 times a second while a reply is late), and
# with sssd or LDAP each NSS lookup may go to the network. Group changes reach a running
# process within PRIVATE_GROUP_TTL seconds.
PRIVATE_GROUP_TTL = 10.0
_private_groups: dict[tuple[int, int], tuple[bool, float]] = {}


def _private_group(gid: int, uid: int) -> bool:
    """A user's own group (Debian's user private groups: umask 002 makes 0775 folders)."""
    now = time.monotonic()
    known = _private_groups.get((gid, uid))
    if known is not None and now < known[1]:
        return known[0]
    try:
        user = pwd.getpwuid(uid)
        answer = user.pw_gid == gid and set(grp.getgrgid(gid).gr_mem) <= {user.pw_name}
    except KeyError:
        answer = False
    _private_groups[(gid, uid)] = (answer, now + PRIVATE_GROUP_TTL)  # (a dict store: thread-safe)
    return answer


def _group_name(gid: int) -> str:
    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return str(gid)
