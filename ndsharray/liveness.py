"""Is the tag's writer alive, gone for good (closed) or dead? Read from the segment header
and the writer's pid, without a daemon call.

The header holds the pid of the writer using the segment (0 once it closed it) and the pid
of the writer that last closed it. A writer pid whose process is gone is a writer that died
(SIGKILL, a crash): its successor, if one comes, writes its own pid there. Liveness is a
pidfd of that pid (opened once per writer, then one ``poll`` per question: a process that
exits makes it readable, a zombie too), or ``kill(pid, 0)`` where pidfds are missing.

Who wakes a reader asleep on the segment when the writer goes? A clean close adds 1 to the
notify word and wakes every sleeper (SegmentWriter._forget); a dead writer cannot, so the
daemon does it when its pidfd says the writer died (ndsharrayd: _process_died). A waiter
loads the notify word *before* it asks the writer's state and sleeps only while the word
still holds that value (``Reader.wait(..., expect)``), so a close or death between the
question and the sleep is never missed.

Which end of stream does a blocking call return at? One that is news to it: each call (or
each ``frames()`` generator, across its reads) notes the end its handle had reported when
it began (an :class:`EndSeen`) and returns at any other. So every thread of a handle that
was waiting when the writer went returns, not just the first to look, and a call begun
after the end was reported waits for the next writer instead of returning at once.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from typing import Literal

from . import _waitv
from .layout import OFF_CLOSED_PID, OFF_WRITER_PID
from .segment.reader import SegmentReader
from .segment.status import latest_write

WriterState = Literal["none", "alive", "closed", "died"]
ENDED = ("closed", "died")
EndKey = tuple[str, int, WriterState, int]  # (segment, writer pid, state, its last write)


class EndSeen:
    """The end of stream one blocking call (or one frames() generator) was told of last."""

    __slots__ = ("key",)

    def __init__(self, key: EndKey | None) -> None:
        self.key = key


class WriterWatch:
    """One reader handle's view of its writer: the state and pid, and which end of stream
    (a close or a death) the handle has already reported."""

    def __init__(self) -> None:
        self._pid = 0  # the pid self._poll watches
        self._fd = -1
        self._poll: select.poll | None = None
        self._reported: EndKey | None = None  # the end this handle reported last
        # Two threads of one handle may wait at once (one reads, one waits): a poll object
        # must not be used by both, nor the pidfd closed under one.
        self._lock = threading.Lock()

    def state(self, seg: SegmentReader | None) -> tuple[WriterState, int]:
        """(state, pid) of the writer of ``seg`` (the reader's segment; None: it has none)."""
        if seg is None:
            return "none", 0
        base = seg.base_addr
        pid = _waitv.load(base + OFF_WRITER_PID)  # (acquire: see frames(), until_closed)
        if pid:
            return ("alive" if self._alive(pid) else "died"), pid
        closed = _waitv.load(base + OFF_CLOSED_PID)
        return ("closed", closed) if closed else ("none", 0)

    def since_now(self) -> EndSeen:
        """For a blocking call starting now: the end this handle has reported already."""
        return EndSeen(self._reported)

    def new_end(self, seg: SegmentReader | None, seen: EndSeen) -> WriterState | None:
        """The writer's state if it closed or died and ``seen`` (a blocking call's) was not
        told of that end yet (now it is, and the handle has reported it); None otherwise.
        A blocking read returns at such an end; a call begun after it was reported waits
        for a new writer instead of returning again at once."""
        st, pid = self.state(seg)
        if st not in ENDED or seg is None:
            return None
        key: EndKey = (seg.name, pid, st, latest_write(seg.mm, seg.nslots)[0])
        if key == seen.key:
            return None
        seen.key = self._reported = key  # (one store each: no lock needed)
        return st

    def _alive(self, pid: int) -> bool:
        with self._lock:
            if pid != self._pid:
                self._watch(pid)
            if self._poll is not None:
                return not self._poll.poll(0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process (a shared tag): it exists
        return True

    def _watch(self, pid: int) -> None:
        self._forget()
        self._pid = pid
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = -1  # gone already: kill() below says so
            return
        except (OSError, AttributeError) as exc:  # no pidfd (old kernel, seccomp): kill(pid, 0)
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            return
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def close(self) -> None:
        """Let the pidfd go (the handle closes)."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        fd, self._fd, self._poll, self._pid = self._fd, -1, None, 0
        if fd >= 0:
            os.close(fd)
