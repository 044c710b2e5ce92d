"""The detached daemon's log file, ``<socket>.log`` beside the socket: bounded in size,
and removed when the daemon stops cleanly (unless ``--keep-log``).

The file is opened by ``__main__._detach`` (never through a link, see ``ndsharray.safefs``)
and becomes the daemon's stderr, fd 2. Past ``max_bytes`` it moves to ``<log>.1`` (one
old file is kept, the previous ``.1`` goes) and a new file takes fd 2, so the log never
holds much more than twice ``max_bytes``. Logging is rare (requests that change tags,
deaths, errors): one ``fstat`` per record costs nothing that matters.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING, TextIO

from ndsharray import safefs

if TYPE_CHECKING:
    _Handler = logging.StreamHandler[TextIO]
else:
    _Handler = logging.StreamHandler

DEFAULT_MAX_BYTES = 1 << 20


def _same_file(path: str, fd: int) -> bool:
    """``path`` still names the regular file open at ``fd`` (not a replacement)."""
    try:
        st, mine = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class RotatingStderr(_Handler):
    """A stderr handler that moves the log file aside when it grows past ``max_bytes``."""

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        try:
            if os.fstat(2).st_size > self.max_bytes:
                self.rotate()
        except OSError:
            pass  # never lose the daemon over its log

    def rotate(self) -> None:
        self.flush()
        if _same_file(self.path, 2):
            try:
                os.replace(self.path, self.path + ".1")  # (replaces a link itself, never its target)
                fd = safefs.open_checked(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            except OSError:  # (a folder planted as .1; a file put there meanwhile)
                fd = -1
            if fd >= 0:
                os.dup2(fd, 2)
                os.close(fd)
                return
        os.ftruncate(2, 0)  # moved, replaced or not movable: bound the one we have in place


def remove(path: str) -> None:
    """A clean stop: remove the log (if fd 2 is still it) and the one kept before it."""
    try:
        if _same_file(path, 2):
            os.unlink(path)
        old = path + ".1"
        st = os.lstat(old)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
            os.unlink(old)
    except OSError:
        pass  # (no .1, or the folder went): nothing to remove
