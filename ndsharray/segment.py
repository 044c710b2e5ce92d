"""One shared-memory segment: the byte layout, its validation, and the slot protocol.

A segment holds one generation of one tag: a byte capacity per slot, a header, and N
slots each holding one complete frame and its metadata. The daemon creates and unlinks
segments; writers and readers only open them. Nothing here talks to the daemon.

Layout version 3 (little-endian; every field naturally aligned). The single source is the
table in ``ndsharray/layout.py``: the offsets below are computed from it, and _hot.c's
constants are compared with it at import::

    0       128   fixed header (layout.HEADER): magic, version, header size, slot
                  capacity, stride, N, the generation's ndim, generation, writer pid,
                  retired, notify word (futex: a writer adds 1 when it wakes
                  sleepers, retire too), reader rows in use, publish word
                  ((count << 8) | latest slot), creation time, tag and dtype lengths, pid
                  of the writer that closed it last, writer key, metadata capacity,
                  ``dropped`` (frames the writer dropped, on_full="drop": a u64 only
                  the writer stores, carried over to its next generation), reserved
    128     128*N slot table (layout.ENTRY), per slot: write count, publish time, and the
                  frame's descriptor: metadata length and kind, ndim (0..8, or 255: "the
                  header's dtype and shape"), shape generation, dtype text (numpy
                  ``dtype.str``, <= 16 bytes), shape (8 x u64)
    ...     8*ndim  the generation's shape (u64 each), then its tag, then its dtype description
    ...     256 reader rows of 64 bytes (layout.ROW, 64-aligned): u32 sleepers, u32 pid,
            the frame read last (read time, write time, write count; for ``ls``), 256-bit pin mask
    header size + i * stride: slot i: the frame's bytes (up to the capacity), then at
            + capacity its metadata (up to the metadata capacity)

Why the descriptor lives in the slot table and not in the header: a frame of another dtype
or shape that fits the capacity costs what a same-shape write costs (no daemon call, no new
mapping, no new generation), and a reader builds each view from the entry of the slot it
pinned, so it can never pair a frame with a neighbour's shape; views of earlier frames keep
theirs. The bounds (8 dimensions, a 16-byte dtype text) keep the entry one cache-friendly
128 bytes and the fast path one C call with cached dtype objects; a frame beyond them
(structured or sub-array dtypes, a long datetime unit, 9+ dimensions) takes the slow path:
a generation whose header describes it, as before layout 3.

When a segment grows: a frame larger than the capacity makes a new generation of
1.5 times the old capacity (at least the frame), so a growing stream pays a generation
now and then, not on every frame. The first generation is exactly the first frame's size:
a fixed-shape stream wastes nothing.

When a segment shrinks: when, over a window of at least 10 s and 256 writes, the largest
frame used less than a quarter of a capacity of at least 1 MiB, the next write makes a
generation of 1.5 times that largest frame. Why: the capacity is shared memory held in
every slot (a burst of 10000 x 5000 frames followed by hours of 720p would keep N large
slots); a quarter leaves room for the usual alternation of two sizes without churn, the
10 s window bounds the cost (one daemon round trip and a remap in readers, ~3 ms) to a
negligible share of any stream's time, and below 1 MiB the memory is not worth even that.
The check is one compare per write in C (see check_shrink in _hot.c).

Write / read protocol. Pins live in shared memory, one row per reader, and are set and
cleared with atomic instructions (``_hot.c``): a write or a read makes no syscall. A
reader claims its row at open by taking an OFD lock on byte LOCKS + row (past the end of
the file; locks need no bytes behind them) and keeps it while its fd is open, so a row
whose lock is free belongs to nobody, even if a dead reader left pins in it. (That fd is
never mapped: mmap keeps a duplicate of the fd it maps, which would keep the lock alive,
in forked children too. A writer's same-shape write, pins, the may-sleep count and
retire run in C; a writer holds a buffer export of its mapping while any slot is being
filled, so closing it in one thread never unmaps a copy running in another, and a
handle's close() waits for those copies before the tag goes back (see _hot.c, stop()).
Two threads writing through one handle never get the same slot.)

- writer: for a slot other than the latest (warmest first): store its write count 0,
  full fence, look at that slot's bit in every row in use; if none is set the slot is
  ours. Copy the array; store count and time (release), the publish word; full fence; if
  any row says it may sleep, add 1 to the notify word and FUTEX_WAKE (left alone
  otherwise: it shares a cache line with the retired word every read loads). If every slot is pinned, the
  writer probes the lock of each row that holds pins and clears the rows of dead readers.
- reader: load the publish word; if its count is the one last seen, there is nothing new.
  Else set the slot's bit in our row (atomic or), full fence, load the slot's write count:
  if it equals the published count the slot is ours until we clear the bit, otherwise
  clear it (unless an older view of ours holds it) and start over.
- blocking reader: add 1 to our row's sleepers, full fence, load the notify word, check
  for a new write, FUTEX_WAIT on the notify word; subtract 1 when it returns (a count, so
  two threads of one reader never clear each other's claim to a wake-up).
- retire (writer or daemon): raise the retired word, add 1 to the notify word (release
  stores: whoever sees the new notify word sees the flag), FUTEX_WAKE.

Why this is enough: both the pin/count pair and the sleepers/notify pair are Dekker-style:
each side stores, fences (sequentially consistent), then loads what the other stores, so
at least one sees the other. A writer that sees no pin has zeroed the count first, so a
reader that pins later rejects the slot; a reader that pinned first makes the writer skip
it. A count set to 0 before copying also catches a writer that died mid-copy: the slot
never got a valid count. The publish word is one aligned 8-byte atomic load and store.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import math
import mmap
import operator
import os
import re
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from . import _hot, prefault, process
from . import layout as _layout
from .dtypes import MAX_DESCR_LEN, check_shareable, text_to_dtype
from .errors import (
    CorruptSegmentError,
    HandleClosedError,
    ResourceLimitError,
    SegmentGoneError,
    UnsafeFileError,
)

if sys.byteorder != "little":  # pragma: no cover - every target platform is little-endian
    raise ImportError("ndsharray's segment layout assumes a little-endian machine")

ENV_SHM_DIR = "NDSHARRAY_SHM_DIR"


def shm_dir() -> str:
    """Folder of the segments: ``$NDSHARRAY_SHM_DIR`` (a tmpfs; daemon and clients must
    agree) or ``/dev/shm``."""
    return os.environ.get(ENV_SHM_DIR) or "/dev/shm"
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

# The layout table is the single source (layout.py); the C code was compiled with its own
# copy of every constant it uses, compared here (issue 12 item 6).
_FIXED = _layout.HEADER_STRUCT
MAX_SLOT_DTYPE = _layout.MAX_SLOT_DTYPE
MAX_SLOT_NDIM = _layout.MAX_SLOT_NDIM
META_BYTES = _layout.META_BYTES
META_JSON = _layout.META_JSON
META_NONE = _layout.META_NONE
NDIM_HEADER = _layout.NDIM_HEADER
OFF_CLOSED_PID = _layout.OFF_CLOSED_PID
OFF_DROPPED = _layout.OFF_DROPPED
OFF_META_CAPACITY = _layout.OFF_META_CAPACITY
OFF_NOTIFY = _layout.OFF_NOTIFY
OFF_PUBLISH = _layout.OFF_PUBLISH
OFF_RETIRED = _layout.OFF_RETIRED
OFF_ROWS_USED = _layout.OFF_ROWS_USED
OFF_WRITER_KEY = _layout.OFF_WRITER_KEY
OFF_WRITER_PID = _layout.OFF_WRITER_PID
READER_ROWS = _layout.READER_ROWS
ROW_PINS = _layout.ROW_PINS
ROW_SIZE = _layout.ROW_SIZE
SLOT_ENTRY = _layout.SLOT_ENTRY
SLOT_TABLE = _layout.SLOT_TABLE
VERSION = _layout.VERSION
_layout.check_c_offsets(_hot.OFFSETS)
# Native formats for the fields that change while others read them: one aligned load/store.
_U64 = struct.Struct("@Q")
_U32 = struct.Struct("@I")
_SEQ_STAMP = struct.Struct("@QQ")

# struct flock for F_OFD_SETLK on Linux (x86-64 and aarch64): l_type, l_whence, l_start,
# l_len, l_pid (must be 0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("@hhqqi4x")
assert _FLOCK.size == 32
F_OFD_SETLK: int = getattr(fcntl, "F_OFD_SETLK", 37)
LOCKS = 1 << 40  # start of the lock range, far past any segment's end


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

    @functools.cached_property
    def stride(self) -> int:
        size = self.nbytes + self.meta_capacity
        align = PAGE if size >= 65536 else 64
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
    def total_size(self) -> int:
        return self.header_size + self.nslots * self.stride

    def slot_offset(self, i: int) -> int:
        return self.header_size + i * self.stride


def writer_key(token: str) -> bytes:
    """What a writer's segment header records of its token. A restarted daemon adopts a live
    writer's segment with it and grants the tag only to a claim whose token hashes to it: the
    writer's own handle, not any handle of the same process. A hash, not the token: anyone
    who can read the header (the group, under --group) must not learn a writer's token,
    which would let them release its tag or make generations in its name."""
    return hashlib.sha256(token.encode()).digest()[:KEY_BYTES]


_SEGMENT_NAME = re.compile(r"nds-([0-9]{1,10})-[0-9a-f]{10}-[0-9a-f]{16}")


def is_segment_name(name: str) -> bool:
    """True for a name the daemon makes: ``nds-<uid>-<endpoint key>-<16 hex>``."""
    return _SEGMENT_NAME.fullmatch(name) is not None


def check_segment_name(name: str) -> int:
    """The uid a segment name carries (its daemon's owner); raises on anything else."""
    m = _SEGMENT_NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise UnsafeFileError(
            f"{name!r} is not a segment name ndsharrayd makes (nds-<uid>-<key>-<16 hex digits>): "
            "whatever answered at the endpoint is not a daemon to trust; check who owns the "
            "endpoint's folder, socket and lock file")
    return int(m.group(1))


def check_segment_owner(name: str, owner: int, st: os.stat_result, st2: os.stat_result) -> None:
    """A segment must be what its name says: a regular file of the uid in its name, which
    is us, or which shares it with one of our groups (ndsharrayd --group); and both our
    fds must be the same file. Another user who re-creates an unlinked segment's name (or
    a fake daemon naming its own file) is refused before anything is mapped."""
    if (st.st_dev, st.st_ino) != (st2.st_dev, st2.st_ino):
        raise SegmentGoneError(f"segment {name} was replaced while it was opened")
    shared = st.st_gid in _my_groups() and st.st_mode & 0o060 == 0o060
    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or (owner != os.geteuid() and not shared):
        raise UnsafeFileError(
            f"{segment_path(name)} belongs to uid {st.st_uid} (group {st.st_gid}, mode "
            f"{st.st_mode:o}), not to uid {owner} named in it, or is not shared with you: "
            "another user made it; it was not used")


def _my_groups() -> frozenset[int]:
    return frozenset([os.getegid(), *os.getgroups()])


def segment_path(name: str) -> str:
    return os.path.join(shm_dir(), name)


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
        _FIXED.pack_into(
            header, 0, MAGIC, VERSION, layout.header_size, nbytes, layout.stride, nslots,
            len(shape), generation, writer_pid, 0, 0, 0, 0, time.monotonic_ns(),
            len(tag_b), len(descr_b), 0, writer_key, meta_capacity, 0, 0, b"",
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
                capacity: int | None = None, meta_capacity: int = 0) -> Layout:
    """The layout of a generation: ``capacity`` (default: the frame's bytes) never below
    the frame ``shape`` of ``dtype_text`` needs. Raises ValueError for a bad dtype text or
    capacity."""
    dtype = text_to_dtype(dtype_text)
    need = math.prod(shape) * dtype.itemsize
    cap = need if capacity is None else capacity
    if cap < need:
        raise ValueError(f"capacity {cap} is smaller than the {need} bytes of {dtype} {shape}")
    if not 0 <= meta_capacity <= MAX_META_CAPACITY:
        raise ValueError(f"metadata capacity {meta_capacity} is not within 0..{MAX_META_CAPACITY}")
    return Layout(cap, nslots, len(shape), len(tag.encode()), len(dtype_text.encode("ascii")),
                  meta_capacity)


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
     *_rest) = _FIXED.unpack_from(buf, 0)
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


_SLOT_DTYPE_TEXT = re.compile(r"[<>|=][a-zA-Z][0-9]{0,6}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?")


def slot_dtype_text(dtype: np.dtype[Any]) -> str | None:
    """The text a slot's entry names ``dtype`` by (numpy's ``dtype.str``), or None when an
    entry cannot describe it: structured and sub-array dtypes, a text over MAX_SLOT_DTYPE
    bytes, anything not shareable. Such frames take the slow path (a generation of their
    own dtype and shape, described by the header). Called by _hot.c once per dtype."""
    if not isinstance(dtype, np.dtype) or dtype.names is not None or dtype.subdtype is not None:
        return None
    try:
        check_shareable(dtype)
    except TypeError:
        return None
    text = dtype.str
    if len(text) > MAX_SLOT_DTYPE or _SLOT_DTYPE_TEXT.fullmatch(text) is None or np.dtype(text) != dtype:
        return None
    return text


def slot_dtype(text: str) -> np.dtype[Any]:
    """The dtype a slot's text names: only what :func:`slot_dtype_text` makes (the text
    comes from shared memory: anything else raises ValueError). Called by _hot.c once per
    text."""
    if _SLOT_DTYPE_TEXT.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a dtype text a writer makes")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ValueError(f"{text!r} is not a dtype") from None
    if slot_dtype_text(dtype) != text:
        raise ValueError(f"{text!r} is not a dtype text a writer makes")
    return dtype


_hot.set_dtype_hooks(slot_dtype, slot_dtype_text)

_ENTRY_FRAME = struct.Struct("<IBB2xI4x16s8Q")  # meta_len, meta kind, ndim, shape_gen, dtype, shape


def frame_in_slot(buf: Any, header: Any, slot: int) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """(dtype, shape, metadata bytes, shape generation) of the frame a slot's entry
    describes, read from a header copy (``ls``, tools: the values may be stale or torn;
    raises ValueError for an entry that describes nothing). ``header``: anything with the
    generation's ``dtype`` and ``shape``."""
    meta_len, _kind, ndim, gen, text, *dims = _ENTRY_FRAME.unpack_from(
        buf, SLOT_TABLE + SLOT_ENTRY * slot + _layout.ENTRY_OFF["meta_len"])
    if ndim == NDIM_HEADER:
        return header.dtype, header.shape, meta_len, gen
    if ndim > MAX_SLOT_NDIM:
        raise ValueError(f"slot {slot}: {ndim} dimensions")
    dtype = slot_dtype(text.rstrip(b"\0").decode("ascii", "replace"))
    return dtype, tuple(int(n) for n in dims[:ndim]), meta_len, gen


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


def mapping_address(mm: mmap.mmap) -> int:
    """Address of the first byte of a mapping (futex words are addressed, not indexed)."""
    return _hot.address(mm)


def latest_slot(buf: Any, nslots: int) -> int | None:
    """The slot of the latest write, or None, from a header copy."""
    pub = int(_U64.unpack_from(buf, OFF_PUBLISH)[0])
    return None if pub >> 8 == 0 or pub & 0xFF >= nslots else pub & 0xFF


def latest_write(buf: Any, nslots: int) -> tuple[int, int | None]:
    """(write count, monotonic ns of the latest write or None) from a segment header."""
    pub = int(_U64.unpack_from(buf, OFF_PUBLISH)[0])
    count, i = pub >> 8, pub & 0xFF
    if count == 0 or i >= nslots:
        return count, None
    return count, int(_SEQ_STAMP.unpack_from(buf, SLOT_TABLE + SLOT_ENTRY * i)[1])


_ROW_HEAD = struct.Struct("@IIQQQ")  # sleepers, pid, read ns, write ns, write count


def dropped_frames(buf: Any) -> int:
    """Frames the writer dropped (on_full="drop"), from a segment header."""
    return int(_U64.unpack_from(buf, OFF_DROPPED)[0])


def reader_rows(buf: Any, layout: Layout) -> list[tuple[int, int, int, int]]:
    """(pid, read ns, write ns, write count) of the last frame each claimed reader row read,
    read from a segment header (values may be torn or stale: figures for display only)."""
    used = min(READER_ROWS, int(_U32.unpack_from(buf, OFF_ROWS_USED)[0]))
    out = []
    for r in range(used):
        _, pid, read_ns, write_ns, count = _ROW_HEAD.unpack_from(buf, layout.rows_offset + ROW_SIZE * r)
        if pid:
            out.append((pid, read_ns, write_ns, count))
    return out


def retire(mm: mmap.mmap, why: int) -> None:
    """Flag a segment as replaced (1) or its tag removed (2), and wake blocked readers so
    they look for what replaced it. The writer and the daemon both do this; "removed" wins
    over "replaced", so a removed tag's writer stops whoever flagged the segment first.
    ``WAKE_ONLY`` (0) flags nothing: readers wake and look at the writer (it closed)."""
    _hot.retire(mm, why)


_open_segments: weakref.WeakSet[_Mapped] = weakref.WeakSet()


def _close_inherited() -> None:
    # The child shares the parent's open file descriptions, and so its OFD locks: keep
    # them and a dead parent's pins would outlive it. Closing our copy of each fd releases
    # nothing the parent holds. (Views inherited by the child are no longer pinned.)
    for m in list(_open_segments):
        if m.fd >= 0:
            try:
                os.close(m.fd)
            except OSError:
                pass
            m.fd = -1
            m.closed = True


process.on_fork("segments", _close_inherited)


def _flock(kind: int, start: int, length: int = 1) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


@functools.cache
def _row_lock(row: int, kind: int) -> bytes:
    return _flock(kind, LOCKS + row)


class _Mapped:
    """An open segment file and its mapping; what readers and writers share."""

    fd: int = -1
    closed: bool = True

    def __init__(self, name: str, writable: bool) -> None:
        self.name = name
        # Held while self.fd is closed, and while reclaim_rows duplicates it: os.close and
        # os.dup both let other threads run, so without it a dup could take a number that
        # close() just freed and another thread's open() reused (review item 3).
        self._fd_lock = threading.RLock()  # (reentrant: a closing view's callback may run inside)
        # Names come from the daemon's replies and the tag pointers: never a path.
        owner = check_segment_name(name)
        try:
            # Readers open read-write too: they keep their pins in their row of the header.
            self.fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SegmentGoneError(f"segment {name} no longer exists") from None
        self.closed = False
        _open_segments.add(self)
        # Mapped through a file description of its own: mmap keeps a duplicate of the fd it
        # maps, and through the fd that holds a reader's row lock the lock would live as
        # long as the mapping, in forked children too, so a dead reader's row would look
        # alive. self.fd is never mapped: closing it frees the row.
        try:
            mfd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW)
        except BaseException as exc:
            self._close_fd()
            if isinstance(exc, FileNotFoundError):  # unlinked between our two opens
                raise SegmentGoneError(f"segment {name} no longer exists") from None
            raise
        try:
            st = os.fstat(mfd)
            check_segment_owner(name, owner, st, os.fstat(self.fd))
            size = st.st_size
            if size < 128:
                raise CorruptSegmentError(f"segment {name}: {size} bytes, too small for a header")
            # A reader's arrays come from a read-only mapping: a stray write through one
            # faults in that reader instead of changing what every other process sees.
            self.mm = mmap.mmap(mfd, size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
            self.header = parse_header(self.mm, size, name)
            if not writable:  # a reader's row lives in the header, mapped read-write
                self._rw = mmap.mmap(mfd, self.header.layout.header_size)
        except BaseException:
            self._close_fd()
            raise
        finally:
            os.close(mfd)
        h = self.header
        self.nslots = h.layout.nslots
        self.layout = h.layout
        self.base_addr = mapping_address(self.mm)

    def publish_word(self) -> int:
        return int(_U64.unpack_from(self.mm, OFF_PUBLISH)[0])

    def retired(self) -> int:
        """0, RETIRED_SUPERSEDED or RETIRED_REMOVED."""
        return int(_U32.unpack_from(self.mm, OFF_RETIRED)[0])

    def _try_lock(self, req: bytes) -> bool:
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, req)
            return True
        except (BlockingIOError, PermissionError):
            return False
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return False  # closed by another thread (close() ends a wait)
            raise

    def _close_fd(self) -> None:
        with self._fd_lock:
            fd, self.fd = self.fd, -1  # (-1 first: nobody uses the number once it is closed)
            if fd >= 0:
                os.close(fd)  # drops every OFD lock this handle held: a reader's row
        self.closed = True


acquisitions = _hot.mark  # the acquisition epoch: abandon(acquisitions(), token) after a failure


def abandon(mark: int, token: str) -> list[Any]:
    """Give back the slots this thread acquired since ``mark`` from the segments of the
    writer ``token`` and still holds; returns every C writer of that token, so the caller
    can ask each whether the tag is now its to hand back (an interrupt may also land after
    a stopped publish() gave its slot back itself, with nothing left to abandon)."""
    key = writer_key(token)
    out = []
    for m in list(_open_segments):
        # (getattr: a SegmentWriter whose __init__ failed half-way has no key or writer)
        fast = getattr(m, "fast", None)
        if isinstance(m, SegmentWriter) and getattr(m, "_key", None) == key and fast is not None:
            fast.abandon(mark)
            out.append(fast)
    return out


REMOVED = -2  # what the C writer's acquire() says once the tag was removed
RETIRED = -3  # what SegmentReader.latest() says of a segment a newer generation replaced
_LAST_PINNED = operator.attrgetter("count", "stamp", "read_ns")
CLOSED = -3  # what the C writer's acquire() says once it is closed


def _view_of(c: _hot.Reader, name: str, h: Header, pin: _hot.Pin) -> np.ndarray[Any, Any]:
    """SegmentReader.view_of, of what it needs only (see read_new)."""
    try:
        got = c.array_of(pin)
    except ValueError as exc:
        raise CorruptSegmentError(f"segment {name}: {exc}") from None
    if not isinstance(got, _hot.Pin):
        return got
    # a frame of the header's structured dtype and shape
    nbytes = math.prod(h.shape) * h.dtype.itemsize
    arr: np.ndarray[Any, Any] = np.ndarray((nbytes,), np.uint8, buffer=pin)  # type: ignore[arg-type]
    return arr.view(h.dtype).reshape(h.shape)


def _read_via_pin(c: _hot.Reader, name: str, h: Header, last_count: int) -> np.ndarray[Any, Any] | int | None:
    """SegmentReader.read_new where C hands frames back as Pins (structured dtypes)."""
    got = c.pin(last_count)
    if got is None or isinstance(got, int):
        return got
    return _view_of(c, name, h, got)


class SegmentReader(_Mapped):
    """A read-only mapping of a segment, handing out pinned zero-copy views."""

    def __init__(self, name: str) -> None:
        super().__init__(name, writable=False)
        self._closing = False
        self._owner_pid = process.pid()
        h = self.header
        lay = h.layout
        try:
            self.row = self._claim_row(mapping_address(self._rw))
        except BaseException:
            self._close_fd()
            raise
        # The C side counts pins per slot; each view's base is a _hot.Pin, a read-only
        # buffer of one slot that unpins it when the last array built on it is collected.
        # It keeps both mappings alive, so a view outlives this object safely.
        # Each view is built in C from its slot's own dtype and shape; a frame of the
        # header's structured dtype comes back as its Pin, and view_of() builds it here.
        self._via_bytes = h.dtype.names is not None or h.dtype.subdtype is not None
        direct: dict[str, Any] = {} if self._via_bytes else {"shape": h.shape, "dtype": h.dtype}
        self._c = _hot.Reader(base=self.base_addr, row=self.row, nslots=self.nslots,
                              header_size=lay.header_size, stride=lay.stride, nbytes=lay.nbytes,
                              keep=(self.mm, self._rw), meta_capacity=lay.meta_capacity, **direct)
        # read_new(last_count): the view of a newer frame, pinned, in one C call (None:
        # nothing new; an int: retired or corrupt, which pin() tells apart). Where C hands
        # frames back as Pins (a header of a structured dtype), two calls: pin, view_of.
        self.read_new: Callable[[int], Any] = self._c.read
        if self._via_bytes:  # (a partial, not a bound method: no cycle to keep the fds open)
            self.read_new = functools.partial(_read_via_pin, self._c, self.name, h)
        # last_pinned(): (count, stamp_ns, read_ns) of the frame pinned last, in C calls only.
        self.last_pinned: Callable[[], tuple[int, int, int]] = functools.partial(_LAST_PINNED, self._c)

    def _claim_row(self, rw_addr: int) -> int:
        """Lock the first free reader row and return its address: the lock lasts as long as
        our fd, so the writer can tell a dead reader's row (lock free) from a live one."""
        for r in range(READER_ROWS):
            if self._try_lock(_row_lock(r, fcntl.F_WRLCK)):
                row = rw_addr + self.layout.rows_offset + ROW_SIZE * r
                _hot.claim_row(rw_addr, row, r, process.pid())
                return row
        raise ResourceLimitError(
            f"segment {self.name} has {READER_ROWS} readers already, its limit; "
            "close readers of this tag that you do not use"
        )

    def latest(self, last_count: int) -> tuple[int, int, int] | int | None:
        """Pin the latest slot if its count differs from ``last_count``.

        Returns ``(count, slot, stamp_ns)`` with the slot pinned once, None when nothing
        newer was published, or RETIRED. The caller must :meth:`unpin` or :meth:`view`
        (an exception in between leaves the pin held: prefer :meth:`pin`).
        """
        got = self._c.latest(last_count)
        if got is None or isinstance(got, tuple) or got == RETIRED:
            return got
        self._corrupt(got)

    def pin(self, last_count: int) -> _hot.Pin | int | None:
        """The latest slot, pinned, if its count differs from ``last_count``: a Pin object
        that holds the pin until it (and every view built on it) is collected; None when
        nothing newer was published; RETIRED. Pinning and handing the pin to that object
        happen in one C call, so no exception (a KeyboardInterrupt) can come between them.
        :meth:`last_pinned` then describes the frame."""
        got = self._c.pin(last_count)
        if got is None or got == RETIRED or type(got) is not int:
            return got
        self._corrupt(got)

    def _corrupt(self, got: int) -> NoReturn:
        pub = self.publish_word()
        if got == -1:
            raise CorruptSegmentError(
                f"segment {self.name}: publish word names slot {pub & 0xFF} of {self.nslots}")
        raise CorruptSegmentError(
            f"segment {self.name}: publish word names write {pub >> 8} in slot {pub & 0xFF}, "
            "but that slot holds another write")

    def has_new(self, last_count: int) -> bool:
        count = int(_U64.unpack_from(self.mm, OFF_PUBLISH)[0]) >> 8
        return count != last_count and count != 0

    def wait(self, last_count: int, timeout: float, expect: int = -1) -> None:
        """Sleep until something is published after ``last_count`` (or ``timeout``), or at
        once if the notify word moved from ``expect`` (from :meth:`notify`, taken before the
        caller looked at the writer: a close or death since then is not slept through).

        Lost wake-ups are impossible: see the blocking reader in the module docstring.
        """
        if _hot.FUTEX:
            self._c.wait(last_count, timeout, expect)
        else:
            time.sleep(min(timeout, 0.001))  # no futex: poll, gently

    def notify(self) -> int:
        """The notify word now (an acquire load): see :meth:`wait`."""
        return self._c.notify

    @property
    def pinned(self) -> int:
        """Pins this reader holds (views alive, and frames being read)."""
        return self._c.pinned

    def stop_waits(self) -> None:
        """End every :meth:`wait` on this reader in other threads, now and for good."""
        self._c.stop()

    def unpin(self, i: int) -> None:
        self._c.unpin(i)

    def view(self, i: int) -> np.ndarray[Any, Any]:
        """A read-only array of pinned slot ``i`` that keeps the pin until it is collected
        (with every array derived from it: numpy keeps the buffer's exporter as base)."""
        if not self._via_bytes:
            return self._c.array(i)
        return self.view_of(self._c.view(i))

    def view_of(self, pin: _hot.Pin) -> np.ndarray[Any, Any]:
        """A read-only array of the frame ``pin`` holds, of its own dtype and shape, keeping
        the pin (as its base)."""
        return _view_of(self._c, self.name, self.header, pin)

    def copy(self, pin: _hot.Pin) -> np.ndarray[Any, Any]:
        """An owned, writable copy of the frame ``pin`` holds."""
        return self.view_of(pin).copy()

    @property
    def meta(self) -> tuple[int, bytes] | None:
        """(kind, bytes) of the metadata of the frame pinned last, or None."""
        return self._c.meta

    @property
    def shape_gen(self) -> int:
        """The writer's count of dtype/shape changes at the frame pinned last."""
        return int(self._c.shape_gen)

    def close(self) -> None:
        """Stop using the segment; the fd (and its row) goes when the last view does."""
        if self._closing:
            return
        self._closing = True
        if self._c.pinned:
            # Views still hold pins, so the row stays ours until they go; but this reader
            # stopped reading: `ls` must not count it, nor show it falling behind.
            off = self.row - mapping_address(self._rw)
            self._rw[off + 4 : off + ROW_PINS] = bytes(ROW_PINS - 4)
            self._c.on_idle = self._close_fd
        else:
            self._close_fd()

    def _close_fd(self) -> None:
        if getattr(self, "row", None) is not None and self.fd >= 0 and process.pid() == self._owner_pid:
            # A closing reader leaves its row clean (a crashed one leaves it for the
            # writer's reclaim); the row's lock goes with the fd, and another reader may
            # take the row at once: our C side must not touch it any more.
            _hot.clear_row(self.row)
            c = getattr(self, "_c", None)
            if c is not None:
                c.detach()
        super()._close_fd()

    _owner_pid = process.pid()


class SegmentWriter(_Mapped):
    """A writable mapping of a segment; the single writer's side of the protocol.

    ``variable``: the C fast path takes any frame that fits the slots' capacity and whose
    dtype and ndim a slot's entry can describe; otherwise only frames of the header's
    dtype and shape (ndsharray before layout 3)."""

    def __init__(self, name: str, token: str | None = None, variable: bool = False) -> None:
        super().__init__(name, writable=True)
        h = self.header
        self.dtype, self.shape = h.dtype, h.shape  # read on every write
        self.slots = [
            np.ndarray(h.shape, h.dtype, buffer=self.mm, offset=h.layout.slot_offset(i))
            for i in range(self.nslots)
        ]
        # numpy keeps the mmap as these arrays' base but holds no export of it, so close()'s
        # mm.close() would unmap the memory under an array still alive (a loan() array kept
        # past its block: SIGSEGV at its next access). This export makes mm.close() refuse;
        # the mapping then goes when the mmap object does, after the last array of it.
        self._keep_mapped = memoryview(self.mm)
        # A restarted daemon reads the live writer's pid and key here to decide what to keep
        # and whom to grant the tag (the key first: a pid without it would be a writer
        # nobody could re-register as).
        self._key = NO_KEY if token is None else writer_key(token)
        self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] = self._key
        _U32.pack_into(self.mm, OFF_WRITER_PID, process.pid())
        pub = self.publish_word()
        count = pub >> 8  # a writer taking over a tag continues its count: readers see new frames
        lay = h.layout
        latest = pub & 0xFF
        # The C writer holds a buffer export of the mapping: it cannot be unmapped while
        # any thread still writes through it (close() lets it go after the last write).
        latest = latest if count and latest < self.nslots else -1
        shape_gen = 0
        if latest >= 0:  # a writer taking over continues the shape generations too
            try:
                shape_gen = frame_in_slot(self.mm, h, latest)[3]
            except ValueError:
                pass
        self.fast = _hot.Writer(
            mapping=self.mm, rows_offset=lay.rows_offset, nslots=self.nslots, nbytes=lay.nbytes,
            header_size=lay.header_size, stride=lay.stride, shape=h.shape,
            text=slot_dtype_text(h.dtype), count=count, latest=latest,
            meta_capacity=lay.meta_capacity, variable=variable, shape_gen=shape_gen,
        )
        # Our first write into each slot would fault page by page (see prefault.py).
        prefault.prefault_slots(self.mm, [lay.slot_offset(i) for i in prefault.slot_order(
            self.nslots, self.fast.latest)], lay.nbytes)

    def slot_array(self, i: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """A writable array of ``dtype`` and ``shape`` at the start of slot ``i`` (the
        caller checked that it fits the capacity)."""
        return np.ndarray(shape, dtype, buffer=self.mm, offset=self.layout.slot_offset(i))

    def try_acquire(self) -> int:
        """A slot that is neither the latest nor pinned, its count zeroed; -1 if none is free,
        REMOVED if the tag was removed. Raises HandleClosedError once the writer was closed
        (by another thread)."""
        i = self.fast.acquire()
        if i == CLOSED:
            raise HandleClosedError(
                f"the writer of {self.header.tag!r} was closed, or its segment replaced, by another "
                "thread while this write waited for a free slot")
        return i

    def reclaim_rows(self) -> int:
        """Clear the rows of readers that died holding pins; returns how many.

        Another thread may close this writer meanwhile (fcntl lets it run; review defect
        7): the locks are taken through a duplicate of our fd, so close() cannot close the
        file description (and drop a lock we rely on) under us, nor can its fd number be
        reused by another file while we lock; and the row is cleared by the C writer,
        which refuses once the writer is closed, so never through an unmapped mapping.
        The duplicate is made under ``_fd_lock``, which close() holds to close the fd: so
        it is of our segment's file, never of a file that reused the number (review item 3).
        """
        rows = self.fast.dirty_rows()  # ([] once closed)
        if not rows:
            return 0
        try:
            with self._fd_lock:
                fd = os.dup(self.fd)  # (-1 once closed: EBADF)
        except OSError:
            return 0  # closed by another thread
        freed = 0
        try:
            for r in rows:
                try:
                    fcntl.fcntl(fd, F_OFD_SETLK, _row_lock(r, fcntl.F_WRLCK))
                except (BlockingIOError, PermissionError):
                    continue  # its reader lives
                if not self.fast.clear_row(r):
                    # Closed meanwhile: stop. Our lock goes with the description when fd
                    # closes (if self.fd was closed and its number reused before our dup,
                    # fd is another file's, and unlocking could drop a lock of its own).
                    return freed
                fcntl.fcntl(fd, F_OFD_SETLK, _row_lock(r, fcntl.F_UNLCK))
                freed += 1
        finally:
            os.close(fd)
        return freed

    def set_dropped(self, n: int) -> None:
        """Record that ``n`` frames of the tag were dropped so far (for ls and info)."""
        if not self.closed:
            _U64.pack_into(self.mm, OFF_DROPPED, n)

    def release(self, i: int) -> None:
        """Give back an acquired slot without publishing it (its count stays 0)."""
        self.fast.release(i)

    def publish(self, i: int) -> int:
        """Publish acquired slot ``i`` as the latest write; returns the write count."""
        return self.fast.publish(i)

    def retire(self) -> None:
        """Tell readers a newer generation replaced this segment, and wake blocked ones."""
        retire(self.mm, RETIRED_SUPERSEDED)

    def close(self, drain: float | None = None) -> None:
        """Stop writing. ``drain=None``: a newer generation replaced this segment; a write
        still in flight in another thread publishes here, harmlessly. Otherwise the handle
        closes and the tag will go back to the daemon: writes in flight publish nothing,
        and this waits up to ``drain`` seconds (without the GIL) for their copies to end;
        ``fast.hand_over(True)`` then says whether they did (see _hot.c, stop())."""
        if self.closed:
            return
        try:
            if drain is None:
                self.fast.close()
            else:
                self.fast.stop()
                deadline = time.monotonic() + drain
                pause = 0.0001
                while self.fast.busy and time.monotonic() < deadline:
                    time.sleep(pause)  # lets the copying threads take the GIL and finish
                    pause = min(pause * 2, 0.005)
        finally:
            # Also when a KeyboardInterrupt ends the wait (review item 2): the writes in
            # flight keep the mapping (they hold the C writer's export), not the fd.
            self._forget()

    def _forget(self) -> None:
        """The end of close(): clear our pid and key, close the fd and the mapping."""
        # A restarted daemon must not adopt this segment for a writer that has gone.
        if (_U32.unpack_from(self.mm, OFF_WRITER_PID)[0] == process.pid()
                and self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] == self._key):
            _U32.pack_into(self.mm, OFF_CLOSED_PID, process.pid())  # (who: for ls after a restart)
            _U32.pack_into(self.mm, OFF_WRITER_PID, 0)
            self.mm[OFF_WRITER_KEY : OFF_WRITER_KEY + KEY_BYTES] = NO_KEY
            # End of stream: wake blocked readers, who then find the writer closed.
            retire(self.mm, WAKE_ONLY)
        self._close_fd()
        # self.slots stays: a thread between acquiring a slot and copying into it still
        # indexes it. The mapping goes with the last of them (and of loaned arrays).
        try:
            self.mm.close()
        except BufferError:
            pass  # exported by the slot arrays (or a loan, or a write in flight): unmapped with them
