"""One shared-memory segment: the byte layout, its validation, and the slot protocol.

A segment holds one generation of one tag: a byte capacity per slot, a header, and N
slots each holding one complete frame and its metadata. The daemon creates and unlinks
segments; writers and readers only open them. Nothing here talks to the daemon.

Layout version 4 (little-endian; every field naturally aligned). The single source is the
table in ``ndsharray/layout.py``: every offset is computed from it, and _hot.c's
constants are compared with it when this package is imported::

    0       128   fixed header (layout.HEADER): magic, version, header size, slot
                  capacity, stride, N, the generation's ndim, generation, writer pid,
                  retired, notify word (futex: a writer adds 1 when it wakes
                  sleepers, retire too), reader rows in use, publish word
                  ((count << 8) | latest slot), creation time, tag and dtype lengths, pid
                  of the writer that closed it last, writer key, metadata capacity,
                  data offset (where slot 0's data starts), ``dropped`` (frames the
                  writer dropped, on_full="drop": a u64 only the writer stores, carried
                  over to its next generation), reserved
    128     128*N slot table (layout.ENTRY), per slot: write count, publish time, and the
                  frame's descriptor: metadata length and kind, ndim (0..8, or 255: "the
                  header's dtype and shape"), shape generation, dtype text (numpy
                  ``dtype.str``, <= 16 bytes), shape (8 x u64)
    ...     8*ndim  the generation's shape (u64 each), then its tag, then its dtype description
    ...     256 reader rows of 64 bytes (layout.ROW, 64-aligned): u32 sleepers, u32 pid,
            the frame read last (read time, write time, write count; for ``ls``), 256-bit pin mask
    data offset + i * stride: slot i: the frame's bytes (up to the capacity), then at
            + capacity its metadata (up to the metadata capacity). The data offset is the
            header size (a page multiple), plus layout.SLOT_SKEW (192) for slots whose
            capacity reaches glibc's non-temporal copy threshold (256 MiB frames here):
            there a copy from a numpy array (page + 16) runs fastest with the data 192
            bytes into a page, below it page-aligned (ndsharray/framecopy.py). Every
            slot's data is 64-byte aligned.

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
The check is one compare per write in C (see check_shrink in _hot.c); NDSHARRAY_SHRINK_WINDOW
(seconds, read when a writer opens) sets another window, for tests and benchmarks.

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

The package, one job per module (each imports only the ones above it):

- ``files``: where segments live, the names the daemon gives them, who may own them.
- ``header``: the sizes and offsets a segment's contents give (:class:`Layout`), creating
  a segment (the daemon's job) and validating a header (:func:`parse_header`).
- ``slot_entry``: the frame descriptor in a slot's entry (dtype texts, shape).
- ``status``: figures read from a header copy for ``ls`` and tools (the latest write,
  dropped frames, the readers' rows).
- ``mapping``: an open segment file and its mapping, the row locks, retire, and closing
  inherited fds in a forked child.
- ``reader``: :class:`~ndsharray.segment.reader.SegmentReader`, the reader's side of the
  protocol; ``writer``: :class:`~ndsharray.segment.writer.SegmentWriter`, the writer's.
"""

from __future__ import annotations

import sys

from .. import _hot
from .. import layout as _layout
from .slot_entry import slot_dtype, slot_dtype_text

if sys.byteorder != "little":  # pragma: no cover - every target platform is little-endian
    raise ImportError("ndsharray's segment layout assumes a little-endian machine")

# The layout table is the single source (layout.py); the C code was compiled with its own
# copy of every constant it uses, compared here (issue 12 item 6), before any part of the
# segment can reach the C code. The C code asks Python for dtypes by a slot's text.
_layout.check_c_offsets(_hot.OFFSETS)
_hot.set_dtype_hooks(slot_dtype, slot_dtype_text)
