"""The exporting half of a bridge: local tags out to the importers that ask for them.

Latest value, never a backlog: each exported tag has one reader thread that keeps only
the newest frame, and each importer gets frames by credit (it grants two, and one more for
each frame it receives). A slow or stalled link therefore holds at most two frames per
importer in flight; frames written meanwhile are skipped, and the source writer never
waits for anything the bridge does (the bridge is an ordinary reader of its tag).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..admin import TagInfo, list_tags
from ..client import NdShArray
from ..dtypes import dtype_to_text
from ..errors import NdShArrayError
from . import wire
from .codecs import Codec, CodecError
from .patterns import TagPattern

log = logging.getLogger("ndsharray.bridge")

SCAN_PERIOD = 0.2  # seconds between looks at the daemon's tag list (new tags, writers gone)
READ_SLICE = 0.25  # longest a reader thread sleeps before it checks whether to stop
END_GRACE = 1.0  # seconds a stream waits for a credit to send a writer's last frame
WINDOW = 2  # credits an importer may have outstanding (frames in flight to it, at most)


@dataclass(frozen=True)
class ExportRule:
    """Export the tags ``pattern`` matches, encoded with ``codec``, at most ``max_rate`` Hz."""

    pattern: TagPattern
    codec: Codec = Codec()
    max_rate: float | None = None


@dataclass
class _Latest:
    array: np.ndarray[Any, Any]
    seq: int  # this source's count of frames read
    count: int  # the writer's write_count
    write_ns: int
    payload: bytes | None = None  # encoded once, for every importer
    header: wire.Frame | None = None


class Source:
    """One exported tag with a live writer: its reader thread and its importers' streams."""

    def __init__(self, exporter: Exporter, tag: str, rule: ExportRule) -> None:
        self.exporter, self.tag, self.rule = exporter, tag, rule
        self.cond = threading.Condition()
        self.latest: _Latest | None = None
        self.streams: dict[str, Stream] = {}
        self.ending: str | None = None  # why the writer went, once it has
        self.grace = END_GRACE
        self.stopped = False
        self.frames_read = 0
        self.poll_gen = 0  # the reader thread's looks at the tag (a stream's credit waits for the next)
        self.error: str | None = None
        self._kind: tuple[Any, ...] | None = None  # (dtype, shape, dtype text) checked for the codec
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
                        if catch_up:
                            self.cond.notify_all()  # (a forced resend may take the one kept)
                        continue
                    seq += 1
                    latest = self.latest = _Latest(arr, seq, reader.write_count, reader.write_time_ns)
                    self.frames_read = seq
                    # One importer (the usual case) with its credit in hand: send from this
                    # thread, sparing the hand-over to the stream's thread (most of the
                    # bridge's own latency). With several, each stream's thread sends, so
                    # that one stalled link never holds up the others.
                    inline = next(iter(self.streams.values())) if len(self.streams) == 1 else None
                    grant = None if inline is None else inline.take(latest)
                    if grant is None:
                        self.cond.notify_all()
                if inline is not None and grant is not None:
                    try:
                        inline.send(latest, *grant)
                    except Exception as exc:  # a link or session gone: the stream's thread sees it too
                        log.warning("export %s: %s", self.tag, exc)
        except NdShArrayError as exc:  # the tag was removed, the daemon went: the scan ends it
            if not self.stopped:
                log.info("export %s: reader stopped: %s", self.tag, exc)

    def _until_ready(self) -> float:
        """Seconds until a stream may take a frame (0: one may now); under the lock."""
        now = time.monotonic_ns()
        best = READ_SLICE
        for s in self.streams.values():
            if s.credits and not s.sending:
                best = min(best, max(0.0, (s.next_ns - now) / 1e9))
        return best

    def encoded(self, latest: _Latest) -> tuple[wire.Frame, bytes] | None:
        """(header, payload) of ``latest``, encoded once; None when the codec refuses it."""
        with self.cond:
            if latest.payload is not None and latest.header is not None:
                return latest.header, latest.payload
        arr = latest.array
        try:
            kind = (arr.dtype, arr.shape)
            if self._kind is None or self._kind[:2] != kind:  # once per shape and dtype
                self.rule.codec.check(arr.dtype, arr.shape, self.tag)
                self._kind = (*kind, dtype_to_text(arr.dtype))
            dtype = self._kind[2]
            payload = self.rule.codec.encode(arr)
        except (CodecError, TypeError, ValueError) as exc:
            if self.error != str(exc):
                log.error("export %s: %s", self.tag, exc)
            self.error = str(exc)
            return None
        self.error = None
        head = wire.Frame(codec=self.rule.codec.kind, dtype=dtype, shape=tuple(arr.shape), count=latest.count,
                          write_ns=latest.write_ns)
        with self.cond:
            latest.header, latest.payload = head, payload
        return head, payload

    def credit(self, importer: str, credit: int, force: bool) -> None:
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
            stream.grant(credit, force)
            self.cond.notify_all()  # (the reader thread waits for a credit too)

    def drop_importer(self, importer: str) -> None:
        with self.cond:
            stream = self.streams.pop(importer, None)
            if stream is not None:
                stream.stopped = True
                self.cond.notify_all()

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
                    self.latest = _Latest(arr, self.frames_read, self.reader.write_count, self.reader.write_time_ns)
        except NdShArrayError:
            pass
        with self.cond:
            self.poll_gen += 1 << 30  # no more looks: streams send what is kept
        with self.cond:
            self.ending, self.grace = reason, grace
            streams = list(self.streams.values())
            self.cond.notify_all()
        for s in streams:
            s.thread.join(grace + 5)
        self.token.undeclare()
        with self.cond:
            self.latest = None  # the last view: its slot goes back to the writer
        self.reader.close()

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


class Stream:
    """Frames of one source to one importer, in order, each against a credit."""

    def __init__(self, source: Source, importer: str) -> None:
        self.source, self.importer = source, importer
        exp = source.exporter
        zenoh = exp.zenoh
        # BLOCK, not DROP: credit already bounds what is queued to one frame, and a dropped
        # fragment of a large frame would lose the whole frame on a link that has room.
        self.publisher = exp.session.declare_publisher(
            wire.frame_key(exp.name, importer, source.tag), congestion_control=zenoh.CongestionControl.BLOCK,
            express=True, priority=zenoh.Priority.DATA)
        # The importer's credits not used yet, oldest first: (credit id, when it came).
        # At most WINDOW: one frame on the link and the next one ready behind it, so one
        # slow frame does not cost the next, and a stall still holds at most WINDOW frames.
        self.credits: collections.deque[tuple[int, int]] = collections.deque(maxlen=WINDOW)
        self.force = False
        self.sent_seq = 0
        self.next_ns = 0  # --max-rate: not before this
        self.period_ns = int(1e9 / source.rule.max_rate) if source.rule.max_rate else 0
        self.sending = False  # a send is in progress (sends of one stream never overlap)
        self.grant_gen = 0  # frames the source read before its look number grant_gen are too old for it
        self.sent = 0
        self.bytes = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name=f"bridge-send {source.tag}", daemon=True)
        self.thread.start()

    def grant(self, credit: int, force: bool) -> None:  # (under the source's lock)
        self.credits.append((credit, time.monotonic_ns()))
        self.grant_gen = self.source.poll_gen + 1
        self.force = self.force or force

    def take(self, latest: _Latest) -> tuple[int, int] | None:
        """Take this stream's credit for ``latest`` if it may go now (under the source's
        lock): (credit id, when it came); None if not (no credit, sent already, a send in
        progress, or too soon for --max-rate)."""
        if (self.sending or not self.credits or (latest.seq <= self.sent_seq and not self.force)
                or self.source.poll_gen < self.grant_gen
                or time.monotonic_ns() < self.next_ns):
            return None
        self.force = False
        self.sending = True
        self.sent_seq = latest.seq
        return self.credits.popleft()

    def send(self, latest: _Latest, credit: int, credit_ns: int) -> None:
        """Send ``latest`` against ``credit`` (taken with :meth:`take`), outside the lock."""
        src = self.source
        got = None
        try:
            got = src.encoded(latest)
            if got is not None:
                head, payload = got
                now = time.monotonic_ns()
                head = wire.Frame(head.kind, head.codec, head.dtype, head.shape, head.count, head.write_ns,
                                  max(0, now - head.write_ns), credit, now - credit_ns)
                self.publisher.put(payload, attachment=head.pack())
                self.sent += 1
                self.bytes += len(payload)
        finally:
            with src.cond:
                self.sending = False
                if got is None:  # not sendable: keep the credit for the next frame
                    self.credits.appendleft((credit, credit_ns))
                elif self.period_ns:
                    self.next_ns = time.monotonic_ns() + self.period_ns
                src.cond.notify_all()

    def _loop(self) -> None:
        src = self.source
        try:
            while True:
                with src.cond:
                    got = self._wait(src)
                    if got is None:
                        break
                    latest, grant = got
                self.send(latest, *grant)
            if src.ending is not None and not self.stopped:
                end = wire.Frame(wire.END, reason=src.ending, count=src.frames_read)
                self.publisher.put(b"", attachment=end.pack())
        except Exception as exc:  # a session closed under us (stop), a link gone: this stream ends
            if not self.stopped and not src.stopped:
                log.warning("export %s to %s: %s", src.tag, self.importer, exc)
        finally:
            try:
                self.publisher.undeclare()
            except Exception:
                pass

    def _wait(self, src: Source) -> tuple[_Latest, tuple[int, int]] | None:
        """The frame to send next and its credit, once both are there (under the lock);
        None when this stream ends."""
        end_by = None
        while True:
            if self.stopped:
                return None
            latest = src.latest
            fresh = latest is not None and (latest.seq > self.sent_seq or self.force)
            if src.ending is not None and not self.sending:
                if not fresh:
                    return None
                end_by = end_by or time.monotonic() + src.grace
                if time.monotonic() > end_by:
                    return None
            timeout = None
            if latest is not None and fresh:
                grant = self.take(latest)
                if grant is not None:
                    return latest, grant
                if self.credits and not self.sending:  # only --max-rate holds it back
                    timeout = max(0.0, (self.next_ns - time.monotonic_ns()) / 1e9)
            if end_by is not None:
                left = max(0.0, end_by - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            src.cond.wait(timeout)


class Exporter:
    """Every local tag matching ``rules`` (writer alive, not written by this process)."""

    def __init__(self, zenoh: Any, session: Any, name: str, patterns: list[TagPattern],
                 codecs: list[tuple[TagPattern, Codec]], rates: list[tuple[TagPattern, float]],
                 endpoint: str | None) -> None:
        self.zenoh, self.session, self.name, self.endpoint = zenoh, session, name, endpoint
        self.patterns, self.codecs, self.rates = patterns, codecs, rates
        self.sources: dict[str, Source] = {}
        self.ended: dict[str, str] = {}  # tags whose writer went, and how
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.peers: dict[str, str] = {}  # importer zid -> its bridge's name
        self.decls: list[Any] = []

    def start(self) -> None:
        s = self.session
        self.decls = [
            s.declare_subscriber(wire.credit_key(self.name, "*"), self._on_credit),
            s.liveliness().declare_subscriber(f"{wire.ROOT}/*/alive/*", self._on_alive, history=True),
        ]
        self.scan()
        self.thread = threading.Thread(target=self._scan_loop, name="bridge-scan", daemon=True)
        self.thread.start()

    def rule_for(self, tag: str) -> ExportRule | None:
        """How ``tag`` is exported (the first codec and rate globs matching it), or None."""
        pattern = next((p for p in self.patterns if p.match(tag)), None)
        if pattern is None:
            return None
        codec = next((c for p, c in self.codecs if p.match(tag)), Codec())
        rate = next((r for p, r in self.rates if p.match(tag)), None)
        return ExportRule(pattern, codec, rate)

    def _scan_loop(self) -> None:
        while not self.stopping.wait(SCAN_PERIOD):
            try:
                self.scan()
            except NdShArrayError as exc:  # the daemon restarts: try again next round
                log.warning("export: cannot list tags: %s", exc)

    def scan(self) -> None:
        """Start a source for each matching tag whose writer is alive; end those whose
        writer went (closed or died) or whose tag is gone."""
        me = os.getpid()
        live: dict[str, TagInfo] = {}
        for t in list_tags(self.endpoint):
            if t.writer_pid and t.writer_pid != me and self.rule_for(t.tag) is not None:
                live[t.tag] = t
            elif t.tag in self.sources and t.writer_pid is None:
                self.ended[t.tag] = t.writer_left or "closed"
        for tag, src in list(self.sources.items()):
            if tag not in live or src.thread.is_alive() is False:
                reason = self.ended.get(tag, "gone")
                with self.lock:
                    del self.sources[tag]
                log.info("export %s: writer %s: end of stream", tag, reason)
                src.end(reason)
        for tag in live:
            if tag not in self.sources and not self.stopping.is_set():
                rule = self.rule_for(tag)
                assert rule is not None
                try:
                    src = Source(self, tag, rule)
                except NdShArrayError as exc:
                    log.warning("export %s: %s", tag, exc)
                    continue
                with self.lock:
                    self.sources[tag] = src
                self.ended.pop(tag, None)
                log.info("export %s (%s)", tag, rule.codec)

    def _on_credit(self, sample: Any) -> None:
        try:
            _, importer, tag = wire.split_key(str(sample.key_expr), "credit", with_peer=True)
            credit, force = wire.unpack_credit(sample.payload.to_bytes())
        except ValueError as exc:
            log.debug("ignored a credit: %s", exc)
            return
        with self.lock:
            src = self.sources.get(tag)
        if src is not None:
            src.credit(importer, credit, force)

    def _on_alive(self, sample: Any) -> None:
        parts = str(sample.key_expr).split("/")
        if len(parts) != 4:
            return
        bridge, zid = parts[1], parts[3]
        if sample.kind == self.zenoh.SampleKind.PUT:
            self.peers[zid] = bridge
            return
        self.peers.pop(zid, None)
        with self.lock:
            sources = list(self.sources.values())
        for src in sources:
            src.drop_importer(zid)

    def importer_names(self, streams: list[Stream]) -> list[str]:
        return [self.peers.get(s.importer, s.importer) for s in streams]

    def status(self) -> list[dict[str, Any]]:
        with self.lock:
            sources = list(self.sources.values())
        return [s.status() for s in sources]

    def stop(self) -> None:
        self.stopping.set()
        if getattr(self, "thread", None) is not None:
            self.thread.join(SCAN_PERIOD + 10)
        for d in self.decls:
            d.undeclare()
        with self.lock:
            sources = list(self.sources.values())
            self.sources.clear()
        for src in sources:
            src.end("stopped", grace=0.0)
