"""Deterministic test arrays: both sides of a cross-process test rebuild the same bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def make_array(dtype: Any, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """An array whose every byte depends on ``seed``, valid for any fixed-size dtype."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)
    if dt.kind in "fc":  # avoid NaN payloads, whose bits numpy may not preserve in copies
        raw = raw & 0x3F
    if dt.kind == "b":
        raw = raw & 1
    if dt.kind == "U":  # valid code points only
        raw = raw.view(np.uint32) & 0xFFFF if n else raw
        raw = raw.view(np.uint8)
    return raw.view(dt).reshape(shape) if n else np.zeros(shape, dt)


def digest(arr: np.ndarray[Any, Any]) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()
