"""ndsharray bridge figures (issue 13): two "hosts" on this machine over tcp/127.0.0.1.

    python benchmarks/bridge.py [--quick] [--out DIR]

Each host is a private ndsharrayd; host A runs `ndsharray bridge --name robot1 --export
'bench/**' --listen tcp/127.0.0.1:P`, host B `ndsharray bridge --name ws --import
'robot1/**' --connect tcp/127.0.0.1:P`. For 1 KiB, 64 KiB, 720p and 1080p frames:
- latency: a frame written on A (its write time inside it) to read on B, one frame at a
  time; next to a bare Zenoh publisher/subscriber moving the same bytes over a
  tcp/127.0.0.1 locator (the engine's own cost) and a pyzmq PUB/SUB over TCP loopback,
  each subscriber in a process of its own as the importing bridge is;
- sustained: frames per second the bridge writes on B while A writes flat out (latest
  value: the rest are skipped), and messages per second for bare Zenoh and pyzmq (every
  message, queued); the bridges' CPU (both processes) per frame delivered;
- 720p at 60 Hz for 3 s: frames lost on B (the floor: none);
- codecs on a 720p image: bytes on the wire, encode and decode time.
Floors: bridge latency within 1.5x of bare Zenoh; 720p at 60 Hz with no frame lost.
Prints a markdown table and writes <out>/bridge.json. Nothing is left in /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ndsharray
from ndsharray.bridge import zconfig
from ndsharray.bridge.codecs import Codec, decode
from ndsharray.bridge.remote import bridge_status

END_SEQ = -999  # tells a pyzmq subscriber child to stop
SIZES = [("1 KiB", (1024,)), ("64 KiB", (65536,)), ("720p", (720, 1280, 3)), ("1080p", (1080, 1920, 3))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stamp(buf: np.ndarray, seq: int) -> None:
    head = buf.reshape(-1)[:16].view(np.int64)
    head[0], head[1] = time.monotonic_ns(), seq


def unstamp(data: Any) -> tuple[int, int]:
    arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    head = arr.reshape(-1)[:16].view(np.int64)
    return int(head[0]), int(head[1])


def read_text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


class Hosts:
    """Hosts A and B, a daemon and a bridge each. ``launcher(host)``: the command line
    before ``--endpoint ... bridge ...`` that runs a bridge (default ``python -m ndsharray``)."""

    def __init__(self, root: str, launcher: Callable[[str], list[str]] | None = None) -> None:
        self.root = root
        self.launcher = launcher or (lambda h: [sys.executable, "-m", "ndsharray"])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ep: dict[str, str] = {}
        try:
            self._start(root)
        except BaseException:
            self.close()  # (never leave a daemon or bridge behind)
            raise

    def _start(self, root: str) -> None:
        for h in ("a", "b"):
            os.mkdir(os.path.join(root, h))
            self.ep[h] = f"ipc://{root}/{h}/d.sock"
            self.spawn([sys.executable, "-m", "ndsharrayd", "--endpoint", self.ep[h]], f"{h}/daemon.log")
        for h in ("a", "b"):
            deadline = time.monotonic() + 20
            while not ndsharray.admin.daemon_running(self.ep[h]):
                if time.monotonic() > deadline:
                    raise RuntimeError("daemon did not start")
                time.sleep(0.05)
        self.port = free_port()
        self.bridge_a = self.spawn([*self.launcher("a"), "--endpoint", self.ep["a"], "bridge", "--name",
                                    "robot1", "--export", "bench/**", "--listen", f"tcp/127.0.0.1:{self.port}"],
                                   "a/bridge.log")
        self.bridge_b = self.spawn([*self.launcher("b"), "--endpoint", self.ep["b"], "bridge", "--name",
                                    "ws", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{self.port}"],
                                   "b/bridge.log")
        for h in ("a", "b"):
            deadline = time.monotonic() + 30
            while "running" not in (log := read_text(os.path.join(root, h, "bridge.log"))):
                if time.monotonic() > deadline:
                    raise RuntimeError(log)
                time.sleep(0.05)

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.root, log), "wb") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        self.procs.append(p)
        return p

    def close(self) -> None:
        ndsharray.close_all()
        for p in reversed(self.procs):  # bridges first, then daemons
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def bridge_latency(h: Hosts, tag: str, shape: tuple[int, ...], n: int) -> list[float]:
    buf = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    w = ndsharray.NdShArray(f"bench/{tag}", r_w="w", endpoint=h.ep["a"])
    r = ndsharray.NdShArray(f"robot1/bench/{tag}", r_w="r", endpoint=h.ep["b"])
    out = []
    try:
        for i in range(-20, n):  # 20 to warm up (the import's first writer, caches)
            stamp(buf, i)
            w.write(buf)
            deadline = time.monotonic() + 10
            while True:
                ok, x = r.read(timeout=max(0.0, deadline - time.monotonic()))
                if not ok:
                    raise RuntimeError(f"bridge: frame {i} of {tag} did not arrive")
                t, seq = unstamp(x)
                if seq == i:
                    break
            if i >= 0:
                out.append((time.monotonic_ns() - t) / 1e3)
    finally:
        w.close()
        r.close()
    return out


def bridge_sustained(h: Hosts, tag: str, shape: tuple[int, ...], seconds: float, rate: float | None) -> dict[str, Any]:
    """The writer on A writes for ``seconds`` (flat out, or at ``rate`` Hz). Frames the
    bridge delivered: B's bridge's count of frames written into the imported tag; frames a
    reader on B read: its own count (a thread here, beside a flat-out writer: a lower bound)."""
    buf = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    w = ndsharray.NdShArray(f"bench/{tag}", r_w="w", endpoint=h.ep["a"])
    r = ndsharray.NdShArray(f"robot1/bench/{tag}", r_w="r", endpoint=h.ep["b"])
    stamp(buf, -1)
    w.write(buf)
    ok, _ = r.read(timeout=10)
    assert ok, "no first frame"
    seqs: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            ok, x = r.read(timeout=0.2)
            if ok:
                seqs.append(unstamp(x)[1])

    t = threading.Thread(target=read)
    t.start()
    imported = f"robot1/bench/{tag}"
    writes0 = imported_frames(h, imported)
    cpu0 = cpu_s(h.bridge_a.pid) + cpu_s(h.bridge_b.pid)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        stamp(buf, i)
        w.write(buf)
        i += 1
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    deadline = time.monotonic() + 5
    while (not seqs or seqs[-1] != i - 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    delivered = imported_frames(h, imported) - writes0
    cpu = cpu_s(h.bridge_a.pid) + cpu_s(h.bridge_b.pid) - cpu0
    done.set()
    t.join()
    w.close()
    r.close()
    got = len(set(seqs))
    return {"written": i, "delivered": delivered, "lost": i - delivered, "read_on_b": got, "fps": delivered / seconds,
            "elapsed": elapsed, "cpu_ms_per_frame": 1e3 * cpu / max(1, delivered)}


def imported_frames(h: Hosts, tag: str) -> int:
    """Frames B's bridge has written into ``tag`` (from its own account, over Zenoh)."""
    for doc in bridge_status(h.ep["b"]):
        for row in doc.get("imported", ()):
            if doc["bridge"] == "ws" and row["tag"] == tag:
                return int(row["frames"])
    raise RuntimeError(f"bridge ws does not import {tag}")


def subscriber_child(kind: str, port: int) -> None:
    """``--child zenoh|zmq PORT``: the receiving side of the bare baselines, in its own
    process as the bridge's importer is: prints one line per message, ``seq latency_us``."""
    out = sys.stdout
    if kind == "zenoh":
        zenoh = zconfig.zenoh_module()
        s = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))

        def on(sample: Any) -> None:
            data = sample.payload.to_bytes()
            t, seq = unstamp(data)
            out.write(f"{seq} {(time.monotonic_ns() - t) / 1e3}\n")
            out.flush()

        s.declare_subscriber("bench/raw", on)
        sys.stdin.read()  # until the parent closes our stdin
        s.close()
    else:
        import zmq

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        while True:
            m = sub.recv(copy=False)
            t, seq = unstamp(m.buffer)
            out.write(f"{seq} {(time.monotonic_ns() - t) / 1e3}\n")
            out.flush()
            if seq == END_SEQ:
                break
        sub.close(0)
        ctx.term()


class Baseline:
    """A bare publisher here, its subscriber in a child process (``subscriber_child``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "zenoh":
            zenoh = zconfig.zenoh_module()
            self.session = zenoh.open(zconfig.build(listen=[f"tcp/127.0.0.1:{self.port}"]))
            pub = self.session.declare_publisher("bench/raw", congestion_control=zenoh.CongestionControl.BLOCK,
                                                 express=True)
            self.send = lambda buf: pub.put(buf.tobytes())  # (the bridge pays this copy too)
        else:
            import zmq

            self.ctx = zmq.Context()
            sock = self.ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.bind(f"tcp://127.0.0.1:{self.port}")
            # copy=True: a zero-copy send (frames of 64 KiB and more) left a message for
            # pyzmq's garbage-collector thread, and ctx.term() in close() then hung for good.
            self.send = lambda buf: sock.send(buf, copy=True)
            self.sock = sock
        self.child = subprocess.Popen([sys.executable, __file__, "--child", kind, str(self.port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[tuple[int, float]] = []
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            seq, us = line.split()
            self.lines.append((int(seq), float(us)))

    def wait_for(self, seq: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(s == seq for s, _ in self.lines[-5:]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare {self.kind}: message {seq} did not arrive")
            time.sleep(0.0001)

    def run(self, shape: tuple[int, ...], n: int, seconds: float) -> tuple[list[float], float]:
        buf = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        deadline = time.monotonic() + 20
        while not self.lines:  # until the subscription is through
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare {self.kind}: the subscriber never got a message")
            stamp(buf, -100)
            self.send(buf)
            time.sleep(0.05)
        for i in range(-20, n):  # one at a time, as bridge_latency does
            stamp(buf, i)
            self.send(buf)
            self.wait_for(i)
        lat = [us for s, us in self.lines if 0 <= s < n]
        self.lines.clear()
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            stamp(buf, n + i)
            self.send(buf)
            i += 1
        self.wait_for(n + i - 1, 60)
        fps = sum(1 for s, _ in self.lines if s >= n) / (time.monotonic() - t0)
        return lat, fps

    def close(self) -> None:
        if self.kind == "zmq":
            buf = np.zeros(16, np.uint8)
            stamp(buf, END_SEQ)
            self.send(buf)
        assert self.child.stdin is not None
        self.child.stdin.close()
        try:
            self.child.wait(60)
        except subprocess.TimeoutExpired:  # (a queue of big frames still draining)
            self.child.kill()
            self.child.wait()
        if self.kind == "zenoh":
            self.session.close()
        else:
            self.sock.close(0)
            self.ctx.term()


def baseline(kind: str, shape: tuple[int, ...], n: int, seconds: float) -> tuple[list[float], float]:
    b = Baseline(kind)
    try:
        return b.run(shape, n, seconds)
    finally:
        b.close()


def codec_figures(reps: int) -> list[dict[str, Any]]:
    y, x = np.mgrid[0:720, 0:1280]
    rng = np.random.default_rng(0)
    # A camera-like frame: smooth shading, edges, a little sensor noise.
    img = ((x // 4 + y // 3) % 256 + rng.normal(0, 3, (720, 1280))).clip(0, 255)
    frame = np.stack([img, np.roll(img, 40, 1), 255 - img], -1).astype(np.uint8)
    out = []
    for spec in ("raw", "zstd", "zstd:3", "jpeg:90", "jpeg:75"):
        c = Codec.parse(spec)
        enc, dec = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            payload = c.encode(frame)
            t1 = time.perf_counter()
            decode(c.kind, payload, frame.dtype, frame.shape)
            dec.append(time.perf_counter() - t1)
            enc.append(t1 - t0)
        out.append({"codec": spec, "bytes": len(payload), "ratio": frame.nbytes / len(payload),
                    "encode_ms": 1e3 * statistics.median(enc), "decode_ms": 1e3 * statistics.median(dec),
                    "mb_per_s_at_30hz": len(payload) * 30 / 1e6})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        subscriber_child(args.child[0], int(args.child[1]))
        return
    n_small, n_big, seconds = (100, 30, 1.0) if args.quick else (400, 100, 3.0)
    root = tempfile.mkdtemp(prefix="ndsbr")
    results: dict[str, Any] = {"sizes": [], "codecs": [], "cpus": os.cpu_count()}
    hosts = Hosts(root)
    try:
        for name, shape in SIZES:
            n = n_small if np.prod(shape) <= 65536 else n_big
            tag = name.replace(" ", "")
            lat = bridge_latency(hosts, tag, shape, n)
            sus = bridge_sustained(hosts, tag, shape, seconds, None)
            zlat, zfps = baseline("zenoh", shape, n, seconds)
            qlat, qfps = baseline("zmq", shape, n, seconds)
            row = {
                "size": name, "bytes": int(np.prod(shape)),
                "bridge_us_p50": statistics.median(lat), "bridge_us_p99": pct(lat, 0.99),
                "zenoh_us_p50": statistics.median(zlat), "zenoh_us_p99": pct(zlat, 0.99),
                "zmq_us_p50": statistics.median(qlat), "zmq_us_p99": pct(qlat, 0.99),
                "bridge_fps": sus["fps"], "zenoh_fps": zfps, "zmq_fps": qfps,
                "bridge_cpu_ms_per_frame": sus["cpu_ms_per_frame"],
            }
            row["latency_ratio"] = row["bridge_us_p50"] / row["zenoh_us_p50"]
            results["sizes"].append(row)
            print(json.dumps(row), flush=True)
        results["720p_60hz"] = bridge_sustained(hosts, "720p60", (720, 1280, 3), seconds, 60.0)
        print(json.dumps(results["720p_60hz"]), flush=True)
    except BaseException:
        for h in ("a", "b"):  # (the logs go with the folder: show what the bridges said)
            log = read_text(os.path.join(root, h, "bridge.log")).splitlines()
            print(f"--- bridge log of host {h}, last lines:", *log[-15:], sep="\n", file=sys.stderr)
        raise
    finally:
        hosts.close()
        shutil.rmtree(root, ignore_errors=True)
    results["codecs"] = codec_figures(5 if args.quick else 20)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bridge.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))


def report(res: dict[str, Any]) -> str:
    lines = [
        "| frame | bridge p50 / p99 | bare Zenoh p50 / p99 | pyzmq p50 / p99 | bridge / Zenoh | "
        "bridge fps | Zenoh fps | pyzmq fps | bridges' CPU per frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["sizes"]:
        lines.append(
            f"| {r['size']} | {r['bridge_us_p50']:.0f} / {r['bridge_us_p99']:.0f} us | {r['zenoh_us_p50']:.0f} / "
            f"{r['zenoh_us_p99']:.0f} us | {r['zmq_us_p50']:.0f} / {r['zmq_us_p99']:.0f} us | "
            f"{r['latency_ratio']:.2f}x | {r['bridge_fps']:.0f} | {r['zenoh_fps']:.0f} | {r['zmq_fps']:.0f} | "
            f"{r['bridge_cpu_ms_per_frame']:.2f} ms |")
    s = res["720p_60hz"]
    worst = max(r["latency_ratio"] for r in res["sizes"])
    lines += [
        "",
        f"720p at 60 Hz for {s['elapsed']:.0f} s: {s['written']} written on A, {s['delivered']} written by the "
        f"bridge on B ({s['lost']} lost: {'floor met' if s['lost'] == 0 else 'FLOOR MISSED'}), {s['read_on_b']} "
        "read by a reader there.",
        f"Latency: worst bridge/Zenoh median ratio {worst:.2f}x ({'floor met' if worst <= 1.5 else 'FLOOR MISSED'}: "
        "within 1.5x).",
        "",
        "| codec (720p camera-like frame) | bytes | ratio | encode | decode | at 30 Hz |",
        "|---|---|---|---|---|---|",
    ]
    for c in res["codecs"]:
        lines.append(f"| {c['codec']} | {c['bytes']:,} | {c['ratio']:.1f}x | {c['encode_ms']:.1f} ms | "
                     f"{c['decode_ms']:.1f} ms | {c['mb_per_s_at_30hz']:.1f} MB/s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
