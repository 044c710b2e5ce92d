"""Which handle of this process holds a tag: a TagBusyError that names the user's own handle.

Re-running ``w = NdShArray('jup/x', a, 'w')`` in a notebook cell or under ``python -i``
claims the tag again while the first handle, still bound to ``w``, holds it. The daemon
can only say "pid N", the user's own process; this says which handle, where the user's
code made it, and how to close it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import FrameType
from typing import Any

from . import process
from .errors import ErrorCode, TagBusyError


def _user_frame(f: FrameType | None) -> FrameType | None:
    """The first frame at or above ``f`` that is not ndsharray's own code."""
    while f is not None and f.f_globals.get("__name__", "").partition(".")[0] == "ndsharray":
        f = f.f_back
    return f


def creation_site() -> tuple[str, int]:
    """(file, line) of the user's code that is making a handle. Cheap: no source is read
    and no string is built (a few attribute loads per frame of ndsharray's own code)."""
    f = _user_frame(sys._getframe(1))
    return ("?", 0) if f is None else (f.f_code.co_filename, f.f_lineno)


def _names_of(obj: object, f: FrameType | None) -> list[str]:
    """Names the user's code binds to ``obj`` in the calling frame (a cell's globals)."""
    out: list[str] = []
    if f is None:
        return out
    for scope in (f.f_locals, f.f_globals):
        for name, value in list(scope.items()):
            if value is obj and not name.startswith("_") and name not in out:
                out.append(name)
    return out


def busy_in_this_process(tag: str, endpoint: str, handles: Iterable[Any]) -> TagBusyError | None:
    """A TagBusyError naming this process's open writer of ``tag``, or None if the holder
    is not in this process (the daemon's own message then says which pid it is)."""
    pid = process.pid()
    for h in list(handles):
        if (h.access == "w" and not h.closed and h.tag == tag and h.endpoint == endpoint
                and h._pid == pid):
            file, line = h._site
            names = _names_of(h, _user_frame(sys._getframe(1)))
            bound = f", bound to {', '.join(names)}" if names else ""
            close = " or ".join(f"{n}.close()" for n in names[:2]) or "its close()"
            return TagBusyError(ErrorCode.TAG_BUSY, (
                f"tag {tag!r} already has a writer in this same process (pid {pid}): the "
                f"NdShArray created at {file}:{line}{bound}. Close it first ({close}), or "
                "close every handle of this process with ndsharray.close_all()"))
    return None
