"""Where a writer's segments and slots come from.

A new shape or dtype, a ring that must grow, or a daemon that forgot the writer's segment
needs a new segment: the daemon's next generation of the tag, or the one a previous
writer of the tag left (offered by the claim), which readers then keep reading. A write
whose every slot is pinned by readers first frees dead readers' pins and spins a moment,
then waits. Functions of what they are given: the :class:`~ndsharray.writer.Writer`
decides when, installs what they return and keeps the state.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from . import framemeta, ring
from .dtypes import dtype_to_text
from .errors import (
    SegmentGoneError,
    TagRemovedError,
    UsageError,
)
from .protocol import GENERATION
from .registrar import registrar
from .replies import SegmentInfo
from .segment.files import ENV_SHM_DIR, shm_dir
from .segment.writer import SegmentWriter
from .transport import Connection

log = logging.getLogger("ndsharray")


def slots_for(nbytes: int, slots: int | None, max_slots: int) -> int:
    """The slot count of a new generation: ``slots`` when given (or grown to), else by the
    array's size and the free shared memory (see :mod:`ndsharray.ring`)."""
    if slots is not None:
        return slots
    free = None
    if nbytes > ring.BIG_ARRAY_BYTES:  # (a statvfs only where it can change the answer)
        try:
            st = os.statvfs(shm_dir())
            free = st.f_bavail * st.f_frsize
        except OSError:
            pass
    return ring.initial_slots(nbytes, max_slots, free)


def open_generation(conn: Connection, *, tag: str, pid: int, token: str, offer: SegmentInfo | None,
                    dtype: np.dtype[Any], shape: tuple[int, ...], slots: int, meta_capacity: int,
                    capacity: int | None = None) -> SegmentWriter:
    """A segment for frames of ``dtype`` and ``shape`` (slots of ``capacity`` bytes when
    larger, metadata up to ``meta_capacity``): the ``offer`` of the claim when it suits
    and is still live, else a new generation from the daemon."""
    text = dtype_to_text(dtype)
    daemon = registrar.check(conn.endpoint)
    if offer and offer.dtype == text and offer.shape == shape:
        # A previous writer's segment: readers keep going.
        seg = framemeta.keep_offer(_take_over(offer.name, token), meta_capacity, capacity)
        if seg is not None:
            return seg
    args: dict[str, Any] = dict(tag=tag, pid=pid, token=token, dtype=text, shape=list(shape), slots=slots,
                                meta_capacity=meta_capacity)
    if capacity is not None and capacity > math.prod(shape) * dtype.itemsize:
        args["capacity"] = capacity
    try:
        res = conn.request(GENERATION, **args)
    except TagRemovedError:
        # The daemon died with our request and its successor got the retry before this
        # process re-registered: re-register, then ask once more.
        if registrar.check(conn.endpoint) == daemon:
            raise
        res = conn.request(GENERATION, **args)
    name = res.segment.name
    try:
        return SegmentWriter(name, token, variable=True)
    except SegmentGoneError:
        raise UsageError(
            f"the daemon at {conn.endpoint} just created segment {name}, but it is not in "
            f"{shm_dir()}: the daemon and this process must agree on {ENV_SHM_DIR} (restart "
            "the daemon with this process's environment, or set it alike here)"
        ) from None


def _take_over(name: str, token: str) -> SegmentWriter | None:
    """Open the segment a previous writer of the tag left (offered by our claim), or None
    when it went since the claim: removed (``ndsharray rm``: the generation request then
    says the tag was removed) or dropped by a daemon that restarted meanwhile (the request
    gets a fresh segment). Either way the daemon, not the file system, decides."""
    try:
        seg = SegmentWriter(name, token, variable=True)
    except SegmentGoneError:
        return None
    if seg.retired():  # replaced or removed between the claim and now
        seg.close()
        return None
    return seg
