"""The importing half of a bridge: remote tags written into local tags ``<exporter>/<tag>``.

An importer gives each exporter a window of credits (frames it may send) and one more for
each frame that arrives: wire.window() says how many, and how many go back in one message,
by the frames' size (four for small frames, two for big ones; credits.py keeps the
account). A frame that waited on the link (measured on this host's clock: from the credit
it answers, less the time the exporter held that credit) longer than the link needs for a
frame of its size (learnt from the frames taken, pace.py) by more than ``stale_after``,
and by more than that need, is stale: it is dropped and the exporter is asked for its
newest frame instead, so the first frame written after a stall is a current one; a link
that is merely slow (one frame takes longer than ``stale_after`` to cross it) still
carries every frame.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import numpy as np

from .. import framemeta
from ..client import NdShArray, Writer
from ..dtypes import text_to_dtype
from ..errors import NdShArrayError
from ..layout import META_NONE
from . import clocks, pace, wire
from .codecs import CodecError, decode
from .credits import CreditLedger
from .endings import EndingsFile
from .patterns import TagPattern

log = logging.getLogger("ndsharray.bridge")

STALE_AFTER = 0.5  # seconds a frame may be late on the link (beyond its need: pace.py) before it is dropped
REFRESH = 1.0  # no frame this long after a credit: the whole window is granted anew (credits may be lost)
RETRY = 0.5  # seconds before asking again after a frame could not be written
TICK = 0.1
KEEP_ENDED = 256  # ended imports remembered (for their reason), the oldest forgotten first


class ImportStream:
    """One remote tag (``exporter``, ``tag``) written into the local tag ``exporter/tag``."""

    def __init__(self, importer: Importer, exporter: str, tag: str) -> None:
        self.importer, self.exporter, self.tag = importer, exporter, tag
        self.local_tag = f"{exporter}/{tag}"
        self.credit_key = wire.credit_key(exporter, importer.zid, tag)
        self.lock = threading.Lock()
        # Credits decided under the lock wait here, in order, for send() to put them after it
        # is released: a put blocks while Zenoh's tx queue is full (a stalled link), and must
        # not hold up on_token (the link going) or on_frame meanwhile. put_lock keeps their order.
        self.outbox: collections.deque[bytes] = collections.deque()
        self.put_lock = threading.Lock()
        self.writer: Writer | None = None
        self.meta_capacity = 0  # the writer's
        self.ledger = CreditLedger()  # the credits sent and owed, the window (credits.py)
        self.asked_ns = 0  # when the last credit went out (0: none outstanding)
        self.retry_ns = 0  # ask again (force) at this time, after a failed write
        self.fresh_from = 0  # after a stale frame (or a token): answers to credits from this one on are taken
        self.link_pace = 0  # what the link needs per byte, learnt from the frames taken (pace.py; 0: nothing yet)
        self.live = False  # the exporter's token for this tag is up
        self.state = "waiting"  # waiting, live, ended
        self.ended_ns = 0  # when it ended
        self.pruned = False  # forgotten by the importer (a token coming back makes a new one)
        self.reason: str | None = None  # why it ended
        self.error: str | None = None
        self.frames = self.bytes = self.stale = self.errors = 0
        self.written = (0, 0)  # (source count, wall-clock write time) of the last frame written here
        self.stamp = 0  # the write time (monotonic) of the last frame written here
        self.source_count = 0  # the source writer's write_count of the last frame
        self.source_age_ns = 0  # its age when the exporter sent it
        self.link_ns = 0  # the last frame's round trip on the link

    def ask(self, force: bool, count: int = 1, renew: bool = False, withhold: bool = False) -> None:
        """A credit for ``count`` frames, and for those owed (under the lock): queued for
        :meth:`send`, which every caller of ask() runs once it has released the lock.
        ``renew``, ``withhold``: as CreditLedger.grant() takes them."""
        now = time.monotonic_ns()
        credit, count = self.ledger.grant(now, count, renew, withhold)
        self.asked_ns, self.retry_ns = now, 0
        self.outbox.append(wire.pack_credit(credit, force, count))

    def send(self) -> None:
        """Put the credits ask() queued, oldest first (outside self.lock)."""
        if not self.outbox:
            return
        with self.put_lock:  # (whoever holds it puts every credit queued, in order)
            while self.outbox:
                # BLOCK, not Zenoh's default for puts (DROP after 1 ms without room in the
                # queue): a busy machine that keeps the tx thread from running for a
                # millisecond would lose credits, and with them the window, for good.
                self.importer.session.put(self.credit_key, self.outbox.popleft(), express=True,
                                          congestion_control=self.importer.zenoh.CongestionControl.BLOCK)

    def _give_back(self, nbytes: int) -> None:
        """A frame of ``nbytes`` arrived: its credit goes back, alone or with the next
        frames' (CreditLedger.give_back)."""
        if self.ledger.give_back(nbytes):
            self.ask(force=False, count=0)
        else:
            self.asked_ns = time.monotonic_ns()  # (tick gives it back if no frame follows)

    def on_frame(self, head: wire.Frame, payload: Any) -> None:
        with self.lock:
            self._take(head, payload)
        self.send()

    def _take(self, head: wire.Frame, payload: Any) -> None:
        """A frame or end of stream (under the lock)."""
        if head.kind == wire.END:
            self._end(f"bridge {self.exporter} stopped" if head.reason == "stopped"
                      else f"source writer on {self.exporter} {head.reason}")
            return
        if not self.live:
            return
        now = time.monotonic_ns()
        sent = self.ledger.answer(head.credit)
        self.asked_ns = 0
        nbytes = len(payload)
        link = 0 if sent is None else now - sent - head.hold_ns
        trusted = self.fresh_from and head.credit >= self.fresh_from
        # Stale: it waited on the link longer than the link needs for a frame of its size
        # (what the frames taken lately needed) by more than stale_after, and by more than
        # that need: a stall, not a link that is merely slow (pace.py). A credit too old to
        # be remembered answers a frame that is stale by now.
        if not trusted and (sent is None or pace.late(self.link_pace, link, nbytes, self.importer.stale_after_ns)):
            # Ask for the newest instead, and take the answer to that whatever its time
            # on the link: it teaches the pace of a link that got slower.
            self.stale += 1
            self.ask(force=True, withhold=self.ledger.replaced)
            if not self.fresh_from:  # (the first of a stall's stale frames: later ones
                self.fresh_from = self.ledger.last  # keep it, or a slow link never settles)
            return
        self.fresh_from = 0
        if sent is not None:
            self.link_pace = pace.learn(self.link_pace, link, nbytes)
        if (head.count, head.write_ns) == self.written:
            # A forced credit is answered with the newest frame even if it went before:
            # written already (a reader would take it for a new one); the credit goes on.
            self._give_back(nbytes)
            return
        try:
            arr = decode(head.codec, payload.to_bytes(), text_to_dtype(head.dtype), head.shape)
        except (CodecError, ValueError, TypeError) as exc:
            self._failed(exc, now)
            return
        try:
            self._write(arr, head)
        except (ValueError, NdShArrayError, TypeError) as exc:
            self._failed(exc, now)
            return
        # The credit back after the write, not before: its put (tens of microseconds)
        # would delay the frame's readers here, and the exporter still holds the rest
        # of its window for the next frames meanwhile.
        self._give_back(nbytes)
        self.error = None
        self.written = (head.count, head.write_ns)
        self.frames += 1
        self.bytes += nbytes
        self.source_count, self.source_age_ns, self.link_ns = head.count, head.age_ns, link
        self.state, self.reason = "live", None

    def _failed(self, exc: Exception, now: int) -> None:
        """A frame that could not be decoded or written: say so once, ask again later."""
        self.errors += 1
        self.ledger.owe()  # (back with the retry's credit, or the next ones')
        if self.error != str(exc):
            log.warning("import %s: %s", self.local_tag, exc)
        self.error = str(exc)
        self.asked_ns = 0
        self.retry_ns = now + int(RETRY * 1e9)

    def _write(self, arr: np.ndarray[Any, Any], head: wire.Frame) -> None:
        """Write the frame and its metadata (the source writer's, as it stored it: a JSON
        dict is stored again as the same compact JSON) into the local tag, opened with the
        source writer's metadata capacity."""
        w = self.writer
        if w is not None and not w.closed and len(head.meta) > self.meta_capacity:
            # (Only when it must: readers here see a writer end. A new source writer with
            # more room, whose end of stream was lost with a bridge that was killed.)
            w.close()
        if w is None or w.closed:
            w = self.writer = NdShArray(self.local_tag, r_w="w", endpoint=self.importer.endpoint,
                                        meta_capacity=head.meta_capacity)
            self.meta_capacity = head.meta_capacity
        # Stamped with the source writer's write time, not this write's (clocks.py).
        stamp = clocks.local_stamp(head.write_ns, self.stamp)
        w._write_stamped(arr, framemeta.decode(None if head.meta_kind == META_NONE else (head.meta_kind, head.meta)),
                         stamp)
        self.stamp = stamp

    def on_token(self, alive: bool) -> bool:
        """The exporter's token for this tag came (``alive``) or went; False if this
        record was forgotten meanwhile (the caller makes a new one)."""
        with self.lock:
            if self.pruned:
                return False
            self.live = alive
            if alive:
                # The newest frame at once, and the next ones (the whole window anew).
                self.ask(force=True, count=self.ledger.window, renew=True)
                # Its answer is the newest frame, with nothing queued before it: taken
                # whatever its time on the link (the first frame teaches the link's pace).
                self.fresh_from = self.ledger.last
            elif self.state != "ended":
                self._end(f"bridge {self.exporter} or the link to it is gone")
        self.send()
        return True

    def _end(self, reason: str) -> None:
        """End of stream (under the lock): close the local writer; readers see it closed."""
        self.state, self.reason, self.asked_ns, self.retry_ns = "ended", reason, 0, 0
        self.ended_ns = time.monotonic_ns()
        if self.writer is not None:
            self.importer.note_endings()  # first: whoever sees the writer closed can read why
            log.info("import %s: end of stream: %s", self.local_tag, reason)
            try:
                self.writer.close()
            except NdShArrayError:
                pass

    def tick(self, now: int) -> None:
        with self.lock:
            if not self.live:
                return
            if self.retry_ns and now > self.retry_ns:
                # Nothing owed: the failed frame's credit was replaced or kept (CreditLedger.owe),
                # so this one is a credit more, and the next frame's is kept instead.
                owed = self.ledger.owed
                self.ask(force=True, count=0 if owed else 1, withhold=not owed)
            elif self.asked_ns and now - self.asked_ns > REFRESH * 1e9:
                # Nothing came for a while: whatever the exporter holds (credits lost with a
                # link that broke, or forgotten with a stream it dropped), it may send a
                # whole window anew; it keeps at most wire.WINDOW (Stream.credits), and
                # frames answering credits from before give none back (CreditLedger.renewed).
                self.ask(force=False, count=self.ledger.window, renew=True)
        self.send()

    def status(self) -> dict[str, Any]:
        w = self.writer
        return {
            "tag": self.local_tag, "exporter": self.exporter, "remote_tag": self.tag, "state": self.state,
            "reason": self.reason, "frames": self.frames, "bytes": self.bytes, "stale_dropped": self.stale,
            "errors": self.errors, "error": self.error, "source_write_count": self.source_count,
            "source_age_s": self.source_age_ns / 1e9, "link_s": self.link_ns / 1e9,
            "dtype": None if w is None or w.dtype is None else str(w.dtype),
            "shape": None if w is None or w.shape is None else list(w.shape),
        }


class Importer:
    def __init__(self, zenoh: Any, session: Any, name: str, zid: str, patterns: list[TagPattern],
                 endpoint: str | None, stale_after: float = STALE_AFTER) -> None:
        self.zenoh, self.session, self.name, self.zid = zenoh, session, name, zid
        self.patterns, self.endpoint = patterns, endpoint
        self.stale_after_ns = int(stale_after * 1e9)
        self.endings = EndingsFile(name, endpoint)
        self.streams: dict[tuple[str, str], ImportStream] = {}
        self.by_key: dict[str, ImportStream] = {}  # frame key -> its stream
        self.headers: dict[bytes, wire.Frame] = {}  # headers seen (wire.unpack_frame), in Zenoh's callback thread
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.decls: list[Any] = []

    def start(self) -> None:
        s = self.session
        self.decls = [
            s.declare_subscriber(wire.frame_key("*", self.zid), self._on_frame),
            s.liveliness().declare_subscriber(wire.tags_key("*"), self._on_token, history=True),
        ]
        self.thread = threading.Thread(target=self._tick_loop, name="bridge-import", daemon=True)
        self.thread.start()

    def wanted(self, exporter: str, tag: str) -> bool:
        return exporter != self.name and any(p.match(f"{exporter}/{tag}") for p in self.patterns)

    def _on_token(self, sample: Any) -> None:
        try:
            exporter, _, tag = wire.split_key(str(sample.key_expr), "tags", with_peer=False)
        except ValueError:
            return
        if self.stopping.is_set() or not self.wanted(exporter, tag):
            return
        alive = sample.kind == self.zenoh.SampleKind.PUT
        while True:
            with self.lock:
                stream = self.streams.get((exporter, tag))
                if stream is None:
                    stream = self.streams[(exporter, tag)] = ImportStream(self, exporter, tag)
            if stream.on_token(alive):
                return

    def _on_frame(self, sample: Any) -> None:
        key = str(sample.key_expr)
        try:
            stream = self.by_key.get(key)
            if stream is None or stream.pruned:
                exporter, _, tag = wire.split_key(key, "frame", with_peer=True)
                with self.lock:  # (as _prune forgets it)
                    stream = self.streams.get((exporter, tag))
                    if stream is not None:
                        self.by_key[key] = stream  # (parsing and checking the key once per tag)
            att = sample.attachment
            if att is None:
                raise ValueError("frame without header")
            head = wire.unpack_frame(att.to_bytes(), self.headers)
        except ValueError as exc:
            log.debug("ignored a frame: %s", exc)
            return
        if stream is not None and not self.stopping.is_set():
            stream.on_frame(head, sample.payload)

    def _tick_loop(self) -> None:
        while not self.stopping.wait(TICK):
            with self.lock:
                streams = list(self.streams.values())
            now = time.monotonic_ns()
            for s in streams:
                s.tick(now)
            self._prune(streams)

    def note_endings(self) -> None:
        """Write why each ended import ended where ``ls``/``info`` look (endings.py)."""
        if self.stopping.is_set():
            return  # (stop() removes the file)
        try:
            self.endings.write(lambda: {s.local_tag: s.reason or "ended" for s in list(self.streams.values())
                                        if s.state == "ended"})
        except OSError as exc:  # (ls then says only "closed")
            log.warning("import: cannot note why tags ended in %s: %s", self.endings.path, exc)

    def _prune(self, streams: list[ImportStream]) -> None:
        """Forget the oldest ended imports beyond KEEP_ENDED (a bridge that sees many
        short-lived tags come and go must not grow without bound)."""
        ended = sorted((s for s in streams if s.state == "ended" and not s.live), key=lambda s: s.ended_ns)
        for s in ended[:max(0, len(ended) - KEEP_ENDED)]:
            with self.lock, s.lock:
                if s.state != "ended" or s.live:
                    continue  # (its token came back meanwhile)
                s.pruned = True
                del self.streams[(s.exporter, s.tag)]
                self.by_key.pop(wire.frame_key(s.exporter, self.zid, s.tag), None)

    def status(self) -> list[dict[str, Any]]:
        with self.lock:
            streams = list(self.streams.values())
        return [s.status() for s in streams]

    def stop(self) -> None:
        self.stopping.set()
        if getattr(self, "thread", None) is not None:
            self.thread.join(TICK + 10)
        for d in self.decls:
            d.undeclare()
        with self.lock:
            streams = list(self.streams.values())
        for s in streams:
            with s.lock:
                s.live = False
                s._end("bridge stopped")
        self.endings.remove()  # (a stopped bridge leaves no file behind)
