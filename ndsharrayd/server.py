"""The daemon's I/O shell: the only zmq code of ndsharrayd.

One thread, one ROUTER socket, one poller. The poller also watches a pidfd per client
process (immediate death notice, see ``reaper``) and a self-pipe that signals write to
(immediate, clean shutdown). Each request's body goes to ``handlers``, which decodes it,
decides with the ``registry`` and only then turns it into file operations
(``segment_files``); its reply comes back as bytes. No request can kill the loop: a last
catch-all there logs it and replies INTERNAL, and one here logs anything else.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from ndsharray import config, safefs
from ndsharray._version import __version__
from ndsharray.daemonctl import DaemonLock
from ndsharray.protocol import MAX_MESSAGE_BYTES, ErrorCode, encode_error

from .broken import BrokenTags
from .handlers import Handlers
from .pointers import Pointers
from .rates import WriteRates
from .reaper import Reaper
from .recovery import recover
from .registry import Registry
from .segment_files import SegmentFiles

log = logging.getLogger("ndsharrayd")


def _raise_fd_limit() -> None:
    """The daemon holds a pidfd per registered process, an fd per client connection and one
    per segment: --max-clients plus --max-tags (4096 each) are above the usual soft limit of
    1024 open files. Raise it to the hard limit (capped at 2**20)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)


def _peer_credentials(frame: zmq.Frame) -> tuple[int, int, int] | None:
    """(uid, gid, pid) of the process that connected, on an ipc endpoint: libzmq (built
    with SO_PEERCRED) reports the peer as "<host>:<uid>:<gid>:<pid>". None when it does
    not say."""
    try:
        parts = str(frame.get("Peer-Address")).rsplit(":", 3)
    except (zmq.ZMQError, UnicodeError):
        return None
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])



class Daemon:
    """One daemon on one endpoint: its registry and segment files, the request handlers,
    the reaper, and the loop that serves them (:meth:`serve`)."""

    def __init__(
        self,
        endpoint: str,
        *,
        orphan_ttl: float = 60.0,
        max_bytes: int | None = None,
        max_tags: int = 4096,
        max_clients: int = 4096,
        group: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.registry = Registry(orphan_ttl)
        # Per-user by default; --group shares segments and socket with one group explicitly.
        self.group = group
        mode = 0o600 if group is None else 0o660
        gid = -1 if group is None else group
        pointers = Pointers(config.pointer_dir(endpoint), 0o700 if group is None else 0o750, gid)
        self.files = SegmentFiles(config.segment_prefix(endpoint), mode, pointers, gid)
        broken = BrokenTags(self.registry, self.files)
        rates = WriteRates(self.registry, self.files, broken)
        self.handlers = Handlers(endpoint, self.registry, self.files, broken, rates, max_bytes=max_bytes,
                                 max_tags=max_tags, max_clients=max_clients)
        self.reaper = Reaper(self.registry, self.files, rates, self.handlers.writer_uids)
        self._stop = False
        self._ipc = config.ipc_path(endpoint) is not None

    # ---- lifecycle --------------------------------------------------------------------

    def serve(self, ready: Callable[[str], None] = lambda msg: None) -> None:
        """Acquire the endpoint, serve until SIGTERM/SIGINT, then remove everything."""
        ipc = config.ipc_path(self.endpoint)
        if ipc is not None and self.group is None:
            config.ensure_private_dir(os.path.dirname(ipc) or ".")
        if ipc is not None:  # nobody beyond us (and our --group) may replace socket or lock
            safefs.check_endpoint_folder(os.path.dirname(ipc) or ".", os.geteuid(), self.group)
        _raise_fd_limit()
        lock = DaemonLock(self.endpoint, self.group)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + 1024)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        try:
            self.files.pointers.reset()
            adopted, orphans, removed = recover(self.files, self.registry)
            self.files.pointers.prune()  # (kept through recovery: see Pointers.reset)
            if adopted or orphans or removed:
                log.warning("found segments of a daemon that did not stop cleanly: adopted %d "
                            "(live writers), kept %d of gone writers for --orphan-ttl, removed %d",
                            adopted, orphans, removed)
            sock.bind(self.endpoint)
            if ipc is not None:
                # Through an O_PATH fd of the socket we just made, never by path: a name
                # swapped for a link in between would hand its target to the group.
                safefs.chmod_socket(ipc, 0o600 if self.group is None else 0o660,
                                    -1 if self.group is None else self.group)
            lock.mark_serving()
            log.info("ndsharrayd %s serving %s (pid %d)", __version__, self.endpoint, os.getpid())
            ready("ok")
            self._loop(sock, wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            segs = self.registry.remove_all()
            for name in segs:
                self.files.unlink(name)
            self.files.pointers.remove_folder()
            self.reaper.close()
            sock.close(0)
            ctx.term()
            wake_r.close()
            wake_w.close()
            if ipc is not None:
                try:
                    os.unlink(ipc)
                except FileNotFoundError:
                    pass
            lock.release()
            log.info("stopped; removed %d segment(s)", len(segs))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _loop(self, sock: zmq.Socket[bytes], wake: socket.socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake.fileno(), zmq.POLLIN)
        watched: set[int] = set()
        last_sweep = time.monotonic()
        while not self._stop:
            for fd in watched - self.reaper.fd_pids.keys():
                poller.unregister(fd)
            for fd in self.reaper.fd_pids.keys() - watched:
                poller.register(fd, zmq.POLLIN)
            watched = set(self.reaper.fd_pids)
            events = dict(poller.poll(500))
            try:
                # Deaths first, so a successor's claim in the same batch finds the tag free.
                for fd in events.keys() & watched:
                    self.reaper.process_died(self.reaper.fd_pids[fd])
                if sock in events:
                    for _ in range(1000):  # drain, but let pidfds and signals in now and then
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.handlers.peer = _peer_credentials(msg[-1]) if self._ipc else None
                        self._handle_frames(sock, [f.bytes for f in msg])
                now = time.monotonic()
                if now - last_sweep >= 1.0:
                    last_sweep = now
                    self.reaper.sweep(now)
            except Exception:  # the registry must outlive any one bug; log it and go on
                log.exception("internal error in the daemon loop")

    # ---- requests ---------------------------------------------------------------------

    def _handle_frames(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        self.handlers.requests += 1
        if len(frames) != 2:
            log.warning("dropped a message of %d frames (expected identity + body)", len(frames))
            if len(frames) > 2:
                sock.send_multipart([frames[0], encode_error(0, ErrorCode.BAD_REQUEST,
                                     "expected one frame per request")])
            return
        ident, body = frames
        reply = self.handlers.reply(body)
        try:
            sock.send_multipart([ident, reply], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send a reply: %s", exc)
        self.reaper.watch_pids()
