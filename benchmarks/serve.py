"""What watching a tag in the browser costs (issue 15): ``ndsharray serve`` and a 720p camera.

    python benchmarks/serve.py [--seconds S] [--out DIR]

In one run, against a private daemon started for it (and stopped at the end): a writer
process publishes 1280x720x3 uint8 frames at 60 Hz (a moving gradient, so JPEG has work
to do) while ``ndsharray serve`` runs, in three phases of S seconds each:

1. no viewer (the server runs, nobody watches: it has no reader of the tag);
2. one headless-browser page (Debian's chromium via Playwright) on the tag's page;
3. five such pages;
4. no viewer again (the browsers closed: what is left is the machine's own noise).

Reports per phase: the writer's write() time (median, p99, max), the frames per second
each page showed (counted by the page after each picture loaded), the frames the server
read and encoded, and the server's CPU time (user + system, from /proc) per encoded frame
and per second. The browsers run on the same 2 cores: their decoding competes with the
writer for CPU, which the write-time columns include. Prints a markdown table and writes
<out>/serve.json. Nothing is left in /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from ndsharray import admin, config

CHROMIUM = os.environ.get("NDSHARRAY_CHROMIUM", "/usr/bin/chromium")
TAG = "bench/camera"

WRITER = r"""
import json, sys, time
import numpy as np
import ndsharray

h, w = 720, 1280
x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
frames = []
for k in range(16):  # a gradient moving across the picture
    f = np.empty((h, w, 3), np.uint8)
    f[:, :, 0] = (x + 16 * k) % 256
    f[:, :, 1] = y
    f[:, :, 2] = (x + y + 32 * k) % 256
    frames.append(f)
cam = ndsharray.NdShArray(sys.argv[1], r_w="w")
period = 1 / 60
end = time.monotonic() + float(sys.argv[2])
log = []
print("ready", flush=True)
nxt = time.monotonic()
i = 0
while nxt < end:
    t0 = time.perf_counter_ns()
    cam.write(frames[i % len(frames)])
    log.append((time.monotonic(), (time.perf_counter_ns() - t0) / 1e3))
    i += 1
    nxt += period
    delay = nxt - time.monotonic()
    if delay > 0:
        time.sleep(delay)
cam.close()
print(json.dumps(log), flush=True)
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def streams(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/api/serve", timeout=10) as r:
        out: dict[str, Any] = json.load(r)["streams"]
        return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    folder = tempfile.mkdtemp(prefix="ndsv", dir="/tmp")
    endpoint = f"ipc://{folder}/d.sock"
    os.environ[config.ENV_ENDPOINT] = endpoint
    before = set(os.listdir("/dev/shm"))
    load_before = os.getloadavg()[0]
    phases: list[dict[str, Any]] = []
    writer = server = None
    try:
        admin.daemon_stats()  # auto-starts the private daemon
        server = subprocess.Popen([sys.executable, "-m", "ndsharray", "serve", "--bind", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.stdout is not None
        select.select([server.stdout], [], [], 30)
        found = re.search(r"(http://\S+)", server.stdout.readline())
        assert found, "ndsharray serve printed no URL"
        base = found.group(1).rstrip("/")
        total = 4 * (args.seconds + 2.0) + 15.0
        writer = subprocess.Popen([sys.executable, "-c", WRITER, TAG, str(total)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            pages: list[Any] = []
            for viewers in (0, 1, 5, 0):
                while len(pages) > viewers:  # the last phase: the browsers gone again
                    pages.pop().close()
                while len(pages) < viewers:
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(base + "/tag/" + TAG)
                    deadline = time.monotonic() + 30
                    while page.evaluate("window.ndsharrayFrames()") == 0:  # (the page's CSP forbids wait_for_function)
                        assert time.monotonic() < deadline, "the page showed no frame in 30 s"
                        time.sleep(0.05)
                    pages.append(page)
                time.sleep(2.0)  # settle
                shown0 = [pg.evaluate("window.ndsharrayFrames()") for pg in pages]
                s0 = streams(base).get(TAG, {})
                c0, t0 = cpu_s(server.pid), time.monotonic()
                time.sleep(args.seconds)
                c1, t1 = cpu_s(server.pid), time.monotonic()
                s1 = streams(base).get(TAG, {})
                shown = [pg.evaluate("window.ndsharrayFrames()") - a for pg, a in zip(pages, shown0, strict=True)]
                encodes = s1.get("encodes", 0) - s0.get("encodes", 0)
                phases.append({
                    "viewers": viewers, "t0": t0, "t1": t1, "server_cpu_s": c1 - c0,
                    "frames_read": s1.get("frames_read", 0) - s0.get("frames_read", 0), "encodes": encodes,
                    "encode_s": s1.get("encode_s", 0.0) - s0.get("encode_s", 0.0),
                    "page_fps": [n / (t1 - t0) for n in shown],
                    "slots": admin.tag_info(TAG).slots,  # the ring grows if pins keep every slot busy
                })
            for pg in pages:
                pg.close()
            browser.close()
        out, _ = writer.communicate(timeout=total + 30)
        log = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in (writer, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        admin.stop_daemon(endpoint)
        shutil.rmtree(folder, ignore_errors=True)
    leaked = sorted(n for n in set(os.listdir("/dev/shm")) - before if n.startswith(config.segment_prefix(endpoint)))
    for ph in phases:
        us = [d for t, d in log if ph["t0"] <= t < ph["t1"]]
        ph.update(writes=len(us), write_us_median=statistics.median(us), write_us_p99=pct(us, 0.99),
                  write_us_max=max(us), write_hz=len(us) / (ph["t1"] - ph["t0"]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve.json"), "w") as f:
        json.dump({"phases": phases, "seconds_per_phase": args.seconds, "leaked_segments": leaked,
                   "loadavg_before_after": [load_before, os.getloadavg()[0]]}, f, indent=2)
    print(f"720p RGB writer at 60 Hz, {args.seconds:g} s per phase, {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after; leaked segments: {len(leaked)}\n")
    print("| viewers | write median | write p99 | write max | writes/s | page frames/s (each) "
          "| server: read / encoded per s | server CPU per encoded frame | server CPU | ring slots |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ph in phases:
        secs = ph["t1"] - ph["t0"]
        fps = " ".join(f"{x:.1f}" for x in ph["page_fps"]) or "-"
        per = f"{ph['server_cpu_s'] / ph['encodes'] * 1e3:.1f} ms" if ph["encodes"] else "-"
        print(f"| {ph['viewers']} | {ph['write_us_median']:.0f} us | {ph['write_us_p99']:.0f} us "
              f"| {ph['write_us_max']:.0f} us | {ph['write_hz']:.1f} | {fps} "
              f"| {ph['frames_read'] / secs:.1f} / {ph['encodes'] / secs:.1f} | {per} "
              f"| {ph['server_cpu_s'] / secs * 100:.0f} % of a core | {ph['slots']} |")


if __name__ == "__main__":
    main()
