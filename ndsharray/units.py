"""Byte sizes as people write and read them: ``50M``, ``2GiB``, ``57.2 MiB``.

Suffixes follow the SI and IEC standards, as ``df -H`` / ``df -h`` do: K, M, G, T (and KB,
MB, ...) are powers of 1000; KiB, MiB, GiB, TiB are powers of 1024. Case does not matter.
Sizes are printed in powers of 1024 (KiB, MiB, GiB), as ``ls`` and the errors show them.
"""

from __future__ import annotations

import re

from .errors import UsageError

_SUFFIXES = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")


def parse_size(text: str) -> int:
    """Bytes in ``text``: a plain count, or a number with a suffix (``50M``, ``1.5GiB``).

    Raises ``ValueError`` naming what is accepted.
    """
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SUFFIXES:
        raise UsageError(f"{text!r} is not a size: give bytes, or a number with K, M, G, T "
                         "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 50M or 2GiB")
    return int(float(m.group(1)) * _SUFFIXES[unit])


def format_size(n: float) -> str:
    """``n`` bytes in the largest binary unit under 1024 of it: ``512 B``, ``57.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
