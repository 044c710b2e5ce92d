"""Which dtypes can live in shared memory, and how a dtype travels as text.

A dtype is shareable when its items are plain bytes: fixed size and no Python object
inside (no ``object``, no numpy 2 ``StringDType``, no structured field holding either).
Its text form is ``repr`` of ``numpy.lib.format.dtype_to_descr``, the same description
``.npy`` files use, parsed back with ``ast.literal_eval`` (never ``eval``).
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Any

import numpy as np

from .errors import UnsupportedDtypeError

#: Longest dtype description accepted (characters); bounds the segment header.
MAX_DESCR_LEN = 4096

_SHAREABLE_KINDS = frozenset("biufcmMSUV")

class _SupportedTypes(tuple):  # type: ignore[type-arg]
    """ndsharray 1.1.4's 14 types, in its order, for ``for t in supported_types`` and
    ``len()``; its ``in`` accepts any dtype we share (see :func:`shareable`).

    Code written for 1.1.4 loops over the types to build test arrays; yielding our wider
    set there would turn a 16.7-million-element test into a 2.1 GB ``'<U32'`` array. Its
    other idiom, ``a.dtype in supported_types``, stays true for every dtype we share ('U3',
    'M8[ns]', structured...), not only the listed types.
    """

    def __contains__(self, item: object) -> bool:
        if tuple.__contains__(self, item):
            return True
        return shareable(item)


#: ndsharray 1.1.4's list, in its order (it ended with Python's ``bool``, as here).
supported_types: tuple[type, ...] = _SupportedTypes((
    np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64,
    np.complex64, np.complex128,
    bool,
))

#: Scalar types beyond 1.1.4's that we share (with any byte order, width or unit).
_MORE_TYPES = (np.bool_, np.longdouble, np.clongdouble, np.datetime64, np.timedelta64,
               np.bytes_, np.str_, np.void)


def shareable(dtype: Any) -> bool:
    """True when arrays of ``dtype`` can be shared: anything ``np.dtype()`` accepts that has
    fixed-size items and no Python object inside (numbers, bool, datetime64/timedelta64,
    fixed-width bytes 'S8' and str 'U8', void, structured and sub-array dtypes of these).
    The scalar types themselves count too (``np.str_``, ``np.void``), though a dtype made
    from them needs a width to be written. False for ``object``, numpy 2's ``StringDType``,
    anything holding them, and whatever is not a dtype (None included)."""
    if dtype is None:  # np.dtype(None) is float64
        return False
    if isinstance(dtype, type) and (dtype in _MORE_TYPES or dtype in supported_types[:]):
        return True  # np.str_ itself, though 'U0' has no size
    try:
        dtype_to_text(np.dtype(dtype))
    except Exception:  # whatever numpy raises for a non-dtype (or warns, under -W error)
        return False
    return True


def check_shareable(dtype: np.dtype[Any]) -> None:
    """Raise :class:`UnsupportedDtypeError` (a ``TypeError``) naming why ``dtype`` cannot be put in shared memory."""
    # (Kind first: numpy 2's StringDType also "has objects", but its kind says more. Kind
    # "O" always has objects, so nothing of another kind passes both checks.)
    if dtype.kind not in _SHAREABLE_KINDS and dtype.kind != "O":
        raise UnsupportedDtypeError(
            f"dtype {dtype} (kind {dtype.kind!r}) is not a fixed-size dtype and cannot be "
            "shared; use numeric, bool, datetime, fixed-width 'S'/'U' or structured dtypes"
        )
    if dtype.hasobject:
        raise UnsupportedDtypeError(
            f"dtype {dtype} holds Python objects, which live in one process's heap and "
            "cannot be shared; convert to a fixed-size dtype (e.g. 'U32' for strings)"
        )
    if dtype.itemsize == 0 and dtype.kind in "SUV" and dtype.names is None:
        raise UnsupportedDtypeError(f"dtype {dtype} has no size; give it a width such as 'S16'")
    if dtype.names is not None:
        for name in dtype.names:
            check_shareable(dtype.fields[name][0])  # type: ignore[index]
    if dtype.subdtype is not None:
        check_shareable(dtype.subdtype[0])


def dtype_to_text(dtype: np.dtype[Any]) -> str:
    """The dtype's ``.npy`` description as text; raises ``TypeError`` if not shareable."""
    check_shareable(dtype)
    text = ascii(np.lib.format.dtype_to_descr(dtype))  # non-ASCII field names escaped
    if len(text) > MAX_DESCR_LEN:
        raise UnsupportedDtypeError(
            f"dtype description is {len(text)} characters, more than {MAX_DESCR_LEN}; "
            "use fewer or shorter structured field names"
        )
    return text


_PLAIN = re.compile(r"'[<>|=][A-Za-z][A-Za-z0-9\[\]]*'")


@functools.lru_cache(maxsize=256)
def text_to_dtype(text: str) -> np.dtype[Any]:
    """Inverse of :func:`dtype_to_text`; raises ``ValueError`` on anything else (cached:
    every generation of a tag parses the same text)."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_DESCR_LEN:
        raise ValueError(f"dtype description must be 1..{MAX_DESCR_LEN} characters")
    try:
        # A plain dtype is a quoted type string ('<u2'): skip the parser (a reader's attach
        # parses one, and literal_eval compiles it first).
        descr: Any = text[1:-1] if _PLAIN.fullmatch(text) else ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(descr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a dtype description: {text[:80]!r} ({exc})") from None
    try:
        check_shareable(dtype)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return dtype
