"""The daemon's state: tag -> record. Pure: no zmq, no files, no clock, no pid checks.

Time (``now``, seconds) and liveness (``alive(pid)``) come in as arguments, so tests feed
plain values. The server turns the decisions made here into file operations.

Rules:
1. A tag has at most one writer, identified by (pid, token); a claim by anyone else while
   that writer lives is refused with TAG_BUSY naming the holder's pid.
2. A tag's segment belongs to the registry: a superseded generation is handed back to the
   caller to unlink as soon as the new one is committed.
3. A record with neither writer nor readers is *idle*; it is removed (and its segment
   returned for unlinking) once idle for ``orphan_ttl`` seconds, at once if it has no segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ndsharray.protocol import ErrorCode, RequestError
from ndsharray.replies import SegmentInfo
from ndsharray.segment.header import writer_key


@dataclass
class Writer:
    pid: int
    token: str | None  # None: adopted after a restart, until that handle re-registers
    key: bytes | None = None  # adopted: the key its segment header records (writer_key)

    def holds(self, token: str) -> bool:
        """True if ``token`` is this writer's. An adopted writer is known by its key only:
        a claim from another handle of the same process is another writer (one per tag)."""
        if self.token is not None:
            return self.token == token
        return self.key is not None and self.key == writer_key(token)


@dataclass
class TagRecord:
    tag: str
    generation: int = 0
    segment: str | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    nbytes: int = 0
    slots: int = 0
    size: int = 0  # bytes of the segment file
    writer: Writer | None = None
    last_writer_pid: int = 0
    writer_left: str | None = None  # how the last writer went: "closed" or "died"
    readers: dict[str, int] = field(default_factory=dict)  # token -> pid
    idle_since: float | None = None

    def segment_info(self) -> SegmentInfo | None:
        if self.segment is None:
            return None
        return SegmentInfo(self.segment, self.generation, self.dtype or "", tuple(self.shape or ()),
                           self.slots)


class Registry:
    def __init__(self, orphan_ttl: float = 60.0) -> None:
        self.tags: dict[str, TagRecord] = {}
        self.orphan_ttl = orphan_ttl

    # ---- writers ---------------------------------------------------------------------

    def claim(self, tag: str, pid: int, token: str, alive: Callable[[int], bool]) -> TagRecord:
        rec = self.tags.get(tag)
        if rec is None:
            rec = self.tags[tag] = TagRecord(tag)
        w = rec.writer
        if w is not None and not w.holds(token) and alive(w.pid):
            raise RequestError(
                    ErrorCode.TAG_BUSY,
                    f"tag {tag!r} already has a writer (pid {w.pid}); close it, or write "
                    "under another tag",
                )
        rec.writer = Writer(pid, token)
        rec.last_writer_pid = pid
        rec.writer_left = None
        rec.idle_since = None
        return rec

    def check_writer(self, tag: str, token: str) -> TagRecord:
        rec = self.tags.get(tag)
        if rec is None or rec.writer is None or not rec.writer.holds(token):
            holder = f"pid {rec.writer.pid}" if rec and rec.writer else "nobody"
            raise RequestError(
                ErrorCode.NOT_WRITER,
                f"this handle is not the writer of tag {tag!r} (the writer is {holder}); "
                "the tag was removed or taken over - open a new writer",
            )
        rec.writer.token = token  # (an adopted writer asking before it re-registered)
        return rec

    def commit_generation(
        self, tag: str, token: str, *, segment: str, dtype: str, shape: tuple[int, ...],
        nbytes: int, slots: int, size: int,
    ) -> str | None:
        """Make ``segment`` the tag's current one; returns the superseded segment, if any."""
        rec = self.check_writer(tag, token)
        old = rec.segment
        rec.generation += 1
        rec.segment, rec.dtype, rec.shape = segment, dtype, shape
        rec.nbytes, rec.slots, rec.size = nbytes, slots, size
        return old

    def release(self, tag: str, token: str, now: float) -> None:
        rec = self.tags.get(tag)
        if rec is not None and rec.writer is not None and rec.writer.holds(token):
            rec.writer = None
            rec.writer_left = "closed"
            self._maybe_idle(rec, now)

    def adopt(
        self, tag: str, *, segment: str, generation: int, dtype: str, shape: tuple[int, ...],
        nbytes: int, slots: int, size: int, writer_pid: int, writer_key: bytes,
    ) -> TagRecord:
        """Rebuild a record from a segment found after a restart; its writer is still alive
        and gets the tag back by a token that hashes to ``writer_key``."""
        rec = self.tags[tag] = TagRecord(
            tag, generation=generation, segment=segment, dtype=dtype, shape=shape,
            nbytes=nbytes, slots=slots, size=size, writer=Writer(writer_pid, None, writer_key),
            last_writer_pid=writer_pid,
        )
        return rec

    def keep_orphan(
        self, tag: str, *, segment: str, generation: int, dtype: str, shape: tuple[int, ...],
        nbytes: int, slots: int, size: int, last_writer_pid: int, left: str, now: float,
    ) -> TagRecord:
        """Rebuild the record of a tag whose writer closed or died (``left``) before the
        restart: its last frame stays readable for ``orphan_ttl`` from now, as it would have
        without the restart."""
        rec = self.tags[tag] = TagRecord(
            tag, generation=generation, segment=segment, dtype=dtype, shape=shape,
            nbytes=nbytes, slots=slots, size=size, last_writer_pid=last_writer_pid,
            writer_left=left, idle_since=now,
        )
        return rec

    # ---- readers ---------------------------------------------------------------------

    def attach(self, tag: str, pid: int, token: str) -> TagRecord:
        rec = self.tags.get(tag)
        if rec is None:
            rec = self.tags[tag] = TagRecord(tag)
        rec.readers[token] = pid
        rec.idle_since = None
        return rec

    def detach(self, tag: str, token: str, now: float) -> None:
        rec = self.tags.get(tag)
        if rec is not None and rec.readers.pop(token, None) is not None:
            self._maybe_idle(rec, now)

    # ---- liveness and expiry -----------------------------------------------------------

    def handle_count(self) -> int:
        """Open writer and reader handles over all tags."""
        return sum(len(r.readers) + (r.writer is not None) for r in self.tags.values())

    def pids(self) -> set[int]:
        out: set[int] = set()
        for rec in self.tags.values():
            if rec.writer is not None:
                out.add(rec.writer.pid)
            out.update(rec.readers.values())
        return out

    def drop_pid(self, pid: int, now: float) -> list[str]:
        """Forget every registration of a dead process; returns the tags it touched."""
        touched = []
        for rec in self.tags.values():
            hit = False
            if rec.writer is not None and rec.writer.pid == pid:
                rec.writer = None
                rec.writer_left = "died"
                hit = True
            for token in [t for t, p in rec.readers.items() if p == pid]:
                del rec.readers[token]
                hit = True
            if hit:
                touched.append(rec.tag)
                self._maybe_idle(rec, now)
        return touched

    def expire(self, now: float) -> list[str]:
        """Remove idle records whose time is up; returns the segments to unlink."""
        gone = []
        for tag in [t for t, r in self.tags.items() if self._expired(r, now)]:
            rec = self.tags.pop(tag)
            if rec.segment is not None:
                gone.append(rec.segment)
        return gone

    def remove(self, tag: str) -> TagRecord:
        rec = self.tags.pop(tag, None)
        if rec is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no tag {tag!r} (see ndsharray ls)")
        return rec

    def remove_all(self) -> list[str]:
        segs = [r.segment for r in self.tags.values() if r.segment is not None]
        self.tags.clear()
        return segs

    def _maybe_idle(self, rec: TagRecord, now: float) -> None:
        if rec.writer is None and not rec.readers and rec.idle_since is None:
            rec.idle_since = now

    def _expired(self, rec: TagRecord, now: float) -> bool:
        if rec.idle_since is None:
            return False
        return rec.segment is None or now - rec.idle_since >= self.orphan_ttl
