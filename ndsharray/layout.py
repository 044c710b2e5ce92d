"""The segment layout, written once: every offset ndsharray.segment and _hot.c use comes from here.

Three tables of ``(field, struct format)`` pairs, little-endian and naturally aligned:
the fixed header (128 bytes), one slot-table entry per slot (128 bytes), one reader row
per reader (64 bytes). ``struct`` computes each field's offset (``OFF_<FIELD>``, entry
offsets ``ENTRY_<FIELD>``, row offsets ``ROW_<FIELD>``); ndsharray.segment checks at import that
every offset the C code was compiled with (``_hot.OFFSETS``) is the one computed here, so
a change made on one side only is an ImportError, never a silent misread.

This module is pure (no numpy, no I/O): the daemon and the tests read it too.
"""

from __future__ import annotations

import struct

VERSION = 4  # 4: data_offset (slots of frames copied non-temporally start SLOT_SKEW into a page)

#: Where the data of a slot at least as big as glibc's non-temporal copy threshold starts
#: within its page (others start page-aligned): see ndsharray/framecopy.py for why. A
#: multiple of 64, so every view stays 64-byte aligned for any dtype, DLPack and torch.
SLOT_SKEW = 192
PAGED_SLOT = 65536  # a slot (frame + metadata capacity) this large is page strided

#: The fixed header. Fields a writer, a reader and the daemon change while others read
#: them are single aligned words (loaded and stored atomically in _hot.c).
HEADER = (
    ("magic", "8s"),            # b"NDSHARR\0"
    ("version", "I"),           # layout version (VERSION)
    ("header_size", "I"),       # size of the header, a multiple of the page size
    ("capacity", "Q"),          # bytes a slot holds for one frame's data (>= any frame in it)
    ("stride", "Q"),            # bytes from one slot to the next: capacity + meta capacity, aligned
    ("nslots", "I"),            # slot count N (1..255)
    ("ndim", "I"),              # ndim of the generation's shape (the frame that made it)
    ("generation", "Q"),        # generation of this tag (1, 2, ... as capacity, dtype or N change)
    ("writer_pid", "I"),        # pid of the writer using this segment (0 once it closed it)
    ("retired", "I"),           # 1: a newer generation replaced it, 2: the tag was removed
    ("notify", "I"),            # futex word: a writer adds 1 when it wakes sleepers, retire too
    ("rows_used", "I"),         # reader rows in use (high-water mark)
    ("publish", "Q"),           # (write count << 8) | index of the latest slot
    ("created", "Q"),           # creation time, CLOCK_MONOTONIC ns
    ("tag_len", "H"),           # tag length in bytes (UTF-8)
    ("descr_len", "H"),         # generation dtype description length (ASCII, ndsharray.dtypes)
    ("closed_pid", "I"),        # pid of the writer that last closed it (ls after a restart)
    ("writer_key", "16s"),      # SHA-256[:16] of the writer's token (zero once it closed)
    ("meta_capacity", "I"),     # bytes of metadata a slot holds beside its frame (0: none)
    ("data_offset", "I"),       # offset of slot 0's data: header size, + SLOT_SKEW for skewed slots
    ("dropped", "Q"),           # frames the writer skipped (on_full="drop"), for ls
    ("reserved2", "8s"),
)

#: One slot-table entry: what a reader needs to build a view of the frame in the slot.
#: The writer fills it after zeroing ``count`` and before the release store of ``count``,
#: so a reader whose pin validated the count sees exactly that frame's descriptor.
ENTRY = (
    ("count", "Q"),             # write count of the frame in the slot (0 while it is written)
    ("stamp", "Q"),             # publish time, CLOCK_MONOTONIC ns
    ("meta_len", "I"),          # bytes of metadata (<= meta_capacity)
    ("meta_kind", "B"),         # META_NONE, META_BYTES or META_JSON
    ("ndim", "B"),              # 0..MAX_SLOT_NDIM, or NDIM_HEADER: the header's dtype and shape
    ("reserved1", "H"),
    ("shape_gen", "I"),         # the writer's count of shape/dtype changes (ndarray_mmap_name)
    ("reserved2", "I"),
    ("dtype", "16s"),           # numpy dtype.str, ASCII, NUL padded ("<f4", "|u1", "<M8[ns]")
    ("shape", "8Q"),            # the first ndim are the frame's shape
    ("reserved3", "16s"),
)

#: One reader row (a cache line each, so readers never share one).
ROW = (
    ("waiting", "I"),           # threads of this reader that may be in FUTEX_WAIT
    ("pid", "I"),               # owner pid (0: free)
    ("read_ns", "Q"),           # the frame read last: when (monotonic ns),
    ("write_ns", "Q"),          # its write time,
    ("read_count", "Q"),        # and its write count (what ndsharray ls shows)
    ("pins", "32s"),            # 256-bit mask: bit i set while the reader holds a view of slot i
)

MAX_SLOT_NDIM = 8       # a frame of more dimensions takes the slow path (NDIM_HEADER)
MAX_SLOT_DTYPE = 16     # a dtype.str longer than this does too
NDIM_HEADER = 255       # entry ndim: "the header's dtype and shape" (structured dtypes, ...)
META_NONE, META_BYTES, META_JSON = 0, 1, 2


def _offsets(fields: tuple[tuple[str, str], ...], size: int) -> tuple[struct.Struct, dict[str, int]]:
    out: dict[str, int] = {}
    fmt = "<"
    for name, f in fields:
        # struct pads nothing with "<": every field must already sit on its own alignment.
        off = struct.calcsize(fmt)
        width = struct.calcsize("<" + f.lstrip("0123456789")) if not f.endswith("s") else 1
        assert off % min(width, 8) == 0, f"{name} at {off} is not aligned"
        out[name] = off
        fmt += f
    s = struct.Struct(fmt)
    assert s.size == size, f"{fields[0][0]}... table is {s.size} bytes, not {size}"
    return s, out


HEADER_STRUCT, HEADER_OFF = _offsets(HEADER, 128)
ENTRY_STRUCT, ENTRY_OFF = _offsets(ENTRY, 128)
ROW_STRUCT, ROW_OFF = _offsets(ROW, 64)

SLOT_TABLE = HEADER_STRUCT.size     # the slot table starts right after the fixed header
SLOT_ENTRY = ENTRY_STRUCT.size
ROW_SIZE = ROW_STRUCT.size
READER_ROWS = 256                   # readers per segment (one row each): 16 KiB of header

OFF_VERSION = HEADER_OFF["version"]
OFF_CAPACITY = HEADER_OFF["capacity"]
OFF_WRITER_PID = HEADER_OFF["writer_pid"]
OFF_RETIRED = HEADER_OFF["retired"]
OFF_NOTIFY = HEADER_OFF["notify"]
OFF_ROWS_USED = HEADER_OFF["rows_used"]
OFF_PUBLISH = HEADER_OFF["publish"]
OFF_CLOSED_PID = HEADER_OFF["closed_pid"]
OFF_WRITER_KEY = HEADER_OFF["writer_key"]
OFF_META_CAPACITY = HEADER_OFF["meta_capacity"]
OFF_DROPPED = HEADER_OFF["dropped"]
ROW_PINS = ROW_OFF["pins"]


def c_offsets() -> dict[str, int]:
    """Every constant _hot.c is compiled with, by its C name, as this table computes it."""
    out = {f"OFF_{k.upper()}": v for k, v in HEADER_OFF.items()}
    out.update({f"ENTRY_{k.upper()}": v for k, v in ENTRY_OFF.items()})
    out.update({f"ROW_{k.upper()}": v for k, v in ROW_OFF.items()})
    out.update(SLOT_TABLE=SLOT_TABLE, SLOT_ENTRY=SLOT_ENTRY, ROW_SIZE=ROW_SIZE,
               READER_ROWS=READER_ROWS, MAX_SLOT_NDIM=MAX_SLOT_NDIM, MAX_SLOT_DTYPE=MAX_SLOT_DTYPE,
               NDIM_HEADER=NDIM_HEADER, META_NONE=META_NONE, META_BYTES=META_BYTES,
               META_JSON=META_JSON, VERSION=VERSION)
    return out


def check_c_offsets(compiled: dict[str, int]) -> None:
    """Raise ImportError if _hot.c was compiled with an offset this table does not give."""
    want = c_offsets()
    wrong = {k: (v, want.get(k)) for k, v in compiled.items() if want.get(k) != v}
    if wrong:
        raise ImportError(
            "ndsharray._hot was built for another segment layout "
            f"({', '.join(f'{k}={v} but the table says {w}' for k, (v, w) in sorted(wrong.items()))}): "
            "reinstall ndsharray (pip install -e . rebuilds it)")
