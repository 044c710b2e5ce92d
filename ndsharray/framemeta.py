"""Per-frame metadata and slot capacity: what a writer decides beside the copy (layout 3).

Metadata (issue 14) travels in the slot beside its frame, so a reader gets exactly that
frame's: ``bytes`` as they are, a ``dict`` as compact JSON. Each tag has a metadata
capacity per slot, fixed when the writer opens (``meta_capacity=``, default
:data:`DEFAULT_META_CAPACITY`); more is a ``ValueError`` naming both sizes.

Capacity (issue 17): a frame that fits the slots is written in place whatever its shape;
one that does not makes a new generation with headroom (see ndsharray/segment/, "When a segment
grows" and "When a segment shrinks").
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ._hot import Pin
from .layout import MAX_SLOT_NDIM, META_BYTES, META_JSON
from .segment.header import DEFAULT_META_CAPACITY, MAX_META_CAPACITY
from .segment.slot_entry import slot_dtype_text
from .segment.writer import SegmentWriter

__all__ = ["DEFAULT_META_CAPACITY", "check_meta_capacity", "decode", "encode", "grown_capacity"]

GROWTH = 1.5  # a generation made for a frame that did not fit holds this much more

# Seconds a shrink check's window lasts at least (see ndsharray/segment, "When a segment shrinks");
# read once when a writer opens. The default suits every stream; a shorter one exists so
# that tests and benchmarks can watch a segment shrink without waiting 10 s.
ENV_SHRINK_WINDOW = "NDSHARRAY_SHRINK_WINDOW"
SHRINK_WINDOW = 10.0


def shrink_window_ns() -> int:
    """The shrink window a writer opening now uses, in ns (``NDSHARRAY_SHRINK_WINDOW``)."""
    text = os.environ.get(ENV_SHRINK_WINDOW, "").strip()
    try:
        seconds = float(text) if text else SHRINK_WINDOW
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and 0 <= seconds <= 10**9):
        raise ValueError(
            f"{ENV_SHRINK_WINDOW}={text!r:.40} is not a number of seconds >= 0; unset it for the "
            f"default of {SHRINK_WINDOW:g} s")
    return int(seconds * 1e9)


def check_meta_capacity(n: Any) -> int:
    """``meta_capacity=`` as given to a writer: bytes of metadata per frame."""
    if type(n) is not int or not 0 <= n <= MAX_META_CAPACITY:
        raise ValueError(f"meta_capacity must be an int of 0..{MAX_META_CAPACITY} bytes, not {n!r:.60}")
    return n


def encode(meta: Any, limit: int) -> tuple[bytes, int]:
    """(bytes, kind) of a frame's ``meta`` (a JSON-serialisable dict, or bytes); raises
    TypeError for anything else and ValueError when it is larger than ``limit``."""
    if isinstance(meta, (bytes, bytearray, memoryview)):
        data, kind = bytes(meta), META_BYTES
    elif isinstance(meta, dict):
        try:
            data = json.dumps(meta, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta must be JSON-serialisable: {exc}") from None
        kind = META_JSON
    else:
        raise TypeError(f"meta must be a dict (sent as JSON) or bytes, not {type(meta).__name__}")
    if len(data) > limit:
        raise ValueError(
            f"meta is {len(data)} bytes, more than the {limit} bytes per frame this writer has "
            "room for; open the writer with a larger meta_capacity= (or send less)")
    return data, kind


def decode(got: tuple[int, bytes] | None) -> dict[str, Any] | bytes | None:
    """What a reader's ``meta`` shows of a frame's (kind, bytes)."""
    if got is None:
        return None
    kind, data = got
    if kind == META_JSON:
        try:
            out = json.loads(data)
        except ValueError:
            return data  # not what a writer of ours makes: the bytes as they are
        return out if isinstance(out, dict) else data
    return data


MIN_GROWN = 4096  # a grown capacity is at least a page: small frames growing pay once


def grown_capacity(capacity: int, need: int) -> int:
    """The capacity of a generation made for a frame of ``need`` bytes that did not fit
    ``capacity`` (0: no generation yet, then exactly the frame: a fixed-shape stream
    wastes nothing): 1.5 times the larger of the two, so a growing stream pays a generation
    now and then, not on every frame."""
    if capacity <= 0:
        return need
    return max(MIN_GROWN, int(max(capacity, need) * GROWTH))


def describable(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bool:
    """Can a slot's entry describe frames of ``dtype`` and ``shape`` (layout 3's bounds)?"""
    return len(shape) <= MAX_SLOT_NDIM and slot_dtype_text(dtype) is not None


def fits(seg: SegmentWriter, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int, meta_capacity: int) -> bool:
    """Can a frame of ``dtype`` and ``shape`` go into ``seg`` as it is? It must fit the
    capacity (and the writer's metadata capacity be the segment's, and no shrink be due),
    and a slot must be able to describe it, else it must be the header's frame."""
    if nbytes > seg.layout.nbytes or seg.layout.meta_capacity != meta_capacity or seg.fast.shrink_to:
        return False
    return describable(dtype, shape) or (dtype == seg.header.dtype and shape == seg.header.shape)


def capacity_for(seg: SegmentWriter | None, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int) -> int:
    """The capacity of the generation a frame that does not fit ``seg`` makes: grown with
    headroom when it outgrew the slots, the shrink the C writer asked for, the same when
    only something else changed (a dtype a slot cannot describe gets exactly its size)."""
    if seg is None or not describable(dtype, shape):
        return nbytes
    if nbytes > seg.layout.nbytes:
        return grown_capacity(seg.layout.nbytes, nbytes)
    if seg.fast.shrink_to:
        return max(nbytes, seg.fast.shrink_to)
    return max(nbytes, seg.layout.nbytes)


def keep_offer(seg: SegmentWriter | None, meta_capacity: int, capacity: int | None) -> SegmentWriter | None:
    """A previous writer's segment offered to a new one, if its capacities suit it (else
    closed: the new writer asks for a generation of its own)."""
    if seg is not None and (seg.layout.meta_capacity != meta_capacity or seg.layout.nbytes < (capacity or 0)):
        seg.close()
        return None
    return seg


def last_frame(seg: SegmentWriter) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """(dtype, shape) of the frame a writer's segment holds last."""
    last = seg.fast.last_frame
    if last is None:
        return seg.header.dtype, seg.header.shape
    return np.dtype(last[0]), last[1]


def carried(arr: np.ndarray[Any, Any], field: str, otherwise: Any) -> Any:
    """``field`` (meta, shape_gen) of the frame a reader's view ``arr`` shows, from the Pin
    that is its base; ``otherwise`` for an array that is no view of a slot (a copy)."""
    base: Any = arr.base
    return getattr(base, field) if type(base) is Pin else otherwise


def mmap_name(segment: str, shape_gen: int) -> str:
    """``ndarray_mmap_name``: the segment, and ``:<n>`` after n changes of shape or dtype."""
    return f"{segment}:{shape_gen}" if shape_gen else segment
