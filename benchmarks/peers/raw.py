"""`raw`: multiprocessing.shared_memory plus a hand-rolled seqlock; the reader copies."""

from __future__ import annotations

import _posixshmem
import sys
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from .base import HEADER, Array, SeqlockPeerReader, SeqlockReader, SeqlockWriter, Spec
from .base import Writer as _Writer


def _name(spec: Spec) -> str:
    return f"ndsb-raw-{spec.key}"


TRACK = sys.version_info >= (3, 13)  # SharedMemory(track=False) exists


def _open(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    """SharedMemory that no resource_tracker unlinks behind our back (python/cpython#82300)."""
    kw: dict[str, Any] = {"track": False} if TRACK else {}
    shm = shared_memory.SharedMemory(name=name, create=create, size=size, **kw)
    if not TRACK:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.shm = _open(_name(spec), True, HEADER + spec.nbytes)
        assert self.shm.buf is not None
        self.lock = SeqlockWriter(np.frombuffer(self.shm.buf, np.uint8), spec)
        self.lock.write(self.src)

    def write(self, a: Array) -> None:
        self.lock.write(a)

    def close(self) -> None:
        self.lock.close()
        self.shm.close()
        if TRACK:
            self.shm.unlink()
        else:  # SharedMemory.unlink() would tell the tracker again, which no longer knows it
            _posixshmem.shm_unlink(self.shm._name)  # type: ignore[attr-defined]


class Reader(SeqlockPeerReader):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.shm = _open(_name(spec), False)
        assert self.shm.buf is not None
        self.lock = SeqlockReader(np.frombuffer(self.shm.buf, np.uint8), spec)

    def close(self) -> None:
        self.lock.close()
        self.shm.close()
