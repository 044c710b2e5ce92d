"""`pyzmq`: XPUB/SUB over ipc, frames sent with copy=False; the reader wraps the frame.

copy=False means zmq reads the caller's buffer later, from its IO thread: a buffer must not
be refilled until its MessageTracker says zmq is done with it, so the writer fills a small
pool of buffers in turn. XPUB (not PUB) lets the writer see subscriptions: it waits for the
reader's before measuring, and answers a newcomer's with the last frame (attach time).
High-water marks hold at most ~512 MiB of queued frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import zmq

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer

POOL = 3


def _addr(spec: Spec) -> str:
    return f"ipc://{os.path.join(spec.tmpdir, 'zmq-' + spec.key)}"


def _hwm(spec: Spec) -> int:
    return max(2, min(1000, (512 << 20) // spec.nbytes))


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass on every subscription, not just the first
        self.sock.setsockopt(zmq.SNDHWM, _hwm(spec))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(_addr(spec))
        self.pool: list[Array] = [self.src]
        self.trackers: list[zmq.MessageTracker | None] = [None]
        self.sent_at: list[int] = [0]
        self.sends = 0
        self.last: Array | None = None

    def buffer(self) -> Array:
        for i, t in enumerate(self.trackers):
            if t is None or t.done:
                return self.pool[i]
        if len(self.pool) < POOL:
            self.pool.append(np.empty_like(self.src))
            self.trackers.append(None)
            self.sent_at.append(0)
            return self.pool[-1]
        i = min(range(len(self.pool)), key=self.sent_at.__getitem__)  # the oldest send
        self.trackers[i].wait()  # type: ignore[union-attr]
        return self.pool[i]

    def write(self, a: Array) -> None:
        t = self.sock.send(a, copy=False, track=True)  # type: ignore[call-overload]
        self.sends += 1
        self.last = a
        for i, b in enumerate(self.pool):
            if b is a:
                self.trackers[i], self.sent_at[i] = t, self.sends

    def sync(self) -> None:
        if not self.sock.poll(10_000):
            raise TimeoutError("no subscriber within 10 s")
        self.sock.recv()

    def serve_attach(self, done: Callable[[], bool]) -> None:
        while not done():
            if self.sock.poll(2) and self.sock.recv()[:1] == b"\x01" and self.last is not None:
                self.write(self.last)  # last-value cache: a new subscriber gets the latest frame

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Reader(_Reader):
    blocking = True

    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, _hwm(spec))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(_addr(spec))
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")

    def _array(self, frame: zmq.Frame) -> Array:
        return np.frombuffer(frame.buffer, self.spec.dtype).reshape(self.spec.shape)

    def read(self, copy: bool = False) -> Array | None:
        try:
            return self._array(self.sock.recv(zmq.NOBLOCK, copy=False))
        except zmq.Again:
            return None

    def read_blocking(self) -> Array | None:
        return self._array(self.sock.recv(copy=False))

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
