"""Shape changes against same-shape streams of the same bytes, with the original ndsharray
1.1.4 and iceoryx2 (dynamic slices) in the same run (issue 17).

    python benchmarks/shapes.py [--reps N] [--quick] [--impls ndsharray,iceoryx2] [--flat S]

Streams, each next to same-shape streams of its frame sizes:

- ``720p/480p``: 720p and 480p (uint8, 3 channels) alternating;
- ``boxes``: N x 6 float32 boxes with N random in 0..200 on every frame (against N = 100);
- ``720p/10000x5000``: the original's example: three 720p frames, then a 10000 x 5000
  uint8 array, over and over;
- ``720p transposed``: the control, 720x1280x3 and 1280x720x3 alternating: a change of
  shape and nothing else.

A same-shape stream keeps the changing stream's memory traffic or source arrays (see
Stream.runs), so that both find the caches alike.

Each run is a writer process and a reader process of one implementation
(benchmarks/shapes_worker.py, adapters in benchmarks/peers/dynamic.py). In lockstep (the
writer writes a frame, the reader reads it, checks it and acks) they give the write cost,
the read cost and the end-to-end latency; flat out (the writer writes as fast as it can for
``--flat`` seconds) the frames/s the reader received. The reader checks the dtype, shape and
every byte of every frame it gets and counts torn and wrong ones. Repetitions are
interleaved: each repetition runs every stream for every implementation, in an order that
rotates, so drift on a shared machine hits everyone alike. Medians (us) and p99 over all
repetitions; ``ratio`` is changing / same shape for the same implementation. ndsharray's
floors: a write of a changing shape <= 1.2x a same-shape write of the same bytes, its read
<= 2x, 0 torn frames and every shape right.

Peers are optional: a missing one is skipped with the command that installs it
(``pip install -e ".[peers]"`` for iceoryx2; 1.1.4 goes into a folder of its own, see
benchmarks/README.md). ndsharray runs on a private daemon that is stopped at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers import NDS114_DIR, REQUIRES  # noqa: E402
from peers.dynamic import PREFIX_114, SHM  # noqa: E402
from private_daemon import private_daemon  # noqa: E402

NDS114 = HERE.parent / NDS114_DIR
IMPLS = ["ndsharray", "ndsharray-1.1.4", "iceoryx2"]
P720, P480, BIG = (720, 1280, 3), (480, 640, 3), (10000, 5000)
BOXES = "N x 6, N in 0..200"
TRANSPOSED = "720p transposed"  # the control: a change of shape and nothing else
SKIP = 4  # unmeasured frames at the start of each run (fewer in short runs): pages mapped, caches warm


@dataclass(frozen=True)
class Stream:
    name: str
    dtype: str
    shapes: list[tuple[int, ...]]  # the changing stream

    def label(self, shape: tuple[int, ...]) -> str:
        if self.name == TRANSPOSED:
            return "720x1280x3 / 1280x720x3"
        return BOXES if self.name == "boxes" else "x".join(map(str, shape))

    def runs(self, key: str) -> list[dict[str, Any]]:
        """The changing stream, then a same-shape stream per frame size to hold it against.

        A same-shape stream keeps the changing stream's memory traffic: where the changing
        stream has a frame of another size, the same-shape one has a gap in which the writer
        copies and the reader compares as many bytes (untimed), so that each frame finds the
        caches as the changing stream's frame of that size does (a 720p frame after a
        10000 x 5000 one finds every cache cold). Where every frame is about the same size
        (boxes against N = 100; the transposed control against 720p), the same-shape frames
        are copied from as many source arrays as the changing stream has shapes, in its
        order (one source array in the cache is faster than two: measured in one process,
        720p from one array 63-67 us, from two alternating 79-92 us, changing shape or not).
        """
        runs = [{"key": f"{key}-v", "shapes": self.shapes, "dtype": self.dtype}]
        if self.name in ("boxes", TRANSPOSED):
            ids = {shape: i for i, shape in enumerate(dict.fromkeys(self.shapes))}
            same = (100, 6) if self.name == "boxes" else P720
            return runs + [{"key": f"{key}-s0", "shapes": [same] * len(self.shapes), "dtype": self.dtype,
                            "sources": [ids[shape] for shape in self.shapes]}]
        size = np.dtype(self.dtype).itemsize
        for j, same in enumerate(dict.fromkeys(self.shapes)):
            gaps = [0 if math.prod(shape) == math.prod(same) else math.prod(shape) * size for shape in self.shapes]
            runs.append({"key": f"{key}-s{j}", "shapes": [same] * len(self.shapes), "dtype": self.dtype, "gaps": gaps})
        return runs


def streams(n: int) -> list[Stream]:
    rng = np.random.default_rng(1)
    big = max(16, n // 5)
    return [
        Stream("720p/480p", "uint8", [P720 if k % 2 == 0 else P480 for k in range(n)]),
        Stream("boxes", "float32", [(int(rng.integers(0, 201)), 6) for _ in range(2 * n)]),
        Stream("720p/10000x5000", "uint8", [BIG if k % 4 == 3 else P720 for k in range(big)]),
        Stream(TRANSPOSED, "uint8", [P720 if k % 2 == 0 else (1280, 720, 3) for k in range(n)]),
    ]


def missing(impls: list[str]) -> dict[str, str]:
    """Peers that are not installed -> the command that installs them."""
    out = {}
    for impl in impls:
        if impl == "ndsharray-1.1.4":
            if not (NDS114 / "ndsharray" / "__init__.py").exists():
                out[impl] = REQUIRES[impl][1]
        elif impl in REQUIRES and importlib.util.find_spec(REQUIRES[impl][0]) is None:
            out[impl] = REQUIRES[impl][1]
    return out


def pair(impl: str, runs: list[dict[str, Any]], mode: str, seconds: float, env: dict[str, str],
         log: IO[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a writer and a reader process of ``impl`` through ``runs``; their results."""
    to_reader = os.pipe()
    to_writer = os.pipe()
    spec = json.dumps({"runs": runs, "mode": mode, "seconds": seconds})
    env = dict(env, PYTHONPATH=str(NDS114)) if impl == "ndsharray-1.1.4" else env
    procs = []
    for role, fin, fout in (("writer", to_writer[0], to_reader[1]), ("reader", to_reader[0], to_writer[1])):
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "shapes_worker.py"), role, impl, str(fin), str(fout), spec],
            stdout=subprocess.PIPE, stderr=log, env=env, pass_fds=(fin, fout), cwd=HERE))
    for fd in (*to_reader, *to_writer):
        os.close(fd)
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0:
            for q in procs:
                q.kill()
            raise RuntimeError(f"{impl} {mode} worker exited with {p.returncode}; see {log.name}")
        outs.append(json.loads(out))
    return outs[0], outs[1]


Samples = dict[tuple[str, str, str, str], dict[str, list[int]]]  # (impl, stream, label, var|same) -> figure -> ns


def collect(samples: Samples, impl: str, s: Stream, run: dict[str, Any], w: dict[str, Any], r: dict[str, Any],
            checks: dict[str, list[int]]) -> None:
    shapes = [tuple(x) for x in run["shapes"]]
    kind = "var" if run["key"].endswith("-v") else "same"
    gaps = run.get("gaps") or [0] * len(shapes)
    for k in range(min(SKIP, len(shapes) // 4), len(shapes)):
        if gaps[k]:
            continue
        d = samples.setdefault((impl, s.name, s.label(shapes[k]), kind), defaultdict(list))
        d["write"].append(w["write"][k])
        d["read"].append(r["read"][k])
        d["lat"].append(r["end"][k] - w["start"][k])
    c = checks[impl]
    c[0] += r["checked"]
    c[1] += r["torn"]
    c[2] += r["wrong"]


def med(v: list[int]) -> float:
    return statistics.median(v) / 1000


def p99(v: list[int]) -> float:
    return sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] / 1000


def fmt(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}" if us >= 1 else f"{us:.2f}"


def table(samples: Samples, impls: list[str], ss: list[Stream]) -> list[tuple[str, float, float]]:
    """Print the lockstep table; returns ndsharray's (row, write ratio, read ratio)."""
    print("| stream | frame | implementation | write, changing | write, same | ratio | read, changing "
          "| read, same | ratio | latency, changing | latency, same |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for s in ss:
        labels = list(dict.fromkeys(s.label(shape) for shape in s.shapes))
        for label in sorted(labels, key=lambda lab: (lab != BOXES, -len(lab), lab)):
            for impl in impls:
                v, m = samples.get((impl, s.name, label, "var")), samples.get((impl, s.name, label, "same"))
                if not v or not m:
                    continue
                wr, rr = med(v["write"]) / med(m["write"]), med(v["read"]) / med(m["read"])
                if impl == "ndsharray":
                    ratios.append((f"{s.name} {label}", wr, rr))
                print(f"| {s.name} | {label} | {impl} | {fmt(med(v['write']))} ({fmt(p99(v['write']))}) | "
                      f"{fmt(med(m['write']))} | {wr:.2f} | {fmt(med(v['read']))} ({fmt(p99(v['read']))}) | "
                      f"{fmt(med(m['read']))} | {rr:.2f} | {fmt(med(v['lat']))} | {fmt(med(m['lat']))} |")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--frames", type=int, default=200, help="frames of the 720p/480p stream per run")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--flat", type=float, default=1.0, help="seconds flat out per stream and implementation")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--quick", action="store_true", help="60 frames, 1 repetition, 0.5 s flat out")
    args = ap.parse_args()
    n, reps, flat = (60, 1, 0.5) if args.quick else (args.frames, args.reps, args.flat)
    impls = [i for i in args.impls.split(",") if i]
    for impl, hint in missing(impls).items():
        print(f"skipping {impl}: not installed ({hint})")
        impls.remove(impl)
    ss = streams(n)
    samples: Samples = {}
    checks: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # checked, torn, wrong
    # per (impl, stream): frames/s, checked, torn, wrong, read() raised
    flats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    errors: dict[tuple[str, str], str] = {}
    t_start = time.monotonic()
    log_fd, log_name = tempfile.mkstemp(prefix="ndsb-shapes-", suffix=".log")
    with private_daemon("ndsb-shapes-") as endpoint, open(log_fd, "wb") as log:
        from ndsharray import admin

        deadline = time.monotonic() + 30
        while not admin.daemon_running(endpoint):  # (private_daemon does not wait for it)
            assert time.monotonic() < deadline, f"no daemon at {endpoint}"
            time.sleep(0.02)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(NDSHARRAY_ENDPOINT=endpoint, NDSHARRAY_AUTOSTART="0", OPENBLAS_NUM_THREADS="1")
        try:
            for rep in range(reps):
                order = impls[rep % len(impls):] + impls[: rep % len(impls)]
                for si, s in enumerate(ss):
                    for impl in order:
                        key = f"{os.getpid()}-{rep}-{si}"
                        runs = s.runs(key)
                        ws, rs = pair(impl, runs, "lockstep", 0, env, log)
                        for run, w, r in zip(runs, ws, rs, strict=True):
                            collect(samples, impl, s, run, w, r, checks)
                        cycle = s.shapes if s.name != "720p/10000x5000" else s.shapes[:4]
                        ws, rs = pair(impl, [{"key": f"{key}-f", "shapes": cycle, "dtype": s.dtype}], "flat",
                                      flat, env, log)
                        f = flats[(impl, s.name)]
                        f[0] += rs[0]["checked"] / flat / reps
                        f[1:] = [f[1] + rs[0]["checked"], f[2] + rs[0]["torn"], f[3] + rs[0]["wrong"],
                                 f[4] + rs[0]["errors"]]
                        if rs[0]["error"]:
                            errors[(impl, s.name)] = rs[0]["error"]
        finally:
            for name in os.listdir(SHM):  # 1.1.4 never unlinks; its writers do, unless they crashed
                if name.startswith(f"{PREFIX_114}{os.getpid()}-"):
                    os.unlink(os.path.join(SHM, name))
    os.unlink(log_name)  # (kept when a worker failed: the error names it)
    print(f"\n{len(impls)} implementations, {reps} interleaved repetitions, {time.monotonic() - t_start:.0f} s; "
          "lockstep writer/reader processes, us, median (p99)\n")
    ratios = table(samples, impls, ss)
    print("\n| stream | implementation | frames/s received, flat out | frames checked | torn | wrong | read() raised |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in ss:
        for impl in impls:
            fps, checked, torn, wrong, raised = flats[(impl, s.name)]
            print(f"| {s.name} | {impl} | {fps:,.0f} | {checked:,.0f} | {torn:.0f} | {wrong:.0f} | {raised:.0f} |")
    for (impl, name), err in errors.items():
        print(f"{impl}, {name}, flat out: read() raised {err}")
    print()
    for impl in impls:
        checked, torn, wrong = checks[impl]
        print(f"lockstep, {impl}: {checked} frames checked, {torn} torn, {wrong} wrong")
    print("\nndsharray's floors (changing / same shape: write <= 1.2x, read <= 2x; 0 torn, every shape right):")
    for row, wr, rr in ratios:
        print(f"  {row}: write {wr:.2f}x {'ok' if wr <= 1.2 else 'OVER'}, read {rr:.2f}x {'ok' if rr <= 2 else 'OVER'}")
    bad = checks["ndsharray"][1] + checks["ndsharray"][2]
    bad += sum(sum(flats[("ndsharray", s.name)][2:]) for s in ss)
    print(f"  torn or wrong frames: {bad:.0f} {'ok' if bad == 0 else 'FAIL'}")


if __name__ == "__main__":
    main()
