"""Benchmark ndsharray against its peers, in one run on one machine.

    python benchmarks/run.py [--quick] [--out DIR] [--impls a,b] [--sizes 0,2]

Every implementation gets a writer process and a reader process (plus a zygote that starts
a fresh reader process per attach time); this orchestrator only sends them commands and
collects their samples. Measurements are interleaved: for each size and repetition, each
figure is measured for every implementation in turn, in an order that rotates with the
repetition, so drift on this shared machine hits everyone alike. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import multiprocessing
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402
import report  # noqa: E402
from peers import LIMITS, NDS114_DIR, ORDER, REQUIRES  # noqa: E402
from peers.base import Spec  # noqa: E402

NDS114 = HERE.parent / NDS114_DIR
SHM = "/dev/shm"

# label, shape, dtype
SIZES: list[tuple[str, tuple[int, ...], str]] = [
    ("1 KiB", (1024,), "uint8"),
    ("64 KiB", (65536,), "uint8"),
    ("720p", (720, 1280, 3), "uint8"),
    ("1080p", (1080, 1920, 3), "uint8"),
    ("256 MiB", (4096, 8192), "float64"),
]


@dataclass(frozen=True)
class Plan:
    reps: tuple[int, ...]  # repetitions, per size
    n_lat: tuple[int, ...]  # latency frames per phase and repetition, per size
    sustain_s: tuple[float, ...]  # seconds flat out per slice, per size
    idle_s: float
    warm: tuple[int, ...] = (4, 4, 4, 4, 2)  # unmeasured frames after setup: pages mapped, caches warm
    # Pause between latency frames (x0.5..1.5), the same for busy-polling and blocking
    # readers so their latencies differ by the reader only (a longer pause alone makes the
    # next write slower: caches cool). 0.15 ms is plenty to fall asleep: our blocking
    # reader sleeps in FUTEX_WAIT before each of these frames (counted by hand: 400 of 400).
    gap: float = 0.0003
    # Slices per repetition, every implementation in turn within each: a latency figure's
    # frames are split over them, a flat-out figure gets one slice of sustain_s each. On a shared
    # machine one slice can land on a moment when the writer and the reader share one CPU
    # with other processes (then either gets tens of frames/s), so a median over more,
    # shorter, interleaved slices holds up better than one over three long ones (issue 16).
    # The host's memory bandwidth also swings for seconds at a time (one process copying
    # 1080p frames in a loop: 1,900 to 4,500 copies/s from one 0.2 s sample to the next),
    # so a ratio between implementations is taken within each round, where both ran within
    # a second of each other, and the median of those ratios reported (report.paired).
    slices: int = 3


FULL = Plan(reps=(3, 3, 3, 3, 2), n_lat=(400, 300, 150, 100, 6), sustain_s=(0.3, 0.3, 0.3, 0.3, 1.0),
            idle_s=10.0)
QUICK = Plan(reps=(1, 1, 1, 1, 1), n_lat=(150, 100, 40, 30, 1), sustain_s=(0.25, 0.25, 0.3, 0.3, 1.0),
             idle_s=2.0, warm=(3, 3, 3, 3, 1), slices=1)


# ---- setup of the peers -----------------------------------------------------------------


def missing_peers(impls: list[str]) -> dict[str, str]:
    """Peers whose module is not installed -> the command that installs it.

    Nothing is installed while the benchmark runs (it would change the environment being
    measured, and needs the network): a missing peer is skipped and reported.
    """
    out = {}
    for impl in impls:
        if impl not in REQUIRES:
            continue
        mod, hint = REQUIRES[impl]
        if impl == "ndsharray-1.1.4":  # its import name clashes with ours: a folder of its own
            found = (NDS114 / "ndsharray" / "__init__.py").exists()
        else:
            found = importlib.util.find_spec(mod) is not None
        if not found:
            out[impl] = hint
    return out


# ---- worker processes -------------------------------------------------------------------


class Worker:
    """One measure.py process; one JSON line per command each way."""

    def __init__(self, role: str, impl: str, ctrl: str, env: dict[str, str], log: IO[bytes],
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name = f"{impl}/{role}"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "measure.py"), role, impl, ctrl],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            pass_fds=pass_fds, cwd=HERE,
        )
        self.buf = b""

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no reply within {timeout:g} s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        res: dict[str, Any] = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"{self.name}: {res['error']}")
        return res

    def call(self, wait: float, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.recv(wait)

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None and not kill:
            try:
                self.send(op="quit")
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Impl:
    """An implementation's writer, reader and zygote processes, and their control block."""

    def __init__(self, name: str, idx: int, tmp: str, env: dict[str, str], log: IO[bytes]) -> None:
        self.name, self.idx, self.tmp, self.env, self.log = name, idx, tmp, dict(env), log
        if name == "ndsharray-1.1.4":
            self.env["PYTHONPATH"] = str(NDS114)
        self.workers: dict[str, Worker] = {}
        self.spawns = 0

    def spawn(self) -> None:
        self.spawns += 1
        self.ctrl_path = os.path.join(self.tmp, f"{self.idx}-{self.spawns}.ctl")
        with open(self.ctrl_path, "wb") as f:
            f.write(bytes(4096))
        self.ctrl = measure.open_ctrl(self.ctrl_path)
        self.fds = {"writer": -1, "reader": -1}
        if self.name in LIMITS:
            self.workers = {"writer": Worker("limit", self.name, "-", self.env, self.log)}
            return
        ends = multiprocessing.Pipe() if self.name == "mp.Pipe" else None
        for role, end in zip(("writer", "reader"), ends or (None, None), strict=False):
            fds = (end.fileno(),) if end is not None else ()
            self.fds[role] = fds[0] if fds else -1
            self.workers[role] = Worker(role, self.name, self.ctrl_path, self.env, self.log, fds)
        if ends is not None:
            for end in ends:
                end.close()
        self.workers["zygote"] = Worker("zygote", self.name, "-", self.env, self.log)

    def hello(self) -> None:
        info = self.workers["writer"].call(120, op="hello")
        self.na: dict[str, str] = info["na"]
        self.copy_option: bool = info["copy_option"]
        for w in self.workers.values():
            if w is not self.workers["writer"]:
                w.call(120, op="hello")

    @property
    def alive(self) -> bool:
        return bool(self.workers)

    def setup(self, spec: Spec) -> None:
        for role in ("writer", "reader"):
            if role in self.workers:
                s = asdict(spec) | {"pipe_fd": self.fds[role]}
                self.workers[role].call(600, op="setup", spec=s)
        if "reader" in self.workers:
            self.workers["writer"].call(30, op="sync")

    def close_size(self) -> None:
        for role in ("reader", "writer"):
            if role in self.workers:
                self.workers[role].call(120, op="close")

    def stop(self, kill: bool = False) -> None:
        for w in self.workers.values():
            w.stop(kill)
        self.workers = {}


# ---- the run ----------------------------------------------------------------------------


Samples = dict[str, dict[str, dict[str, list[float]]]]  # impl -> size label -> figure -> values
KINDS = ("lat_busy", "lat_copy", "lat_block", "sustained", "attach")  # measured per repetition


class Bench:
    def __init__(self, plan: Plan, impls: list[str], sizes: list[int], tmp: str, endpoint: str,
                 log: IO[bytes]) -> None:
        self.plan, self.sizes, self.tmp, self.endpoint = plan, sizes, tmp, endpoint
        env = dict(os.environ, NDSHARRAY_ENDPOINT=endpoint, OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("PYTHONPATH", None)
        self.impls = [Impl(name, i, tmp, env, log) for i, name in enumerate(impls)]
        self.samples: Samples = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        self.counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        self.errors: dict[str, dict[str, str]] = defaultdict(dict)
        self.extra: dict[str, Any] = {"nds114_removed": 0, "seconds": {}}
        self.ph = itertools.count(1)
        # Per size and figure, one {implementation: value} per round, in order.
        self.rounds: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))

    def run(self) -> None:
        for impl in self.impls:
            impl.spawn()
        for impl in self.impls:
            impl.hello()
        for si in self.sizes:
            label, shape, dtype = SIZES[si]
            spec = Spec(key=f"{os.getpid()}-{si}", shape=shape, dtype=dtype, tmpdir=self.tmp,
                        endpoint=self.endpoint)
            t0 = time.monotonic()
            spent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            print(f"== {label} {shape} {dtype}", flush=True)
            for impl in self.impls:
                self.step(impl, label, spent, "setup", self.setup, impl, spec)
            for impl in self.impls:  # unmeasured frames: every slot's pages mapped, caches warm
                self.step(impl, label, spent, "warm", self.phase, impl, "warm", si, spec)
            # And one unmeasured flat-out slice: the figures are the steady state, so a ring
            # that grows once under a reader holding its frame (ours over 64 MiB starts with
            # 2 slots) grows here, as iceoryx2 allocates its chunks during setup.
            for impl in self.impls:
                if self.applies(impl, "sustained"):
                    self.step(impl, label, spent, "warm", self.phase, impl, "warm_sustained", si, spec)
            if si == self.sizes[0]:
                self.idle(label)
            for rep in range(self.plan.reps[si]):
                k = rep % len(self.impls)
                order = self.impls[k:] + self.impls[:k]  # who goes first rotates
                for kind in KINDS:
                    slices = 1 if kind == "attach" else self.plan.slices
                    for _ in range(slices):
                        # One round: every implementation once, back to back. Their ratio
                        # within a round is the paired figure (see report.paired).
                        rnd: dict[str, dict[str, float]] = defaultdict(dict)  # figure -> implementation -> value
                        for impl in order:
                            if self.applies(impl, kind):
                                self.step(impl, label, spent, kind, self.phase, impl, kind, si, spec, rnd)
                        for figure, values in rnd.items():
                            self.rounds[label][figure].append(values)
            for impl in self.impls:
                self.step(impl, label, spent, "close", impl.close_size)
            prefix = f"ndsb114-{spec.key}"
            self.extra["nds114_removed"] += len(remove_shm(lambda n, p=prefix: n.startswith(p)))  # never unlinked
            self.extra["seconds"][label] = spent
            print(f"   {time.monotonic() - t0:.1f} s; " + ", ".join(
                f"{name} {sum(k.values()):.1f}" for name, k in spent.items()), flush=True)

    def step(self, impl: Impl, label: str, spent: dict[str, dict[str, float]], what: str,
             fn: Callable[..., Any], *args: Any) -> None:
        """Run one step of a live implementation; on failure, kill its processes (respawned next size)."""
        if not impl.alive and what != "setup":
            return
        t1 = time.monotonic()
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            msg = f"{type(exc).__name__}: {exc}"
            print(f"  !! {impl.name} @ {label} {what}: {msg}", flush=True)
            self.errors[impl.name].setdefault(label, msg)
            impl.stop(kill=True)
        spent[impl.name][what] += time.monotonic() - t1

    @staticmethod
    def setup(impl: Impl, spec: Spec) -> None:
        if not impl.alive:
            impl.spawn()
            impl.hello()
        impl.setup(spec)

    @staticmethod
    def applies(impl: Impl, kind: str) -> bool:
        if not impl.alive:
            return False
        if impl.name in LIMITS:
            return kind in ("lat_busy", "sustained")
        if kind == "lat_copy":
            return impl.copy_option
        return kind not in impl.na

    def phase(self, impl: Impl, kind: str, si: int, spec: Spec,
              rnd: dict[str, dict[str, float]] | None = None) -> None:
        label = SIZES[si][0]
        p = self.plan
        nbytes = spec.nbytes
        ph = next(self.ph)
        n = p.warm[si] if kind == "warm" else max(1, p.n_lat[si] // p.slices)  # frames of one slice
        warm = kind in ("warm", "warm_sustained")
        kind = {"warm": "lat_busy", "warm_sustained": "sustained"}.get(kind, kind)
        per_frame = 0.01 + nbytes / 20e6  # generous: the slowest peer copies ~5 times
        S, C = self.samples[impl.name][label], self.counts[impl.name][label]
        w = impl.workers["writer"]
        if kind == "attach":
            w.send(op="phase", kind="serve", ph=ph)
            try:
                res = impl.workers["zygote"].call(120, op="attach", spec=asdict(spec), timeout=60)
            finally:
                impl.ctrl[measure.SERVED] = ph
            w.recv(30)
            S["attach"].append(res["attach_ns"])
            return
        if kind in ("lat_busy", "lat_copy", "lat_block"):
            gap = p.gap
            params: dict[str, Any] = dict(n=n, gap=gap, ack_timeout=0.2 + nbytes / 30e6)
            timeout = 60 + n * (gap + 10 * per_frame)
        else:  # sustained
            # The warm-up slice as long as a measured one: at 256 MiB our ring's growth takes
            # its first ~0.4 s, and a shorter slice left our reader too few frames to touch
            # every slot of the new ring (its first touch of one: ~4,000 minor faults, ~15 ms,
            # then fell into a measured slice: benchmarks/README.md).
            params = dict(secs=p.sustain_s[si])
            timeout = 60 + 5 * p.sustain_s[si] + 20 * per_frame
        r = impl.workers.get("reader")
        if r is not None:
            r.send(op="phase", kind=kind, ph=ph, **params)
        wres = w.call(timeout, op="phase", kind=kind, ph=ph, **params)
        rres = r.recv(timeout) if r is not None else wres
        if warm:
            return
        if kind == "sustained":
            S["fps"].append(rres["good"] / rres["secs"])
            if rnd is not None:
                rnd[kind][impl.name] = S["fps"][-1]
            C["torn"] += rres["torn"]
            C["stale"] += rres.get("stale", 0)
            C["received"] += rres["good"]
            C["written"] += wres.get("written", rres["good"])
            C["retries"] = rres.get("retries", 0)  # the seqlock reader's running total
            if "mem_per_read" in rres:
                S["mem_per_read"].append(rres["mem_per_read"])
                S["anon_per_read"].append(rres["anon_per_read"])
            return
        C["lost"] += wres.get("lost", 0)
        if rnd is not None and rres.get("lat_ns"):
            rnd[kind][impl.name] = float(np.median(rres["lat_ns"])) * report.US
            if wres.get("write_ns") and kind == "lat_busy":
                rnd["write"][impl.name] = float(np.median(wres["write_ns"])) * report.US
        if kind == "lat_busy":
            S["write"] += wres["write_ns"]
            S["read_new"] += rres["new_ns"]
            S["read_none"] += rres.get("none_ns", [])
            S["lat_busy"] += rres["lat_ns"]
        elif kind == "lat_copy":
            S["read_new_copy"] += rres["new_ns"]
            S["lat_busy_copy"] += rres["lat_ns"]
        else:
            S["lat_block"] += rres["lat_ns"]
            S["write_block"] += wres["write_ns"]

    def idle(self, label: str) -> None:
        """Readers blocked on idle tags, all implementations that can block at once."""
        impls = [i for i in self.impls if i.alive and i.name not in LIMITS and "idle_cpu" not in i.na]
        if not impls:
            return
        ph = next(self.ph)
        secs = self.plan.idle_s
        print(f"   idle readers for {secs:g} s: {', '.join(i.name for i in impls)}", flush=True)
        daemon = daemon_cpu(self.endpoint)
        for impl in impls:
            impl.workers["reader"].send(op="phase", kind="idle", ph=ph)
            impl.workers["writer"].send(op="phase", kind="idle", ph=ph, secs=secs)
        for impl in impls:
            try:
                res = impl.workers["reader"].recv(secs + 60)
                impl.workers["writer"].recv(30)
                self.samples[impl.name]["*"]["idle_cpu"].append(100 * res["cpu_s"] / res["secs"])
            except Exception as exc:  # noqa: BLE001
                self.errors[impl.name].setdefault(label, f"idle: {type(exc).__name__}: {exc}")
                impl.stop(kill=True)
        after = daemon_cpu(self.endpoint)
        if daemon and after:
            self.extra["daemon_idle_cpu_pct"] = 100 * (after[0] - daemon[0]) / (after[1] - daemon[1])

    def stop(self) -> None:
        for impl in self.impls:
            impl.stop()


def daemon_cpu(endpoint: str) -> tuple[float, float] | None:
    """(CPU seconds, wall seconds) of our ndsharrayd, from /proc/PID/stat."""
    from ndsharray.admin import daemon_pid

    pid = daemon_pid(endpoint)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, time.monotonic()


def running(pid: int, wait: float = 5.0) -> bool:
    """True if ``pid`` is still alive (not gone, not a zombie) after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except OSError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def cpu_seconds() -> dict[str, float]:
    """Machine-wide busy and steal CPU seconds (/proc/stat), and this process tree's own."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return {"busy": (sum(v[:8]) - v[3] - v[4] - v[7]) / tick, "steal": v[7] / tick,
            "ours": t.user + t.system + t.children_user + t.children_system, "wall": time.monotonic()}


def remove_shm(pred: Any) -> list[str]:
    gone = []
    for name in os.listdir(SHM):
        if pred(name):
            try:
                os.unlink(os.path.join(SHM, name))
                gone.append(name)
            except FileNotFoundError:
                pass
    return gone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute: 1 repetition, fewer frames")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for results.{md,json} and the PNG")
    ap.add_argument("--impls", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    ap.add_argument("--sizes", default=",".join(str(i) for i in range(len(SIZES))),
                    help="comma-separated indexes into " + ", ".join(f"{i}={s[0]}" for i, s in enumerate(SIZES)))
    args = ap.parse_args()
    impls = [name for name in args.impls.split(",") if name]
    unknown = set(impls) - set(ORDER)
    if unknown:
        ap.error(f"unknown implementations: {sorted(unknown)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    skipped = missing_peers(impls)
    for impl, hint in skipped.items():
        print(f"skipping {impl}: not installed (to include it: {hint})", flush=True)
    impls = [name for name in impls if name not in skipped]

    t_start = time.monotonic()
    cpu0 = cpu_seconds()
    from ndsharray import config
    from ndsharray.admin import daemon_pid, stop_daemon

    shm_before = set(os.listdir(SHM))
    tmp = tempfile.mkdtemp(prefix="ndsb-", dir="/tmp")  # short: ipc paths stay far below 100 bytes
    endpoint = f"ipc://{tmp}/d.sock"
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    ours_prefix = config.segment_prefix(endpoint)
    print(report.machine_line(), flush=True)
    print(f"private daemon endpoint {endpoint}; worker stderr in {out / 'workers.log'}", flush=True)
    bench = None
    daemon = None
    daemon_cpu_s = 0.0
    with open(out / "workers.log", "wb") as log:
        try:
            bench = Bench(plan, impls, sizes, tmp, endpoint, log)
            bench.run()
        finally:
            if bench is not None:
                bench.stop()
            daemon = daemon_pid(endpoint)
            daemon_cpu_s = (daemon_cpu(endpoint) or (0.0, 0.0))[0]
            stop_daemon(endpoint)
            if os.path.exists(f"{tmp}/d.sock.log"):
                shutil.copy(f"{tmp}/d.sock.log", out / "ndsharrayd.log")
                if bench is not None:
                    with open(f"{tmp}/d.sock.log") as f:
                        bench.extra["daemon_starts"] = sum(" serving " in ln for ln in f)
            shutil.rmtree(tmp, ignore_errors=True)
    key = f"{os.getpid()}-"
    old = remove_shm(lambda n: n.startswith("ndsb114-" + key))
    ecal_domain = "ndsb_ecal_" + str(os.getpid())  # eCAL keeps its registration files (peers/ecal_shm.py)
    ecal_left = remove_shm(lambda n: n.startswith(ecal_domain))
    new = sorted(set(os.listdir(SHM)) - shm_before)
    ours = [n for n in new if n.startswith((ours_prefix, "ndsb-raw-" + key, "ndsb-sa-" + key))]
    leaks = {"removed_leftovers_of_ndsharray_1.1.4": old, "removed_ecal_registration": ecal_left, "leaked": ours,
             "new_in_dev_shm_not_ours": [n for n in new if n not in ours]}
    remove_shm(lambda n: n in ours)
    still = daemon is not None and running(daemon)
    wall = time.monotonic() - t_start
    cpu1 = cpu_seconds()
    span = cpu1["wall"] - cpu0["wall"]
    others = (cpu1["busy"] - cpu0["busy"]) - (cpu1["ours"] - cpu0["ours"]) - daemon_cpu_s
    load = {"other_processes_cpu_pct": 100 * max(0.0, others) / span / (os.cpu_count() or 1),
            "steal_pct": 100 * (cpu1["steal"] - cpu0["steal"]) / span / (os.cpu_count() or 1)}
    if bench is not None:
        bench.extra["nds114_removed"] += len(old)

    data = report.build(bench, SIZES, sizes, plan, wall, leaks, daemon_left=still)
    data["machine_load"] = load
    data["skipped"] = skipped
    data["command"] = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
    md = report.markdown(data)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    if importlib.util.find_spec("matplotlib") is not None:
        report.plot(data, out / "latency_throughput.png")
    else:
        print('no PNG: matplotlib is not installed (pip install -e ".[bench]")')
    print()
    print(md)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'latency_throughput.png'}")


if __name__ == "__main__":
    main()
