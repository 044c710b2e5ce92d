"""The daemon's request handlers: one per op of the protocol's table (``op_<name>``, and no
other), and the dispatch that turns a request's bytes into exactly one reply's bytes.

No zmq here (the server is the only zmq code): a request comes in as bytes with the
credentials of the process that sent it, and leaves as bytes. Requests are decoded by
``ndsharray.protocol``, decided by the ``registry`` and only then turned into file
operations (``segment_files``). No request can raise out of :meth:`Handlers.reply`: a last
catch-all logs it and replies INTERNAL.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

from ndsharray._version import __version__
from ndsharray.dtypes import text_to_dtype
from ndsharray.layout import VERSION as SEGMENT_LAYOUT
from ndsharray.procs import alive as _alive
from ndsharray.protocol import (
    OPS,
    PROTOCOL,
    ErrorCode,
    Request,
    RequestError,
    decode_request,
    encode_error,
    encode_result,
)
from ndsharray.replies import Claimed, Empty, Listing, Lookup, NewGeneration, Ping, Removed, Stats, Wire
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import RETIRED_REMOVED, plan_layout, shape_problem, writer_key
from ndsharray.units import format_size

from .broken import BrokenTags
from .listing import list_tags
from .rates import WriteRates
from .registry import Registry
from .segment_files import SegmentFiles

log = logging.getLogger("ndsharrayd")

Handler = Callable[[Request], Wire]
MAX_SEGMENT_BYTES = 1 << 44  # 16 TiB: beyond it a request is a mistake, not a frame


def _shm_free() -> int:
    st = os.statvfs(shm_dir())
    return st.f_bavail * st.f_frsize


class Handlers:
    """What the daemon answers. ``peer``: (uid, gid, pid) of the process whose request is
    being handled, as the kernel tells it on an ipc endpoint (None elsewhere), set by the
    server before each request; ``requests``: messages received (the server counts them)."""

    def __init__(self, endpoint: str, registry: Registry, files: SegmentFiles, broken: BrokenTags,
                 rates: WriteRates, *, max_bytes: int | None, max_tags: int, max_clients: int) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.files = files
        self.broken = broken
        self.rates = rates
        self.max_bytes = max_bytes
        self.max_tags = max_tags
        self.max_clients = max_clients
        self.requests = 0
        self.started = time.monotonic()
        self.peer: tuple[int, int, int] | None = None
        self.writer_uids: dict[str, int] = {}  # tag -> uid of its last claimant
        # One handler per op of the protocol's table, and no other: op_<name>.
        self.table: dict[str, Handler] = {name: getattr(self, "op_" + name) for name in OPS}

    def reply(self, body: bytes) -> bytes:
        """The reply to one request's body: a result, or an error with its code."""
        try:
            req = decode_request(body)
        except RequestError as exc:
            return encode_error(exc.req_id, exc.code, exc.message)
        try:
            result = self.table[req.op](req)
            if not isinstance(result, OPS[req.op].reply):  # (what the client will check)
                raise TypeError(f"op_{req.op} returned a {type(result).__name__}, "
                                f"not a {OPS[req.op].reply.__name__}")
            return encode_result(req.id, result)
        except RequestError as exc:
            return encode_error(req.id, exc.code, exc.message)
        except Exception as exc:  # a bug must not take the registry down with it
            log.exception("internal error on a %r request", req.op)
            return encode_error(req.id, ErrorCode.INTERNAL, f"internal daemon error: {exc!r}")

    def op_ping(self, req: Request) -> Ping:
        return Ping(daemon=__version__, protocol=PROTOCOL, layout=SEGMENT_LAYOUT, pid=os.getpid(),
                    endpoint=self.endpoint, prefix=self.files.prefix)

    def op_stats(self, req: Request) -> Stats:
        return Stats(requests=self.requests, tags=len(self.registry.tags),
                     bytes=self._bytes_in_use(), uptime_s=time.monotonic() - self.started)

    def op_list(self, req: Request) -> Listing:
        return list_tags(self.registry, self.files, self.rates, self.broken)

    def _check_pid(self, pid: int, req_id: int) -> None:
        """On ipc, the kernel tells who connected (SO_PEERCRED): a handle registers its own
        process, never a made-up or another's pid (which would hold a tag for as long as
        that process lives, or take over a writer's)."""
        if self.peer is not None and pid != self.peer[2]:
            raise RequestError(ErrorCode.BAD_REQUEST, (
                f"field 'pid': {pid} is not the process asking (pid {self.peer[2]} by its "
                "socket's credentials); a handle registers its own process (a client in "
                "another pid namespace cannot share this daemon)"), req_id)

    def op_claim(self, req: Request) -> Claimed:
        a = req.args
        self._check_pid(a["pid"], req.id)
        self._check_limits(a["tag"], req.id)
        rec = self.registry.claim(a["tag"], a["pid"], a["token"], _alive)
        if self.peer is not None:
            self.writer_uids[a["tag"]] = self.peer[0]
        self.broken.forget(a["tag"])  # a new writer: the old story is over
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
            note = self.broken.note(a["tag"])
            if note is None:
                raise
            raise RequestError(exc.code, f"{note}; open a new writer", req.id) from None
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
        note = self.broken.note(req.args["tag"]) if rec is None else None
        if note is not None:
            return Lookup(segment=None, removed=note)
        return Lookup(segment=None if rec is None else rec.segment_info())

    def op_remove(self, req: Request) -> Removed:
        rec = self.registry.tags.get(req.args["tag"])
        if self.peer is not None and self.peer[0] not in (os.geteuid(), 0) and rec is not None \
                and self.writer_uids.get(rec.tag) != self.peer[0]:
            # --group: a member removes only tags a process of its own user wrote last.
            raise RequestError(ErrorCode.FORBIDDEN, (
                f"tag {rec.tag!r} was last written by another user (uid "
                f"{self.writer_uids.get(rec.tag, os.geteuid())}); only that user or the "
                f"daemon's owner (uid {os.geteuid()}) may remove it"), req.id)
        self.writer_uids.pop(req.args["tag"], None)
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


    def _bytes_in_use(self) -> int:
        return sum(r.size for r in self.registry.tags.values())
