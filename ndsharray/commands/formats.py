"""How the subcommands print figures: ages, latencies, shapes (sizes: :mod:`ndsharray.units`)."""

from __future__ import annotations


def age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.0f} min"


def latency(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} us" if s < 0.001 else f"{s * 1000:.1f} ms"


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else ("x".join(map(str, shape)) or "()")
