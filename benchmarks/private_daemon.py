"""A private ndsharrayd for a benchmark script: its own ipc endpoint in a fresh folder,
exported as NDSHARRAY_ENDPOINT for the script and its children, stopped at the end.

It yields once the daemon serves, and NDSHARRAY_AUTOSTART=0 is exported too: a handle
opened before the daemon served used to start a detached daemon of its own on the same
endpoint, which outlived the script (two were found running 40 minutes later)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def private_daemon(prefix: str = "nds-bench-") -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix=prefix)
    endpoint = f"ipc://{folder}/d.sock"
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    os.environ["NDSHARRAY_AUTOSTART"] = "0"
    daemon = subprocess.Popen([sys.executable, "-m", "ndsharrayd", "--endpoint", endpoint],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from ndsharray import admin

        deadline = time.monotonic() + 30
        while not admin.daemon_running(endpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private daemon on {endpoint} did not start (exit code {daemon.poll()})")
            time.sleep(0.01)
        yield endpoint
    finally:
        if "ndsharray" in sys.modules:
            sys.modules["ndsharray"].close_all()
        daemon.terminate()
        daemon.wait(15)
        shutil.rmtree(folder, ignore_errors=True)
