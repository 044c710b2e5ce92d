"""Where a bridged frame's time goes (issue 13): write on A to read on B, stage by stage.

    python benchmarks/bridge_profile.py [--frames N] [--size BYTES]

Two "hosts" as in benchmarks/bridge.py (a private ndsharrayd each, `ndsharray bridge` on
each over tcp/127.0.0.1), but each bridge runs with a few of its functions wrapped to note
the time (CLOCK_MONOTONIC, one clock for both "hosts" on this machine) per frame. Frames
go one at a time; for each, the stages:

- A wake + read: the source writer's write time to the exporter's reader returning it;
- A to send: from there to the start of the send (locks, credit, bookkeeping);
- A send: encode, header, Zenoh put;
- link: start of the put on A to the importer's Zenoh callback on B;
- B decode: payload bytes and the array over them;
- B write: the write into the imported tag (its reader's wake-up starts here);
- B credit: the put of a credit back (after the write: off the readers' path; one for
  every wire.CREDIT_BATCH frames, so the median is over the frames that had one);
- B reader woken: the end of the write to the reader on B returning the frame.

Prints a table of medians and 90th percentiles (microseconds). The wrappers cost a few
microseconds per stage; use the figures for where the time goes, benchmarks/bridge.py for
the end-to-end latency.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

import ndsharray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bridge import Hosts  # noqa: E402  (benchmarks/bridge.py: the two hosts)


def traced_bridge(out: str, argv: list[str]) -> None:
    """``--bridge OUT ARGS...``: ``ndsharray ARGS...`` with per-frame time notes, written
    to OUT as JSON when the bridge exits."""
    from ndsharray.bridge import importer, sender, source
    from ndsharray.cli import main

    notes: list[tuple[str, int, int, int]] = []  # (stage, source write count or -1, start, end)
    mono = time.monotonic_ns

    def wrap(cls: Any, name: str, stage: str, count: Any) -> None:
        orig = getattr(cls, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = mono()
            got = orig(*a, **kw)
            notes.append((stage, count(a, got), t0, mono()))
            return got

        setattr(cls, name, timed)

    orig_took = source.Source._took

    def took(self: Any, arr: Any, seq: int) -> Any:
        got = orig_took(self, arr, seq)
        notes.append(("read", got.count, got.write_ns, mono()))  # (from the frame's write on A)
        return got

    source.Source._took = took  # type: ignore[method-assign]
    wrap(sender.Stream, "send", "send", lambda a, got: a[1].count)
    wrap(importer.ImportStream, "on_frame", "recv", lambda a, got: a[1].count)
    wrap(importer.ImportStream, "_write", "write", lambda a, got: -1)
    wrap(importer.ImportStream, "ask", "credit", lambda a, got: -1)
    orig_decode = getattr(importer, "decode")  # noqa: B009

    def decode(*a: Any) -> Any:
        t0 = mono()
        got = orig_decode(*a)
        notes.append(("decode", -1, t0, mono()))
        return got

    setattr(importer, "decode", decode)  # noqa: B010  (as the importer calls it)

    def save() -> None:
        with open(out, "w") as f:
            json.dump(notes, f)

    atexit.register(save)
    sys.argv = ["ndsharray", *argv]
    main()


def within(notes: list[list[int]], start: int, end: int) -> list[int] | None:
    return next((n for n in notes if start <= n[2] <= end), None)


def profile(frames: int, size: int) -> dict[str, list[float]]:
    root = tempfile.mkdtemp(prefix="ndsbp")
    hosts = Hosts(root, launcher=lambda h: [sys.executable, os.path.abspath(__file__), "--bridge",
                                            os.path.join(root, f"{h}.json")])
    rows = []
    try:
        w = ndsharray.NdShArray("bench/p", r_w="w", endpoint=hosts.ep["a"])
        r = ndsharray.NdShArray("robot1/bench/p", r_w="r", endpoint=hosts.ep["b"])
        buf = np.zeros(size, np.uint8)
        for i in range(-30, frames):  # 30 to warm up
            w.write(buf)
            ok, _ = r.read(timeout=10)
            if not ok:
                raise RuntimeError(f"frame {i} did not arrive")
            if i >= 0:
                rows.append((w.write_count, time.monotonic_ns()))
            time.sleep(0.002)
        w.close()
        r.close()
    finally:
        hosts.close()
    with open(os.path.join(root, "a.json")) as f:
        a = json.load(f)
    with open(os.path.join(root, "b.json")) as f:
        b = json.load(f)
    shutil.rmtree(root, ignore_errors=True)
    read = {n[1]: n for n in a if n[0] == "read"}
    send = {n[1]: n for n in a if n[0] == "send"}
    recv = {n[1]: n for n in b if n[0] == "recv"}
    inner = {k: [n for n in b if n[0] == k] for k in ("decode", "write", "credit")}
    stages: dict[str, list[float]] = {k: [] for k in (
        "A wake + read", "A to send", "A send (encode, put)", "link (put to B callback)", "B decode",
        "B write", "B credit", "B reader woken", "total")}
    for count, t_read in rows:
        if count not in read or count not in send or count not in recv:
            continue
        rd, sd, rc = read[count], send[count], recv[count]
        dec, wr, cr = (within(inner[k], rc[2], rc[3]) for k in ("decode", "write", "credit"))
        if dec is None or wr is None:
            continue
        write_ns = rd[2]
        for name, us in (("A wake + read", rd[3] - write_ns), ("A to send", sd[2] - rd[3]),
                         ("A send (encode, put)", sd[3] - sd[2]), ("link (put to B callback)", rc[2] - sd[2]),
                         ("B decode", dec[3] - dec[2]), ("B write", wr[3] - wr[2]),
                         ("B reader woken", t_read - wr[3]), ("total", t_read - write_ns)):
            stages[name].append(us / 1e3)
        if cr is not None:
            stages["B credit"].append((cr[3] - cr[2]) / 1e3)
    return stages


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--bridge":
        traced_bridge(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    stages = profile(args.frames, args.size)
    print(f"| stage ({args.size} B frames, {len(stages['total'])} of them) | p50 | p90 |")
    print("|---|---|---|")
    for name, xs in stages.items():
        if xs:
            print(f"| {name} | {statistics.median(xs):.1f} us | {sorted(xs)[int(0.9 * len(xs))]:.1f} us |")


if __name__ == "__main__":
    main()
