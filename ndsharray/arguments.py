"""Checks of what users hand to a handle: a clear :class:`UsageError` (a ``ValueError``)
or ``TypeError`` that names the slip and the way out, before anything is opened or written."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UsageError
from .foreign import as_array


def role_of(tag: object, array: object, r_w: object) -> str:
    """'w' or 'r' from ``r_w``; a clear UsageError naming the likely slip otherwise."""
    if not isinstance(r_w, str) or r_w.lower() not in ("r", "w"):
        if isinstance(array, str) and array.lower() in ("r", "w"):
            # NdShArray('camera/left', 'r'): the second positional argument is array=.
            raise UsageError(
                f"r_w must be 'r' (reader) or 'w' (writer), got {r_w!r}, and array={array!r}: "
                f"did you mean r_w={array!r}? The second positional argument is the array: "
                f"write NdShArray({tag!r}, r_w={array!r})")
        raise UsageError(f"r_w must be 'r' (reader) or 'w' (writer), got {r_w!r}")
    return r_w.lower()


def seconds(timeout: float | None) -> float | None:
    """A timeout: None (no limit) or seconds >= 0. A negative one is refused (1.x took it
    for 0, which hides a deadline computed wrongly), and so is NaN (every wait would
    return at once)."""
    if timeout is None:
        return None
    if type(timeout) is not float:
        if isinstance(timeout, (str, bytes, bool)):  # float() would take "1" and True
            raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
        try:
            timeout = float(timeout)  # int, numpy scalars, Decimal, 0-d arrays
        except (TypeError, ValueError):
            raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}") from None
    if timeout != timeout:
        raise UsageError("timeout is NaN; give None (wait as long as it takes) or seconds")
    if timeout < 0:
        raise UsageError(f"timeout is negative ({timeout:g} s); give 0 (do not wait), a number of "
                         "seconds, or None (wait as long as it takes)")
    return timeout


def check_array(array: Any, what: str = "write()") -> np.ndarray[Any, Any]:
    """``array`` as a plain ndarray if it can be written (an ndarray, or an object numpy can
    view without a copy: see foreign.py); a clear TypeError if not."""
    return as_array(array, what)
