"""The exporting half of a bridge: local tags out to the importers that ask for them.

Latest value, never a backlog: each exported tag has one reader thread that keeps only
the newest frame, and each importer gets frames by credit (it grants a window, wire.window(),
and gives them back as frames arrive). A slow or stalled link therefore holds at most WINDOW
frames per importer in flight; frames written meanwhile are skipped, and the source writer never
waits for anything the bridge does (the bridge is an ordinary reader of its tag).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ..admin import TagInfo, list_tags
from ..errors import NdShArrayError
from . import wire
from .codecs import Codec
from .patterns import TagPattern
from .sender import Stream
from .source import END_GRACE, READ_SLICE, ExportRule, Source

log = logging.getLogger("ndsharray.bridge")

SCAN_PERIOD = 0.2  # seconds between looks at the daemon's tag list (new tags, writers gone)


class Exporter:
    """Every local tag matching ``rules`` (writer alive, not written by this process)."""

    def __init__(self, zenoh: Any, session: Any, name: str, patterns: list[TagPattern],
                 codecs: list[tuple[TagPattern, Codec]], rates: list[tuple[TagPattern, float]],
                 endpoint: str | None) -> None:
        self.zenoh, self.session, self.name, self.endpoint = zenoh, session, name, endpoint
        self.patterns, self.codecs, self.rates = patterns, codecs, rates
        self.sources: dict[str, Source] = {}
        self.ending: dict[str, tuple[Source, threading.Thread]] = {}  # tag -> a source ending, its thread
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
        left: dict[str, str] = {}  # tags whose writer went, and how
        for t in list_tags(self.endpoint):
            if t.writer_pid and t.writer_pid != me and self.rule_for(t.tag) is not None:
                live[t.tag] = t
            elif t.tag in self.sources and t.writer_pid is None:
                left[t.tag] = t.writer_left or "closed"
        for tag, src in list(self.sources.items()):
            if tag not in live or src.thread.is_alive() is False:
                with self.lock:
                    del self.sources[tag]
                self._end(src, left.get(tag, "gone"))
        for tag, (_, ender) in list(self.ending.items()):
            if not ender.is_alive():
                del self.ending[tag]
        for tag, t in live.items():
            if tag in self.sources:  # (a writer that reopened may have another capacity)
                self.sources[tag].meta_capacity = t.meta_capacity
            # A tag still ending waits for the next scan: its end of stream goes before
            # the new writer's frames, on the same keys. A tag without a segment yet has
            # nothing to read, and its metadata capacity is not known yet.
            elif tag not in self.ending and t.segment and not self.stopping.is_set():
                rule = self.rule_for(tag)
                assert rule is not None
                try:
                    src = Source(self, tag, rule, t.meta_capacity)
                except NdShArrayError as exc:
                    log.warning("export %s: %s", tag, exc)
                    continue
                with self.lock:
                    self.sources[tag] = src
                log.info("export %s (%s)", tag, rule.codec)

    def _end(self, src: Source, reason: str, grace: float | None = None) -> threading.Thread:
        """End ``src`` in a thread of its own: its last frame may wait up to ``grace`` for a
        credit, and meanwhile the scan goes on for every other tag (starts, ends)."""
        log.info("export %s: writer %s: end of stream", src.tag, reason)
        grace = END_GRACE if grace is None else grace
        ender = threading.Thread(target=src.end, args=(reason, grace), name=f"bridge-end {src.tag}", daemon=True)
        self.ending[src.tag] = (src, ender)
        ender.start()
        return ender

    def _on_credit(self, sample: Any) -> None:
        try:
            _, importer, tag = wire.split_key(str(sample.key_expr), "credit", with_peer=True)
            credit, force, count = wire.unpack_credit(sample.payload.to_bytes())
        except ValueError as exc:
            log.debug("ignored a credit: %s", exc)
            return
        with self.lock:
            src = self.sources.get(tag)
        if src is None:  # (one ending may still wait for a credit to send the writer's last frame)
            src = self.ending.get(tag, (None, None))[0]
        if src is not None:
            src.credit(importer, credit, force, count)

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
        enders = []
        for ending, ender in list(self.ending.values()):
            ending.hurry()  # (its last frame waits for no credit any more)
            enders.append(ender)
        enders += [self._end(src, "stopped", grace=0.0) for src in sources]
        for ender in enders:
            ender.join(READ_SLICE + 10)
