"""Liveness: which client processes still live, and what goes when one does not.

The daemon holds a pidfd per registered process; the server's poller watches them, so a
death is noticed at once (where pidfds exist) and the process's registrations go: its
tags are free for a successor, its readers counted no more, and the readers of what it
wrote are woken (end of stream). A sweep about once a second catches the rest: pids
without a pidfd that died, tags whose orphaned segments outlived --orphan-ttl.
"""

from __future__ import annotations

import logging
import os
import time

from ndsharray.procs import alive as _alive

from .rates import WriteRates
from .registry import Registry
from .segment_files import SegmentFiles

log = logging.getLogger("ndsharrayd")


class Reaper:
    """The pidfds of the registered processes, and the sweep.

    ``writer_uids``: the request handlers' tag -> uid of its last claimant, forgotten here
    once the tag is gone."""

    def __init__(self, registry: Registry, files: SegmentFiles, rates: WriteRates,
                 writer_uids: dict[str, int]) -> None:
        self._registry = registry
        self._files = files
        self._rates = rates
        self._writer_uids = writer_uids
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self.fd_pids: dict[int, int] = {}  # pidfd -> pid (what the server's poller watches)

    def watch_pids(self) -> None:
        """Keep exactly one pidfd per registered process."""
        pids = self._registry.pids()
        for pid in list(self._pidfds.keys() - pids):
            fd = self._pidfds.pop(pid)
            del self.fd_pids[fd]
            os.close(fd)
        for pid in pids - self._pidfds.keys():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.process_died(pid)
                continue
            except (OSError, AttributeError):
                continue  # no pidfd here: the periodic sweep checks this pid
            self._pidfds[pid] = fd
            self.fd_pids[fd] = pid

    def _writer_segments(self, pid: int) -> list[str]:
        return [r.segment for r in self._registry.tags.values()
                if r.writer is not None and r.writer.pid == pid and r.segment is not None]

    def _drop_pid(self, pid: int, now: float) -> list[str]:
        """Forget a dead process; wake the readers of the tags it wrote (end of stream)."""
        orphaned = self._writer_segments(pid)
        tags = self._registry.drop_pid(pid, now)
        for name in orphaned:
            self._files.wake(name)
        return tags

    def process_died(self, pid: int) -> None:
        tags = self._drop_pid(pid, time.monotonic())
        if tags:
            log.info("process %d is gone; released its registrations on %s", pid, ", ".join(tags))
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            del self.fd_pids[fd]
            os.close(fd)
        self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        self._rates.sample(now)
        for pid in self._registry.pids() - self._pidfds.keys():
            if not _alive(pid):
                self._drop_pid(pid, now)
        for tag in self._writer_uids.keys() - self._registry.tags.keys():
            del self._writer_uids[tag]
        for name in self._registry.expire(now):
            log.info("removing idle segment %s", name)
            self._files.retire_and_unlink(name)

    def close(self) -> None:
        """Close every pidfd (the daemon stops)."""
        for fd in self.fd_pids:
            os.close(fd)
