"""The ``ls`` rows: each tag as the registry knows it, with what its segment header shows
now (the latest frame's own dtype, shape and metadata, writes, readers and how far behind
they are). Header figures are read with pread and may be torn: figures for display only."""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

from ndsharray.dtypes import dtype_to_text, text_to_dtype
from ndsharray.replies import Listing, TagInfo
from ndsharray.segment.slot_entry import frame_in_slot
from ndsharray.segment.status import dropped_frames, latest_slot, latest_write

from .broken import BrokenTags
from .rates import WriteRates
from .registry import Registry
from .segment_files import SegmentFiles


class _Generation(NamedTuple):
    """A generation's frame (what frame_in_slot() falls back to)."""

    dtype: Any
    shape: tuple[int, ...]


def list_tags(registry: Registry, files: SegmentFiles, rates: WriteRates, broken: BrokenTags) -> Listing:
    """Every tag's row, by tag; a tag whose segment turns out broken is removed (see
    :mod:`ndsharrayd.broken`) and listed among the notes instead."""
    now = time.monotonic_ns()
    out = []
    for rec in sorted(registry.tags.values(), key=lambda r: r.tag):
        got = files.look(rec.segment) if rec.segment else None
        if isinstance(got, str):
            broken.drop(rec, got)
            continue
        writes, stamp = latest_write(got[0], got[1].nslots) if got else (0, None)
        stats = files.reader_figures(got, writes, now) if got else []
        lat = [s["latency_s"] for s in stats if s["latency_s"] is not None]
        behind = [s["behind"] for s in stats if s["behind"] is not None]
        dtype = text_to_dtype(rec.dtype) if rec.dtype else None
        shape, nbytes, descr, meta = rec.shape, rec.nbytes, rec.dtype, None
        if got and dtype is not None and rec.shape is not None and rec.segment:
            # The latest frame's own dtype and shape (layout 3: they vary within a generation).
            slot = latest_slot(got[0], got[1].nslots)
            try:
                if slot is not None:
                    dtype, shape, meta_len, _ = frame_in_slot(got[0], _Generation(dtype, rec.shape), slot)
                    nbytes = math.prod(shape) * dtype.itemsize
                    descr = dtype_to_text(dtype)
                    meta = files.latest_meta(rec.segment, got[1], slot, meta_len)
            except ValueError:
                pass  # torn or broken: the generation's
        out.append(TagInfo(
            tag=rec.tag,
            dtype=None if dtype is None else (dtype.name if dtype.names is None else str(dtype)),
            descr=descr,
            shape=shape,
            nbytes=nbytes,
            capacity=rec.nbytes,
            meta_capacity=got[1].meta_capacity if got else 0,
            meta=meta,
            writer_pid=rec.writer.pid if rec.writer else None,
            last_writer_pid=rec.last_writer_pid or None,
            writer_left=rec.writer_left,
            # A reader registers in the background (within 0.2 s) but claims its row of
            # the segment at once; one whose registration was refused (--max-clients)
            # reads all the same: the rows count every reader that has a segment.
            readers=max(len(rec.readers), len(stats)),
            reader_pids=tuple(sorted(set(rec.readers.values()) | {s["pid"] for s in stats})),
            writes=writes,
            dropped=dropped_frames(got[0]) if got else 0,
            last_write_age_s=None if stamp is None else max(0, now - stamp) / 1e9,
            generation=rec.generation,
            segment=rec.segment,
            slots=rec.slots,
            size=rec.size,
            rate_hz=rates.get(rec.tag),
            max_read_latency_s=max(lat) if lat else None,
            max_behind=max(behind) if behind else None,
            reader_stats=tuple(stats),
        ))
    return Listing(tags=tuple(out), broken=tuple(broken.recent()))
