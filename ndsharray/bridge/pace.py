"""When a frame that came over the link is stale: what the link needs to move a frame,
learnt from the frames an importer took (importer.py).

A frame's link time (from the credit it answers to its arrival, less the time the
exporter held that credit) is what the link needs to carry it, plus whatever it waited
behind a stall. ``stale_after`` alone as the limit makes every frame stale on a link that
needs longer than that to move one frame (a 256 MiB frame over 1 Gbit/s: 2 s; 4K video
over Wi-Fi): the importer would drop every other frame and ask for the newest again. So
the limit is what the link needs for a frame of that size, plus a margin:

    a frame is stale when it waited on the link longer than it needs for such a frame by
    more than ``stale_after``, and by more than that need itself.

The second condition matters on slow links only: the newest frame, asked for instead of
a dropped one, takes a whole transfer to come, so dropping a frame late by less than one
transfer would leave readers waiting longer for its replacement than the frame was late
(and a busy link's jitter, a fraction of a transfer, is not taken for a stall). A stall
is still caught: nothing arrives while the link stands still, so nothing is learnt from
it, and the frames that were on the link come late by the whole stall.

The need is kept as the link time per byte (the frame's size on the wire, plus FRAME_COST
bytes for what a frame costs whatever its size: latency, headers, wake-ups), so a frame
whose size changes (a codec compresses each frame differently) is judged by its size. It
rises at once to a slower frame taken and comes down an eighth of the way to a faster one
per frame. Only frames taken teach it: stale frames are dropped, and teach nothing.

Pure integer arithmetic on the importer's hot path: a multiply, a divide, a few compares.
"""

from __future__ import annotations

FRAME_COST = 64 * 1024  # bytes: what any frame costs the link whatever its size, as if it were this much bigger
SHIFT = 20  # the pace is in ns per 2**SHIFT bytes (a MiB): integer arithmetic, ns resolution for big frames
DECAY = 3  # a faster frame brings the pace down by 1/2**DECAY of the difference


def late(pace: int, link_ns: int, nbytes: int, stale_after_ns: int) -> bool:
    """Whether a frame of ``nbytes`` on the wire that spent ``link_ns`` on the link is
    stale, the link's ``pace`` (from :func:`learn`; 0: nothing learnt, the need is 0)."""
    need = (pace * (nbytes + FRAME_COST)) >> SHIFT
    return link_ns - need > (stale_after_ns if stale_after_ns > need else need)


def learn(pace: int, link_ns: int, nbytes: int) -> int:
    """The pace after a frame of ``nbytes`` taken that spent ``link_ns`` on the link."""
    seen = (link_ns << SHIFT) // (nbytes + FRAME_COST) if link_ns > 0 else 0
    return seen if seen >= pace else pace - ((pace - seen) >> DECAY)
