"""Whether a process named by a pid in a segment header or a reader row still runs."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is dead."""
    if not 0 < pid < 1 << 22:
        return False  # 0: the segment's writer closed it (kill(0) would mean our group);
        # past Linux's largest pid_max: a corrupt header or reader row, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def describe(pid: int) -> str:
    """"pid N (uid U: command line)" for an error message; what /proc still tells."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} (uid {uid}: {cmd[:120]!r})"
