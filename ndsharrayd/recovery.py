"""A daemon's start after one that did not stop cleanly: rebuild the registry from the
segments that predecessor left in the shared-memory folder, adopt or keep what still has a
use, and remove the rest. Files of another user under our prefix are left alone."""

from __future__ import annotations

import logging
import os
import stat
import time

from ndsharray import safefs
from ndsharray.errors import CorruptSegmentError, UnsafeFileError
from ndsharray.procs import alive as _alive
from ndsharray.segment.files import segment_path, shm_dir
from ndsharray.segment.header import Header, parse_header

from .registry import Registry
from .segment_files import SegmentFiles

log = logging.getLogger("ndsharrayd")


class ForeignFile(Exception):
    """A file with our segment prefix that is not ours (another user's, or not a file)."""


def _read_header(name: str) -> tuple[Header, int]:
    fd = os.open(segment_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ForeignFile(f"{segment_path(name)} belongs to uid {st.st_uid} or is not a file")
        size = st.st_size
        head = os.pread(fd, min(size, 64 * 1024), 0)
    finally:
        os.close(fd)
    return parse_header(head, size, name), size


def recover(files: SegmentFiles, registry: Registry) -> tuple[int, int, int]:
    """Rebuild the registry from segments a previous daemon of this endpoint left.

    The newest generation of each tag that is not retired is kept: adopted for its
    writer if that still lives, else kept as an orphan for --orphan-ttl from now (its
    writer closed or died before the restart: a late reader still gets its last frame,
    as without the restart). The rest (retired, older generations, unreadable) are
    unlinked. Returns (adopted, orphans, removed).
    """
    newest: dict[str, tuple[int, str, Header, int]] = {}
    removed = 0
    for name in sorted(os.listdir(shm_dir())):
        if not name.startswith(files.prefix):
            continue
        try:
            h, size = _read_header(name)
        except ForeignFile as exc:
            # Segment names can be guessed: another user may plant one. Never adopt it
            # (its writer pid and data are theirs) and never fail on it. Its name is
            # anybody's text (a newline, shell code): logged escaped, never raw.
            log.warning("leaving alone a file that is not this daemon's: %r", str(exc))
            continue
        except (OSError, ValueError, CorruptSegmentError) as exc:
            log.warning("removing unreadable segment %r: %r", name, str(exc))
            files.unlink(name)
            removed += 1
            continue
        if h.retired:  # superseded, or its tag removed: nobody may use it any more
            files.retire_and_unlink(name)
            removed += 1
            continue
        prev = newest.get(h.tag)
        if prev is not None:
            loser = name if prev[0] > h.generation else prev[1]
            files.retire_and_unlink(loser)
            removed += 1
            if loser == prev[1]:
                newest[h.tag] = (h.generation, name, h, size)
        else:
            newest[h.tag] = (h.generation, name, h, size)
    adopted = orphans = 0
    now = time.monotonic()
    for gen, name, h, size in newest.values():
        # Opened before the registry hears of it: a segment that went away since its
        # header was read (removed by hand, say) must cost its tag, not the daemon's start.
        path = segment_path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("dropping tag %r: its segment %r went away or cannot be opened "
                        "during recovery: %r", h.tag, name, str(exc))
            files.unlink(name)  # (if it is still there: unusable, and nobody's any more)
            removed += 1
            continue
        try:
            safefs.check_fd(fd, path)  # still ours: the name may have been made anew
        except UnsafeFileError as exc:
            os.close(fd)
            log.warning("leaving alone a file that is not this daemon's: %r", str(exc))
            continue
        if h.writer_pid and _alive(h.writer_pid):
            adopted += 1
            registry.adopt(h.tag, segment=name, generation=gen, dtype=h.dtype_text, shape=h.shape,
                           nbytes=h.layout.nbytes, slots=h.layout.nslots, size=size,
                           writer_pid=h.writer_pid, writer_key=h.writer_key)
        else:
            orphans += 1
            registry.keep_orphan(h.tag, segment=name, generation=gen, dtype=h.dtype_text,
                                 shape=h.shape, nbytes=h.layout.nbytes, slots=h.layout.nslots,
                                 size=size, last_writer_pid=h.writer_pid or h.closed_pid,
                                 left="died" if h.writer_pid else "closed", now=now)
        files.adopt(name, fd, h.layout, h.tag)
    return adopted, orphans, removed
