"""ndsharray bridge across "hosts" on this machine: each host a real ndsharrayd on its own
private endpoint and its own bridge process, linked by Zenoh over tcp/127.0.0.1 only
(explicit ports, scouting off)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, our_segments, wait_until

import ndsharray
from ndsharray import NdShArray, tag_info
from ndsharray.bridge import Bridge, wire, zconfig

pytest.importorskip("zenoh", reason="pip install 'ndsharray[bridge]' (CI installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BridgeProc:
    """``ndsharray bridge`` as its own process, next to one host's daemon."""

    def __init__(self, host: Daemon, name: str, *args: str) -> None:
        self.host, self.name, self.args = host, name, args
        self.log = os.path.join(host.folder, f"bridge-{name}-{time.monotonic_ns()}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProc:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ndsharray", "--endpoint", self.host.endpoint, "bridge", "--name", self.name,
                 "--log-level", "DEBUG", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        proc = self.proc
        wait_until(lambda: f"bridge {self.name} running" in self.read_log() or proc.poll() is not None,
                   what=f"bridge {self.name} running")
        assert proc.poll() is None, self.read_log()
        return self

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        assert "Traceback" not in self.read_log(), self.read_log()
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def hosts(folder: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``hosts(n)``: n hosts, daemons at <folder>/d.sock, <folder>/b/d.sock, <folder>/c/d.sock."""
    monkeypatch.setenv(ndsharray.config.ENV_AUTOSTART, "0")
    made: list[Daemon] = []

    def make(n: int) -> list[Daemon]:
        for sub in ("", "b", "c")[:n]:
            path = os.path.join(folder, sub) if sub else folder
            os.makedirs(path, exist_ok=True)
            made.append(Daemon(path).start())
        return made

    try:
        yield make
    finally:
        ndsharray.close_all()
        for d in made:
            assert d.stop() == 0, d.read_log()
            assert "Traceback" not in d.read_log()
            assert not our_segments(d.prefix), f"segments left at {d.endpoint}"


@pytest.fixture
def bridges() -> Iterator[Any]:
    made: list[BridgeProc] = []

    def make(host: Daemon, name: str, *args: str) -> BridgeProc:
        b = BridgeProc(host, name, *args).start()
        made.append(b)
        return b

    yield make
    problems = []
    for b in made:  # every one stopped, even after another's stop failed: none outlives the test
        if b.proc is None or b.proc.poll() is not None:
            continue
        try:
            rc = b.stop()
        except BaseException as exc:  # (a timeout, or a traceback in its log)
            b.kill()
            problems.append(f"bridge {b.name}: {exc}")
        else:
            if rc != 0:
                problems.append(f"bridge {b.name} exited {rc}:\n{b.read_log()}")
    assert not problems, "\n".join(problems)


def frame(i: int) -> np.ndarray:
    """Frame ``i``: its shape and dtype change every few frames; its words say which it is."""
    kinds = [(np.uint8, (4, 6)), (np.float64, (3, 5, 2)), (np.int16, (7,)), (np.uint8, (48, 64, 3)),
             (np.complex64, (2, 2))]
    dtype, shape = kinds[(i // 3) % len(kinds)]
    n = int(np.prod(shape))
    words = (np.arange(n, dtype=np.uint64) * 2654435761 + i * 97) % 251
    out: np.ndarray = (words.astype(dtype) + dtype(i % 7)).reshape(shape)
    return out


def index_of(a: np.ndarray) -> int | None:
    """Which frame() ``a`` is (None if it is none of them, bit for bit)."""
    for i in range(200):
        f = frame(i)
        if f.dtype == a.dtype and f.shape == a.shape and f.tobytes() == a.tobytes():
            return i
    return None


def read_until(reader: NdShArray, pred: Any, timeout: float = 15.0) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok, a = reader.read(copy=True, timeout=0.5)
        if ok and pred(a):
            return a
    raise AssertionError(f"{reader.tag}: no matching frame within {timeout} s")


def test_frames_cross_whole_and_in_order_to_two_hosts(hosts: Any, bridges: Any) -> None:
    a, b, c = hosts(3)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    bridges(b, "ws", "--import", "robot1/camera/**", "--connect", f"tcp/127.0.0.1:{port}")
    bridges(c, "gpu", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{port}")
    w = NdShArray("camera/left", frame(0), "w", endpoint=a.endpoint)
    rb = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    rc = NdShArray("robot1/camera/left", r_w="r", endpoint=c.endpoint)
    # Lockstep: every frame, across every shape and dtype change, reaches both hosts intact.
    for i in range(15):
        if i:
            w.write(frame(i))
        for r in (rb, rc):
            got = read_until(r, lambda x, i=i: index_of(x) == i)
            assert got.tobytes() == frame(i).tobytes()
    # Flat out: whatever arrives is a whole frame, never a mix, and never goes backwards.
    seen: dict[str, list[int]] = {"b": [], "c": []}

    def watch(key: str, r: NdShArray) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ok, x = r.read(timeout=0.5)
            if ok:
                k = index_of(x)
                assert k is not None, f"host {key}: a frame that is none of the written ones"
                seen[key].append(k)
                if k == 59:
                    return

    threads = [threading.Thread(target=watch, args=kv) for kv in (("b", rb), ("c", rc))]
    for t in threads:
        t.start()
    for i in range(15, 60):
        w.write(frame(i))
        time.sleep(0.002)
    for t in threads:
        t.join()
    for key, indices in seen.items():
        assert indices and indices[-1] == 59, f"host {key} did not get the last frame: {indices}"
        assert indices == sorted(set(indices)), f"host {key}: out of order or repeated: {indices}"
    w.close()


def meta_of(i: int) -> dict[str, Any] | bytes:
    """Frame ``i``'s metadata: a dict for most, bytes for every fourth (both kinds travel)."""
    return i.to_bytes(4, "little") * 3 if i % 4 == 3 else {"id": i, "exposure": i / 7, "name": f"f{i}\u00e9"}


def test_each_frame_carries_its_own_metadata_across_the_bridge(hosts: Any, bridges: Any) -> None:
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    bridges(b, "ws", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{port}")
    # More metadata room than the default: the imported tag must have it too.
    w = NdShArray("camera/left", r_w="w", endpoint=a.endpoint, meta_capacity=9000)
    w.write(frame(0), meta=meta_of(0))
    r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)

    def check(x: np.ndarray) -> int:
        k = index_of(x)
        assert k is not None, "a frame that is none of the written ones"
        assert r.meta == meta_of(k), f"frame {k} arrived with the metadata {r.meta!r:.80}"
        return k

    # Lockstep, across every shape and dtype change: each frame with exactly its metadata.
    for i in range(15):
        if i:
            w.write(frame(i), meta=meta_of(i))
        read_until(r, lambda x, i=i: index_of(x) == i)
        assert check(r.read()[1]) == i
    big = {"id": 15, "blob": "x" * 8000}  # beyond the default 4096 bytes per frame
    w.write(frame(15), meta=big)
    read_until(r, lambda x: index_of(x) == 15)
    assert r.meta == big
    assert tag_info("robot1/camera/left", b.endpoint).meta_capacity == 9000
    # Flat out (frames skipped as the link allows): whatever arrives has its own metadata.
    seen = []
    for i in range(16, 60):
        w.write(frame(i), meta=meta_of(i))
        ok, x = r.read()
        if ok:
            seen.append(check(x))
    seen.append(check(read_until(r, lambda x: index_of(x) == 59)))
    assert seen == sorted(set(seen)), seen
    w.write(frame(60))  # and a frame without metadata has none there either
    read_until(r, lambda x: index_of(x) == 60)
    assert r.meta is None
    w.close()


def test_readers_on_the_importing_host_see_the_source_writers_write_time(hosts: Any, bridges: Any) -> None:
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    w = NdShArray("camera/left", r_w="w", endpoint=a.endpoint)
    ra = NdShArray("camera/left", r_w="r", endpoint=a.endpoint)  # what A's own readers see
    w.write(frame(0), meta={"id": 0})
    assert ra.read(timeout=5)[0]
    source = {0: ra.write_time_ns}
    # B's bridge starts only now: whatever it writes, it writes after this instant, which
    # frame 0's write time on A predates. (Both "hosts" are this machine: same clocks.)
    before_b = time.monotonic_ns()
    bridges(b, "ws", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{port}")
    rb = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    read_until(rb, lambda x: index_of(x) == 0)
    # Frame 0's write time on B is A's, not B's bridge's (which came after before_b); and
    # its age there counts from A's write.
    assert abs(rb.write_time_ns - source[0]) < 2_000_000, (rb.write_time_ns - source[0], before_b - source[0])
    assert rb.write_time_ns < before_b
    assert rb.read_time_ms >= (before_b - source[0]) / 1e6
    for i in range(1, 8):  # each frame its own write time, matched by its metadata
        w.write(frame(i), meta={"id": i})
        assert ra.read(timeout=5)[0] and ra.meta == {"id": i}
        source[i] = ra.write_time_ns
        read_until(rb, lambda x, i=i: index_of(x) == i)
        assert rb.meta == {"id": i}
        assert abs(rb.write_time_ns - source[i]) < 2_000_000, rb.write_time_ns - source[i]
        assert rb.write_time_ns <= time.monotonic_ns()
    w.close()


def test_ls_remote_lists_the_tags_other_bridges_export(hosts: Any, bridges: Any) -> None:
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    bridges(b, "ws", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{port}")
    w1 = NdShArray("camera/left", np.zeros((6, 8, 3), np.uint8), "w", endpoint=a.endpoint)
    w2 = NdShArray("other/x", np.zeros(3), "w", endpoint=a.endpoint)  # not exported

    def ls_remote() -> str:
        out = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", b.endpoint, "ls", "--remote"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def left_row() -> list[str] | None:
        """camera/left's row once the exporter has read its frame (before, dtype and shape
        are "-": the tag is listed as soon as the exporter finds it)."""
        text = ls_remote()
        row = next((ln.split() for ln in text.splitlines() if "camera/left" in ln), None)
        return row if row is not None and row[2] != "-" else None

    line = wait_until(left_row, what="ls --remote lists camera/left with its dtype")
    assert line[:4] == ["robot1", "camera/left", "uint8", "6x8x3"]
    text = ls_remote()
    assert "other/x" not in text  # a bridge exports only what --export names
    # Scripts get each bridge's own account, imports included.
    from ndsharray.bridge.remote import bridge_status

    NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint).read(timeout=10)
    docs = {d["bridge"]: d for d in bridge_status(b.endpoint)}
    assert [t["tag"] for t in docs["robot1"]["tags"]] == ["camera/left"]
    (imp,) = docs["ws"]["imported"]
    assert (imp["tag"], imp["state"], imp["frames"], imp["shape"]) == ("robot1/camera/left", "live", 1, [6, 8, 3])
    w1.close()
    w2.close()


def linked(hosts: Any, bridges: Any, *export_args: str) -> tuple[Daemon, Daemon, BridgeProc, BridgeProc]:
    """Hosts A and B; A's bridge robot1 exports ``camera/**`` (and ``export_args``), B's
    bridge ws imports everything robot1 exports."""
    a, b = hosts(2)
    port = free_port()
    ba = bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}", *export_args)
    bb = bridges(b, "ws", "--import", "robot1/**", "--connect", f"tcp/127.0.0.1:{port}")
    return a, b, ba, bb


def writer_gone(endpoint: str, tag: str) -> Any:
    return lambda: (t := tag_info(tag, endpoint)).writer_pid is None and t.writer_left == "closed"


def test_end_of_stream_writer_death_and_resume_cross_the_bridge(hosts: Any, bridges: Any, puppets: Any) -> None:
    a, b, _, _ = linked(hosts, bridges)
    w = NdShArray("camera/left", frame(1), "w", endpoint=a.endpoint)
    r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    read_until(r, lambda x: index_of(x) == 1)
    # The writer on A closes: the imported tag's writer on B closes (end of stream).
    w.close()
    wait_until(writer_gone(b.endpoint, "robot1/camera/left"), what="end of stream on B")
    # A new writer on A: frames resume on B, same reader, no action.
    w = NdShArray("camera/left", frame(2), "w", endpoint=a.endpoint)
    read_until(r, lambda x: index_of(x) == 2)
    w.close()
    wait_until(writer_gone(b.endpoint, "robot1/camera/left"), what="end of stream on B")
    # A writer that dies (SIGKILL, no cleanup at all): B's readers see the writer gone.
    p = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})
    p(op="open", name="w", tag="camera/left", rw="w")
    p(op="write", name="w", dtype="uint8", shape=[5, 5], seed=3)
    read_until(r, lambda x: x.shape == (5, 5))
    p.kill()
    wait_until(writer_gone(b.endpoint, "robot1/camera/left"), what="writer death seen on B")
    w = NdShArray("camera/left", frame(4), "w", endpoint=a.endpoint)
    read_until(r, lambda x: index_of(x) == 4)
    w.close()


def says_why(endpoint: str, tag: str, why: str) -> bool:
    """``ls``, ``ls --json``, ``info`` and ``info --json`` on the importing host all say
    that ``tag``'s writer is closed, and ``why``."""
    from click.testing import CliRunner

    from ndsharray.cli import main

    def run(*args: str) -> str:
        out = CliRunner().invoke(main, ["--endpoint", endpoint, *args], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.output

    row = next((ln for ln in run("ls").splitlines() if ln.startswith(tag + " ")), "")
    (listed,) = [t for t in json.loads(run("ls", "--json")) if t["tag"] == tag]
    info = json.loads(run("info", tag, "--json"))
    writer_line = next(ln for ln in run("info", tag).splitlines() if ln.startswith("writer "))
    return (re.search(rf" closed \(\d+\): {re.escape(why)} ", row) is not None and listed["writer_left"] == "closed"
            and listed["writer_left_why"] == why and info["writer_pid"] is None and info["writer_left_why"] == why
            and writer_line.endswith(f"(closed: {why})"))


def test_ls_and_info_on_the_importing_host_say_why_an_imported_writer_closed(hosts: Any, bridges: Any,
                                                                            puppets: Any) -> None:
    a, b, ba, _ = linked(hosts, bridges)
    r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    # The source writer closes.
    w = NdShArray("camera/left", frame(1), "w", endpoint=a.endpoint)
    read_until(r, lambda x: index_of(x) == 1)
    w.close()
    wait_until(lambda: says_why(b.endpoint, "robot1/camera/left", "source writer on robot1 closed"),
               what="ls/info on B: the source writer closed")
    # The source writer dies (SIGKILL).
    p = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})
    p(op="open", name="w", tag="camera/left", rw="w")
    p(op="write", name="w", dtype="uint8", shape=[5, 5], seed=3)
    read_until(r, lambda x: x.shape == (5, 5))
    assert tag_info("robot1/camera/left", b.endpoint).writer_left_why is None  # (the library: the daemon's facts)
    p.kill()
    wait_until(lambda: says_why(b.endpoint, "robot1/camera/left", "source writer on robot1 died"),
               what="ls/info on B: the source writer died")
    # The remote bridge is killed (its writer still alive on A).
    w = NdShArray("camera/left", frame(2), "w", endpoint=a.endpoint)
    read_until(r, lambda x: index_of(x) == 2)
    ba.kill()
    wait_until(lambda: says_why(b.endpoint, "robot1/camera/left", "bridge robot1 or the link to it is gone"),
               what="ls/info on B: the remote bridge gone")
    w.close()


def test_killed_bridges_are_seen_and_restarted_ones_carry_on(hosts: Any, bridges: Any) -> None:
    a, b, ba, bb = linked(hosts, bridges)
    w = NdShArray("camera/left", frame(0), "w", endpoint=a.endpoint)
    r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    read_until(r, lambda x: index_of(x) == 0)
    # The exporting bridge dies: B's readers can tell (the imported tag's writer is closed).
    ba.kill()
    wait_until(writer_gone(b.endpoint, "robot1/camera/left"), what="B sees A's bridge gone")
    w.write(frame(1))
    bridges(a, "robot1", *ba.args)  # the same arguments: it carries on
    read_until(r, lambda x: index_of(x) == 1)
    # The importing bridge dies: its writer of the imported tag dies with it.
    bb.kill()
    wait_until(lambda: tag_info("robot1/camera/left", b.endpoint).writer_pid is None, what="B's writer gone")
    bridges(b, "ws", *bb.args)
    w.write(frame(2))
    read_until(r, lambda x: index_of(x) == 2)
    w.close()


class StallingProxy:
    """A TCP proxy on 127.0.0.1 that can stop forwarding what the target sends for a while
    (what is sent to the target still flows: so a frame is surely stuck in the stall)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.done = threading.Event()
        self.socks: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.done.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [client, server]
            for src, dst, gate in ((client, server, None), (server, client, self.flowing)):
                t = threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        src.settimeout(0.05)
        try:
            while not self.done.is_set():
                if gate is not None and not gate.wait(0.1):
                    continue
                try:
                    data = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                while gate is not None and not gate.wait(0.05) and not self.done.is_set():
                    pass  # hold what was read until the link flows again
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.done.set()
        for s in self.socks:
            s.close()
        for t in self.threads:
            t.join(5)


def test_a_stalled_link_drops_stale_frames_and_never_blocks_the_writer(hosts: Any, bridges: Any) -> None:
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    proxy = StallingProxy(port)
    try:
        with Bridge("ws", imports=["robot1/**"], connect=[f"tcp/127.0.0.1:{proxy.port}"], endpoint=b.endpoint) as bb:
            _stall_and_check(a, b, proxy, bb)
    finally:
        proxy.close()


def _stall_and_check(a: Daemon, b: Daemon, proxy: StallingProxy, bb: Bridge) -> None:
    stop = threading.Event()
    slowest = [0.0]
    written = [0]

    def write() -> None:  # 64 KiB frames at ~200 Hz, each stamped with its write time
        with NdShArray("camera/left", r_w="w", endpoint=a.endpoint) as w:
            buf = np.zeros(1 << 16, np.uint8)
            while not stop.is_set():
                buf[:8].view(np.int64)[0] = time.monotonic_ns()
                t0 = time.monotonic()
                w.write(buf)
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                written[0] += 1
                time.sleep(0.005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
        read_until(r, lambda x: True)
        proxy.flowing.clear()
        before = written[0]
        stall_ends = time.monotonic() + 3.0  # the stall under test (not a wait for something)
        resumed_at = None
        ages = []  # (read when, relative to the end of the stall; the frame's age then)
        while resumed_at is None or time.monotonic() < resumed_at + 2.0:
            if resumed_at is None and time.monotonic() >= stall_ends:
                during = written[0] - before
                resumed_at = time.monotonic()
                proxy.flowing.set()
            ok, x = r.read(timeout=0.05)  # (reading all along: what came before the stall is read before its end)
            if ok and resumed_at is not None:
                age = (time.monotonic_ns() - int(x[:8].view(np.int64)[0])) / 1e9
                ages.append((time.monotonic() - resumed_at, age))
    finally:
        stop.set()
        writer.join()
    assert ages, "no frame after the stall"
    after = [age for _, age in ages]
    assert after and after[0] < 1.0, f"first frame after the stall was {after[0]:.2f} s old: a backlog ({ages[:5]})"
    assert max(after) < 1.0, f"a stale frame came through after the stall: {ages}"
    assert during > 100, f"the writer on A wrote only {during} frames during the 3 s stall"
    assert slowest[0] < 1.0, f"a write on A took {slowest[0]:.2f} s: the writer was held up by the link"
    imported = {s["tag"]: s for s in bb.imported}["robot1/camera/left"]
    assert imported["stale_dropped"] >= 1, imported


SLOW_FRAME = 16 << 20  # bytes: loopback needs far longer than SLOW_STALE_AFTER to move one
SLOW_STALE_AFTER = 0.002  # seconds: a link slower than this per frame, as 256 MiB over 1 Gbit/s is than 0.5 s


def big_frame(i: int) -> np.ndarray:
    """Frame ``i`` of SLOW_FRAME bytes; its first word says which it is."""
    out = np.zeros(SLOW_FRAME, np.uint8)
    out[:8].view(np.int64)[0] = i
    return out


def is_big_frame(i: int) -> Any:
    return lambda x: x.nbytes == SLOW_FRAME and int(x[:8].view(np.int64)[0]) == i


def import_status(bb: Bridge, tag: str) -> dict[str, Any]:
    return {s["tag"]: s for s in bb.imported}[tag]


def test_a_link_slower_than_stale_after_per_frame_carries_every_frame(hosts: Any, bridges: Any) -> None:
    """A link that needs longer than stale_after to move one frame (256 MiB over 1 Gbit/s:
    2 s a frame, against 0.5 s; here 16 MiB over loopback against 2 ms) is slow, not
    stalled: every frame written as fast as the link carries them arrives, none is dropped
    as stale (it was every frame, each then sent again for the newest: half the frame rate)."""
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    with Bridge("ws", imports=["robot1/**"], connect=[f"tcp/127.0.0.1:{port}"], endpoint=b.endpoint,
                stale_after=SLOW_STALE_AFTER) as bb, \
            NdShArray("camera/big", r_w="w", endpoint=a.endpoint) as w, \
            NdShArray("robot1/camera/big", r_w="r", endpoint=b.endpoint) as r:
        links: list[float] = []
        for i in range(8):
            w.write(big_frame(i))
            read_until(r, is_big_frame(i))  # (the next one written once this one is there)
            assert r.write_count == i + 1  # (each written once on B)
            if i:  # (this frame's time on the link, or the one's before: both are there by now)
                links.append(import_status(bb, "robot1/camera/big")["link_s"])
        status = import_status(bb, "robot1/camera/big")
        assert min(links) > SLOW_STALE_AFTER, f"the link was not slower than stale_after: {links}"
        assert status["stale_dropped"] == 0, (status, links)


def test_after_a_stall_on_a_slow_link_the_first_frame_written_is_the_newest(hosts: Any, bridges: Any) -> None:
    """The link's pace learnt (a slow one: see above) does not hide a stall: the frames that
    were on the link while it stood still are dropped, and the first frame written after it
    is the newest one the source wrote."""
    a, b = hosts(2)
    port = free_port()
    bridges(a, "robot1", "--export", "camera/**", "--listen", f"tcp/127.0.0.1:{port}")
    proxy = StallingProxy(port)
    try:
        with Bridge("ws", imports=["robot1/**"], connect=[f"tcp/127.0.0.1:{proxy.port}"], endpoint=b.endpoint,
                    stale_after=SLOW_STALE_AFTER) as bb, \
                NdShArray("camera/big", r_w="w", endpoint=a.endpoint) as w, \
                NdShArray("robot1/camera/big", r_w="r", endpoint=b.endpoint) as r:
            for i in range(4):  # the link's pace
                w.write(big_frame(i))
                read_until(r, is_big_frame(i))
            written = r.write_count  # (on B)
            stale = import_status(bb, "robot1/camera/big")["stale_dropped"]
            proxy.flowing.clear()
            for i in range(4, 8):  # the first ones onto the stalled link, the last one kept by the exporter
                w.write(big_frame(i))
            stall_ends = time.monotonic() + 2.0  # the stall under test (not a wait for something)
            while time.monotonic() < stall_ends:
                ok, _ = r.read(timeout=0.05)
                assert not ok, "a frame came through the stalled link"
            proxy.flowing.set()
            read_until(r, is_big_frame(7))
            assert r.write_count == written + 1, "a frame older than the newest was written after the stall"
            assert import_status(bb, "robot1/camera/big")["stale_dropped"] > stale
    finally:
        proxy.close()


def test_max_rate_caps_what_is_sent(hosts: Any, bridges: Any) -> None:
    a, b, _, _ = linked(hosts, bridges, "--max-rate", "camera/**=10")
    w = NdShArray("camera/left", np.zeros(4, np.int64), "w", endpoint=a.endpoint)
    r = NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint)
    read_until(r, lambda x: True)
    got = 0
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 2.0:  # ~200 writes per second for 2 s
        i += 1
        w.write(np.full(4, i, np.int64))
        time.sleep(0.005)
        ok, _ = r.read()
        got += ok
    assert i > 100
    assert 5 <= got <= 2 * 10 + 2, f"{got} frames arrived in 2 s at --max-rate 10"
    w.close()


def smooth_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = x * 200 // w + y * 55 // h
    return np.stack([img, 255 - img, img // 2], axis=-1).astype(np.uint8)


def test_codecs_round_trip_and_jpeg_refuses_non_images(hosts: Any, bridges: Any) -> None:
    from ndsharray.bridge.remote import list_remote

    a, b, _, _ = linked(hosts, bridges, "--export", "depth/**", "--export", "bad/**",
                        "--codec", "camera/**=jpeg:90", "--codec", "depth/**=zstd", "--codec", "bad/**=jpeg")
    rgb = smooth_image(120, 160)
    depth = np.random.default_rng(1).integers(0, 5000, (60, 80), dtype=np.uint16)
    w1 = NdShArray("camera/rgb", rgb, "w", endpoint=a.endpoint)
    w2 = NdShArray("depth/z", depth, "w", endpoint=a.endpoint)
    w3 = NdShArray("bad/x", np.zeros((4, 4), np.float32), "w", endpoint=a.endpoint)
    got = read_until(NdShArray("robot1/camera/rgb", r_w="r", endpoint=b.endpoint), lambda x: True)
    assert got.shape == rgb.shape and got.dtype == np.uint8
    err = np.abs(got.astype(int) - rgb)
    assert err.mean() < 2 and err.max() < 16  # JPEG at quality 90: the error the README states
    got = read_until(NdShArray("robot1/depth/z", r_w="r", endpoint=b.endpoint), lambda x: True)
    assert got.dtype == depth.dtype and got.tobytes() == depth.tobytes()  # zstd: bit-exact

    def refused() -> Any:
        rows = {r["tag"]: r for r in list_remote(b.endpoint)}
        return rows.get("bad/x", {}).get("error")

    assert "JPEG carries only uint8 images" in wait_until(refused, what="the JPEG refusal")
    assert not any(t.tag == "robot1/bad/x" for t in ndsharray.list_tags(b.endpoint))
    for w in (w1, w2, w3):
        w.close()


def make_certificates(folder: str) -> dict[str, str]:
    """A CA, and a server and a client certificate it signed (for 127.0.0.1/localhost)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, str] = {}

    def save(name: str, key: Any, cert: x509.Certificate) -> None:
        for suffix, data in (("key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption())),
                             ("crt", cert.public_bytes(serialization.Encoding.PEM))):
            path = files[f"{name}_{suffix}"] = os.path.join(folder, f"{name}.{suffix}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

    def build(name: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ndsharray test CA")])
    save("ca", ca_key, build("ndsharray test CA", ca_key, ca_name, ca_key, ca=True))
    for name in ("robot1", "ws"):
        key = ec.generate_private_key(ec.SECP256R1())
        save(name, key, build(name, key, ca_name, ca_key, ca=False))
    return files


def tls_config(folder: str, files: dict[str, str], me: str, listen: str | None) -> str:
    """A Zenoh JSON5 config for mutual TLS (what the README shows)."""
    path = os.path.join(folder, f"{me}.json5")
    side = "listen" if listen else "connect"
    listen_part = f'listen: {{ endpoints: ["{listen}"] }},' if listen else ""
    with open(path, "w") as f:
        f.write(f"""{{
  mode: "peer",
  {listen_part}
  transport: {{ link: {{ tls: {{
    root_ca_certificate: "{files['ca_crt']}",
    enable_mtls: true,
    {side}_private_key: "{files[me + '_key']}",
    {side}_certificate: "{files[me + '_crt']}",
  }} }} }},
}}
""")
    return path


def test_mutual_tls_with_a_zenoh_config_file(hosts: Any, bridges: Any, folder: str) -> None:
    a, b = hosts(2)
    files = make_certificates(folder)
    port = free_port()
    locator = f"tls/localhost:{port}"
    bridges(a, "robot1", "--export", "camera/**", "--zenoh-config", tls_config(folder, files, "robot1", locator))
    bridges(b, "ws", "--import", "robot1/**", "--connect", locator,
            "--zenoh-config", tls_config(folder, files, "ws", None))
    w = NdShArray("camera/left", frame(3), "w", endpoint=a.endpoint)
    got = read_until(NdShArray("robot1/camera/left", r_w="r", endpoint=b.endpoint), lambda x: True)
    assert got.tobytes() == frame(3).tobytes()
    w.close()


def test_credits_from_no_live_bridge_start_no_stream(hosts: Any, puppets: Any) -> None:
    """A credit names its importer; one whose alive token is not up (forged by any peer,
    or late from a bridge that left) must not get a stream: that stream, a thread and a
    publisher, would never be dropped."""
    (a,) = hosts(1)
    port = free_port()
    w = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})  # (not this process: the bridge's)
    w(op="open", name="w", tag="cam", rw="w")
    w(op="write", name="w", dtype="uint8", shape=[5, 5], seed=3)
    with Bridge("robot1", exports=["cam"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as b:
        wait_until(lambda: [e["tag"] for e in b.exported] == ["cam"], what="cam exported")
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        try:
            for i in range(20):
                session.put(wire.credit_key("robot1", f"forged{i}", "cam"), wire.pack_credit(1, True))
            # Then a bridge that is alive, on the same link: once it has its stream, the
            # credits sent before it have been handled.
            token = session.liveliness().declare_token(wire.alive_key("evil", "alive1"))

            def credit_from_the_live_one() -> bool:
                # (again until it takes, as an importer does: the token may reach the
                # exporter after a credit)
                session.put(wire.credit_key("robot1", "alive1", "cam"), wire.pack_credit(1, True))
                return bool(b.exported[0]["importers"])

            wait_until(credit_from_the_live_one, what="the live bridge's stream")
            assert b.exported[0]["importers"] == ["evil"]
            token.undeclare()
            wait_until(lambda: b.exported[0]["importers"] == [], what="its stream dropped with its token")
        finally:
            session.close()


def test_a_frame_sent_again_is_written_once(hosts: Any) -> None:
    """An exporter answers a forced credit (sent after a stale frame, or when its token comes
    back) with the newest frame even if it sent it before: the importer must not write the
    same source frame twice (its readers would count it as a new one). Nor may it replace
    its writer (readers see an end) for a larger metadata capacity its frames do not need."""
    (a,) = hosts(1)
    port = free_port()
    with Bridge("ws", imports=["forger/**"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as b:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        credits: list[int] = []
        lock = threading.Lock()

        def on_credit(sample: Any) -> None:
            with lock:
                credits.append(wire.unpack_credit(sample.payload.to_bytes())[0])

        try:
            sub = session.declare_subscriber(wire.credit_key("forger", b.zid, "cam"), on_credit)
            token = session.liveliness().declare_token(wire.tags_key("forger", "cam"))
            pub = session.declare_publisher(wire.frame_key("forger", b.zid, "cam"))
            data = np.arange(16, dtype=np.uint8)
            # Frame 1, frame 1 again (the answer to a forced credit), then frame 2, which says
            # its writer has room for metadata now (the exporter learnt it late).
            for i, count in enumerate((1, 1, 2)):
                wait_until(lambda i=i: len(credits) > i, what=f"credit {i + 1}")
                head = wire.Frame(codec=0, dtype=ndsharray.dtypes.dtype_to_text(data.dtype), shape=data.shape,
                                  count=count, write_ns=1000 * count, credit=credits[i],
                                  meta_capacity=4096 if count == 2 else 0)
                pub.put((data + count).tobytes(), attachment=head.pack())
            with NdShArray("forger/cam", r_w="r", endpoint=a.endpoint) as r:
                read_until(r, lambda x: int(x[0]) == 2)
            info = tag_info("forger/cam", a.endpoint)
            assert (info.writes, info.generation) == (2, 1)  # one writer, one generation
            pub.undeclare()
            token.undeclare()
            sub.undeclare()
        finally:
            session.close()


def zenoh_shm_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if line.rstrip().endswith(".zenoh") and "/dev/shm/" in line}


def test_bridges_map_no_zenoh_shared_memory(hosts: Any, bridges: Any) -> None:
    """Zenoh's shared-memory transport leaves /dev/shm/<n>.zenoh (16 MB once frames larger
    than 3 KB pass) behind a bridge that is stopped or killed: the bridges keep it off."""
    a, b, ba, bb = linked(hosts, bridges)
    with NdShArray("camera/big", np.full(100_000, 7, np.uint8), "w", endpoint=a.endpoint), \
            NdShArray("robot1/camera/big", r_w="r", endpoint=b.endpoint) as r:
        read_until(r, lambda x: x.shape == (100_000,))
        for p in (ba, bb):
            assert p.proc is not None
            assert zenoh_shm_files(p.proc.pid) == set()


def test_the_importer_forgets_the_oldest_ended_tags(hosts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many short-lived remote tags come and go: the importer keeps a bounded number of
    ended ones (with their reason), not one record per tag ever seen."""
    from ndsharray.bridge import importer

    monkeypatch.setattr(importer, "KEEP_ENDED", 5)
    (b,) = hosts(1)
    port = free_port()
    with Bridge("ws", imports=["forger/**"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=b.endpoint) as bb:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        try:
            liveliness = session.liveliness()
            for i in range(20):  # each a tag whose exporter's token comes, then goes
                token = liveliness.declare_token(wire.tags_key("forger", f"t{i}"))
                wait_until(lambda i=i: any(s["tag"] == f"forger/t{i}" for s in bb.imported), what=f"t{i} seen")
                token.undeclare()
                wait_until(lambda i=i: any(s["tag"] == f"forger/t{i}" and s["state"] == "ended" for s in bb.imported),
                           what=f"t{i} ended")
            wait_until(lambda: len(bb.imported) == 5, what="all but the 5 most recent ended imports forgotten")
            assert sorted(s["tag"] for s in bb.imported) == [f"forger/t{i}" for i in range(15, 20)]
            # A forgotten tag that comes back is imported again.
            token = liveliness.declare_token(wire.tags_key("forger", "t0"))
            wait_until(lambda: any(s["tag"] == "forger/t0" and s["state"] == "waiting" for s in bb.imported),
                       what="t0 back")
            token.undeclare()
        finally:
            session.close()


def test_a_tag_that_ends_slowly_holds_up_no_other_tag(hosts: Any, puppets: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag whose end waits for a credit (its last frame unsent: the link is slow or gone)
    must not stop the exporter from starting, and sending, another tag meanwhile."""
    from ndsharray.bridge import exporter

    monkeypatch.setattr(exporter, "END_GRACE", 60.0)  # the slow end: far longer than the deadline below
    (a,) = hosts(1)
    port = free_port()
    p = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})  # (not this process: the bridge's)
    p(op="open", name="x", tag="cam/x", rw="w")
    p(op="write", name="x", dtype="uint8", shape=[4], seed=1)
    with Bridge("robot1", exports=["cam/**"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as ba:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        frames: list[str] = []

        def on_frame(sample: Any) -> None:
            head = wire.Frame.unpack(sample.attachment.to_bytes())
            frames.append(f"{str(sample.key_expr).rsplit('/', 1)[1]} {'end' if head.kind == wire.END else head.count}")

        try:
            sub = session.declare_subscriber(wire.frame_key("robot1", "imp1"), on_frame)
            token = session.liveliness().declare_token(wire.alive_key("imp", "imp1"))  # an importer: one credit only

            def credit_taken(tag: str) -> bool:
                session.put(wire.credit_key("robot1", "imp1", tag), wire.pack_credit(1, True))
                with contextlib.suppress(AssertionError):  # (a credit before our token is dropped)
                    wait_until(lambda: any(e["tag"] == tag and e["importers"] for e in ba.exported), timeout=5)
                    return True
                return False

            wait_until(lambda: credit_taken("cam/x"), what="cam/x's stream, with exactly one credit")
            wait_until(lambda: "x 1" in frames, what="cam/x's first frame")
            p(op="write", name="x", dtype="uint8", shape=[4], seed=2)  # unsent: no credit left
            p(op="close", name="x")  # cam/x ends, its last frame waiting for a credit
            p(op="open", name="y", tag="cam/y", rw="w")
            p(op="write", name="y", dtype="uint8", shape=[4], seed=3)
            wait_until(lambda: credit_taken("cam/y"), timeout=20, what="cam/y exported while cam/x ends")
            wait_until(lambda: "y 1" in frames, what="cam/y's first frame while cam/x ends")
            assert "x end" not in frames  # (cam/x was still ending all along)
            # A credit for cam/x now: the writer's last frame goes, then its end of stream.
            session.put(wire.credit_key("robot1", "imp1", "cam/x"), wire.pack_credit(2, False))
            wait_until(lambda: frames[-2:] == ["x 2", "x end"] or frames[-3:-1] == ["x 2", "x end"],
                       what="cam/x's last frame, then its end")
            token.undeclare()
            sub.undeclare()
        finally:
            session.close()
        assert [e["tag"] for e in ba.exported] == ["cam/y"]


def threads_cpu_s(name: str) -> float:
    """CPU seconds used so far by this process's Python threads called ``name``."""
    total = 0.0
    for t in threading.enumerate():
        if t.name == name:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def test_a_stream_waiting_for_the_readers_next_look_does_not_spin(hosts: Any, puppets: Any) -> None:
    """An importer's credit that comes after the frame it has not had yet was read waits for
    the exporter's reader thread to look again (up to a quarter second with an idle writer):
    asleep, not spinning a core."""
    (a,) = hosts(1)
    port = free_port()
    p = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})  # (not this process: the bridge's)
    p(op="open", name="w", tag="cam", rw="w")
    p(op="write", name="w", dtype="uint8", shape=[4], seed=0)
    with Bridge("robot1", exports=["cam"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as ba:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        got: dict[str, list[int]] = {"x": [], "y": []}

        def on_frame(sample: Any) -> None:
            who = str(sample.key_expr).split("/")[3]
            got["x" if who == "zx" else "y"].append(wire.Frame.unpack(sample.attachment.to_bytes()).count)

        def credit(who: str, force: bool = False) -> None:
            session.put(wire.credit_key("robot1", who, "cam"), wire.pack_credit(1, force))

        try:
            subs = [session.declare_subscriber(wire.frame_key("robot1", z), on_frame) for z in ("zx", "zy")]
            tokens = [session.liveliness().declare_token(wire.alive_key(n, z)) for n, z in (("x", "zx"), ("y", "zy"))]

            def both_streams() -> bool:
                credit("zx", True)
                credit("zy", True)
                return len(ba.exported[0]["importers"]) == 2 if ba.exported else False

            wait_until(both_streams, what="a stream to each importer")
            wait_until(lambda: got["x"] and got["y"], what="the first frame at both")
            cpu0 = threads_cpu_s("bridge-send cam")  # (both streams' threads)
            credit("zx")
            for k in range(2, 8):
                # Frame k goes to x, which always keeps a credit (so the exporter's reader
                # thread waits in a blocking read for the next frame); y has none, so frame k
                # stays unsent to y until y's credit comes, and then until the next look.
                credit("zx")
                p(op="write", name="w", dtype="uint8", shape=[4], seed=k)
                wait_until(lambda k=k: k in got["x"], what=f"frame {k} at x")
                credit("zy")
                wait_until(lambda k=k: k in got["y"], what=f"frame {k} at y")
            cpu = threads_cpu_s("bridge-send cam") - cpu0
            assert cpu < 0.15, f"the streams' threads used {cpu:.2f} s of CPU for 12 frames: they spin"
            for d in (*subs, *tokens):
                d.undeclare()
        finally:
            session.close()


def threads_switches(name: str) -> int:
    """Times this process's Python threads called ``name`` went to sleep so far (their
    voluntary context switches): each is a wake-up that came before."""
    total = 0
    for t in threading.enumerate():
        if t.name == name:
            with open(f"/proc/self/task/{t.native_id}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def test_frames_sent_from_the_reader_thread_wake_no_other_thread(hosts: Any, puppets: Any) -> None:
    """One importer whose link keeps up (it grants a credit for each frame, so the exporter
    always holds one): the exporter's reader thread sends each frame itself, and neither a
    frame nor a credit wakes the stream's own thread (each such wake-up, for nothing to do,
    cost the frame's path CPU and the GIL on a machine with few cores)."""
    (a,) = hosts(1)
    port = free_port()
    p = puppets(env={ndsharray.config.ENV_ENDPOINT: a.endpoint})  # (not this process: the bridge's)
    p(op="open", name="w", tag="cam", rw="w")
    p(op="write", name="w", dtype="uint8", shape=[4], seed=0)
    with Bridge("robot1", exports=["cam"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as ba:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        got: list[int] = []
        next_credit = iter(range(2, 1000))

        def credit(force: bool = False) -> None:
            session.put(wire.credit_key("robot1", "zx", "cam"), wire.pack_credit(next(next_credit), force))

        def on_frame(sample: Any) -> None:
            credit()  # (as an importer does: one more for each frame, before the next is written)
            got.append(wire.Frame.unpack(sample.attachment.to_bytes()).count)

        try:
            sub = session.declare_subscriber(wire.frame_key("robot1", "zx"), on_frame)
            token = session.liveliness().declare_token(wire.alive_key("x", "zx"))

            def stream() -> bool:
                if not got:
                    credit(True)
                return bool(got)

            wait_until(stream, what="the first frame")
            wait_until(lambda: len(ba.exported[0]["importers"]) == 1, what="the stream")
            credit()  # (two in hand: the next frame never waits for the last one's credit)
            n = len(got)
            for k in range(1, 46):
                if k == 6:  # (the first frames settle the start: the first credits, the stream's thread)
                    switches0 = threads_switches("bridge-send cam")
                p(op="write", name="w", dtype="uint8", shape=[4], seed=k)
                wait_until(lambda k=k: len(got) >= n + k, what=f"frame {k}")
            switches = threads_switches("bridge-send cam") - switches0
            assert switches < 10, f"the stream's thread was woken {switches} times for 40 frames sent inline"
            sub.undeclare()
            token.undeclare()
        finally:
            session.close()


def test_an_imported_frame_keeps_the_source_write_time_on_the_writers_fast_path(hosts: Any) -> None:
    """The importer writes each frame with the source writer's write time, by the writer's
    one C call when the frame fits its slots (Writer._write_stamped), with or without
    metadata, and by the general path when it does not (a larger frame: a new generation)."""
    (a,) = hosts(1)
    frames: list[tuple[np.ndarray, Any]] = [
        (np.zeros(8, np.uint8), None), (np.arange(8, dtype=np.uint8), None),
        (np.full(4, 2, np.int16), {"id": 2}), (np.arange(100_000, dtype=np.uint8), b"big"),
        (np.ones(3, np.float32), b"small again")]
    with NdShArray("t", r_w="w", endpoint=a.endpoint) as w, NdShArray("t", r_w="r", endpoint=a.endpoint) as r:
        for i, (arr, meta) in enumerate(frames):
            stamp = time.monotonic_ns() - 10**9 + i  # a second ago: never the time of this write
            assert w._write_stamped(arr, meta, stamp)
            ok, x = r.read(copy=True, timeout=5)
            assert ok and np.array_equal(x, arr) and x.dtype == arr.dtype
            assert (r.write_time_ns, r.meta) == (stamp, meta), i


def test_an_importer_that_gets_nothing_grants_the_whole_window_again(hosts: Any) -> None:
    """Credits can be lost (a link that broke, a stream the exporter dropped): an importer
    that gets no frame for REFRESH grants a whole window again, not one frame, so the link
    never limps along at one frame per refresh (credits go back two at a time)."""
    (a,) = hosts(1)
    port = free_port()
    with Bridge("ws", imports=["forger/**"], listen=[f"tcp/127.0.0.1:{port}"], endpoint=a.endpoint) as b:
        zenoh = zconfig.zenoh_module()
        session = zenoh.open(zconfig.build(connect=[f"tcp/127.0.0.1:{port}"]))
        credits: list[tuple[int, bool, int]] = []
        lock = threading.Lock()

        def on_credit(sample: Any) -> None:
            with lock:
                credits.append(wire.unpack_credit(sample.payload.to_bytes()))

        try:
            sub = session.declare_subscriber(wire.credit_key("forger", b.zid, "cam"), on_credit)
            token = session.liveliness().declare_token(wire.tags_key("forger", "cam"))
            # The first credit (lost, say: no frame answers it), then the refresh.
            wait_until(lambda: len(credits) >= 2, timeout=10, what="a credit and its refresh")
            # (The newest frame, and a window: the narrow one, as no frame said its size yet.)
            assert credits[0][1:] == (True, wire.BIG_WINDOW), credits
            assert credits[1][2] == wire.BIG_WINDOW > 1, credits
            token.undeclare()
            sub.undeclare()
        finally:
            session.close()
