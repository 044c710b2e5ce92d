"""One shared reader and encoder per watched tag; latest-value delivery to each browser.

A :class:`Stream` exists while at least one browser watches its tag. Its thread is an
ordinary ``NdShArray(tag, r_w='r')`` reader iterating with blocking reads (a futex wait:
no polling, no CPU between frames), so the writer never waits for the viewer and the
viewer shows in ``ndsharray ls`` like any reader. The thread only keeps the newest frame
(a zero-copy view); it encodes nothing.

Encoding happens on demand, at most one encode per stream at a time: when some browser
is *ready* (it has shown the previous frame it got and said so) and has not seen the last
encoded frame, it gets that one at once (no new work); when it has, the newest frame read
is copied on the event loop (the view goes no further: the writer's slot is pinned for one
memcpy) and encoded in a worker thread, once for every variant the ready browsers want
(``bgr`` or not), and each of them gets that one result. A browser that is not ready when
a frame arrives simply misses it: nothing is queued for it, so a slow browser or network
gets fewer frames, and a tag whose watchers are all busy costs no encoding at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..client import NdShArray
from . import frames

log = logging.getLogger("ndsharray.web")

REOPEN_DELAY = 1.0  # seconds before a stream whose reader failed tries again


@dataclass(frozen=True)
class Frame:
    """The newest frame a stream read, as the reader thread found it."""

    array: np.ndarray[Any, Any]  # a read-only zero-copy view (it pins its slot while held)
    seq: int  # the stream's number for it (write counts start again in a new generation)
    count: int  # the writer's write count of this frame
    write_time_ns: int  # CLOCK_MONOTONIC of the write
    meta: Any


@dataclass
class Encoded:
    """One frame as the page gets it: a JSON header and, for an image, JPEG bytes per
    variant (False: as is, True: BGR channels swapped)."""

    seq: int
    serial: int  # which encode of this stream made it (browsers sharing a stream see the same)
    header: dict[str, Any]
    images: dict[bool, bytes] = field(default_factory=dict)


class Subscriber:
    """One browser watching a stream: at most one frame waits for it, never a queue."""

    def __init__(self, bgr: bool = False) -> None:
        self.bgr = bgr
        self.ready = True  # it has shown the last frame it got
        self.have = 0  # seq of the last frame it got
        self.pending: tuple[Encoded, bytes | None] | None = None
        self.status: dict[str, Any] | None = None  # a message about the stream (an error)
        self.wake = asyncio.Event()

    def take(self) -> tuple[Encoded, bytes | None] | None:
        out, self.pending = self.pending, None
        return out


class Stream:
    """The shared reader of one tag and the browsers watching it."""

    def __init__(self, tag: str, endpoint: str, loop: asyncio.AbstractEventLoop,
                 on_empty: Callable[[Stream], None]) -> None:
        self.tag = tag
        self.endpoint = endpoint
        self.loop = loop
        self.subs: set[Subscriber] = set()
        self.frames_read = 0
        self.encodes = 0
        self.encode_s = 0.0  # time spent encoding, summed
        self._on_empty = on_empty
        self._latest: Frame | None = None  # set by the reader thread (one reference swap)
        self._cache: Encoded | None = None  # the last encode: what a browser that is ready gets first
        self._encoding = False
        self._stop = threading.Event()
        self._reader: NdShArray | None = None
        self._lock = threading.Lock()  # the reader handle between the thread and stop()
        self._thread = threading.Thread(target=self._run, name=f"ndsharray-serve:{tag}", daemon=True)
        self._thread.start()

    @property
    def latest_count(self) -> int | None:
        """The writer's count of the newest frame read (None before one)."""
        frame = self._latest
        return None if frame is None else frame.count

    # ---- the reader thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_all()
            except Exception as exc:  # a corrupt segment, a daemon gone for good: say so, retry
                log.warning("serve: reading %r failed: %s", self.tag, exc)
                self.loop.call_soon_threadsafe(self._tell, {"type": "status", "error": str(exc)})
                self._stop.wait(REOPEN_DELAY)

    def _read_all(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            reader = self._reader = NdShArray(self.tag, r_w="r", endpoint=self.endpoint)
        try:
            for a in reader:  # blocking reads; ends when stop() closes the handle
                self.frames_read += 1
                self._latest = Frame(a, self.frames_read, reader.write_count, reader.write_time_ns,
                                     getattr(reader, "meta", None))
                del a  # the stream keeps the newest view only (one pin)
                self.loop.call_soon_threadsafe(self._pump)
        finally:
            with self._lock:
                self._reader = None
            reader.close()

    def stop(self) -> None:
        """Close the reader (this ends its blocking wait) and forget the frames."""
        self._stop.set()
        with self._lock:
            if self._reader is not None:
                self._reader.close()
        self._latest = self._cache = None

    # ---- the event loop's side ----------------------------------------------------------

    def add(self, sub: Subscriber) -> None:
        self.subs.add(sub)
        self._pump()

    def remove(self, sub: Subscriber) -> None:
        self.subs.discard(sub)
        if not self.subs:
            self._on_empty(self)

    def ready(self, sub: Subscriber, bgr: bool | None = None) -> None:
        """``sub`` has shown its last frame (and maybe switched ``bgr``): it may get the next."""
        if bgr is not None and bgr != sub.bgr:
            sub.bgr = bgr
            sub.have = 0  # show the current frame again in the new order
        sub.ready = True
        self._pump()

    def _tell(self, msg: dict[str, Any]) -> None:
        for sub in self.subs:
            sub.status = msg
            sub.wake.set()

    def _pump(self) -> None:
        """Hand every ready browser the newest frame it has not got: the last encoded one if
        that is newer than its own (shared by all, no new work), else the newest frame read,
        encoded first (once, in a worker thread, for all the browsers waiting for it)."""
        frame = self._latest
        if frame is None or not self.subs:
            return
        cache = self._cache
        if cache is not None:
            for s in self.subs:
                if s.ready and s.have < cache.seq:
                    picture = cache.images.get(s.bgr and cache.header["colour"])
                    if picture is not None or not cache.header["image"]:
                        self._deliver(s, cache, picture)
        waiting = [s for s in self.subs if s.ready and s.have < frame.seq]
        if not waiting:
            return  # nobody ready for a newer frame: this one costs nothing
        if self._encoding:
            return  # the encode in flight calls _pump again when it is done
        view = frame.array
        shape = tuple(view.shape)
        colour = frames.has_colour(shape)
        variants = {s.bgr and colour for s in waiting}
        self._encoding = True
        self.encodes += 1
        # Everything the encoder needs is copied here, right after the read, and the view
        # goes no further: a slot pinned for the encode (~8 ms of each 16 ms at 720p), or
        # while a worker thread waits for the GIL, made the writer grow its ring (3 -> 6
        # slots). A copy of a 720p frame takes 0.25 ms; other arrays give a sample.
        image = frames.image_like(shape, view.dtype)
        header = {
            "type": "frame", "count": frame.count, "serial": self.encodes, "shape": list(shape),
            "dtype": str(view.dtype), "image": image, "colour": colour,
            "age_ms": (time.monotonic_ns() - frame.write_time_ns) / 1e6 if frame.write_time_ns else None,
            "values": None if image else frames.values(view), "meta": frames.jsonable(frame.meta),
        }
        work = _Work(frame.seq, header, frames.sample(view), int(view.size),
                     np.array(view) if image else None, variants)
        del view, frame
        fut = self.loop.run_in_executor(None, _encode, work)
        fut.add_done_callback(self._encoded)

    def _encoded(self, fut: asyncio.Future[tuple[Encoded, float]]) -> None:
        self._encoding = False
        try:
            enc, took = fut.result()
        except Exception as exc:  # an encoder bug must not end the stream
            log.exception("serve: encoding a frame of %r failed", self.tag)
            self._tell({"type": "status", "error": f"encoding failed: {exc}"})
            return
        self.encode_s += took
        cache = self._cache
        if cache is not None and cache.seq == enc.seq:
            cache.images.update(enc.images)  # another variant of the same frame
        else:
            self._cache = enc
        self._pump()

    def _deliver(self, sub: Subscriber, enc: Encoded, image: bytes | None) -> None:
        sub.ready = False
        sub.have = enc.seq
        sub.pending = (enc, image)
        sub.wake.set()


@dataclass
class _Work:
    """An encode's input: copies only, no view of shared memory."""

    seq: int
    header: dict[str, Any]
    sample: np.ndarray[Any, Any]  # for the statistics
    size: int  # the frame's number of elements
    pixels: np.ndarray[Any, Any] | None  # the whole frame, when it is a picture
    variants: set[bool]  # BGR swapped or not


def _encode(work: _Work) -> tuple[Encoded, float]:
    """The statistics and JPEG pictures of a frame (runs in a worker thread)."""
    t0 = time.perf_counter()
    enc = Encoded(work.seq, work.header["serial"], {**work.header, "stats": frames.stats(work.sample, work.size)})
    if work.pixels is not None:
        for bgr in work.variants:
            enc.images[bgr] = frames.jpeg(work.pixels, bgr=bgr)
    return enc, time.perf_counter() - t0


class Hub:
    """Every stream of one server, by tag; a stream ends when its last browser leaves."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.streams: dict[str, Stream] = {}

    def subscribe(self, tag: str, sub: Subscriber) -> Stream:
        stream = self.streams.get(tag)
        if stream is None:
            stream = self.streams[tag] = Stream(tag, self.endpoint, asyncio.get_running_loop(), self._drop)
        stream.add(sub)
        return stream

    def _drop(self, stream: Stream) -> None:
        if self.streams.get(stream.tag) is stream:
            del self.streams[stream.tag]
        # close() may ask the daemon: not on the event loop
        stream.loop.run_in_executor(None, stream.stop)

    def latest(self, tag: str) -> np.ndarray[Any, Any] | None:
        """The newest frame a stream of ``tag`` holds, if one runs (saves a reader)."""
        stream = self.streams.get(tag)
        frame = None if stream is None else stream._latest
        return None if frame is None else frame.array

    def close(self) -> None:
        for stream in list(self.streams.values()):
            stream.stop()
        self.streams.clear()

    def figures(self) -> dict[str, Any]:
        """What each stream did: for ``/api/serve`` and the benchmark."""
        return {tag: {"viewers": len(s.subs), "frames_read": s.frames_read, "encodes": s.encodes,
                      "encode_s": round(s.encode_s, 6), "latest_count": s.latest_count}
                for tag, s in self.streams.items()}


def header_text(enc: Encoded, bgr: bool) -> str:
    """The JSON text sent before a frame's image bytes."""
    return json.dumps({**enc.header, "bgr": bgr})

