"""Record a tag's frames to a file numpy opens, and replay such a file into a tag.

``.npy``: the frames stacked, shape ``(n, *frame_shape)``. ``.npz``: ``frames`` plus
``timestamps_ns`` (when each frame was written, monotonic ns, first frame = 0) and
``write_counts``; replay uses the timestamps to reproduce the recorded timing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import NdShArray
from .errors import UsageError


@dataclass(frozen=True)
class Recording:
    path: str
    frames: int
    dropped: int  # writes published while the recorder was busy (disk slower than writer)
    shape: tuple[int, ...]
    dtype: str
    seconds: float
    stopped_because: str


def check_path(path: str) -> None:
    """Raise :class:`UsageError` (a ValueError) unless ``path`` names a file :func:`record` can write."""
    if not path.endswith((".npy", ".npz")):
        raise UsageError(f"record to a .npy or .npz file, not {path!r}")


def record(
    tag: str,
    path: str,
    *,
    frames: int | None = None,
    seconds: float | None = None,
    endpoint: str | None = None,
    progress: Callable[[int], None] | None = None,
    first_frame_timeout: float = 10.0,
    idle_timeout: float | None = None,
) -> Recording:
    """Capture every frame published under ``tag`` into ``path`` (.npy or .npz).

    Blocks on each next frame (no busy loop). Stops after ``frames`` frames, after
    ``seconds`` seconds, after ``idle_timeout`` seconds without a new frame, on
    KeyboardInterrupt, or when the shape or dtype changes (a file holds one shape). Raises
    ``TimeoutError`` if no frame arrives in ``first_frame_timeout``.
    """
    check_path(path)
    if frames is not None and frames < 1:
        raise UsageError("frames must be at least 1")
    part = path + ".part"
    try:
        return _record(tag, path, part, frames=frames, seconds=seconds, endpoint=endpoint,
                       progress=progress, first_frame_timeout=first_frame_timeout,
                       idle_timeout=idle_timeout)
    finally:
        if os.path.exists(part):
            os.unlink(part)  # an error or interrupt leaves no half-written file behind


def _record(
    tag: str, path: str, part: str, *, frames: int | None, seconds: float | None,
    endpoint: str | None, progress: Callable[[int], None] | None, first_frame_timeout: float,
    idle_timeout: float | None,
) -> Recording:
    """:func:`record`'s work, writing the frames to ``part`` (which record() removes)."""
    stamps: list[int] = []
    counts: list[int] = []
    dropped = 0
    why = "done"
    with NdShArray(tag, r_w="r", endpoint=endpoint) as r, open(part, "wb") as out:
        t_end = None if seconds is None else time.monotonic() + seconds  # from the start
        wait: float | None = first_frame_timeout if seconds is None else min(first_frame_timeout, seconds)
        status, a = r.read(copy=False, timeout=wait)
        if not status:
            raise TimeoutError(f"no frame was published under {tag!r} within {wait:g} s "
                               "(see ndsharray ls for the tags that exist)")
        shape, dtype, segment = a.shape, a.dtype, r.ndarray_mmap_name
        t0 = time.monotonic()
        try:
            while True:
                if a.shape != shape or a.dtype != dtype:
                    why = f"the writer changed to {a.dtype} {a.shape}"
                    break
                if r.ndarray_mmap_name == segment and counts:
                    dropped += max(0, r.write_count - counts[-1] - 1)
                segment = r.ndarray_mmap_name
                out.write(np.ascontiguousarray(a).data)
                stamps.append(r.write_time_ns)
                counts.append(r.write_count)
                del a
                if progress is not None:
                    progress(len(stamps))
                if frames is not None and len(stamps) >= frames:
                    break
                left = None if t_end is None else t_end - time.monotonic()
                if left is not None and left <= 0:
                    break
                wait = left
                if idle_timeout is not None:
                    wait = idle_timeout if left is None else min(left, idle_timeout)
                status, a = r.read(timeout=wait)
                if not status:
                    if r.closed:
                        why = "the reader was closed"
                    elif idle_timeout is not None and wait == idle_timeout:
                        why = f"no new frame for {idle_timeout:g} s"
                    break
        except KeyboardInterrupt:
            why = "interrupted"
        elapsed = time.monotonic() - t0
    n = len(stamps)
    raw = np.memmap(part, dtype=dtype, mode="r", shape=(n, *shape)) if n and dtype.itemsize else \
        np.zeros((n, *shape), dtype)
    # Written beside, then renamed: an interrupt or error while saving (a copy of the whole
    # recording) leaves no truncated file under the name asked for.
    saving = path + ".saving"
    try:
        with open(saving, "wb") as f:
            if path.endswith(".npy"):
                np.save(f, raw)
            else:
                ts = np.asarray(stamps, np.int64)
                np.savez(f, frames=raw, timestamps_ns=ts - ts[0], write_counts=np.asarray(counts, np.int64))
        os.replace(saving, path)
    finally:
        del raw
        if os.path.exists(saving):
            os.unlink(saving)
    return Recording(path, n, dropped, tuple(shape), str(dtype), elapsed, why)


def load(path: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """The frames of a recording and its timestamps (ns from the first frame) if it has them.

    :class:`UsageError` for a file numpy reads but that is no recording."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as z:
                if "frames" in z.files:
                    return z["frames"], z.get("timestamps_ns")
                names = ", ".join(z.files) or "nothing"
        else:
            return np.load(path, mmap_mode="r"), None
    except ValueError as exc:  # (pickled objects, a bad header)
        raise UsageError(f"{path} is not a recording numpy reads without pickle: {exc}") from None
    raise UsageError(f"{path} holds no frames, only {names}: not a file of ndsharray record")


def replay(
    path: str,
    tag: str,
    *,
    rate: float | None = None,
    loop: bool = False,
    endpoint: str | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Publish a recording's frames under ``tag``; returns how many were written.

    Timing: ``rate`` frames per second if given, else the recorded timestamps (.npz), else
    30 Hz. ``loop`` starts over at the end until ``should_stop()`` or KeyboardInterrupt.
    """
    frames, stamps = load(path)
    if frames.ndim < 1 or len(frames) == 0:
        raise UsageError(f"{path} holds no frames")
    if rate is not None and rate <= 0:
        raise UsageError("rate must be positive")
    if rate is not None or stamps is None:
        stamps = (np.arange(len(frames)) * (1e9 / (rate or 30.0))).astype(np.int64)
    period = int(stamps[-1] + (stamps[-1] // max(1, len(stamps) - 1) if len(stamps) > 1 else 1e9 / 30))
    written = 0
    with NdShArray(tag, r_w="w", endpoint=endpoint) as w:
        start = time.monotonic_ns()
        try:
            while True:
                for frame, at in zip(frames, stamps, strict=True):
                    delay = (start + int(at) - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
                    w.write(frame)
                    written += 1
                    if progress is not None:
                        progress(written)
                    if should_stop():
                        return written
                if not loop:
                    return written
                start += period
        except KeyboardInterrupt:
            return written
