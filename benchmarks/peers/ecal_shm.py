"""`eCAL` (PyPI ``eclipse-ecal`` 6.1, Eclipse): publish-subscribe, shared-memory layer only.

No network: registration goes through shared memory (``registration.local.transport_type =
SHM``, domain ``ndsb_ecal_<run>`` so the orchestrator can remove its files afterwards) and
the UDP and TCP data layers are off, for publishers and subscribers alike; only the
publisher and subscriber components are started (no logging or monitoring over UDP).
``Publisher.send()`` takes ``bytes`` only, so a write is ``send(a.tobytes())``: a copy into
a bytes object, then eCAL's copy into shared memory. Checked with ``strace -e socket``: no socket is created.

eCAL's Python subscriber only has a receive callback, which eCAL calls from its own thread
with the payload as ``bytes`` (one copy out of the shared memory). ``read()`` returns the
newest payload the callback stored, as an ndarray over those bytes, or None. A busy-polling
reader must let the callback's thread have the GIL, so a ``read()`` that finds nothing new
sleeps for 0 s (a GIL hand-over); otherwise the callback would wait up to 5 ms (the GIL's
switch interval). ``read_blocking()`` waits on a condition the callback notifies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ecal.nanobind_core as ecal
import numpy as np

from .base import Array, Spec
from .base import Reader as _Reader
from .base import Writer as _Writer

DOMAIN_PREFIX = "ndsb_ecal_"
_open = 0  # publishers and subscribers of this process; eCAL runs while there are any


def domain(spec: Spec) -> str:
    """One registration domain per benchmark run (spec.key is "<orchestrator pid>-<size>")."""
    return DOMAIN_PREFIX + spec.key.split("-")[0]


def _start(spec: Spec, role: str) -> None:
    """Initialize eCAL for this process's first handle. _stop() finalizes it after the
    last: eCAL left running at interpreter exit sometimes aborts ("Resource deadlock
    avoided") or hangs there, its threads waiting for a GIL that is gone."""
    global _open
    _open += 1
    if _open > 1:
        return
    cfg = ecal.Configuration()
    cfg.registration.local.transport_type = ecal.LocalTransportType.SHM
    cfg.registration.local.shm.domain = domain(spec)
    cfg.logging.provider.udp.enable = False
    for layers in (cfg.publisher.layer, cfg.subscriber.layer):
        layers.shm.enable = True
        layers.udp.enable = False
        layers.tcp.enable = False
    if not ecal.initialize(cfg, f"ndsb-{role}-{os.getpid()}", ecal.init.PUBLISHER | ecal.init.SUBSCRIBER):
        _open -= 1
        raise RuntimeError("eCAL did not initialize")


def _stop() -> None:
    global _open
    _open -= 1
    if _open == 0:
        ecal.finalize()


class Writer(_Writer):
    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        _start(spec, "writer")
        self.pub = ecal.Publisher(f"ndsb_{spec.key}")

    def write(self, a: Array) -> None:
        self.pub.send(a.tobytes())  # its Python send() takes bytes only: one copy more than ours

    def sync(self) -> None:
        deadline = time.monotonic() + 10
        while self.pub.get_subscriber_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("no eCAL subscriber within 10 s")
            time.sleep(0.001)

    def serve_attach(self, done: Callable[[], bool]) -> None:
        while not done():  # eCAL keeps no last frame for a newcomer: send it again until it has one
            self.pub.send(self.src.tobytes())
            time.sleep(0.001)

    def close(self) -> None:
        del self.pub
        _stop()


class Reader(_Reader):
    blocking = True

    def setup(self, spec: Spec) -> None:
        super().setup(spec)
        _start(spec, "reader")
        self.cond = threading.Condition()
        self.latest: bytes | None = None
        self.received = self.taken = 0
        self.sub = ecal.Subscriber(f"ndsb_{spec.key}")
        self.sub.set_receive_callback(self._on_data)
        self.dtype = np.dtype(spec.dtype)

    def _on_data(self, _publisher: Any, _datatype: Any, data: Any) -> None:
        with self.cond:
            self.latest = data.buffer
            self.received += 1
            self.cond.notify()

    def _take(self) -> Array:
        self.taken = self.received
        return np.frombuffer(self.latest, self.dtype).reshape(self.spec.shape)  # type: ignore[arg-type]

    def read(self, copy: bool = False) -> Array | None:
        if self.received == self.taken:
            time.sleep(0)  # hand the GIL to eCAL's callback thread
            return None
        with self.cond:
            return self._take()

    def read_blocking(self) -> Array | None:
        with self.cond:
            self.cond.wait_for(lambda: self.received != self.taken)
            return self._take()

    def close(self) -> None:
        self.sub.remove_receive_callback()
        del self.sub
        _stop()
