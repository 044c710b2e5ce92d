"""The daemon's I/O shell: the only zmq code of ndsharrayd.

One thread, one ROUTER socket, one poller. The poller also watches a pidfd per client
process (immediate death notice) and a self-pipe that signals write to (immediate, clean
shutdown). Requests are decoded by ``ndsharray.protocol``, decided by ``registry`` and only
then turned into file operations here. No request can kill the loop: a last catch-all logs
it and replies INTERNAL.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import secrets
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import zmq

from ndsharray import config, safefs
from ndsharray._version import __version__
from ndsharray.daemonctl import DaemonLock
from ndsharray.dtypes import dtype_to_text, text_to_dtype
from ndsharray.errors import CorruptSegmentError, UnsafeFileError
from ndsharray.layout import VERSION as SEGMENT_LAYOUT
from ndsharray.procs import alive as _alive
from ndsharray.protocol import (
    MAX_MESSAGE_BYTES,
    OPS,
    PROTOCOL,
    ErrorCode,
    Request,
    RequestError,
    decode_request,
    encode_error,
    encode_result,
)
from ndsharray.replies import (
    Claimed,
    Empty,
    Listing,
    Lookup,
    NewGeneration,
    Ping,
    ReaderStat,
    Removed,
    Stats,
    TagInfo,
    Wire,
)
from ndsharray.segment.files import segment_path, shm_dir
from ndsharray.segment.header import (
    NO_KEY,
    RETIRED_REMOVED,
    RETIRED_SUPERSEDED,
    WAKE_ONLY,
    Header,
    Layout,
    create_segment,
    parse_header,
    plan_layout,
    shape_problem,
    writer_key,
)
from ndsharray.segment.slot_entry import frame_in_slot
from ndsharray.segment.status import dropped_frames, latest_slot, latest_write, reader_rows
from ndsharray.units import format_size

from . import safe_retire
from .pointers import Pointers
from .registry import Registry, TagRecord

log = logging.getLogger("ndsharrayd")

Handler = Callable[[Request], Wire]
MAX_SEGMENT_BYTES = 1 << 44  # 16 TiB: beyond it a request is a mistake, not a frame
BROKEN_NOTE_S = 600.0  # ls reports a tag removed as broken for this long


class SegmentFiles:
    """The daemon's side of the segments: create, map the header, point the tag at it,
    retire, unlink."""

    def __init__(self, prefix: str, mode: int, pointers: Pointers, gid: int = -1) -> None:
        self.prefix = prefix
        self.mode = mode
        self.gid = gid
        self.pointers = pointers
        # An open fd per segment, never a mapping: a process of the user (or of the group,
        # under --group) can shrink the file at any time, and a load from a mapping past the
        # new end is a SIGBUS that kills the daemon. Header fields are read with pread, which
        # at worst comes back short; see look() and retire_and_unlink().
        self.headers: dict[str, tuple[int, Layout]] = {}
        self.tags: dict[str, str] = {}  # segment name -> tag

    def create(self, rec: TagRecord, pid: int, dtype: str, shape: tuple[int, ...], slots: int,
               key: bytes = NO_KEY, capacity: int | None = None, meta_capacity: int = 0) -> str:
        name = self.prefix + secrets.token_hex(8)
        layout = create_segment(
            name, tag=rec.tag, dtype_text=dtype, shape=shape, nslots=slots,
            generation=rec.generation + 1, writer_pid=pid, writer_key=key, mode=self.mode,
            capacity=capacity, meta_capacity=meta_capacity,
        )
        try:
            fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if self.gid >= 0:
                    os.fchown(fd, -1, self.gid)
            except BaseException:
                os.close(fd)
                raise
            self.headers[name] = (fd, layout)
        except BaseException:
            self.unlink(name)  # (out of fds, say): nothing else knows this segment
            raise
        self.tags[name] = rec.tag
        return name

    def point(self, tag: str, name: str) -> None:
        """Make ``name`` the segment readers of ``tag`` find (before the old one retires)."""
        self.pointers.set(tag, name)

    def retire_and_unlink(self, name: str, why: int = RETIRED_SUPERSEDED) -> None:
        """Flag a segment so readers re-resolve (and a writer of a removed tag stops), then
        unlink it; mapped views survive. A reader that found it through its pointer may
        not be registered yet: without the flag it would wait on it for good."""
        entry = self.headers.get(name)
        try:
            if entry is not None:
                safe_retire.retire(entry[0], why)
            else:  # a segment this daemon never opened (a predecessor's)
                fd = os.open(segment_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    safe_retire.retire(fd, why)
                finally:
                    os.close(fd)
        except (OSError, ValueError) as exc:
            log.warning("could not flag segment %r retired: %s", name, exc)
        self.unlink(name)

    def wake(self, name: str) -> None:
        """Move the notify word of a segment and wake every reader asleep on it: its writer
        died, and only we noticed (a writer that closes does this itself)."""
        entry = self.headers.get(name)
        if entry is None:
            return
        try:
            safe_retire.retire(entry[0], WAKE_ONLY)
        except (OSError, ValueError) as exc:
            log.warning("could not wake the readers of segment %r: %s", name, exc)

    def unlink(self, name: str) -> None:
        tag = self.tags.pop(name, None)
        if tag is not None:
            self.pointers.drop(tag, name)
        entry = self.headers.pop(name, None)
        if entry is not None:
            os.close(entry[0])
        try:
            os.unlink(segment_path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:  # never stop serving (or stopping) over one file
            log.warning("could not remove segment %r: %s", name, exc)

    def look(self, name: str, rows: bool = True) -> tuple[bytes, Layout] | str | None:
        """The segment's header as bytes (one pread, never a load from a mapping), a
        sentence saying why the file is broken (shrunk below its layout by some process), or
        None for a segment this daemon has not opened. ``rows=False``: only the fixed
        fields and the slot table (what the once-a-second rate sample needs), not the 16 KiB
        of reader rows."""
        entry = self.headers.get(name)
        if entry is None:
            return None
        fd, layout = entry
        size = os.fstat(fd).st_size
        if size >= layout.total_size:
            want = layout.header_size if rows else layout.shape_offset
            head = os.pread(fd, want, 0)
            if len(head) == want:
                return head, layout
            size = len(head)  # (shrunk between the fstat and the pread)
        return (f"its file is {size} bytes, {layout.total_size} expected: another process "
                "truncated it")

    def latest_meta(self, name: str, layout: Layout, slot: int, length: int) -> str | None:
        """The metadata of the frame in ``slot`` as ``ls``/``info`` show it (read with
        pread, shortened to 1 KiB; it may be torn: a figure for display only)."""
        entry = self.headers.get(name)
        if entry is None or not 0 < length <= layout.meta_capacity:
            return None
        want = min(length, 1024)
        try:
            data = os.pread(entry[0], want, layout.slot_offset(slot) + layout.nbytes)
        except OSError:
            return None
        try:
            text = data.decode()
            if want == length:
                return text if text.startswith("{") else f"<{length} bytes> {data!r:.200}"
        except UnicodeDecodeError:
            pass
        return f"<{length} bytes> {data[:64]!r}"

    @staticmethod
    def reader_figures(got: tuple[bytes, Layout], writes: int, now: int) -> list[ReaderStat]:
        """Per live reader of a segment (its header from look()): its last frame's
        write-to-read time, how many writes it is behind now, and how long ago it read."""
        out = []
        for pid, read_ns, write_ns, count in reader_rows(got[0], got[1]):
            if not _alive(pid):
                continue  # a crashed reader's row, until the writer or a new reader clears it
            out.append(ReaderStat(
                pid=pid,
                latency_s=max(0, read_ns - write_ns) / 1e9 if read_ns else None,
                behind=max(0, writes - count) if read_ns else None,
                read_age_s=max(0, now - read_ns) / 1e9 if read_ns else None,
            ))
        return out

    def recover(self, registry: Registry) -> tuple[int, int, int]:
        """Rebuild the registry from segments a previous daemon of this endpoint left.

        The newest generation of each tag that is not retired is kept: adopted for its
        writer if that still lives, else kept as an orphan for --orphan-ttl from now (its
        writer closed or died before the restart: a late reader still gets its last frame,
        as without the restart). The rest (retired, older generations, unreadable) are
        unlinked. Returns (adopted, orphans, removed).
        """
        newest: dict[str, tuple[int, str, Header, int]] = {}
        removed = 0
        for name in sorted(os.listdir(shm_dir())):
            if not name.startswith(self.prefix):
                continue
            try:
                h, size = _read_header(name)
            except ForeignFile as exc:
                # Segment names can be guessed: another user may plant one. Never adopt it
                # (its writer pid and data are theirs) and never fail on it. Its name is
                # anybody's text (a newline, shell code): logged escaped, never raw.
                log.warning("leaving alone a file that is not this daemon's: %r", str(exc))
                continue
            except (OSError, ValueError, CorruptSegmentError) as exc:
                log.warning("removing unreadable segment %r: %r", name, str(exc))
                self.unlink(name)
                removed += 1
                continue
            if h.retired:  # superseded, or its tag removed: nobody may use it any more
                self.retire_and_unlink(name)
                removed += 1
                continue
            prev = newest.get(h.tag)
            if prev is not None:
                loser = name if prev[0] > h.generation else prev[1]
                self.retire_and_unlink(loser)
                removed += 1
                if loser == prev[1]:
                    newest[h.tag] = (h.generation, name, h, size)
            else:
                newest[h.tag] = (h.generation, name, h, size)
        adopted = orphans = 0
        now = time.monotonic()
        for gen, name, h, size in newest.values():
            # Opened before the registry hears of it: a segment that went away since its
            # header was read (removed by hand, say) must cost its tag, not the daemon's start.
            path = segment_path(name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("dropping tag %r: its segment %r went away or cannot be opened "
                            "during recovery: %r", h.tag, name, str(exc))
                self.unlink(name)  # (if it is still there: unusable, and nobody's any more)
                removed += 1
                continue
            try:
                safefs.check_fd(fd, path)  # still ours: the name may have been made anew
            except UnsafeFileError as exc:
                os.close(fd)
                log.warning("leaving alone a file that is not this daemon's: %r", str(exc))
                continue
            if h.writer_pid and _alive(h.writer_pid):
                adopted += 1
                registry.adopt(h.tag, segment=name, generation=gen, dtype=h.dtype_text, shape=h.shape,
                               nbytes=h.layout.nbytes, slots=h.layout.nslots, size=size,
                               writer_pid=h.writer_pid, writer_key=h.writer_key)
            else:
                orphans += 1
                registry.keep_orphan(h.tag, segment=name, generation=gen, dtype=h.dtype_text,
                                     shape=h.shape, nbytes=h.layout.nbytes, slots=h.layout.nslots,
                                     size=size, last_writer_pid=h.writer_pid or h.closed_pid,
                                     left="died" if h.writer_pid else "closed", now=now)
            self.headers[name] = (fd, h.layout)
            self.tags[name] = h.tag
            self.point(h.tag, name)
        return adopted, orphans, removed


class _Generation(NamedTuple):
    """A generation's frame (what frame_in_slot() falls back to)."""

    dtype: Any
    shape: tuple[int, ...]


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


class ForeignFile(Exception):
    """A file with our segment prefix that is not ours (another user's, or not a file)."""


def _read_header(name: str) -> tuple[Header, int]:
    fd = os.open(segment_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ForeignFile(f"{segment_path(name)} belongs to uid {st.st_uid} or is not a file")
        size = st.st_size
        head = os.pread(fd, min(size, 64 * 1024), 0)
    finally:
        os.close(fd)
    return parse_header(head, size, name), size


def _shm_free() -> int:
    st = os.statvfs(shm_dir())
    return st.f_bavail * st.f_frsize


class Daemon:
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
        self.max_bytes = max_bytes
        self.max_tags = max_tags
        self.max_clients = max_clients
        self.requests = 0
        self.started = time.monotonic()
        self._stop = False
        self._ipc = config.ipc_path(endpoint) is not None
        self._peer: tuple[int, int, int] | None = None  # (uid, gid, pid) of the request being handled
        self._writer_uids: dict[str, int] = {}  # tag -> uid of its last claimant
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._fd_pids: dict[int, int] = {}  # pidfd -> pid
        self._samples: dict[str, tuple[int, float, str]] = {}  # tag -> (writes, time, segment)
        self._rates: dict[str, float] = {}
        # tag -> (why the daemon removed it, when): told to its writer, readers and ls
        self._broken: dict[str, tuple[str, float]] = {}
        # One handler per op of the protocol's table, and no other: op_<name>.
        self.handlers: dict[str, Handler] = {name: getattr(self, "op_" + name) for name in OPS}

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
            adopted, orphans, removed = self.files.recover(self.registry)
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
            for fd in self._fd_pids:
                os.close(fd)
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
            for fd in watched - self._fd_pids.keys():
                poller.unregister(fd)
            for fd in self._fd_pids.keys() - watched:
                poller.register(fd, zmq.POLLIN)
            watched = set(self._fd_pids)
            events = dict(poller.poll(500))
            try:
                # Deaths first, so a successor's claim in the same batch finds the tag free.
                for fd in events.keys() & watched:
                    self._process_died(self._fd_pids[fd])
                if sock in events:
                    for _ in range(1000):  # drain, but let pidfds and signals in now and then
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._peer = _peer_credentials(msg[-1]) if self._ipc else None
                        self._handle_frames(sock, [f.bytes for f in msg])
                now = time.monotonic()
                if now - last_sweep >= 1.0:
                    last_sweep = now
                    self._sweep(now)
            except Exception:  # the registry must outlive any one bug; log it and go on
                log.exception("internal error in the daemon loop")

    # ---- requests ---------------------------------------------------------------------

    def _handle_frames(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        self.requests += 1
        if len(frames) != 2:
            log.warning("dropped a message of %d frames (expected identity + body)", len(frames))
            if len(frames) > 2:
                sock.send_multipart([frames[0], encode_error(0, ErrorCode.BAD_REQUEST,
                                     "expected one frame per request")])
            return
        ident, body = frames
        try:
            req = decode_request(body)
        except RequestError as exc:
            reply = encode_error(exc.req_id, exc.code, exc.message)
        else:
            try:
                result = self.handlers[req.op](req)
                if not isinstance(result, OPS[req.op].reply):  # (what the client will check)
                    raise TypeError(f"op_{req.op} returned a {type(result).__name__}, "
                                    f"not a {OPS[req.op].reply.__name__}")
                reply = encode_result(req.id, result)
            except RequestError as exc:
                reply = encode_error(req.id, exc.code, exc.message)
            except Exception as exc:  # a bug must not take the registry down with it
                log.exception("internal error on a %r request", req.op)
                reply = encode_error(req.id, ErrorCode.INTERNAL, f"internal daemon error: {exc!r}")
        try:
            sock.send_multipart([ident, reply], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send a reply: %s", exc)
        self._watch_pids()

    def op_ping(self, req: Request) -> Ping:
        return Ping(daemon=__version__, protocol=PROTOCOL, layout=SEGMENT_LAYOUT, pid=os.getpid(),
                    endpoint=self.endpoint, prefix=self.files.prefix)

    def op_stats(self, req: Request) -> Stats:
        return Stats(requests=self.requests, tags=len(self.registry.tags),
                     bytes=self._bytes_in_use(), uptime_s=time.monotonic() - self.started)

    def op_list(self, req: Request) -> Listing:
        now = time.monotonic_ns()
        out = []
        for rec in sorted(self.registry.tags.values(), key=lambda r: r.tag):
            got = self.files.look(rec.segment) if rec.segment else None
            if isinstance(got, str):
                self._drop_broken(rec, got)
                continue
            writes, stamp = latest_write(got[0], got[1].nslots) if got else (0, None)
            stats = self.files.reader_figures(got, writes, now) if got else []
            lat = [s["latency_s"] for s in stats if s["latency_s"] is not None]
            behind = [s["behind"] for s in stats if s["behind"] is not None]
            dtype = text_to_dtype(rec.dtype) if rec.dtype else None
            shape, nbytes, descr, meta = rec.shape, rec.nbytes, rec.dtype, None
            if got and dtype is not None and rec.shape is not None and rec.segment:
                # The latest frame's own dtype and shape (layout 3: they vary within a generation).
                slot = latest_slot(got[0], got[1].nslots)
                try:
                    if slot is not None:
                        dtype, shape, meta_len, _ = frame_in_slot(got[0], _Generation(dtype, rec.shape), slot)
                        nbytes = math.prod(shape) * dtype.itemsize
                        descr = dtype_to_text(dtype)
                        meta = self.files.latest_meta(rec.segment, got[1], slot, meta_len)
                except ValueError:
                    pass  # torn or broken: the generation's
            out.append(TagInfo(
                tag=rec.tag,
                dtype=None if dtype is None else (dtype.name if dtype.names is None else str(dtype)),
                descr=descr,
                shape=shape,
                nbytes=nbytes,
                capacity=rec.nbytes,
                meta_capacity=got[1].meta_capacity if got else 0,
                meta=meta,
                writer_pid=rec.writer.pid if rec.writer else None,
                last_writer_pid=rec.last_writer_pid or None,
                writer_left=rec.writer_left,
                # A reader registers in the background (within 0.2 s) but claims its row of
                # the segment at once; one whose registration was refused (--max-clients)
                # reads all the same: the rows count every reader that has a segment.
                readers=max(len(rec.readers), len(stats)),
                reader_pids=tuple(sorted(set(rec.readers.values()) | {s["pid"] for s in stats})),
                writes=writes,
                dropped=dropped_frames(got[0]) if got else 0,
                last_write_age_s=None if stamp is None else max(0, now - stamp) / 1e9,
                generation=rec.generation,
                segment=rec.segment,
                slots=rec.slots,
                size=rec.size,
                rate_hz=self._rates.get(rec.tag),
                max_read_latency_s=max(lat) if lat else None,
                max_behind=max(behind) if behind else None,
                reader_stats=tuple(stats),
            ))
        return Listing(tags=tuple(out), broken=tuple(self._broken_notes()))

    def _drop_broken(self, rec: TagRecord, why: str) -> None:
        """A process shrank the tag's segment (the daemon reads it only with pread, so it
        lives): remove the tag as ``ndsharray rm`` would, and keep a note of why for its
        writer, its readers and ``ls``."""
        msg = (f"tag {rec.tag!r} was removed by the daemon because its segment "
               f"{rec.segment} is broken: {why}")
        log.error("%s; its writer must open a new handle", msg)
        self.registry.remove(rec.tag)
        if rec.segment is not None:
            self.files.retire_and_unlink(rec.segment, RETIRED_REMOVED)
        self._broken.pop(rec.tag, None)
        self._broken[rec.tag] = (msg, time.monotonic())
        while len(self._broken) > 64:
            del self._broken[next(iter(self._broken))]

    def _broken_notes(self) -> list[str]:
        """Notes of the tags removed as broken in the last BROKEN_NOTE_S seconds."""
        now = time.monotonic()
        return [msg for msg, when in self._broken.values() if now - when < BROKEN_NOTE_S]

    def _check_pid(self, pid: int, req_id: int) -> None:
        """On ipc, the kernel tells who connected (SO_PEERCRED): a handle registers its own
        process, never a made-up or another's pid (which would hold a tag for as long as
        that process lives, or take over a writer's)."""
        if self._peer is not None and pid != self._peer[2]:
            raise RequestError(ErrorCode.BAD_REQUEST, (
                f"field 'pid': {pid} is not the process asking (pid {self._peer[2]} by its "
                "socket's credentials); a handle registers its own process (a client in "
                "another pid namespace cannot share this daemon)"), req_id)

    def op_claim(self, req: Request) -> Claimed:
        a = req.args
        self._check_pid(a["pid"], req.id)
        self._check_limits(a["tag"], req.id)
        rec = self.registry.claim(a["tag"], a["pid"], a["token"], _alive)
        if self._peer is not None:
            self._writer_uids[a["tag"]] = self._peer[0]
        self._broken.pop(a["tag"], None)  # a new writer: the old story is over
        return Claimed(rec.segment_info())

    def _check_limits(self, tag: str, req_id: int) -> None:
        if tag not in self.registry.tags and len(self.registry.tags) >= self.max_tags:
            raise RequestError(ErrorCode.LIMIT, f"the daemon holds {self.max_tags} tags, its limit "
                               "(--max-tags); remove unused tags (ndsharray rm) or raise it", req_id)
        handles = self.registry.handle_count()
        if handles >= self.max_clients:
            raise RequestError(ErrorCode.LIMIT, f"the daemon has {handles} open handles, its limit "
                               "(--max-clients); close unused NdShArray handles or raise it", req_id)

    def op_generation(self, req: Request) -> NewGeneration:
        a = req.args
        try:
            rec = self.registry.check_writer(a["tag"], a["token"])
        except RequestError as exc:
            note = self._broken.get(a["tag"])
            if note is None:
                raise
            raise RequestError(exc.code, f"{note[0]}; open a new writer", req.id) from None
        try:
            dtype = text_to_dtype(a["dtype"])
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"field 'dtype': {exc}", req.id) from None
        shape = a["shape"]
        try:
            layout = plan_layout(a["tag"], a["dtype"], shape, a["slots"], a.get("capacity"),
                                 a.get("meta_capacity", 0))
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"field 'capacity': {exc}", req.id) from None
        nbytes = layout.nbytes  # the slots' capacity
        need = layout.total_size
        if need > MAX_SEGMENT_BYTES:
            raise RequestError(ErrorCode.NO_SPACE, (
                f"a segment for {a['tag']!r} would need {need} bytes, more than any machine's "
                f"shared memory (limit {MAX_SEGMENT_BYTES}); check the shape {list(shape)}"), req.id)
        why = shape_problem(shape, dtype.itemsize)  # (a 0 in the shape hides the others' product)
        if why is not None:
            raise RequestError(ErrorCode.BAD_REQUEST, f"field 'shape': {why}", req.id)
        if self.max_bytes is not None:
            used = self._bytes_in_use() - rec.size
            if used + need > self.max_bytes:
                raise RequestError(ErrorCode.NO_SPACE, (
                    f"a segment for {a['tag']!r} needs {format_size(need)} ({a['slots']} slots x "
                    f"{format_size(layout.stride)} per frame + {format_size(layout.header_size)} "
                    f"of header) but the daemon's quota (--max-bytes {format_size(self.max_bytes)}) "
                    f"leaves {format_size(max(0, self.max_bytes - used))}; raise the quota, remove "
                    "tags (ndsharray rm), or open the writer with fewer slots (slots=2)"), req.id)
        try:
            # (the writer's key from the start: a daemon that restarts before the writer
            # opened the segment must still know whom it belongs to)
            name = self.files.create(rec, a["pid"], a["dtype"], shape, a["slots"], writer_key(a["token"]),
                                     nbytes, layout.meta_capacity)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise RequestError(ErrorCode.NO_SPACE, (
                    f"a segment for {a['tag']!r} needs {need} bytes but {shm_dir()} has "
                    f"{_shm_free()} free; enlarge it (Docker: --shm-size=1g; host: mount -o "
                    f"remount,size=4G {shm_dir()}) or remove tags"), req.id) from None
            raise
        old = self.registry.commit_generation(
            a["tag"], a["token"], segment=name, dtype=a["dtype"], shape=shape,
            nbytes=nbytes, slots=a["slots"], size=need,
        )
        self.files.point(rec.tag, name)
        if old is not None:
            self.files.retire_and_unlink(old)
        log.info("tag %r generation %d: %s %s x%d slots in %s", rec.tag, rec.generation,
                 dtype, shape, a["slots"], name)
        info = rec.segment_info()
        assert info is not None  # (committed just above)
        return NewGeneration(info)

    def op_release(self, req: Request) -> Empty:
        self.registry.release(req.args["tag"], req.args["token"], time.monotonic())
        return Empty()

    def op_attach(self, req: Request) -> Claimed:
        a = req.args
        self._check_pid(a["pid"], req.id)
        self._check_limits(a["tag"], req.id)
        rec = self.registry.attach(a["tag"], a["pid"], a["token"])
        return Claimed(rec.segment_info())

    def op_detach(self, req: Request) -> Empty:
        self.registry.detach(req.args["tag"], req.args["token"], time.monotonic())
        return Empty()

    def op_lookup(self, req: Request) -> Lookup:
        rec = self.registry.tags.get(req.args["tag"])
        if rec is None and req.args["tag"] in self._broken:
            return Lookup(segment=None, removed=self._broken[req.args["tag"]][0])
        return Lookup(segment=None if rec is None else rec.segment_info())

    def op_remove(self, req: Request) -> Removed:
        rec = self.registry.tags.get(req.args["tag"])
        if self._peer is not None and self._peer[0] not in (os.geteuid(), 0) and rec is not None \
                and self._writer_uids.get(rec.tag) != self._peer[0]:
            # --group: a member removes only tags a process of its own user wrote last.
            raise RequestError(ErrorCode.FORBIDDEN, (
                f"tag {rec.tag!r} was last written by another user (uid "
                f"{self._writer_uids.get(rec.tag, os.geteuid())}); only that user or the "
                f"daemon's owner (uid {os.geteuid()}) may remove it"), req.id)
        self._writer_uids.pop(req.args["tag"], None)
        if rec is not None and rec.segment is None and rec.writer is None:
            # Only readers waiting for a first writer: no data and no writer to remove, and
            # dropping their registrations would only hide them from ls.
            raise RequestError(ErrorCode.NOT_FOUND, (
                f"tag {rec.tag!r} has no data and no writer; nothing to remove "
                f"({len(rec.readers)} reader(s) wait for a writer)"), req.id)
        rec = self.registry.remove(req.args["tag"])
        if rec.segment is not None:
            self.files.retire_and_unlink(rec.segment, RETIRED_REMOVED)
        log.info("tag %r removed on request", rec.tag)
        return Removed(segment=rec.segment, writer_pid=rec.writer.pid if rec.writer else None,
                       readers=len(rec.readers))

    # ---- liveness ---------------------------------------------------------------------

    def _bytes_in_use(self) -> int:
        return sum(r.size for r in self.registry.tags.values())

    def _watch_pids(self) -> None:
        """Keep exactly one pidfd per registered process."""
        pids = self.registry.pids()
        for pid in list(self._pidfds.keys() - pids):
            fd = self._pidfds.pop(pid)
            del self._fd_pids[fd]
            os.close(fd)
        for pid in pids - self._pidfds.keys():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._process_died(pid)
                continue
            except (OSError, AttributeError):
                continue  # no pidfd here: the periodic sweep checks this pid
            self._pidfds[pid] = fd
            self._fd_pids[fd] = pid

    def _writer_segments(self, pid: int) -> list[str]:
        return [r.segment for r in self.registry.tags.values()
                if r.writer is not None and r.writer.pid == pid and r.segment is not None]

    def _drop_pid(self, pid: int, now: float) -> list[str]:
        """Forget a dead process; wake the readers of the tags it wrote (end of stream)."""
        orphaned = self._writer_segments(pid)
        tags = self.registry.drop_pid(pid, now)
        for name in orphaned:
            self.files.wake(name)
        return tags

    def _process_died(self, pid: int) -> None:
        tags = self._drop_pid(pid, time.monotonic())
        if tags:
            log.info("process %d is gone; released its registrations on %s", pid, ", ".join(tags))
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            del self._fd_pids[fd]
            os.close(fd)
        self._sweep(time.monotonic())

    def _sample_rates(self, now: float) -> None:
        """Write rate per tag over the last sweep interval, read from segment headers."""
        for tag, rec in list(self.registry.tags.items()):
            if rec.segment is None:
                continue
            got = self.files.look(rec.segment, rows=False)
            if isinstance(got, str):
                self._drop_broken(rec, got)
                continue
            count = latest_write(got[0], got[1].nslots)[0] if got else 0
            prev = self._samples.get(tag)
            if prev is not None and prev[2] == rec.segment and now > prev[1]:
                self._rates[tag] = (count - prev[0]) / (now - prev[1])
            self._samples[tag] = (count, now, rec.segment)
        for tag in list(self._samples.keys() - self.registry.tags.keys()):
            del self._samples[tag]
            self._rates.pop(tag, None)

    def _sweep(self, now: float) -> None:
        self._sample_rates(now)
        for pid in self.registry.pids() - self._pidfds.keys():
            if not _alive(pid):
                self._drop_pid(pid, now)
        for tag in self._writer_uids.keys() - self.registry.tags.keys():
            del self._writer_uids[tag]
        for name in self.registry.expire(now):
            log.info("removing idle segment %s", name)
            self.files.retire_and_unlink(name)
