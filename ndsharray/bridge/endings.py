"""Why an imported tag's writer closed, for ``ls``, ``info`` and the web API on the
importing host (all through ``admin.list_tags``, which calls :func:`annotate`).

When an imported stream ends (the source writer closed or died, the remote bridge or the
link went), the importing bridge closes the local writer: the daemon then knows only
"closed". The bridge keeps the reasons in a small file beside its socket (next to the
daemon's, a folder of ours): ``bridge-<name>.ended.json``, ``{"pid": <bridge pid>,
"ended": {<local tag>: <why>}}``, rewritten whole (write, then rename) when a stream ends.

Why a file: ``ls``/``info`` read it without a Zenoh session, a daemon change or a new
segment field (another process could show it too, through :func:`annotate`). Sound
because a reason is shown only for a tag whose last writer is the pid the file names (the
bridge that wrote it): a file a killed bridge left says nothing about a tag written since.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping

from ..replies import TagInfo
from ..safefs import open_checked
from .zconfig import local_socket

SUFFIX = ".ended.json"
MAX_BYTES = 1 << 20  # a file larger than this is no file of ours


def path_for(name: str, endpoint: str | None) -> str:
    return local_socket(name, endpoint).removesuffix(".sock") + SUFFIX


class EndingsFile:
    """The reasons file of the bridge ``name`` next to ``endpoint``'s daemon."""

    def __init__(self, name: str, endpoint: str | None) -> None:
        self.path = path_for(name, endpoint)
        self._lock = threading.Lock()

    def write(self, ended: Callable[[], Mapping[str, str]]) -> None:
        """Replace the file's reasons with what ``ended()`` returns (local tag -> why),
        called under this file's lock (so the last write has the latest reasons)."""
        with self._lock:
            data = json.dumps({"pid": os.getpid(), "ended": dict(ended())}).encode()
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # (left by a bridge of this pid that was killed mid-write)
            fd = open_checked(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)

    def remove(self) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def reasons(endpoint: str | None) -> dict[tuple[int, str], str]:
    """``{(bridge pid, local tag): why}`` from every reasons file next to ``endpoint``'s
    daemon that is ours (a file that is not, or not readable as one, is skipped)."""
    folder = os.path.dirname(local_socket("x", endpoint))
    try:
        names = [n for n in os.listdir(folder) if n.startswith("bridge-") and n.endswith(SUFFIX)]
    except OSError:
        return {}
    out: dict[tuple[int, str], str] = {}
    for n in names:
        try:
            fd = open_checked(os.path.join(folder, n), os.O_RDONLY)
        except OSError:  # (UnsafeFileError too: not ours, a link)
            continue
        try:
            doc = json.loads(os.read(fd, MAX_BYTES + 1)[:MAX_BYTES])
        except ValueError:
            continue
        finally:
            os.close(fd)
        if not isinstance(doc, dict) or type(doc.get("pid")) is not int or not isinstance(doc.get("ended"), dict):
            continue
        out.update(((doc["pid"], str(tag)), str(why)) for tag, why in doc["ended"].items())
    return out


def annotate(endpoint: str | None, tags: Iterable[TagInfo]) -> list[TagInfo]:
    """``tags`` with ``writer_left_why`` set for each one whose writer an importing bridge
    closed (its last writer is that bridge's pid): what ``admin.list_tags`` returns."""
    tags = list(tags)
    if not any(t.writer_pid is None and t.last_writer_pid for t in tags):
        return tags  # (nothing to explain: no need to look at files)
    found = reasons(endpoint)
    return [dataclasses.replace(t, writer_left_why=why)
            if t.writer_pid is None and t.last_writer_pid
            and (why := found.get((t.last_writer_pid, t.tag))) is not None else t
            for t in tags]
