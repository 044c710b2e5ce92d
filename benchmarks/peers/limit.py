"""`limit`: np.copyto of the same bytes in one process, over 3 destinations in turn.

Not a transport: its write, read and latency figures are the time of one copy, and its
throughput is copies per second. It bounds what any copying transport can reach.
"""

from __future__ import annotations

import numpy as np

from .base import Array, Spec
from .base import Writer as _Writer

NA = {
    "read_none": "in-process: nothing to poll",
    "lat_block": "in-process: nothing to wait for",
    "attach": "in-process: nothing to attach to",
    "idle_cpu": "in-process: nothing to wait for",
}
Reader = None


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.dst = [np.empty_like(self.src) for _ in range(3)]
        self.k = 0

    def write(self, a: Array) -> None:
        np.copyto(self.dst[self.k], a)
        self.k = (self.k + 1) % 3
