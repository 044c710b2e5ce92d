"""Tag pointers: how a reader finds a tag's segment without asking the daemon.

A folder beside the daemon's socket (private like it) holds one symlink per tag, named by
``config.pointer_name(tag)``, whose target is the name of the tag's current segment. The
daemon replaces a pointer atomically (symlink, then rename over the old one) after it
commits a new generation and before it retires the old segment, and removes it before it
unlinks the segment. A reader's ``readlink`` therefore names either the current segment or
one that is retired or gone, which the reader detects and then asks the daemon.
"""

from __future__ import annotations

import logging
import os
import shutil

from ndsharray import config

log = logging.getLogger("ndsharrayd")


class Pointers:
    def __init__(self, folder: str, mode: int = 0o700, gid: int = -1) -> None:
        self.folder = folder
        self._mode = mode
        self._gid = gid
        self._targets: dict[str, str] = {}  # tag -> segment name

    def reset(self) -> None:
        """Take over the folder a crashed daemon left, if it is ours, else start an empty one.

        Its pointers stay while recovery runs (which points every tag it keeps again, then
        ``prune()`` removes the rest): a reader opening its handle meanwhile still finds a
        live writer's segment without asking the daemon, which is not serving yet. Emptying
        the folder first made such a reader wait for the whole restart. A stale pointer is
        harmless meanwhile: it names a segment that is retired or gone, which readers check.
        """
        fd = self._open_own()
        if fd is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            os.mkdir(self.folder, self._mode)
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        # Mode and group set through the folder's fd, never by path (a name swapped for a
        # link in between would hand its target to the group); umask must not narrow it.
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                raise PermissionError(f"{self.folder} was replaced by another user's folder; "
                                      "make the endpoint's folder writable only by you")
            if self._gid >= 0:
                os.fchown(fd, -1, self._gid)
            os.fchmod(fd, self._mode)
        finally:
            os.close(fd)
        self._targets.clear()

    def _open_own(self) -> int | None:
        """An fd of the existing folder if it is a real folder of ours (not a link), else None."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        if os.fstat(fd).st_uid != os.geteuid():
            os.close(fd)
            return None
        return fd

    def prune(self) -> None:
        """Remove every entry but the pointers set since ``reset()``: those of tags the
        previous daemon knew and recovery did not keep, and leftovers of its crash. Through
        the folder's fd, so that a folder swapped meanwhile never makes us delete elsewhere."""
        keep = {config.pointer_name(tag) for tag in self._targets}
        fd = self._open_own()
        if fd is None:
            return
        try:
            for entry in os.listdir(fd):
                if entry in keep:
                    continue
                try:
                    os.unlink(entry, dir_fd=fd)
                except OSError as exc:  # (a folder: nothing of ours makes one here)
                    log.warning("could not remove %r from %s: %s", entry, self.folder, exc)
        finally:
            os.close(fd)

    def set(self, tag: str, segment: str) -> None:
        path = os.path.join(self.folder, config.pointer_name(tag))
        tmp = path + ".new"
        try:
            try:
                os.unlink(tmp)  # left by a crash between our two calls
            except FileNotFoundError:
                pass
            os.symlink(segment, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            # Readers fall back to asking the daemon: slower to attach, still correct.
            log.warning("could not point tag %r at %s: %s", tag, segment, exc)
            return
        self._targets[tag] = segment

    def drop(self, tag: str, segment: str) -> None:
        """Remove ``tag``'s pointer if it still names ``segment``."""
        if self._targets.get(tag) != segment:
            return
        del self._targets[tag]
        try:
            os.unlink(os.path.join(self.folder, config.pointer_name(tag)))
        except FileNotFoundError:
            pass

    def remove_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._targets.clear()
