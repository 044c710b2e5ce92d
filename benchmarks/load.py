"""Load figures for the daemon and the fan-out path (issue: hostile input and heavy load).

    python benchmarks/load.py [--quick] [--out DIR]

Measures, against a private daemon started for the run (and stopped at the end):
- 1,000 tags on one daemon: time to create them, `list` time, daemon RSS before/after;
- metadata requests per second the daemon serves (1 and 2 client processes);
- 32 readers (processes, blocking reads) on one tag with a 60 Hz 1080p writer: frames
  each reader received, and the writer's time per write with and without them;
- the hot path of an unrelated writer/reader pair (1 KiB, busy-polling reader) with and
  without a burst of metadata requests from two other processes.
Prints a markdown table and writes <out>/load.json. Nothing is left in /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import ndsharray
from ndsharray import admin, config


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def many_tags(n: int) -> dict[str, Any]:
    import numpy as np

    pid = admin.daemon_pid()
    assert pid is not None
    rss0 = rss_kib(pid)
    t0 = time.perf_counter()
    handles = [ndsharray.NdShArray(f"load/{k:04d}", np.zeros(16, np.float32), "w") for k in range(n)]
    create_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    listed = ndsharray.list_tags()
    list_s = time.perf_counter() - t0
    rss1 = rss_kib(pid)
    for h in handles:
        h.close()
    return {"tags": len(listed), "create_ms_per_tag": create_s / n * 1e3, "list_ms": list_s * 1e3,
            "daemon_rss_kib_before": rss0, "daemon_rss_kib_with_tags": rss1}


REQUESTER = """
import sys, time
from ndsharray import protocol, transport
conn = transport.connection()
n, t0 = 0, time.perf_counter()
end = t0 + float(sys.argv[1])
while time.perf_counter() < end:
    conn.request(protocol.LOOKUP, tag="load/none")
    n += 1
print(n / (time.perf_counter() - t0), flush=True)
"""


def metadata_rate(seconds: float) -> dict[str, float]:
    out = {}
    for clients in (1, 2):
        procs = [spawn(REQUESTER, str(seconds)) for _ in range(clients)]
        rates = [float(p.communicate(timeout=60)[0]) for p in procs]
        out[f"requests_per_s_{clients}_clients"] = sum(rates)
    return out


FANOUT_READER = """
import sys, numpy as np, ndsharray
r = ndsharray.NdShArray("load/fanout", r_w="r")
print("ready", flush=True)
got = bad = 0
while True:
    status, a = r.read(timeout=2.0)
    if not status:
        break
    if a.flat[0] != a.flat[-1]:
        bad += 1
    got += 1
print(got, bad, flush=True)
"""


def fanout(readers: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    frame = np.zeros((1080, 1920, 3), np.uint8)
    w = ndsharray.NdShArray("load/fanout", frame, "w")

    def run_writer() -> list[float]:
        costs = []
        period = 1 / 60
        nxt = time.perf_counter()
        end = nxt + seconds
        n = 0
        while time.perf_counter() < end:
            n += 1
            frame[0, 0, 0] = frame[-1, -1, -1] = n % 256
            t0 = time.perf_counter()
            w.write(frame)
            costs.append(time.perf_counter() - t0)
            nxt += period
            time.sleep(max(0.0, nxt - time.perf_counter()))
        return costs

    alone = run_writer()
    procs = [spawn(FANOUT_READER) for _ in range(readers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    crowded = run_writer()
    w.close()
    counts = [tuple(map(int, p.communicate(timeout=60)[0].split())) for p in procs]
    written = len(crowded)
    return {
        "readers": readers, "frames_written": written,
        "frames_per_reader_min": min(c[0] for c in counts),
        "frames_per_reader_median": statistics.median(c[0] for c in counts),
        "torn": sum(c[1] for c in counts),
        "write_us_median_alone": statistics.median(alone) * 1e6,
        "write_us_median_with_readers": statistics.median(crowded) * 1e6,
    }


PAIR_READER = """
import sys, time, numpy as np, ndsharray
r = ndsharray.NdShArray("load/pair", r_w="r")
print("ready", flush=True)
lat = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    status, a = r.read()
    if status:
        lat.append(time.monotonic_ns() - int(a[0]))
lat.sort()
print(lat[len(lat) // 2] / 1000 if lat else -1, len(lat), flush=True)
"""

BURST = """
import sys, time
from ndsharray import protocol, transport
conn = transport.connection()
end = time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < end:
    conn.request(protocol.LIST)
"""


def hot_path_under_burst(seconds: float) -> dict[str, float]:
    import numpy as np

    out = {}
    w = ndsharray.NdShArray("load/pair", np.zeros(128, np.int64), "w")
    for label, bursters in (("quiet", 0), ("burst", 2)):
        reader = spawn(PAIR_READER, str(seconds))
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        burst = [spawn(BURST, str(seconds)) for _ in range(bursters)]
        a = np.zeros(128, np.int64)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            a[0] = time.monotonic_ns()
            w.write(a)
            time.sleep(0.001)
        median_us, n = reader.communicate(timeout=60)[0].split()
        for p in burst:
            p.communicate(timeout=60)
        out[f"pair_latency_us_median_{label}"] = float(median_us)
        out[f"pair_frames_{label}"] = int(n)
    w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="ndsl", dir="/tmp")
    endpoint = f"ipc://{folder}/d.sock"
    os.environ[config.ENV_ENDPOINT] = endpoint
    before = set(os.listdir("/dev/shm"))
    t_start = time.monotonic()
    results: dict[str, Any] = {}
    try:
        ndsharray.daemon_stats()  # auto-starts the private daemon
        results["tags"] = many_tags(200 if args.quick else 1000)
        results["metadata"] = metadata_rate(1.0 if args.quick else 3.0)
        results["fanout"] = fanout(8 if args.quick else 32, 2.0 if args.quick else 5.0)
        results["hot_path"] = hot_path_under_burst(1.0 if args.quick else 3.0)
    finally:
        admin.stop_daemon(endpoint)
        shutil.rmtree(folder, ignore_errors=True)
    leaked = sorted(n for n in set(os.listdir("/dev/shm")) - before if n.startswith(config.segment_prefix(endpoint)))
    results["seconds"] = time.monotonic() - t_start
    results["leaked_segments"] = leaked
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "load.json"), "w") as f:
        json.dump(results, f, indent=2)
    t, m, fo, hp = results["tags"], results["metadata"], results["fanout"], results["hot_path"]
    print("| figure | value |\n|---|---|")
    rows = [
        (f"{t['tags']} tags: create, per tag", f"{t['create_ms_per_tag']:.2f} ms"),
        (f"{t['tags']} tags: `list`", f"{t['list_ms']:.1f} ms"),
        ("daemon RSS idle / with the tags", f"{t['daemon_rss_kib_before'] / 1024:.1f} MiB / "
                                            f"{t['daemon_rss_kib_with_tags'] / 1024:.1f} MiB"),
        ("metadata requests/s, 1 client", f"{m['requests_per_s_1_clients']:.0f}"),
        ("metadata requests/s, 2 clients", f"{m['requests_per_s_2_clients']:.0f}"),
        (f"60 Hz 1080p writer, {fo['readers']} readers: frames written", str(fo["frames_written"])),
        ("frames per reader (min / median)", f"{fo['frames_per_reader_min']} / {fo['frames_per_reader_median']:.0f}"),
        ("torn frames", str(fo["torn"])),
        ("write time median, no readers / with readers",
         f"{fo['write_us_median_alone']:.0f} us / {fo['write_us_median_with_readers']:.0f} us"),
        ("1 KiB pair latency median, quiet / metadata burst",
         f"{hp['pair_latency_us_median_quiet']:.1f} us / {hp['pair_latency_us_median_burst']:.1f} us"),
        ("segments leaked", str(len(leaked))),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    print(f"\n({results['seconds']:.0f} s; JSON in {os.path.join(args.out, 'load.json')})")


if __name__ == "__main__":
    main()
