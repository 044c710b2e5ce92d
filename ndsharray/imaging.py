"""Turn an array into an 8-bit image (for ``ndsharray show --png``); Pillow is optional."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .errors import UsageError


def to_uint8_image(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """2-D -> grayscale; HxWx1/3/4 -> gray/RGB/RGBA; any numeric dtype scaled to 0..255.

    uint8 passes through unchanged, bool becomes 0/255, everything else is scaled linearly
    from its finite min..max (NaN and inf become 0). Raises ``ValueError`` for other shapes.
    """
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise UsageError(f"cannot show shape {a.shape} as an image: need HxW, HxWx3 or HxWx4")
    if a.dtype.kind not in "biuf":
        raise UsageError(f"cannot show dtype {a.dtype} as an image")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = f[finite].min(), f[finite].max()
    scaled = (f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)
    return np.where(finite, np.rint(scaled), 0).astype(np.uint8)


def save_png(a: np.ndarray[Any, Any], path: str, *, bgr: bool = False) -> tuple[int, ...]:
    """Write ``a`` as a PNG (see :func:`to_uint8_image`); returns the image array's shape.

    ``bgr``: the colour channels of an HxWx3/4 frame are in OpenCV's order (blue, green,
    red[, alpha]); they are swapped to PNG's RGB(A). ``ValueError`` for a frame without
    colour channels, rather than a silently unchanged picture.
    """
    if bgr and not (a.ndim == 3 and a.shape[2] in (3, 4)):
        raise UsageError(f"--bgr needs an HxWx3 or HxWx4 frame, not shape {a.shape}")
    img = rgb_image(a, bgr=bgr)
    with open(path, "wb") as f:
        f.write(encode_image(img, "PNG"))
    return tuple(img.shape)


def rgb_image(a: np.ndarray[Any, Any], *, bgr: bool = False) -> np.ndarray[Any, Any]:
    """:func:`to_uint8_image`, with a BGR(A) frame's channels put in RGB(A) order when
    ``bgr`` (ignored for a frame without colour channels)."""
    img = to_uint8_image(a)
    if bgr and img.ndim == 3:
        img = np.ascontiguousarray(img[:, :, [2, 1, 0, 3][: img.shape[2]]])
    return img


def encode_image(img: np.ndarray[Any, Any], fmt: str, quality: int = 80) -> bytes:
    """An 8-bit image array (from :func:`rgb_image`) as the bytes of a PNG or JPEG file.
    JPEG has no alpha: an RGBA image loses it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("writing PNG files needs Pillow: pip install 'ndsharray[image]'") from None
    pic = Image.fromarray(img)
    out = io.BytesIO()
    if fmt == "JPEG":
        if pic.mode == "RGBA":
            pic = pic.convert("RGB")
        pic.save(out, format="JPEG", quality=quality)
    else:
        pic.save(out, format=fmt)
    return out.getvalue()
