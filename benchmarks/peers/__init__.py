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
    "raw": "raw",
    "ndsharray": "ours",
    "ndsharray-1.1.4": "nds114",
    "SharedArray": "sharedarray",
    "pyzmq": "zmq_pubsub",
    "mp.Pipe": "mp_pipe",
}
ORDER: list[str] = list(MODULES)


def load(impl: str) -> ModuleType:
    return importlib.import_module(f"peers.{MODULES[impl]}")
