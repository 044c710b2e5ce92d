"""`ndsharray-1.1.4` from PyPI, imported through PYTHONPATH=benchmarks/.peers/nds114.

It never unlinks its files in /dev/shm (``<tag>`` and ``<tag>_<uuid>``); the orchestrator
removes the new ones whose names start with ``PREFIX``.
"""

from __future__ import annotations

import ndsharray

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer

assert ndsharray.__version__ == "1.1.4", f"imported ndsharray {ndsharray.__version__} from {ndsharray.__file__}"
PREFIX = "ndsb114-"


def _tag(spec: Spec) -> str:
    return f"{PREFIX}{spec.key}"


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.h = ndsharray.NdShArray(_tag(spec), self.src, r_w="w")

    def write(self, a: Array) -> None:
        self.h.write(a)

    def close(self) -> None:
        del self.h  # it has no close(); __del__ unmaps


class Reader(_Reader):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.h = ndsharray.NdShArray(_tag(spec), r_w="r")

    def read(self, copy: bool = False) -> Array | None:
        ok, a = self.h.read()  # False for "nothing new" and for a tear it detected
        return a if ok else None

    def close(self) -> None:
        del self.h
