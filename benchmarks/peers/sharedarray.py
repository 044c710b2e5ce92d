"""`SharedArray` (PyPI): create/attach/delete by name, with the same seqlock as `raw`."""

from __future__ import annotations

import numpy as np
import SharedArray as sa

from .base import HEADER, Array, SeqlockPeerReader, SeqlockReader, SeqlockWriter, Spec
from .base import Writer as _Writer


def _name(spec: Spec) -> str:
    return f"shm://ndsb-sa-{spec.key}"


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.mem = sa.create(_name(spec), HEADER + spec.nbytes, np.uint8)
        self.lock = SeqlockWriter(self.mem, spec)
        self.lock.write(self.src)

    def write(self, a: Array) -> None:
        self.lock.write(a)

    def close(self) -> None:
        self.lock.close()
        del self.mem
        sa.delete(_name(self.spec))


class Reader(SeqlockPeerReader):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        self.mem = sa.attach(_name(spec), ro=True)
        self.lock = SeqlockReader(self.mem, spec)

    def close(self) -> None:
        self.lock.close()
        del self.mem
