"""What the page shows of one frame: pure functions of an array (no I/O, no state).

The expensive parts (JPEG encoding, statistics of a large array) are done once per frame
for every browser watching (see :mod:`.hub`), and statistics of large arrays come from an
evenly strided sample so that their cost does not grow with the frame.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..imaging import encode_image, rgb_image

# Statistics of larger arrays are taken from an evenly strided sample of about this size.
STATS_SAMPLE = 1 << 16
HIST_BINS = 32
TABLE_ROWS = 8
TABLE_COLS = 8
MIN_IMAGE_SIDE = 8  # a 4x2 float array is a table of values, not a picture
JPEG_QUALITY = 80


def image_like(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    """True for what plays as a picture: uint8/uint16/float (and bool) HxW, HxWx1, HxWx3
    or HxWx4 of at least ``MIN_IMAGE_SIDE`` pixels a side."""
    if dtype.kind not in "buf" or (dtype.kind == "u" and dtype.itemsize > 2):
        return False
    if len(shape) == 3 and shape[2] not in (1, 3, 4):
        return False
    return len(shape) in (2, 3) and min(shape[0], shape[1]) >= MIN_IMAGE_SIDE


def has_colour(shape: tuple[int, ...]) -> bool:
    """True when the frame has colour channels that a ``bgr`` toggle would swap."""
    return len(shape) == 3 and shape[2] in (3, 4)


def jpeg(a: np.ndarray[Any, Any], *, bgr: bool) -> bytes:
    """The frame as a JPEG for the live view (scaled to 8 bits, see imaging.to_uint8_image)."""
    return encode_image(rgb_image(a, bgr=bgr), "JPEG", JPEG_QUALITY)


def png(a: np.ndarray[Any, Any], *, bgr: bool) -> bytes:
    """The frame as a PNG file (lossless 8-bit)."""
    if not image_like(tuple(a.shape), a.dtype):
        raise ValueError(
            f"a {a.dtype} array of shape {tuple(a.shape)} is not an image (need uint8/uint16/float "
            f"HxW, HxWx3 or HxWx4, at least {MIN_IMAGE_SIDE} pixels a side): download frame.npy")
    return encode_image(rgb_image(a, bgr=bgr), "PNG")


def npy(a: np.ndarray[Any, Any]) -> bytes:
    """The frame as a ``.npy`` file (``numpy.load`` reads it back exactly)."""
    out = io.BytesIO()
    np.save(out, a, allow_pickle=False)
    return out.getvalue()


def _number(v: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    f = float(v)
    return f if math.isfinite(f) else None


def sample(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A copy of at most ``STATS_SAMPLE`` evenly strided values of ``a``, flat (cheap: it is
    taken while the frame is pinned, the statistics are computed from it later)."""
    flat = a.reshape(-1)
    step = max(1, -(-flat.size // STATS_SAMPLE))
    return np.array(flat[::step])


def stats(values: np.ndarray[Any, Any], size: int) -> dict[str, Any] | None:
    """min, max, mean and a histogram of the finite ``values`` (a :func:`sample` of a frame of
    ``size`` elements); None for non-numeric dtypes.

    ``sampled`` says how many values they come from when that is fewer than the frame's.
    Complex values are described by their magnitude.
    """
    if values.dtype.kind not in "biufc" or values.size == 0:
        return None
    vals = np.abs(values) if values.dtype.kind == "c" else values.astype(np.float64, copy=False)
    finite = vals[np.isfinite(vals)]
    out: dict[str, Any] = {
        "sampled": int(values.size) if values.size < size else None,
        "nonfinite": int(vals.size - finite.size),
        "min": None, "max": None, "mean": None, "hist": [], "hist_range": None,
    }
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        counts, _ = np.histogram(finite, bins=HIST_BINS, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
        out.update(min=_number(lo), max=_number(hi), mean=_number(finite.mean()),
                   hist=counts.tolist(), hist_range=[_number(lo), _number(hi)])
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, complex):
        return f"{v:.4g}"
    return str(v)


def values(a: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The top-left corner of the frame as strings: up to 8x8 values of the last two axes
    (index 0 of any axis before them); a 1-D array in rows of 8."""
    if a.ndim == 0:
        return {"rows": [[_cell(a.item())]], "row_labels": [""], "col_labels": [""], "of": "()"}
    if a.ndim == 1:
        part = a[: TABLE_ROWS * TABLE_COLS].tolist()
        rows = [[_cell(v) for v in part[i: i + TABLE_COLS]] for i in range(0, len(part), TABLE_COLS)]
        return {"rows": rows, "row_labels": [str(i) for i in range(0, len(part), TABLE_COLS)],
                "col_labels": [f"+{j}" for j in range(min(TABLE_COLS, len(part)))], "of": f"[:{len(part)}]"}
    lead = (0,) * (a.ndim - 2)
    corner = a[lead + (slice(0, TABLE_ROWS), slice(0, TABLE_COLS))]
    rows = [[_cell(v) for v in row] for row in corner.tolist()]
    where = "".join(f"{i}, " for i in lead)
    return {"rows": rows, "row_labels": [str(i) for i in range(corner.shape[0])],
            "col_labels": [str(j) for j in range(corner.shape[1])],
            "of": f"[{where}:{corner.shape[0]}, :{corner.shape[1]}]"}


def jsonable(meta: Any) -> Any:
    """Frame metadata as something ``json.dumps`` takes (anything else as its repr)."""
    if meta is None or isinstance(meta, (str, int, float, bool)):
        return meta if not isinstance(meta, float) or math.isfinite(meta) else repr(meta)
    if isinstance(meta, dict):
        return {str(k): jsonable(v) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        return [jsonable(v) for v in meta]
    if isinstance(meta, np.generic):
        return jsonable(meta.item())
    if isinstance(meta, bytes):
        return meta.decode("utf-8", "backslashreplace")
    return repr(meta)
