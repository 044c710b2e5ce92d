"""`raw`: multiprocessing.shared_memory plus a hand-rolled seqlock; the reader copies."""

from __future__ import annotations

import sys
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from .base import HEADER, Array, Reader as _Reader, SeqlockReader, SeqlockWriter, Spec, Writer as _Writer


def _name(spec: Spec) -> str:
    return f"ndsb-raw-{spec.key}"


def _open(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    """SharedMemory that no resource_tracker unlinks behind our back (python/cpython#82300)."""
    kw: dict[str, Any] = {"track": False} if sys.version_info >= (3, 13) else {}
    shm = shared_memory.SharedMemory(name=name, create=create, size=size, **kw)
    if not kw:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.shm = _open(_name(spec), True, HEADER + spec.nbytes)
        self.lock = SeqlockWriter(np.frombuffer(self.shm.buf, np.uint8), spec)
        self.lock.write(self.src)

    def write(self, a: Array) -> None:
        self.lock.write(a)

    def close(self) -> None:
        self.lock.close()
        self.shm.close()
        self.shm.unlink()


class Reader(_Reader):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.shm = _open(_name(spec), False)
        self.lock = SeqlockReader(np.frombuffer(self.shm.buf, np.uint8), spec)

    def read(self, copy: bool = False) -> Array | None:
        return self.lock.read()

    def close(self) -> None:
        self.lock.close()
        self.shm.close()
