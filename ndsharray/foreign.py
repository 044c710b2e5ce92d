"""What ``write()`` accepts: numpy arrays, and any object numpy can view without a copy.

A torch CPU tensor (``__dlpack__``), a CuPy-free array library's object with
``__array_interface__`` / ``__array_struct__``, a ``memoryview`` or another buffer-protocol
object (``array.array``, a PIL image's buffer, a ctypes array): numpy views its memory as
is, and ``write()`` copies that view into the slot once, as it copies an ndarray. Nothing
that would need a conversion is taken (lists, str, bytes, None, numbers): the caller
chooses the dtype, as ``np.asarray(x, dtype=...)`` says.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _refuse(obj: Any, what: str, why: str = "") -> TypeError:
    return TypeError(
        f"{what} takes a numpy array or an object numpy can view without a copy (a buffer, "
        f"__array_interface__, a CPU __dlpack__ tensor), got {type(obj).__name__}{why}; convert "
        "it first, e.g. np.asarray(x, dtype=np.float32), so that you choose its dtype"
    )


def as_array(obj: Any, what: str = "write()") -> np.ndarray[Any, Any]:
    """``obj`` as a plain ndarray viewing the same memory; TypeError if it cannot be."""
    if isinstance(obj, np.ndarray):
        ma = sys.modules.get("numpy.ma")  # (not imported: no masked array exists, and np.ma
        if ma is not None and isinstance(obj, ma.MaskedArray):  # would import it, ~10 ms)
            raise TypeError(
                f"{what} of a masked array would drop its mask; write array.filled(value), or "
                "its .data and np.ma.getmaskarray(array) under two tags"
            )
        return np.asarray(obj)  # a subclass (np.memmap, np.matrix) as a plain array
    if obj is None or isinstance(obj, (str, bytes, list, tuple, dict, set, int, float, complex, bool)):
        raise _refuse(obj, what)
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            # A GPU tensor, or one numpy cannot take (a dtype it lacks): say which.
            raise _refuse(obj, what, f" that numpy cannot view ({exc}); for a GPU tensor, "
                          "move it first: tensor.cpu()") from None
    if hasattr(obj, "__array_interface__") or hasattr(obj, "__array_struct__"):
        return np.asarray(obj)
    try:
        view = memoryview(obj)
    except TypeError:
        raise _refuse(obj, what) from None
    return np.asarray(view)
