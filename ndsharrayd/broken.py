"""Tags the daemon removed because their segment broke, and the note it keeps of why.

A process of the user (or of the group) can shrink a segment file at any time. The daemon
reads headers only with pread, so it lives; the tag goes, as ``ndsharray rm`` would remove
it, and a note of why stays for BROKEN_NOTE_S: its writer (asking for a generation), its
readers (looking it up) and ``ls`` are told why instead of finding it simply gone.
"""

from __future__ import annotations

import logging
import time

from ndsharray.segment.header import RETIRED_REMOVED

from .registry import Registry, TagRecord
from .segment_files import SegmentFiles

log = logging.getLogger("ndsharrayd")

BROKEN_NOTE_S = 600.0  # ls reports a tag removed as broken for this long
MAX_NOTES = 64  # the oldest notes go first beyond this


class BrokenTags:
    """The notes of the tags removed as broken, newest last."""

    def __init__(self, registry: Registry, files: SegmentFiles) -> None:
        self._registry = registry
        self._files = files
        self._notes: dict[str, tuple[str, float]] = {}  # tag -> (why it was removed, when)

    def drop(self, rec: TagRecord, why: str) -> None:
        """A process shrank the tag's segment (the daemon reads it only with pread, so it
        lives): remove the tag as ``ndsharray rm`` would, and keep a note of why for its
        writer, its readers and ``ls``."""
        msg = (f"tag {rec.tag!r} was removed by the daemon because its segment "
               f"{rec.segment} is broken: {why}")
        log.error("%s; its writer must open a new handle", msg)
        self._registry.remove(rec.tag)
        if rec.segment is not None:
            self._files.retire_and_unlink(rec.segment, RETIRED_REMOVED)
        self._notes.pop(rec.tag, None)
        self._notes[rec.tag] = (msg, time.monotonic())
        while len(self._notes) > MAX_NOTES:
            del self._notes[next(iter(self._notes))]

    def note(self, tag: str) -> str | None:
        """Why ``tag`` was removed as broken, or None."""
        got = self._notes.get(tag)
        return None if got is None else got[0]

    def forget(self, tag: str) -> None:
        """A new writer claimed ``tag``: the old story is over."""
        self._notes.pop(tag, None)

    def recent(self) -> list[str]:
        """Notes of the tags removed as broken in the last BROKEN_NOTE_S seconds."""
        now = time.monotonic()
        return [msg for msg, when in self._notes.values() if now - when < BROKEN_NOTE_S]
