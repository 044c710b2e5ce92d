"""`mp.Pipe`: multiprocessing.Pipe, pickle protocol 5 with the array's buffer out of band.

The orchestrator creates the Pipe and hands one end's fd to the writer process and the
other to the reader process; the ends live as long as those processes.
"""

from __future__ import annotations

import pickle
from multiprocessing.connection import Connection

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer

NA = {"attach": "no attach by name: a Pipe is inherited from a common parent"}
_conns: dict[int, Connection] = {}


def _conn(spec: Spec) -> Connection:
    if spec.pipe_fd not in _conns:
        _conns[spec.pipe_fd] = Connection(spec.pipe_fd)
    return _conns[spec.pipe_fd]


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.conn = _conn(spec)

    def write(self, a: Array) -> None:
        bufs: list[pickle.PickleBuffer] = []
        head = pickle.dumps(a, protocol=5, buffer_callback=bufs.append)
        self.conn.send_bytes(bytes((len(bufs),)) + head)
        for b in bufs:
            self.conn.send_bytes(b.raw())


class Reader(_Reader):
    blocking = True

    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.conn = _conn(spec)

    def read(self, copy: bool = False) -> Array | None:
        return self.read_blocking() if self.conn.poll() else None

    def read_blocking(self) -> Array | None:
        head = self.conn.recv_bytes()
        bufs = [self.conn.recv_bytes() for _ in range(head[0])]
        return pickle.loads(memoryview(head)[1:], buffers=bufs)  # type: ignore[no-any-return]
