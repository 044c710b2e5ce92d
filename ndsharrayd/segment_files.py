"""The daemon's side of the segment files: create one for a generation, point its tag at
it, read its header with pread (never from a mapping), retire, wake its readers, unlink."""

from __future__ import annotations

import logging
import os
import secrets

from ndsharray.procs import alive as _alive
from ndsharray.replies import ReaderStat
from ndsharray.segment.files import segment_path
from ndsharray.segment.header import NO_KEY, RETIRED_SUPERSEDED, WAKE_ONLY, Layout, create_segment
from ndsharray.segment.status import reader_rows

from . import safe_retire
from .pointers import Pointers
from .registry import TagRecord

log = logging.getLogger("ndsharrayd")


class SegmentFiles:
    """The daemon's side of the segments: create, read the header, point the tag at it,
    retire, unlink."""

    def __init__(self, prefix: str, mode: int, pointers: Pointers, gid: int = -1) -> None:
        self.prefix = prefix
        self.mode = mode
        self.gid = gid
        self.pointers = pointers
        # An open fd per segment, never a mapping: a process of the user (or of the group,
        # under --group) can shrink the file at any time, and a load from a mapping past the
        # new end is a SIGBUS that kills the daemon. Header fields are read with pread, which
        # at worst comes back short; see look() and retire_and_unlink().
        self.headers: dict[str, tuple[int, Layout]] = {}
        self.tags: dict[str, str] = {}  # segment name -> tag

    def create(self, rec: TagRecord, pid: int, dtype: str, shape: tuple[int, ...], slots: int,
               key: bytes = NO_KEY, capacity: int | None = None, meta_capacity: int = 0) -> str:
        name = self.prefix + secrets.token_hex(8)
        layout = create_segment(
            name, tag=rec.tag, dtype_text=dtype, shape=shape, nslots=slots,
            generation=rec.generation + 1, writer_pid=pid, writer_key=key, mode=self.mode,
            capacity=capacity, meta_capacity=meta_capacity,
        )
        try:
            fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if self.gid >= 0:
                    os.fchown(fd, -1, self.gid)
            except BaseException:
                os.close(fd)
                raise
            self.headers[name] = (fd, layout)
        except BaseException:
            self.unlink(name)  # (out of fds, say): nothing else knows this segment
            raise
        self.tags[name] = rec.tag
        return name

    def point(self, tag: str, name: str) -> None:
        """Make ``name`` the segment readers of ``tag`` find (before the old one retires)."""
        self.pointers.set(tag, name)

    def adopt(self, name: str, fd: int, layout: Layout, tag: str) -> None:
        """Take over a segment a predecessor made (recovery): its open fd, and the tag's
        pointer at it."""
        self.headers[name] = (fd, layout)
        self.tags[name] = tag
        self.point(tag, name)

    def retire_and_unlink(self, name: str, why: int = RETIRED_SUPERSEDED) -> None:
        """Flag a segment so readers re-resolve (and a writer of a removed tag stops), then
        unlink it; mapped views survive. A reader that found it through its pointer may
        not be registered yet: without the flag it would wait on it for good."""
        entry = self.headers.get(name)
        try:
            if entry is not None:
                safe_retire.retire(entry[0], why)
            else:  # a segment this daemon never opened (a predecessor's)
                fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    safe_retire.retire(fd, why)
                finally:
                    os.close(fd)
        except (OSError, ValueError) as exc:
            log.warning("could not flag segment %r retired: %s", name, exc)
        self.unlink(name)

    def wake(self, name: str) -> None:
        """Move the notify word of a segment and wake every reader asleep on it: its writer
        died, and only we noticed (a writer that closes does this itself)."""
        entry = self.headers.get(name)
        if entry is None:
            return
        try:
            safe_retire.retire(entry[0], WAKE_ONLY)
        except (OSError, ValueError) as exc:
            log.warning("could not wake the readers of segment %r: %s", name, exc)

    def unlink(self, name: str) -> None:
        tag = self.tags.pop(name, None)
        if tag is not None:
            self.pointers.drop(tag, name)
        entry = self.headers.pop(name, None)
        if entry is not None:
            os.close(entry[0])
        try:
            os.unlink(segment_path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:  # never stop serving (or stopping) over one file
            log.warning("could not remove segment %r: %s", name, exc)

    def look(self, name: str, rows: bool = True) -> tuple[bytes, Layout] | str | None:
        """The segment's header as bytes (one pread, never a load from a mapping), a
        sentence saying why the file is broken (shrunk below its layout by some process), or
        None for a segment this daemon has not opened. ``rows=False``: only the fixed
        fields and the slot table (what the once-a-second rate sample needs), not the 16 KiB
        of reader rows."""
        entry = self.headers.get(name)
        if entry is None:
            return None
        fd, layout = entry
        size = os.fstat(fd).st_size
        if size >= layout.total_size:
            want = layout.header_size if rows else layout.shape_offset
            head = os.pread(fd, want, 0)
            if len(head) == want:
                return head, layout
            size = len(head)  # (shrunk between the fstat and the pread)
        return (f"its file is {size} bytes, {layout.total_size} expected: another process "
                "truncated it")

    def latest_meta(self, name: str, layout: Layout, slot: int, length: int) -> str | None:
        """The metadata of the frame in ``slot`` as ``ls``/``info`` show it (read with
        pread, shortened to 1 KiB; it may be torn: a figure for display only)."""
        entry = self.headers.get(name)
        if entry is None or not 0 < length <= layout.meta_capacity:
            return None
        want = min(length, 1024)
        try:
            data = os.pread(entry[0], want, layout.slot_offset(slot) + layout.nbytes)
        except OSError:
            return None
        try:
            text = data.decode()
            if want == length:
                return text if text.startswith("{") else f"<{length} bytes> {data!r:.200}"
        except UnicodeDecodeError:
            pass
        return f"<{length} bytes> {data[:64]!r}"

    @staticmethod
    def reader_figures(got: tuple[bytes, Layout], writes: int, now: int) -> list[ReaderStat]:
        """Per live reader of a segment (its header from look()): its last frame's
        write-to-read time, how many writes it is behind now, and how long ago it read."""
        out = []
        for pid, read_ns, write_ns, count in reader_rows(got[0], got[1]):
            if not _alive(pid):
                continue  # a crashed reader's row, until the writer or a new reader clears it
            out.append(ReaderStat(
                pid=pid,
                latency_s=max(0, read_ns - write_ns) / 1e9 if read_ns else None,
                behind=max(0, writes - count) if read_ns else None,
                read_age_s=max(0, now - read_ns) / 1e9 if read_ns else None,
            ))
        return out
