"""A daemon and a client in different pid namespaces (a container sharing the endpoint's
folder with its host): ndsharray knows processes by pid, which cannot cross a pid
namespace, so each side names the other's namespace at once; nothing waits for a daemon
that reads as "starting" for good, and nothing is signalled by a pid from elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Daemon, pid_gone, wait_until

import ndsharray
from ndsharray import admin, config, daemonctl, safefs
from ndsharray.cli import main

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a pid namespace (CI runs as root)")


def unshare_pid() -> list[str]:
    """The command prefix that runs a process in a new pid namespace (util-linux)."""
    cmd = ["unshare", "--pid", "--fork", "--kill-child"]
    try:
        probe = subprocess.run([*cmd, "true"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare(1) here (util-linux)")
    if probe.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.strip()}")
    return cmd


IN_A_CHILD_NAMESPACE = """
import sys
import numpy as np
from click.testing import CliRunner
import ndsharray
from ndsharray import daemonctl
from ndsharray.cli import main
endpoint = sys.argv[1]
state = daemonctl.daemon_state(endpoint)
print("state", state.elsewhere, state.pid)
try:
    ndsharray.NdShArray("t", np.zeros(2), "w", endpoint=endpoint)
    print("writer opened")
except ndsharray.DaemonUnavailableError as exc:
    print("writer", exc)
for cmd in (["daemon", "status"], ["daemon", "stop"], ["doctor"]):
    r = CliRunner().invoke(main, ["--endpoint", endpoint, *cmd])
    print(cmd[-1], r.exit_code, " ".join(r.output.split()))
"""


def test_a_client_in_a_child_namespace_is_told_at_once_and_stops_nothing(daemon: Daemon) -> None:
    # Before: the daemon's pid is no process in the child's namespace, so its lock read as
    # "a daemon starting" for good; `daemon status` named the host's pid as if it were the
    # child's, and `daemon stop` waited 10 s, or signalled whatever process has that pid
    # in the child's namespace.
    child = subprocess.run([*unshare_pid(), sys.executable, "-c", IN_A_CHILD_NAMESPACE, daemon.endpoint],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, config.ENV_AUTOSTART: "0"})
    assert child.returncode == 0, child.stderr
    out = dict(line.split(" ", 1) for line in child.stdout.splitlines())
    assert daemon.proc is not None
    assert out["state"] == f"True {daemon.proc.pid}"
    for what in ("writer", "status", "stop", "doctor"):
        assert "runs in another pid namespace" in out[what], (what, out[what])
    assert out["status"].startswith("1 ") and out["stop"].startswith("1 ") and out["doctor"].startswith("1 ")
    assert "FAIL daemon" in out["doctor"]
    assert daemon.proc.poll() is None and admin.daemon_pid(daemon.endpoint) == daemon.proc.pid


def test_a_daemon_in_a_child_namespace_is_named_and_never_signalled_by_its_pid(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its lock names pid 1 (the daemon's pid in its namespace): before, `daemon stop` here
    # called that a lock someone else made (UnsafeFileError naming our init), and a writer
    # was refused only by the daemon, with a BAD_REQUEST about its pid.
    endpoint = f"ipc://{folder}/d.sock"
    monkeypatch.setenv(config.ENV_ENDPOINT, endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    outer = subprocess.Popen([*unshare_pid(), *daemonctl.daemon_command("--endpoint", endpoint)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (s := daemonctl.daemon_state(endpoint)) is not None and s.serving
                   or outer.poll() is not None, timeout=60, what="the daemon in its namespace to serve")
        state = daemonctl.daemon_state(endpoint)
        assert state is not None and state.elsewhere and state.pid == 1, state
        with pytest.raises(ndsharray.DaemonUnavailableError, match="runs in another pid namespace"):
            ndsharray.NdShArray("t", np.zeros(2), "w")
        with pytest.raises(ndsharray.DaemonUnavailableError, match=r"pid 1 there"):
            admin.daemon_pid()
        stop = CliRunner().invoke(main, ["daemon", "stop"])
        assert stop.exit_code == 1 and "another pid namespace" in stop.output, stop.output
        assert daemonctl.daemon_running(endpoint)
    finally:
        # Its pid here, as the kernel's lock table names the holder: a clean stop.
        st = os.stat(config.lock_path(endpoint))
        for pid in safefs.flock_holders(st):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda p=pid: pid_gone(p), timeout=30, what="the daemon to stop")
        outer.wait(30)
    assert not os.path.exists(config.lock_path(endpoint))
