"""`limit-shm`: `limit`'s np.copyto, into 3 destinations on shared memory's pages.

`limit` copies into numpy's own arrays, which Linux backs with 2 MiB pages (numpy asks
for them with ``MADV_HUGEPAGE`` from 4 MiB up). A shared-memory transport copies into a
tmpfs file instead: on a ``/dev/shm`` without ``huge=`` (this machine's), 4 KiB pages, and
at 1080p the copy pays for them (benchmarks/README.md, "What the copy pays for"). This is
the same copy into that memory: files in ``$NDSHARRAY_SHM_DIR`` or ``/dev/shm``, the
folder ndsharray's segments use, created by this process (``O_EXCL``), mapped, and
unlinked at once, so nothing is left behind even when the process is killed.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ndsharray.segment.files import shm_dir

from .base import Spec
from .limit import NA
from .limit import Writer as _LimitWriter

__all__ = ["NA", "Reader", "Writer"]
Reader = None


def _shared(nbytes: int, name: str) -> mmap.mmap:
    path = os.path.join(shm_dir(), name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.unlink(path)
        os.posix_fallocate(fd, 0, nbytes)  # reserved as the daemon reserves a segment's pages
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)


class Writer(_LimitWriter):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        maps = [_shared(spec.nbytes, f"ndsb-limit-{os.getpid()}-{spec.key}-{k}") for k in range(3)]
        self.dst = [np.frombuffer(m, self.src.dtype).reshape(self.src.shape) for m in maps]
        for d in self.dst:
            d[...] = 0  # first touch here, not in a measured copy

    def close(self) -> None:
        del self.dst  # the mappings go with their last array
