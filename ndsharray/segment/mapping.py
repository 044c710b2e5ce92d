"""An open segment file and its mapping, what readers and writers share: the checks
before mapping, the reader rows' OFD locks, retire, and closing inherited fds after fork."""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import struct
import threading
import weakref

from .. import _hot, process
from ..errors import CorruptSegmentError, SegmentGoneError
from ..layout import OFF_PUBLISH, OFF_RETIRED
from .files import check_segment_name, check_segment_owner, segment_path
from .header import U32, U64, parse_header

# struct flock for F_OFD_SETLK on Linux (x86-64 and aarch64): l_type, l_whence, l_start,
# l_len, l_pid (must be 0 for OFD locks), padded to 32 bytes.
FLOCK = struct.Struct("@hhqqi4x")
assert FLOCK.size == 32
F_OFD_SETLK: int = getattr(fcntl, "F_OFD_SETLK", 37)
LOCKS = 1 << 40  # start of the lock range, far past any segment's end


def mapping_address(mm: mmap.mmap) -> int:
    """Address of the first byte of a mapping (futex words are addressed, not indexed)."""
    return _hot.address(mm)


def retire(mm: mmap.mmap, why: int) -> None:
    """Flag a segment as replaced (1) or its tag removed (2), and wake blocked readers so
    they look for what replaced it. The writer and the daemon both do this; "removed" wins
    over "replaced", so a removed tag's writer stops whoever flagged the segment first.
    ``WAKE_ONLY`` (0) flags nothing: readers wake and look at the writer (it closed)."""
    _hot.retire(mm, why)


open_segments: weakref.WeakSet[MappedSegment] = weakref.WeakSet()


def _close_inherited() -> None:
    # The child shares the parent's open file descriptions, and so its OFD locks: keep
    # them and a dead parent's pins would outlive it. Closing our copy of each fd releases
    # nothing the parent holds. (Views inherited by the child are no longer pinned.)
    for m in list(open_segments):
        if m.fd >= 0:
            try:
                os.close(m.fd)
            except OSError:
                pass
            m.fd = -1
            m.closed = True


process.on_fork("segments", _close_inherited)


def _flock(kind: int, start: int, length: int = 1) -> bytes:
    return FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


@functools.cache
def row_lock(row: int, kind: int) -> bytes:
    return _flock(kind, LOCKS + row)


class MappedSegment:
    """An open segment file and its mapping; what readers and writers share."""

    fd: int = -1
    closed: bool = True

    def __init__(self, name: str, writable: bool) -> None:
        self.name = name
        # Held while self.fd is closed, and while reclaim_rows duplicates it: os.close and
        # os.dup both let other threads run, so without it a dup could take a number that
        # close() just freed and another thread's open() reused (review item 3).
        self._fd_lock = threading.RLock()  # (reentrant: a closing view's callback may run inside)
        # Names come from the daemon's replies and the tag pointers: never a path.
        owner = check_segment_name(name)
        try:
            # Readers open read-write too: they keep their pins in their row of the header.
            self.fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SegmentGoneError(f"segment {name} no longer exists") from None
        self.closed = False
        open_segments.add(self)
        # Mapped through a file description of its own: mmap keeps a duplicate of the fd it
        # maps, and through the fd that holds a reader's row lock the lock would live as
        # long as the mapping, in forked children too, so a dead reader's row would look
        # alive. self.fd is never mapped: closing it frees the row.
        try:
            mfd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW)
        except BaseException as exc:
            self._close_fd()
            if isinstance(exc, FileNotFoundError):  # unlinked between our two opens
                raise SegmentGoneError(f"segment {name} no longer exists") from None
            raise
        try:
            st = os.fstat(mfd)
            check_segment_owner(name, owner, st, os.fstat(self.fd))
            size = st.st_size
            if size < 128:
                raise CorruptSegmentError(f"segment {name}: {size} bytes, too small for a header")
            # A reader's arrays come from a read-only mapping: a stray write through one
            # faults in that reader instead of changing what every other process sees.
            self.mm = mmap.mmap(mfd, size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
            self.header = parse_header(self.mm, size, name)
            if not writable:  # a reader's row lives in the header, mapped read-write
                self._rw = mmap.mmap(mfd, self.header.layout.header_size)
        except BaseException:
            self._close_fd()
            raise
        finally:
            os.close(mfd)
        h = self.header
        self.nslots = h.layout.nslots
        self.layout = h.layout
        self.base_addr = mapping_address(self.mm)

    def publish_word(self) -> int:
        return int(U64.unpack_from(self.mm, OFF_PUBLISH)[0])

    def retired(self) -> int:
        """0, RETIRED_SUPERSEDED or RETIRED_REMOVED."""
        return int(U32.unpack_from(self.mm, OFF_RETIRED)[0])

    def _try_lock(self, req: bytes) -> bool:
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, req)
            return True
        except (BlockingIOError, PermissionError):
            return False
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return False  # closed by another thread (close() ends a wait)
            raise

    def _close_fd(self) -> None:
        with self._fd_lock:
            fd, self.fd = self.fd, -1  # (-1 first: nobody uses the number once it is closed)
            if fd >= 0:
                os.close(fd)  # drops every OFD lock this handle held: a reader's row
        self.closed = True
