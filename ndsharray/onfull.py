"""What a write does when readers pin every slot it could use: ``NdShArray(tag, r_w='w',
on_full=...)``.

- ``"grow"`` (the default): wait a moment (a reader swapping views holds two pins for
  microseconds), then grow the ring (a new generation with more slots, up to
  ``max_slots``), then wait up to ``write_timeout`` and raise ``WriterStalledError``.
- ``"drop"``: after the same short grace, skip this frame: ``write()`` returns False at
  once, never raises for want of a slot, and the drop is counted in the segment header
  (``ls``, ``info``, ``--json``: DROPPED). A camera loop that must never stall uses it.
- ``"block"``: never grow; wait up to ``write_timeout`` for a slot to free.

``loan()`` must lend a slot, so it never drops: under ``"drop"`` it waits as ``"block"``.
"""

from __future__ import annotations

ON_FULL = ("grow", "drop", "block")


class Dropped(Exception):
    """on_full="drop": every slot stayed pinned past the short grace; skip this frame."""


def check_on_full(on_full: object) -> str:
    if on_full not in ON_FULL:
        raise ValueError(f"on_full must be one of {', '.join(map(repr, ON_FULL))}, got {on_full!r}: "
                         "what a write does when readers pin every slot (grow the ring, drop the "
                         "frame, or block until a slot frees)")
    return str(on_full)
