"""Tags still streamed while no daemon runs: what ``ls`` and ``doctor`` say after a stop.

``ndsharray daemon stop`` stops the daemon and unlinks its segments; it does not stop the
clients. Running writers keep writing and their readers keep reading through the segments
they have mapped (data must keep flowing), but nothing new can find those tags until a
daemon runs again: the next handle that opens starts one (or ``ndsharray daemon start``),
and the running clients re-register with it within a second (a writer continues in a fresh
segment on its next write; its readers follow). Meanwhile the daemon cannot list them, so
this finds them the way the kernel knows them: the open segment files of this user's
processes, read through ``/proc/PID/fd``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from . import config, process
from .errors import NdShArrayError
from .segment.files import shm_dir
from .segment.header import parse_header


@dataclass
class StrandedTag:
    tag: str
    segment: str
    writer_pids: list[int] = field(default_factory=list)
    reader_pids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The row ``ls --json`` prints for it: marked ``"stranded": true`` (a daemon's rows
        are TagInfo's, which have no such key)."""
        return {"tag": self.tag, "stranded": True, "segment": self.segment,
                "writer_pids": self.writer_pids, "reader_pids": self.reader_pids}


def stranded_tags(endpoint: str) -> list[StrandedTag]:
    """Tags of ``endpoint`` that processes of this user still write or read through a
    segment file they hold open (call it when no daemon runs). Sorted by tag."""
    prefix = os.path.join(shm_dir(), config.segment_prefix(endpoint))
    me, uid = process.pid(), os.getuid()
    found: dict[str, StrandedTag] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        fd_dir = f"/proc/{pid}/fd"
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue  # another user's process: none of our business
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        seen: set[str] = set()
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            path = target.removesuffix(" (deleted)")
            if not path.startswith(prefix) or "/" in path[len(prefix):]:
                continue
            name = os.path.basename(path)
            if name in seen:
                continue  # a reader holds two fds of one segment
            seen.add(name)
            tag = found[name].tag if name in found else _tag_of(f"{fd_dir}/{fd}", uid, name)
            if tag is None:
                continue
            rec = found.setdefault(name, StrandedTag(tag[0], name))
            (rec.writer_pids if tag[1] == pid else rec.reader_pids).append(pid)
    return sorted(found.values(), key=lambda t: (t.tag, t.segment))


def _tag_of(fd_path: str, uid: int, name: str) -> tuple[str, int] | None:
    """(tag, writer pid) from the header of the segment open at ``fd_path``; None if it is
    not a regular file of ours or its header does not parse."""
    try:
        fd = os.open(fd_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        h = parse_header(os.pread(fd, min(st.st_size, 64 * 1024), 0), st.st_size, name)
        return h.tag, h.writer_pid
    except (OSError, ValueError, NdShArrayError):  # not ours, or not a header: skip it
        return None
    finally:
        os.close(fd)


def describe(endpoint: str, tags: list[StrandedTag]) -> str:
    """One sentence for ls and doctor."""
    names = ", ".join(repr(t.tag) for t in tags[:5]) + (", ..." if len(tags) > 5 else "")
    pids = sorted({p for t in tags for p in t.writer_pids + t.reader_pids})
    return (f"no ndsharrayd runs at {endpoint}, but {len(tags)} tag(s) ({names}) are still "
            f"written or read by running processes (pids {', '.join(map(str, pids[:10]))}"
            f"{', ...' if len(pids) > 10 else ''}) through segments of a daemon that stopped. "
            "New readers cannot find them until a daemon runs: `ndsharray daemon start` (or "
            "any new handle) starts one and those processes re-register within a second; to "
            "stop everything, stop those processes too")
