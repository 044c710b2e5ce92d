"""Where segments live, the names the daemon gives them, and who may own one.

A segment's name comes from a daemon's reply or a tag pointer, never from a user: it is
checked against the one pattern the daemon makes before it becomes a path, and an opened
file is checked against the owner its name claims before anything is mapped.
"""

from __future__ import annotations

import os
import re
import stat

from ..errors import SegmentGoneError, UnsafeFileError

ENV_SHM_DIR = "NDSHARRAY_SHM_DIR"


def shm_dir() -> str:
    """Folder of the segments: ``$NDSHARRAY_SHM_DIR`` (a tmpfs; daemon and clients must
    agree) or ``/dev/shm``."""
    return os.environ.get(ENV_SHM_DIR) or "/dev/shm"


_SEGMENT_NAME = re.compile(r"nds-([0-9]{1,10})-[0-9a-f]{10}-[0-9a-f]{16}")


def is_segment_name(name: str) -> bool:
    """True for a name the daemon makes: ``nds-<uid>-<endpoint key>-<16 hex>``."""
    return _SEGMENT_NAME.fullmatch(name) is not None


def check_segment_name(name: str) -> int:
    """The uid a segment name carries (its daemon's owner); raises on anything else."""
    m = _SEGMENT_NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise UnsafeFileError(
            f"{name!r} is not a segment name ndsharrayd makes (nds-<uid>-<key>-<16 hex digits>): "
            "whatever answered at the endpoint is not a daemon to trust; check who owns the "
            "endpoint's folder, socket and lock file")
    return int(m.group(1))


def check_segment_owner(name: str, owner: int, st: os.stat_result, st2: os.stat_result) -> None:
    """A segment must be what its name says: a regular file of the uid in its name, which
    is us, or which shares it with one of our groups (ndsharrayd --group); and both our
    fds must be the same file. Another user who re-creates an unlinked segment's name (or
    a fake daemon naming its own file) is refused before anything is mapped."""
    if (st.st_dev, st.st_ino) != (st2.st_dev, st2.st_ino):
        raise SegmentGoneError(f"segment {name} was replaced while it was opened")
    shared = st.st_gid in _my_groups() and st.st_mode & 0o060 == 0o060
    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or (owner != os.geteuid() and not shared):
        raise UnsafeFileError(
            f"{segment_path(name)} belongs to uid {st.st_uid} (group {st.st_gid}, mode "
            f"{st.st_mode:o}), not to uid {owner} named in it, or is not shared with you: "
            "another user made it; it was not used")


def _my_groups() -> frozenset[int]:
    return frozenset([os.getegid(), *os.getgroups()])


def segment_path(name: str) -> str:
    return os.path.join(shm_dir(), name)
