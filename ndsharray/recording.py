"""Record a tag's frames to a file numpy opens, and replay such a file into a tag.

``.npy``: the frames stacked, shape ``(n, *frame_shape)`` (one shape: the recording stops
when it changes). ``.npz`` (a zip of ``.npy`` members, ``np.load`` opens it without
pickle): ``timestamps_ns`` (when each frame was written, monotonic ns, first frame = 0),
``write_counts``, and the frames: ``frames`` stacked while every frame has one dtype and
shape, else ``frame_000000``, ``frame_000001``, ... one member per frame in its own dtype
and shape (layout 3 lets a writer change them on every frame); ``meta_json``, when any frame
carried metadata, a JSON list with each frame's (null, a dict, or ``{"$bytes": base64}``).
Replay uses the timestamps to reproduce the recorded timing and publishes each frame's
metadata with it.
"""

from __future__ import annotations

import base64
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import NdShArray
from .errors import UsageError

FRAME_MEMBER = "frame_{:06d}"


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
    KeyboardInterrupt, or, for a .npy file (one shape), when the shape or dtype changes;
    a .npz file keeps every frame's own shape and every frame's metadata. Raises
    ``TimeoutError`` if no frame arrives in ``first_frame_timeout``. ``shape`` and ``dtype``
    of the result are the first frame's.
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
        for leftover in (part, part + ".zip"):
            if os.path.exists(leftover):
                os.unlink(leftover)  # an error or interrupt leaves no half-written file behind


def _record(
    tag: str, path: str, part: str, *, frames: int | None, seconds: float | None,
    endpoint: str | None, progress: Callable[[int], None] | None, first_frame_timeout: float,
    idle_timeout: float | None,
) -> Recording:
    """:func:`record`'s work, writing the frames to ``part`` (which record() removes)."""
    stamps: list[int] = []
    counts: list[int] = []
    metas: list[Any] = []
    dropped = 0
    why = "done"
    zf: _Members | None = None  # once the shape changed (.npz): one member per frame
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
                if zf is None and (a.shape != shape or a.dtype != dtype):
                    if path.endswith(".npy"):
                        why = f"the writer changed to {a.dtype} {a.shape} (a .npy file holds one shape: record to .npz)"
                        break
                    out.flush()
                    zf = _Members(part + ".zip", _stacked(part, dtype, shape, len(stamps)))
                if _segment_of(r.ndarray_mmap_name) == _segment_of(segment) and counts:
                    dropped += max(0, r.write_count - counts[-1] - 1)
                segment = r.ndarray_mmap_name
                if zf is None:
                    out.write(np.ascontiguousarray(a).data)
                else:
                    zf.add(a)
                metas.append(getattr(r, "meta", None))
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
    if zf is not None:
        return _save_members(zf, path, stamps, counts, metas, Recording(
            path, n, dropped, tuple(shape), str(dtype), elapsed, why))
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
                members = {"frames": raw, "timestamps_ns": ts - ts[0],
                           "write_counts": np.asarray(counts, np.int64)}
                if any(m is not None for m in metas):
                    members["meta_json"] = _meta_json(metas)
                np.savez(f, **members)
        os.replace(saving, path)
    finally:
        del raw
        if os.path.exists(saving):
            os.unlink(saving)
    return Recording(path, n, dropped, tuple(shape), str(dtype), elapsed, why)


def _segment_of(mmap_name: str | None) -> str | None:
    """The segment an ``ndarray_mmap_name`` names (it adds ``:<shape generation>`` once the
    writer changed shape or dtype within the segment)."""
    return None if mmap_name is None else mmap_name.split(":")[0]


def _stacked(part: str, dtype: np.dtype[Any], shape: tuple[int, ...], n: int) -> Any:
    """The frames written so far to the raw file ``part``, one by one."""
    if not n:
        return []
    if not dtype.itemsize:
        return [np.zeros(shape, dtype)] * n
    return np.memmap(part, dtype=dtype, mode="r", shape=(n, *shape))


class _Members:
    """A .npz being written member by member (frames of changing shapes), uncompressed:
    each frame goes to disk as it comes, as the raw file does for one shape."""

    def __init__(self, path: str, first: Any) -> None:
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.path = path
        self.n = 0
        for a in first:
            self.add(a)

    def add(self, a: np.ndarray[Any, Any], name: str | None = None) -> None:
        with self.zip.open((name or FRAME_MEMBER.format(self.n)) + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        if name is None:
            self.n += 1


def _meta_json(metas: list[Any]) -> np.ndarray[Any, Any]:
    out = [{"$bytes": base64.b64encode(m).decode()} if isinstance(m, bytes) else m for m in metas]
    return np.array(json.dumps(out))


def _metas_from(text: str) -> list[Any]:
    out = json.loads(text)
    if not isinstance(out, list):
        raise UsageError("meta_json of the recording is not a list")
    return [base64.b64decode(m["$bytes"]) if isinstance(m, dict) and set(m) == {"$bytes"} else m for m in out]


def _save_members(zf: _Members, path: str, stamps: list[int], counts: list[int], metas: list[Any],
                  rec: Recording) -> Recording:
    ts = np.asarray(stamps, np.int64)
    zf.add(ts - ts[0], "timestamps_ns")
    zf.add(np.asarray(counts, np.int64), "write_counts")
    if any(m is not None for m in metas):
        zf.add(_meta_json(metas), "meta_json")
    zf.zip.close()
    os.replace(zf.path, path)
    return rec


def load(path: str) -> tuple[Any, np.ndarray[Any, Any] | None]:
    """The frames of a recording (an array, or a list of arrays of their own shapes) and
    its timestamps (ns from the first frame) if it has them.

    :class:`UsageError` for a file numpy reads but that is no recording."""
    frames, stamps, _ = load_with_meta(path)
    return frames, stamps


def load_with_meta(path: str) -> tuple[Any, np.ndarray[Any, Any] | None, list[Any] | None]:
    """:func:`load`, and each frame's metadata (None when the recording has none)."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as z:
                metas = _metas_from(str(z["meta_json"].reshape(-1)[0])) if "meta_json" in z.files else None
                if "frames" in z.files:
                    return z["frames"], z.get("timestamps_ns"), metas
                members = sorted(f for f in z.files if f.startswith("frame_"))
                if members:
                    return [z[f] for f in members], z.get("timestamps_ns"), metas
                names = ", ".join(z.files) or "nothing"
        else:
            return np.load(path, mmap_mode="r"), None, None
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
    frames, stamps, metas = load_with_meta(path)
    if (isinstance(frames, np.ndarray) and frames.ndim < 1) or len(frames) == 0:
        raise UsageError(f"{path} holds no frames")
    if metas is None or len(metas) != len(frames):
        metas = [None] * len(frames)
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
                for frame, at, meta in zip(frames, stamps, metas, strict=True):
                    delay = (start + int(at) - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
                    if meta is None:
                        w.write(frame)
                    else:
                        w.write(frame, meta=meta)
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
