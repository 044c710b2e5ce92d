"""Writers and readers of frames whose shape and dtype change (benchmarks/shapes.py).

One class pair per implementation; each imports its library when it opens, so a worker of
the original ndsharray 1.1.4 (run with ``PYTHONPATH=benchmarks/.peers/nds114``) never
imports ours and the other way round.

- ``ndsharray``: ``write()`` of any shape; ``read()`` builds each view from its slot's own
  dtype and shape (layout 3).
- ``ndsharray-1.1.4``: ``write()`` of any shape: a new file ``/dev/shm/<tag>_<uuid>`` on
  every change of shape or dtype, which readers find by the name in ``/dev/shm/<tag>``; it
  never unlinks them, so ``tidy()`` (outside the timed part) removes all but the newest few.
- ``iceoryx2``: publish-subscribe with a dynamic ``Slice[c_uint8]`` payload
  (``initial_max_slice_len`` the first frame's bytes, ``AllocationStrategy.PowerOfTwo``:
  a larger frame makes the publisher reallocate its data segment, which subscribers map
  on their own) and the frame's dtype and shape in a user header, as a user of it would
  send them; buffer 1 with safe overflow and history 1 as in peers/iox2.py; the reader
  wraps the sample's payload without a copy, the array keeping the sample borrowed.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
SHM = "/dev/shm"
MAX_DIMS = 8


class Writer:
    def open(self, key: str, first: Array) -> None:
        raise NotImplementedError

    def write(self, a: Array) -> None:
        raise NotImplementedError

    def tidy(self) -> None:
        """Housekeeping between frames, not timed (1.1.4's files)."""

    def close(self) -> None:
        pass


class Reader:
    def open(self, key: str) -> None:
        raise NotImplementedError

    def read(self) -> Array | None:
        """The next frame, or None at once when there is none."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---- ndsharray (this repository) ---------------------------------------------------------


class OursWriter(Writer):
    def open(self, key: str, first: Array) -> None:
        import ndsharray

        self.h = ndsharray.NdShArray(f"shapes/{key}", first, r_w="w")

    def write(self, a: Array) -> None:
        self.h.write(a)

    def close(self) -> None:
        self.h.close()


class OursReader(Reader):
    def open(self, key: str) -> None:
        import ndsharray

        self.h = ndsharray.NdShArray(f"shapes/{key}", r_w="r")

    def read(self) -> Array | None:
        ok, a = self.h.read()
        return a if ok else None

    def close(self) -> None:
        self.h.close()


# ---- ndsharray 1.1.4 ---------------------------------------------------------------------

PREFIX_114 = "ndsb114s-"  # its files: /dev/shm/<PREFIX_114><key>[_<uuid>]
KEEP_114 = 3  # newest frame files kept by tidy(): the latest, and what a reader may still open


def _nds114() -> Any:
    import ndsharray

    assert ndsharray.__version__ == "1.1.4", f"imported ndsharray {ndsharray.__version__} from {ndsharray.__file__}"
    return ndsharray


class Nds114Writer(Writer):
    def open(self, key: str, first: Array) -> None:
        self.tag = PREFIX_114 + key
        self.h = _nds114().NdShArray(self.tag, first, r_w="w")
        self.files = [self.h.ndarray_mmap_name]

    def write(self, a: Array) -> None:
        self.h.write(a)

    def tidy(self) -> None:
        name = self.h.ndarray_mmap_name
        if name != self.files[-1]:
            self.files.append(name)
        while len(self.files) > KEEP_114:
            try:
                os.unlink(os.path.join(SHM, self.files.pop(0)))
            except FileNotFoundError:
                pass

    def close(self) -> None:
        del self.h  # it has no close(); __del__ unmaps
        for name in os.listdir(SHM):
            if name == self.tag or name.startswith(self.tag + "_"):
                os.unlink(os.path.join(SHM, name))


class Nds114Reader(Reader):
    def open(self, key: str) -> None:
        self.h = _nds114().NdShArray(PREFIX_114 + key, r_w="r")

    def read(self) -> Array | None:
        ok, a = self.h.read()  # False for "nothing new" and for a tear it noticed
        return a if ok else None

    def close(self) -> None:
        del self.h


# ---- iceoryx2, dynamic slices --------------------------------------------------------------


class FrameHeader(ctypes.Structure):
    """The user header beside each sample: the frame's dtype and shape."""

    _fields_ = [("ndim", ctypes.c_uint32), ("dtype", ctypes.c_char * 16), ("shape", ctypes.c_uint64 * MAX_DIMS)]


def _iox_service(key: str) -> tuple[Any, Any, Any]:
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Warn)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    service = (
        node.service_builder(iox.ServiceName.new(f"ndsb/shapes/{key}"))
        .publish_subscribe(iox.Slice[ctypes.c_uint8])
        .user_header(FrameHeader)
        .subscriber_max_buffer_size(1)
        .subscriber_max_borrowed_samples(2)
        .enable_safe_overflow(True)
        .history_size(1)
        .open_or_create()
    )
    return iox, node, service


class IoxWriter(Writer):
    def open(self, key: str, first: Array) -> None:
        iox, self.node, self.service = _iox_service(key)
        self.pub = (self.service.publisher_builder().initial_max_slice_len(max(1, first.nbytes))
                    .allocation_strategy(iox.AllocationStrategy.PowerOfTwo).create())
        self.write(first)

    def write(self, a: Array) -> None:
        sample = self.pub.loan_slice_uninit(a.nbytes)
        h = FrameHeader.from_address(sample.user_header_ptr)
        h.ndim = a.ndim
        h.dtype = a.dtype.str.encode()
        for k, n in enumerate(a.shape):
            h.shape[k] = n
        if a.nbytes:
            ctypes.memmove(sample.payload_ptr, a.ctypes.data, a.nbytes)
        sample.assume_init().send()

    def tidy(self) -> None:
        self.pub.update_connections()  # (a newcomer's history is delivered on an update)

    def close(self) -> None:
        self.pub.delete()
        del self.pub, self.service, self.node


class IoxReader(Reader):
    def open(self, key: str) -> None:
        _, self.node, self.service = _iox_service(key)
        self.sub = self.service.subscriber_builder().buffer_size(1).create()

    def read(self) -> Array | None:
        sample = self.sub.receive()
        if sample is None:
            return None
        h = FrameHeader.from_address(sample.user_header_ptr)
        n = sample.payload().number_of_elements
        mem = (ctypes.c_uint8 * n).from_address(sample.payload_ptr)
        mem.sample = sample  # the array keeps mem, mem keeps the sample borrowed
        return np.frombuffer(mem, np.dtype(h.dtype.decode())).reshape(tuple(h.shape[: h.ndim]))

    def close(self) -> None:
        self.sub.delete()
        del self.sub, self.service, self.node


IMPLS: dict[str, tuple[type[Writer], type[Reader]]] = {
    "ndsharray": (OursWriter, OursReader),
    "ndsharray-1.1.4": (Nds114Writer, Nds114Reader),
    "iceoryx2": (IoxWriter, IoxReader),
}
