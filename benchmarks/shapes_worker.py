"""One writer or reader process of benchmarks/shapes.py.

    python shapes_worker.py writer|reader IMPL FD_IN FD_OUT SPEC_JSON

``SPEC_JSON``: ``{"runs": [{"key", "shapes", "dtype", "sources"?, "gaps"?}], "mode":
"lockstep"|"flat", "seconds"}`` (``sources``: which source array each frame copies from,
without it one per shape; ``gaps``: per frame, 0 or a number of bytes that the writer
copies and the reader compares instead of that frame, untimed, as a frame of that size
would have moved: see shapes.py, Stream.runs). The writer and its reader meet over two
pipes (``FD_IN``, ``FD_OUT``); the result goes to stdout as one JSON line. Frames are a
fixed pattern per shape with the frame index stamped into the first and the last 8 bytes;
the reader checks every frame it gets: dtype, shape, both stamps and every other byte (a
mismatch is a torn or wrong frame).

- lockstep: the writer writes frame k and signals; the reader reads it (every ``read()``
  call until one returns it is timed: a frame known to be there), checks it, drops it and
  acks. Write cost, read cost, and end-to-end latency (``time.monotonic_ns()`` before
  ``write()`` to after ``read()`` returned).
- flat: the writer writes the shapes round and round for ``seconds``; the reader reads
  flat out and checks each frame it gets (frames/s received, torn, wrong).
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.dynamic import IMPLS, Reader, Writer  # noqa: E402

Array = np.ndarray[Any, Any]
STAMP = 8  # bytes of the frame index at each end
DEADLINE = 60.0  # s: a frame or a peer that takes longer is a failure


def pattern(shape: tuple[int, ...], dtype: str) -> Array:
    """The bytes of every frame of ``shape``, stamps aside: a 4 KiB random tile, seeded by
    the shape, repeated."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    tile = np.random.default_rng(sum(shape) * 31 + len(shape)).integers(0, 256, 4096, dtype=np.uint8)
    return np.resize(tile, nbytes)


def stamp(raw: Array, k: int) -> None:
    if raw.size >= 2 * STAMP:
        raw[:STAMP] = np.frombuffer(k.to_bytes(STAMP, "little"), np.uint8)
        raw[-STAMP:] = raw[:STAMP]


def stamps(raw: Array) -> tuple[int, int] | None:
    if raw.size < 2 * STAMP:
        return None
    return int.from_bytes(raw[:STAMP].tobytes(), "little"), int.from_bytes(raw[-STAMP:].tobytes(), "little")


class Checker:
    """Checks frames against the stream; counts torn (stamps differ, or a byte between
    them is not the pattern's) and wrong (dtype, shape or index not the expected) ones."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: str) -> None:
        self.shapes, self.dtype = shapes, np.dtype(dtype)
        self.patterns = {s: pattern(s, dtype) for s in set(shapes)}
        self.torn = self.wrong = self.checked = 0
        self.last = -1

    def check(self, a: Array, k: int | None) -> None:
        """``k``: the index expected (lockstep), or None: any later one (flat)."""
        self.checked += 1
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        got = stamps(raw)
        if got is not None and got[0] != got[1]:
            self.torn += 1
            return
        i = k if got is None else got[0]
        if got is None and k is None:  # an empty frame in a flat run: any empty shape will do
            if a.dtype != self.dtype or a.shape not in self.patterns or a.size:
                self.wrong += 1
            return
        assert i is not None
        want = self.shapes[i % len(self.shapes)]
        if a.dtype != self.dtype or a.shape != want or (k is not None and i != k) or i <= self.last:
            self.wrong += 1
            return
        self.last = i
        pat = self.patterns[want]
        if not np.array_equal(raw[STAMP:-STAMP], pat[STAMP:-STAMP]):
            self.torn += 1


class Traffic:
    """Memory traffic in place of a frame of another size (a same-shape run's gap)."""

    def __init__(self, nbytes: int) -> None:
        self.a = np.ones(nbytes, np.uint8)
        self.b = np.ones(nbytes, np.uint8)

    def copy(self, n: int) -> None:  # what a writer's write of n bytes moves
        np.copyto(self.b[:n], self.a[:n])

    def compare(self, n: int) -> None:  # what a reader's check of n bytes moves
        if not np.array_equal(self.a[:n], self.b[:n]):
            raise AssertionError("traffic buffers differ")


def wait_byte(fd: int, w: Writer | None = None) -> bytes:
    """The peer's next signal; a writer does its housekeeping while it waits (iceoryx2
    delivers a newcomer's first frame on a connection update)."""
    end = time.monotonic() + DEADLINE
    while not select.select([fd], [], [], 0.0005 if w else 1.0)[0]:
        if time.monotonic() > end:
            raise TimeoutError("the other process gave no sign")
        if w is not None:
            w.tidy()
    got = os.read(fd, 1)
    if not got:
        raise EOFError("the other process ended")
    return got


def run_writer(impl: str, fin: int, fout: int, spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for run in spec["runs"]:
        shapes = [tuple(s) for s in run["shapes"]]
        # One source array per shape, or per source id (a same-shape run: see shapes.py)
        ids = run.get("sources") or list(range(len(shapes)))
        keys = [(s, i) if "sources" in run else (s, 0) for s, i in zip(shapes, ids, strict=True)]
        frames = {key: pattern(key[0], run["dtype"]).view(run["dtype"]).reshape(key[0]) for key in set(keys)}
        w = IMPLS[impl][0]()
        w.open(run["key"], frames[keys[0]])
        os.write(fout, b"o")  # opened, first frame written: the reader may open
        wait_byte(fin, w)  # the reader has the first frame
        res: dict[str, Any] = {"write": [], "start": []}
        if spec["mode"] == "lockstep":
            gaps = run.get("gaps") or [0] * len(keys)
            traffic = Traffic(max(gaps))
            for k, key in enumerate(keys):
                if gaps[k]:
                    traffic.copy(gaps[k])
                    res["write"].append(0)
                    res["start"].append(0)
                    os.write(fout, b"g")
                    wait_byte(fin)
                    continue
                a = frames[key]
                stamp(a.reshape(-1).view(np.uint8), k)
                t_start = time.monotonic_ns()
                t0 = time.perf_counter_ns()
                w.write(a)
                t1 = time.perf_counter_ns()
                res["write"].append(t1 - t0)
                res["start"].append(t_start)
                os.write(fout, b"w")
                wait_byte(fin)
                w.tidy()
        else:
            k, end = 0, time.monotonic() + spec["seconds"]
            while time.monotonic() < end:
                a = frames[keys[k % len(keys)]]
                stamp(a.reshape(-1).view(np.uint8), k)
                w.write(a)
                k += 1
            res["writes"] = k  # (no tidy() meanwhile: 1.1.4's reader may still open any file)
            os.write(fout, b"e")
            wait_byte(fin)
        w.close()
        out.append(res)
    return out


def _read_one(r: Reader) -> Array:
    end = time.monotonic() + DEADLINE
    while True:
        a = r.read()
        if a is not None:
            return a
        if time.monotonic() > end:
            raise TimeoutError("no frame")


def run_reader(impl: str, fin: int, fout: int, spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for run in spec["runs"]:
        shapes = [tuple(s) for s in run["shapes"]]
        check = Checker(shapes, run["dtype"])
        wait_byte(fin)  # the writer opened
        r = IMPLS[impl][1]()
        r.open(run["key"])
        _read_one(r)  # the frame the writer opened with (not stamped, not checked)
        os.write(fout, b"r")
        res: dict[str, Any] = {"read": [], "end": []}
        if spec["mode"] == "lockstep":
            gaps = run.get("gaps") or [0] * len(shapes)
            traffic = Traffic(max(gaps))
            for k in range(len(shapes)):
                wait_byte(fin)
                if gaps[k]:
                    traffic.compare(gaps[k])
                    res["end"].append(0)
                    res["read"].append(0)
                    os.write(fout, b"a")
                    continue
                t0 = time.perf_counter_ns()
                a = _read_one(r)
                t1 = time.perf_counter_ns()
                res["end"].append(time.monotonic_ns())
                res["read"].append(t1 - t0)
                check.check(a, k)
                del a
                os.write(fout, b"a")
        else:
            os.set_blocking(fin, False)
            errors: list[str] = []
            while True:
                try:
                    a = r.read()
                except Exception as exc:  # (1.1.4 under a flat-out writer: reported, not fatal)
                    errors.append(f"{type(exc).__name__}: {exc}")
                    a = None
                if a is not None:
                    check.check(a, None)
                    del a
                    continue
                try:
                    if os.read(fin, 1):
                        break
                except BlockingIOError:
                    pass
            os.set_blocking(fin, True)
            os.write(fout, b"d")
            res.update(errors=len(errors), error=errors[0] if errors else None)
        r.close()
        res.update(checked=check.checked, torn=check.torn, wrong=check.wrong)
        out.append(res)
    return out


def main() -> None:
    role, impl, fin, fout, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
    runner = run_writer if role == "writer" else run_reader
    print(json.dumps(runner(impl, fin, fout, spec)), flush=True)


if __name__ == "__main__":
    main()
