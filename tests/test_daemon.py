"""The daemon as a process: auto-start, one per endpoint, ls, liveness, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, daemon_pids, our_segments, pid_gone, wait_until

import ndsharray
from ndsharray import admin, config, daemonctl, protocol, transport


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ndsharray", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_second_writer_is_refused_naming_the_holder(daemon: Any, puppets: Any) -> None:
    other = puppets()
    other(op="open", name="w", tag="cam", rw="w")
    with pytest.raises(ndsharray.TagBusyError, match=f"pid {other.pid}"):
        ndsharray.NdShArray("cam", r_w="w")
    # Two writers in one process are refused too.
    with ndsharray.NdShArray("mine", r_w="w"):
        with pytest.raises(ndsharray.TagBusyError, match=f"pid {os.getpid()}"):
            ndsharray.NdShArray("mine", r_w="w")
    # Once the holder closes, the tag is free.
    other(op="close", name="w")
    ndsharray.NdShArray("cam", r_w="w").close()


def test_ls_table_and_json(daemon: Any, puppets: Any) -> None:
    empty = run_cli("ls")
    assert empty.returncode == 0 and "no tags" in empty.stdout
    frame = np.zeros((720, 1280, 3), np.uint8)
    with ndsharray.NdShArray("camera/left", frame, "w"), \
            ndsharray.NdShArray("camera/left", r_w="r") as r:
        r.read()
        ndsharray.list_tags()  # sends the reader's background registration first
        table = run_cli("ls")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split()[:5] == ["TAG", "DTYPE", "SHAPE", "SIZE", "WRITER"]
        assert row.split()[:3] == ["camera/left", "uint8", "720x1280x3"]
        assert str(os.getpid()) in row
        out = run_cli("ls", "--json")
        assert out.returncode == 0, out.stderr
        (tag,) = json.loads(out.stdout)
        assert tag["tag"] == "camera/left" and tag["dtype"] == "uint8"
        assert tag["shape"] == [720, 1280, 3] and tag["nbytes"] == frame.nbytes
        assert tag["writer_pid"] == os.getpid() and tag["readers"] == 1 and tag["writes"] == 1
        assert tag["segment"] == r.ndarray_mmap_name and tag["segment"] in our_segments()


def test_cli_version_and_daemon_errors(folder: str) -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and ndsharray.__version__ in out.stdout
    env = {config.ENV_ENDPOINT: f"ipc://{folder}/none.sock", config.ENV_AUTOSTART: "0"}
    out = run_cli("rm", "cam", env=env)
    assert out.returncode == 1 and "ndsharrayd --endpoint" in out.stderr
    # Looking never starts a daemon: no daemon, no tags.
    env[config.ENV_AUTOSTART] = "1"
    out = run_cli("ls", env=env)
    assert out.returncode == 0 and "no ndsharrayd runs at" in out.stdout, out.stderr
    out = run_cli("ls", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout) == []
    out = run_cli("rm", "cam", env=env)
    assert out.returncode == 1 and "no ndsharrayd serves" in out.stderr
    assert not daemonctl.daemon_running(env[config.ENV_ENDPOINT])


def test_no_autostart_fails_fast_saying_how_to_start(folder: str, monkeypatch: Any) -> None:
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    with pytest.raises(ndsharray.DaemonUnavailableError, match="start it with: ndsharrayd"):
        ndsharray.NdShArray("x", r_w="r", endpoint=f"ipc://{folder}/none.sock")


def test_one_daemon_per_endpoint(daemon: Daemon) -> None:
    second = subprocess.run([sys.executable, "-m", "ndsharrayd", "--endpoint", daemon.endpoint],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "already serves this endpoint" in second.stderr
    assert str(daemon.proc.pid) in second.stderr  # type: ignore[union-attr]


def test_concurrent_autostart_ends_with_one_daemon(folder: str) -> None:
    endpoint = f"ipc://{folder}/auto.sock"
    env = {config.ENV_ENDPOINT: endpoint, config.ENV_AUTOSTART: "1"}
    before = daemon_pids()
    code = "import ndsharray, os; ndsharray.NdShArray('t%d', r_w='r').close(); print(os.getpid())"
    procs = [subprocess.Popen([sys.executable, "-c", code % k], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(6)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    started = daemon_pids() - before
    assert len(started) == 1, f"expected one daemon, found {started}"
    (pid,) = started
    with open(config.lock_path(endpoint)) as f:
        assert int(f.read().split()[0]) == pid
    os.kill(pid, 15)
    wait_until(lambda: pid_gone(pid), what="auto-started daemon to exit")
    assert not daemonctl.daemon_running(endpoint)
    assert not our_segments(config.segment_prefix(endpoint))


def test_a_daemon_killed_while_starting_is_started_again(folder: str, monkeypatch: Any) -> None:
    # The OOM killer or an operator's kill can take an auto-started daemon before it serves.
    # The starter tries again instead of failing its caller's request.
    endpoint = f"ipc://{folder}/auto.sock"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    junk = [os.path.join("/dev/shm", f"{config.segment_prefix(endpoint)}junk{k}") for k in range(3000)]
    killed = []
    answers: list[Any] = []
    try:
        for _ in range(5):  # until a kill lands before the daemon serves
            for path in junk:  # unreadable segments: a starting daemon removes each first
                with open(path, "wb"):
                    pass
            asker = threading.Thread(target=lambda: answers.append(transport.connection().request(protocol.PING)))
            asker.start()
            deadline = time.monotonic() + 30
            while (pid := admin.daemon_pid(endpoint)) is None:  # a tight look: the window is short
                assert time.monotonic() < deadline, "no daemon took the lock"
                time.sleep(0.0005)
            os.kill(pid, signal.SIGKILL)
            asker.join(60)
            with open(config.log_path(endpoint)) as f:
                if f"(pid {pid})" not in f.read():
                    killed.append(pid)
                    break
            admin.stop_daemon(endpoint)  # served before the kill: try again
            answers.clear()
        assert killed, "no kill landed before the daemon served"
        assert answers and answers[0].pid not in killed
        assert admin.daemon_pid(endpoint) == answers[0].pid
    finally:
        admin.stop_daemon(endpoint)
        for path in junk:
            if os.path.exists(path):
                os.unlink(path)


def test_sigterm_removes_segments_while_clients_keep_their_views(folder: str, monkeypatch: Any) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    w = ndsharray.NdShArray("t", np.arange(6.0), "w", endpoint=d.endpoint)
    r = ndsharray.NdShArray("t", r_w="r", endpoint=d.endpoint)
    status, view = r.read()
    assert status and our_segments(d.prefix)
    assert d.stop() == 0
    assert not our_segments(d.prefix)
    assert not os.path.exists(d.endpoint[6:])
    # Mapped data outlives the unlink, and the hot path never needed the daemon.
    w.write(np.arange(6.0) * 2)
    status, again = r.read()
    assert view.tolist() == [0, 1, 2, 3, 4, 5] and again.tolist() == [0, 2, 4, 6, 8, 10]
    transport.close_all()
    w._closed = r._closed = True  # the daemon is gone; nothing to release


def test_the_daemon_raises_its_open_file_limit_for_its_clients(folder: str) -> None:
    # A pidfd per registered process and an fd per connection: the usual soft limit of 1024
    # would not do for the default --max-clients of 4096. Started low, it raises it.
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    start = 256 if hard == resource.RLIM_INFINITY else min(256, hard // 2)  # below any hard limit
    endpoint = f"ipc://{folder}/d.sock"
    log = os.path.join(folder, "daemon.log")
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "ndsharrayd", "--endpoint", endpoint],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (start, hard)))
    try:
        def serving() -> bool:
            with open(log) as f:
                return f"(pid {proc.pid})" in f.read() or proc.poll() is not None

        # Serving, not just locked: a SIGTERM before its handler is installed would kill it.
        wait_until(serving, what="the daemon to serve")
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
        soft_now, hard_now = line.split()[3:5]
        assert int(soft_now) > start and (soft_now == hard_now or int(soft_now) == 1 << 20), line
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
