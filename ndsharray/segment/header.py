"""A segment's header: the sizes and offsets its contents give, creating a segment, and
validating a header against the file's real size (see the package docstring for the layout)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import framecopy
from ..dtypes import MAX_DESCR_LEN, text_to_dtype
from ..errors import CorruptSegmentError
from ..layout import (
    HEADER_STRUCT,
    PAGED_SLOT,
    READER_ROWS,
    ROW_SIZE,
    SLOT_ENTRY,
    SLOT_SKEW,
    SLOT_TABLE,
    VERSION,
)
from .files import segment_path

MAGIC = b"NDSHARR\0"
PAGE = mmap.PAGESIZE
MAX_SLOTS = 255
MAX_NDIM = 64
MAX_TAG_BYTES = 255
MAX_META_CAPACITY = 16 << 20  # metadata per slot: a bound, so a corrupt header cannot ask for more
DEFAULT_META_CAPACITY = 4096  # metadata a slot holds unless the writer asks for another capacity
RETIRED_SUPERSEDED = 1  # a newer generation replaced this segment: readers re-resolve
RETIRED_REMOVED = 2  # the tag was removed (ndsharray rm): its writer must stop
WAKE_ONLY = 0  # retire(mm, WAKE_ONLY): move the notify word and wake sleepers, flag nothing
KEY_BYTES = 16
NO_KEY = bytes(KEY_BYTES)

# Native formats for the fields that change while others read them: one aligned load/store.
U64 = struct.Struct("@Q")
U32 = struct.Struct("@I")


@dataclass(frozen=True)
class Layout:
    """Sizes and offsets of a segment, derived from what it holds. ``nbytes`` is the
    capacity of a slot for one frame's data; ``meta_capacity`` the metadata's beside it."""

    nbytes: int
    nslots: int
    ndim: int
    tag_len: int
    descr_len: int
    meta_capacity: int = 0
    skew: int = 0  # where each slot's data starts within its page: 0, or SLOT_SKEW (paged only)

    @functools.cached_property
    def paged(self) -> bool:
        """Slots of a page-multiple stride (the only ones that may be skewed)."""
        return self.nbytes + self.meta_capacity >= PAGED_SLOT

    @functools.cached_property
    def stride(self) -> int:
        size = self.nbytes + self.meta_capacity
        align = PAGE if self.paged else 64
        return max(64, -(-size // align) * align)

    @functools.cached_property
    def shape_offset(self) -> int:
        return SLOT_TABLE + SLOT_ENTRY * self.nslots

    @functools.cached_property
    def tag_offset(self) -> int:
        return self.shape_offset + 8 * self.ndim

    @functools.cached_property
    def descr_offset(self) -> int:
        return self.tag_offset + self.tag_len

    @functools.cached_property
    def rows_offset(self) -> int:
        return -(-(self.descr_offset + self.descr_len) // ROW_SIZE) * ROW_SIZE

    @functools.cached_property
    def header_size(self) -> int:
        end = self.rows_offset + ROW_SIZE * READER_ROWS
        return -(-end // PAGE) * PAGE

    @functools.cached_property
    def data_offset(self) -> int:
        """Where slot 0's data starts (see framecopy); 64-byte aligned always."""
        return self.header_size + self.skew

    @functools.cached_property
    def total_size(self) -> int:
        return self.data_offset + self.nslots * self.stride

    def slot_offset(self, i: int) -> int:
        """Where slot ``i``'s frame starts; its metadata follows at + ``nbytes``."""
        return self.data_offset + i * self.stride


def writer_key(token: str) -> bytes:
    """What a writer's segment header records of its token. A restarted daemon adopts a live
    writer's segment with it and grants the tag only to a claim whose token hashes to it: the
    writer's own handle, not any handle of the same process. A hash, not the token: anyone
    who can read the header (the group, under --group) must not learn a writer's token,
    which would let them release its tag or make generations in its name."""
    return hashlib.sha256(token.encode()).digest()[:KEY_BYTES]



def create_segment(
    name: str,
    *,
    tag: str,
    dtype_text: str,
    shape: tuple[int, ...],
    nslots: int,
    generation: int,
    writer_pid: int,
    writer_key: bytes = NO_KEY,
    mode: int = 0o600,
    capacity: int | None = None,
    meta_capacity: int = 0,
) -> Layout:
    """Create, reserve and initialise a segment file (the daemon's job).

    ``shape`` and ``dtype_text`` are the generation's frame (what a frame whose dtype or
    ndim a slot cannot describe must be); ``capacity`` (default: that frame's bytes) is
    what each slot holds for any frame, ``meta_capacity`` the metadata beside it.
    ``posix_fallocate`` reserves every page now, so a full ``/dev/shm`` is an ``OSError``
    (ENOSPC) here instead of a SIGBUS in some process's first write later.
    """
    layout = plan_layout(tag, dtype_text, shape, nslots, capacity, meta_capacity)
    nbytes = layout.nbytes
    tag_b = tag.encode()
    descr_b = dtype_text.encode("ascii")
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not narrow what was asked for
        os.posix_fallocate(fd, 0, layout.total_size)
        header = bytearray(layout.header_size)
        HEADER_STRUCT.pack_into(
            header, 0, MAGIC, VERSION, layout.header_size, nbytes, layout.stride, nslots,
            len(shape), generation, writer_pid, 0, 0, 0, 0, time.monotonic_ns(),
            len(tag_b), len(descr_b), 0, writer_key, meta_capacity, layout.data_offset, 0, b"",
        )
        struct.pack_into(f"<{len(shape)}Q", header, layout.shape_offset, *shape)
        header[layout.tag_offset : layout.tag_offset + len(tag_b)] = tag_b
        header[layout.descr_offset : layout.descr_offset + len(descr_b)] = descr_b
        os.pwrite(fd, header, 0)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return layout


def plan_layout(tag: str, dtype_text: str, shape: tuple[int, ...], nslots: int,
                capacity: int | None = None, meta_capacity: int = 0,
                skew_from: int | None = None) -> Layout:
    """The layout of a generation: ``capacity`` (default: the frame's bytes) never below
    the frame ``shape`` of ``dtype_text`` needs; slots of a capacity of at least
    ``skew_from`` (default: :func:`framecopy.skew_from`, glibc's non-temporal copy
    threshold) skewed. Raises ValueError for a bad dtype text or capacity."""
    dtype = text_to_dtype(dtype_text)
    need = math.prod(shape) * dtype.itemsize
    cap = need if capacity is None else capacity
    if cap < need:
        raise ValueError(f"capacity {cap} is smaller than the {need} bytes of {dtype} {shape}")
    if not 0 <= meta_capacity <= MAX_META_CAPACITY:
        raise ValueError(f"metadata capacity {meta_capacity} is not within 0..{MAX_META_CAPACITY}")
    lay = Layout(cap, nslots, len(shape), len(tag.encode()), len(dtype_text.encode("ascii")),
                 meta_capacity)
    if lay.paged and cap >= (framecopy.skew_from() if skew_from is None else skew_from):
        lay = dataclasses.replace(lay, skew=SLOT_SKEW)
    return lay


@dataclass(frozen=True)
class Header:
    """The validated, unchanging part of a segment header."""

    layout: Layout
    generation: int
    writer_pid: int
    created_ns: int
    tag: str
    dtype_text: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    # As read (they change; for a restarting daemon): the writer's key and the retired word.
    writer_key: bytes = NO_KEY
    retired: int = 0
    closed_pid: int = 0


def parse_header(buf: Any, size: int, name: str = "?") -> Header:
    """Validate a header against the segment's real ``size``; never trust a field.

    Raises :class:`CorruptSegmentError` naming the first field that is wrong.
    """

    def bad(field: str, why: str) -> CorruptSegmentError:
        return CorruptSegmentError(
            f"segment {name}: header field {field!r} {why}; the segment is corrupt or not "
            "ndsharray's - remove the tag (or restart the writer) to get a new one"
        )

    if size < 128:
        raise bad("size", f"is {size} bytes, smaller than the 128-byte header")
    (magic, version, header_size, nbytes, stride, nslots, ndim, generation, writer_pid,
     retired, _notify, _res, _pub, created, tag_len, descr_len, closed_pid, key, meta_cap,
     data_offset, *_rest) = HEADER_STRUCT.unpack_from(buf, 0)
    if magic != MAGIC:
        raise bad("magic", f"is {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CorruptSegmentError(
            f"segment {name} has layout version {version}, this ndsharray reads version "
            f"{VERSION}: a daemon of another ndsharray version made it; stop that daemon "
            "(ndsharray daemon stop) and restart writers and readers with one version"
        )
    if not 1 <= nslots <= MAX_SLOTS:
        raise bad("slot count", f"is {nslots}, expected 1..{MAX_SLOTS}")
    if ndim > MAX_NDIM:
        raise bad("ndim", f"is {ndim}, expected 0..{MAX_NDIM}")
    if tag_len > MAX_TAG_BYTES:
        raise bad("tag length", f"is {tag_len}, expected at most {MAX_TAG_BYTES}")
    if not 0 < descr_len <= MAX_DESCR_LEN:
        raise bad("dtype length", f"is {descr_len}, expected 1..{MAX_DESCR_LEN}")
    if meta_cap > MAX_META_CAPACITY:
        raise bad("metadata capacity", f"is {meta_cap}, expected at most {MAX_META_CAPACITY}")
    layout = Layout(nbytes, nslots, ndim, tag_len, descr_len, meta_cap)
    skew = data_offset - layout.header_size
    if skew not in ((0, SLOT_SKEW) if layout.paged else (0,)):
        raise bad("data offset", f"is {data_offset}, expected {layout.header_size} (header "
                  f"{header_size}){f' or {layout.header_size + SLOT_SKEW}' if layout.paged else ''} "
                  f"for {stride}-byte slots")
    layout = dataclasses.replace(layout, skew=skew)
    if header_size != layout.header_size:
        raise bad("header size", f"is {header_size}, the other fields give {layout.header_size}")
    if stride != layout.stride:
        raise bad("slot stride", f"is {stride}, expected {layout.stride} for {nbytes} bytes")
    if layout.total_size > size:
        raise bad("payload bytes", f"need {layout.total_size} bytes but the segment has {size}")
    shape = struct.unpack_from(f"<{ndim}Q", buf, layout.shape_offset)
    try:
        tag = bytes(buf[layout.tag_offset : layout.tag_offset + tag_len]).decode()
        dtype_text = bytes(buf[layout.descr_offset : layout.descr_offset + descr_len]).decode(
            "ascii"
        )
        dtype = text_to_dtype(dtype_text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad("tag or dtype", f"does not decode ({exc})") from None
    why = shape_problem(shape, dtype.itemsize)
    if why is not None:
        raise bad("shape", why)
    if math.prod(shape) * dtype.itemsize > nbytes:
        raise bad("shape", f"{shape} of {dtype} is more than the slots' {nbytes} bytes")
    return Header(layout, generation, writer_pid, created, tag, dtype_text, dtype,
                  tuple(int(n) for n in shape), key, retired, closed_pid)



# numpy indexes bytes with a signed 64-bit npy_intp (so does _hot.c).
MAX_ARRAY_BYTES = (1 << 63) - 1


def shape_problem(shape: tuple[int, ...], itemsize: int) -> str | None:
    """Why no numpy array can have ``shape`` (items of ``itemsize`` bytes), or None.

    A zero in the shape makes the product 0, which hides any size in the other dimensions
    (``(2**61, 2**61, 0)``): numpy multiplies the non-zero ones, times the item size, in a
    signed 64-bit integer and refuses the array when that overflows; so do we, before any
    C code multiplies them.
    """
    if any(n < 0 or n >= 1 << 62 for n in shape):
        return f"{shape} has a dimension no array can have"
    size = max(1, itemsize)
    for n in shape:
        if n:
            size *= n
    if size > MAX_ARRAY_BYTES:
        return (f"{shape} with {itemsize}-byte items spans more than {MAX_ARRAY_BYTES} bytes "
                "(its non-zero dimensions multiplied), more than numpy can index")
    return None
