"""Where a daemon lives: endpoint, runtime folder, lock file, segment name prefix.

The daemon and every client derive all of these from the endpoint string alone, so two
daemons on two endpoints never see each other's segments.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

ENV_ENDPOINT = "NDSHARRAY_ENDPOINT"
ENV_AUTOSTART = "NDSHARRAY_AUTOSTART"
# `ndsharrayd --detach` exits with this (EX_TEMPFAIL) when the daemon it forked was killed
# before it served: a starter tries again rather than fail its caller's request.
EXIT_DAEMON_KILLED_STARTING = 75


def runtime_dir() -> str:
    """This user's private folder (mode 0700): ``$XDG_RUNTIME_DIR/ndsharray`` or a temp one."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        path = os.path.join(base, "ndsharray")
        ensure_private_dir(path, tighten=True)
        return path
    return _temp_runtime_dir()


SPARE_RUNTIME_DIRS = 15


def _temp_runtime_dir() -> str:
    """``/tmp/ndsharray-<uid>``, or a spare ``ndsharray-<uid>.<k>`` when another user made
    that name first (in sticky /tmp we could not remove theirs).

    Every client of the user must find the same folder without talking to the others: the
    first existing folder of ours wins (so a squatter who later removes theirs splits
    nobody), and only when there is none, the first name that ``mkdir`` gives us (two
    clients racing for it: one makes it, the other finds it is ours).
    """
    tmp = tempfile.gettempdir()
    uid = os.getuid()
    names = [os.path.join(tmp, f"ndsharray-{uid}")]
    names += [os.path.join(tmp, f"ndsharray-{uid}.{k}") for k in range(1, SPARE_RUNTIME_DIRS + 1)]
    for path in names:
        if _own_folder(path):
            ensure_private_dir(path, tighten=True)
            return path
    for path in names:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not _own_folder(path):
                continue  # taken by someone else (or not a folder): the next name
        ensure_private_dir(path, tighten=True)
        return path
    raise PermissionError(
        f"{names[0]} and its {SPARE_RUNTIME_DIRS} spare names in {tmp} are all taken by other "
        f"users or are not folders; set XDG_RUNTIME_DIR to a folder of your own (systemd "
        f"makes /run/user/{uid}), or {ENV_ENDPOINT}=ipc://<a folder of yours>/ndsharrayd.sock")


def _own_folder(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def ensure_private_dir(path: str, tighten: bool = False) -> None:
    """Create ``path`` 0700 if missing; refuse one that another user owns.

    ``tighten``: also take others' access away from an existing one. Only for ndsharray's
    own runtime folder: the folder of an endpoint someone named may be shared on purpose
    (a sticky 1777 one, a home folder); what we put in it is 0600 by itself.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(
            f"{path} is not a folder owned by uid {os.getuid()}; remove it or set "
            f"{ENV_ENDPOINT} to an endpoint in a folder of your own"
        )
    if tighten and st.st_mode & 0o077:
        os.chmod(path, 0o700)


def default_endpoint() -> str:
    return os.environ.get(ENV_ENDPOINT) or f"ipc://{runtime_dir()}/ndsharrayd.sock"


def resolve_endpoint(endpoint: str | None) -> str:
    return endpoint or default_endpoint()


def _key(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()[:10]


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def lock_path(endpoint: str) -> str:
    """The file the endpoint's daemon holds an exclusive ``flock`` on while it runs."""
    path = ipc_path(endpoint)
    if path is not None:
        return path + ".lock"
    return os.path.join(runtime_dir(), f"ndsharrayd-{_key(endpoint)}.lock")


def log_path(endpoint: str) -> str:
    """Where an auto-started (detached) daemon writes its log."""
    path = ipc_path(endpoint)
    if path is not None:
        return path + ".log"
    return os.path.join(runtime_dir(), f"ndsharrayd-{_key(endpoint)}.log")


def segment_prefix(endpoint: str, uid: int | None = None) -> str:
    """Name prefix in /dev/shm of the segments owned by the daemon at ``endpoint``, run by
    ``uid`` (None: this user; a daemon shared with a group is its owner's)."""
    return f"nds-{os.getuid() if uid is None else uid}-{_key(endpoint)}-"


def pointer_dir(endpoint: str) -> str:
    """The daemon's folder of tag pointers: one symlink per tag whose target is the name of
    the tag's current segment, so a reader finds it with one ``readlink`` and no request."""
    path = ipc_path(endpoint)
    if path is not None:
        return path + ".tags"
    return os.path.join(runtime_dir(), f"ndsharrayd-{_key(endpoint)}.tags")


def pointer_name(tag: str) -> str:
    """File name of ``tag``'s pointer (tags may hold '/' and run to 200 characters)."""
    # blake2b: built into Python (sha256 comes from OpenSSL, whose first use in a process
    # costs ~70 us, most of a reader's pointer lookup).
    return hashlib.blake2b(tag.encode(), digest_size=16).hexdigest()


def autostart_enabled() -> bool:
    return os.environ.get(ENV_AUTOSTART, "1").strip().lower() not in ("0", "false", "no", "off")
