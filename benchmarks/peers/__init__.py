"""One module per implementation under test; each defines ``Writer`` and ``Reader``.

Modules are imported lazily (by the worker process that needs them), so a worker of the
original ndsharray 1.1.4 never imports ours and vice versa.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# implementation name -> module under benchmarks/peers/
MODULES: dict[str, str] = {
    "limit": "limit",
    "limit-shm": "limit_shm",
    "raw": "raw",
    "ndsharray": "ours",
    "ndsharray-1.1.4": "nds114",
    "SharedArray": "sharedarray",
    "pyzmq": "zmq_pubsub",
    "mp.Pipe": "mp_pipe",
    "iceoryx2": "iox2",
    "eCAL": "ecal_shm",
}
ORDER: list[str] = list(MODULES)
LIMITS = ("limit", "limit-shm")  # one in-process copy: no reader, no transport

# implementation -> (module its worker imports, how to get it). Nothing is installed while
# the benchmark runs: a peer whose module is missing is skipped and reported with this hint.
NDS114_DIR = "benchmarks/.peers/nds114"
REQUIRES: dict[str, tuple[str, str]] = {
    "ndsharray-1.1.4": ("ndsharray", f"pip install --no-deps --target {NDS114_DIR} ndsharray==1.1.4"),
    "SharedArray": ("SharedArray", 'pip install -e ".[peers]"'),
    "pyzmq": ("zmq", 'pip install -e ".[peers]"'),
    "iceoryx2": ("iceoryx2", 'pip install -e ".[peers]"'),
    "eCAL": ("ecal", 'pip install -e ".[peers]"'),
}


def load(impl: str) -> ModuleType:
    return importlib.import_module(f"peers.{MODULES[impl]}")
