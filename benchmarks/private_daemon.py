"""A private ndsharrayd for a benchmark script: its own ipc endpoint in a fresh folder,
exported as NDSHARRAY_ENDPOINT for the script and its children, stopped at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def private_daemon(prefix: str = "nds-bench-") -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix=prefix)
    endpoint = f"ipc://{folder}/d.sock"
    os.environ["NDSHARRAY_ENDPOINT"] = endpoint
    daemon = subprocess.Popen([sys.executable, "-m", "ndsharrayd", "--endpoint", endpoint],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield endpoint
    finally:
        if "ndsharray" in sys.modules:
            sys.modules["ndsharray"].close_all()
        daemon.terminate()
        daemon.wait(15)
        shutil.rmtree(folder, ignore_errors=True)
