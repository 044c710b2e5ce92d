"""Fixtures: a real ndsharrayd per test on a private endpoint, real child processes, and
checks that every test leaves /dev/shm and the process table as it found them."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ndsharray import admin, config, transport
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import Layout, create_segment
from ndsharray.segment.mapping import mapping_address
from ndsharray.segment.reader import SegmentReader
from ndsharray.segment.writer import SegmentWriter

HERE = os.path.dirname(os.path.abspath(__file__))
SHM = "/dev/shm"
# Test folders: /tmp/ndst<pid>_XXXX. Daemons of other folders (another test run on this
# machine included) are not ours to judge.
FOLDER_PREFIX = f"ndst{os.getpid()}_"


def wait_until(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def segment_bytes_of(dtype_text: str, shape: tuple[int, ...], nslots: int) -> tuple[Layout, bytearray]:
    """A real segment of ``shape`` (create_segment checks nothing: any shape goes), read
    back as bytes and removed: its layout and its bytes, to parse or to corrupt."""
    name = f"nds-test-bytes-{os.getpid()}"
    layout = create_segment(name, tag="cam", dtype_text=dtype_text, shape=shape, nslots=nslots,
                            generation=1, writer_pid=os.getpid())
    path = os.path.join(shm_dir(), name)
    try:
        with open(path, "rb") as f:
            return layout, bytearray(f.read())
    finally:
        os.unlink(path)


def spy_segments(monkeypatch: pytest.MonkeyPatch) -> list[SegmentWriter]:
    """Every SegmentWriter this process makes from now on (the test's end undoes the spy)."""
    made: list[SegmentWriter] = []
    orig = SegmentWriter.__init__

    def spy(self: SegmentWriter, *a: object, **k: object) -> None:
        orig(self, *a, **k)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(SegmentWriter, "__init__", spy)
    return made


def sleepers(r: Any) -> int:
    """The may-sleep count in reader ``r``'s row of its segment: how many of its threads
    (or aread tasks) are asleep on it, or about to be."""
    seg = r._seg
    assert isinstance(seg, SegmentReader)
    return int(struct.unpack_from("@I", seg._rw, seg.row - mapping_address(seg._rw))[0])


def join_or_kill(procs: list[Any], timeout: float = 30) -> None:
    """Wait for child processes (multiprocessing) to end; kill the ones that do not."""
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()


def our_segments(prefix: str = "nds-") -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(prefix)}


class Daemon:
    """A real ndsharrayd subprocess on a private ipc endpoint."""

    def __init__(self, folder: str, *args: str) -> None:
        self.folder = folder
        self.endpoint = f"ipc://{folder}/d.sock"
        self.prefix = config.segment_prefix(self.endpoint)
        self.log = os.path.join(folder, "daemon.log")
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ndsharrayd", "--endpoint", self.endpoint,
                 "--log-level", "DEBUG", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        # Not the lock or the socket file: a killed predecessor leaves its socket behind, and
        # the lock is taken before recovery. This line is logged when the daemon serves.
        proc = self.proc
        serving = f"serving {self.endpoint} (pid {proc.pid})"
        wait_until(lambda: serving in self.read_log() or proc.poll() is not None, what="daemon serving")
        assert proc.poll() is None, self.read_log()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(15)
        return rc

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()


_folders: list[str] = []  # every test folder of this session
SOCKET_NAMES = ("d", "auto", "ctl", "none", "b/d", "c/d", "shared/d")  # the endpoints tests make in a folder


@pytest.fixture
def folder() -> Iterator[str]:
    # ipc paths are limited to ~107 bytes: keep it short, under /tmp.
    path = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir="/tmp")
    _folders.append(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def session_prefixes() -> tuple[str, ...]:
    """Segment name prefixes of every endpoint this test session may have used."""
    endpoints = [config.default_endpoint()] + [
        f"ipc://{f}/{name}.sock" for f in _folders for name in SOCKET_NAMES]
    return tuple(config.segment_prefix(e) for e in endpoints)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def daemon_pids() -> set[int]:
    """Pids of running ndsharrayd processes of this test session (its folders, or the default
    endpoint a test might start by mistake), read from /proc."""
    markers = (f"/tmp/{FOLDER_PREFIX}".encode(), config.runtime_dir().encode())
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            is_daemon = b"ndsharrayd" in argv or any(a.endswith(b"/ndsharrayd") for a in argv)
            if is_daemon and any(m in a for a in argv for m in markers):
                out.add(int(entry))
    return out


@pytest.fixture(autouse=True)
def leaves_no_trace() -> Iterator[None]:
    """Fail any test that leaves one of our segments or a daemon behind (torn down last)."""
    segs, pids = our_segments(), daemon_pids()
    yield
    transport.close_all()
    stray = daemon_pids() - pids
    cmdlines = {}
    for pid in stray:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdlines[pid] = f.read().replace(b"\0", b" ").decode()
        except OSError:
            pass
        os.kill(pid, signal.SIGTERM)  # so one failure does not cascade into the next tests
    assert not stray, f"test left ndsharrayd processes running: {cmdlines}"
    leaked = {n for n in our_segments() - segs if n.startswith(session_prefixes())}
    assert not leaked, f"test left segments in {SHM}: {sorted(leaked)}"


@pytest.fixture
def daemon(folder: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    yield d
    transport.close_all()
    rc = d.stop()
    log = d.read_log()
    assert rc == 0, f"daemon exited with {rc}:\n{log}"
    assert not our_segments(d.prefix), f"daemon left segments: {our_segments(d.prefix)}"
    assert not os.path.exists(d.endpoint[6:]), "daemon left its socket file"
    assert not os.path.exists(config.pointer_dir(d.endpoint)), "daemon left its tag pointers"
    assert "Traceback" not in log, log


@pytest.fixture
def crashable(folder: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon that tests may SIGKILL; clients may auto-start its successor, which the
    fixture stops too."""
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
    admin.stop_daemon(d.endpoint)
    assert not our_segments(d.prefix)


class Puppet:
    """A child Python process running tests/puppet.py, driven by JSON lines."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "puppet.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})}, text=True, bufsize=1,
        )
        self.pid = self._line(20)["ready"]

    def _line(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"puppet {self.proc.pid} gave no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"puppet {self.proc.pid} died: {err}")
        return json.loads(line)

    def send(self, timeout: float = 20, **cmd: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def __call__(self, **cmd: Any) -> Any:
        out = self.send(**cmd)
        if "error" in out:
            raise AssertionError(f"puppet {cmd['op']} failed: {out['error']}: {out['message']}")
        return out["ok"]

    def start_writer(self, tag: str, dtype: str, shape: list[int], seed: int) -> str:
        """Open a writer (handle "w") of ``tag`` and publish one frame; returns its segment."""
        self(op="open", name="w", tag=tag, rw="w")
        return str(self(op="write", name="w", dtype=dtype, shape=shape, seed=seed))

    def kill(self) -> None:
        """SIGKILL: a crash that runs no cleanup at all."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def puppets() -> Iterator[Any]:
    made: list[Puppet] = []

    def make(**kw: Any) -> Puppet:
        p = Puppet(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say plainly what did not run for want of root (tests that switch uid, plant another
    user's files or mount a tmpfs): their skips are easy to miss in a long summary."""
    if os.geteuid() == 0:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "root" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) need root and did not run (uid {os.geteuid()}): the other-uid, "
            "planted-file, --group and small-tmpfs checks of tests/test_isolation.py and "
            "tests/test_resource_limits.py; CI runs them "
            "as root (.ci/run)", yellow=True, bold=True)
