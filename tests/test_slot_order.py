"""Which slot a write takes: the one written before the latest first (a writer whose
readers keep up ping-pongs between two cache-warm slots), else the free ones after the
latest, in order, wrapping round the ring."""

from __future__ import annotations

from typing import Any

import numpy as np
from conftest import Daemon

import ndsharray


def test_writes_ping_pong_then_take_the_free_slots_after_the_latest_wrapping(daemon: Daemon) -> None:
    with ndsharray.NdShArray("order", np.zeros(4), "w", slots=4) as w, \
            ndsharray.NdShArray("order", r_w="r") as r:
        segment = w.ndarray_mmap_name
        slots = [w._direct.latest]  # the constructor's frame
        for k in range(1, 4):
            w.write(np.full(4, float(k)))
            slots.append(w._direct.latest)
        assert slots == [0, 1, 0, 1]  # nobody holds a frame: two slots in turn

        held: dict[int, Any] = {}
        for k in range(4, 8):
            status, view = r.read()  # the latest frame, held (pinned) from now on
            assert status and view[0] == k - 1
            held[w._direct.latest] = view
            if k == 7:
                del held[0]  # frees slot 0 again
            w.write(np.full(4, float(k)))
            slots.append(w._direct.latest)
        # 0: the one before the latest; 2: that one is held, so the next after the latest
        # (0) that is free; 3: after 2, skipping 0 (held); 0: after 3, wrapping round, as 2
        # (written before the latest) is held.
        assert slots[4:] == [0, 2, 3, 0]
        assert w.ndarray_mmap_name == segment  # never grew: a free slot was always found
        assert r.read()[1].tolist() == [7.0] * 4
