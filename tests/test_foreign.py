"""write() takes any object numpy can view without a copy (ndsharray/foreign.py)."""

from __future__ import annotations

import array
import ctypes
from typing import Any

import numpy as np
import pytest

import ndsharray


class DLPackOnly:
    """A tensor-like object that only speaks DLPack (as torch's CPU tensors do)."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a

    def __dlpack__(self, **kw: Any) -> Any:
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()


class InterfaceOnly:
    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a
        self.__array_interface__ = a.__array_interface__


FRAME = np.arange(480 * 640, dtype=np.uint16).reshape(480, 640)


@pytest.mark.parametrize("make", [
    lambda: DLPackOnly(FRAME),
    lambda: InterfaceOnly(FRAME),
    lambda: memoryview(FRAME.data),  # (FRAME.data: numpy's stubs type it as a buffer)
], ids=["dlpack", "array_interface", "memoryview"])
def test_foreign_arrays_arrive_as_they_were(daemon: Any, make: Any) -> None:
    with ndsharray.NdShArray("cam/foreign", r_w="w") as w, ndsharray.NdShArray("cam/foreign", r_w="r") as r:
        obj = make()
        assert w.write(obj) is True  # a new generation: the general path
        status, got = r.read()
        assert status and got.dtype == np.uint16 and np.array_equal(got, FRAME)
        assert w.write(make()) is True  # the same shape: the one-call C path
        status, got = r.read()
        assert status and np.array_equal(got, FRAME)


def test_buffer_objects_of_the_stdlib(daemon: Any) -> None:
    with ndsharray.NdShArray("cam/buf", r_w="w") as w, ndsharray.NdShArray("cam/buf", r_w="r") as r:
        w.write(array.array("d", [1.5, 2.5, 3.5]))
        assert np.array_equal(r.read()[1], [1.5, 2.5, 3.5])
        w.write((ctypes.c_int32 * 4)(1, 2, 3, 4))
        status, got = r.read()
        assert status and got.dtype == np.int32 and list(got) == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", [[1, 2, 3], "frame", b"raw", None, 3.0, (1, 2)])
def test_what_needs_a_conversion_stays_a_type_error(daemon: Any, bad: Any) -> None:
    with ndsharray.NdShArray("cam/bad", r_w="w") as w:
        with pytest.raises(TypeError, match="np.asarray"):
            w.write(bad)
        w.write(FRAME)
        with pytest.raises(TypeError, match="np.asarray"):
            w.write(bad)  # (past the first write too: the fast path checks first)


def test_a_torch_cpu_tensor_in_and_out(daemon: Any) -> None:
    torch = pytest.importorskip("torch")  # optional: the README's example
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with ndsharray.NdShArray("cam/torch", r_w="w") as w, ndsharray.NdShArray("cam/torch", r_w="r") as r:
        w.write(t)
        status, view = r.read()
        assert status
        with pytest.warns(UserWarning, match="not writ"):
            out = torch.from_numpy(view)  # shares the read-only slot
        assert torch.equal(out, t)
        status, copy = r.read(copy=True) if w.write(t) else (False, None)
        assert status and torch.from_numpy(copy).add_(1).sum().item() == t.sum().item() + 12
