"""The adapter interface every implementation fills in, and the seqlock raw/SharedArray share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Spec:
    """What one writer/reader pair shares for one frame size."""

    key: str  # unique short name of this run and size, e.g. "4711-2" (orchestrator pid, size)
    shape: tuple[int, ...]
    dtype: str
    tmpdir: str  # private scratch folder (ipc sockets, control files)
    endpoint: str  # ndsharray daemon endpoint
    pipe_fd: int = -1  # mp.Pipe end inherited from the orchestrator

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Writer:
    """Writer side: ``setup`` once per size, ``buffer`` + ``write`` per frame, ``close``."""

    def setup(self, spec: Spec) -> None:
        self.spec = spec
        self.src: Array = np.empty(spec.shape, spec.dtype)
        # Every page written now: an untouched np.zeros source reads the kernel's shared
        # zero page, which stays in cache, and `limit` (whose flat-out loop never fills
        # its source) copied 256 MiB in 7.6 ms against 22.5 ms from real pages, and 720p
        # in 102 against 78 us (4 KiB zero pages, one per page of the source).
        self.src.reshape(-1).view(np.uint8).fill(0x5A)

    def buffer(self) -> Array:
        """The array the caller fills before ``write`` (a peer may hand out a fresh one)."""
        return self.src

    def write(self, a: Array) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Return once a reader that finished ``setup`` will see the next write."""

    def serve_attach(self, done: Callable[[], bool]) -> None:
        """Let a newly started reader get its first frame; return when ``done()``."""
        while not done():
            time.sleep(0.001)

    def close(self) -> None:
        pass


class Reader:
    """Reader side: ``read`` returns a new frame or None at once; ``read_blocking`` waits."""

    blocking = False  # has a natural blocking read
    copy_option = False  # read(copy=True) means something different from read()

    def setup(self, spec: Spec) -> None:
        self.spec = spec

    def read(self, copy: bool = False) -> Array | None:
        raise NotImplementedError

    def read_blocking(self) -> Array | None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Anything worth reporting that only the peer knows (e.g. seqlock retries)."""
        return {}

    def close(self) -> None:
        pass


# ---- the hand-rolled seqlock of `raw` and `SharedArray` ---------------------------------

HEADER = 64  # bytes before the payload; the sequence counter is the first u64


class SeqlockWriter:
    """Counter odd while writing: +1, copy, +1. No pinning, no notification."""

    def __init__(self, mem: Array, spec: Spec) -> None:
        self.seq = mem[:8].view(np.uint64)
        self.payload = mem[HEADER : HEADER + spec.nbytes].view(spec.dtype).reshape(spec.shape)

    def write(self, a: Array) -> None:
        s = int(self.seq[0])
        self.seq[0] = s + 1
        np.copyto(self.payload, a)
        self.seq[0] = s + 2

    def close(self) -> None:
        del self.seq, self.payload


class SeqlockReader:
    """Copy the payload out, then re-check the counter; retry on a change.

    Copies go to two alternating private buffers, so the previous frame stays valid while
    the next is read (what a careful user does instead of allocating per read).
    """

    def __init__(self, mem: Array, spec: Spec) -> None:
        self.seq = mem[:8].view(np.uint64)
        self.payload = mem[HEADER : HEADER + spec.nbytes].view(spec.dtype).reshape(spec.shape)
        self.bufs = [np.empty(spec.shape, spec.dtype) for _ in range(2)]
        self.k = 0
        self.last = 0
        self.retries = 0

    def read(self) -> Array | None:
        while True:
            s = int(self.seq[0])
            if s == self.last or s & 1:
                return None
            out = self.bufs[self.k]
            np.copyto(out, self.payload)
            if int(self.seq[0]) == s:
                self.last = s
                self.k ^= 1
                return out
            self.retries += 1

    def close(self) -> None:
        del self.seq, self.payload


class SeqlockPeerReader(Reader):
    """A reader of a seqlock-guarded buffer (raw, SharedArray): subclasses map the memory
    in ``setup`` and set ``self.lock``; reading and counting retries are the same."""

    lock: SeqlockReader

    def read(self, copy: bool = False) -> Array | None:
        return self.lock.read()

    def counters(self) -> dict[str, int]:
        return {"retries": self.lock.retries}
