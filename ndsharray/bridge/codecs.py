"""Frame codecs of the bridge: ``raw``, ``zstd[:LEVEL]`` (lossless, any dtype) and
``jpeg[:QUALITY]`` (uint8 HxW or HxWx3 images only). Pure: no Zenoh, no daemon.

The exporter encodes, the importer decodes; the codec travels in each frame's header, so
an importer needs the codec's package only when a frame in that codec arrives.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CodecError as CodecError  # (of the tree; the bridge exports it)
from ..errors import UsageError

RAW, ZSTD, JPEG = 0, 1, 2
NAMES = {RAW: "raw", ZSTD: "zstd", JPEG: "jpeg"}
DEFAULT_ZSTD_LEVEL = 1  # fast: the link, not the ratio, is what a video bridge fights
DEFAULT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Codec:
    """A parsed codec spec; ``Codec.parse('jpeg:80')``."""

    kind: int = RAW
    level: int = 0  # zstd level, JPEG quality; 0 for raw

    @classmethod
    def parse(cls, spec: str) -> Codec:
        name, _, arg = spec.strip().lower().partition(":")
        if name == "raw" and not arg:
            return cls(RAW)
        if name == "zstd":
            level = _int_arg(spec, arg, DEFAULT_ZSTD_LEVEL, 1, 22, "level")
            _module("zstandard", spec)
            return cls(ZSTD, level)
        if name in ("jpeg", "jpg"):
            quality = _int_arg(spec, arg, DEFAULT_JPEG_QUALITY, 1, 100, "quality")
            _module("PIL.Image", spec)
            return cls(JPEG, quality)
        raise UsageError(f"unknown codec {spec!r}: use raw, zstd[:LEVEL 1-22] or jpeg[:QUALITY 1-100]")

    def __str__(self) -> str:
        return NAMES[self.kind] + (f":{self.level}" if self.kind != RAW else "")

    def check(self, dtype: np.dtype[Any], shape: tuple[int, ...], tag: str = "") -> None:
        """Raise :class:`CodecError` if arrays of this dtype and shape cannot use this codec."""
        if self.kind == JPEG and not _is_image(dtype, shape):
            what = f"tag {tag!r} holds " if tag else ""
            raise CodecError(
                f"{what}{dtype} {shape}: JPEG carries only uint8 images of shape HxW or HxWx3; "
                "export it with --codec raw or --codec zstd (lossless, any dtype)")

    def encode(self, array: np.ndarray[Any, Any]) -> bytes:
        """The payload for ``array`` (its C-order bytes, encoded)."""
        if self.kind == RAW:
            return array.tobytes()
        self.check(array.dtype, array.shape)
        if self.kind == ZSTD:
            packed: bytes = _zstd_compressor(self.level).compress(np.ascontiguousarray(array).data)
            return packed
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(out, format="JPEG", quality=self.level)
        return out.getvalue()


def decode(kind: int, payload: bytes, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """The array a payload of codec ``kind`` carries; :class:`CodecError` if it does not
    hold exactly one array of ``dtype`` and ``shape``."""
    nbytes = dtype.itemsize * math.prod(shape)  # (not np.prod: microseconds per frame)
    if kind == RAW:
        data = payload
    elif kind == ZSTD:
        import zstandard

        try:
            # max_output_size bounds only a frame that does not state its size: one that
            # does is decompressed to whatever it states (a few KB can announce GBs).
            stated = zstandard.frame_content_size(payload)
            if stated not in (-1, nbytes):
                raise CodecError(f"zstd payload holds {stated} bytes, {dtype} {shape} needs {nbytes} bytes")
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=nbytes)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd payload does not decode: {exc}") from None
    elif kind == JPEG:
        if not _is_image(dtype, shape):
            raise CodecError(f"a JPEG frame announced as {dtype} {shape}, not a uint8 image")
        from PIL import Image

        try:
            with Image.open(io.BytesIO(payload)) as im:
                im.load()
                arr = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise CodecError(f"JPEG payload does not decode: {exc}") from None
        if arr.shape != shape or arr.dtype != dtype:
            raise CodecError(f"JPEG payload holds {arr.dtype} {arr.shape}, its header says {dtype} {shape}")
        return arr
    else:
        raise CodecError(f"unknown codec number {kind} (a newer bridge on the other side?)")
    if len(data) != nbytes:
        raise CodecError(f"payload holds {len(data)} bytes, {dtype} {shape} needs {nbytes} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _is_image(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bool:
    return dtype == np.uint8 and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)) and 0 not in shape


def _int_arg(spec: str, arg: str, default: int, lo: int, hi: int, what: str) -> int:
    if not arg:
        return default
    try:
        value = int(arg)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise UsageError(f"codec {spec!r}: {what} must be an integer {lo}..{hi}")
    return value


def _module(name: str, spec: str) -> None:
    try:
        __import__(name)
    except ImportError:
        raise ImportError(
            f"codec {spec!r} needs the {name.split('.')[0]} package: pip install 'ndsharray[bridge]'") from None


_local = threading.local()  # a ZstdCompressor is not thread-safe: one per thread and level


def _zstd_compressor(level: int) -> Any:
    import zstandard

    cache: dict[int, Any] = _local.__dict__.setdefault("zstd", {})
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c
