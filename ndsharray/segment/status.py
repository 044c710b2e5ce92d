"""Figures read from a segment header copy, for ``ls``, ``doctor`` and liveness checks:
the latest write, frames dropped, what each reader read last. Values may be stale or torn
(nobody pins anything to read them): figures for display and decisions that tolerate that."""

from __future__ import annotations

import struct
from typing import Any

from ..layout import OFF_DROPPED, OFF_PUBLISH, OFF_ROWS_USED, READER_ROWS, ROW_SIZE, SLOT_ENTRY, SLOT_TABLE
from .header import U32, U64, Layout

_SEQ_STAMP = struct.Struct("@QQ")


def latest_slot(buf: Any, nslots: int) -> int | None:
    """The slot of the latest write, or None, from a header copy."""
    pub = int(U64.unpack_from(buf, OFF_PUBLISH)[0])
    return None if pub >> 8 == 0 or pub & 0xFF >= nslots else pub & 0xFF


def latest_write(buf: Any, nslots: int) -> tuple[int, int | None]:
    """(write count, monotonic ns of the latest write or None) from a segment header."""
    pub = int(U64.unpack_from(buf, OFF_PUBLISH)[0])
    count, i = pub >> 8, pub & 0xFF
    if count == 0 or i >= nslots:
        return count, None
    return count, int(_SEQ_STAMP.unpack_from(buf, SLOT_TABLE + SLOT_ENTRY * i)[1])


_ROW_HEAD = struct.Struct("@IIQQQ")  # sleepers, pid, read ns, write ns, write count


def dropped_frames(buf: Any) -> int:
    """Frames the writer dropped (on_full="drop"), from a segment header."""
    return int(U64.unpack_from(buf, OFF_DROPPED)[0])


def reader_rows(buf: Any, layout: Layout) -> list[tuple[int, int, int, int]]:
    """(pid, read ns, write ns, write count) of the last frame each claimed reader row read,
    read from a segment header (values may be torn or stale: figures for display only)."""
    used = min(READER_ROWS, int(U32.unpack_from(buf, OFF_ROWS_USED)[0]))
    out = []
    for r in range(used):
        _, pid, read_ns, write_ns, count = _ROW_HEAD.unpack_from(buf, layout.rows_offset + ROW_SIZE * r)
        if pid:
            out.append((pid, read_ns, write_ns, count))
    return out
