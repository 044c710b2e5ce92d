"""A frame's write time across hosts.

A write time (``reader.write_time_ns``) is a CLOCK_MONOTONIC stamp, which means nothing
on another host: each host's monotonic clock counts from its own boot. So the exporter
sends a frame's write time as wall-clock time (CLOCK_REALTIME, ns since the epoch), and
the importer brings it back to its own monotonic clock for the tag it writes: readers on
the importing host see the source writer's write time, and ``read_time_ms`` there is the
frame's age since the source wrote it, link included.

Between processes of one machine this is exact (to the microseconds between the two
clock reads); across machines it is as good as the hosts' clock sync (NTP, PTP). Two
clamps keep a poor sync from making nonsense:

- never later than the importing host's now: a source clock running ahead would give a
  frame "from the future" (a negative age; and readers comparing stamps with now would
  take it for a frame not written yet);
- never earlier than the previous frame written into the same tag (nor below 1 ns: a
  stamp of 0 means "no frame"): write times within a tag never go backwards, as with a
  local writer, even when a clock is stepped between two frames.
"""

from __future__ import annotations

import time


def wall_of(stamp_ns: int) -> int:
    """This host's monotonic ``stamp_ns`` as wall-clock time (ns since the epoch)."""
    return time.time_ns() - (time.monotonic_ns() - stamp_ns)


def local_stamp(wall_ns: int, floor_ns: int) -> int:
    """Wall-clock ``wall_ns`` (another host's :func:`wall_of`) as this host's monotonic
    time, no later than now and no earlier than ``floor_ns`` (the tag's previous frame)
    or 1 (see the module's docstring)."""
    mono_now, wall_now = time.monotonic_ns(), time.time_ns()
    return max(floor_ns, 1, mono_now - max(0, wall_now - wall_ns))
