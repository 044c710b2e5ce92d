"""The frame descriptor in a slot's entry: the dtype texts a slot can name a dtype by
(checked both ways: the text comes from shared memory), and reading an entry."""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np

from ..dtypes import check_shareable
from ..layout import ENTRY_OFF, MAX_SLOT_DTYPE, MAX_SLOT_NDIM, NDIM_HEADER, SLOT_ENTRY, SLOT_TABLE

_SLOT_DTYPE_TEXT = re.compile(r"[<>|=][a-zA-Z][0-9]{0,6}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?")


def slot_dtype_text(dtype: np.dtype[Any]) -> str | None:
    """The text a slot's entry names ``dtype`` by (numpy's ``dtype.str``), or None when an
    entry cannot describe it: structured and sub-array dtypes, a text over MAX_SLOT_DTYPE
    bytes, anything not shareable. Such frames take the slow path (a generation of their
    own dtype and shape, described by the header). Called by _hot.c once per dtype."""
    if not isinstance(dtype, np.dtype) or dtype.names is not None or dtype.subdtype is not None:
        return None
    try:
        check_shareable(dtype)
    except TypeError:
        return None
    text = dtype.str
    if len(text) > MAX_SLOT_DTYPE or _SLOT_DTYPE_TEXT.fullmatch(text) is None or np.dtype(text) != dtype:
        return None
    return text


def slot_dtype(text: str) -> np.dtype[Any]:
    """The dtype a slot's text names: only what :func:`slot_dtype_text` makes (the text
    comes from shared memory: anything else raises ValueError). Called by _hot.c once per
    text."""
    if _SLOT_DTYPE_TEXT.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a dtype text a writer makes")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ValueError(f"{text!r} is not a dtype") from None
    if slot_dtype_text(dtype) != text:
        raise ValueError(f"{text!r} is not a dtype text a writer makes")
    return dtype


_ENTRY_FRAME = struct.Struct("<IBB2xI4x16s8Q")  # meta_len, meta kind, ndim, shape_gen, dtype, shape


def frame_in_slot(buf: Any, header: Any, slot: int) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """(dtype, shape, metadata bytes, shape generation) of the frame a slot's entry
    describes, read from a header copy (``ls``, tools: the values may be stale or torn;
    raises ValueError for an entry that describes nothing). ``header``: anything with the
    generation's ``dtype`` and ``shape``."""
    meta_len, _kind, ndim, gen, text, *dims = _ENTRY_FRAME.unpack_from(
        buf, SLOT_TABLE + SLOT_ENTRY * slot + ENTRY_OFF["meta_len"])
    if ndim == NDIM_HEADER:
        return header.dtype, header.shape, meta_len, gen
    if ndim > MAX_SLOT_NDIM:
        raise ValueError(f"slot {slot}: {ndim} dimensions")
    dtype = slot_dtype(text.rstrip(b"\0").decode("ascii", "replace"))
    return dtype, tuple(int(n) for n in dims[:ndim]), meta_len, gen
