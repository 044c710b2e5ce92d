"""`iceoryx2` (PyPI 0.10, Eclipse): publish-subscribe over shared memory, byte-slice payload.

One service per size, ``Slice[c_uint8]`` payload, subscriber buffer 1 with safe overflow
(the newest sample replaces an unread one: the reader always gets the newest frame) and a
history of 1 (a newcomer gets the last frame: attach time). The writer does what our
``write()`` does with a user's array: loan a sample, copy the array into it, send. The
reader is zero-copy: ``read()`` wraps the received sample's payload in an ndarray that keeps
the sample borrowed for as long as the array lives (so dropping the previous frame returns
its sample). No blocking read here: iceoryx2 blocks through a separate event service and a
WaitSet, which is not what a publish-subscribe user gets.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import iceoryx2 as iox
import numpy as np

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer

iox.set_log_level(iox.LogLevel.Warn)


def _service(node: Any, spec: Spec) -> Any:
    return (
        node.service_builder(iox.ServiceName.new(f"ndsb/{spec.key}"))
        .publish_subscribe(iox.Slice[ctypes.c_uint8])
        .subscriber_max_buffer_size(1)
        .subscriber_max_borrowed_samples(2)  # the frame the caller holds + the one being read
        .enable_safe_overflow(True)
        .history_size(1)
        .open_or_create()
    )


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        self.service = _service(self.node, spec)
        self.pub = self.service.publisher_builder().initial_max_slice_len(spec.nbytes).create()
        self.nbytes = spec.nbytes
        self.src_ptr = self.src.ctypes.data

    def write(self, a: Array) -> None:
        ptr = self.src_ptr if a is self.src else a.ctypes.data
        sample = self.pub.loan_slice_uninit(self.nbytes)
        ctypes.memmove(sample.payload_ptr, ptr, self.nbytes)
        sample.assume_init().send()

    def sync(self) -> None:
        self.pub.update_connections()

    def serve_attach(self, done: Callable[[], bool]) -> None:
        while not done():  # a newcomer's history (the last frame) is delivered on a connection update
            self.pub.update_connections()
            time.sleep(0.0005)

    def close(self) -> None:
        self.pub.delete()
        del self.pub, self.service, self.node


class Reader(_Reader):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        self.service = _service(self.node, spec)
        self.sub = self.service.subscriber_builder().buffer_size(1).create()
        self.ctype = ctypes.c_uint8 * spec.nbytes
        self.dtype = np.dtype(spec.dtype)

    def read(self, copy: bool = False) -> Array | None:
        sample = self.sub.receive()
        if sample is None:
            return None
        mem = self.ctype.from_address(sample.payload_ptr)
        mem.sample = sample  # the array below keeps mem, mem keeps the sample borrowed
        return np.frombuffer(mem, self.dtype).reshape(self.spec.shape)

    def close(self) -> None:
        self.sub.delete()
        del self.sub, self.service, self.node
