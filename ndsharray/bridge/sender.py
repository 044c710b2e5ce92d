"""Frames of one exported tag to one importer, each against a credit the importer sent.

Each importer grants a window of credits (wire.window(): four for small frames, two for
big ones), and gives them back as frames arrive: a slow or stalled link holds at most
WINDOW frames per importer in flight; frames written meanwhile are skipped (the source keeps only the newest).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING

from . import wire

if TYPE_CHECKING:
    from .source import Latest, Source

log = logging.getLogger("ndsharray.bridge")

WINDOW = wire.WINDOW  # credits an importer may have outstanding (frames in flight to it, at most)


class Stream:
    """Frames of one source to one importer, in order, each against a credit."""

    def __init__(self, source: Source, importer: str) -> None:
        self.source, self.importer = source, importer
        self.wake = threading.Condition(source.lock)  # this stream's thread waits on it
        exp = source.exporter
        zenoh = exp.zenoh
        # BLOCK, not DROP: credit already bounds what is queued to one frame, and a dropped
        # fragment of a large frame would lose the whole frame on a link that has room.
        self.publisher = exp.session.declare_publisher(
            wire.frame_key(exp.name, importer, source.tag), congestion_control=zenoh.CongestionControl.BLOCK,
            express=True, priority=zenoh.Priority.DATA)
        # The importer's credits not used yet, oldest first: (credit id, when it came).
        # At most WINDOW: frames on the link and the next ones ready behind them, so one
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

    def grant(self, credit: int, force: bool, count: int = 1) -> None:  # (under the source's lock)
        # The frame kept may be older than the newest when this stream had no credit (the
        # reader thread may not have looked since: a stall) or the importer asks for the
        # newest (force): then it waits for the reader thread's next look. A credit that
        # comes while the stream still holds one (every frame, when the link keeps up)
        # needs no look: the reader thread was looking for this stream all along.
        # (Ending: the reader thread looks no more, what is kept is the writer's last frame.)
        if self.source.ending is not None:
            self.grant_gen = 0
        elif force or not self.credits:
            self.grant_gen = self.source.poll_gen + 1
        now = time.monotonic_ns()
        self.credits.extend((credit, now) for _ in range(count))
        self.force = self.force or force

    def take(self, latest: Latest) -> tuple[int, int] | None:
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

    def send(self, latest: Latest, credit: int, credit_ns: int, inline: bool = False) -> None:
        """Send ``latest`` against ``credit`` (taken with :meth:`take`), outside the lock;
        ``inline``: from the source's reader thread, not this stream's."""
        src = self.source
        got = None
        try:
            got = src.encoded(latest)
            if got is not None:
                head, payload = got
                now = time.monotonic_ns()
                self.publisher.put(payload, attachment=wire.stamped(head, credit, now - credit_ns,
                                                                    max(0, now - latest.write_ns)))
                self.sent += 1
                self.bytes += len(payload)
        finally:
            with src.cond:
                self.sending = False
                if got is None:  # not sendable: keep the credit for the next frame
                    self.credits.appendleft((credit, credit_ns))
                elif self.period_ns:
                    self.next_ns = time.monotonic_ns() + self.period_ns
                if not inline:
                    src.cond.notify()  # (the reader thread may wait for this send to end)
                elif self.force or src.ending is not None:
                    # This stream's thread could act now only on a credit forced meanwhile
                    # or an end (no frame was read meanwhile: the reader thread sent this
                    # one); waking it for nothing after each frame cost the frame's path
                    # CPU and the GIL (tests/test_bridge.py counts its wake-ups).
                    self.wake.notify()

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

    def _wait(self, src: Source) -> tuple[Latest, tuple[int, int]] | None:
        """The frame to send next and its credit, once both are there (under the lock);
        None when this stream ends."""
        while True:
            if self.stopped:
                return None
            latest = src.latest
            fresh = latest is not None and (latest.seq > self.sent_seq or self.force)
            end_by = None if src.ending is None else src.end_by
            if end_by is not None and not self.sending and (not fresh or time.monotonic() > end_by):
                return None
            timeout = None
            if latest is not None and fresh:
                grant = self.take(latest)
                if grant is not None:
                    return latest, grant
                wait_ns = self.next_ns - time.monotonic_ns()
                if self.credits and not self.sending and wait_ns > 0:  # --max-rate holds it back
                    timeout = wait_ns / 1e9
                # (Otherwise the reader thread's next look, which notifies: waiting for it with
                # a timeout of 0, as before, spun a core for up to READ_SLICE.)
            if end_by is not None:
                left = max(0.0, end_by - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            self.wake.wait(timeout)
