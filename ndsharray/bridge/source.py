"""One exported tag: the reader thread that keeps its newest frame, encoded once for
every importer (the exporter's streams send it, see sender.py).

The reader thread reads only when some importer may be sent a frame now, and then reads
the newest: frames written meanwhile are never looked at, so a writer far faster than
the link costs the bridge nothing, and the source writer never waits for the bridge (it
is an ordinary reader of the tag).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import framemeta
from ..client import NdShArray
from ..dtypes import dtype_to_text
from ..errors import NdShArrayError
from ..layout import META_NONE
from . import clocks, wire
from .codecs import Codec, CodecError
from .patterns import TagPattern
from .sender import Stream

if TYPE_CHECKING:
    from .exporter import Exporter

log = logging.getLogger("ndsharray.bridge")

READ_SLICE = 0.25  # longest a reader thread sleeps before it checks whether to stop
END_GRACE = 1.0  # seconds a stream waits for a credit to send a writer's last frame


@dataclass(frozen=True)
class ExportRule:
    """Export the tags ``pattern`` matches, encoded with ``codec``, at most ``max_rate`` Hz."""

    pattern: TagPattern
    codec: Codec = Codec()
    max_rate: float | None = None


@dataclass
class Latest:
    array: np.ndarray[Any, Any]
    seq: int  # this source's count of frames read
    count: int  # the writer's write_count
    write_ns: int  # the writer's write time (this host's monotonic clock)
    wall_ns: int  # the same as wall-clock time: what travels (clocks.py)
    meta: tuple[int, bytes] | None  # the frame's metadata as stored: (kind, bytes), None without
    payload: bytes | None = None  # encoded once, for every importer
    header: bytes | None = None  # the packed header (the per-send fields left 0)


class Source:
    """One exported tag with a live writer: its reader thread and its importers' streams."""

    def __init__(self, exporter: Exporter, tag: str, rule: ExportRule, meta_capacity: int) -> None:
        self.exporter, self.tag, self.rule = exporter, tag, rule
        self.meta_capacity = meta_capacity  # the writer's (the scan keeps it current)
        # One lock; the reader thread waits on ``cond``, each stream's thread on its own
        # condition over the same lock (Stream.wake), so a change wakes only the threads
        # it concerns: a woken thread that finds nothing to do costs the frame's path the
        # CPU and the GIL (2 cores, 4 processes on a frame's way).
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.latest: Latest | None = None
        self.streams: dict[str, Stream] = {}
        self.ending: str | None = None  # why the writer went, once it has
        self.end_by = 0.0  # (monotonic) once ending: the last frame may wait for a credit until then
        self.stopped = False
        self.frames_read = 0
        self.poll_gen = 0  # the reader thread's looks at the tag (a stream's credit waits for the next)
        self.error: str | None = None
        self._kind: tuple[Any, ...] | None = None  # (dtype, shape, dtype text) checked for the codec
        # The last header packed, and what it describes (all but the frame's count and time):
        # frames alike (the usual case) take a copy with those two stamped (wire.restamped).
        self._head: tuple[tuple[Any, ...], bytes] | None = None
        self.reader = NdShArray(tag, r_w="r", endpoint=exporter.endpoint)
        self.thread = threading.Thread(target=self._read_loop, name=f"bridge-read {tag}", daemon=True)
        self.thread.start()
        self.token = exporter.session.liveliness().declare_token(wire.tags_key(exporter.name, tag))

    def _read_loop(self) -> None:
        reader = self.reader
        seq = 0
        try:
            while not self.stopped:
                # Read only for an importer that may be sent a frame now: frames written
                # meanwhile are never looked at (the next read returns the newest), so a
                # writer far faster than the link costs the bridge nothing.
                with self.cond:
                    wait = self._until_ready()
                    if wait:
                        self.cond.wait(min(wait, READ_SLICE))
                        continue
                    # A credit that came since the last look gets the newest frame, not the
                    # one kept from before (which may be from before a stall).
                    catch_up = any(s.grant_gen > self.poll_gen for s in self.streams.values())
                ok, arr = reader.read(timeout=0 if catch_up else READ_SLICE)
                with self.cond:
                    self.poll_gen += 1
                    if not ok:
                        # A stream with a credit granted since the last look waits for this
                        # one before it sends the frame kept (Stream.take): it may now.
                        self.wake_streams()
                        continue
                    seq += 1
                    latest = self.latest = self._took(arr, seq)
                    self.frames_read = seq
                    # One importer (the usual case) with its credit in hand: send from this
                    # thread, sparing the hand-over to the stream's thread (most of the
                    # bridge's own latency). With several, each stream's thread sends, so
                    # that one stalled link never holds up the others.
                    inline = next(iter(self.streams.values())) if len(self.streams) == 1 else None
                    grant = None if inline is None else inline.take(latest)
                    if grant is None:
                        self.wake_streams()
                if inline is not None and grant is not None:
                    try:
                        inline.send(latest, *grant, inline=True)
                    except Exception as exc:  # a link or session gone: the stream's thread sees it too
                        log.warning("export %s: %s", self.tag, exc)
        except NdShArrayError as exc:  # the tag was removed, the daemon went: the scan ends it
            if not self.stopped:
                log.info("export %s: reader stopped: %s", self.tag, exc)

    def _took(self, arr: np.ndarray[Any, Any], seq: int) -> Latest:
        """The frame the reader just read: the view, its count, write time and metadata (which
        its pin carries, so they always belong to this very frame)."""
        r = self.reader
        stamp = r.write_time_ns
        return Latest(arr, seq, r.write_count, stamp, clocks.wall_of(stamp), framemeta.carried(arr, "meta", None))

    def _until_ready(self) -> float:
        """Seconds until a stream may take a frame (0: one may now); under the lock."""
        now = time.monotonic_ns()
        best = READ_SLICE
        for s in self.streams.values():
            if s.credits and not s.sending:
                best = min(best, max(0.0, (s.next_ns - now) / 1e9))
        return best

    def encoded(self, latest: Latest) -> tuple[bytes, bytes] | None:
        """(packed header, payload) of ``latest``, encoded once; None when the codec refuses it."""
        with self.cond:
            if latest.payload is not None and latest.header is not None:
                return latest.header, latest.payload
        arr = latest.array
        try:
            kind = (arr.dtype, arr.shape)
            checked = self._kind  # (read once: another stream's thread may set it meanwhile)
            if checked is None or checked[:2] != kind:  # once per shape and dtype
                self.rule.codec.check(arr.dtype, arr.shape, self.tag)
                checked = self._kind = (*kind, dtype_to_text(arr.dtype))
            dtype = checked[2]
            payload = self.rule.codec.encode(arr)
        except (CodecError, TypeError, ValueError) as exc:
            if self.error != str(exc):
                log.error("export %s: %s", self.tag, exc)
            self.error = str(exc)
            return None
        self.error = None
        meta_kind, meta = latest.meta or (META_NONE, b"")
        same = (self.rule.codec.kind, dtype, arr.shape, meta_kind, meta, max(self.meta_capacity, len(meta)))
        last = self._head  # (read once: another stream's thread may set it meanwhile)
        if last is not None and last[0] == same:
            packed = wire.restamped(last[1], latest.count, latest.wall_ns)
        else:
            codec, _, shape, _, _, capacity = same
            head = wire.Frame(codec=codec, dtype=dtype, shape=tuple(shape), count=latest.count,
                              write_ns=latest.wall_ns, meta_kind=meta_kind, meta=meta, meta_capacity=capacity)
            packed = head.pack()
            self._head = (same, packed)
        with self.cond:
            latest.header, latest.payload = packed, payload
        return packed, payload

    def credit(self, importer: str, credit: int, force: bool, count: int = 1) -> None:
        with self.cond:
            stream = self.streams.get(importer)
            if stream is None:
                # Only a bridge whose alive token is up gets a stream (a thread and a
                # publisher): its token going drops it; a credit naming anyone else (a late
                # one, or forged by any peer) would keep a stream for good. (Checked under
                # the lock that drop_importer takes after the token went.) Its next credit
                # comes within the importer's REFRESH.
                if self.ending is not None or importer not in self.exporter.peers:
                    return
                stream = self.streams[importer] = Stream(self, importer)
            stream.grant(credit, force, count)
            self.cond.notify()  # (the reader thread waits for a credit too)
            latest = self.latest
            if force or self.ending is not None or (latest is not None and latest.seq > stream.sent_seq):
                stream.wake.notify()  # (else it has nothing to send: the reader's next look wakes it)

    def wake_streams(self) -> None:
        """Wake every stream's thread (under the lock)."""
        for s in self.streams.values():
            s.wake.notify()

    def drop_importer(self, importer: str) -> None:
        with self.cond:
            stream = self.streams.pop(importer, None)
            if stream is not None:
                stream.stopped = True
                stream.wake.notify()

    def end(self, reason: str, grace: float = END_GRACE) -> None:
        """The writer went (or the bridge stops): each stream sends the newest frame it
        has not sent yet when it gets a credit within ``grace`` seconds, then the end of
        stream; the tag's token goes."""
        self.stopped = True
        self.thread.join(READ_SLICE + 5)
        try:  # the writer's last frame, if the reader thread had not seen it yet
            ok, arr = self.reader.read(timeout=0)
            if ok:
                with self.cond:
                    self.frames_read += 1
                    self.latest = self._took(arr, self.frames_read)
        except NdShArrayError:
            pass
        with self.cond:
            self.poll_gen += 1 << 30  # no more looks: streams send what is kept (and see Stream.grant)
            self.ending, self.end_by = reason, min(self.end_by or math.inf, time.monotonic() + grace)
            streams = list(self.streams.values())
            self.wake_streams()
        for s in streams:
            s.thread.join(max(0.0, self.end_by - time.monotonic()) + 5)
        self.token.undeclare()
        with self.cond:
            self.latest = None  # the last view: its slot goes back to the writer
        self.reader.close()

    def hurry(self) -> None:
        """The bridge stops: an end in progress sends its end of stream now, without
        waiting any longer for a credit for the writer's last frame."""
        with self.cond:
            self.end_by = -1.0
            self.wake_streams()

    def status(self) -> dict[str, Any]:
        with self.cond:
            streams = list(self.streams.values())
            latest = self.latest
        return {
            "tag": self.tag, "codec": str(self.rule.codec), "max_rate": self.rule.max_rate,
            "frames_read": self.frames_read, "frames_sent": sum(s.sent for s in streams),
            "bytes_sent": sum(s.bytes for s in streams), "importers": sorted(self.exporter.importer_names(streams)),
            "dtype": None if latest is None else str(latest.array.dtype),
            "shape": None if latest is None else list(latest.array.shape),
            "error": self.error,
        }
