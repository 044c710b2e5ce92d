"""Starting, locking and stopping the daemon where the environment is unusual: dependencies
only on PYTHONPATH, a lock file a --group daemon left, a kernel without pidfd_open."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ndsharray
from ndsharray import admin, config, transport

CLIENT = """
import sys
import numpy as np
from ndsharray import NdShArray, admin
w = NdShArray("t", np.arange(3.0), "w")
print(admin.daemon_pid(), flush=True)
w.close()
admin.stop_daemon()
"""


def module_folder(name: str) -> str:
    mod = __import__(name)
    return os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__)))


def test_autostart_finds_dependencies_that_only_pythonpath_names(folder: str) -> None:
    # Review of issue 11's fix: `python -I` dropped PYTHONPATH, so under ROS/colcon, Nix,
    # HPC modules or `pip install --target` the daemon died of ModuleNotFoundError: click.
    # A venv without any site-packages of ours: everything comes from PYTHONPATH.
    bare = os.path.join(folder, "bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True, timeout=120)
    path = [module_folder(m) for m in ("ndsharray", "zmq", "numpy", "click")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
           config.ENV_ENDPOINT: f"ipc://{folder}/d.sock", config.ENV_AUTOSTART: "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        run = subprocess.run([os.path.join(bare, "bin", "python"), "-c", CLIENT], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().isdigit()
    finally:
        admin.stop_daemon(f"ipc://{folder}/d.sock")
    assert os.listdir(folder) == ["bare"]  # no socket, lock or start lock left


def test_a_daemon_that_cannot_start_says_why_and_leaves_no_start_lock(folder: str) -> None:
    endpoint = f"ipc://{folder}/d.sock"
    os.symlink(os.path.join(folder, "elsewhere"), config.log_path(endpoint))
    with pytest.raises(ndsharray.DaemonUnavailableError, match=r"could not start .*d\.sock\.log is a symbolic link"):
        transport.start_daemon(endpoint)
    assert not os.path.exists(config.lock_path(endpoint) + ".start")
    assert not transport.daemon_running(endpoint)
