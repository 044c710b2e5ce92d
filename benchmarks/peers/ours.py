"""`ndsharray` (this repository): write(), zero-copy read(), blocking read(timeout=None)."""

from __future__ import annotations

import ndsharray

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer


def _tag(spec: Spec) -> str:
    return f"bench/{spec.key}"


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.h = ndsharray.NdShArray(_tag(spec), self.src, r_w="w", endpoint=spec.endpoint)

    def write(self, a: Array) -> None:
        self.h.write(a)

    def close(self) -> None:
        self.h.close()


class Reader(_Reader):
    blocking = True
    copy_option = True

    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.h = ndsharray.NdShArray(_tag(spec), r_w="r", endpoint=spec.endpoint)

    def read(self, copy: bool = False) -> Array | None:
        ok, a = self.h.read(copy=copy)
        return a if ok else None

    def read_blocking(self) -> Array | None:
        ok, a = self.h.read(timeout=None)
        return a if ok else None

    def close(self) -> None:
        self.h.close()
