"""Plain text tables that fit a terminal: columns are dropped, least useful first, rather
than letting a line wrap (``ndsharray ls``)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

GAP = "  "


def terminal_width() -> int | None:
    """Columns of the terminal on stdout (or ``$COLUMNS``); None when output goes to a pipe
    or file, which gets every column."""
    cols = shutil.get_terminal_size((0, 0)).columns
    return cols or None


def render(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None,
           drop_order: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The table as text no wider than ``width`` (None: no limit), and the names of the
    columns dropped to get there (taken from ``drop_order``, in that order). What still does
    not fit (a very long tag) is cut with a ``~``, never wrapped."""
    keep = list(range(len(header)))
    dropped: list[str] = []

    def widths() -> list[int]:
        return [max(len(r[i]) for r in [header, *rows]) for i in keep]

    def total() -> int:
        w = widths()
        return sum(w) + len(GAP) * (len(w) - 1)

    for name in drop_order:
        if width is None or total() <= width:
            break
        if name in header and header.index(name) in keep and len(keep) > 1:
            keep.remove(header.index(name))
            dropped.append(name)
    w = widths()
    lines = []
    for r in [header, *rows]:
        line = GAP.join(r[i].ljust(n) for i, n in zip(keep, w, strict=True)).rstrip()
        if width is not None and len(line) > width:
            line = line[: max(1, width - 1)] + "~"
        lines.append(line)
    return "\n".join(lines), dropped
