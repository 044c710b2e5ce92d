"""A loan() block owns its slot until it ends: writes inside it use other slots and never
move the tag to a segment the lent slot is not in.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Daemon

import ndsharray


def test_write_during_a_loan_never_reuses_the_loaned_slot(daemon: Daemon) -> None:
    with ndsharray.NdShArray("loan2", np.zeros(4), "w") as w, ndsharray.NdShArray("loan2", r_w="r") as r:
        with w.loan() as buf:
            w.write(np.ones(4))
            status, view = r.read()
            assert status and view.tolist() == [1.0] * 4
            buf[...] = 99  # must not land in the slot the reader is looking at
            assert view.tolist() == [1.0] * 4
        assert r.read()[1].tolist() == [99.0] * 4


def test_a_write_inside_a_loan_never_replaces_the_lent_slots_segment(daemon: Daemon) -> None:
    with ndsharray.NdShArray("lend", np.zeros(4), "w", slots=2, max_slots=8, write_timeout=0.2) as w, \
            ndsharray.NdShArray("lend", r_w="r") as r:
        held = r.read()[1]  # pins the latest slot; the other one is lent out below
        segment_name = w.ndarray_mmap_name
        with w.loan() as buf:
            buf[...] = 7
            with pytest.raises(ndsharray.WriterStalledError, match="lent out by the open loan"):
                w.write(np.ones(4))  # no free slot, and growing the ring would orphan the loan
            with pytest.raises(ndsharray.NdShArrayError, match="inside a loan"):
                w.write(np.ones(5))  # a new generation would too
        assert w.ndarray_mmap_name == segment_name
        assert r.read()[1].tolist() == [7.0] * 4  # the loan was published
        assert held.tolist() == [0.0] * 4
