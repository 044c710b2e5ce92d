"""How a reader finds its tag's current segment.

First through the tag's pointer: a symlink in the daemon's folder whose target is the name
of the tag's current segment (one ``readlink``, no request). Else by asking the daemon, at
most every 20 ms once a few lookups in a row found nothing: a polling loop on a tag nobody
writes must not hammer it. A tag that stays without data for ``MISSING_WARN_AFTER``
seconds is logged once, with the similar tags that have data (a misspelt tag waits
forever).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import time

from . import config, daemonctl
from .errors import CorruptSegmentError, NdShArrayError, SegmentGoneError, UnsafeFileError
from .protocol import LIST, LOOKUP
from .registrar import registrar
from .segment.files import check_segment_name
from .segment.reader import SegmentReader
from .transport import Connection

log = logging.getLogger("ndsharray")

# A reader that finds no writer for this long says so once (a misspelt tag waits forever).
MISSING_WARN_AFTER = 5.0

_NAME_TAIL = re.compile(r"[0-9a-f]{16}")  # what follows config.segment_prefix in a name


class SegmentFinder:
    """Finds the current segment of ``tag`` for a reader talking through ``conn``."""

    def __init__(self, tag: str, conn: Connection) -> None:
        self._tag = tag
        self._conn = conn
        self._endpoint = conn.endpoint
        self._pointer = os.path.join(config.pointer_dir(self._endpoint), config.pointer_name(tag))
        self._misses = 0  # lookups in a row that found no segment
        self._last_lookup = 0.0
        self._missing_since: float | None = None
        self._warned = False

    def by_pointer(self, current: SegmentReader | None) -> SegmentReader | None:
        """The live segment the tag's pointer names: ``current`` when it is that one, else
        a new reader of it (the caller switches to it); None without a live one."""
        try:
            name = os.readlink(self._pointer)
        except OSError:
            return None  # no segment yet, or a daemon without pointers
        if not self._names_a_segment(name):
            return None  # never open what a planted link names
        if current is not None and current.name == name:
            seg = None if current.retired() else current
        else:
            seg = _open_live(name, self._tag)
        if seg is not None:
            self._misses = 0
        return seg

    def by_daemon(self, current: SegmentReader | None) -> SegmentReader | None:
        """The tag's segment as the daemon knows it: ``current`` when it is that one, else a
        new reader of it (the caller switches to it); None when the daemon knows no live
        one, or was asked less than 20 ms ago after a few such answers."""
        now = time.monotonic()
        if self._misses >= 3 and now - self._last_lookup < 0.02:
            return None
        self._last_lookup = now
        registrar.check(self._endpoint)
        for _ in range(5):
            res = self._conn.request(LOOKUP, tag=self._tag)
            info = res.segment
            if res.removed and not self._warned:  # (the daemon's own rm)
                self._warned = True
                log.warning("reader of %r: %s", self._tag, res.removed)
            if info is None or (current is not None and current.retired() and info.name == current.name):
                self._misses += 1
                if info is None and current is None:
                    self._warn_if_missing(now)
                return None
            self._misses = 0
            if current is not None and info.name == current.name:
                return current
            try:
                return SegmentReader(info.name)
            except SegmentGoneError:
                continue  # replaced again while we looked: ask once more
        return current

    def no_daemon(self) -> bool:
        """True while no daemon holds the endpoint (stopped, or crashed and its successor
        not started yet): a blocking read's lookup then waits for one within its timeout
        instead of failing (a restart is routine; with NDSHARRAY_AUTOSTART=0 someone else
        starts the successor)."""
        return daemonctl.daemon_state(self._endpoint) is None

    def _names_a_segment(self, name: str) -> bool:
        """True for the name of a segment of this endpoint's daemon (of whichever user runs
        it: a daemon shared with a group names its segments with its owner's uid)."""
        try:
            uid = check_segment_name(name)
        except UnsafeFileError:
            return False
        prefix = config.segment_prefix(self._endpoint, uid)
        return name.startswith(prefix) and _NAME_TAIL.fullmatch(name, len(prefix)) is not None

    def _warn_if_missing(self, now: float) -> None:
        """Log once when no writer has published the tag for MISSING_WARN_AFTER seconds,
        naming the tags it may have been meant to be."""
        if self._missing_since is None:
            self._missing_since = now
        if self._warned or now - self._missing_since < MISSING_WARN_AFTER:
            return
        self._warned = True
        try:  # (the lookup just answered: no retries, so a read is never held long)
            tags = [t.tag for t in self._conn.request(LIST, retries=0).tags if t.segment]
        except NdShArrayError:
            tags = []
        near = difflib.get_close_matches(self._tag, tags, n=3)
        if near:
            hint = "if it is misspelt, similar tags with data: " + ", ".join(map(repr, near))
        else:
            hint = f"{len(tags)} other tag(s) have data (ndsharray ls lists them)"
        log.warning("reader of %r: no writer has published this tag at %s for %.0f s (still "
                    "waiting); %s", self._tag, self._endpoint, now - self._missing_since, hint)


def _open_live(name: str, tag: str) -> SegmentReader | None:
    """A reader of segment ``name`` if it is ``tag``'s and not retired; None otherwise."""
    try:
        seg = SegmentReader(name)
    except (SegmentGoneError, CorruptSegmentError, OSError):
        return None  # replaced or removed since the pointer was read
    if seg.header.tag != tag or seg.retired():
        seg.close()
        return None
    return seg
